//! One WebRTC connection of a simulated participant: a str0m `Rtc` (real
//! ICE, DTLS, SRTP) with its own UDP socket, driven by a tokio task, so many
//! share each thread. It publishes a microphone (looped real Opus) and a
//! camera (VP8 frames of realistic size, simulcast optional, a keyframe on
//! PLI; str0m retransmits on NACK), and measures every frame it receives
//! from the stamp in the frame's last bytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stamma_client::e2ee::{Codec as E2eeCodec, protect_into, unprotect_into};
use stamma_client::media::{SyntheticVp8, VideoLayer};
use stamma_client::sframe::{CipherSuite, Decryptor, Encryptor};
use stamma_client::stamp::FrameStamp;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, MediaData, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::downlink::Downlink;
use crate::scenario::{ParticipantPlan, Scenario, Silence};
use crate::stats::{Collector, Delta, Jitter, RateSample, is_freeze};

/// A track as the load test names it: who sends it and whether it is video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackKey {
    pub sender: u32,
    pub video: bool,
}

/// What every peer shares: the clock, the media loops, the schedule and
/// where results go. Written per packet: only the sender activity atomics.
pub struct Shared {
    /// Stamps carry microseconds since this instant.
    pub epoch: Instant,
    pub scenario: Scenario,
    pub collector: Arc<Collector>,
    /// Opus packets looped while speaking; `None` is a DTX frame not sent.
    pub speech: Vec<Option<Arc<[u8]>>>,
    pub silence: Vec<Option<Arc<[u8]>>>,
    pub cert: DtlsCert,
    pub bind_ip: IpAddr,
    /// Per sender and kind: first and last send, µs since `epoch` (0 = never).
    pub activity: Vec<[(AtomicU64, AtomicU64); 2]>,
    /// Peers whose media connection is up.
    pub joined: AtomicUsize,
    /// With `--e2ee`: the secret every sender's SFrame key derives from.
    pub e2ee_secret: Option<[u8; 32]>,
}

/// The SFrame key id of a sender's audio (`video = false`) or video: the
/// simulcast layers of one camera share a key and its counter.
fn e2ee_kid(sender: u32, video: bool) -> u64 {
    (u64::from(sender) << 1) | u64::from(video)
}

fn e2ee_key(secret: &[u8; 32], sender: u32) -> Option<[u8; 32]> {
    stamma_client::e2ee::schedule::sender_base_key(secret, &format!("loadtest-{sender}")).ok()
}

/// A peer's SFrame state: its two encryptors and every sender's keys.
struct PeerE2ee {
    audio: Encryptor,
    video: Encryptor,
    decryptor: Decryptor,
    /// Where a frame is protected and unprotected into (reused).
    sealed: Vec<u8>,
    plain: Vec<u8>,
}

impl PeerE2ee {
    fn new(secret: &[u8; 32], me: u32, senders: u32) -> Option<PeerE2ee> {
        let suite = CipherSuite::Aes128GcmSha256;
        let mine = e2ee_key(secret, me)?;
        let mut decryptor = Decryptor::new();
        for s in 0..senders {
            let key = e2ee_key(secret, s)?;
            for video in [false, true] {
                decryptor.add_key(suite, e2ee_kid(s, video), &key).ok()?;
            }
        }
        Some(PeerE2ee {
            audio: Encryptor::new(suite, e2ee_kid(me, false), &mine).ok()?,
            video: Encryptor::new(suite, e2ee_kid(me, true), &mine).ok()?,
            decryptor,
            sealed: Vec::with_capacity(64 * 1024),
            plain: Vec::with_capacity(64 * 1024),
        })
    }

    /// `frame` sealed with this sender's audio or video key (into the reused
    /// buffer); None if it cannot be (too short for its clear prefix).
    fn seal(&mut self, video: bool, frame: &[u8]) -> Option<&[u8]> {
        let (enc, codec) = if video {
            (&mut self.video, E2eeCodec::Vp8)
        } else {
            (&mut self.audio, E2eeCodec::Opus)
        };
        protect_into(enc, codec, frame, &mut self.sealed).ok()?;
        Some(&self.sealed)
    }
}

impl Shared {
    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn note_sent(&self, key: TrackKey, at_us: u64) {
        if let Some(a) = self.activity.get(key.sender as usize) {
            let (first, last) = &a[usize::from(key.video)];
            let _ = first.compare_exchange(0, at_us, Ordering::Relaxed, Ordering::Relaxed);
            last.store(at_us, Ordering::Relaxed);
        }
    }

    /// (first, last) send of a track, µs since `epoch`.
    pub fn sent_span(&self, key: TrackKey) -> Option<(u64, u64)> {
        let (first, last) = &self.activity.get(key.sender as usize)?[usize::from(key.video)];
        let f = first.load(Ordering::Relaxed);
        (f != 0).then(|| (f, last.load(Ordering::Relaxed)))
    }
}

/// An SDP offer and the (mid, kind) of each track it publishes.
pub type Offer = (String, Vec<(Mid, MediaKind)>);

pub enum PeerCmd {
    /// Offer what this peer publishes.
    Offer(oneshot::Sender<Result<Offer, String>>),
    Answer(String, oneshot::Sender<Result<(), String>>),
    /// The remote side's offer, with the tracks it brings: our answer.
    AcceptOffer(
        String,
        Vec<TrackKey>,
        oneshot::Sender<Result<String, String>>,
    ),
    /// The videos watched now (`None`: all of them).
    Watch(Option<Vec<u32>>),
    /// The speaker shown large now.
    Stage(Option<u32>),
    /// The server stopped (`true`, `track_paused`) or restarted (`false`,
    /// `track_resumed`) delivering a track to us.
    ServerPause(TrackKey, bool),
    /// The server's `publish_layers` for our camera: (rid, active) per layer.
    PublishLayers(Vec<(Option<String>, bool)>),
    /// Measure the end state, reply and stop.
    Finish(oneshot::Sender<PeerSummary>),
}

#[derive(Debug, Default)]
pub struct PeerSummary {
    pub connected_at: Option<Instant>,
    pub first_media_at: Option<Instant>,
    /// Per video track: from being offered it to its first frame, ms.
    pub first_frame_ms: Vec<f64>,
    pub tracks_expected: usize,
    pub tracks_received: usize,
    pub missing: Vec<TrackKey>,
    /// Tracks that would be expected but the server reports paused (or
    /// resumed too recently to have reached a keyframe).
    pub tracks_paused: usize,
}

pub struct PeerHandle {
    pub cmds: mpsc::Sender<PeerCmd>,
}

impl PeerHandle {
    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> PeerCmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(f(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn offer(&self) -> Result<Offer, String> {
        self.ask(PeerCmd::Offer)
            .await
            .unwrap_or_else(|| Err("peer stopped".into()))
    }

    pub async fn answer(&self, sdp: String) -> Result<(), String> {
        self.ask(|r| PeerCmd::Answer(sdp, r))
            .await
            .unwrap_or_else(|| Err("peer stopped".into()))
    }

    pub async fn accept_offer(&self, sdp: String, tracks: Vec<TrackKey>) -> Result<String, String> {
        self.ask(|r| PeerCmd::AcceptOffer(sdp, tracks, r))
            .await
            .unwrap_or_else(|| Err("peer stopped".into()))
    }

    pub async fn watch(&self, videos: Option<Vec<u32>>) {
        let _ = self.cmds.send(PeerCmd::Watch(videos)).await;
    }

    pub async fn stage(&self, speaker: Option<u32>) {
        let _ = self.cmds.send(PeerCmd::Stage(speaker)).await;
    }

    pub async fn server_pause(&self, key: TrackKey, paused: bool) {
        let _ = self.cmds.send(PeerCmd::ServerPause(key, paused)).await;
    }

    pub async fn publish_layers(&self, layers: Vec<(Option<String>, bool)>) {
        let _ = self.cmds.send(PeerCmd::PublishLayers(layers)).await;
    }

    pub async fn finish(&self) -> PeerSummary {
        self.ask(PeerCmd::Finish).await.unwrap_or_default()
    }
}

/// How often a peer hands its measurements to the collector.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A track counts as flowing if a frame came within this long.
const FLOWING_WINDOW: Duration = Duration::from_secs(2);
/// RFC 6464 level (dBov) at and below which the server counts a packet as
/// silence (its `SILENCE_DB`).
const SILENT_DBOV: i8 = -70;
/// A track must have been watched this long before it is expected (a
/// resumed video waits for a keyframe)...
const SETTLE: Duration = Duration::from_secs(3);
/// ...and sent for this long (a speaker who just took the floor).
const SENDER_SETTLE: Duration = Duration::from_secs(1);
/// A track the server resumed is expected once this long has passed: it
/// restarts on a keyframe, which the server asks a watched layer for at
/// most once a second (`KEYFRAME_REQUEST_INTERVAL`), and which then crosses
/// a thin link at the video budget (10 KB at 300 kbit/s: 270 ms). At 1 s,
/// one subscriber had one video "not flowing" at the end in 7 of 132 runs;
/// in 5 it was the last turn's first speaker, shown large 1-2 s before the
/// end.
const RESUME_SETTLE: Duration = Duration::from_secs(2);
const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// Video ticks at the highest frame rate; slower layers skip ticks.
const VIDEO_FPS: u32 = 30;
/// A late task sends at most this many overdue frames at once; an encoder
/// that fell further behind would have dropped them.
const MAX_CATCH_UP: u32 = 5;

struct VideoSource {
    mid: Mid,
    layers: Vec<SendLayer>,
    tick: u64,
    next: Instant,
}

/// One encoder of the camera.
struct SendLayer {
    /// The layer's rid when simulcasting.
    rid: Option<Rid>,
    enc: SyntheticVp8,
    /// Sent on every `step`-th tick.
    step: u32,
    /// False while the server's `publish_layers` says nobody receives it
    /// (dynacast): then it is not encoded or sent at all.
    active: bool,
}

struct AudioSource {
    mid: Mid,
    frame: u64,
    sent: u32,
    next: Instant,
}

/// What a peer knows about one track it receives.
#[derive(Default)]
struct RxTrack {
    offered_at: Option<Instant>,
    last_at: Option<Instant>,
    seq_first: Option<u64>,
    seq_max: u64,
    packets: u64,
    /// (layer, frame) of the last frame.
    last_frame: Option<(u8, u32)>,
    jitter: Jitter,
    /// For deltas: packets and expected at the last report.
    reported: (u64, u64),
    /// Delivery stopped or restarted on purpose since the last frame (a
    /// grid tile paused or shown again, the server paused or resumed it):
    /// the gap before the next frame is neither loss nor a freeze.
    gap_excused: bool,
    /// While the server reports the track paused: the instant up to which
    /// its paused time has been accounted.
    server_paused: Option<Instant>,
    /// Paused time that ended since the last report.
    paused_unreported: Duration,
    /// When the server last resumed it.
    resumed_at: Option<Instant>,
    /// RTP sequence numbers skipped across pauses: never sent, so not lost.
    seq_excused: u64,
}

impl RxTrack {
    /// Account one received frame (its stamp, length and RTP sequence
    /// range) into `delta`; true if it is the track's first.
    fn frame(
        &mut self,
        now: Instant,
        stamp: &FrameStamp,
        len: usize,
        (first_seq, last_seq): (u64, u64),
        video: bool,
        delta: &mut Delta,
    ) -> bool {
        let is_first = self.last_at.is_none();
        // A frame while the server still says paused means it resumed
        // before its signal arrived: the gap is as excused as after it.
        let excused = std::mem::take(&mut self.gap_excused) || self.server_paused.is_some();
        let first = *self.seq_first.get_or_insert(first_seq);
        // The server numbers a switched or resumed stream on from the last
        // packet, so a gap right before this frame is loss, and may have
        // held the keyframe it started on (dropped at an emulated
        // bottleneck): that is not a switch or resume without one.
        let follows_on = first_seq == self.seq_max + 1;
        if excused && !is_first && first_seq > self.seq_max + 1 {
            self.seq_excused += first_seq - self.seq_max - 1;
        }
        if last_seq >= first {
            self.seq_max = self.seq_max.max(last_seq);
            self.packets += last_seq - first_seq + 1;
        }
        delta.frames += 1;
        if video {
            delta.video_frames += 1;
            delta.keyframes += u64::from(stamp.keyframe);
        }
        if len != stamp.len as usize {
            delta.corrupt_frames += 1;
        }
        if let Some((layer, last)) = self.last_frame {
            if video && layer != stamp.layer {
                delta.layer_switches += 1;
                if !stamp.keyframe && follows_on {
                    delta.bad_switches += 1;
                }
            }
            if layer == stamp.layer && stamp.frame > last {
                let step = u32::from(stamp.step.max(1));
                let skipped = u64::from((stamp.frame - last) / step).saturating_sub(1);
                if !excused {
                    delta.frames_lost += skipped;
                } else if video && skipped > 0 && !stamp.keyframe && follows_on {
                    // Picked up mid-stream after a pause: undecodable.
                    delta.resumes_without_keyframe += 1;
                }
            }
        }
        let interval = frame_interval(stamp, video);
        if video {
            let layer = usize::from(stamp.layer).min(delta.layer_us.len() - 1);
            delta.layer_us[layer] += interval.as_micros() as u64;
        }
        if let Some(prev) = self.last_at
            && video
            && !excused
            && is_freeze(now.saturating_duration_since(prev), interval)
        {
            delta.freezes += 1;
        }
        self.last_frame = Some((stamp.layer, stamp.frame));
        self.jitter.update(now, stamp.sent_us);
        self.last_at = Some(now);
        is_first
    }

    /// The server paused (`true`) or resumed (`false`) the track at `now`.
    /// A repeated signal changes nothing.
    fn server_pause(&mut self, now: Instant, paused: bool, delta: &mut Delta) {
        match (paused, self.server_paused) {
            (true, None) => {
                self.server_paused = Some(now);
                self.gap_excused = true;
                delta.pause_events += 1;
            }
            (false, Some(from)) => {
                self.paused_unreported += now.saturating_duration_since(from);
                self.server_paused = None;
                self.resumed_at = Some(now);
                self.gap_excused = true;
                delta.resume_events += 1;
            }
            _ => {}
        }
    }

    /// Paused time since the last call, up to `now`.
    fn take_paused(&mut self, now: Instant) -> Duration {
        let mut d = std::mem::take(&mut self.paused_unreported);
        if let Some(from) = &mut self.server_paused {
            d += now.saturating_duration_since(*from);
            *from = now;
        }
        d
    }

    /// Whether it is expected to deliver now, as far as the server says:
    /// not paused, and resumed long enough ago to have reached a keyframe.
    fn delivering(&self, now: Instant) -> bool {
        self.server_paused.is_none()
            && self
                .resumed_at
                .is_none_or(|r| now.saturating_duration_since(r) >= RESUME_SETTLE)
    }

    /// RTP packets sent to us so far, by the sequence numbers.
    fn expected_packets(&self) -> u64 {
        self.seq_first.map_or(0, |f| {
            (self.seq_max + 1).saturating_sub(f + self.seq_excused)
        })
    }
}

/// How long a received frame is on screen (video) or plays (audio).
fn frame_interval(stamp: &FrameStamp, video: bool) -> Duration {
    if video {
        Duration::from_millis(1000 * u64::from(stamp.step) / u64::from(VIDEO_FPS))
    } else {
        AUDIO_FRAME
    }
}

/// Whether a watch list (`None`: everything) includes `sender`'s video.
fn watches(watch: &Option<Vec<u32>>, sender: u32) -> bool {
    watch.as_ref().is_none_or(|w| w.contains(&sender))
}

/// RTP, not RTCP, STUN or DTLS (RFC 7983 and RFC 5761 demultiplexing).
fn is_rtp(data: &[u8]) -> bool {
    matches!(data, [b0, b1, ..] if (128..192).contains(b0) && !(192..224).contains(b1))
}

struct Peer {
    shared: Arc<Shared>,
    plan: ParticipantPlan,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    cmds: mpsc::Receiver<PeerCmd>,
    pending: Option<SdpPendingOffer>,
    audio: Option<AudioSource>,
    video: Option<VideoSource>,
    pts: HashMap<Mid, Pt>,
    connected_at: Option<Instant>,
    first_media_at: Option<Instant>,
    rx: HashMap<TrackKey, RxTrack>,
    mid_video: HashMap<Mid, bool>,
    watch: Option<Vec<u32>>,
    watch_since: HashMap<u32, Instant>,
    /// The speaker shown large.
    stage: Option<u32>,
    started: Instant,
    first_frame_ms: Vec<f64>,
    delta: Delta,
    next_report: Instant,
    last_report: Instant,
    /// RTP bytes since the last report: arrived at the socket (what the
    /// server sent), and handed to str0m after the bottleneck.
    rtp_arrived: u64,
    rtp_delivered: u64,
    downlink: Option<Downlink>,
    frame_buf: Vec<u8>,
    e2ee: Option<PeerE2ee>,
    counts_join: bool,
    /// When str0m wants its next timeout.
    wake: Instant,
    wrote_media: bool,
}

/// Start a peer bound to a fresh UDP port.
/// `counts_join`: whether this connection coming up counts as its
/// participant having joined (a Janus publisher connection beside a
/// subscriber connection does not).
pub async fn spawn(
    shared: Arc<Shared>,
    plan: ParticipantPlan,
    counts_join: bool,
) -> std::io::Result<PeerHandle> {
    let socket = UdpSocket::bind(SocketAddr::new(shared.bind_ip, 0)).await?;
    let local = socket.local_addr()?;
    let now = Instant::now();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .set_dtls_cert(shared.cert.clone())
        .set_stats_interval(None)
        .build(now);
    let candidate = Candidate::host(local, "udp")
        .map_err(|e| std::io::Error::other(format!("candidate: {e}")))?;
    rtc.add_local_candidate(candidate);
    let (tx, cmds) = mpsc::channel(64);
    let downlink = shared
        .scenario
        .downlink_kbps
        .map(|k| Downlink::new(k, shared.scenario.downlink_queue));
    let e2ee = shared
        .e2ee_secret
        .as_ref()
        .and_then(|s| PeerE2ee::new(s, plan.index, shared.scenario.total_participants() as u32));
    let peer = Peer {
        shared,
        plan,
        rtc,
        socket,
        local,
        cmds,
        pending: None,
        audio: None,
        video: None,
        pts: HashMap::new(),
        connected_at: None,
        first_media_at: None,
        rx: HashMap::new(),
        mid_video: HashMap::new(),
        watch: None,
        watch_since: HashMap::new(),
        stage: None,
        started: now,
        first_frame_ms: Vec::new(),
        delta: Delta::default(),
        next_report: now + REPORT_EVERY,
        last_report: now,
        rtp_arrived: 0,
        rtp_delivered: 0,
        downlink,
        frame_buf: Vec::with_capacity(64 * 1024),
        e2ee,
        counts_join,
        wake: now,
        wrote_media: false,
    };
    tokio::spawn(peer.run());
    Ok(PeerHandle { cmds: tx })
}

impl Peer {
    async fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            // str0m's timeout handling walks every stream, so it runs when
            // str0m asked for it or media was written, not per datagram.
            let wrote = self.send_media(now);
            self.drain_downlink(now);
            if now >= self.next_report {
                self.report(now);
            }
            if (wrote || now >= self.wake) && !self.advance(now) {
                debug!(peer = self.plan.index, "media connection failed");
                return self.wait_for_finish().await;
            }
            let mut next = self.wake.min(self.next_report);
            for t in [
                self.audio.as_ref().map(|a| a.next),
                self.video.as_ref().map(|v| v.next),
                self.downlink.as_ref().and_then(|d| d.next_due()),
            ]
            .into_iter()
            .flatten()
            {
                next = next.min(t);
            }
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    self.datagram(from, &buf[..n]);
                    // Take what else is waiting before the next round.
                    for _ in 0..32 {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.datagram(from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    if self.command(cmd) {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }

    /// After a failure, still answer the final measurement.
    async fn wait_for_finish(mut self) {
        while let Some(cmd) = self.cmds.recv().await {
            match cmd {
                PeerCmd::Finish(reply) => {
                    let _ = reply.send(self.summary(Instant::now()));
                    return;
                }
                PeerCmd::Offer(r) => drop(r.send(Err("media connection failed".into()))),
                PeerCmd::Answer(_, r) => drop(r.send(Err("media connection failed".into()))),
                PeerCmd::AcceptOffer(_, _, r) => {
                    drop(r.send(Err("media connection failed".into())))
                }
                PeerCmd::Watch(_)
                | PeerCmd::Stage(_)
                | PeerCmd::ServerPause(..)
                | PeerCmd::PublishLayers(_) => {}
            }
        }
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        self.delta.bytes += data.len() as u64;
        if is_rtp(data) {
            self.rtp_arrived += data.len() as u64;
        }
        let now = Instant::now();
        if let Some(d) = &mut self.downlink {
            d.push(now, from, data);
            return;
        }
        self.input(now, from, data);
    }

    fn input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if is_rtp(data) {
            self.rtp_delivered += data.len() as u64;
        }
        let Ok(r) = Receive::new(Protocol::Udp, from, self.local, data) else {
            return;
        };
        if self.rtc.handle_input(Input::Receive(now, r)).is_ok() {
            self.drain(now);
        }
    }

    fn drain_downlink(&mut self, now: Instant) {
        let Some(d) = &mut self.downlink else { return };
        let mut ready = Vec::new();
        while let Some((left_at, from, data)) = d.pop(now) {
            ready.push((left_at, from, data));
        }
        self.delta.shaper_drops += std::mem::take(&mut d.dropped);
        // Each datagram arrives when it left the bottleneck, not when this
        // task woke up: the server's estimator reads the spacing the
        // bottleneck gave the packets (TWCC arrival times), and stamping a
        // whole batch with one wake-up time would erase it. Everything popped
        // here left after the previous wake-up, so str0m's clock never runs
        // backwards.
        for (left_at, from, data) in ready {
            self.input(left_at.min(now), from, &data);
        }
    }

    /// Let str0m's clock reach `now` (it sends queued media then), and
    /// drain. False once the connection is dead.
    fn advance(&mut self, now: Instant) -> bool {
        self.rtc.is_alive() && self.rtc.handle_input(Input::Timeout(now)).is_ok() && self.drain(now)
    }

    /// Take str0m's output until it wants time to pass: send what it
    /// transmits, handle what it reports, remember when to wake it.
    fn drain(&mut self, now: Instant) -> bool {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.wake = t;
                    return true;
                }
                Ok(Output::Transmit(t)) => {
                    // UDP: a full socket buffer drops, as the network would.
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => self.event(now, e),
                Err(e) => {
                    debug!(peer = self.plan.index, error = %e, "str0m failed");
                    return false;
                }
            }
        }
    }

    fn event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected if self.connected_at.is_none() => {
                self.connected_at = Some(now);
                if self.counts_join {
                    self.shared.joined.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::MediaData(d) => self.media(now, d),
            Event::KeyframeRequest(req) => {
                if let Some(v) = &mut self.video {
                    for l in &mut v.layers {
                        if req.rid.is_none() || l.rid == req.rid {
                            l.enc.request_keyframe();
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn media(&mut self, now: Instant, d: MediaData) {
        let video = *self.mid_video.entry(d.mid).or_insert_with(|| {
            self.rtc
                .media(d.mid)
                .is_some_and(|m| m.kind() == MediaKind::Video)
        });
        // With E2EE the stamp is inside the ciphertext: decrypt first.
        let frame: &[u8] = match &mut self.e2ee {
            None => &d.data,
            Some(e) => {
                let codec = if video {
                    E2eeCodec::Vp8
                } else {
                    E2eeCodec::Opus
                };
                if unprotect_into(&mut e.decryptor, codec, &d.data, &mut e.plain).is_err() {
                    self.delta.decrypt_failures += 1;
                    return;
                }
                &e.plain
            }
        };
        let Some(stamp) = FrameStamp::read(frame) else {
            return;
        };
        let len = frame.len();
        self.first_media_at.get_or_insert(now);
        let key = TrackKey {
            sender: stamp.sender,
            video,
        };
        let sent_us = stamp.sent_us;
        let latency = self.shared.micros(now).saturating_sub(sent_us);
        // Payload only: the headers' few percent count as delay, not as
        // the frame's own transmission, so this errs against the server.
        let own = self
            .downlink
            .as_ref()
            .map_or(0, |l| l.transmission(len).as_micros() as u64);
        self.delta.record_latency(latency, own, video);
        let t = self.rx.entry(key).or_default();
        let seqs = (**d.seq_range.start(), **d.seq_range.end());
        let first = t.frame(now, &stamp, len, seqs, video, &mut self.delta);
        if video && self.stage == Some(key.sender) {
            let layer = usize::from(stamp.layer).min(self.delta.stage_layer_us.len() - 1);
            self.delta.stage_layer_us[layer] += frame_interval(&stamp, video).as_micros() as u64;
        }
        // After a silent packet the server's silence gate may hold the next
        // ones back: the frames it skips are not lost.
        if !video && d.ext_vals.audio_level.is_some_and(|l| l <= SILENT_DBOV) {
            t.gap_excused = true;
        }
        if first && video {
            let since = t.offered_at.unwrap_or(self.started);
            self.first_frame_ms
                .push(now.saturating_duration_since(since).as_secs_f64() * 1000.0);
        }
    }

    fn report(&mut self, now: Instant) {
        self.next_report = now + REPORT_EVERY;
        let interval = now.saturating_duration_since(self.last_report);
        self.last_report = now;
        for (key, t) in &mut self.rx {
            // Paused time counts only while we want the video: a grid tile
            // we paused ourselves is not the server's doing.
            let paused = t.take_paused(now);
            if key.video
                && t.offered_at.is_some()
                && watches(&self.watch, key.sender)
                && self.shared.sent_span(*key).is_some()
            {
                self.delta.video_track_us += interval.as_micros() as u64;
                self.delta.paused_us += paused.min(interval).as_micros() as u64;
                if self.stage == Some(key.sender) {
                    self.delta.stage_us += interval.as_micros() as u64;
                    self.delta.stage_paused_us += paused.min(interval).as_micros() as u64;
                }
            }
            if t.seq_first.is_none() {
                continue;
            }
            let expected = t.expected_packets();
            self.delta.packets += t.packets - t.reported.0;
            self.delta.packets_expected += expected.saturating_sub(t.reported.1);
            t.reported = (t.packets, expected);
            if t.last_at.is_some_and(|l| now - l < FLOWING_WINDOW) {
                self.delta.jitter_us.push(t.jitter.get_us());
            }
        }
        let (arrived, delivered) = (
            std::mem::take(&mut self.rtp_arrived),
            std::mem::take(&mut self.rtp_delivered),
        );
        // A subscriber's rate: peers that watch nothing are left out, so
        // they do not pull the spread down.
        let watches_any = self.watch.as_ref().is_none_or(|w| !w.is_empty());
        if !self.rx.is_empty() && watches_any {
            self.delta.rates.push(RateSample {
                subscriber: self.plan.index,
                server_sent: arrived,
                received: delivered,
                interval_us: interval.as_micros() as u64,
            });
        }
        self.shared
            .collector
            .record(now, std::mem::take(&mut self.delta));
    }

    /// Returns true when the peer is done.
    fn command(&mut self, cmd: PeerCmd) -> bool {
        let now = Instant::now();
        match cmd {
            PeerCmd::Offer(reply) => {
                let r = self.make_offer(now);
                let _ = reply.send(r);
            }
            PeerCmd::Answer(sdp, reply) => {
                let r = match (self.pending.take(), SdpAnswer::from_sdp_string(&sdp)) {
                    (Some(p), Ok(a)) => self
                        .rtc
                        .sdp_api()
                        .accept_answer(p, a)
                        .map_err(|e| format!("answer: {e}")),
                    (None, _) => Err("no offer pending".into()),
                    (_, Err(e)) => Err(format!("answer SDP: {e}")),
                };
                let _ = reply.send(r);
            }
            PeerCmd::AcceptOffer(sdp, tracks, reply) => {
                for key in tracks {
                    self.rx
                        .entry(key)
                        .or_default()
                        .offered_at
                        .get_or_insert(now);
                }
                let r = match SdpOffer::from_sdp_string(&sdp) {
                    Ok(o) => self
                        .rtc
                        .sdp_api()
                        .accept_offer(o)
                        .map(|a| a.to_sdp_string())
                        .map_err(|e| format!("offer: {e}")),
                    Err(e) => Err(format!("offer SDP: {e}")),
                };
                if r.is_ok() {
                    self.mid_video.clear();
                }
                let _ = reply.send(r);
            }
            PeerCmd::Watch(videos) => {
                for (key, t) in &mut self.rx {
                    if key.video && watches(&self.watch, key.sender) != watches(&videos, key.sender)
                    {
                        t.gap_excused = true;
                    }
                }
                if let Some(v) = &videos {
                    for s in v {
                        self.watch_since.entry(*s).or_insert(now);
                    }
                    self.watch_since.retain(|s, _| v.contains(s));
                }
                self.watch = videos;
            }
            PeerCmd::Stage(speaker) => self.stage = speaker,
            PeerCmd::ServerPause(key, paused) => {
                self.rx
                    .entry(key)
                    .or_default()
                    .server_pause(now, paused, &mut self.delta);
            }
            PeerCmd::PublishLayers(layers) => self.publish_layers(&layers),
            PeerCmd::Finish(reply) => {
                self.report(now);
                let _ = reply.send(self.summary(now));
                return true;
            }
        }
        self.drain(now);
        false
    }

    fn make_offer(&mut self, now: Instant) -> Result<Offer, String> {
        let mut api = self.rtc.sdp_api();
        let mut tracks = Vec::new();
        let sc = &self.shared.scenario;
        if self.plan.audio && self.audio.is_none() {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            tracks.push((mid, MediaKind::Audio));
            self.audio = Some(AudioSource {
                mid,
                frame: 0,
                sent: 0,
                next: now,
            });
        }
        if self.plan.video && self.video.is_none() {
            let layers = sc.layers();
            let simulcast = (layers.len() > 1).then(|| Simulcast {
                send: (0..layers.len())
                    .map(|i| SimulcastLayer::new(RIDS[i]))
                    .collect(),
                recv: Vec::new(),
            });
            let rids = simulcast.is_some();
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast);
            tracks.push((mid, MediaKind::Video));
            let seed = u64::from(self.plan.index) * 7919 + 1;
            self.video = Some(VideoSource {
                mid,
                layers: layers
                    .iter()
                    .enumerate()
                    .map(|(i, l): (usize, &VideoLayer)| SendLayer {
                        rid: rids.then(|| Rid::from(RIDS[i])),
                        enc: SyntheticVp8::new(*l, seed + i as u64),
                        step: (VIDEO_FPS / l.fps.max(1)).max(1),
                        active: true,
                    })
                    .collect(),
                tick: 0,
                next: now,
            });
        }
        match api.apply() {
            Some((offer, pending)) => {
                self.pending = Some(pending);
                Ok((offer.to_sdp_string(), tracks))
            }
            None => Err("nothing to offer".into()),
        }
    }

    fn pt_for(&mut self, mid: Mid, codec: Codec) -> Option<Pt> {
        if let Some(pt) = self.pts.get(&mid) {
            return Some(*pt);
        }
        let w = self.rtc.writer(mid)?;
        let pt = w
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())?;
        self.pts.insert(mid, pt);
        Some(pt)
    }

    /// Write what is due; true if anything was written.
    fn send_media(&mut self, now: Instant) -> bool {
        if self.connected_at.is_none() {
            return false;
        }
        self.send_audio(now);
        self.send_video(now);
        std::mem::take(&mut self.wrote_media)
    }

    fn send_audio(&mut self, now: Instant) {
        let Some(a) = &self.audio else { return };
        if a.next > now {
            return;
        }
        let mid = a.mid;
        let Some(pt) = self.pt_for(mid, Codec::Opus) else {
            return;
        };
        let shared = self.shared.clone();
        let sc = &shared.scenario;
        let speaking = sc.speaking(self.plan.local, now.saturating_duration_since(shared.epoch));
        let source = match (speaking, sc.silence) {
            (true, _) => Some(&shared.speech),
            (false, Silence::Dtx) => Some(&shared.silence),
            (false, Silence::Muted) => None,
        };
        let key = TrackKey {
            sender: self.plan.index,
            video: false,
        };
        let mut due = 0;
        loop {
            let Some(a) = &mut self.audio else { return };
            if a.next > now {
                return;
            }
            a.next += AUDIO_FRAME;
            let frame = a.frame;
            a.frame += 1;
            due += 1;
            if due > MAX_CATCH_UP {
                continue;
            }
            let Some(packet) = source
                .filter(|s| !s.is_empty())
                .and_then(|s| s[frame as usize % s.len()].as_ref())
            else {
                continue;
            };
            let sent_us = shared.micros(now);
            self.frame_buf.clear();
            self.frame_buf.extend_from_slice(packet);
            FrameStamp {
                sender: self.plan.index,
                frame: a.sent,
                sent_us,
                layer: 0,
                step: 1,
                keyframe: false,
                len: 0,
            }
            .append(&mut self.frame_buf);
            a.sent += 1;
            let Some(w) = self.rtc.writer(mid) else {
                return;
            };
            let level = if speaking { -30 } else { -127 };
            let rtp = MediaTime::new(frame * 960, Frequency::FORTY_EIGHT_KHZ);
            let data = match &mut self.e2ee {
                None => self.frame_buf.as_slice(),
                Some(e) => match e.seal(false, &self.frame_buf) {
                    Some(sealed) => sealed,
                    None => continue,
                },
            };
            // Silence is not expected through: the server's silence gate
            // keeps an idle microphone's packets back.
            if w.audio_level(level, speaking)
                .write(pt, now, rtp, data)
                .is_ok()
                && speaking
            {
                shared.note_sent(key, sent_us);
            }
            self.wrote_media = true;
        }
    }

    fn send_video(&mut self, now: Instant) {
        let Some(v) = &self.video else { return };
        if v.next > now {
            return;
        }
        let mid = v.mid;
        let Some(pt) = self.pt_for(mid, Codec::Vp8) else {
            return;
        };
        let shared = self.shared.clone();
        let period = Duration::from_micros(1_000_000 / u64::from(VIDEO_FPS));
        let mut due = 0;
        loop {
            let Some(v) = &mut self.video else { return };
            if v.next > now {
                return;
            }
            v.next += period;
            let tick = v.tick;
            v.tick += 1;
            due += 1;
            if due > MAX_CATCH_UP {
                continue;
            }
            for i in 0..v.layers.len() {
                let Some(v) = &mut self.video else { return };
                let l = &mut v.layers[i];
                if !l.active || tick % u64::from(l.step) != 0 {
                    continue;
                }
                let rid = l.rid;
                let step = l.step as u8;
                let keyframe = l.enc.next_frame(&mut self.frame_buf);
                let sent_us = shared.micros(now);
                FrameStamp {
                    sender: self.plan.index,
                    frame: tick as u32,
                    sent_us,
                    layer: i as u8,
                    step,
                    keyframe,
                    len: 0,
                }
                .append(&mut self.frame_buf);
                let Some(mut w) = self.rtc.writer(mid) else {
                    return;
                };
                if let Some(rid) = rid {
                    w = w.rid(rid);
                }
                let rtp = MediaTime::new(tick * 3000, Frequency::NINETY_KHZ);
                let data = match &mut self.e2ee {
                    None => self.frame_buf.as_slice(),
                    Some(e) => match e.seal(true, &self.frame_buf) {
                        Some(sealed) => sealed,
                        None => continue,
                    },
                };
                if w.write(pt, now, rtp, data).is_ok() {
                    shared.note_sent(
                        TrackKey {
                            sender: self.plan.index,
                            video: true,
                        },
                        sent_us,
                    );
                }
                self.wrote_media = true;
            }
        }
    }

    /// Dynacast: stop the layers nobody receives, restart the others on a
    /// keyframe (their receivers start there). Layers not named keep going.
    fn publish_layers(&mut self, layers: &[(Option<String>, bool)]) {
        let Some(v) = &mut self.video else { return };
        for l in &mut v.layers {
            let want = layers
                .iter()
                .find(|(rid, _)| rid.as_deref() == l.rid.as_deref())
                .map(|(_, active)| *active);
            let Some(active) = want else { continue };
            if active != l.active {
                l.active = active;
                if active {
                    l.enc.request_keyframe();
                }
                self.delta.publish_layer_changes += 1;
            }
        }
    }

    /// Which tracks this participant should be receiving now, and which it is.
    fn summary(&self, now: Instant) -> PeerSummary {
        let sc = &self.shared.scenario;
        let mut s = PeerSummary {
            connected_at: self.connected_at,
            first_media_at: self.first_media_at,
            first_frame_ms: self.first_frame_ms.clone(),
            ..PeerSummary::default()
        };
        if sc.subscribe == crate::scenario::Subscribe::None {
            return s;
        }
        let now_us = self.shared.micros(now);
        let window = FLOWING_WINDOW.as_micros() as u64;
        let settle = SETTLE.as_micros() as u64;
        let sender_settle = SENDER_SETTLE.as_micros() as u64;
        let room_start = (self.plan.room * sc.participants) as u32;
        for local in 0..sc.publishers_per_room() {
            let sender = room_start + local as u32;
            if sender == self.plan.index {
                continue;
            }
            for video in [false, true] {
                let key = TrackKey { sender, video };
                let watched_since = if !video || self.watch.is_none() {
                    Some(self.started)
                } else {
                    self.watch_since.get(&sender).copied()
                };
                let Some(watched_since) = watched_since else {
                    continue;
                };
                let Some((first, last)) = self.shared.sent_span(key) else {
                    continue;
                };
                let watched = now_us.saturating_sub(self.shared.micros(watched_since));
                if now_us.saturating_sub(last) > window
                    || watched < settle
                    || now_us.saturating_sub(first) < sender_settle
                {
                    continue;
                }
                let t = self.rx.get(&key);
                if t.is_some_and(|t| !t.delivering(now)) {
                    s.tracks_paused += 1;
                    continue;
                }
                s.tracks_expected += 1;
                let flowing = t
                    .and_then(|t| t.last_at)
                    .is_some_and(|l| now.saturating_duration_since(l) < FLOWING_WINDOW);
                if flowing {
                    s.tracks_received += 1;
                } else {
                    s.missing.push(key);
                }
            }
        }
        s
    }
}

/// Simulcast rids, lowest layer first.
const RIDS: [&str; 3] = ["q", "h", "f"];

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(frame: u32, layer: u8, keyframe: bool, len: u32) -> FrameStamp {
        FrameStamp {
            sender: 1,
            frame,
            sent_us: u64::from(frame) * 33_333,
            layer,
            step: 1,
            keyframe,
            len,
        }
    }

    #[test]
    fn receive_accounting_counts_loss_switches_corruption_and_freezes() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = RxTrack::default();
        let mut d = Delta::default();
        assert!(t.frame(ms(0), &stamp(0, 1, true, 100), 100, (1, 2), true, &mut d));
        assert!(!t.frame(ms(33), &stamp(1, 1, false, 100), 100, (3, 3), true, &mut d));
        // Frames 2 and 3 never arrive; packets 4..=5 neither.
        t.frame(ms(133), &stamp(4, 1, false, 100), 100, (6, 6), true, &mut d);
        assert_eq!(d.frames_lost, 2);
        assert_eq!(d.freezes, 0, "100 ms is no freeze at 30 fps");
        // A layer switch on a delta frame, then one on a keyframe.
        t.frame(ms(166), &stamp(5, 2, false, 100), 100, (7, 7), true, &mut d);
        t.frame(ms(200), &stamp(6, 0, true, 100), 100, (8, 8), true, &mut d);
        assert_eq!(d.bad_switches, 1);
        // A frame that is not as long as it was sent; then a 400 ms gap.
        t.frame(ms(233), &stamp(7, 0, false, 100), 90, (9, 9), true, &mut d);
        t.frame(
            ms(633),
            &stamp(8, 0, false, 100),
            100,
            (10, 10),
            true,
            &mut d,
        );
        assert_eq!(d.corrupt_frames, 1);
        assert_eq!(d.freezes, 1);
        assert_eq!(d.frames, 7);
        // Packets: 8 of 10 sequence numbers arrived in delivered frames.
        assert_eq!((t.packets, t.expected_packets()), (8, 10));
        assert_eq!(d.layer_switches, 2);
    }

    #[test]
    fn a_switch_whose_keyframe_was_lost_is_loss_not_a_switch_without_one() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = RxTrack::default();
        let mut d = Delta::default();
        t.frame(ms(0), &stamp(0, 0, true, 100), 100, (1, 1), true, &mut d);
        t.frame(ms(33), &stamp(1, 0, false, 100), 100, (2, 2), true, &mut d);
        // The switch's keyframe (packets 3..=5) was dropped on the way.
        t.frame(ms(100), &stamp(3, 1, false, 100), 100, (6, 6), true, &mut d);
        assert_eq!((d.layer_switches, d.bad_switches), (1, 0));
        // Straight on from the last packet, a delta frame of another layer
        // is a switch without a keyframe.
        t.frame(ms(133), &stamp(4, 2, false, 100), 100, (7, 7), true, &mut d);
        assert_eq!((d.layer_switches, d.bad_switches), (2, 1));
    }

    #[test]
    fn a_paused_tracks_missing_frames_are_not_loss_but_frames_after_resume_are() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = RxTrack::default();
        let mut d = Delta::default();
        t.frame(ms(0), &stamp(0, 1, true, 100), 100, (1, 2), true, &mut d);
        t.frame(ms(33), &stamp(1, 1, false, 100), 100, (3, 3), true, &mut d);
        assert!(t.delivering(ms(40)));
        // The server pauses it for bandwidth at 50 ms; nothing comes for
        // 3 s; it resumes at 3050 ms and the first frame is a keyframe, on
        // another sequence number than the one after the last (a server
        // that does not close the gap).
        t.server_pause(ms(50), true, &mut d);
        t.server_pause(ms(60), true, &mut d);
        assert!(!t.delivering(ms(1000)), "paused: not expected to flow");
        assert_eq!(t.take_paused(ms(1050)), Duration::from_millis(1000));
        t.server_pause(ms(3050), false, &mut d);
        assert!(
            !t.delivering(ms(3500)),
            "just resumed: waiting for a keyframe"
        );
        t.frame(
            ms(3100),
            &stamp(92, 1, true, 100),
            100,
            (50, 53),
            true,
            &mut d,
        );
        assert_eq!(
            (d.frames_lost, d.freezes, d.resumes_without_keyframe),
            (0, 0, 0),
            "the paused interval is neither loss nor a freeze"
        );
        assert_eq!(t.take_paused(ms(3100)), Duration::from_millis(2000));
        assert_eq!(t.take_paused(ms(4000)), Duration::ZERO);
        assert_eq!((d.pause_events, d.resume_events), (1, 1));
        // Expected once the server's keyframe interval and the link allow:
        // a keyframe asked for a second after the resume and 270 ms on the
        // link is still awaited.
        assert!(!t.delivering(ms(3050 + 1_300)));
        assert!(!t.delivering(ms(3049) + RESUME_SETTLE));
        assert!(t.delivering(ms(3050) + RESUME_SETTLE));
        // After the resume, missing frames and packets are loss again.
        t.frame(
            ms(3133),
            &stamp(93, 1, false, 100),
            100,
            (54, 54),
            true,
            &mut d,
        );
        t.frame(
            ms(3233),
            &stamp(96, 1, false, 100),
            100,
            (57, 57),
            true,
            &mut d,
        );
        assert_eq!(d.frames_lost, 2);
        assert_eq!((t.packets, t.expected_packets()), (9, 11));
        // Resumed on a delta frame after skipping: counted as undecodable.
        t.server_pause(ms(3300), true, &mut d);
        t.server_pause(ms(3400), false, &mut d);
        t.frame(
            ms(3500),
            &stamp(105, 1, false, 100),
            100,
            (58, 58),
            true,
            &mut d,
        );
        assert_eq!((d.frames_lost, d.resumes_without_keyframe), (2, 1));
        // A frame while still paused (media outran the resume signal) is
        // excused the same way.
        t.server_pause(ms(3600), true, &mut d);
        t.frame(
            ms(6000),
            &stamp(170, 1, true, 100),
            100,
            (59, 59),
            true,
            &mut d,
        );
        assert_eq!((d.frames_lost, d.freezes), (2, 0));
    }

    #[test]
    fn a_grid_pause_of_our_own_is_not_loss_either() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = RxTrack::default();
        let mut d = Delta::default();
        t.frame(ms(0), &stamp(0, 1, true, 100), 100, (1, 1), true, &mut d);
        // What `PeerCmd::Watch` does when the tile leaves the page.
        t.gap_excused = true;
        t.frame(
            ms(10_000),
            &stamp(300, 1, true, 100),
            100,
            (2, 2),
            true,
            &mut d,
        );
        assert_eq!((d.frames_lost, d.freezes), (0, 0));
    }

    #[test]
    fn video_time_is_shared_out_by_layer() {
        let t0 = Instant::now();
        let mut t = RxTrack::default();
        let mut d = Delta::default();
        // Two frames of the 15 fps layer (step 2) weigh as four at 30 fps.
        let mut q = stamp(0, 0, true, 100);
        q.step = 2;
        t.frame(t0, &q, 100, (1, 1), true, &mut d);
        q.frame = 2;
        q.keyframe = false;
        t.frame(t0, &q, 100, (2, 2), true, &mut d);
        for f in 3..7 {
            t.frame(
                t0,
                &stamp(f, 2, f == 3, 100),
                100,
                (f as u64, f as u64),
                true,
                &mut d,
            );
        }
        assert_eq!(d.layer_us[0], d.layer_us[2]);
        assert_eq!(d.layer_us[1], 0);
    }

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        assert!(is_rtp(&[0x80, 96, 0, 1]));
        assert!(is_rtp(&[0x90, 0x80 | 96]));
        assert!(!is_rtp(&[0x80, 200]), "RTCP sender report");
        assert!(!is_rtp(&[0x00, 0x01]), "STUN");
        assert!(!is_rtp(&[22, 254]), "DTLS");
        assert!(!is_rtp(&[0x80]));
    }
}
