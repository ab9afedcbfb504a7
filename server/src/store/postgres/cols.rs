//! [`Cols`] for PostgreSQL rows: native `inet`, `cidr`, arrays,
//! `timestamptz`, `bytea` and `jsonb` (read as text) decoded by sqlx.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use sqlx::{
    Column, Decode, Row, Type, TypeInfo,
    postgres::{PgRow, Postgres},
};

use crate::domain::Result;
use crate::store::{db_err, rows::Cols};

/// One column decoded as `T`; a missing column, a type mismatch, an
/// unexpected NULL or an undecodable value is a database error.
pub(super) fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(col).map_err(db_err)
}

/// The PostgreSQL type name of a column ("INT8", "JSONB", ...).
fn type_name<'r>(row: &'r PgRow, col: &str) -> Result<&'r str> {
    Ok(row.try_column(col).map_err(db_err)?.type_info().name())
}

impl Cols for PgRow {
    fn text(&self, col: &str) -> Result<String> {
        get(self, col)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        get(self, col)
    }

    /// `bigint`, `integer` or `smallint`.
    fn int(&self, col: &str) -> Result<i64> {
        match type_name(self, col)? {
            "INT2" => get::<i16>(self, col).map(i64::from),
            "INT4" => get::<i32>(self, col).map(i64::from),
            _ => get::<i64>(self, col),
        }
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(match type_name(self, col)? {
            "INT2" => get::<Option<i16>>(self, col)?.map(i64::from),
            "INT4" => get::<Option<i32>>(self, col)?.map(i64::from),
            _ => get::<Option<i64>>(self, col)?,
        })
    }

    fn flag(&self, col: &str) -> Result<bool> {
        get(self, col)
    }

    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        get(self, col)
    }

    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        get(self, col)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        get(self, col)
    }

    /// An `inet` holding one address (a prefix other than /32 or /128 does
    /// not decode).
    fn addr(&self, col: &str) -> Result<Option<IpAddr>> {
        get(self, col)
    }

    /// An `inet[]`; NULL reads as empty.
    fn addrs(&self, col: &str) -> Result<Vec<IpAddr>> {
        Ok(get::<Option<Vec<IpAddr>>>(self, col)?.unwrap_or_default())
    }

    /// A `cidr` (or `inet`).
    fn range(&self, col: &str) -> Result<Option<IpNet>> {
        get(self, col)
    }

    /// A `cidr[]`.
    fn ranges(&self, col: &str) -> Result<Option<Vec<IpNet>>> {
        get(self, col)
    }

    /// A `text[]`; NULL reads as empty.
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        Ok(get::<Option<Vec<String>>>(self, col)?.unwrap_or_default())
    }

    /// Queries select JSON columns as text (`col::text AS col`), which is
    /// read as is; a `jsonb` or `json` column selected without the cast is
    /// decoded and written out again.
    fn json(&self, col: &str) -> Result<Option<String>> {
        match type_name(self, col)? {
            "JSONB" | "JSON" => {
                Ok(get::<Option<serde_json::Value>>(self, col)?.map(|v| v.to_string()))
            }
            _ => get(self, col),
        }
    }
}

/// The columns of a row whose names start with `prefix`, read by their
/// names without it: a statement that returns two records side by side
/// names one of them so (`k.id AS k_id`, ...), and the record's decoder
/// reads it unchanged.
pub(super) struct Prefixed<'r> {
    pub row: &'r PgRow,
    pub prefix: &'static str,
}

impl Prefixed<'_> {
    fn col(&self, col: &str) -> String {
        format!("{}{col}", self.prefix)
    }
}

impl Cols for Prefixed<'_> {
    fn text(&self, col: &str) -> Result<String> {
        self.row.text(&self.col(col))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.row.opt_text(&self.col(col))
    }
    fn int(&self, col: &str) -> Result<i64> {
        self.row.int(&self.col(col))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.row.opt_int(&self.col(col))
    }
    fn flag(&self, col: &str) -> Result<bool> {
        self.row.flag(&self.col(col))
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        self.row.opt_bytes(&self.col(col))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.row.time(&self.col(col))
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.row.opt_time(&self.col(col))
    }
    fn addr(&self, col: &str) -> Result<Option<IpAddr>> {
        self.row.addr(&self.col(col))
    }
    fn addrs(&self, col: &str) -> Result<Vec<IpAddr>> {
        self.row.addrs(&self.col(col))
    }
    fn range(&self, col: &str) -> Result<Option<IpNet>> {
        self.row.range(&self.col(col))
    }
    fn ranges(&self, col: &str) -> Result<Option<Vec<IpNet>>> {
        self.row.ranges(&self.col(col))
    }
    fn json(&self, col: &str) -> Result<Option<String>> {
        self.row.json(&self.col(col))
    }
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        self.row.texts(&self.col(col))
    }
}
