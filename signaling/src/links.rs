//! Join links: the web client's address for a room, with a join token.
//! Made by the admin API (`POST /api/v1/rooms/{room}/links`), by
//! `stamma link create` and by `stamma dev`, so all three agree.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use stamma_proto::{Grant, Role};

/// Where `stamma dev` (and a default `stamma serve`) listens, for links
/// made without a configured public URL.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:7880";

/// The page's URL: `<base>/r/<room>?token=<token>`. `base` is
/// `scheme://host[:port]`, a trailing slash is ignored.
pub fn join_url(base: &str, room: &str, token: &str) -> String {
    // A JWT is base64url and dots: nothing in it needs escaping in a query.
    format!(
        "{}/r/{}?token={token}",
        base.trim_end_matches('/'),
        encode_path_segment(room)
    )
}

/// The grant of a link: for one person when `identity` is given; without,
/// a shared token (sub `host` for hosts, `guest` otherwise) that many
/// people may use at once, each session getting its own identity.
pub fn link_grant(
    api_key: &str,
    room: &str,
    role: Role,
    identity: Option<&str>,
    ttl_secs: u64,
) -> Grant {
    match identity {
        Some(i) => Grant::new(api_key, room, i, role, ttl_secs),
        None => {
            let sub = if role == Role::Host { "host" } else { "guest" };
            Grant {
                shared: true,
                ..Grant::new(api_key, room, sub, role, ttl_secs)
            }
        }
    }
}

/// Length of an end-to-end encryption room secret, in bytes (docs/e2ee.md).
pub const E2EE_SECRET_LEN: usize = 32;

/// Why a room secret given for a link cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum E2eeSecretError {
    #[error("the E2EE room secret must be unpadded base64url (or `new`)")]
    NotBase64Url,
    #[error("the E2EE room secret must be {E2EE_SECRET_LEN} bytes, not {0}")]
    Length(usize),
    #[error("no random bytes for a new E2EE room secret")]
    Random,
}

/// The room secret `--e2ee-secret` names, as the link carries it: `new`
/// draws 32 random bytes; anything else must already be 32 bytes of
/// unpadded base64url (so every link of a meeting can share one secret).
pub fn e2ee_secret(arg: &str) -> Result<String, E2eeSecretError> {
    if arg == "new" {
        let mut bytes = [0u8; E2EE_SECRET_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| E2eeSecretError::Random)?;
        return Ok(URL_SAFE_NO_PAD.encode(bytes));
    }
    e2ee_secret_bytes(arg)?;
    Ok(arg.to_owned())
}

/// The bytes of a room secret as a link carries it (after `#e2ee=`):
/// 32 bytes of unpadded base64url.
pub fn e2ee_secret_bytes(secret: &str) -> Result<[u8; E2EE_SECRET_LEN], E2eeSecretError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(secret)
        .map_err(|_| E2eeSecretError::NotBase64Url)?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| E2eeSecretError::Length(b.len()))
}

/// The join URL with the room secret in its fragment (`#e2ee=<secret>`):
/// browsers never send a fragment to the server, so the secret reaches
/// only the page. `secret` comes from [`e2ee_secret`] (base64url: nothing
/// in it needs escaping).
pub fn with_e2ee_secret(url: &str, secret: &str) -> String {
    format!("{url}#e2ee={secret}")
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("a b/ö"), "a%20b%2F%C3%B6");
        assert_eq!(encode_path_segment("demo-1_x.y~"), "demo-1_x.y~");
    }

    #[test]
    fn join_url_puts_the_encoded_room_in_the_path_and_the_token_in_the_query() {
        assert_eq!(
            join_url("https://meet.example.org/", "Kommun styrelse?", "a.b.c"),
            "https://meet.example.org/r/Kommun%20styrelse%3F?token=a.b.c"
        );
        assert_eq!(
            join_url(DEFAULT_BASE_URL, "demo", "t"),
            "http://127.0.0.1:7880/r/demo?token=t"
        );
    }

    #[test]
    fn e2ee_links_carry_the_room_secret_in_the_fragment() {
        let a = e2ee_secret("new").unwrap_or_default();
        let b = e2ee_secret("new").unwrap_or_default();
        assert_eq!(a.len(), 43, "32 bytes of unpadded base64url: {a}");
        assert_ne!(a, b, "each `new` secret is drawn afresh");
        assert_eq!(e2ee_secret(&a).as_deref(), Ok(a.as_str()));
        let url = with_e2ee_secret(&join_url("https://m.example", "demo", "a.b.c"), &a);
        assert_eq!(
            url,
            format!("https://m.example/r/demo?token=a.b.c#e2ee={a}")
        );
        assert_eq!(e2ee_secret("c2hvcnQ"), Err(E2eeSecretError::Length(5)));
        assert_eq!(
            e2ee_secret(&format!("{a}=")),
            Err(E2eeSecretError::NotBase64Url)
        );
        // Standard base64's alphabet is not base64url.
        assert_eq!(
            e2ee_secret(&format!("+{}", a.get(1..).unwrap_or_default())),
            Err(E2eeSecretError::NotBase64Url)
        );
        assert_eq!(e2ee_secret(""), Err(E2eeSecretError::Length(0)));
    }

    #[test]
    fn links_without_an_identity_are_shared() {
        let g = link_grant("k", "r", Role::Attendee, None, 60);
        assert!(g.shared && g.sub == "guest" && !g.can_publish());
        let g = link_grant("k", "r", Role::Host, None, 60);
        assert!(g.shared && g.sub == "host" && g.grants.admin);
        let g = link_grant("k", "r", Role::Speaker, Some("anna"), 60);
        assert!(!g.shared && g.sub == "anna");
    }
}
