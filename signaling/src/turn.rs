//! TURN servers handed to clients in `joined`, with time-limited credentials
//! in the TURN REST API scheme that coturn implements (`use-auth-secret`):
//! the username is `<expiry unix time>:<participant id>` and the password is
//! base64(HMAC-SHA1(shared secret, username)). The TURN server checks both
//! without a user database, and a leaked credential expires on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use stamma_proto::IceServer;

/// Shortest shared secret accepted: it is the key of every credential.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Clone)]
pub struct TurnServer {
    /// `turn:`/`turns:` (or `stun:`) URLs of one TURN deployment.
    pub urls: Vec<String>,
    secret: String,
    /// How long a credential stays valid.
    pub ttl: Duration,
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TurnConfigError {
    #[error("needs at least one URL")]
    NoUrls,
    #[error("{0:?} is not a turn:, turns: or stun: URL")]
    BadUrl(String),
    #[error("the shared secret must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
    #[error("ttl_s must be between 60 and 604800")]
    BadTtl,
}

impl TurnServer {
    pub fn new(urls: Vec<String>, secret: String, ttl: Duration) -> Result<Self, TurnConfigError> {
        if urls.is_empty() {
            return Err(TurnConfigError::NoUrls);
        }
        if let Some(bad) = urls.iter().find(|u| {
            let scheme_ok = ["turn:", "turns:", "stun:"]
                .iter()
                .any(|s| u.starts_with(s) && u.len() > s.len());
            !scheme_ok || u.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err(TurnConfigError::BadUrl(bad.clone()));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(TurnConfigError::ShortSecret);
        }
        if !(60..=604_800).contains(&ttl.as_secs()) {
            return Err(TurnConfigError::BadTtl);
        }
        Ok(TurnServer { urls, secret, ttl })
    }

    /// Credentials for `user` valid from `now` for the configured TTL.
    pub fn credentials(&self, user: &str, now: SystemTime) -> IceServer {
        let expiry = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs();
        let username = format!("{expiry}:{user}");
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, self.secret.as_bytes());
        let tag = hmac::sign(&key, username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            username,
            credential: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> TurnServer {
        TurnServer::new(
            vec!["turn:turn.example.eu:3478".into()],
            "north-sea-0123456789".into(),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ice = server().credentials("PA_abc", now);
        assert_eq!(ice.username, "1700003600:PA_abc");
        // base64(HMAC-SHA1("north-sea-0123456789", "1700003600:PA_abc")), computed
        // independently with `openssl dgst -sha1 -hmac ... -binary | base64`.
        assert_eq!(ice.credential, "GCZx1Maty03W+apUxO68eOF0Z/o=");
        assert_eq!(ice.urls, vec!["turn:turn.example.eu:3478".to_string()]);
    }

    #[test]
    fn bad_configuration_is_refused() {
        let ttl = Duration::from_secs(3600);
        let secret = || "north-sea-0123456789".to_string();
        assert_eq!(
            TurnServer::new(vec![], secret(), ttl).unwrap_err(),
            TurnConfigError::NoUrls
        );
        assert!(matches!(
            TurnServer::new(vec!["http://x".into()], secret(), ttl),
            Err(TurnConfigError::BadUrl(_))
        ));
        assert!(matches!(
            TurnServer::new(vec!["turn:".into()], secret(), ttl),
            Err(TurnConfigError::BadUrl(_))
        ));
        assert_eq!(
            TurnServer::new(vec!["turn:x".into()], "short".into(), ttl).unwrap_err(),
            TurnConfigError::ShortSecret
        );
        assert_eq!(
            TurnServer::new(vec!["turn:x".into()], secret(), Duration::from_secs(5)).unwrap_err(),
            TurnConfigError::BadTtl
        );
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        assert!(!format!("{:?}", server()).contains("north-sea"));
    }
}
