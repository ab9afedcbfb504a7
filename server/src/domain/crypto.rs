//! Key material: WireGuard key pairs generated for external clients, and
//! sealing of their private keys so the database never holds them in clear.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use x25519_dalek::{PublicKey, StaticSecret};

use super::error::{Error, Result};
use super::node::WgKey;

/// A WireGuard private key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// A new random key, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut k: [u8; 32] = rand::random();
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        PrivateKey(k)
    }

    /// A key from its 32 bytes (e.g. one decoded from a config file).
    pub fn from_bytes(k: [u8; 32]) -> Self {
        PrivateKey(k)
    }

    /// The matching public key.
    pub fn public_key(&self) -> WgKey {
        WgKey(PublicKey::from(&StaticSecret::from(self.0)).to_bytes())
    }

    /// base64, as wg-quick wants it. Only for rendering a config file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

/// Seals private keys with ChaCha20-Poly1305 under the server's secret key.
/// The sealed form is `nonce (12 bytes) || ciphertext`; the owner's id is
/// bound as associated data, so a sealed key cannot be moved to another
/// client.
pub struct Sealer(ChaCha20Poly1305);

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// A sealer with a 32-byte secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        Sealer(ChaCha20Poly1305::new(secret.into()))
    }

    /// Encrypts `key` for `owner`.
    pub fn seal(&self, owner: &str, key: &PrivateKey) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &key.0,
                    aad: owner.as_bytes(),
                },
            )
            .expect("encrypting 32 bytes cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts what [`Sealer::seal`] produced for `owner`.
    pub fn open(&self, owner: &str, sealed: &[u8]) -> Result<PrivateKey> {
        let fail = || {
            Error::Internal(format!(
                "cannot decrypt the private key of {owner}: was the server's secret key changed?"
            ))
        };
        if sealed.len() < 12 {
            return Err(fail());
        }
        let (nonce, ct) = sealed.split_at(12);
        let pt = self
            .0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        let k: [u8; 32] = pt.try_into().map_err(|_| fail())?;
        Ok(PrivateKey(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_clamped_and_match_their_public_key() {
        let k = PrivateKey::generate();
        assert_eq!(k.0[0] & 7, 0);
        assert_eq!(k.0[31] & 128, 0);
        assert_eq!(k.0[31] & 64, 64);
        assert_eq!(k.public_key(), k.public_key());
        assert_ne!(k.public_key(), PrivateKey::generate().public_key());
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn known_x25519_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let sk: [u8; 32] = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let pk = PrivateKey(sk).public_key();
        assert_eq!(
            pk.0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    fn hex(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn sealing_round_trips_and_binds_the_owner() {
        let s = Sealer::new(&[7u8; 32]);
        let k = PrivateKey::generate();
        let sealed = s.seal("client-1", &k);
        assert!(!sealed.windows(32).any(|w| w == k.0));
        assert_eq!(s.open("client-1", &sealed).unwrap(), k);
        assert!(s.open("client-2", &sealed).is_err());
        assert!(Sealer::new(&[8u8; 32]).open("client-1", &sealed).is_err());
    }
}
