//! Bearer tokens: admin tokens, node tokens and enrollment keys.
//!
//! A token is `<prefix>_<id>_<secret>`: the id locates the stored record, the
//! secret (256 random bits) is never stored; only SHA-256 of the whole token
//! is, and it is compared in constant time.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Admin services.
    Admin,
    /// One node's AgentService calls.
    Node,
    /// AgentService.Register.
    Enrollment,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Admin => "mpa",
            TokenKind::Node => "mpn",
            TokenKind::Enrollment => "mpk",
        }
    }
}

/// A freshly generated token: the secret text, shown once, and what is
/// stored.
pub struct NewToken {
    /// Record id.
    pub id: String,
    /// The full token text. Never log it.
    pub secret: String,
    /// SHA-256 of `secret`, the only thing stored.
    pub hash: [u8; 32],
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl NewToken {
    /// Generates a token of `kind`.
    pub fn generate(kind: TokenKind) -> Self {
        let mut rng = rand::rng();
        let mut id = [0u8; 8];
        rng.fill_bytes(&mut id);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let secret = format!("{}_{id}_{}", kind.prefix(), URL_SAFE_NO_PAD.encode(secret));
        let hash = hash(&secret);
        NewToken { id, secret, hash }
    }
}

/// SHA-256 of a token's text.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time check of a presented token against a stored hash.
pub fn verify(token: &str, stored: &[u8]) -> bool {
    stored.len() == 32 && bool::from(hash(token).ct_eq(stored))
}

/// Splits a presented token into its kind and record id, without judging the
/// secret.
pub fn parse(token: &str) -> Option<(TokenKind, &str)> {
    let mut parts = token.splitn(3, '_');
    let kind = match parts.next()? {
        "mpa" => TokenKind::Admin,
        "mpn" => TokenKind::Node,
        "mpk" => TokenKind::Enrollment,
        _ => return None,
    };
    let id = parts.next()?;
    let secret = parts.next()?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() < 40 {
        return None;
    }
    Some((kind, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_verify() {
        let t = NewToken::generate(TokenKind::Node);
        let (kind, id) = parse(&t.secret).unwrap();
        assert_eq!(kind, TokenKind::Node);
        assert_eq!(id, t.id);
        assert!(verify(&t.secret, &t.hash));
        let mut wrong = t.secret.clone();
        wrong.push('x');
        assert!(!verify(&wrong, &t.hash));
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn garbage_does_not_parse() {
        for s in [
            "",
            "mpa",
            "mpa_x_y",
            "xyz_0123456789abcdef_secret",
            "Bearer abc",
        ] {
            assert!(parse(s).is_none(), "{s}");
        }
    }
}
