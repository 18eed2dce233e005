//! What happens in rooms, for those outside the media plane (webhooks).
//!
//! Events are handed over with `try_send` on a bounded channel: a full
//! channel drops the event rather than stall a worker, which forwards media
//! for every room it holds. None is per packet.

use stamma_proto::{ParticipantInfo, TrackInfo};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The first participant entered the room on this node.
    RoomStarted { room: String },
    /// The last participant left.
    RoomFinished { room: String },
    ParticipantJoined {
        room: String,
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        room: String,
        participant: ParticipantInfo,
        reason: String,
    },
    TrackPublished {
        room: String,
        participant: ParticipantInfo,
        track: TrackInfo,
    },
    TrackUnpublished {
        room: String,
        participant: ParticipantInfo,
        track: TrackInfo,
    },
}

/// Where workers report [`MediaEvent`]s; by default nowhere.
#[derive(Clone, Default)]
pub struct EventSink(Option<mpsc::Sender<MediaEvent>>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "EventSink(on)"
        } else {
            "EventSink(off)"
        })
    }
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<MediaEvent>) -> EventSink {
        EventSink(Some(tx))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Report `event` if someone listens and there is room; never waits.
    /// Returns false when the event was dropped.
    pub fn emit(&self, event: impl FnOnce() -> MediaEvent) -> bool {
        match &self.0 {
            Some(tx) => tx.try_send(event()).is_ok(),
            None => true,
        }
    }
}
