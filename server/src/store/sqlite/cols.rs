//! [`Cols`] for SQLite rows: addresses and ranges are text, lists of them
//! comma-joined text, times microseconds since the epoch, booleans integers
//! and JSON text.

use std::{net::IpAddr, str::FromStr};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use sqlx::{Row, sqlite::SqliteRow};

use crate::domain::{Error, Result};
use crate::store::{db_err, from_micros, rows::Cols};

/// What a corrupt value's error names the row by: its `id` or `name`
/// column when it has one.
fn ident(r: &SqliteRow) -> String {
    ["id", "name"]
        .iter()
        .find_map(|c| r.try_get::<String, _>(*c).ok())
        .unwrap_or_else(|| "row".to_owned())
}

/// The error for a stored value of `col` that does not parse.
fn bad(r: &SqliteRow, col: &str) -> Error {
    Error::Internal(format!("stored {}: bad {col}", ident(r)))
}

/// Parses the comma-joined list in `col` (NULL: None; empty text: an empty
/// list), refusing the whole value when one item does not parse.
fn list<T: FromStr>(r: &SqliteRow, col: &str) -> Result<Option<Vec<T>>> {
    let Some(text) = r.try_get::<Option<String>, _>(col).map_err(db_err)? else {
        return Ok(None);
    };
    text.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().map_err(|_| bad(r, col)))
        .collect::<Result<Vec<T>>>()
        .map(Some)
}

/// Parses the nullable text in `col`.
fn parsed<T: FromStr>(r: &SqliteRow, col: &str) -> Result<Option<T>> {
    r.try_get::<Option<String>, _>(col)
        .map_err(db_err)?
        .map(|s| s.parse().map_err(|_| bad(r, col)))
        .transpose()
}

impl Cols for SqliteRow {
    fn text(&self, col: &str) -> Result<String> {
        self.try_get(col).map_err(db_err)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.try_get(col).map_err(db_err)
    }

    fn int(&self, col: &str) -> Result<i64> {
        self.try_get(col).map_err(db_err)
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.try_get(col).map_err(db_err)
    }

    fn flag(&self, col: &str) -> Result<bool> {
        self.try_get(col).map_err(db_err)
    }

    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        self.try_get(col).map_err(db_err)
    }

    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.int(col).map(from_micros)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.opt_int(col)?.map(from_micros))
    }

    fn addr(&self, col: &str) -> Result<Option<IpAddr>> {
        parsed(self, col)
    }

    /// NULL or empty text is an empty list.
    fn addrs(&self, col: &str) -> Result<Vec<IpAddr>> {
        Ok(list(self, col)?.unwrap_or_default())
    }

    fn range(&self, col: &str) -> Result<Option<IpNet>> {
        parsed(self, col)
    }

    /// NULL is None; empty text is an empty list.
    fn ranges(&self, col: &str) -> Result<Option<Vec<IpNet>>> {
        list(self, col)
    }

    fn json(&self, col: &str) -> Result<Option<String>> {
        self.opt_text(col)
    }

    /// Comma-joined text; NULL or empty text is an empty list.
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        Ok(list(self, col)?.unwrap_or_default())
    }
}
