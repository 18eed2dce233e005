//! API keys: a key id (the JWT `kid`) and its secret.

use std::collections::HashMap;

use stamma_proto::{Grant, GrantError, random_token};

/// Shortest secret accepted: HS256 wants at least 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone, Default)]
pub struct ApiKeys {
    secrets: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("API key id must be 1-64 characters of [A-Za-z0-9_-]")]
    BadId,
    #[error("API secret for {0:?} is shorter than {MIN_SECRET_BYTES} bytes")]
    ShortSecret(String),
}

impl ApiKeys {
    pub fn insert(&mut self, id: &str, secret: &str) -> Result<(), KeyError> {
        let ok_id = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_id {
            return Err(KeyError::BadId);
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::ShortSecret(id.to_owned()));
        }
        self.secrets
            .insert(id.to_owned(), secret.as_bytes().to_vec());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn secret(&self, id: &str) -> Option<&[u8]> {
        self.secrets.get(id).map(|s| s.as_slice())
    }

    pub fn verify(&self, token: &str) -> Result<Grant, GrantError> {
        Grant::verify(token, |kid| self.secret(kid))
    }

    /// A fresh random key pair for `stamma dev`.
    pub fn generate() -> (String, String) {
        (format!("dev_{}", random_token(8)), random_token(40))
    }
}
