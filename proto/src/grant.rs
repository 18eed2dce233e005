//! Join tokens: HS256 JWTs whose `kid` header names the API key that signed them.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 30;

/// Longest identity, display name or room name a token may carry, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The `room` claim of an admin token that is not tied to one room. Valid
/// only together with the admin grant; such a token administers every room
/// through the admin API and joins none.
pub const ALL_ROOMS: &str = "*";

/// Random characters appended to a shared token's `sub` for each session.
pub const SHARED_SUFFIX_CHARS: usize = 6;

/// What a participant is in a meeting; sets the default grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the meeting: publishes, subscribes, administers.
    Host,
    /// Publishes and subscribes.
    Speaker,
    /// Watches and listens only (e.g. a citizen at a public hearing).
    Attendee,
}

impl Role {
    /// The grants a token of this role carries unless it says otherwise.
    pub fn default_grants(self) -> Grants {
        match self {
            Role::Host => Grants {
                publish: true,
                subscribe: true,
                admin: true,
            },
            Role::Speaker => Grants {
                publish: true,
                subscribe: true,
                admin: false,
            },
            Role::Attendee => Grants {
                publish: false,
                subscribe: true,
                admin: false,
            },
        }
    }
}

impl std::str::FromStr for Role {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Role::Host),
            "speaker" => Ok(Role::Speaker),
            "attendee" => Ok(Role::Attendee),
            other => Err(GrantError::Invalid(format!(
                "unknown role {other:?} (expected host, speaker or attendee)"
            ))),
        }
    }
}

/// What a token allows beyond joining its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    #[serde(default)]
    pub admin: bool,
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// API key id that signed the token (also in the JWT `kid` header).
    pub iss: String,
    /// Participant identity, unique within the room.
    pub sub: String,
    /// Room the token admits to.
    pub room: String,
    /// Display name shown to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    pub grants: Grants,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Meant for many people (a public-hearing link): each session gets
    /// its own identity, `sub` plus a random suffix, so the users of one
    /// link do not replace each other.
    #[serde(default, skip_serializing_if = "crate::signal::is_false")]
    pub shared: bool,
}

/// Why a token was refused. The `Display` text is safe to show to the client:
/// it never contains the token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("token is missing")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token names no API key (`kid` header missing)")]
    MissingKeyId,
    #[error("token is signed with an unknown API key")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token uses an unsupported algorithm (only HS256 is accepted)")]
    BadAlgorithm,
    #[error("token claims are invalid: {0}")]
    Invalid(String),
    #[error("could not sign token: {0}")]
    Sign(String),
}

impl GrantError {
    /// Stable machine-readable code for the HTTP error body.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Missing => "token_missing",
            GrantError::Malformed(_) | GrantError::MissingKeyId => "token_malformed",
            GrantError::UnknownKey => "token_unknown_key",
            GrantError::BadSignature => "token_bad_signature",
            GrantError::Expired => "token_expired",
            GrantError::NotYetValid => "token_not_yet_valid",
            GrantError::BadAlgorithm => "token_bad_algorithm",
            GrantError::Invalid(_) => "token_invalid",
            GrantError::Sign(_) => "token_sign_failed",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Grant {
    /// A grant for `identity` in `room` with the role's default grants, valid for `ttl_secs`.
    pub fn new(api_key: &str, room: &str, identity: &str, role: Role, ttl_secs: u64) -> Grant {
        let now = unix_now();
        Grant {
            iss: api_key.to_owned(),
            sub: identity.to_owned(),
            room: room.to_owned(),
            name: None,
            role,
            grants: role.default_grants(),
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iat: now,
            shared: false,
        }
    }

    /// The identity a session joining with this token gets: `sub`, or for a
    /// shared token `sub-<random>`, fresh for each session.
    pub fn session_identity(&self) -> String {
        if self.shared {
            format!("{}-{}", self.sub, crate::random_token(SHARED_SUFFIX_CHARS))
        } else {
            self.sub.clone()
        }
    }

    /// Whether this participant may publish media: the grant must allow it and
    /// attendees never publish, whatever the grant says.
    pub fn can_publish(&self) -> bool {
        self.grants.publish && self.role != Role::Attendee
    }

    /// Whether this token may administer `room` through the admin API: a
    /// node-wide admin token may administer any room, a join token with the
    /// admin grant only its own.
    pub fn may_administer(&self, room: &str) -> bool {
        self.grants.admin && (self.room == ALL_ROOMS || self.room == room)
    }

    /// Whether this is a node-wide admin token (room [`ALL_ROOMS`]).
    pub fn is_node_admin(&self) -> bool {
        self.grants.admin && self.room == ALL_ROOMS
    }

    fn validate_fields(&self) -> Result<(), GrantError> {
        if self.room == ALL_ROOMS && !self.grants.admin {
            return Err(GrantError::Invalid(format!(
                "room {ALL_ROOMS:?} is only valid with the admin grant"
            )));
        }
        for (what, value) in [("room", &self.room), ("identity (sub)", &self.sub)] {
            if value.is_empty() {
                return Err(GrantError::Invalid(format!("{what} is empty")));
            }
            if value.len() > MAX_NAME_BYTES {
                return Err(GrantError::Invalid(format!(
                    "{what} is longer than {MAX_NAME_BYTES} bytes"
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(GrantError::Invalid(format!(
                    "{what} contains control characters"
                )));
            }
        }
        // Leaves room for the suffix, so a session's identity is within
        // bounds too (it is minted into a reconnect token).
        if self.shared && self.sub.len() + 1 + SHARED_SUFFIX_CHARS > MAX_NAME_BYTES {
            return Err(GrantError::Invalid(format!(
                "identity (sub) of a shared token is longer than {} bytes",
                MAX_NAME_BYTES - 1 - SHARED_SUFFIX_CHARS
            )));
        }
        if self.name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
            return Err(GrantError::Invalid(format!(
                "name is longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Sign this grant as a JWT with the API key `kid` and its `secret`.
    pub fn mint(&self, kid: &str, secret: &[u8]) -> Result<String, GrantError> {
        self.validate_fields()?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, self, &EncodingKey::from_secret(secret))
            .map_err(|e| GrantError::Sign(e.to_string()))
    }

    /// Verify a token. `secret_for` maps an API key id to its secret.
    pub fn verify<'s>(
        token: &str,
        secret_for: impl Fn(&str) -> Option<&'s [u8]>,
    ) -> Result<Grant, GrantError> {
        if token.is_empty() {
            return Err(GrantError::Missing);
        }
        // A JWT longer than this is not one of ours; refuse before parsing.
        if token.len() > 8 * 1024 {
            return Err(GrantError::Malformed("token is too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_jwt_error(&e))?;
        if header.alg != Algorithm::HS256 {
            return Err(GrantError::BadAlgorithm);
        }
        let kid = header.kid.ok_or(GrantError::MissingKeyId)?;
        let secret = secret_for(&kid).ok_or(GrantError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Grant>(token, &DecodingKey::from_secret(secret), &validation)
                .map_err(|e| map_jwt_error(&e))?;
        let grant = data.claims;
        if grant.iss != kid {
            return Err(GrantError::Invalid(
                "issuer does not match the signing key id".into(),
            ));
        }
        grant.validate_fields()?;
        Ok(grant)
    }
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> GrantError {
    match e.kind() {
        ErrorKind::ExpiredSignature => GrantError::Expired,
        ErrorKind::ImmatureSignature => GrantError::NotYetValid,
        ErrorKind::InvalidSignature => GrantError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => GrantError::BadAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => {
            GrantError::Invalid(format!("required claim {c:?} is missing"))
        }
        ErrorKind::Json(e) => GrantError::Invalid(e.to_string()),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            GrantError::Malformed("not a JWT (expected three base64url parts)".into())
        }
        other => GrantError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn lookup(kid: &str) -> Option<&'static [u8]> {
        (kid == "key1").then_some(SECRET)
    }

    #[test]
    fn minted_token_verifies_with_its_key() {
        let mut g = Grant::new("key1", "room-a", "alice", Role::Speaker, 60);
        g.name = Some("Alice".into());
        let t = g.mint("key1", SECRET).unwrap();
        assert_eq!(Grant::verify(&t, lookup).unwrap(), g);
    }

    #[test]
    fn expired_token_is_refused() {
        let mut g = Grant::new("key1", "r", "a", Role::Host, 0);
        g.exp = unix_now() - 3600;
        let t = g.mint("key1", SECRET).unwrap();
        assert_eq!(Grant::verify(&t, lookup), Err(GrantError::Expired));
    }

    #[test]
    fn token_signed_with_other_secret_is_refused() {
        let g = Grant::new("key1", "r", "a", Role::Host, 60);
        let t = g
            .mint("key1", b"another secret entirely, 32 bytes")
            .unwrap();
        assert_eq!(Grant::verify(&t, lookup), Err(GrantError::BadSignature));
    }

    #[test]
    fn unknown_key_and_garbage_are_refused() {
        let g = Grant::new("key2", "r", "a", Role::Host, 60);
        let t = g.mint("key2", SECRET).unwrap();
        assert_eq!(Grant::verify(&t, lookup), Err(GrantError::UnknownKey));
        assert!(matches!(
            Grant::verify("not-a-jwt", lookup),
            Err(GrantError::Malformed(_))
        ));
        assert_eq!(Grant::verify("", lookup), Err(GrantError::Missing));
    }

    #[test]
    fn all_rooms_claim_needs_the_admin_grant() {
        let g = Grant::new("key1", ALL_ROOMS, "ops", Role::Speaker, 60);
        assert!(matches!(
            g.mint("key1", SECRET),
            Err(GrantError::Invalid(_))
        ));
        let mut g = Grant::new("key1", ALL_ROOMS, "ops", Role::Host, 60);
        let t = g.mint("key1", SECRET).unwrap();
        let v = Grant::verify(&t, lookup).unwrap();
        assert!(v.is_node_admin() && v.may_administer("any-room"));
        g.room = "r".into();
        assert!(g.may_administer("r") && !g.may_administer("other") && !g.is_node_admin());
        g.grants.admin = false;
        assert!(!g.may_administer("r"));
    }

    #[test]
    fn attendee_cannot_publish_even_if_granted() {
        let mut g = Grant::new("key1", "r", "a", Role::Attendee, 60);
        assert!(!g.can_publish());
        g.grants.publish = true;
        assert!(!g.can_publish());
    }

    #[test]
    fn shared_tokens_give_each_session_its_own_identity() {
        let mut g = Grant::new("key1", "hearing", "guest", Role::Attendee, 60);
        assert_eq!(g.session_identity(), "guest");
        g.shared = true;
        let t = g.mint("key1", SECRET).unwrap();
        let v = Grant::verify(&t, lookup).unwrap();
        assert!(v.shared);
        let (a, b) = (v.session_identity(), v.session_identity());
        assert!(a.starts_with("guest-") && a.len() == "guest-".len() + SHARED_SUFFIX_CHARS);
        assert_ne!(a, b);
        g.sub = "x".repeat(MAX_NAME_BYTES - SHARED_SUFFIX_CHARS);
        assert!(matches!(
            g.mint("key1", SECRET),
            Err(GrantError::Invalid(_))
        ));
    }

    #[test]
    fn shared_flag_is_left_off_unshared_claims() {
        let g = Grant::new("key1", "r", "a", Role::Speaker, 60);
        let json = serde_json::to_string(&g).unwrap();
        assert!(!json.contains("shared"), "{json}");
        let g = Grant { shared: true, ..g };
        assert!(
            serde_json::to_string(&g)
                .unwrap()
                .contains(r#""shared":true"#)
        );
    }
}
