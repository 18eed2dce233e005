//! Admin operations on a worker's rooms (the admin API's view into the media
//! plane). Each carries a oneshot for the reply, so the caller can bound its
//! wait; the worker never blocks on a caller that gave up.

use stamma_proto::{Role, TrackInfo};
use tokio::sync::oneshot;

/// Per-room settings the admin API stores and every join carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomOptions {
    /// Overrides the worker's `max_participants_per_room` when set.
    pub max_participants: Option<usize>,
    /// Told to clients in `joined`; enforcement comes with client-side E2EE.
    pub e2ee_required: bool,
}

/// One participant as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantSnapshot {
    pub id: String,
    pub identity: String,
    pub name: Option<String>,
    pub role: Role,
    pub can_publish: bool,
    pub tracks: Vec<TrackInfo>,
    /// Seconds since the Unix epoch.
    pub joined_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no participant {0:?} in this room")]
    UnknownParticipant(String),
    #[error("participant publishes no track {0:?}")]
    UnknownTrack(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, AdminError>>;

#[derive(Debug)]
pub enum AdminCommand {
    /// Everyone in `room` (empty if the worker has no such room).
    ListParticipants {
        room: String,
        reply: Reply<Vec<ParticipantSnapshot>>,
    },
    /// Close the participant's session with `removed`.
    RemoveParticipant {
        room: String,
        participant_id: String,
        reply: Reply<()>,
    },
    /// Stop forwarding a track and tell the room with `track_muted`.
    MuteTrack {
        room: String,
        participant_id: String,
        track_id: String,
        reply: Reply<()>,
    },
    /// Change a participant's role, and its publish permission with it.
    SetRole {
        room: String,
        participant_id: String,
        role: Role,
        reply: Reply<ParticipantSnapshot>,
    },
    /// Close every session in `room` with `room_closed`; replies how many.
    CloseRoom { room: String, reply: Reply<usize> },
}
