//! Admin tokens in SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::domain::{Error, Result, token::NewToken};
use crate::store::{AdminToken, TokenStore, db_err, from_micros, to_micros};

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_admin_token(&self, name: &str, token: &NewToken) -> Result<AdminToken> {
        let _w = self.write.lock().await;
        let now = crate::domain::now();
        sqlx::query("INSERT INTO admin_tokens (id, name, hash, create_time) VALUES (?, ?, ?, ?)")
            .bind(&token.id)
            .bind(name)
            .bind(&token.hash[..])
            .bind(to_micros(now))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(AdminToken {
            id: token.id.clone(),
            name: name.to_owned(),
            create_time: now,
        })
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let rows =
            sqlx::query("SELECT id, name, create_time FROM admin_tokens ORDER BY create_time, id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AdminToken {
                    id: r.try_get("id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    create_time: from_micros(r.try_get("create_time").map_err(db_err)?),
                })
            })
            .collect()
    }

    async fn revoke_admin_token(&self, id: &str) -> Result<()> {
        let _w = self.write.lock().await;
        let done = sqlx::query("DELETE FROM admin_tokens WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("admin token", id));
        }
        Ok(())
    }

    async fn admin_token_hash(&self, id: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT hash FROM admin_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }
}
