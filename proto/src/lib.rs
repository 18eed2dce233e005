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

/// Largest signaling message (a WebSocket text frame) the server accepts, in bytes.
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;
