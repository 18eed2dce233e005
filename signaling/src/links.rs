//! Join links: the web client's address for a room, with a join token.
//! Made by the admin API (`POST /api/v1/rooms/{room}/links`), by
//! `stamma link create` and by `stamma dev`, so all three agree.

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
    fn links_without_an_identity_are_shared() {
        let g = link_grant("k", "r", Role::Attendee, None, 60);
        assert!(g.shared && g.sub == "guest" && !g.can_publish());
        let g = link_grant("k", "r", Role::Host, None, 60);
        assert!(g.shared && g.sub == "host" && g.grants.admin);
        let g = link_grant("k", "r", Role::Speaker, Some("anna"), 60);
        assert!(!g.shared && g.sub == "anna");
    }
}
