//! The sans-IO worker: owns its rooms and participants, takes datagrams,
//! commands and time, and produces datagrams to send and signals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use stamma_proto::{
    ClientSignal, ErrorCode, MediaKind, PROTOCOL_VERSION, PublishedTrack, ServerSignal, TrackSource,
};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind as RtcKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Output};
use tracing::{debug, info, warn};

use crate::command::{Command, JoinRequest};
use crate::config::SfuConfig;
use crate::demux::{Demux, ParticipantKey};
use crate::forwarder::Forward;
use crate::keyframe::vp8_starts_keyframe;
use crate::participant::{Participant, PendingOffer};
use crate::room::Room;
use crate::subscription::{Subscription, SubscriptionState};
use crate::track::Track;

/// How often the worker wakes up with nothing else to do, to check timeouts.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// Remote addresses remembered per participant (ICE may try several).
const MAX_ADDRS_PER_PARTICIPANT: usize = 8;
/// Bound on polling rounds per input, so a bug cannot spin the worker.
const MAX_POLL_ROUNDS: usize = 100_000;
/// Tracks one participant may publish (camera, microphone, screen and its
/// audio, with room to spare).
pub const MAX_PUBLISHED_TRACKS: usize = 8;
/// m-lines accepted in a client offer. Publishing happens on the client's own
/// m-lines, but a reused connection may carry stopped ones too.
const MAX_OFFER_M_LINES: usize = 32;
/// Bounds one `subscription` message (a grid page is far smaller).
const MAX_SUBSCRIPTION_TRACKS: usize = 256;

/// Counters a driver can export.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    /// Datagrams that belonged to no participant or did not parse.
    pub datagrams_dropped: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub participants_panicked: u64,
}

pub struct Worker {
    config: SfuConfig,
    /// The socket's own address (destination of received datagrams).
    local_addr: SocketAddr,
    /// The address announced in ICE candidates.
    candidate_addr: SocketAddr,
    cert: DtlsCert,
    participants: Vec<Option<Participant>>,
    free: Vec<ParticipantKey>,
    by_id: HashMap<String, ParticipantKey>,
    rooms: HashMap<String, Room>,
    demux: Demux,
    outbox: Vec<Transmit>,
    /// Events drained from participants, handled in order by `settle`.
    events: std::collections::VecDeque<(ParticipantKey, Event)>,
    /// Reused list of a packet's subscribers (no allocation per packet).
    scratch: Vec<ParticipantKey>,
    /// Earliest `next_timeout` of any participant (possibly stale-early).
    earliest: Option<Instant>,
    doomed: Vec<(ParticipantKey, ErrorCode, String)>,
    stats: WorkerStats,
}

impl Worker {
    pub fn new(
        config: SfuConfig,
        local_addr: SocketAddr,
        candidate_addr: SocketAddr,
        cert: DtlsCert,
    ) -> Worker {
        Worker {
            config,
            local_addr,
            candidate_addr,
            cert,
            participants: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            rooms: HashMap::new(),
            demux: Demux::default(),
            outbox: Vec::new(),
            events: std::collections::VecDeque::new(),
            scratch: Vec::new(),
            earliest: None,
            doomed: Vec::new(),
            stats: WorkerStats::default(),
        }
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    pub fn participant_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Datagrams to send; the driver drains this after every input.
    pub fn outbox(&mut self) -> &mut Vec<Transmit> {
        &mut self.outbox
    }

    /// When the worker next needs [`Worker::handle_timeout`]. May be early
    /// (a participant's timeout moved later), never late.
    pub fn next_timeout(&self, now: Instant) -> Instant {
        let housekeeping = now + HOUSEKEEPING;
        match self.earliest {
            Some(t) if t < housekeeping => t,
            _ => housekeeping,
        }
    }

    fn get(&mut self, key: ParticipantKey) -> Option<&mut Participant> {
        self.participants.get_mut(key).and_then(|p| p.as_mut())
    }

    /// Feed a timeout so the participant's clock reads `now` (str0m sends
    /// written RTP only once its clock has reached the packet's time), then drain.
    fn advance(&mut self, now: Instant, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
            return;
        };
        if p.clock >= now {
            return;
        }
        p.clock = now;
        match catch_unwind(AssertUnwindSafe(|| p.rtc.handle_input(Input::Timeout(now)))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(participant = %p.id, error = %e, "timeout handling failed"),
            Err(_) => {
                self.panicked(key);
                return;
            }
        }
        self.drain(key);
    }

    // ---- inputs -------------------------------------------------------

    /// Take in one datagram. Call [`Worker::flush`] after a batch of them.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        let Some((key, new_addr)) = self.demux.route(source, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local_addr, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
            return;
        };
        if new_addr {
            if !p.rtc.accepts(&input) {
                self.stats.datagrams_dropped += 1;
                return;
            }
            if p.addrs.len() >= MAX_ADDRS_PER_PARTICIPANT {
                let old = p.addrs.remove(0);
                self.demux.remove_addr(old);
            }
            p.addrs.push(source);
            self.demux.add_addr(source, key);
        }
        p.clock = p.clock.max(now);
        let result = catch_unwind(AssertUnwindSafe(|| p.rtc.handle_input(input)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(participant = %p.id, error = %e, "datagram rejected");
                self.stats.datagrams_dropped += 1;
            }
            Err(_) => {
                self.panicked(key);
                return;
            }
        }
        // Events wait for `flush`, so a batch of datagrams shares one clock
        // advance per subscriber.
        self.drain(key);
    }

    /// Poll every participant that had input since the last flush: forwards
    /// media, fills the outbox, emits signals.
    pub fn flush(&mut self, now: Instant) {
        self.settle(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for key in 0..self.participants.len() {
            let Some(p) = self.participants[key].as_mut() else {
                continue;
            };
            if let Some(since) = p.down_since
                && now.saturating_duration_since(since) >= self.config.media_timeout
            {
                let what = if p.connected {
                    "media connection lost"
                } else {
                    "media connection never came up"
                };
                self.doomed.push((key, ErrorCode::Timeout, what.into()));
                continue;
            }
            if p.next_timeout.is_some_and(|t| t <= now) {
                p.clock = p.clock.max(now);
                let r = catch_unwind(AssertUnwindSafe(|| p.rtc.handle_input(Input::Timeout(now))));
                match r {
                    Ok(Ok(())) => self.drain(key),
                    Ok(Err(e)) => {
                        debug!(participant = %p.id, error = %e, "timeout handling failed");
                        self.drain(key);
                    }
                    Err(_) => self.panicked(key),
                }
            }
        }
        self.settle(now);
        self.reap_signal_failures();
        self.earliest = self
            .participants
            .iter()
            .flatten()
            .filter_map(|p| p.next_timeout)
            .min();
    }

    pub fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Join(req) => self.join(now, *req),
            Command::Signal {
                participant_id,
                signal,
            } => {
                let Some(&key) = self.by_id.get(&participant_id) else {
                    return;
                };
                self.signal(now, key, signal);
            }
            Command::Leave {
                participant_id,
                reason,
            } => {
                if let Some(&key) = self.by_id.get(&participant_id) {
                    self.remove(key, &reason);
                }
            }
        }
        self.settle(now);
        self.reap_signal_failures();
    }

    // ---- participants -------------------------------------------------

    fn join(&mut self, now: Instant, req: JoinRequest) {
        if self.by_id.contains_key(&req.participant_id) {
            return;
        }
        // One identity, one connection: the newer one wins (a reload or a second tab).
        let existing = self.rooms.get(&req.room).and_then(|r| {
            r.participants.iter().copied().find(|k| {
                self.participants[*k]
                    .as_ref()
                    .is_some_and(|p| p.identity == req.identity)
            })
        });
        // A replacement does not need a free seat.
        let full = existing.is_none()
            && self
                .rooms
                .get(&req.room)
                .is_some_and(|r| r.participants.len() >= self.config.max_participants_per_room);
        if full {
            let _ = req.signals.try_send(crate::ToParticipant::Close(
                ErrorCode::RoomFull,
                format!(
                    "room is full ({} participants)",
                    self.config.max_participants_per_room
                ),
            ));
            return;
        }
        if let Some(old) = existing {
            if let Some(p) = self.get(old) {
                p.close(
                    ErrorCode::DuplicateIdentity,
                    "the same identity joined from another connection".into(),
                );
            }
            self.remove(old, "replaced by a newer connection");
        }
        let signals = req.signals.clone();
        let mut p = match Participant::new(req, &self.cert, self.candidate_addr, now) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "could not create participant");
                let _ = signals.try_send(crate::ToParticipant::Close(
                    ErrorCode::Internal,
                    "could not set up the media connection".into(),
                ));
                return;
            }
        };
        let room_name = p.room.clone();
        let room = self
            .rooms
            .entry(room_name.clone())
            .or_insert_with(|| Room::new(room_name.clone()));
        let mut others = Vec::with_capacity(room.participants.len());
        for &k in &room.participants {
            if let Some(o) = self.participants[k].as_ref() {
                others.push(o.info());
            }
        }
        let key = match self.free.pop() {
            Some(k) => k,
            None => {
                self.participants.push(None);
                self.participants.len() - 1
            }
        };
        if p.can_subscribe {
            for &k in &room.participants {
                if let Some(o) = self.participants[k].as_ref() {
                    for t in &o.published {
                        p.subscriptions.push(Subscription::new(
                            t.id.clone(),
                            k,
                            o.id.clone(),
                            t.mid,
                            t.kind,
                        ));
                    }
                }
            }
        }
        p.send(ServerSignal::Joined {
            v: PROTOCOL_VERSION,
            room: room_name.clone(),
            participant: p.info(),
            participants: others,
        });
        let info = p.info();
        info!(participant = %p.id, room = %room_name, role = ?p.role, "participant joined");
        room.participants.push(key);
        self.demux.add_ufrag(p.ufrag.clone(), key);
        self.by_id.insert(p.id.clone(), key);
        self.participants[key] = Some(p);
        self.broadcast(&room_name, key, |_| ServerSignal::ParticipantJoined {
            participant: info.clone(),
        });
        // Drain the new Rtc (candidate added) before its first offer.
        self.drain(key);
        self.maybe_offer(key);
    }

    /// Send a signal to everyone in `room` except `except`.
    fn broadcast(
        &mut self,
        room: &str,
        except: ParticipantKey,
        make: impl Fn(&Participant) -> ServerSignal,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for &k in &r.participants {
            if k == except {
                continue;
            }
            if let Some(p) = self.participants[k].as_mut() {
                let s = make(p);
                p.send(s);
            }
        }
    }

    fn remove(&mut self, key: ParticipantKey, reason: &str) {
        let Some(mut p) = self.participants.get_mut(key).and_then(|p| p.take()) else {
            return;
        };
        self.free.push(key);
        self.by_id.remove(&p.id);
        self.demux.remove(&p.ufrag, &p.addrs);
        p.rtc.disconnect();
        info!(participant = %p.id, room = %p.room, reason, "participant left");
        let tracks: Vec<(String, Mid)> =
            p.published.iter().map(|t| (t.id.clone(), t.mid)).collect();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.remove(key);
        }
        for (track_id, mid) in tracks {
            self.unpublish_from_room(&p.room, key, &p.id, &track_id, mid);
        }
        let id = p.id.clone();
        let reason = reason.to_owned();
        self.broadcast(&p.room, key, |_| ServerSignal::ParticipantLeft {
            participant_id: id.clone(),
            reason: reason.clone(),
        });
        if self
            .rooms
            .get(&p.room)
            .is_some_and(|r| r.participants.is_empty())
        {
            self.rooms.remove(&p.room);
            debug!(room = %p.room, "room closed");
        }
    }

    fn panicked(&mut self, key: ParticipantKey) {
        self.stats.participants_panicked += 1;
        warn!(key, "participant's media stack panicked; removing it");
        self.doomed
            .push((key, ErrorCode::Internal, "media connection failed".into()));
    }

    // ---- signals ------------------------------------------------------

    fn signal(&mut self, now: Instant, key: ParticipantKey, signal: ClientSignal) {
        match signal {
            ClientSignal::Offer { sdp, tracks } => self.client_offer(now, key, &sdp, tracks),
            ClientSignal::Answer { id, sdp } => self.client_answer(now, key, id, &sdp),
            ClientSignal::Mute { track_id, muted } => self.mute(key, &track_id, muted),
            ClientSignal::Subscription {
                track_ids, enabled, ..
            } => {
                if let Some(enabled) = enabled {
                    self.set_subscription(now, key, &track_ids, enabled)
                }
            }
            ClientSignal::Unpublish { track_id } => {
                let Some(p) = self.get(key) else { return };
                let Some(t) = p.published.iter().find(|t| t.id == track_id) else {
                    p.send(ServerSignal::error(
                        ErrorCode::UnknownTrack,
                        format!("no published track {track_id:?}"),
                    ));
                    return;
                };
                let mid = t.mid;
                p.published.retain(|t| t.id != track_id);
                let (room, pid) = (p.room.clone(), p.id.clone());
                self.unpublish_from_room(&room, key, &pid, &track_id, mid);
            }
            // join, leave and ping are handled by the session.
            ClientSignal::Join { .. } | ClientSignal::Leave | ClientSignal::Ping { .. } => {}
        }
    }

    /// Pause or resume delivery. Resumed video waits for a keyframe, which
    /// is requested from its publisher, so the tile starts clean.
    fn set_subscription(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        track_ids: &[String],
        enabled: bool,
    ) {
        let Some(p) = self.get(key) else { return };
        if track_ids.len() > MAX_SUBSCRIPTION_TRACKS {
            p.send(ServerSignal::error(
                ErrorCode::BadMessage,
                format!("at most {MAX_SUBSCRIPTION_TRACKS} track_ids per message"),
            ));
            return;
        }
        let mut unknown = Vec::new();
        let mut keyframes = Vec::new();
        for id in track_ids {
            let Some(s) = p.subscriptions.iter_mut().find(|s| &s.track_id == id) else {
                unknown.push(id.as_str());
                continue;
            };
            if s.enabled == enabled {
                continue;
            }
            s.enabled = enabled;
            if enabled && s.kind == MediaKind::Video {
                s.forwarder.restart();
                keyframes.push((s.publisher, s.source_mid));
            }
        }
        if !unknown.is_empty() {
            let shown: Vec<&str> = unknown.iter().take(5).copied().collect();
            p.send(ServerSignal::error(
                ErrorCode::UnknownTrack,
                format!("not subscribed to {shown:?}"),
            ));
        }
        for (publisher, mid) in keyframes {
            self.request_keyframe(now, publisher, mid);
        }
    }

    fn mute(&mut self, key: ParticipantKey, track_id: &str, muted: bool) {
        let Some(p) = self.get(key) else { return };
        let Some(t) = p.published.iter_mut().find(|t| t.id == track_id) else {
            p.send(ServerSignal::error(
                ErrorCode::UnknownTrack,
                format!("no published track {track_id:?}"),
            ));
            return;
        };
        if t.muted == muted {
            return;
        }
        t.muted = muted;
        let (room, pid, tid) = (p.room.clone(), p.id.clone(), t.id.clone());
        self.broadcast(&room, key, |_| ServerSignal::TrackMuted {
            track_id: tid.clone(),
            participant_id: pid.clone(),
            muted,
        });
    }

    fn client_offer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        sdp: &str,
        tracks: Vec<PublishedTrack>,
    ) {
        let Some(p) = self.get(key) else { return };
        if !p.can_publish && (!tracks.is_empty() || sdp_sends_media(sdp)) {
            p.send(ServerSignal::error(
                ErrorCode::PublishNotAllowed,
                "this join token does not allow publishing",
            ));
            return;
        }
        let m_lines = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if m_lines > MAX_OFFER_M_LINES {
            p.send(ServerSignal::error(
                ErrorCode::BadSdp,
                format!("offer has {m_lines} m-lines; at most {MAX_OFFER_M_LINES} are accepted"),
            ));
            return;
        }
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(o) => o,
            Err(e) => {
                p.send(ServerSignal::error(
                    ErrorCode::BadSdp,
                    format!("offer does not parse: {e}"),
                ));
                return;
            }
        };
        // The client's offer wins over ours (we are the polite side): our
        // pending offer is rolled back and offered again after this answer.
        if p.pending_offer.take().is_some() {
            for s in &mut p.subscriptions {
                if s.state == SubscriptionState::Offered {
                    s.state = SubscriptionState::Wanted;
                    s.mid = None;
                }
            }
        }
        p.announced = tracks;
        let result = catch_unwind(AssertUnwindSafe(|| p.rtc.sdp_api().accept_offer(offer)));
        let answer = match result {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                p.send(ServerSignal::error(
                    ErrorCode::BadSdp,
                    format!("offer cannot be negotiated: {e}"),
                ));
                return;
            }
            Err(_) => {
                self.panicked(key);
                return;
            }
        };
        // Drain and handle events now, so MediaAdded creates the tracks the answer lists.
        self.drain(key);
        self.settle(now);
        let Some(p) = self.get(key) else { return };
        let tracks = p.published.iter().map(|t| t.info(&p.id)).collect();
        p.send(ServerSignal::Answer {
            sdp: answer.to_sdp_string(),
            tracks,
        });
        self.maybe_offer(key);
    }

    fn client_answer(&mut self, now: Instant, key: ParticipantKey, id: u64, sdp: &str) {
        let Some(p) = self.get(key) else { return };
        let pending = match p.pending_offer.take() {
            Some(po) if po.id == id => po,
            other => {
                p.pending_offer = other;
                p.send(ServerSignal::error(
                    ErrorCode::StaleAnswer,
                    format!("answer {id} does not match the current offer"),
                ));
                return;
            }
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                // Keep the offer pending: the client may still answer it properly.
                p.pending_offer = Some(pending);
                p.send(ServerSignal::error(
                    ErrorCode::BadSdp,
                    format!("answer does not parse: {e}"),
                ));
                return;
            }
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            p.rtc.sdp_api().accept_answer(pending.offer, answer)
        }));
        let mut newly_active = Vec::new();
        match result {
            Ok(Ok(())) => {
                for s in &mut p.subscriptions {
                    if s.state == SubscriptionState::Offered {
                        s.state = SubscriptionState::Active;
                        if s.kind == MediaKind::Video {
                            newly_active.push((s.publisher, s.source_mid));
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                for s in &mut p.subscriptions {
                    if s.state == SubscriptionState::Offered {
                        s.state = SubscriptionState::Wanted;
                        s.mid = None;
                    }
                }
                p.send(ServerSignal::error(
                    ErrorCode::BadSdp,
                    format!("answer cannot be negotiated: {e}"),
                ));
            }
            Err(_) => {
                self.panicked(key);
                return;
            }
        }
        self.drain(key);
        // A new video subscriber can only start on a keyframe.
        for (publisher, mid) in newly_active {
            self.request_keyframe(now, publisher, mid);
        }
        self.maybe_offer(key);
    }

    /// Send a server offer if subscriptions changed and none is in flight.
    fn maybe_offer(&mut self, key: ParticipantKey) {
        let Some(p) = self.get(key) else { return };
        if p.pending_offer.is_some() || !p.needs_offer() {
            return;
        }
        let mut api = p.rtc.sdp_api();
        for s in &mut p.subscriptions {
            match s.state {
                SubscriptionState::Wanted => {
                    let kind = match s.kind {
                        MediaKind::Audio => RtcKind::Audio,
                        MediaKind::Video => RtcKind::Video,
                    };
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(s.publisher_id.clone()),
                        Some(s.track_id.clone()),
                        None,
                    );
                    s.mid = Some(mid);
                    s.state = SubscriptionState::Offered;
                }
                SubscriptionState::Removing => {
                    if let Some(mid) = s.mid {
                        api.stop_media(mid);
                    }
                }
                SubscriptionState::Offered | SubscriptionState::Active => {}
            }
        }
        p.subscriptions
            .retain(|s| s.state != SubscriptionState::Removing);
        if let Some((offer, pending)) = api.apply() {
            let id = p.next_offer_id;
            p.next_offer_id += 1;
            p.pending_offer = Some(PendingOffer { id, offer: pending });
            let tracks = p.subscribed_tracks();
            p.send(ServerSignal::Offer {
                id,
                sdp: offer.to_sdp_string(),
                tracks,
            });
        }
        self.drain(key);
    }

    /// A track of `publisher` is gone: tell the room and drop the subscriptions.
    fn unpublish_from_room(
        &mut self,
        room: &str,
        publisher: ParticipantKey,
        publisher_id: &str,
        track_id: &str,
        mid: Mid,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let members = r.participants.clone();
        for k in members {
            if k == publisher {
                continue;
            }
            let Some(p) = self.participants[k].as_mut() else {
                continue;
            };
            for s in &mut p.subscriptions {
                if s.publisher == publisher && s.source_mid == mid && s.track_id == track_id {
                    s.state = SubscriptionState::Removing;
                }
            }
            p.send(ServerSignal::TrackUnpublished {
                track_id: track_id.to_owned(),
                participant_id: publisher_id.to_owned(),
            });
            self.maybe_offer(k);
        }
    }

    /// New tracks of `publisher`: tell the room and subscribe everyone who may.
    fn publish_to_room(&mut self, publisher: ParticipantKey, new: &[String]) {
        let Some(p) = self.participants[publisher].as_ref() else {
            return;
        };
        let room = p.room.clone();
        let pid = p.id.clone();
        let infos: Vec<_> = p
            .published
            .iter()
            .filter(|t| new.contains(&t.id))
            .map(|t| (t.info(&pid), t.mid, t.kind))
            .collect();
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        let members = r.participants.clone();
        for k in members {
            if k == publisher {
                continue;
            }
            let Some(o) = self.participants[k].as_mut() else {
                continue;
            };
            for (info, mid, kind) in &infos {
                o.send(ServerSignal::TrackPublished {
                    track: info.clone(),
                });
                if o.can_subscribe {
                    o.subscriptions.push(Subscription::new(
                        info.id.clone(),
                        publisher,
                        pid.clone(),
                        *mid,
                        *kind,
                    ));
                }
            }
            self.maybe_offer(k);
        }
    }

    // ---- media --------------------------------------------------------

    /// Drive every participant that had input until nothing is left to do,
    /// then remove the ones that failed.
    fn settle(&mut self, now: Instant) {
        let mut rounds = 0;
        while let Some((key, event)) = self.events.pop_front() {
            rounds += 1;
            if rounds > MAX_POLL_ROUNDS {
                warn!("event limit reached");
                self.events.clear();
                break;
            }
            self.participant_event(now, key, event);
        }
        while let Some((key, code, why)) = self.doomed.pop() {
            if let Some(p) = self.get(key) {
                p.close(code, why.clone());
            }
            self.remove(key, &why);
        }
    }

    /// Remove participants whose signal queue overflowed or whose session is
    /// gone. Signals come almost only from commands, so this runs after
    /// commands and at housekeeping, not per datagram.
    fn reap_signal_failures(&mut self) {
        for key in 0..self.participants.len() {
            if self.participants[key]
                .as_ref()
                .is_some_and(|p| p.signal_failed)
            {
                self.remove(key, "signaling connection gone");
            }
        }
    }

    /// Poll one participant's `Rtc` until it returns a timeout. str0m wants
    /// every mutation drained before the next one; events are queued and
    /// handled by [`Worker::settle`], so draining never recurses.
    fn drain(&mut self, key: ParticipantKey) {
        let mut rounds = 0;
        loop {
            rounds += 1;
            let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
                return;
            };
            if rounds > MAX_POLL_ROUNDS {
                warn!(participant = %p.id, "poll limit reached");
                return;
            }
            if !p.rtc.is_alive() {
                self.doomed
                    .push((key, ErrorCode::Timeout, "media connection closed".into()));
                return;
            }
            let out = match catch_unwind(AssertUnwindSafe(|| p.rtc.poll_output())) {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    debug!(participant = %p.id, error = %e, "poll failed");
                    self.doomed
                        .push((key, ErrorCode::Internal, "media connection failed".into()));
                    return;
                }
                Err(_) => {
                    self.panicked(key);
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.next_timeout = Some(t);
                    if self.earliest.is_none_or(|e| t < e) {
                        self.earliest = Some(t);
                    }
                    return;
                }
                Output::Transmit(t) => self.outbox.push(t),
                Output::Event(e) => self.events.push_back((key, e)),
            }
        }
    }

    fn participant_event(&mut self, now: Instant, key: ParticipantKey, event: Event) {
        match event {
            Event::RtpPacket(pkt) => self.forward_rtp(now, key, pkt),
            Event::KeyframeRequest(req) => {
                let Some(p) = self.get(key) else { return };
                let Some(s) = p.subscription_by_mid(req.mid) else {
                    return;
                };
                let (publisher, mid) = (s.publisher, s.source_mid);
                self.request_keyframe(now, publisher, mid);
            }
            Event::Connected => {
                let Some(p) = self.get(key) else { return };
                p.connected = true;
                p.down_since = None;
                info!(participant = %p.id, after_ms = now.saturating_duration_since(p.joined_at).as_millis() as u64, "media connected");
                // Video negotiated before the connection came up starts now, on a keyframe.
                let wanted: Vec<(ParticipantKey, Mid)> = p
                    .subscriptions
                    .iter()
                    .filter(|s| s.state == SubscriptionState::Active && s.kind == MediaKind::Video)
                    .map(|s| (s.publisher, s.source_mid))
                    .collect();
                for (publisher, mid) in wanted {
                    self.request_keyframe(now, publisher, mid);
                }
            }
            Event::IceConnectionStateChange(state) => {
                if let Some(p) = self.get(key) {
                    match state {
                        IceConnectionState::Disconnected => {
                            p.down_since.get_or_insert(now);
                        }
                        IceConnectionState::Connected | IceConnectionState::Completed
                            if p.connected =>
                        {
                            p.down_since = None;
                        }
                        _ => {}
                    }
                }
            }
            Event::MediaAdded(m) => {
                let Some(p) = self.get(key) else { return };
                // Media the client sends to us is a publication.
                if !matches!(m.direction, Direction::RecvOnly | Direction::SendRecv) {
                    return;
                }
                if !p.can_publish {
                    return;
                }
                if p.published.len() >= MAX_PUBLISHED_TRACKS {
                    p.send(ServerSignal::error(
                        ErrorCode::BadSdp,
                        format!("at most {MAX_PUBLISHED_TRACKS} tracks can be published; m-line {} ignored", m.mid),
                    ));
                    return;
                }
                let kind = match m.kind {
                    RtcKind::Audio => MediaKind::Audio,
                    RtcKind::Video => MediaKind::Video,
                };
                let mid_s = m.mid.to_string();
                let source = p
                    .announced
                    .iter()
                    .find(|a| a.mid == mid_s && a.kind == kind)
                    .map(|a| a.source)
                    .unwrap_or(TrackSource::default_for(kind));
                let id = format!("TR_{}", stamma_proto::random_token(12));
                p.published
                    .push(Track::new(id.clone(), m.mid, kind, source));
                self.publish_to_room(key, &[id]);
            }
            Event::MediaChanged(m) => {
                let Some(p) = self.get(key) else { return };
                let stopped = matches!(m.direction, Direction::Inactive | Direction::SendOnly);
                if !stopped {
                    return;
                }
                let Some(t) = p.published.iter().find(|t| t.mid == m.mid) else {
                    return;
                };
                let (track_id, mid) = (t.id.clone(), t.mid);
                p.published.retain(|t| t.mid != mid);
                let (room, pid) = (p.room.clone(), p.id.clone());
                self.unpublish_from_room(&room, key, &pid, &track_id, mid);
            }
            _ => {}
        }
    }

    fn request_keyframe(&mut self, now: Instant, publisher: ParticipantKey, mid: Mid) {
        let Some(p) = self.get(publisher) else { return };
        let Some(t) = p.track_by_mid(mid) else { return };
        if !t.allow_keyframe_request(now) {
            return;
        }
        if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.drain(publisher);
    }

    fn forward_rtp(&mut self, now: Instant, publisher: ParticipantKey, pkt: RtpPacket) {
        self.stats.rtp_in += 1;
        let Some(p) = self
            .participants
            .get_mut(publisher)
            .and_then(|p| p.as_mut())
        else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        // Which track: by its known SSRC, else ask str0m once and remember.
        let known = p
            .published
            .iter()
            .position(|t| t.layers.iter().any(|l| l.ssrc == Some(ssrc)));
        let index = match known {
            Some(i) => i,
            None => {
                let Some(mid) = p.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid()) else {
                    return;
                };
                let Some(i) = p.published.iter().position(|t| t.mid == mid) else {
                    return;
                };
                p.published[i].layers[0].ssrc = Some(ssrc);
                i
            }
        };
        let in_pt = pkt.header.payload_type;
        let codec = match p.published[index].codec {
            Some((pt, codec)) if pt == in_pt => codec,
            _ => {
                let Some(codec) = p
                    .rtc
                    .codec_config()
                    .find(|c| c.pt() == in_pt)
                    .map(|c| c.spec().codec)
                else {
                    return;
                };
                p.published[index].codec = Some((in_pt, codec));
                codec
            }
        };
        let track = &p.published[index];
        let mid = track.mid;
        let is_video = track.kind == MediaKind::Video;
        let starts_keyframe = is_video && vp8_starts_keyframe(&pkt.payload);
        let mut subscribers = std::mem::take(&mut self.scratch);
        subscribers.clear();
        if let Some(room) = self.rooms.get(&p.room) {
            subscribers.extend(
                room.participants
                    .iter()
                    .copied()
                    .filter(|k| *k != publisher),
            );
        }
        let seq: u64 = *pkt.seq_no;
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..ExtensionValues::default()
        };
        let mut need_keyframe = false;
        for &k in &subscribers {
            let Some(q) = self.participants.get_mut(k).and_then(|q| q.as_mut()) else {
                continue;
            };
            // Until its media connection is up, a subscriber would lose what we
            // write, and a video subscriber would then start without a keyframe.
            if !q.connected {
                continue;
            }
            let Some(s) = q.subscriptions.iter_mut().find(|s| {
                s.publisher == publisher
                    && s.source_mid == mid
                    && s.enabled
                    && s.state == SubscriptionState::Active
            }) else {
                continue;
            };
            let Some(out_mid) = s.mid else { continue };
            let out_pt = match s.pt_map {
                Some((i, o)) if i == in_pt => o,
                _ => {
                    let Some(o) = q
                        .rtc
                        .codec_config()
                        .find(|c| c.spec().codec == codec)
                        .map(|c| c.pt())
                    else {
                        continue;
                    };
                    s.pt_map = Some((in_pt, o));
                    o
                }
            };
            let (seq_out, ts_out) =
                match s
                    .forwarder
                    .forward(seq, pkt.header.timestamp, starts_keyframe)
                {
                    Forward::Send { seq, timestamp } => (seq, timestamp),
                    Forward::NeedKeyframe => {
                        need_keyframe = true;
                        continue;
                    }
                    Forward::Stale => continue,
                };
            // Each str0m mutation is drained before the next: first bring the
            // subscriber's clock to now, then write and drain.
            if q.clock < now {
                self.advance(now, k);
            }
            let Some(q) = self.participants.get_mut(k).and_then(|q| q.as_mut()) else {
                continue;
            };
            let mut api = q.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(out_mid, None) else {
                continue;
            };
            tx.write_rtp(
                RtpWrite::new(
                    out_pt,
                    seq_out.into(),
                    ts_out,
                    pkt.timestamp,
                    pkt.payload.clone(),
                )
                .marker(pkt.header.marker)
                .ext_vals(ext.clone())
                .nackable(true),
            );
            self.stats.rtp_forwarded += 1;
            self.drain(k);
        }
        self.scratch = subscribers;
        if need_keyframe {
            self.request_keyframe(now, publisher, mid);
        }
    }
}

/// Whether an SDP has an audio or video m-line in which its author sends.
/// Used to refuse publishing before str0m sees the offer.
pub fn sdp_sends_media(sdp: &str) -> bool {
    let mut in_media = false;
    let mut sends = false;
    let mut any = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            if in_media && sends {
                any = true;
            }
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            in_media = (kind == "audio" || kind == "video") && port != "0";
            // RFC 4566: sendrecv is the default direction.
            sends = true;
        } else if in_media {
            match line {
                "a=recvonly" | "a=inactive" => sends = false,
                "a=sendonly" | "a=sendrecv" => sends = true,
                _ => {}
            }
        }
    }
    any || (in_media && sends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_direction_check_finds_sending_media() {
        let recv = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\n";
        assert!(!sdp_sends_media(recv));
        let send = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        assert!(sdp_sends_media(send));
        let default = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        assert!(sdp_sends_media(default));
        let rejected = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(!sdp_sends_media(rejected));
    }
}

#[cfg(test)]
mod sans_io_tests {
    //! The worker driven by hand: no sockets, no sleeps, time passed in.
    use super::*;
    use crate::ToParticipant;
    use stamma_proto::Role;
    use tokio::sync::mpsc;

    fn worker(media_timeout: Duration) -> Worker {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("certificate");
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let config = SfuConfig {
            media_timeout,
            max_participants_per_room: 2,
            ..SfuConfig::default()
        };
        Worker::new(config, addr, addr, cert)
    }

    fn join(
        w: &mut Worker,
        now: Instant,
        id: &str,
        room: &str,
        identity: &str,
    ) -> mpsc::Receiver<ToParticipant> {
        let (tx, rx) = mpsc::channel(64);
        w.handle_command(
            now,
            Command::Join(Box::new(JoinRequest {
                participant_id: id.into(),
                room: room.into(),
                identity: identity.into(),
                name: None,
                role: Role::Speaker,
                can_publish: true,
                can_subscribe: true,
                signals: tx,
            })),
        );
        rx
    }

    fn drain(rx: &mut mpsc::Receiver<ToParticipant>) -> Vec<ToParticipant> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            v.push(m);
        }
        v
    }

    #[test]
    fn participant_whose_media_never_connects_is_removed_after_the_timeout() {
        let mut w = worker(Duration::from_secs(5));
        let t0 = Instant::now();
        let mut rx = join(&mut w, t0, "PA_1", "r", "alice");
        assert!(matches!(
            drain(&mut rx).first(),
            Some(ToParticipant::Signal(ServerSignal::Joined { .. }))
        ));
        w.handle_timeout(t0 + Duration::from_secs(4));
        assert_eq!(w.participant_count(), 1);
        w.handle_timeout(t0 + Duration::from_secs(6));
        assert_eq!(w.participant_count(), 0);
        assert_eq!(w.room_count(), 0);
        assert!(
            drain(&mut rx)
                .iter()
                .any(|m| matches!(m, ToParticipant::Close(ErrorCode::Timeout, _)))
        );
    }

    #[test]
    fn room_full_and_duplicate_identity_are_refused_or_replaced() {
        let mut w = worker(Duration::from_secs(30));
        let now = Instant::now();
        let mut a = join(&mut w, now, "PA_a", "r", "alice");
        let _b = join(&mut w, now, "PA_b", "r", "bob");
        let mut c = join(&mut w, now, "PA_c", "r", "carol");
        assert!(
            drain(&mut c)
                .iter()
                .any(|m| matches!(m, ToParticipant::Close(ErrorCode::RoomFull, _)))
        );
        assert_eq!(w.participant_count(), 2);
        // alice again, from a second connection: the first one is closed.
        let mut a2 = join(&mut w, now, "PA_a2", "r", "alice");
        assert!(
            drain(&mut a)
                .iter()
                .any(|m| matches!(m, ToParticipant::Close(ErrorCode::DuplicateIdentity, _)))
        );
        assert!(matches!(
            drain(&mut a2).first(),
            Some(ToParticipant::Signal(ServerSignal::Joined { participants, .. })) if participants.len() == 1
        ));
        assert_eq!(w.participant_count(), 2);
    }

    #[test]
    fn garbage_datagrams_never_reach_or_break_participants() {
        let mut w = worker(Duration::from_secs(30));
        let now = Instant::now();
        let mut rx = join(&mut w, now, "PA_1", "r", "alice");
        drain(&mut rx);
        let ufrag = w.participants[0].as_ref().unwrap().ufrag.clone();
        let from: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        // Deterministic pseudo-random bytes (xorshift), some shaped like STUN
        // binding requests naming the participant's ufrag so they reach str0m.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..5_000 {
            let len = (next() % 600) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                let user = format!("{ufrag}:zz");
                let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
                m.extend((0..12).map(|_| next() as u8));
                m.extend_from_slice(&0x0006u16.to_be_bytes());
                m.extend_from_slice(&(user.len() as u16).to_be_bytes());
                m.extend_from_slice(user.as_bytes());
                while m.len() % 4 != 0 {
                    m.push(0);
                }
                m.extend(d.drain(..d.len().min(64)));
                let body = (m.len() - 20) as u16;
                m[2..4].copy_from_slice(&body.to_be_bytes());
                d = m;
            }
            w.handle_datagram(now, from, &d);
            w.flush(now);
        }
        assert_eq!(w.participant_count(), 1, "participant survived the garbage");
        assert_eq!(w.stats().participants_panicked, 0);
        assert!(w.stats().datagrams_dropped > 0);
    }
}
