//! What the SFU forwards, as it sees it after SRTP decryption: a recorder
//! for the end-to-end tests (compiled only with the `test-tap` feature,
//! which only the tests crate enables). With end-to-end encryption these
//! payloads must be opaque: the tests check that they neither decode nor
//! contain the plaintext.
//!
//! A mutex on the packet path is fine here and nowhere else: this code is
//! not in any server build.

use std::sync::{Mutex, PoisonError};

use stamma_proto::MediaKind;

/// One forwarded RTP payload and where it was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TappedPacket {
    pub room: String,
    pub kind: MediaKind,
    pub payload: Vec<u8>,
}

/// Keeps the first `capacity` payloads forwarded by every worker.
#[derive(Debug)]
pub struct MediaTap {
    capacity: usize,
    packets: Mutex<Vec<TappedPacket>>,
}

impl MediaTap {
    pub fn new(capacity: usize) -> MediaTap {
        MediaTap {
            capacity,
            packets: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, room: &str, kind: MediaKind, payload: &[u8]) {
        let mut packets = self.packets.lock().unwrap_or_else(PoisonError::into_inner);
        if packets.len() < self.capacity {
            packets.push(TappedPacket {
                room: room.to_owned(),
                kind,
                payload: payload.to_vec(),
            });
        }
    }

    /// Everything recorded so far (and forget it).
    pub fn take(&self) -> Vec<TappedPacket> {
        std::mem::take(&mut *self.packets.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
