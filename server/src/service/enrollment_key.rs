//! Enrollment keys.

use super::{Service, txn};
use crate::domain::{
    Error, Result,
    enrollment::{EnrollmentKey, EnrollmentKeyInput},
    event::{Action, Resource},
    token::{NewToken, TokenKind},
};

/// A new enrollment key and its secret, shown once.
pub struct CreatedKey {
    /// The stored key.
    pub key: EnrollmentKey,
    /// The token to hand to agents (only its hash is stored).
    pub secret: String,
}

impl Service {
    /// CreateEnrollmentKey: for networks that exist.
    pub async fn create_enrollment_key(&self, input: EnrollmentKeyInput) -> Result<CreatedKey> {
        let token = NewToken::generate(TokenKind::Enrollment);
        let key = input.validate(token.id.clone(), crate::domain::now())?;
        self.write(async {
            txn!(self.committer, |tx| {
                // In name order, like every write that locks several
                // networks: two such writes cannot deadlock.
                let mut networks: Vec<_> = key.networks.iter().collect();
                networks.sort();
                for n in networks {
                    if tx.lock_network(n.as_str()).await?.is_none() {
                        return Err(Error::not_found("network", n));
                    }
                }
                tx.insert_enrollment_key(&key, &token.hash).await?;
                tx.append(
                    Action::Created,
                    &Resource::EnrollmentKey(key.clone()),
                    false,
                )
                .await?;
                Ok(())
            })
        })
        .await?;
        Ok(CreatedKey {
            key,
            secret: token.secret,
        })
    }

    /// DeleteEnrollmentKey.
    pub async fn delete_enrollment_key(&self, id: &str) -> Result<()> {
        self.write(async {
            txn!(self.committer, |tx| {
                let key = tx
                    .enrollment_key(id)
                    .await?
                    .ok_or_else(|| Error::not_found("enrollment key", id))?
                    .key;
                tx.delete_enrollment_key(id).await?;
                tx.append(Action::Deleted, &Resource::EnrollmentKey(key), false)
                    .await?;
                Ok(())
            })
        })
        .await
    }
}
