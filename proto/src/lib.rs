//! Wire types shared by the Stämma server and its clients: the signaling
//! protocol (version 1, see `docs/protocol.md`) and join-token grants.
//!
//! Defined once so the two sides cannot drift.

pub mod grant;
pub mod signal;

pub use grant::{Grant, GrantError, Grants, Role};
pub use signal::{
    ClientSignal, ErrorCode, MediaKind, ParticipantInfo, PublishedTrack, ServerSignal,
    SubscribedTrack, TrackInfo, TrackSource,
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

/// Largest signaling message (a WebSocket text frame) the server accepts, in bytes.
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;
