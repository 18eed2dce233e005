//! Which worker hosts which room, and each room's options. A room lives on
//! one worker; new rooms go to the worker with the fewest participants.
//!
//! Rooms come into being in two ways: implicitly, when the first session
//! joins (and they vanish with the last one), or through the admin API with
//! options, before anyone joins (and they stay until deleted).
//!
//! While the server drains, no room comes into being either way; rooms that
//! exist still take sessions.

use std::collections::HashMap;
use std::sync::Mutex;

use stamma_proto::Role;
use stamma_proto::grant::unix_now;
use stamma_sfu::{RoomOptions, WorkerHandle};
use tokio::sync::watch;

/// A room's settings as the admin API sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomSettings {
    /// Overrides the media plane's per-room limit when set.
    pub max_participants: Option<usize>,
    /// Role of a join link created without one.
    pub default_role: Role,
    pub e2ee_required: bool,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            max_participants: None,
            default_role: Role::Speaker,
            e2ee_required: false,
        }
    }
}

impl RoomSettings {
    fn media(&self) -> RoomOptions {
        RoomOptions {
            max_participants: self.max_participants,
            e2ee_required: self.e2ee_required,
        }
    }
}

#[derive(Debug)]
struct Entry {
    worker: usize,
    sessions: usize,
    /// Tells a room apart from an earlier one of the same name (deleted, then
    /// joined again), so a session of the old one cannot leave the new one.
    generation: u64,
    created_at: u64,
    settings: RoomSettings,
    /// Created through the admin API: stays when empty.
    persistent: bool,
}

/// A room as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    pub name: String,
    /// Signaling sessions in the room (joined or joining).
    pub sessions: usize,
    pub created_at: u64,
    pub settings: RoomSettings,
    pub worker: usize,
}

/// What a session got from [`RoomDirectory::enter`]; give it back to `leave`.
#[derive(Debug)]
pub struct Entered {
    pub worker: WorkerHandle,
    pub options: RoomOptions,
    pub ticket: Ticket,
}

#[derive(Debug)]
pub struct Ticket {
    room: String,
    generation: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("room already exists")]
    Exists,
    /// No new room can be opened here now.
    #[error(transparent)]
    Unavailable(#[from] EnterError),
}

/// Why a new room cannot be opened (by a join or by the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnterError {
    #[error("no media worker available")]
    NoWorker,
    #[error("this server is draining and takes no new rooms")]
    Draining,
    #[error("this server holds as many rooms as it is configured for")]
    TooManyRooms,
}

#[derive(Debug)]
pub struct RoomDirectory {
    workers: Vec<WorkerHandle>,
    rooms: Mutex<Rooms>,
    /// Rooms with at least one session, for those waiting on it (drain:
    /// an empty room created through the API holds nobody up).
    occupied: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Rooms {
    map: HashMap<String, Entry>,
    next_generation: u64,
    /// Draining: no new rooms. Under the same lock as `map`, so no room can
    /// be created after `refuse_new_rooms` returns.
    refuse_new: bool,
    /// Most rooms at once; 0 for no limit.
    max_rooms: usize,
}

impl Rooms {
    /// The worker with the fewest sessions.
    fn least_loaded(&self, workers: &[WorkerHandle]) -> Option<usize> {
        workers
            .iter()
            .min_by_key(|w| {
                self.map
                    .values()
                    .filter(|e| e.worker == w.index)
                    .map(|e| e.sessions)
                    .sum::<usize>()
            })
            .map(|w| w.index)
    }

    /// The worker for a new room, if a new room may be opened.
    fn place_new(&self, workers: &[WorkerHandle]) -> Result<usize, EnterError> {
        if self.refuse_new {
            return Err(EnterError::Draining);
        }
        if self.max_rooms > 0 && self.map.len() >= self.max_rooms {
            return Err(EnterError::TooManyRooms);
        }
        self.least_loaded(workers).ok_or(EnterError::NoWorker)
    }

    fn occupied(&self) -> usize {
        self.map.values().filter(|e| e.sessions > 0).count()
    }

    fn insert(&mut self, room: &str, worker: usize, settings: RoomSettings, persistent: bool) {
        self.next_generation += 1;
        self.map.insert(
            room.to_owned(),
            Entry {
                worker,
                sessions: 0,
                generation: self.next_generation,
                created_at: unix_now(),
                settings,
                persistent,
            },
        );
    }
}

fn view(name: &str, e: &Entry) -> RoomView {
    RoomView {
        name: name.to_owned(),
        sessions: e.sessions,
        created_at: e.created_at,
        settings: e.settings,
        worker: e.worker,
    }
}

impl RoomDirectory {
    pub fn new(workers: Vec<WorkerHandle>) -> RoomDirectory {
        RoomDirectory {
            workers,
            rooms: Mutex::new(Rooms::default()),
            occupied: watch::Sender::new(0),
        }
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker for `room` and its options, counting one more session in it.
    pub fn enter(&self, room: &str) -> Result<Entered, EnterError> {
        let mut rooms = self.lock();
        if !rooms.map.contains_key(room) {
            let w = rooms.place_new(&self.workers)?;
            rooms.insert(room, w, RoomSettings::default(), false);
        }
        let e = rooms.map.get_mut(room).ok_or(EnterError::NoWorker)?;
        e.sessions += 1;
        let entered = Entered {
            worker: self
                .workers
                .get(e.worker)
                .ok_or(EnterError::NoWorker)?
                .clone(),
            options: e.settings.media(),
            ticket: Ticket {
                room: room.to_owned(),
                generation: e.generation,
            },
        };
        self.occupied.send_replace(rooms.occupied());
        Ok(entered)
    }

    /// A session of the room ended.
    pub fn leave(&self, ticket: &Ticket) {
        let mut rooms = self.lock();
        if let Some(e) = rooms.map.get_mut(&ticket.room)
            && e.generation == ticket.generation
        {
            e.sessions = e.sessions.saturating_sub(1);
            if e.sessions == 0 && !e.persistent {
                rooms.map.remove(&ticket.room);
            }
            self.occupied.send_replace(rooms.occupied());
        }
    }

    /// Every room, empty ones created through the API included.
    pub fn room_count(&self) -> usize {
        self.lock().map.len()
    }

    /// Rooms with at least one session.
    pub fn occupied_count(&self) -> usize {
        *self.occupied.borrow()
    }

    /// Follows [`RoomDirectory::occupied_count`].
    pub fn watch_occupied(&self) -> watch::Receiver<usize> {
        self.occupied.subscribe()
    }

    /// At most `max` rooms at once (0: no limit); rooms already open stay.
    pub fn set_max_rooms(&self, max: usize) {
        self.lock().max_rooms = max;
    }

    /// From now on only rooms that exist take sessions.
    pub fn refuse_new_rooms(&self) {
        self.lock().refuse_new = true;
    }

    /// Create a room with settings before anyone joins.
    pub fn create(&self, room: &str, settings: RoomSettings) -> Result<RoomView, DirectoryError> {
        let mut rooms = self.lock();
        if rooms.map.contains_key(room) {
            return Err(DirectoryError::Exists);
        }
        let w = rooms.place_new(&self.workers)?;
        rooms.insert(room, w, settings, true);
        rooms
            .map
            .get(room)
            .map(|e| view(room, e))
            .ok_or(DirectoryError::Unavailable(EnterError::NoWorker))
    }

    pub fn get(&self, room: &str) -> Option<RoomView> {
        self.lock().map.get(room).map(|e| view(room, e))
    }

    /// Every room, by name.
    pub fn list(&self) -> Vec<RoomView> {
        let rooms = self.lock();
        let mut v: Vec<RoomView> = rooms.map.iter().map(|(n, e)| view(n, e)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Forget a room; its sessions are closed by its worker. Returns the worker.
    pub fn remove(&self, room: &str) -> Option<WorkerHandle> {
        let mut rooms = self.lock();
        let e = rooms.map.remove(room)?;
        self.occupied.send_replace(rooms.occupied());
        self.workers.get(e.worker).cloned()
    }

    pub fn worker(&self, index: usize) -> Option<&WorkerHandle> {
        self.workers.get(index)
    }
}
