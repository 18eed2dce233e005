//! Which worker hosts which room. A room lives on one worker; new rooms go to
//! the worker with the fewest participants.

use std::collections::HashMap;
use std::sync::Mutex;

use stamma_sfu::WorkerHandle;
use tokio::sync::watch;

#[derive(Debug)]
struct Entry {
    worker: usize,
    sessions: usize,
}

#[derive(Debug)]
struct Inner {
    rooms: HashMap<String, Entry>,
    /// Draining: no new rooms. Under the same lock as `rooms`, so no room
    /// can be created after `refuse_new_rooms` returns.
    refuse_new: bool,
}

/// Why [`RoomDirectory::enter`] found no worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnterError {
    #[error("no media worker available")]
    NoWorker,
    #[error("this server is draining and takes no new rooms")]
    Draining,
}

#[derive(Debug)]
pub struct RoomDirectory {
    workers: Vec<WorkerHandle>,
    inner: Mutex<Inner>,
    /// The number of rooms, for those waiting on it (drain).
    count: watch::Sender<usize>,
}

impl RoomDirectory {
    pub fn new(workers: Vec<WorkerHandle>) -> RoomDirectory {
        RoomDirectory {
            workers,
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                refuse_new: false,
            }),
            count: watch::Sender::new(0),
        }
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The worker for `room`, counting one more session in it.
    pub fn enter(&self, room: &str) -> Result<WorkerHandle, EnterError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = inner.rooms.get_mut(room) {
            e.sessions += 1;
            return self
                .workers
                .get(e.worker)
                .cloned()
                .ok_or(EnterError::NoWorker);
        }
        if inner.refuse_new {
            return Err(EnterError::Draining);
        }
        let w = self
            .workers
            .iter()
            .min_by_key(|w| {
                inner
                    .rooms
                    .values()
                    .filter(|e| e.worker == w.index)
                    .map(|e| e.sessions)
                    .sum::<usize>()
            })
            .ok_or(EnterError::NoWorker)?;
        inner.rooms.insert(
            room.to_owned(),
            Entry {
                worker: w.index,
                sessions: 1,
            },
        );
        self.count.send_replace(inner.rooms.len());
        Ok(w.clone())
    }

    /// A session of `room` ended.
    pub fn leave(&self, room: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = inner.rooms.get_mut(room) {
            e.sessions = e.sessions.saturating_sub(1);
            if e.sessions == 0 {
                inner.rooms.remove(room);
                self.count.send_replace(inner.rooms.len());
            }
        }
    }

    /// From now on only rooms that exist take sessions.
    pub fn refuse_new_rooms(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refuse_new = true;
    }

    pub fn room_count(&self) -> usize {
        *self.count.borrow()
    }

    /// Follows [`RoomDirectory::room_count`].
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}
