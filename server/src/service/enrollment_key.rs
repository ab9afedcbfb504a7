//! Enrollment keys.

use super::Service;
use crate::domain::{
    Result,
    enrollment::{EnrollmentKey, EnrollmentKeyInput},
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
    /// CreateEnrollmentKey.
    pub async fn create_enrollment_key(&self, input: EnrollmentKeyInput) -> Result<CreatedKey> {
        let token = NewToken::generate(TokenKind::Enrollment);
        let key = input.validate(token.id.clone(), crate::domain::now())?;
        self.write(self.store.create_enrollment_key(&key, &token.hash))
            .await?;
        Ok(CreatedKey {
            key,
            secret: token.secret,
        })
    }

    /// DeleteEnrollmentKey.
    pub async fn delete_enrollment_key(&self, id: &str) -> Result<()> {
        self.write(self.store.delete_enrollment_key(id)).await
    }
}
