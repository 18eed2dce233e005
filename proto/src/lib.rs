//! Wire types shared by the Stämma server and its clients: the signaling
//! protocol (version 1, see `docs/protocol.md`) and join-token grants.
//!
//! Defined once so the two sides cannot drift.

pub mod grant;
pub mod signal;

pub use grant::{ALL_ROOMS, Grant, GrantError, Grants, Role};
pub use signal::{
    ClientSignal, ErrorCode, IceServer, LayerState, MAX_CHAT_CHARS, MAX_DISPLAY_NAME_CHARS,
    MAX_E2EE_PAYLOAD_BYTES, MediaKind, ModerateAction, ParticipantInfo, PauseReason,
    PublishedTrack, ServerSignal, Speaker, SubscribedTrack, TrackInfo, TrackSource, VideoQuality,
    chat_text, display_name, e2ee_payload,
};

/// The signaling protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A random token of `len` characters from [A-Za-z0-9]: ids, ICE credentials, dev keys.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Largest signaling message (a WebSocket text frame) the server accepts, in
/// bytes. An SDP answer grows by ~0.7 KiB per m-line, and a subscriber in a
/// 50-person meeting answers for ~100 of them (64 KiB was measured too
/// small by the load tester); this holds ~700.
pub const MAX_SIGNAL_BYTES: usize = 512 * 1024;
