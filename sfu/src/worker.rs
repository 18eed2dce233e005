//! The sans-IO worker: owns its rooms and participants, takes datagrams,
//! commands and time, and produces datagrams to send and signals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use stamma_proto::{
    ClientSignal, ErrorCode, MediaKind, PROTOCOL_VERSION, PauseReason, PublishedTrack,
    ServerSignal, Speaker, TrackSource, VideoQuality,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind as RtcKind, Mid, Rid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, StreamTx, Vp8Descriptor};
use str0m::{Event, IceConnectionState, Input, Output, PacerReason, Reason};
use tracing::{debug, info, warn};

use crate::allocator::{
    Allocation, AudioReserve, Demand, IncreaseTrial, Priority, TRIAL_AFTER_CONNECT, TrialVerdict,
    VOICING, allocate, budget_estimate, max_layer, trial_applies, withhold_increases,
};
use crate::command::{Command, JoinRequest};
use crate::config::SfuConfig;
use crate::demux::{Demux, ParticipantKey, is_rtp};
use crate::event::MediaEvent;
use crate::forwarder::Forward;
use crate::load_shedder::{Change, LoadShedder, VideoLoad};
use crate::parked_stream::{park_idle, restore_all, unpark};
use crate::participant::{HeldStream, Participant, PendingOffer};
use crate::room::Room;
use crate::send_backlog::SendBacklog;
use crate::speaker::attenuation_db;
use crate::subscription::{Subscription, SubscriptionState};
use crate::track::{KeyframeFor, MAX_LAYERS, PACKET_OVERHEAD_BYTES, Track};

mod admin;
mod meeting;

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
/// Period of the worker's tick: speaker detection, allocation of
/// subscribers whose inputs changed, dynacast, owed keyframe requests.
const TICK: Duration = Duration::from_millis(100);
/// The shortest time between two server offers to one participant, in
/// rooms of at least [`COALESCE_FROM`] participants.
const OFFER_COALESCE: Duration = Duration::from_millis(500);
const COALESCE_FROM: usize = 8;
/// A server offer unanswered this long is sent again, unchanged and with
/// the same id: a client that lost it (a page that dropped it while making
/// its own offer) answers the copy, and one that was only slow answers the
/// first and ignores the copy. Rolling the offer back instead would break a
/// slow client that applied it. Until an answer (or the client's own
/// offer) comes nothing else can be offered to it, so without this one lost
/// signal froze its subscriptions for the rest of the session.
const OFFER_RESEND: Duration = Duration::from_secs(3);
/// After this many copies the client is left to its own devices (logged).
const OFFER_RESENDS: u32 = 3;
/// How often idle outgoing streams are looked for.
const PARK_CHECK: Duration = Duration::from_secs(1);
/// Every subscriber is allocated again at least this often, because layer
/// rates drift even when nothing else changes.
const PERIODIC_ALLOCATION: Duration = Duration::from_millis(500);
/// A layer nobody receives is turned off at the publisher after this long,
/// so a subscriber switching between layers does not make it flap.
pub const DYNACAST_GRACE: Duration = Duration::from_secs(2);
/// The estimator is always asked to find at least this much, so a
/// subscriber with nothing to receive yet still learns its link.
const MIN_DESIRED_BPS: u64 = 300_000;
/// Pinned videos a subscriber keeps under the LoadShedder's cap besides its
/// dominant speaker: a client that pins every tile must not lift the cap
/// that protects every room on the worker.
const CAP_KEEPS_PINNED: usize = 2;
/// How often a subscriber whose wanted video does not fit is probed for more.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The desired rate given to str0m is at most this many times the estimate
/// (see `Worker::allocate`): its probes, capped at twice the desired rate,
/// stay within 8 times the estimate, a burst a thin link's queue absorbs.
const PROBE_CEILING: u64 = 4;
/// Packets and age of the per-subscription retransmission cache (str0m's defaults).
const RTX_CACHE_PACKETS: usize = 1024;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
/// Most a stream's retransmissions may be of its bytes over the last second
/// (str0m's default is 0.15); enough to repair a link losing a fifth.
const RTX_RATIO_CAP: f32 = 0.25;
/// The budget of a subscriber without an estimate (no transport-wide
/// feedback): everything at the layer it asked for.
const UNLIMITED_BPS: u64 = 100_000_000_000;

/// Samples of subscribers' downlink estimates kept between two reads by the
/// driver; more are dropped, so a driver that never reads cannot grow memory.
const MAX_BWE_SAMPLES: usize = 4096;

/// Counters a driver can export; all only grow.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    /// Datagrams that belonged to no participant or did not parse.
    pub datagrams_dropped: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// RTP payload bytes of the forwarded packets (headers not counted).
    pub rtp_forwarded_bytes: u64,
    pub participants_panicked: u64,
    /// Keyframe requests sent to publishers (after coalescing).
    pub keyframe_requests: u64,
    /// Keyframe requests (PLI, FIR) received from subscribers.
    pub plis_received: u64,
    /// NACKs received from subscribers (str0m's per-stream counts).
    pub nacks_received: u64,
    /// A subscription's forwarded layer changed from one layer to another.
    pub layer_switches: u64,
    /// Times a subscription started shedding video frames because its send
    /// queue was over the limit (`send_backlog`).
    pub frames_shed: u64,
    /// Audio packets of idle microphones not forwarded (`silence_gate`).
    pub audio_gated: u64,
    /// Idle outgoing streams taken out of str0m, and put back on a packet
    /// (`parked_stream`).
    pub streams_parked: u64,
    pub streams_restored: u64,
    /// Pacer gate timeouts after audio sends left to str0m's next own
    /// deadline (see `Worker::send_written`).
    pub gate_timeouts_deferred: u64,
    /// Server offers sent again because no answer came (see `OFFER_RESEND`).
    pub offers_resent: u64,
    /// Times the LoadShedder set or lowered the worker's video cap.
    pub load_cuts: u64,
    pub participants_joined: u64,
    pub participants_left: u64,
    /// Room/participant/track events dropped because their channel was full.
    pub events_dropped: u64,
}

/// What a worker holds now (computed on demand, not per packet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCounts {
    pub rooms: u64,
    pub participants: u64,
    pub audio_tracks: u64,
    pub video_tracks: u64,
    pub subscriptions: u64,
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
    /// Subscribers with RTP written since the last send (`send_due` set).
    send_due: Vec<ParticipantKey>,
    /// Earliest `next_timeout` of any participant (possibly stale-early).
    earliest: Option<Instant>,
    doomed: Vec<(ParticipantKey, ErrorCode, String)>,
    stats: WorkerStats,
    /// Downlink estimates (bps) seen by the Allocator since the driver last read them.
    bwe_samples: Vec<u64>,
    next_tick: Instant,
    next_park_check: Instant,
    /// A participant's subscriptions changed since the last settle
    /// (`want_offer`).
    offers_due: bool,
    next_periodic_allocation: Instant,
    // Scratch space of the tick, reused so it allocates nothing steady-state.
    demands: Vec<Demand>,
    demand_slots: Vec<(usize, [bool; MAX_LAYERS], usize)>,
    alloc_order: Vec<usize>,
    alloc_out: Vec<Option<usize>>,
    /// (publisher, m-line, layer) lists of the tick: owed keyframe
    /// requests, then dynacast's marks.
    layer_scratch: Vec<(ParticipantKey, Mid, usize)>,
    /// Caps subscribers' video while this worker's thread is saturated.
    shedder: LoadShedder,
}

impl Worker {
    /// A worker whose clock starts at `now`: its first tick and allocation
    /// round are due then. The core never reads the clock itself: reading
    /// it here put the first tick a few microseconds after the caller's
    /// start (more when the process first ran this code), which alone
    /// changed netsim results, depending on what ran before in the process.
    pub fn new(
        config: SfuConfig,
        local_addr: SocketAddr,
        candidate_addr: SocketAddr,
        cert: DtlsCert,
        now: Instant,
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
            send_due: Vec::new(),
            earliest: None,
            doomed: Vec::new(),
            stats: WorkerStats::default(),
            bwe_samples: Vec::new(),
            next_tick: now,
            next_park_check: now,
            offers_due: false,
            next_periodic_allocation: now,
            demands: Vec::new(),
            demand_slots: Vec::new(),
            alloc_order: Vec::new(),
            alloc_out: Vec::new(),
            layer_scratch: Vec::new(),
            shedder: LoadShedder::new(),
        }
    }

    /// The driver's report of one loop turn: it worked `busy` and ended at
    /// `now`. Feeds the LoadShedder (see `load_shedder`); when the video cap
    /// changes, every subscriber is allocated again at the next tick.
    pub fn note_busy(&mut self, now: Instant, busy: Duration) {
        if !(self.config.allocator && self.config.load_shedding) {
            return;
        }
        let participants = &self.participants;
        let load = || {
            let (mut sum, mut n, mut max_wanted) = (0u64, 0u64, 0u64);
            for p in participants.iter().flatten() {
                max_wanted = max_wanted.max(p.video_wanted_bps);
                if p.video_used_bps > 0 {
                    sum += p.video_used_bps;
                    n += 1;
                }
            }
            VideoLoad {
                mean_used_bps: sum / n.max(1),
                max_wanted_bps: max_wanted,
            }
        };
        let Some(change) = self.shedder.record(now, busy, load) else {
            return;
        };
        let duty_pct = self.shedder.last_duty_pct();
        match change {
            Change::Cut(cap) => {
                self.stats.load_cuts += 1;
                info!(
                    duty_pct,
                    cap_kbps = cap / 1000,
                    "worker saturated: video capped"
                );
            }
            Change::Raised(cap) => debug!(duty_pct, cap_kbps = cap / 1000, "video cap raised"),
            Change::Lifted => info!(duty_pct, "video cap lifted"),
        }
        for p in self.participants.iter_mut().flatten() {
            p.allocation_due = true;
        }
    }

    /// The video budget every subscriber of this worker is held to now
    /// (None: only their estimates count).
    pub fn video_cap(&self) -> Option<u64> {
        self.shedder.cap()
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    /// Downlink estimates observed by the Allocator since the last call.
    pub fn drain_bwe_samples(&mut self) -> std::vec::Drain<'_, u64> {
        self.bwe_samples.drain(..)
    }

    /// Rooms, participants, published tracks and subscriptions held now.
    /// Walks every participant: for periodic export, not for the packet path.
    pub fn counts(&self) -> WorkerCounts {
        let mut c = WorkerCounts {
            rooms: self.rooms.len() as u64,
            participants: self.by_id.len() as u64,
            ..WorkerCounts::default()
        };
        for p in self.participants.iter().flatten() {
            for t in &p.published {
                match t.kind {
                    MediaKind::Audio => c.audio_tracks += 1,
                    MediaKind::Video => c.video_tracks += 1,
                }
            }
            c.subscriptions += p
                .subscriptions
                .iter()
                .filter(|s| s.state != SubscriptionState::Removing)
                .count() as u64;
        }
        c
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
        let mut at = now + HOUSEKEEPING;
        if !self.participants.is_empty() && self.participants.iter().any(|p| p.is_some()) {
            at = at.min(self.next_tick.max(now));
        }
        match self.earliest {
            Some(t) if t < at => t,
            _ => at,
        }
    }

    fn get(&mut self, key: ParticipantKey) -> Option<&mut Participant> {
        self.participants.get_mut(key).and_then(|p| p.as_mut())
    }

    // ---- inputs -------------------------------------------------------

    /// Take in one datagram. Call [`Worker::flush`] after a batch of them.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.handle_packet(now, Protocol::Udp, source, data);
    }

    /// Take in one packet from a TCP media connection (ICE-TCP, de-framed).
    pub fn handle_tcp_packet(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.handle_packet(now, Protocol::Tcp, source, data);
    }

    fn handle_packet(&mut self, now: Instant, proto: Protocol, source: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        let Some((key, new_addr)) = self.demux.route(source, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let Ok(receive) = Receive::new(proto, source, self.local_addr, data) else {
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
        if now >= self.next_tick {
            self.tick(now);
        }
        self.release_held(now);
        self.settle(now);
        self.reap_signal_failures();
        self.earliest = self
            .participants
            .iter()
            .flatten()
            .flat_map(|p| [p.next_timeout, p.release.next_release()])
            .flatten()
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
            Command::Admin(c) => self.admin(now, c),
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
        // A replacement does not need a free seat. The room's own limit (admin API) wins.
        let max =
            (req.room_options.max_participants).unwrap_or(self.config.max_participants_per_room);
        let full = existing.is_none()
            && self
                .rooms
                .get(&req.room)
                .is_some_and(|r| r.participants.len() >= max);
        if full {
            let _ = req.signals.try_send(crate::ToParticipant::Close(
                ErrorCode::RoomFull,
                format!("room is full ({max} participants)"),
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
        let e2ee_required = req.room_options.e2ee_required;
        let bwe = self
            .config
            .allocator
            .then_some(self.config.bwe_initial_kbps);
        let mut p = match Participant::new(
            req,
            &self.cert,
            self.candidate_addr,
            self.config.ice_tcp,
            bwe,
            self.config.opus_dtx,
            now,
        ) {
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
        if !self.rooms.contains_key(&room_name) {
            self.emit(|| MediaEvent::RoomStarted {
                room: room_name.clone(),
            });
        }
        let room = self
            .rooms
            .entry(room_name.clone())
            .or_insert_with(|| Room::new(room_name.clone()));
        room.joins += 1;
        p.join_seq = room.joins;
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
            // Signaling adds the TURN servers (credentials are its business).
            ice_servers: Vec::new(),
            e2ee_required,
            // Signaling mints it (keys are its business too).
            reconnect_token: None,
        });
        let info = p.info();
        info!(participant = %p.id, room = %room_name, role = ?p.role, "participant joined");
        if !self.config.events.emit(|| MediaEvent::ParticipantJoined {
            room: room_name.clone(),
            participant: info.clone(),
        }) {
            self.stats.events_dropped += 1;
        }
        self.stats.participants_joined += 1;
        room.participants.push(key);
        self.demux.add_ufrag(p.ufrag.clone(), key);
        self.by_id.insert(p.id.clone(), key);
        self.participants[key] = Some(p);
        self.broadcast(&room_name, key, |_| ServerSignal::ParticipantJoined {
            participant: info.clone(),
        });
        // Drain the new Rtc (candidate added) before its first offer.
        self.drain(key);
        self.offer_now(now, key);
    }

    /// Report an event outside the media plane (never waits; counts drops).
    fn emit(&mut self, event: impl FnOnce() -> MediaEvent) {
        if !self.config.events.emit(event) {
            self.stats.events_dropped += 1;
        }
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
        self.stats.participants_left += 1;
        let who = p.info();
        for t in &p.published {
            self.emit(|| MediaEvent::TrackUnpublished {
                room: p.room.clone(),
                participant: who.clone(),
                track: t.info(&p.id),
            });
        }
        self.emit(|| MediaEvent::ParticipantLeft {
            room: p.room.clone(),
            participant: who.clone(),
            reason: reason.to_owned(),
        });
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
            self.emit(|| MediaEvent::RoomFinished {
                room: p.room.clone(),
            });
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
                track_ids,
                enabled,
                quality,
                width,
                height,
                pinned,
            } => {
                // A tile has both sides or neither; one alone is a client bug
                // that would otherwise be ignored without a word.
                if width.is_some() != height.is_some() {
                    if let Some(p) = self.get(key) {
                        p.send(ServerSignal::error(
                            ErrorCode::BadMessage,
                            "subscription: give width and height together",
                        ));
                    }
                    return;
                }
                let settings = SubscriptionSettings {
                    enabled,
                    quality,
                    tile: width.zip(height),
                    pinned,
                };
                self.set_subscription(now, key, &track_ids, settings)
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
                let (track, who) = (t.info(&p.id), p.info());
                p.published.retain(|t| t.id != track_id);
                let (room, pid) = (p.room.clone(), p.id.clone());
                self.emit(|| MediaEvent::TrackUnpublished {
                    room: room.clone(),
                    participant: who,
                    track,
                });
                self.unpublish_from_room(&room, key, &pid, &track_id, mid);
            }
            ClientSignal::Chat { text } => self.chat(key, &text),
            ClientSignal::E2ee { to, payload } => self.e2ee(key, to.as_deref(), payload),
            ClientSignal::Hand {
                raised,
                participant_id,
            } => self.hand(key, raised, participant_id.as_deref()),
            ClientSignal::Moderate {
                action,
                participant_id,
                track_id,
            } => self.moderate(key, action, &participant_id, track_id.as_deref()),
            // join, leave and ping are handled by the session.
            ClientSignal::Join { .. } | ClientSignal::Leave | ClientSignal::Ping { .. } => {}
        }
    }

    /// Pause or resume delivery, or change what the Allocator may choose.
    /// Resumed video waits for a keyframe, which is requested from its
    /// publisher, so the tile starts clean.
    fn set_subscription(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        track_ids: &[String],
        settings: SubscriptionSettings,
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
            if let Some(q) = settings.quality {
                s.quality = Some(q);
                s.tile = None;
            }
            if let Some(tile) = settings.tile {
                s.tile = Some(tile);
                s.quality = None;
            }
            if let Some(pinned) = settings.pinned {
                s.pinned = pinned;
            }
            let Some(enabled) = settings.enabled else {
                continue;
            };
            if s.enabled == enabled {
                continue;
            }
            s.enabled = enabled;
            if s.kind == MediaKind::Video {
                s.current = None;
                s.forwarder.restart();
                if enabled && let Some(layer) = s.target {
                    keyframes.push((s.publisher, s.source_mid, layer));
                }
            }
        }
        p.allocation_due = true;
        if !unknown.is_empty() {
            let shown: Vec<&str> = unknown.iter().take(5).copied().collect();
            p.send(ServerSignal::error(
                ErrorCode::UnknownTrack,
                format!("not subscribed to {shown:?}"),
            ));
        }
        for (publisher, mid, layer) in keyframes {
            self.request_keyframe(now, publisher, mid, layer, KeyframeFor::Receivers);
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
        let (room, pid, tid, mid) = (p.room.clone(), p.id.clone(), t.id.clone(), t.mid);
        if muted {
            self.restart_subscribers(key, mid);
        }
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
        restore_all(&mut p.rtc, &mut p.subscriptions);
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
        self.offer_now(now, key);
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
        // Nothing is parked while an offer is out; this is belt and braces.
        restore_all(&mut p.rtc, &mut p.subscriptions);
        let result = catch_unwind(AssertUnwindSafe(|| {
            p.rtc.sdp_api().accept_answer(pending.offer, answer)
        }));
        let mut newly_active = Vec::new();
        match result {
            Ok(Ok(())) => {
                for s in &mut p.subscriptions {
                    if s.state == SubscriptionState::Offered {
                        s.state = SubscriptionState::Active;
                        if s.kind == MediaKind::Video
                            && let Some(layer) = s.target
                        {
                            newly_active.push((s.publisher, s.source_mid, layer));
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
        if let Some(p) = self.get(key) {
            p.allocation_due = true;
        }
        for (publisher, mid, layer) in newly_active {
            self.request_keyframe(now, publisher, mid, layer, KeyframeFor::Receivers);
        }
        self.maybe_offer(now, key);
    }

    /// Send again the offers that waited [`OFFER_RESEND`] for an answer.
    fn resend_unanswered_offers(&mut self, now: Instant) {
        for p in self.participants.iter_mut().flatten() {
            let Some(po) = p.pending_offer.as_mut() else {
                continue;
            };
            if now.saturating_duration_since(po.sent_at) < OFFER_RESEND {
                continue;
            }
            po.sent_at = now;
            if po.resends >= OFFER_RESENDS {
                continue;
            }
            po.resends += 1;
            let (signal, id, resends) = (po.signal.clone(), po.id, po.resends);
            p.send(signal);
            self.stats.offers_resent += 1;
            if resends == OFFER_RESENDS {
                warn!(participant = %p.id, offer = id, "offer still unanswered; not sending it again");
            } else {
                debug!(participant = %p.id, offer = id, resends, "offer unanswered; sent again");
            }
        }
    }

    /// Subscriptions of `key` changed: offer them when the worker settles.
    fn want_offer(&mut self, key: ParticipantKey) {
        if let Some(p) = self.get(key) {
            p.offer_waiting = true;
            self.offers_due = true;
        }
    }

    /// Send the offers that wait (see [`Worker::maybe_offer`]); those still
    /// inside [`OFFER_COALESCE`] wait on, for the tick to try again.
    fn send_waiting_offers(&mut self, now: Instant) {
        for key in 0..self.participants.len() {
            if self.participants[key]
                .as_ref()
                .is_some_and(|p| p.offer_waiting)
            {
                self.maybe_offer(now, key);
            }
        }
    }

    /// Send a server offer if subscriptions changed and none is in flight.
    /// At most one per [`OFFER_COALESCE`]: when many join at once, each
    /// member gets one renegotiation for several of them (a member's SDP
    /// grows with the room, and both ends parse all of it each time); the
    /// tick sends what waited.
    fn maybe_offer(&mut self, now: Instant, key: ParticipantKey) {
        self.offer(now, key, true);
    }

    /// Send a server offer now if one is needed, without waiting out
    /// [`OFFER_COALESCE`]: after a participant's own join or offer. The
    /// page answered its own offer just before and expects ours right
    /// after; one arriving later can meet its next local offer half made.
    fn offer_now(&mut self, now: Instant, key: ParticipantKey) {
        self.offer(now, key, false);
    }

    fn offer(&mut self, now: Instant, key: ParticipantKey, coalesce: bool) {
        // Small rooms renegotiate little and want changes at once.
        let coalesce = coalesce
            && self.participants[key]
                .as_ref()
                .and_then(|p| self.rooms.get(&p.room))
                .is_some_and(|r| r.participants.len() >= COALESCE_FROM);
        let Some(p) = self.get(key) else { return };
        if !p.needs_offer() {
            p.offer_waiting = false;
            return;
        }
        // The answer to the one in flight tries again.
        if p.pending_offer.is_some() {
            return;
        }
        if coalesce
            && p.last_offer_at
                .is_some_and(|t| now.saturating_duration_since(t) < OFFER_COALESCE)
        {
            p.offer_waiting = true;
            return;
        }
        p.offer_waiting = false;
        p.last_offer_at = Some(now);
        restore_all(&mut p.rtc, &mut p.subscriptions);
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
            let signal = ServerSignal::Offer {
                id,
                sdp: offer.to_sdp_string(),
                tracks: p.subscribed_tracks(),
            };
            p.send(signal.clone());
            p.pending_offer = Some(PendingOffer {
                id,
                offer: pending,
                signal,
                sent_at: now,
                resends: 0,
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
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.speakers.remove((publisher, mid));
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
            self.want_offer(k);
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
        let who = p.info();
        for (info, _, _) in &infos {
            self.emit(|| MediaEvent::TrackPublished {
                room: room.clone(),
                participant: who.clone(),
                track: info.clone(),
            });
        }
        // The publisher learns its track's id here too: the answer to its
        // offer can list the track only when the media connection was
        // already up (str0m reports new media once SRTP is ready).
        if let Some(p) = self.participants[publisher].as_mut() {
            for (info, _, _) in &infos {
                p.send(ServerSignal::TrackPublished {
                    track: info.clone(),
                });
            }
        }
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
            self.want_offer(k);
        }
    }

    // ---- the tick: speakers, allocation, dynacast, owed keyframes -----

    /// Periodic work that is not driven by one packet. Runs every [`TICK`].
    fn tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        let periodic = now >= self.next_periodic_allocation;
        if periodic {
            self.next_periodic_allocation = now + PERIODIC_ALLOCATION;
        }
        self.update_speakers(now);
        for key in 0..self.participants.len() {
            // While a voice that started waits for its allocation (see
            // `VOICING`), a moved estimate or the periodic round waits too:
            // it would still count the voices it may take over from. Only a
            // returning video layer (due at once) runs one before.
            let due = self.participants[key]
                .as_ref()
                .is_some_and(|p| match p.allocate_at {
                    Some(at) => at <= now,
                    None => p.allocation_due || (periodic && p.can_subscribe),
                });
            if due {
                self.allocate(now, key);
            }
        }
        self.dynacast(now);
        self.resend_unanswered_offers(now);
        self.send_waiting_offers(now);
        if now >= self.next_park_check {
            self.next_park_check = now + PARK_CHECK;
            self.park_idle_streams(now);
        }
        // Keyframe requests the throttle held back.
        let mut owed = std::mem::take(&mut self.layer_scratch);
        owed.clear();
        for (key, p) in self.participants.iter().enumerate() {
            let Some(p) = p else { continue };
            for t in &p.published {
                for (i, l) in t.layers.iter().enumerate() {
                    if l.keyframe_pending {
                        owed.push((key, t.mid, i));
                    }
                }
            }
        }
        for &(key, mid, layer) in &owed {
            self.request_keyframe(now, key, mid, layer, KeyframeFor::Receivers);
        }
        self.layer_scratch = owed;
    }

    /// Take idle outgoing streams out of str0m (see `parked_stream`). Not
    /// while an offer is out: str0m would answer a missing stream with a new
    /// one.
    fn park_idle_streams(&mut self, now: Instant) {
        for p in self.participants.iter_mut().flatten() {
            if !p.connected || p.pending_offer.is_some() {
                continue;
            }
            let parked = park_idle(&mut p.rtc, &mut p.subscriptions, now);
            self.stats.streams_parked += parked as u64;
        }
    }

    fn update_speakers(&mut self, now: Instant) {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            let Some(room) = self.rooms.get_mut(&name) else {
                continue;
            };
            let Some(speakers) = room.speakers.tick(now) else {
                continue;
            };
            let dominant = room.speakers.dominant().map(|(k, _)| k);
            let dominant_changed = dominant != room.dominant;
            room.dominant = dominant;
            let members = room.participants.clone();
            let list: Vec<Speaker> = speakers
                .iter()
                .filter_map(|&((k, mid), level)| {
                    let p = self.participants.get(k)?.as_ref()?;
                    let t = p.published.iter().find(|t| t.mid == mid)?;
                    Some(Speaker {
                        participant_id: p.id.clone(),
                        track_id: t.id.clone(),
                        level,
                    })
                })
                .collect();
            for k in members {
                if let Some(p) = self.participants[k].as_mut() {
                    p.send(ServerSignal::SpeakersChanged {
                        speakers: list.clone(),
                    });
                    if dominant_changed {
                        p.allocation_due = true;
                    }
                }
            }
        }
    }

    /// Run the Allocator for one subscriber and apply its choices.
    fn allocate(&mut self, now: Instant, key: ParticipantKey) {
        let Some(p) = self.participants.get(key).and_then(|p| p.as_ref()) else {
            return;
        };
        let (dominant, last_opening) = self
            .rooms
            .get(&p.room)
            .map_or((None, None), |r| (r.dominant, r.last_gate_opening));
        let mut demands = std::mem::take(&mut self.demands);
        demands.clear();
        // Per demand: (subscription index, live layers, top layer).
        let mut slots = std::mem::take(&mut self.demand_slots);
        slots.clear();
        let mut audio = AudioReserve::default();
        for (si, s) in p.subscriptions.iter().enumerate() {
            if !s.enabled || s.state == SubscriptionState::Removing {
                continue;
            }
            let Some(t) = self
                .participants
                .get(s.publisher)
                .and_then(|o| o.as_ref())
                .and_then(|o| o.published.iter().find(|t| t.mid == s.source_mid))
            else {
                continue;
            };
            if s.kind == MediaKind::Audio {
                let measured = t.layers[0].rate.bps().unwrap_or(0);
                if !self.config.silence_gate || !t.silence_gate.is_levelled() {
                    audio.ungated(measured);
                } else if t.silence_gate.is_open()
                    && !t.silence_gate.handed_over(now, VOICING, last_opening)
                    && t.layers[0].is_live(now)
                    && !t.muted
                {
                    audio.speaking(measured);
                } else {
                    audio.idle();
                }
                continue;
            }
            let mut costs = [0; MAX_LAYERS];
            let mut live = [false; MAX_LAYERS];
            for (i, l) in t.layers.iter().enumerate().take(MAX_LAYERS) {
                costs[i] = l.cost_bps();
                live[i] = l.is_live(now);
            }
            let priority = if s.pinned {
                Priority::Pinned
            } else if dominant == Some(s.publisher) && t.source == TrackSource::Camera {
                Priority::Speaker
            } else if t.source == TrackSource::ScreenShare {
                Priority::Screen
            } else {
                Priority::Grid
            };
            let layers = t.layers.len().min(MAX_LAYERS);
            demands.push(Demand {
                priority,
                costs,
                layers,
                max_layer: max_layer(layers, s.quality, s.tile, t.size),
                previous: s.chosen,
            });
            slots.push((si, live, layers - 1));
        }
        let initial = self
            .config
            .allocator
            .then(|| u64::from(self.config.bwe_initial_kbps) * 1000);
        let connected_for = p.connected_at.map(|t| now.saturating_duration_since(t));
        let estimate = budget_estimate(p.bwe_bps, initial, connected_for).unwrap_or(UNLIMITED_BPS);
        let audio_bps = audio.bps();
        let by_estimate = estimate.saturating_sub(audio_bps);
        // The cap never pauses the speaker or the first pinned tracks: each
        // keeps its lowest layer whatever the worker's load, and can resume
        // it with the Allocator's headroom. A fixed floor did not hold that:
        // a 150 kbit/s layer measured 220-245 kbit/s with the keyframes of
        // its resumes, over the 250 kbit/s floor, and behind 1 Mbit/s the
        // stage was paused half the time while the cap lasted.
        let cap = self.shedder.cap().map_or(u64::MAX, |c| {
            let pinned = demands
                .iter()
                .filter(|d| d.priority == Priority::Pinned)
                .take(CAP_KEEPS_PINNED);
            let speaker = demands.iter().filter(|d| d.priority == Priority::Speaker);
            let first_served: u64 = pinned.chain(speaker).map(|d| d.resume_need(0)).sum();
            c.max(first_served)
        });
        let budget = by_estimate.min(cap);
        // What is paused now is paused for the server, not the link.
        let reason = if cap < by_estimate {
            PauseReason::ServerLoad
        } else {
            PauseReason::Bandwidth
        };
        let mut out = std::mem::take(&mut self.alloc_out);
        let mut allocation = if self.config.allocator {
            allocate(budget, &demands, &mut self.alloc_order, &mut out)
        } else {
            // Baseline for comparison: every track's top layer, never paused.
            out.clear();
            out.extend(slots.iter().map(|&(_, _, top)| Some(top)));
            Allocation::default()
        };
        let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
            return;
        };
        p.allocation_due = false;
        p.allocate_at = None;
        p.allocated_for_bps = estimate;
        let verdict = if self.config.allocator
            && trial_applies(
                p.bwe_bps.is_some(),
                reason == PauseReason::ServerLoad,
                connected_for,
                p.last_nack_at.map(|t| now.saturating_duration_since(t)),
            ) {
            p.increase_trial.judge(
                now,
                estimate,
                p.video_used_bps + audio_bps,
                allocation.used + audio_bps,
            )
        } else {
            // A trial cut short (loss came, or the server's cap) is over.
            p.increase_trial = IncreaseTrial::default();
            TrialVerdict::Grant
        };
        if verdict != TrialVerdict::Grant {
            allocation.used = withhold_increases(&demands, &mut out);
        }
        p.video_used_bps = allocation.used;
        p.video_wanted_bps = allocation.wanted;
        // Video goes to the link at the budget the estimate leaves it, but
        // never slower than what was allocated: that would only build a
        // queue here (see `release_queue`). Not in the first seconds, while
        // str0m's start-up probes find the link (and send what is queued at
        // their rate): held to the estimate of those seconds, a 4-s meeting
        // of four on the loopback had a video latency p99 of 128 ms.
        let settled = connected_for.is_some_and(|d| d >= TRIAL_AFTER_CONNECT);
        p.release.set_rate(
            (self.config.allocator && p.bwe_bps.is_some() && settled)
                .then_some(by_estimate.max(allocation.used)),
        );
        if let Some(bps) = p.bwe_bps
            && self.bwe_samples.len() < MAX_BWE_SAMPLES
        {
            self.bwe_samples.push(bps);
        }
        debug!(
            participant = %p.id,
            estimate_kbps = estimate / 1000,
            audio_kbps = audio_bps / 1000,
            used_kbps = allocation.used / 1000,
            wanted_kbps = allocation.wanted / 1000,
            videos = out.len(),
            paused = out.iter().filter(|c| c.is_none()).count(),
            ?verdict,
            "allocated"
        );
        let mut keyframes = Vec::new();
        for (&(si, live, _), &chosen) in slots.iter().zip(out.iter()) {
            let s = &mut p.subscriptions[si];
            s.chosen = chosen;
            // While the publisher does not send the chosen layer (dynacast is
            // turning it on, or its own uplink dropped it), take the best
            // live one below; if none, keep waiting for the chosen one.
            let target = chosen.map(|c| (0..=c).rev().find(|&i| live[i]).unwrap_or(c));
            if target != s.target {
                s.target = target;
                if target.is_none() {
                    // Paused: stop at once, and start on a keyframe when resumed.
                    s.current = None;
                    s.forwarder.restart();
                    // What is held for it still goes: its sequence numbers
                    // are taken, and the subscriber would see a gap and a
                    // cut frame.
                } else if let Some(t) = target
                    && s.current != target
                    && s.state == SubscriptionState::Active
                {
                    keyframes.push((s.publisher, s.source_mid, t));
                }
            }
            let paused = chosen.is_none();
            if paused != s.paused_sent && s.state != SubscriptionState::Wanted {
                s.paused_sent = paused;
                let signal = if paused {
                    ServerSignal::TrackPaused {
                        track_id: s.track_id.clone(),
                        participant_id: s.publisher_id.clone(),
                        reason,
                    }
                } else {
                    ServerSignal::TrackResumed {
                        track_id: s.track_id.clone(),
                        participant_id: s.publisher_id.clone(),
                    }
                };
                p.send(signal);
            }
        }
        if self.config.allocator && p.bwe_bps.is_some() {
            // Probe before up-switching: while something the subscriber wants
            // does not fit, ask the estimator for more than it has; str0m
            // sends a probe cluster when the desired rate rises above the
            // estimate. At most every PROBE_INTERVAL.
            // Probing past the server's cap would only buy padding.
            let wanted = (allocation.wanted.min(cap) + audio_bps).max(MIN_DESIRED_BPS);
            let short = allocation.used + audio_bps < wanted;
            // The minimum (sustained padding) stays 0: measured with the load
            // tester, padding up to the allocated rate filled thin links with
            // filler that queued ahead of audio (p99 latency 250 ms at
            // 1 Mbit/s); only probe clusters go beyond the media.
            // str0m caps its probes at twice the desired rate, not at the
            // estimate: with everything a grid of twelve wants (16 Mbit/s)
            // as the desired rate, it sent a subscriber behind 1 Mbit/s a
            // probe of 382 padding packets in 16 ms (53 Mbit/s), and 273 of
            // them were lost at the bottleneck. So the desired rate is what
            // is wanted, but at most PROBE_CEILING times the estimate.
            // (Twice was too tight: after a drop to 300 kbit/s and back the
            // estimate never climbed back within 10 s.)
            let target = wanted
                .min(estimate.saturating_mul(PROBE_CEILING))
                .max(MIN_DESIRED_BPS);
            let restart = p
                .estimate_stall
                .restart_due(now, estimate, short, p.last_nack_at);
            let mut bwe = p.rtc.bwe();
            if restart {
                // At the estimate it has: nothing is sent faster, but the
                // loss episode is forgotten and start-up probing runs again.
                debug!(participant = %p.id, estimate_kbps = estimate / 1000, "estimator restarted");
                bwe.reset(Bitrate::bps(estimate));
            }
            // Padding only while an increase is on trial; str0m caps it at
            // the estimate and sends it only into gaps between media.
            let minimum = match verdict {
                TrialVerdict::Pad(bps) => bps.min(estimate),
                _ => 0,
            };
            let desired = if short && now >= p.next_probe {
                p.next_probe = now + PROBE_INTERVAL;
                // Lowering first makes the raise count as new.
                bwe.set_bitrate(Bitrate::bps(minimum), Bitrate::bps(estimate));
                Some(target.max(estimate))
            } else {
                (p.bwe_desired != target || p.bwe_minimum != minimum).then_some(target)
            };
            if let Some(desired) = desired {
                p.bwe_desired = desired;
                p.bwe_minimum = minimum;
                bwe.set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired.max(minimum)));
                self.drain(key);
            }
        }
        self.demands = demands;
        self.demand_slots = slots;
        self.alloc_out = out;
        for (publisher, mid, layer) in keyframes {
            self.request_keyframe(now, publisher, mid, layer, KeyframeFor::Receivers);
        }
    }

    /// Tell publishers which layers anybody receives; turn unwanted ones off
    /// after [`DYNACAST_GRACE`], wanted ones back on at once.
    fn dynacast(&mut self, now: Instant) {
        if !self.config.allocator {
            return;
        }
        // One pass over every subscription marks the layers someone takes
        // (chosen, or still flowing until a switch), then each publisher is
        // looked at once: linear in subscriptions, not rooms x subscriptions.
        let mut marks = std::mem::take(&mut self.layer_scratch);
        marks.clear();
        for q in self.participants.iter().flatten() {
            for s in &q.subscriptions {
                if s.kind != MediaKind::Video
                    || !s.enabled
                    || s.state == SubscriptionState::Removing
                {
                    continue;
                }
                for l in [s.chosen, s.current].into_iter().flatten() {
                    marks.push((s.publisher, s.source_mid, l));
                }
            }
        }
        for p in self.participants.iter_mut().flatten() {
            for t in &mut p.published {
                for l in &mut t.layers {
                    l.wanted = false;
                }
            }
        }
        for &(publisher, mid, layer) in &marks {
            if let Some(l) = self
                .participants
                .get_mut(publisher)
                .and_then(|p| p.as_mut())
                .and_then(|p| p.track_by_mid(mid))
                .and_then(|t| t.layers.get_mut(layer))
            {
                l.wanted = true;
            }
        }
        self.layer_scratch = marks;
        for key in 0..self.participants.len() {
            let Some(p) = self.participants[key].as_mut() else {
                continue;
            };
            let mut changes = Vec::new();
            for t in &mut p.published {
                if t.kind != MediaKind::Video {
                    continue;
                }
                let mut changed = false;
                for l in &mut t.layers {
                    if l.wanted {
                        l.unwanted_since = None;
                        if !l.publishing {
                            l.publishing = true;
                            changed = true;
                        }
                    } else {
                        let since = *l.unwanted_since.get_or_insert(now);
                        if l.publishing && now.saturating_duration_since(since) >= DYNACAST_GRACE {
                            l.publishing = false;
                            changed = true;
                        }
                    }
                }
                if changed {
                    changes.push(ServerSignal::PublishLayers {
                        track_id: t.id.clone(),
                        mid: t.mid.to_string(),
                        layers: t.layer_states(),
                    });
                }
            }
            for c in changes {
                p.send(c);
            }
        }
    }

    // ---- media --------------------------------------------------------

    /// Drive every participant that had input until nothing is left to do,
    /// then remove the ones that failed.
    fn settle(&mut self, now: Instant) {
        let mut rounds = 0;
        loop {
            while let Some((key, event)) = self.events.pop_front() {
                rounds += 1;
                if rounds > MAX_POLL_ROUNDS {
                    warn!("event limit reached");
                    self.events.clear();
                    break;
                }
                self.participant_event(now, key, event);
            }
            // Sending drains subscribers, which may queue events again; the
            // passes are bounded with the events.
            if self.send_due.is_empty() || rounds > MAX_POLL_ROUNDS {
                break;
            }
            rounds += 1;
            self.send_written(now);
        }
        while let Some((key, code, why)) = self.doomed.pop() {
            if let Some(p) = self.get(key) {
                p.close(code, why.clone());
            }
            self.remove(key, &why);
        }
        if std::mem::take(&mut self.offers_due) {
            self.send_waiting_offers(now);
        }
    }

    /// Send what `forward_rtp` wrote. str0m sends a written packet only
    /// after a timeout input has stamped it, and every drain walks all
    /// streams of the connection (the main cost per subscriber in big
    /// rooms), so each subscriber gets one timeout and one drain for all the
    /// packets of a receive batch instead of a drain per packet and a
    /// timeout later. str0m asks for a drain after every mutation; a
    /// direct-API `write_rtp` only pushes onto the stream's send queue
    /// (str0m 0.25: nothing to poll but the next timeout), so writes of one
    /// batch are followed by one timeout and one full drain. Recheck on
    /// str0m upgrades.
    fn send_written(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.send_due);
        for &key in &due {
            let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
                continue;
            };
            p.send_due = false;
            let written = u64::from(std::mem::take(&mut p.written));
            let audio_only = !std::mem::take(&mut p.wrote_video);
            // str0m's own next deadline before these packets (not a pacer
            // one: those move with what is queued).
            let deadline = p.next_timeout.filter(
                |_| !matches!(p.timeout_reason, Reason::Pacer(r) if r != PacerReason::Handle),
            );
            let sent_before = p.rtp_sent;
            p.clock = p.clock.max(now);
            let at = p.clock;
            // str0m's pacer sends one packet per timeout and then asks for an
            // immediate one ("Immediate") before the next: every round here
            // sends one of what was written.
            for _ in 0..written.max(1) {
                let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
                    break;
                };
                match catch_unwind(AssertUnwindSafe(|| p.rtc.handle_input(Input::Timeout(at)))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(participant = %p.id, error = %e, "timeout handling failed")
                    }
                    Err(_) => {
                        self.panicked(key);
                        break;
                    }
                }
                self.drain(key);
                let Some(p) = self.participants.get_mut(key).and_then(|p| p.as_mut()) else {
                    break;
                };
                // (str0m schedules it a microsecond after `at`.)
                if p.timeout_reason != Reason::Pacer(PacerReason::Immediate) {
                    break;
                }
                if p.rtp_sent - sent_before >= written {
                    // All of it is out, and the pacer only wants a timeout to
                    // reopen its gate: one full walk of the connection's
                    // streams for nothing. Audio is not paced, so nothing
                    // waits on that gate but str0m's other timers, whose
                    // deadline we had; the next packet written or received
                    // reopens it anyway. After video the pacer may have more
                    // queued, so it gets its immediate timeout.
                    if audio_only && let Some(d) = deadline.filter(|d| *d > at) {
                        p.next_timeout = Some(d);
                        self.stats.gate_timeouts_deferred += 1;
                    }
                    break;
                }
            }
        }
        due.clear();
        self.send_due = due;
    }

    /// Write the held video whose time on the link has come (see
    /// `release_queue`); `settle` sends it.
    fn release_held(&mut self, now: Instant) {
        for key in 0..self.participants.len() {
            let Some(p) = self.participants[key].as_mut() else {
                continue;
            };
            if p.release.next_release().is_none_or(|t| t > now) {
                continue;
            }
            let mut wrote = 0;
            while let Some((stream, write)) = p.release.release(now) {
                // The subscription may be gone, or its m-line reused.
                let Some(s) = p.subscriptions.iter_mut().find(|s| {
                    s.mid == Some(stream.mid)
                        && s.publisher == stream.publisher
                        && s.source_mid == stream.source_mid
                }) else {
                    continue;
                };
                if unpark(&mut p.rtc, s, stream.mid) {
                    self.stats.streams_restored += 1;
                }
                let mut api = p.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(stream.mid, None) else {
                    continue;
                };
                if !std::mem::replace(&mut s.stream_configured, true) {
                    fresh_rtx_cache(tx);
                }
                tx.write_rtp(write);
                s.last_sent = Some(now);
                wrote += 1;
            }
            if wrote > 0 {
                p.written += wrote;
                p.wrote_video = true;
                if !std::mem::replace(&mut p.send_due, true) {
                    self.send_due.push(key);
                }
            }
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
                    p.timeout_reason = p.rtc.last_timeout_reason();
                    if self.earliest.is_none_or(|e| t < e) {
                        self.earliest = Some(t);
                    }
                    return;
                }
                Output::Transmit(t) => {
                    if is_rtp(&t.contents) {
                        p.rtp_sent += 1;
                    }
                    self.outbox.push(t)
                }
                Output::Event(e) => self.events.push_back((key, e)),
            }
        }
    }

    fn participant_event(&mut self, now: Instant, key: ParticipantKey, event: Event) {
        match event {
            Event::RtpPacket(pkt) => self.forward_rtp(now, key, pkt),
            // Only a subscriber that sends transport-wide feedback has an
            // estimate; one that does not is limited by a guess only for a
            // while after it connected (`budget_estimate`).
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe: true,
            }) => {
                let Some(p) = self.get(key) else { return };
                let bps = estimate.as_u64();
                p.bwe_bps = Some(bps);
                // Allocate again at once when the estimate fell below what the
                // last allocation assumed (congestion), or grew by a tenth.
                let old = p.allocated_for_bps;
                if bps < old || bps > old + old / 10 {
                    p.allocation_due = true;
                }
            }
            Event::KeyframeRequest(req) => {
                self.stats.plis_received += 1;
                let Some(p) = self.get(key) else { return };
                let Some(s) = p.subscription_by_mid(req.mid) else {
                    return;
                };
                let Some(layer) = s.current.or(s.target) else {
                    return;
                };
                let (publisher, mid) = (s.publisher, s.source_mid);
                self.request_keyframe(now, publisher, mid, layer, KeyframeFor::Receivers);
            }
            // str0m counts NACKs per outgoing stream and reports the totals
            // every stats interval; count what is new since the last report.
            Event::MediaEgressStats(st) => {
                let Some(p) = self.get(key) else { return };
                let Some(s) = p.subscription_by_mid(st.mid) else {
                    return;
                };
                // A total below the last one is a new stream on a reused m-line.
                let new = st.nacks.checked_sub(s.nacks_seen).unwrap_or(st.nacks);
                s.nacks_seen = st.nacks;
                if new > 0 {
                    p.last_nack_at = Some(now);
                }
                self.stats.nacks_received += new;
            }
            Event::Connected => {
                let Some(p) = self.get(key) else { return };
                p.connected = true;
                p.connected_at.get_or_insert(now);
                p.down_since = None;
                info!(participant = %p.id, after_ms = now.saturating_duration_since(p.joined_at).as_millis() as u64, "media connected");
                // Video negotiated before the connection came up starts now, on a keyframe.
                let wanted: Vec<(ParticipantKey, Mid, usize)> = p
                    .subscriptions
                    .iter()
                    .filter(|s| s.state == SubscriptionState::Active && s.kind == MediaKind::Video)
                    .filter_map(|s| Some((s.publisher, s.source_mid, s.target?)))
                    .collect();
                p.allocation_due = true;
                for (publisher, mid, layer) in wanted {
                    self.request_keyframe(now, publisher, mid, layer, KeyframeFor::Receivers);
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
                let announced = p
                    .announced
                    .iter()
                    .find(|a| a.mid == mid_s && a.kind == kind);
                let source = announced
                    .map(|a| a.source)
                    .unwrap_or(TrackSource::default_for(kind));
                let size = announced.and_then(|a| a.width.zip(a.height));
                // The rids the client sends (str0m names them from its side or ours
                // depending on direction: take whichever list it filled).
                let rids: Vec<Rid> = m
                    .simulcast
                    .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
                    .unwrap_or_default()
                    .iter()
                    .map(|l| l.rid)
                    .collect();
                let id = format!("TR_{}", stamma_proto::random_token(12));
                let mut track = Track::new(id.clone(), m.mid, kind, source, &rids, now);
                track.size = size;
                p.published.push(track);
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
                let (track, who) = (t.info(&p.id), p.info());
                p.published.retain(|t| t.mid != mid);
                let (room, pid) = (p.room.clone(), p.id.clone());
                self.emit(|| MediaEvent::TrackUnpublished {
                    room: room.clone(),
                    participant: who,
                    track,
                });
                self.unpublish_from_room(&room, key, &pid, &track_id, mid);
            }
            _ => {}
        }
    }

    /// Ask the publisher of `mid` for a keyframe on one layer, at most once
    /// per interval per layer (see [`KeyframeFor`]); a refused request is
    /// remembered and sent by the tick when the interval is over.
    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantKey,
        mid: Mid,
        layer: usize,
        reaches: KeyframeFor,
    ) {
        let Some(p) = self
            .participants
            .get_mut(publisher)
            .and_then(|p| p.as_mut())
        else {
            return;
        };
        let Some(t) = p.track_by_mid(mid) else { return };
        let Some(l) = t.layers.get_mut(layer) else {
            return;
        };
        if !l.allow_keyframe_request(now, reaches) {
            return;
        }
        let rid = l.rid;
        self.stats.keyframe_requests += 1;
        if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
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
        // Which track and layer: by a known SSRC, else ask str0m once and remember.
        let known = p.published.iter().enumerate().find_map(|(i, t)| {
            t.layers
                .iter()
                .position(|l| l.ssrc == Some(ssrc))
                .map(|l| (i, l))
        });
        let (index, layer) = match known {
            Some(x) => x,
            None => {
                let Some((mid, rid)) = p
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                let Some(i) = p.published.iter().position(|t| t.mid == mid) else {
                    return;
                };
                let rid = rid.or(pkt.header.ext_vals.rid);
                let Some(l) = p.published[i].layer_of(ssrc, rid) else {
                    return;
                };
                (i, l)
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
        let track = &mut p.published[index];
        #[cfg(feature = "test-tap")]
        if let Some(tap) = &self.config.tap {
            tap.record(&p.room, track.kind, &pkt.payload);
        }
        let mid = track.mid;
        let is_video = track.kind == MediaKind::Video;
        let l = &mut track.layers[layer];
        l.rate
            .add(now, pkt.payload.len() as u64 + PACKET_OVERHEAD_BYTES);
        let came_back = !l.is_live(now);
        l.last_packet = Some(now);
        let descriptor = if codec == Codec::Vp8 {
            Vp8Descriptor::parse(&pkt.payload).ok()
        } else {
            None
        };
        let starts_keyframe = is_video
            && descriptor
                .as_ref()
                .is_some_and(|d| d.starts_keyframe(&pkt.payload));
        // VP8 payload descriptor: S set, partition index 0 (RFC 7741 §4.2).
        let starts_frame = descriptor.is_some()
            && pkt
                .payload
                .first()
                .is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0);
        if starts_keyframe {
            l.keyframe_pending = false;
            l.keyframe_since_request = true;
        }
        if is_video {
            l.last_keyframe
                .packet(now, starts_keyframe, starts_frame, pkt.payload.len());
        }
        let recent_keyframe = l.last_keyframe.recent(now);
        // A muted track is not forwarded (nor counted as speaking).
        if track.muted {
            return;
        }
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        let mut gate_closings = 0;
        let mut gate_opened = false;
        if !is_video {
            let level = pkt.header.ext_vals.audio_level.map(attenuation_db);
            // Every level counts for the speaker detection, also the ones
            // whose packets the gate keeps back.
            if let Some(db) = level {
                room.speakers.observe((publisher, mid), db, now);
            }
            if self.config.silence_gate {
                let gate = &mut p.published[index].silence_gate;
                let was_open = gate.is_open();
                if !gate.admit(now, level) {
                    self.stats.audio_gated += 1;
                    return;
                }
                gate_opened = !was_open;
                gate_closings = gate.closings();
                if gate_opened {
                    room.last_gate_opening = Some(now);
                }
            }
        }
        let mut subscribers = std::mem::take(&mut self.scratch);
        subscribers.clear();
        subscribers.extend(
            room.participants
                .iter()
                .copied()
                .filter(|k| *k != publisher),
        );
        // A layer the publisher (re)started changes what can be forwarded; a
        // voice that starts takes its share of every subscriber's budget,
        // once the voices it may take over from no longer count: when
        // speakers hand over, the old ones' last words came with this packet.
        if (came_back && is_video) || gate_opened {
            for &k in &subscribers {
                if let Some(q) = self.participants.get_mut(k).and_then(|q| q.as_mut()) {
                    let at = if gate_opened { now + VOICING } else { now };
                    q.allocate_at = Some(q.allocate_at.map_or(at, |t| t.min(at)));
                }
            }
        }
        let seq: u64 = *pkt.seq_no;
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..ExtensionValues::default()
        };
        let mut need_keyframe = false;
        // Whether any subscriber receives this layer: if none does, a
        // keyframe reaches only those waiting for one.
        let mut watched = false;
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
            // How the release queue knows this stream's packets.
            let stream = HeldStream {
                mid: out_mid,
                publisher,
                source_mid: mid,
            };
            // A layer this subscription neither receives nor waits for (the
            // other simulcast layers) costs nothing more.
            if s.current != Some(layer) && s.target != Some(layer) {
                continue;
            }
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
            s.last_sent = Some(now);
            if unpark(&mut q.rtc, s, out_mid) {
                self.stats.streams_restored += 1;
            }
            // One lookup of the outgoing stream serves the backlog check and
            // the write (a lookup walks the subscriber's streams).
            let mut api = q.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(out_mid, None) else {
                continue;
            };
            // Shedding is decided at frame starts only, so no frame is cut.
            if starts_frame
                && self.config.allocator
                && let Some(estimate) = q.bwe_bps
            {
                let mut backlog = tx
                    .queue_info()
                    .map(|i| SendBacklog {
                        queued_bytes: i.byte_size() as u64,
                        oldest_wait: i
                            .first_unsent()
                            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
                    })
                    .unwrap_or_default();
                // What waits in front of str0m counts as queued too.
                let (held, held_since) = q.release.held_for(stream);
                backlog.queued_bytes += held;
                if let Some(t) = held_since {
                    backlog.oldest_wait = backlog.oldest_wait.max(now.saturating_duration_since(t));
                }
                // Judged on the layer it forwards, whose latest keyframe it
                // forwarded too.
                if s.current == Some(layer) {
                    if backlog.over_limit(estimate, recent_keyframe) {
                        s.shed_layer = s.current.take();
                        s.forwarder.restart();
                        s.shedding = true;
                        self.stats.frames_shed += 1;
                        // Repairs of what came before the restart are useless
                        // to the decoder and would queue ahead of the
                        // keyframe: a fresh cache drops the pending resends.
                        fresh_rtx_cache(tx);
                    }
                } else if s.shedding {
                    s.shedding = !backlog.may_restart(estimate);
                }
            }
            // While shedding, nothing is forwarded and no keyframe asked for:
            // one would only queue behind what is there.
            if s.shedding {
                continue;
            }
            // Layer selection: forward the current layer until a keyframe of
            // the target arrives, then switch (a new segment in the forwarder).
            // Not the current layer means the target (skipped above if not).
            if s.current != Some(layer) {
                if !starts_keyframe {
                    need_keyframe = true;
                    continue;
                }
                // A restart after shedding on another layer is a switch too.
                let from = s.current.or(s.shed_layer.take());
                if from.is_some_and(|f| f != layer) {
                    self.stats.layer_switches += 1;
                }
                s.current = Some(layer);
                s.forwarder.restart();
            }
            if s.gate_closings != gate_closings {
                // The publisher's microphone was gated since this
                // subscription's last packet: a new segment, numbered on
                // from it.
                s.gate_closings = gate_closings;
                s.forwarder.restart();
            }
            let (seq_out, ts_out, patch) = match s.forwarder.forward(
                now,
                seq,
                pkt.header.timestamp,
                starts_keyframe,
                descriptor.as_ref(),
            ) {
                Forward::Send {
                    seq,
                    timestamp,
                    vp8,
                } => (seq, timestamp, vp8),
                Forward::NeedKeyframe => {
                    need_keyframe = true;
                    continue;
                }
                Forward::Stale => continue,
            };
            watched = true;
            let configure = !std::mem::replace(&mut s.stream_configured, true);
            let mut write = RtpWrite::new(
                out_pt,
                seq_out.into(),
                ts_out,
                pkt.timestamp,
                pkt.payload.clone(),
            )
            .marker(pkt.header.marker)
            .ext_vals(ext.clone())
            .nackable(true);
            if let Some(patch) = patch {
                write = write.vp8_patch(patch);
            }
            if configure {
                fresh_rtx_cache(tx);
            }
            self.stats.rtp_forwarded += 1;
            self.stats.rtp_forwarded_bytes += pkt.payload.len() as u64;
            // Audio is never held: it is what suffers from a queue.
            let write = if is_video {
                q.release.offer(now, stream, pkt.payload.len(), write)
            } else {
                Some(write)
            };
            let Some(write) = write else {
                if let Some(t) = q.release.next_release() {
                    self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
                }
                continue;
            };
            tx.write_rtp(write);
            q.written += 1;
            q.wrote_video |= is_video;
            if !std::mem::replace(&mut q.send_due, true) {
                self.send_due.push(k);
            }
        }
        self.scratch = subscribers;
        if need_keyframe {
            let reaches = if watched {
                KeyframeFor::Receivers
            } else {
                KeyframeFor::Waiters
            };
            self.request_keyframe(now, publisher, mid, layer, reaches);
        }
    }
}

/// Our retransmission settings on a subscriber's stream, with an empty cache.
/// str0m queues a resend for every sequence number of every NACK, also for
/// one already queued, and its pacer raises its rate to drain a long queue.
/// So a subscriber that lost a burst and kept asking was sent 4-8 Mbit/s of
/// retransmissions into a 1 Mbit/s link for seconds (load tester, meeting-50
/// behind 1 Mbit/s, about one run in two), each resend lost again and asked
/// for again. With a cap, str0m drops the queued resends while
/// retransmissions exceed [`RTX_RATIO_CAP`] of the stream's bytes of the
/// last second; repairs within it go on, and what loss remains is the
/// Allocator's to fix by lowering layers.
fn fresh_rtx_cache(tx: &mut StreamTx) {
    tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
}

/// What one `subscription` signal changes; None keeps the current value.
struct SubscriptionSettings {
    enabled: Option<bool>,
    quality: Option<VideoQuality>,
    tile: Option<(u32, u32)>,
    pinned: Option<bool>,
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
        Worker::new(config, addr, addr, cert, Instant::now())
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
                can_admin: false,
                signals: tx,
                room_options: Default::default(),
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

    /// The Opus fmtp line of the server's answer to a client that offers
    /// one microphone (str0m's own Opus parameters, as browsers send them).
    fn answered_opus_fmtp(opus_dtx: bool) -> String {
        let mut w = worker(Duration::from_secs(30));
        w.config.opus_dtx = opus_dtx;
        let now = Instant::now();
        let mut rx = join(&mut w, now, "PA_1", "r", "alice");
        drain(&mut rx);
        let mut client = str0m::Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        let mut api = client.sdp_api();
        let mid = api.add_media(
            str0m::media::MediaKind::Audio,
            Direction::SendOnly,
            None,
            None,
            None,
        );
        let (offer, _) = api.apply().expect("an offer");
        w.handle_command(
            now,
            Command::Signal {
                participant_id: "PA_1".into(),
                signal: ClientSignal::Offer {
                    sdp: offer.to_sdp_string(),
                    tracks: vec![PublishedTrack {
                        mid: mid.to_string(),
                        kind: MediaKind::Audio,
                        source: TrackSource::Microphone,
                        width: None,
                        height: None,
                    }],
                },
            },
        );
        let got = drain(&mut rx);
        let sdp = got
            .iter()
            .find_map(|m| match m {
                ToParticipant::Signal(ServerSignal::Answer { sdp, .. }) => Some(sdp.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no answer: {got:?}"));
        sdp.lines()
            .find(|l| l.starts_with("a=fmtp:111 "))
            .unwrap_or_else(|| panic!("no Opus fmtp: {sdp}"))
            .to_owned()
    }

    #[test]
    fn clients_are_asked_for_opus_dtx_unless_it_is_off() {
        let on = answered_opus_fmtp(true);
        assert!(on.contains("usedtx=1"), "{on}");
        // The rest of the parameters stay what str0m offers.
        assert!(on.contains("useinbandfec=1"), "{on}");
        let off = answered_opus_fmtp(false);
        assert!(!off.contains("usedtx"), "{off}");
    }

    #[test]
    fn subscription_with_half_a_tile_size_is_refused_and_changes_nothing() {
        let mut w = worker(Duration::from_secs(30));
        let now = Instant::now();
        let mut rx = join(&mut w, now, "PA_1", "r", "alice");
        drain(&mut rx);
        w.handle_command(
            now,
            Command::Signal {
                participant_id: "PA_1".into(),
                signal: ClientSignal::Subscription {
                    track_ids: vec!["TR_x".into()],
                    enabled: Some(false),
                    quality: None,
                    width: Some(320),
                    height: None,
                    pinned: None,
                },
            },
        );
        let got = drain(&mut rx);
        assert!(
            got.iter().any(|m| matches!(
                m,
                ToParticipant::Signal(ServerSignal::Error {
                    code: ErrorCode::BadMessage,
                    ..
                })
            )),
            "{got:?}"
        );
        // Refused whole: not even the unknown track is looked up.
        assert!(!got.iter().any(|m| matches!(
            m,
            ToParticipant::Signal(ServerSignal::Error {
                code: ErrorCode::UnknownTrack,
                ..
            })
        )));
        assert_eq!(w.participant_count(), 1);
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
