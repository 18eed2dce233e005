//! A meeting: who is in it. Tracks live with their publishing participant.

use crate::demux::ParticipantKey;

#[derive(Debug)]
pub struct Room {
    pub name: String,
    pub participants: Vec<ParticipantKey>,
}

impl Room {
    pub fn new(name: String) -> Room {
        Room {
            name,
            participants: Vec::new(),
        }
    }

    pub fn remove(&mut self, key: ParticipantKey) {
        self.participants.retain(|k| *k != key);
    }
}
