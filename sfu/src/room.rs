//! A meeting: who is in it and who is speaking. Tracks live with their
//! publishing participant.

use std::time::Instant;

use str0m::media::Mid;

use crate::demux::ParticipantKey;
use crate::speaker::SpeakerDetector;

/// An audio track in the SpeakerDetector: its publisher and m-line.
pub type SpeakerKey = (ParticipantKey, Mid);

pub struct Room {
    pub name: String,
    pub participants: Vec<ParticipantKey>,
    pub speakers: SpeakerDetector<SpeakerKey>,
    /// The publisher of the dominant speaker's audio; their camera is served
    /// first by every subscriber's Allocator.
    pub dominant: Option<ParticipantKey>,
    /// The last `join_seq` handed out: never reused while the room exists,
    /// so a rejoin is a new member for E2EE key ids.
    pub joins: u64,
    /// When a microphone's SilenceGate last opened: someone started talking
    /// (see `allocator::VOICING`).
    pub last_gate_opening: Option<Instant>,
}

impl Room {
    pub fn new(name: String) -> Room {
        Room {
            name,
            participants: Vec::new(),
            speakers: SpeakerDetector::new(),
            dominant: None,
            joins: 0,
            last_gate_opening: None,
        }
    }

    pub fn remove(&mut self, key: ParticipantKey) {
        self.participants.retain(|k| *k != key);
        if self.dominant == Some(key) {
            self.dominant = None;
        }
    }
}
