//! Admin tokens (no events: they change no config). Free functions over a
//! store, since the `token` subcommands and the first token's bootstrap
//! run without a hub.

use crate::domain::{Error, Result, token::NewToken};
use crate::store::{AdminToken, Store};

/// Stores a new admin token's hash under `name`.
pub async fn create_admin_token(
    store: &dyn Store,
    name: &str,
    token: &NewToken,
) -> Result<AdminToken> {
    crate::domain::names::check_plain_text("name", name)
        .map_err(|v| Error::InvalidArgument(vec![v]))?;
    let record = AdminToken {
        id: token.id.clone(),
        name: name.to_owned(),
        create_time: crate::domain::now(),
    };
    let mut tx = store.begin().await?;
    tx.insert_admin_token(&record, &token.hash).await?;
    tx.commit().await?;
    Ok(record)
}

/// Revokes an admin token; NOT_FOUND when there is none with that id.
pub async fn revoke_admin_token(store: &dyn Store, id: &str) -> Result<()> {
    let mut tx = store.begin().await?;
    if !tx.delete_admin_token(id).await? {
        return Err(Error::not_found("admin token", id));
    }
    tx.commit().await
}
