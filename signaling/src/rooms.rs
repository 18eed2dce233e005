//! Which worker hosts which room. A room lives on one worker; new rooms go to
//! the worker with the fewest participants.

use std::collections::HashMap;
use std::sync::Mutex;

use stamma_sfu::WorkerHandle;

#[derive(Debug)]
struct Entry {
    worker: usize,
    sessions: usize,
}

#[derive(Debug)]
pub struct RoomDirectory {
    workers: Vec<WorkerHandle>,
    rooms: Mutex<HashMap<String, Entry>>,
}

impl RoomDirectory {
    pub fn new(workers: Vec<WorkerHandle>) -> RoomDirectory {
        RoomDirectory {
            workers,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The worker for `room`, counting one more session in it.
    pub fn enter(&self, room: &str) -> Option<WorkerHandle> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = rooms.get_mut(room) {
            e.sessions += 1;
            return self.workers.get(e.worker).cloned();
        }
        let w = self.workers.iter().min_by_key(|w| {
            rooms
                .values()
                .filter(|e| e.worker == w.index)
                .map(|e| e.sessions)
                .sum::<usize>()
        })?;
        rooms.insert(
            room.to_owned(),
            Entry {
                worker: w.index,
                sessions: 1,
            },
        );
        Some(w.clone())
    }

    /// A session of `room` ended.
    pub fn leave(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = rooms.get_mut(room) {
            e.sessions = e.sessions.saturating_sub(1);
            if e.sessions == 0 {
                rooms.remove(room);
            }
        }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}
