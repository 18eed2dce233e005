//! Stämma client library: the signaling client, a WebRTC peer (webrtc-rs,
//! independent of the server's str0m) and media helpers. Used by the tests
//! and the load tester, and embeddable by vendors.

pub mod e2ee;
pub mod hpke;
mod kdf;
pub mod key_exchange;
pub mod media;
#[cfg(feature = "webrtc-peer")]
pub mod peer;
pub mod sframe;
pub mod signal;
pub mod stamp;

pub use stamma_proto as proto;
