//! The worker's side of admin commands: they act on its rooms like the
//! participants' own signals do, and answer on the command's oneshot.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use stamma_proto::{ErrorCode, Role, ServerSignal, TrackInfo};
use str0m::media::Mid;
use tracing::info;

use super::Worker;
use crate::admin::{AdminCommand, AdminError, ParticipantSnapshot};
use crate::demux::ParticipantKey;
use crate::event::MediaEvent;
use crate::participant::Participant;

impl Worker {
    pub(super) fn admin(&mut self, now: Instant, command: AdminCommand) {
        // A caller that timed out dropped its receiver; the operation still
        // happened, so a failed reply is not an error.
        match command {
            AdminCommand::ListParticipants { room, reply } => {
                let list = self
                    .rooms
                    .get(&room)
                    .map(|r| {
                        r.participants
                            .iter()
                            .filter_map(|&k| self.participants.get(k)?.as_ref())
                            .map(|p| snapshot(p, now))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(Ok(list));
            }
            AdminCommand::RemoveParticipant {
                room,
                participant_id,
                reply,
            } => {
                let r = self.find(&room, &participant_id).map(|key| {
                    self.remove_by_admin(
                        key,
                        "an administrator removed you from the room",
                        "removed by an administrator",
                    );
                });
                let _ = reply.send(r);
            }
            AdminCommand::MuteTrack {
                room,
                participant_id,
                track_id,
                reply,
            } => {
                let r = self
                    .find(&room, &participant_id)
                    .and_then(|key| self.admin_mute(key, &track_id));
                let _ = reply.send(r);
            }
            AdminCommand::SetRole {
                room,
                participant_id,
                role,
                reply,
            } => {
                let r = self.find(&room, &participant_id).and_then(|key| {
                    self.set_role(now, key, role)
                        .ok_or(AdminError::UnknownParticipant(participant_id))
                });
                let _ = reply.send(r);
            }
            AdminCommand::CloseRoom { room, reply } => {
                let keys = self
                    .rooms
                    .get(&room)
                    .map(|r| r.participants.clone())
                    .unwrap_or_default();
                for &key in &keys {
                    if let Some(p) = self.get(key) {
                        p.close(
                            ErrorCode::RoomClosed,
                            "an administrator deleted the room".into(),
                        );
                    }
                    self.remove(key, "room deleted");
                }
                info!(room = %room, participants = keys.len(), "room closed by an administrator");
                let _ = reply.send(Ok(keys.len()));
            }
        }
    }

    /// Close `key`'s session with `removed` (telling it `why`) and take it
    /// out of its room (telling the others `reason`).
    pub(super) fn remove_by_admin(&mut self, key: ParticipantKey, why: &str, reason: &str) {
        if let Some(p) = self.get(key) {
            p.close(ErrorCode::Removed, why.to_owned());
        }
        self.remove(key, reason);
    }

    /// The participant `id`, if it is in `room` (an admin of one room must
    /// not reach participants of another by id).
    pub(super) fn find(&self, room: &str, id: &str) -> Result<ParticipantKey, AdminError> {
        self.by_id
            .get(id)
            .copied()
            .filter(|&k| {
                self.participants
                    .get(k)
                    .and_then(|p| p.as_ref())
                    .is_some_and(|p| p.room == room)
            })
            .ok_or_else(|| AdminError::UnknownParticipant(id.to_owned()))
    }

    pub(super) fn admin_mute(
        &mut self,
        key: ParticipantKey,
        track_id: &str,
    ) -> Result<(), AdminError> {
        let Some(p) = self.get(key) else {
            return Err(AdminError::UnknownTrack(track_id.to_owned()));
        };
        let Some(t) = p.published.iter_mut().find(|t| t.id == track_id) else {
            return Err(AdminError::UnknownTrack(track_id.to_owned()));
        };
        if t.muted {
            return Ok(());
        }
        t.muted = true;
        let (room, pid, tid, mid) = (p.room.clone(), p.id.clone(), t.id.clone(), t.mid);
        let signal = ServerSignal::TrackMuted {
            track_id: tid,
            participant_id: pid,
            muted: true,
        };
        // Unlike a mute of its own, the publisher learns of this one too.
        p.send(signal.clone());
        info!(participant = %p.id, track = track_id, "track muted by an administrator");
        self.restart_subscribers(key, mid);
        self.broadcast(&room, key, |_| signal.clone());
        Ok(())
    }

    /// Stop the forwarders of a publisher's track, so it resumes (after an
    /// unmute) on a fresh keyframe instead of mid-stream.
    pub(super) fn restart_subscribers(&mut self, publisher: ParticipantKey, mid: Mid) {
        for q in self.participants.iter_mut().flatten() {
            for s in &mut q.subscriptions {
                if s.publisher == publisher && s.source_mid == mid {
                    s.current = None;
                    s.forwarder.restart();
                }
            }
        }
    }

    fn set_role(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        role: Role,
    ) -> Option<ParticipantSnapshot> {
        let p = self.get(key)?;
        p.role = role;
        // The role's grants replace the token's: the administrator decides.
        p.can_publish = role.default_grants().publish && role != Role::Attendee;
        p.can_admin = role.default_grants().admin;
        let can_publish = p.can_publish;
        let (room, pid) = (p.room.clone(), p.id.clone());
        let who = p.info();
        let dropped: Vec<(String, Mid, TrackInfo)> = if can_publish {
            Vec::new()
        } else {
            p.published
                .drain(..)
                .map(|t| {
                    let info = t.info(&pid);
                    (t.id, t.mid, info)
                })
                .collect()
        };
        info!(participant = %pid, ?role, can_publish, "role changed by an administrator");
        for (track_id, mid, track) in dropped {
            self.emit(|| MediaEvent::TrackUnpublished {
                room: room.clone(),
                participant: who.clone(),
                track,
            });
            self.unpublish_from_room(&room, key, &pid, &track_id, mid);
        }
        let signal = ServerSignal::RoleChanged {
            participant_id: pid,
            role,
            can_publish,
        };
        if let Some(p) = self.get(key) {
            p.send(signal.clone());
        }
        self.broadcast(&room, key, |_| signal.clone());
        self.get(key).map(|p| snapshot(p, now))
    }
}

fn snapshot(p: &Participant, now: Instant) -> ParticipantSnapshot {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let age = now.saturating_duration_since(p.joined_at).as_secs();
    ParticipantSnapshot {
        id: p.id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        role: p.role,
        can_publish: p.can_publish,
        tracks: p.published.iter().map(|t| t.info(&p.id)).collect(),
        joined_at: unix_now.saturating_sub(age),
    }
}
