//! What participants do to the meeting besides media: chat, raised hands,
//! and hosts' moderation (mute, remove). The worker owns the room, so it
//! is the one place that knows who is in it and who may do what.

use std::time::{SystemTime, UNIX_EPOCH};

use stamma_proto::{ErrorCode, ModerateAction, ServerSignal, chat_text, e2ee_payload};
use tracing::info;

use super::Worker;
use crate::admin::AdminError;
use crate::demux::ParticipantKey;

impl Worker {
    /// Send `signal` to everyone in `key`'s room, `key` first.
    fn tell_room_and_self(&mut self, key: ParticipantKey, signal: ServerSignal) {
        let Some(p) = self.get(key) else { return };
        let room = p.room.clone();
        p.send(signal.clone());
        self.broadcast(&room, key, |_| signal.clone());
    }

    fn refuse(&mut self, key: ParticipantKey, code: ErrorCode, message: String) {
        if let Some(p) = self.get(key) {
            p.send(ServerSignal::error(code, message));
        }
    }

    pub(super) fn chat(&mut self, key: ParticipantKey, text: &str) {
        let Some(p) = self.get(key) else { return };
        let text = match chat_text(text) {
            Ok(t) => t.to_owned(),
            Err(why) => {
                p.send(ServerSignal::error(ErrorCode::BadMessage, why));
                return;
            }
        };
        // The text itself is never logged: it is the participants' (and,
        // with E2EE, ciphertext anyway).
        let signal = ServerSignal::Chat {
            participant_id: p.id.clone(),
            text,
            ts_ms: unix_ms(),
        };
        self.tell_room_and_self(key, signal);
    }

    /// Relay an end-to-end encryption message unread: to one participant of
    /// the sender's room, or to everyone else in it. The payload is never
    /// logged (it is key material, sealed or public).
    pub(super) fn e2ee(&mut self, key: ParticipantKey, to: Option<&str>, payload: String) {
        let Some(p) = self.get(key) else { return };
        if let Err(why) = e2ee_payload(&payload) {
            p.send(ServerSignal::error(ErrorCode::BadMessage, why));
            return;
        }
        let (room, from) = (p.room.clone(), p.id.clone());
        let signal = ServerSignal::E2ee { from, payload };
        match to {
            None => self.broadcast(&room, key, |_| signal.clone()),
            Some(id) => match self.find(&room, id) {
                Ok(target) if target != key => {
                    if let Some(t) = self.get(target) {
                        t.send(signal);
                    }
                }
                Ok(_) => self.refuse(key, ErrorCode::BadMessage, "e2ee: to is yourself".into()),
                Err(e) => self.refuse(key, ErrorCode::UnknownParticipant, e.to_string()),
            },
        }
    }

    /// Raise or lower `key`'s own hand, or (a host) lower another's.
    pub(super) fn hand(&mut self, key: ParticipantKey, raised: bool, target: Option<&str>) {
        let Some(p) = self.get(key) else { return };
        let target = match target {
            None => key,
            Some(id) if id == p.id => key,
            Some(id) => {
                // Raising someone else's hand would put words in their mouth.
                if !p.can_admin || raised {
                    let why = if raised {
                        "only the participant itself can raise its hand"
                    } else {
                        "only a host can lower another participant's hand"
                    };
                    p.send(ServerSignal::error(ErrorCode::NotAllowed, why));
                    return;
                }
                let room = p.room.clone();
                match self.find(&room, id) {
                    Ok(k) => k,
                    Err(e) => {
                        return self.refuse(key, ErrorCode::UnknownParticipant, e.to_string());
                    }
                }
            }
        };
        let Some(t) = self.get(target) else { return };
        if t.hand_raised == raised {
            return;
        }
        t.hand_raised = raised;
        let signal = ServerSignal::HandRaised {
            participant_id: t.id.clone(),
            raised,
        };
        self.tell_room_and_self(target, signal);
    }

    /// A host mutes or removes someone in its room. Unmuting is left out
    /// on purpose: only a participant turns its own microphone or camera on.
    pub(super) fn moderate(
        &mut self,
        key: ParticipantKey,
        action: ModerateAction,
        target_id: &str,
        track_id: Option<&str>,
    ) {
        let Some(p) = self.get(key) else { return };
        // Checked before the target is looked up, so a participant without
        // the grant learns nothing about who is in the room.
        if !p.can_admin {
            p.send(ServerSignal::error(
                ErrorCode::NotAllowed,
                "only a host can moderate (your token has no admin grant)",
            ));
            return;
        }
        let (room, own_id) = (p.room.clone(), p.id.clone());
        let target = match self.find(&room, target_id) {
            Ok(k) => k,
            Err(e) => return self.refuse(key, ErrorCode::UnknownParticipant, e.to_string()),
        };
        match action {
            ModerateAction::Remove => {
                if target == key {
                    return self.refuse(
                        key,
                        ErrorCode::BadMessage,
                        "a host cannot remove itself; send leave".into(),
                    );
                }
                info!(participant = %target_id, by = %own_id, "removed by a host");
                self.remove_by_admin(
                    target,
                    "a host removed you from the room",
                    "removed by a host",
                );
            }
            ModerateAction::Mute => {
                let tracks: Vec<String> = match track_id {
                    Some(t) => vec![t.to_owned()],
                    None => self
                        .get(target)
                        .map(|t| t.published.iter().map(|t| t.id.clone()).collect())
                        .unwrap_or_default(),
                };
                for t in tracks {
                    if let Err(e) = self.admin_mute(target, &t) {
                        let code = match e {
                            AdminError::UnknownParticipant(_) => ErrorCode::UnknownParticipant,
                            AdminError::UnknownTrack(_) => ErrorCode::UnknownTrack,
                        };
                        self.refuse(key, code, e.to_string());
                    }
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! The meeting features driven through the sans-IO worker, no sockets.
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use stamma_proto::{ClientSignal, Role};
    use tokio::sync::mpsc;

    use super::*;
    use crate::ToParticipant;
    use crate::command::{Command, JoinRequest};
    use crate::config::SfuConfig;

    fn worker() -> Worker {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("certificate");
        let addr: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let config = SfuConfig {
            media_timeout: Duration::from_secs(30),
            ..SfuConfig::default()
        };
        Worker::new(config, addr, addr, cert, Instant::now())
    }

    fn join(w: &mut Worker, id: &str, room: &str, role: Role) -> mpsc::Receiver<ToParticipant> {
        let (tx, rx) = mpsc::channel(64);
        w.handle_command(
            Instant::now(),
            Command::Join(Box::new(JoinRequest {
                participant_id: id.into(),
                room: room.into(),
                identity: id.to_lowercase(),
                name: None,
                role,
                can_publish: role != Role::Attendee,
                can_subscribe: true,
                can_admin: role == Role::Host,
                signals: tx,
                room_options: Default::default(),
            })),
        );
        rx
    }

    fn send(w: &mut Worker, id: &str, signal: ClientSignal) {
        w.handle_command(
            Instant::now(),
            Command::Signal {
                participant_id: id.into(),
                signal,
            },
        );
    }

    fn signals(rx: &mut mpsc::Receiver<ToParticipant>) -> Vec<ServerSignal> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let ToParticipant::Signal(s) = m {
                v.push(s);
            }
        }
        v
    }

    fn errors(rx: &mut mpsc::Receiver<ToParticipant>) -> Vec<ErrorCode> {
        signals(rx)
            .into_iter()
            .filter_map(|s| match s {
                ServerSignal::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }

    fn e2ee_from(rx: &mut mpsc::Receiver<ToParticipant>) -> Vec<(String, String)> {
        signals(rx)
            .into_iter()
            .filter_map(|s| match s {
                ServerSignal::E2ee { from, payload } => Some((from, payload)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn e2ee_messages_are_relayed_unread_to_one_or_to_the_rest_of_the_room_only() {
        let mut w = worker();
        let mut a = join(&mut w, "PA_a", "r", Role::Speaker);
        let mut b = join(&mut w, "PA_b", "r", Role::Speaker);
        let mut c = join(&mut w, "PA_c", "r", Role::Attendee);
        let mut other = join(&mut w, "PA_x", "elsewhere", Role::Host);
        for rx in [&mut a, &mut b, &mut c, &mut other] {
            signals(rx);
        }
        let to_rest = ClientSignal::E2ee {
            to: None,
            payload: "pk".into(),
        };
        send(&mut w, "PA_a", to_rest);
        let sealed = ClientSignal::E2ee {
            to: Some("PA_c".into()),
            payload: "sealed-for-c".into(),
        };
        send(&mut w, "PA_a", sealed);
        assert_eq!(e2ee_from(&mut a), vec![], "not echoed to the sender");
        assert_eq!(e2ee_from(&mut b), vec![("PA_a".into(), "pk".into())]);
        assert_eq!(
            e2ee_from(&mut c),
            vec![
                ("PA_a".into(), "pk".into()),
                ("PA_a".into(), "sealed-for-c".into())
            ]
        );
        assert_eq!(e2ee_from(&mut other), vec![], "other rooms hear nothing");
        // Another room's participant is unknown here; empty and oversized
        // payloads are refused; none of it ends the session.
        let cross = ClientSignal::E2ee {
            to: Some("PA_x".into()),
            payload: "p".into(),
        };
        send(&mut w, "PA_a", cross);
        let empty = ClientSignal::E2ee {
            to: None,
            payload: String::new(),
        };
        send(&mut w, "PA_a", empty);
        let big = ClientSignal::E2ee {
            to: None,
            payload: "x".repeat(stamma_proto::MAX_E2EE_PAYLOAD_BYTES + 1),
        };
        send(&mut w, "PA_a", big);
        assert_eq!(
            errors(&mut a),
            vec![
                ErrorCode::UnknownParticipant,
                ErrorCode::BadMessage,
                ErrorCode::BadMessage
            ]
        );
        assert_eq!(e2ee_from(&mut other), vec![]);
        assert_eq!(e2ee_from(&mut b), vec![]);
    }

    #[test]
    fn join_order_is_counted_per_room_and_never_reused() {
        let mut w = worker();
        let mut a = join(&mut w, "PA_a", "r", Role::Speaker);
        let seq = |rx: &mut mpsc::Receiver<ToParticipant>| {
            signals(rx).into_iter().find_map(|s| match s {
                ServerSignal::Joined { participant, .. } => Some(participant.join_seq),
                _ => None,
            })
        };
        assert_eq!(seq(&mut a), Some(1));
        let mut b = join(&mut w, "PA_b", "r", Role::Speaker);
        assert_eq!(seq(&mut b), Some(2));
        let mut x = join(&mut w, "PA_x", "other", Role::Speaker);
        assert_eq!(seq(&mut x), Some(1));
        w.handle_command(
            Instant::now(),
            Command::Leave {
                participant_id: "PA_b".into(),
                reason: "left".into(),
            },
        );
        let mut b2 = join(&mut w, "PA_b2", "r", Role::Speaker);
        assert_eq!(seq(&mut b2), Some(3));
    }

    #[test]
    fn chat_reaches_everyone_in_the_room_sender_included_and_no_one_else() {
        let mut w = worker();
        let mut a = join(&mut w, "PA_a", "r", Role::Attendee);
        let mut b = join(&mut w, "PA_b", "r", Role::Speaker);
        let mut other = join(&mut w, "PA_c", "elsewhere", Role::Speaker);
        for rx in [&mut a, &mut b, &mut other] {
            signals(rx);
        }
        send(
            &mut w,
            "PA_a",
            ClientSignal::Chat {
                text: "  hej  ".into(),
            },
        );
        for rx in [&mut a, &mut b] {
            let got = signals(rx);
            assert!(
                matches!(got.as_slice(), [ServerSignal::Chat { participant_id, text, ts_ms }]
                    if participant_id == "PA_a" && text == "hej" && *ts_ms > 1_600_000_000_000),
                "{got:?}"
            );
        }
        assert!(signals(&mut other).is_empty());
        send(&mut w, "PA_a", ClientSignal::Chat { text: " ".into() });
        assert_eq!(errors(&mut a), [ErrorCode::BadMessage]);
        assert!(signals(&mut b).is_empty());
        assert_eq!(w.participant_count(), 3);
    }

    #[test]
    fn hands_change_once_and_only_hosts_lower_others() {
        let mut w = worker();
        let mut host = join(&mut w, "PA_h", "r", Role::Host);
        let mut a = join(&mut w, "PA_a", "r", Role::Attendee);
        signals(&mut host);
        signals(&mut a);
        let raise = |raised, participant_id: Option<&str>| ClientSignal::Hand {
            raised,
            participant_id: participant_id.map(str::to_owned),
        };
        send(&mut w, "PA_a", raise(true, None));
        send(&mut w, "PA_a", raise(true, None));
        let up = ServerSignal::HandRaised {
            participant_id: "PA_a".into(),
            raised: true,
        };
        assert_eq!(signals(&mut a), vec![up.clone()]);
        assert_eq!(signals(&mut host), vec![up]);
        // A late joiner sees the hand in `joined`.
        let mut late = join(&mut w, "PA_l", "r", Role::Attendee);
        let got = signals(&mut late);
        assert!(
            matches!(got.first(), Some(ServerSignal::Joined { participants, .. })
                if participants.iter().any(|p| p.id == "PA_a" && p.hand_raised)),
            "{got:?}"
        );
        signals(&mut host);
        signals(&mut a);
        // Others may not touch it; a host may lower it, never raise.
        send(&mut w, "PA_l", raise(false, Some("PA_a")));
        assert_eq!(errors(&mut late), [ErrorCode::NotAllowed]);
        send(&mut w, "PA_h", raise(true, Some("PA_l")));
        assert_eq!(errors(&mut host), [ErrorCode::NotAllowed]);
        send(&mut w, "PA_h", raise(false, Some("PA_nobody")));
        assert_eq!(errors(&mut host), [ErrorCode::UnknownParticipant]);
        send(&mut w, "PA_h", raise(false, Some("PA_a")));
        let down = ServerSignal::HandRaised {
            participant_id: "PA_a".into(),
            raised: false,
        };
        assert_eq!(signals(&mut a), vec![down.clone()]);
        assert_eq!(signals(&mut late), vec![down]);
    }

    #[test]
    fn moderation_needs_the_admin_grant_and_a_participant_of_the_room() {
        let mut w = worker();
        let mut host = join(&mut w, "PA_h", "r", Role::Host);
        let mut s = join(&mut w, "PA_s", "r", Role::Speaker);
        let mut x = join(&mut w, "PA_x", "other", Role::Speaker);
        for rx in [&mut host, &mut s, &mut x] {
            signals(rx);
        }
        let moderate = |action, id: &str, track: Option<&str>| ClientSignal::Moderate {
            action,
            participant_id: id.into(),
            track_id: track.map(str::to_owned),
        };
        send(
            &mut w,
            "PA_s",
            moderate(ModerateAction::Remove, "PA_h", None),
        );
        assert_eq!(errors(&mut s), [ErrorCode::NotAllowed]);
        send(
            &mut w,
            "PA_h",
            moderate(ModerateAction::Remove, "PA_x", None),
        );
        assert_eq!(errors(&mut host), [ErrorCode::UnknownParticipant]);
        send(
            &mut w,
            "PA_h",
            moderate(ModerateAction::Remove, "PA_h", None),
        );
        assert_eq!(errors(&mut host), [ErrorCode::BadMessage]);
        send(
            &mut w,
            "PA_h",
            moderate(ModerateAction::Mute, "PA_s", Some("TR_no")),
        );
        assert_eq!(errors(&mut host), [ErrorCode::UnknownTrack]);
        // Nothing published: muting everything is nothing to do.
        send(&mut w, "PA_h", moderate(ModerateAction::Mute, "PA_s", None));
        assert!(signals(&mut host).is_empty());
        assert_eq!(w.participant_count(), 3);

        send(
            &mut w,
            "PA_h",
            moderate(ModerateAction::Remove, "PA_s", None),
        );
        let mut closed = false;
        while let Ok(m) = s.try_recv() {
            closed |= matches!(m, ToParticipant::Close(ErrorCode::Removed, _));
        }
        assert!(closed);
        assert!(signals(&mut host).iter().any(
            |m| matches!(m, ServerSignal::ParticipantLeft { participant_id, .. } if participant_id == "PA_s")
        ));
        assert_eq!(w.participant_count(), 2);
    }
}
