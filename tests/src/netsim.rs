//! A simulated network on a virtual clock: one sans-IO [`Worker`] and str0m
//! client peers, each behind its own uplink and downlink (rate limit,
//! drop-tail queue, propagation delay, seeded random loss). Time only moves
//! when the event loop jumps to the next due event, so a 30 s call takes as
//! long as its packets take to process, and a run is repeatable.
//!
//! Nothing is sent on a network: addresses come from 198.18.0.0/15 (server
//! `198.18.0.1:7881`, peers `198.18.1.1`, `198.18.1.2`, …) and datagrams are
//! handed over in process.
//!
//! # API
//!
//! - [`NetSim::new`]`(SfuConfig)` (or [`NetSim::with_net`] for a seed and the
//!   bitrate bucket): the worker at virtual time zero. `t0 = Instant::now()`
//!   is read once; every `Instant` handed to str0m or the worker afterwards is
//!   `t0 + offset`. Nothing sleeps.
//! - Peers, numbered from 0 in the order they join ([`PeerId`]):
//!   - [`NetSim::add_publisher`]`(Publish, Links)`: a browser-like str0m peer
//!     in media mode publishing a VP8 camera ([`Video::Single`] or
//!     [`Video::Simulcast`]: rids q/h/f at 150/500/1500 kbit/s, 15/30/30 fps)
//!     and optionally an Opus-like audio track (20 ms packets carrying the
//!     RFC 6464 level set by [`NetSim::set_speaking`]). Every frame ends with
//!     a [`FrameStamp`] (sender = peer id, layer, keyframe, send time). It
//!     answers PLI/FIR per rid with a keyframe on that layer and obeys
//!     `publish_layers` ([`Publisher`] records both).
//!   - [`NetSim::add_subscriber`]`(Links)`: a str0m peer in RTP mode (default
//!     header extensions, so transport-cc feedback flows when the server
//!     negotiates it) that records every received packet and reassembles
//!     video frames ([`RxTrack`]).
//! - Running: [`NetSim::run_for`]`(Duration)`, [`NetSim::run_to`]`(time)`,
//!   [`NetSim::run_until`]`(|net| cond, limit)` (returns the virtual time the
//!   condition became true), [`NetSim::settle`] (everyone connected,
//!   negotiation done). Every loop is bounded by simulated time and by
//!   [`NetConfig::max_steps`].
//! - Acting: [`NetSim::set_downlink_kbps`] / [`NetSim::set_uplink_kbps`] /
//!   [`NetSim::set_downlink`] / [`NetSim::set_uplink`] (take effect at the
//!   current virtual time, queued datagrams are re-timed),
//!   [`NetSim::set_speaking`], [`NetSim::signal`] (any `ClientSignal`, e.g. a
//!   `subscription`), [`NetSim::request_keyframe`] (a PLI from a
//!   subscriber's `Rtc`), [`NetSim::leave`].
//! - Observing: [`NetSim::peer`] gives a [`Peer`]: `signals` (every
//!   `ServerSignal` with its virtual time), `uplink`/`downlink` ([`Link`]:
//!   delivered bytes, drops, losses, a received-bitrate series per bucket),
//!   `publisher` ([`Publisher`]: per layer frames sent, keyframe requests
//!   with times, active periods), `rx` ([`RxTrack`] per subscribed m-line:
//!   packets, frames, layer timeline and switches, sequence and timestamp
//!   continuity). [`NetSim::worker`] exposes the server itself.
//!
//! # Determinism
//!
//! Two runs of the same scenario produce the same packets at the same
//! virtual times, with two exceptions that come from str0m and are kept out
//! of the timing: its randomness (SSRCs, initial sequence numbers, ICE
//! credentials, certificates, ECDSA signatures) and its hash-map order among
//! streams with packets queued at the same time. So: DTLS records arrive on
//! a 1 ms grid (a handshake's size varies by a few bytes per run), media
//! clocks start on a 10 ms grid, and a publisher's frames are polled out one
//! at a time. Compare counts, layers and times between runs, not SSRCs or
//! link bytes (which include the handshake). Phases that end at fixed times
//! ([`NetSim::run_to`]) compare better than ones measured from `settle`,
//! which ends whenever the handshakes finish.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stamma_client::media::{SyntheticVp8, VideoLayer};
use stamma_client::signal::AnsweredOffers;
use stamma_client::stamp::FrameStamp;
use stamma_proto::{
    ClientSignal, ErrorCode, MediaKind as WireKind, PublishedTrack, Role, ServerSignal, TrackSource,
};
use stamma_sfu::demux::is_rtp;
use stamma_sfu::{Command, JoinRequest, SfuConfig, ToParticipant, Worker};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast,
    SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::sync::mpsc;

/// A peer's index: the order it joined in, from 0.
pub type PeerId = usize;

/// Simulcast rids, lowest layer first (the browser's usual names).
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Video frames are produced on a 30 fps clock; slower layers skip ticks.
const VIDEO_FPS: u64 = 30;
const AUDIO_PERIOD: Duration = Duration::from_millis(20);
/// Publishers' media clocks start on multiples of this.
const MEDIA_GRID: Duration = Duration::from_millis(10);
/// DTLS records arrive on multiples of this. A handshake differs by a few
/// bytes from run to run (fresh certificates, ECDSA signatures), which would
/// move the connection by nanoseconds, and with it every timer str0m anchors
/// there (RTCP reports, TWCC feedback): enough to merge or split an RTCP
/// packet now and then. On the grid, runs stay identical.
const HANDSHAKE_GRID: Duration = Duration::from_millis(1);
/// What a browser sends for 20 ms of Opus silence; the SFU reads at most the
/// TOC byte, so any real-looking packet will do.
const OPUS_PACKET: [u8; 3] = [0xfc, 0xff, 0xfe];
/// When str0m (or the worker) asks to be woken at a time it was already
/// woken at, the loop moves on by this much rather than spin.
const MIN_STEP: Duration = Duration::from_micros(1);
/// Rounds at one virtual instant before the loop forces time forward.
const MAX_SAME_INSTANT: u32 = 1_000;
/// Bound on polling one `Rtc` after one input.
const MAX_POLL: usize = 100_000;
/// Bound on signal ping-pong between peers and the worker at one instant.
const MAX_PUMP_ROUNDS: usize = 1_000;

// ---- configuration --------------------------------------------------------

/// The simulation as a whole.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Seeds every link's loss generator (and nothing else: str0m's own
    /// randomness, SSRCs and ICE credentials, is not ours to seed).
    pub seed: u64,
    /// Width of the buckets of each link's delivered-bitrate series.
    pub bucket: Duration,
    /// Most event-loop steps in one `run_*` call, so a bug cannot spin.
    pub max_steps: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            seed: 1,
            bucket: Duration::from_millis(500),
            max_steps: 20_000_000,
        }
    }
}

/// One direction of a peer's access link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Bottleneck rate.
    pub kbps: u32,
    /// Drop-tail bound, as queueing delay at the current rate: a datagram
    /// that would wait longer than this is dropped (a home router's buffer).
    pub queue: Duration,
    /// One-way propagation delay, added after the bottleneck.
    pub delay: Duration,
    /// Probability that a datagram is lost before the bottleneck.
    pub loss: f64,
    /// Header bytes per datagram counted against the rate (IPv4 + UDP), so
    /// that a 300 kbit/s link carries what a real one would.
    pub overhead: usize,
}

impl LinkConfig {
    pub fn kbps(kbps: u32) -> LinkConfig {
        LinkConfig {
            kbps,
            ..LinkConfig::default()
        }
    }

    pub fn with_loss(self, loss: f64) -> LinkConfig {
        LinkConfig { loss, ..self }
    }

    pub fn with_delay(self, delay: Duration) -> LinkConfig {
        LinkConfig { delay, ..self }
    }

    pub fn with_queue(self, queue: Duration) -> LinkConfig {
        LinkConfig { queue, ..self }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            kbps: 100_000,
            queue: Duration::from_millis(250),
            delay: Duration::from_millis(10),
            loss: 0.0,
            overhead: 28,
        }
    }
}

/// A peer's uplink (peer → server) and downlink (server → peer).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Links {
    pub up: LinkConfig,
    pub down: LinkConfig,
}

impl Links {
    pub fn symmetric(kbps: u32) -> Links {
        Links {
            up: LinkConfig::kbps(kbps),
            down: LinkConfig::kbps(kbps),
        }
    }

    pub fn new(up_kbps: u32, down_kbps: u32) -> Links {
        Links {
            up: LinkConfig::kbps(up_kbps),
            down: LinkConfig::kbps(down_kbps),
        }
    }
}

/// The camera a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    /// One 500 kbit/s 30 fps layer without rid.
    Single,
    /// Three layers, rids q/h/f ([`VideoLayer::SIMULCAST`]).
    Simulcast,
}

/// What a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Publish {
    pub video: Option<Video>,
    /// An audio track: 20 ms packets with the level of [`NetSim::set_speaking`].
    pub audio: bool,
}

impl Publish {
    pub fn video(video: Video) -> Publish {
        Publish {
            video: Some(video),
            audio: false,
        }
    }

    pub fn with_audio(self) -> Publish {
        Publish {
            audio: true,
            ..self
        }
    }
}

// ---- links ------------------------------------------------------------------

struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
    queued_at: Duration,
    /// A DTLS record: arrives on the handshake grid (see `HANDSHAKE_GRID`).
    dtls: bool,
    /// When the bottleneck starts and finishes sending it.
    start: Duration,
    leaves: Duration,
}

/// One direction of an access link, with its counters.
pub struct Link {
    config: LinkConfig,
    rng: u64,
    queue: VecDeque<Datagram>,
    busy_until: Duration,
    bucket: Duration,
    /// Bytes delivered per bucket of virtual time.
    series: Vec<u64>,
    /// Datagrams handed to the link.
    pub offered: u64,
    /// RTP bytes handed to the link, by payload type (the header is in the
    /// clear under SRTP): how much was retransmission (RTX).
    pub rtp_bytes_by_pt: [u64; 128],
    pub delivered: u64,
    /// Payload bytes delivered (headers counted by `overhead` excluded).
    pub bytes_delivered: u64,
    /// Dropped at the full queue.
    pub dropped: u64,
    /// Lost at random.
    pub lost: u64,
    /// Longest a delivered datagram waited in the queue.
    pub max_queueing: Duration,
}

impl Link {
    fn new(config: LinkConfig, seed: u64, bucket: Duration) -> Link {
        Link {
            config,
            rng: splitmix(seed) | 1,
            queue: VecDeque::new(),
            busy_until: Duration::ZERO,
            bucket,
            series: Vec::new(),
            offered: 0,
            rtp_bytes_by_pt: [0; 128],
            delivered: 0,
            bytes_delivered: 0,
            dropped: 0,
            lost: 0,
            max_queueing: Duration::ZERO,
        }
    }

    pub fn config(&self) -> LinkConfig {
        self.config
    }

    /// Datagrams lost on this link for any reason.
    pub fn losses(&self) -> u64 {
        self.dropped + self.lost
    }

    fn serialization(&self, bytes: usize) -> Duration {
        let bits = (bytes + self.config.overhead) as u64 * 8;
        Duration::from_nanos(bits * 1_000_000 / u64::from(self.config.kbps.max(1)))
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: cheap, and the same sequence for the same seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn send(&mut self, now: Duration, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.offered += 1;
        if is_rtp(&data) {
            self.rtp_bytes_by_pt[usize::from(data[1] & 0x7f)] += data.len() as u64;
        }
        if self.config.loss > 0.0 && self.random() < self.config.loss {
            self.lost += 1;
            return;
        }
        let start = self.busy_until.max(now);
        let leaves = start + self.serialization(data.len());
        if leaves - now > self.config.queue {
            self.dropped += 1;
            return;
        }
        self.busy_until = leaves;
        let dtls = matches!(data.first(), Some(20..=63));
        self.queue.push_back(Datagram {
            from,
            to,
            dtls,
            data,
            queued_at: now,
            start,
            leaves,
        });
    }

    fn next_arrival(&self) -> Option<Duration> {
        let d = self.queue.front()?;
        let at = d.leaves + self.config.delay;
        if !d.dtls {
            return Some(at);
        }
        let grid = HANDSHAKE_GRID.as_nanos() as u64;
        Some(Duration::from_nanos(
            (at.as_nanos() as u64).div_ceil(grid) * grid,
        ))
    }

    fn pop_due(&mut self, now: Duration) -> Option<Datagram> {
        if self.next_arrival()? > now {
            return None;
        }
        let d = self.queue.pop_front()?;
        self.delivered += 1;
        self.bytes_delivered += d.data.len() as u64;
        let bucket = (now.as_nanos() / self.bucket.as_nanos().max(1)) as usize;
        if self.series.len() <= bucket {
            self.series.resize(bucket + 1, 0);
        }
        self.series[bucket] += d.data.len() as u64;
        self.max_queueing = self.max_queueing.max(d.start - d.queued_at);
        Some(d)
    }

    /// Change the link at `now`. Datagrams already being sent keep their
    /// time; those still waiting drain at the new rate.
    fn reconfigure(&mut self, now: Duration, config: LinkConfig) {
        self.config = config;
        let mut t = now;
        for i in 0..self.queue.len() {
            let d = &self.queue[i];
            if d.start < now {
                t = t.max(d.leaves);
                continue;
            }
            let ser = self.serialization(d.data.len());
            let d = &mut self.queue[i];
            d.start = t;
            d.leaves = t + ser;
            t = d.leaves;
        }
        self.busy_until = t;
    }

    /// Delivered bitrate per bucket (kbit/s), from virtual time zero.
    pub fn kbps_series(&self) -> Vec<f64> {
        let ms = self.bucket.as_secs_f64() * 1000.0;
        self.series.iter().map(|b| *b as f64 * 8.0 / ms).collect()
    }

    /// The bucket width of [`Link::kbps_series`].
    pub fn bucket(&self) -> Duration {
        self.bucket
    }

    /// Mean delivered bitrate (kbit/s) over the whole buckets in `[from, to)`.
    pub fn kbps_between(&self, from: Duration, to: Duration) -> f64 {
        let b = self.bucket.as_nanos().max(1);
        let (first, last) = ((from.as_nanos() / b) as usize, (to.as_nanos() / b) as usize);
        if last <= first {
            return 0.0;
        }
        let bytes: u64 = (first..last)
            .map(|i| self.series.get(i).copied().unwrap_or(0))
            .sum();
        bytes as f64 * 8.0 / ((last - first) as f64 * self.bucket.as_secs_f64() * 1000.0)
    }
}

/// Peer `n`'s address; [`peer_of`] inverts it, so routing needs no table.
fn peer_addr(n: PeerId) -> SocketAddr {
    SocketAddr::from(([198, 18, 1 + (n / 250) as u8, 1 + (n % 250) as u8], 5000))
}

fn peer_of(addr: SocketAddr) -> Option<PeerId> {
    let SocketAddr::V4(a) = addr else { return None };
    let [198, 18, hi, lo] = a.ip().octets() else {
        return None;
    };
    (hi >= 1 && lo >= 1).then(|| usize::from(hi - 1) * 250 + usize::from(lo - 1))
}

/// A signal's type, for messages.
fn signal_name(s: &ServerSignal) -> String {
    let json = s.to_json();
    json.split('"').nth(3).unwrap_or("?").to_owned()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

// ---- publisher --------------------------------------------------------------

/// One layer a publisher encodes.
pub struct TxLayer {
    /// `None` for a track sent without simulcast.
    pub rid: Option<Rid>,
    pub encoder: SyntheticVp8,
    /// Ticks of the 30 fps clock per frame of this layer.
    pub step: u64,
    pub active: bool,
    /// Every change of `active` (and the start), with its virtual time.
    pub activity: Vec<(Duration, bool)>,
    pub frames_sent: u64,
    pub keyframes_sent: u64,
    /// Keyframe requests (PLI/FIR) that reached the publisher for this layer.
    pub keyframe_requests: Vec<(Duration, KeyframeRequestKind)>,
}

/// The browser-like sending side of a publisher.
pub struct Publisher {
    pub video_mid: Option<Mid>,
    pub audio_mid: Option<Mid>,
    /// Track ids the server assigned (from its answer, or from the
    /// `track_published` the others receive).
    pub video_track_id: Option<String>,
    pub audio_track_id: Option<String>,
    /// Lowest layer first.
    pub layers: Vec<TxLayer>,
    /// RFC 6464 level in dBov (-127 silence .. 0 loudest) while speaking.
    pub speaking: Option<i8>,
    pub audio_sent: u64,
    /// Media frames received from others (publishers subscribe too).
    pub media_received: u64,
    /// Time the media clocks started (the connection came up).
    started: Option<Duration>,
    tick: u64,
    /// The next layer to consider in the current tick.
    tick_layer: usize,
    audio_frame: u64,
    /// Payload types (video, audio), once negotiated.
    pts: Option<(Option<Pt>, Option<Pt>)>,
}

impl Publisher {
    /// The layer sent with `rid` (`None`: the single layer of a track
    /// without simulcast).
    pub fn layer(&self, rid: Option<&str>) -> Option<&TxLayer> {
        self.layers.iter().find(|l| l.rid.as_deref() == rid)
    }

    /// Times keyframe requests for the layer with `rid` arrived.
    pub fn keyframe_requests(&self, rid: Option<&str>) -> Vec<Duration> {
        self.layer(rid)
            .map(|l| l.keyframe_requests.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }

    fn next_video(&self) -> Option<Duration> {
        self.video_mid?;
        Some(self.started? + tick_time(self.tick))
    }

    fn next_audio(&self) -> Option<Duration> {
        self.audio_mid?;
        Some(self.started? + AUDIO_PERIOD * self.audio_frame as u32)
    }
}

fn tick_time(tick: u64) -> Duration {
    Duration::from_nanos(tick * 1_000_000_000 / VIDEO_FPS)
}

// ---- subscriber -------------------------------------------------------------

/// One RTP packet a subscriber received.
#[derive(Debug, Clone)]
pub struct RxPacket {
    pub at: Duration,
    pub ssrc: u32,
    /// Extended sequence number (str0m's).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub len: usize,
    pub audio_level: Option<i8>,
}

/// One video frame a subscriber reassembled (at its marker packet).
#[derive(Debug, Clone)]
pub struct RxFrame {
    /// Arrival of the marker packet.
    pub at: Duration,
    pub first_seq: u64,
    pub last_seq: u64,
    pub timestamp: u32,
    /// The VP8 frame tag of the first packet says keyframe.
    pub keyframe: bool,
    /// All packets arrived in order without gaps and the stamp's length matches.
    pub complete: bool,
    /// Reassembled bytes (VP8 payload descriptors removed).
    pub len: usize,
    pub stamp: Option<FrameStamp>,
}

impl RxFrame {
    /// The simulcast layer the frame was encoded for (from its stamp).
    pub fn layer(&self) -> Option<u8> {
        self.stamp.map(|s| s.layer)
    }
}

/// A change of layer in what a subscriber received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSwitch {
    pub at: Duration,
    pub from: u8,
    pub to: u8,
    /// The first frame of the new layer is a keyframe (by stamp and VP8 tag).
    pub on_keyframe: bool,
    /// Packets are missing between the last frame of the old layer and this
    /// one: the new layer's keyframe may have been lost on the link, so a
    /// switch that is not `on_keyframe` is not necessarily the server's fault.
    pub after_gap: bool,
}

/// Sequence numbers of one received stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqReport {
    pub packets: u64,
    pub first: u64,
    pub last: u64,
    /// Numbers in `first..=last` never received.
    pub missing: u64,
    pub duplicates: u64,
    /// Packets that arrived after a higher number.
    pub reordered: u64,
}

impl SeqReport {
    pub fn continuous(&self) -> bool {
        self.missing == 0 && self.duplicates == 0
    }
}

/// What a subscriber received on one m-line.
#[derive(Debug, Clone)]
pub struct RxTrack {
    pub mid: Mid,
    /// From the server's offer.
    pub track_id: Option<String>,
    pub publisher_id: Option<String>,
    pub kind: Option<WireKind>,
    pub packets: Vec<RxPacket>,
    pub frames: Vec<RxFrame>,
    /// Packets of a frame whose start was never seen.
    pub orphan_packets: u64,
    asm: Vec<u8>,
    asm_first: Option<u64>,
    asm_next: u64,
    asm_complete: bool,
    asm_keyframe: bool,
}

impl RxTrack {
    fn new(mid: Mid) -> RxTrack {
        RxTrack {
            mid,
            track_id: None,
            publisher_id: None,
            kind: None,
            packets: Vec::new(),
            frames: Vec::new(),
            orphan_packets: 0,
            asm: Vec::new(),
            asm_first: None,
            asm_next: 0,
            asm_complete: false,
            asm_keyframe: false,
        }
    }

    fn receive(&mut self, at: Duration, pkt: &RtpPacket, video: bool) {
        let seq = *pkt.seq_no;
        self.packets.push(RxPacket {
            at,
            ssrc: *pkt.header.ssrc,
            seq,
            timestamp: pkt.header.timestamp,
            marker: pkt.header.marker,
            len: pkt.payload.len(),
            audio_level: pkt.header.ext_vals.audio_level,
        });
        if !video {
            return;
        }
        let Some((skip, start)) = vp8_descriptor(&pkt.payload) else {
            return;
        };
        if start {
            // A frame that never saw its marker packet is simply dropped.
            self.asm.clear();
            self.asm_first = Some(seq);
            self.asm_complete = true;
            self.asm_keyframe = pkt.payload.get(skip).is_some_and(|b| b & 0x01 == 0);
        } else if self.asm_first.is_none() {
            self.orphan_packets += 1;
            return;
        } else if seq != self.asm_next {
            self.asm_complete = false;
        }
        self.asm_next = seq + 1;
        self.asm.extend_from_slice(&pkt.payload[skip..]);
        if pkt.header.marker {
            let Some(first_seq) = self.asm_first.take() else {
                return;
            };
            let stamp = FrameStamp::read(&self.asm);
            let complete =
                self.asm_complete && stamp.is_some_and(|s| s.len as usize == self.asm.len());
            self.frames.push(RxFrame {
                at,
                first_seq,
                last_seq: seq,
                timestamp: pkt.header.timestamp,
                keyframe: self.asm_keyframe,
                complete,
                len: self.asm.len(),
                stamp,
            });
        }
    }

    /// Frames whose marker arrived in `[from, to)`.
    pub fn frames_between(&self, from: Duration, to: Duration) -> usize {
        self.frames
            .iter()
            .filter(|f| f.at >= from && f.at < to)
            .count()
    }

    /// Frames reassembled with a gap or a length that does not match their stamp.
    pub fn incomplete_frames(&self) -> usize {
        self.frames.iter().filter(|f| !f.complete).count()
    }

    /// Longest time without a frame in `[from, to]` (edges count).
    pub fn max_frame_gap(&self, from: Duration, to: Duration) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for f in self.frames.iter().filter(|f| f.at >= from && f.at <= to) {
            gap = gap.max(f.at - last);
            last = f.at;
        }
        gap.max(to.saturating_sub(last))
    }

    /// The layer received over time: one entry per change, from the first frame.
    pub fn layer_timeline(&self) -> Vec<(Duration, u8)> {
        let mut out: Vec<(Duration, u8)> = Vec::new();
        for f in &self.frames {
            let Some(l) = f.layer() else { continue };
            if out.last().is_none_or(|(_, prev)| *prev != l) {
                out.push((f.at, l));
            }
        }
        out
    }

    /// The layer of the last frame received at or before `at`.
    pub fn layer_at(&self, at: Duration) -> Option<u8> {
        self.frames
            .iter()
            .take_while(|f| f.at <= at)
            .filter_map(|f| f.layer())
            .last()
    }

    /// Every change of layer, and whether it happened on a keyframe.
    pub fn layer_switches(&self) -> Vec<LayerSwitch> {
        let mut out = Vec::new();
        let mut prev: Option<(u8, u64)> = None;
        for f in &self.frames {
            let Some(s) = f.stamp else { continue };
            if let Some((layer, last_seq)) = prev
                && layer != s.layer
            {
                out.push(LayerSwitch {
                    at: f.at,
                    from: layer,
                    to: s.layer,
                    on_keyframe: s.keyframe && f.keyframe,
                    after_gap: f.first_seq != last_seq + 1 || !f.complete,
                });
            }
            prev = Some((s.layer, f.last_seq));
        }
        out
    }

    /// Sequence-number continuity over everything received.
    pub fn seq_report(&self) -> SeqReport {
        let mut r = SeqReport::default();
        if self.packets.is_empty() {
            return r;
        }
        let mut max = None;
        for p in &self.packets {
            if max.is_some_and(|m| p.seq < m) {
                r.reordered += 1;
            }
            max = max.max(Some(p.seq));
        }
        let mut seqs: Vec<u64> = self.packets.iter().map(|p| p.seq).collect();
        seqs.sort_unstable();
        r.packets = seqs.len() as u64;
        r.first = seqs[0];
        r.last = seqs[seqs.len() - 1];
        seqs.dedup();
        r.duplicates = r.packets - seqs.len() as u64;
        r.missing = (r.last - r.first + 1) - seqs.len() as u64;
        r
    }

    /// Packets whose RTP timestamp is earlier than that of the packet before
    /// it in sequence order (modulo 2^32): zero for a well-rewritten stream.
    pub fn timestamp_regressions(&self) -> usize {
        let mut by_seq: Vec<(u64, u32)> =
            self.packets.iter().map(|p| (p.seq, p.timestamp)).collect();
        by_seq.sort_unstable();
        by_seq.dedup_by_key(|p| p.0);
        by_seq
            .windows(2)
            .filter(|w| (w[1].1.wrapping_sub(w[0].1) as i32) < 0)
            .count()
    }

    /// Payload bitrate received (kbit/s) in `[from, to)`.
    pub fn kbps_between(&self, from: Duration, to: Duration) -> f64 {
        let secs = to.saturating_sub(from).as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        let bytes: usize = self
            .packets
            .iter()
            .filter(|p| p.at >= from && p.at < to)
            .map(|p| p.len)
            .sum();
        bytes as f64 * 8.0 / secs / 1000.0
    }
}

/// (descriptor length, start of frame) of a VP8 RTP payload (RFC 7741 §4.2).
fn vp8_descriptor(p: &[u8]) -> Option<(usize, bool)> {
    let b0 = *p.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            at += if *p.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    (at <= p.len()).then_some((at, start))
}

// ---- peers ------------------------------------------------------------------

/// One simulated participant.
pub struct Peer {
    pub index: PeerId,
    /// The participant id the worker knows it by.
    pub id: String,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    signal_rx: mpsc::Receiver<ToParticipant>,
    pending: Option<SdpPendingOffer>,
    /// Server offers still to ignore, as a client that lost them would.
    pub drop_offers: u32,
    /// The last server offer answered: a copy of it (see the server's
    /// `OFFER_RESEND`) is ignored, as the web client does.
    answered_offers: AnsweredOffers,
    pub connected_at: Option<Duration>,
    /// Every signal the server sent, with its virtual time.
    pub signals: Vec<(Duration, ServerSignal)>,
    /// Set when the server closed the session, with its error.
    pub closed: Option<(ErrorCode, String)>,
    /// When the peer left ([`NetSim::leave`]).
    pub left: Option<Duration>,
    pub uplink: Link,
    pub downlink: Link,
    pub publisher: Option<Publisher>,
    /// What a subscriber received, per m-line (empty for publishers).
    pub rx: Vec<RxTrack>,
    /// When str0m wants its next timeout.
    wake: Duration,
    /// When it was last given one.
    fed: Option<Duration>,
    /// It changed (a signal applied, a keyframe requested) and needs polling.
    dirty: bool,
    /// The last (ssrc, index into `rx`) looked up.
    ssrc_cache: Vec<(u32, usize)>,
}

impl Peer {
    /// Signals matching `f`, with their times.
    pub fn signals_where<'a>(
        &'a self,
        f: impl Fn(&ServerSignal) -> bool + 'a,
    ) -> impl Iterator<Item = &'a (Duration, ServerSignal)> + 'a {
        self.signals.iter().filter(move |(_, s)| f(s))
    }

    /// The received track with this id.
    pub fn rx_track(&self, track_id: &str) -> Option<&RxTrack> {
        self.rx
            .iter()
            .find(|t| t.track_id.as_deref() == Some(track_id))
    }

    /// Received video tracks.
    pub fn rx_video(&self) -> impl Iterator<Item = &RxTrack> {
        self.rx.iter().filter(|t| t.kind == Some(WireKind::Video))
    }

    /// Closed by the server or left: it no longer takes part.
    pub fn gone(&self) -> bool {
        self.closed.is_some() || self.left.is_some()
    }

    /// Whether this peer has an offer of its own awaiting the server's answer.
    pub fn negotiating(&self) -> bool {
        self.pending.is_some()
    }

    fn due(&self) -> Duration {
        match self.fed {
            Some(f) => self.wake.max(f + MIN_STEP),
            None => self.wake,
        }
    }

    fn rx_index(&mut self, ssrc: u32) -> Option<usize> {
        if let Some((_, i)) = self.ssrc_cache.iter().find(|(s, _)| *s == ssrc) {
            return Some(*i);
        }
        let mid = self.rtc.direct_api().stream_rx(&ssrc.into())?.mid();
        let i = match self.rx.iter().position(|t| t.mid == mid) {
            Some(i) => i,
            None => {
                self.rx.push(RxTrack::new(mid));
                self.rx.len() - 1
            }
        };
        let t = &mut self.rx[i];
        if t.kind.is_none() {
            t.kind = self.rtc.media(mid).map(|m| match m.kind() {
                MediaKind::Audio => WireKind::Audio,
                MediaKind::Video => WireKind::Video,
            });
        }
        self.ssrc_cache.push((ssrc, i));
        Some(i)
    }
}

// ---- the simulation ---------------------------------------------------------

/// Counters of the event loop itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimStats {
    pub steps: u64,
    /// Times the loop forced time forward because something kept asking
    /// for the same instant.
    pub forced_steps: u64,
}

/// The worker and its peers on one virtual clock.
pub struct NetSim {
    t0: Instant,
    now: Duration,
    worker: Worker,
    pub server: SocketAddr,
    peers: Vec<Peer>,
    peer_cert: DtlsCert,
    net: NetConfig,
    worker_fed: Option<Duration>,
    same_instant: u32,
    pub stats: SimStats,
    frame_buf: Vec<u8>,
}

impl NetSim {
    /// The config most simulations start from: the defaults, with room for
    /// large rooms.
    pub fn config() -> SfuConfig {
        SfuConfig {
            max_participants_per_room: 1000,
            ..SfuConfig::default()
        }
    }

    pub fn new(config: SfuConfig) -> anyhow::Result<NetSim> {
        NetSim::with_net(config, NetConfig::default())
    }

    pub fn with_net(config: SfuConfig, net: NetConfig) -> anyhow::Result<NetSim> {
        let dtls = str0m::crypto::from_feature_flags().dtls_provider;
        let cert = dtls.generate_certificate().context("certificate")?;
        let peer_cert = dtls.generate_certificate().context("certificate")?;
        let server: SocketAddr = "198.18.0.1:7881".parse()?;
        let t0 = Instant::now();
        Ok(NetSim {
            t0,
            now: Duration::ZERO,
            worker: Worker::new(config, server, server, cert, t0),
            server,
            peers: Vec::new(),
            peer_cert,
            net,
            worker_fed: None,
            same_instant: 0,
            stats: SimStats::default(),
            frame_buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The virtual time as an `Instant` (what str0m and the worker see).
    pub fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    pub fn worker(&mut self) -> &mut Worker {
        &mut self.worker
    }

    pub fn peer(&self, id: PeerId) -> &Peer {
        &self.peers[id]
    }

    /// The track id of a publisher's video, once the server has named it.
    pub fn video_track_id(&self, publisher: PeerId) -> Option<String> {
        self.peers[publisher]
            .publisher
            .as_ref()
            .and_then(|p| p.video_track_id.clone())
    }

    pub fn peer_mut(&mut self, id: PeerId) -> &mut Peer {
        &mut self.peers[id]
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// A participant that publishes; it offers its tracks right away.
    pub fn add_publisher(&mut self, publish: Publish, links: Links) -> anyhow::Result<PeerId> {
        let i = self.join(links, false, Role::Speaker)?;
        let now = self.now;
        let p = &mut self.peers[i];
        let mut api = p.rtc.sdp_api();
        let mut tracks = Vec::new();
        let mut publisher = Publisher {
            video_mid: None,
            audio_mid: None,
            video_track_id: None,
            audio_track_id: None,
            layers: Vec::new(),
            speaking: None,
            audio_sent: 0,
            media_received: 0,
            started: None,
            tick: 0,
            tick_layer: 0,
            audio_frame: 0,
            pts: None,
        };
        if publish.audio {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            publisher.audio_mid = Some(mid);
            tracks.push(PublishedTrack {
                mid: mid.to_string(),
                kind: WireKind::Audio,
                source: TrackSource::Microphone,
                width: None,
                height: None,
            });
        }
        if let Some(video) = publish.video {
            let layers: &[VideoLayer] = match video {
                Video::Single => &[VideoLayer::SINGLE],
                Video::Simulcast => &VideoLayer::SIMULCAST,
            };
            let simulcast = (video == Video::Simulcast).then(|| Simulcast {
                send: RIDS.iter().map(|r| SimulcastLayer::new(r)).collect(),
                recv: Vec::new(),
            });
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast);
            publisher.video_mid = Some(mid);
            let seed = i as u64 * 7919 + 1;
            publisher.layers = layers
                .iter()
                .enumerate()
                .map(|(n, l)| TxLayer {
                    rid: (video == Video::Simulcast).then(|| Rid::from(RIDS[n])),
                    encoder: SyntheticVp8::new(*l, seed + n as u64),
                    step: (VIDEO_FPS / u64::from(l.fps.max(1))).max(1),
                    active: true,
                    activity: vec![(now, true)],
                    frames_sent: 0,
                    keyframes_sent: 0,
                    keyframe_requests: Vec::new(),
                })
                .collect();
            tracks.push(PublishedTrack {
                mid: mid.to_string(),
                kind: WireKind::Video,
                source: TrackSource::Camera,
                width: Some(1280),
                height: Some(720),
            });
        }
        let (offer, pending) = api.apply().context("nothing to offer")?;
        p.pending = Some(pending);
        p.publisher = Some(publisher);
        p.dirty = true;
        let cmd = Command::Signal {
            participant_id: p.id.clone(),
            signal: ClientSignal::Offer {
                sdp: offer.to_sdp_string(),
                tracks,
            },
        };
        self.worker.handle_command(self.instant(), cmd);
        self.pump()?;
        Ok(i)
    }

    /// A participant that only receives, in RTP mode so every packet is seen.
    pub fn add_subscriber(&mut self, links: Links) -> anyhow::Result<PeerId> {
        let i = self.join(links, true, Role::Attendee)?;
        self.pump()?;
        Ok(i)
    }

    fn join(&mut self, links: Links, rtp_mode: bool, role: Role) -> anyhow::Result<PeerId> {
        let n = self.peers.len();
        let addr = peer_addr(n);
        let now = self.instant();
        // Default header extensions stay: transport-cc among them, so the
        // server's bandwidth estimate gets feedback.
        let mut rtc = Rtc::builder()
            .set_rtp_mode(rtp_mode)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_dtls_cert(self.peer_cert.clone())
            .set_stats_interval(None)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp")?);
        let (tx, rx) = mpsc::channel(stamma_sfu::command::SIGNAL_QUEUE);
        let id = format!("PA_net{n}");
        let seed = self.net.seed ^ (n as u64) << 8;
        self.peers.push(Peer {
            index: n,
            id: id.clone(),
            addr,
            rtc,
            signal_rx: rx,
            pending: None,
            drop_offers: 0,
            answered_offers: AnsweredOffers::default(),
            connected_at: None,
            signals: Vec::new(),
            closed: None,
            left: None,
            uplink: Link::new(links.up, seed, self.net.bucket),
            downlink: Link::new(links.down, seed ^ 1, self.net.bucket),
            publisher: None,
            rx: Vec::new(),
            wake: self.now,
            fed: None,
            dirty: true,
            ssrc_cache: Vec::new(),
        });
        self.worker.handle_command(
            now,
            Command::Join(Box::new(JoinRequest {
                participant_id: id,
                room: "netsim".into(),
                identity: format!("net{n}"),
                name: None,
                role,
                can_publish: role != Role::Attendee,
                can_subscribe: true,
                can_admin: role == Role::Host,
                signals: tx,
                room_options: Default::default(),
            })),
        );
        Ok(n)
    }

    /// The participant leaves (its session ends); its peer goes quiet.
    pub fn leave(&mut self, id: PeerId) -> anyhow::Result<()> {
        let p = &mut self.peers[id];
        p.left.get_or_insert(self.now);
        let cmd = Command::Leave {
            participant_id: p.id.clone(),
            reason: "left".into(),
        };
        self.worker.handle_command(self.instant(), cmd);
        self.pump()
    }

    /// Participant `id` sends a signal to the server now.
    pub fn signal(&mut self, id: PeerId, signal: ClientSignal) -> anyhow::Result<()> {
        let cmd = Command::Signal {
            participant_id: self.peers[id].id.clone(),
            signal,
        };
        self.worker.handle_command(self.instant(), cmd);
        self.pump()
    }

    /// Subscriber `id` asks for a keyframe of `track_id` with a PLI from its
    /// `Rtc`. False if it has no such stream.
    pub fn request_keyframe(&mut self, id: PeerId, track_id: &str) -> anyhow::Result<bool> {
        let p = &mut self.peers[id];
        let Some(mid) = p.rx_track(track_id).map(|t| t.mid) else {
            return Ok(false);
        };
        if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        } else {
            return Ok(false);
        }
        p.dirty = true;
        self.poll_peer(id)?;
        self.pump()?;
        Ok(true)
    }

    /// Publisher `id` speaks at `level` dBov (-127..=0) from now, or is silent.
    pub fn set_speaking(&mut self, id: PeerId, level: Option<i8>) {
        if let Some(p) = &mut self.peers[id].publisher {
            p.speaking = level;
        }
    }

    pub fn set_downlink_kbps(&mut self, id: PeerId, kbps: u32) {
        let c = LinkConfig {
            kbps,
            ..self.peers[id].downlink.config
        };
        self.set_downlink(id, c);
    }

    pub fn set_uplink_kbps(&mut self, id: PeerId, kbps: u32) {
        let c = LinkConfig {
            kbps,
            ..self.peers[id].uplink.config
        };
        self.set_uplink(id, c);
    }

    pub fn set_downlink(&mut self, id: PeerId, config: LinkConfig) {
        let now = self.now;
        self.peers[id].downlink.reconfigure(now, config);
    }

    pub fn set_uplink(&mut self, id: PeerId, config: LinkConfig) {
        let now = self.now;
        self.peers[id].uplink.reconfigure(now, config);
    }

    // ---- running ----

    /// Advance virtual time by `d`, handling every event due until then.
    pub fn run_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let end = self.now + d;
        let mut steps = 0;
        while self.now < end {
            self.step(end)?;
            steps += 1;
            if steps > self.net.max_steps {
                bail!("step limit reached at {:?}", self.now);
            }
        }
        Ok(())
    }

    /// Run until virtual time `at` (nothing happens if it has passed).
    /// Phases that end at fixed times keep runs comparable: `settle` ends
    /// whenever the handshakes happen to finish.
    pub fn run_to(&mut self, at: Duration) -> anyhow::Result<()> {
        self.run_for(at.saturating_sub(self.now))
    }

    /// Run until `cond` holds (checked after every step); returns the virtual
    /// time it first held. An error if it does not within `limit`.
    pub fn run_until(
        &mut self,
        mut cond: impl FnMut(&NetSim) -> bool,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let end = self.now + limit;
        let mut steps = 0;
        loop {
            if cond(self) {
                return Ok(self.now);
            }
            if self.now >= end {
                bail!("condition not met within {limit:?} (now {:?})", self.now);
            }
            self.step(end)?;
            steps += 1;
            if steps > self.net.max_steps {
                bail!("step limit reached at {:?}", self.now);
            }
        }
    }

    /// Run until every peer is connected, no negotiation is pending and
    /// every publisher knows its track ids (unless it is alone: then nobody
    /// tells it, see `learn_track_id`).
    pub fn settle(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let alone = self.peers.iter().filter(|p| !p.gone()).count() < 2;
        let settled = move |p: &Peer| {
            p.gone()
                || (p.connected_at.is_some()
                    && p.pending.is_none()
                    && (alone
                        || p.publisher.as_ref().is_none_or(|pb| {
                            pb.video_mid.is_none() == pb.video_track_id.is_none()
                                && pb.audio_mid.is_none() == pb.audio_track_id.is_none()
                        })))
        };
        self.run_until(|net| net.peers.iter().all(settled), limit)
            .with_context(|| {
                let waiting: Vec<String> = self
                    .peers
                    .iter()
                    .filter(|p| !settled(p))
                    .map(|p| {
                        format!(
                            "peer {}: connected {:?}, own offer pending {}, {} signals, last {:?}",
                            p.index,
                            p.connected_at,
                            p.pending.is_some(),
                            p.signals.len(),
                            p.signals.last().map(|(t, s)| (t, signal_name(s))),
                        )
                    })
                    .collect();
                format!("not settled: {}", waiting.join("; "))
            })
    }

    /// The earliest time anything is due.
    fn next_event(&self) -> Duration {
        let mut next = self.worker_due();
        for p in self.peers.iter().filter(|p| !p.gone()) {
            next = next.min(p.due());
            if let Some(t) = p.uplink.next_arrival() {
                next = next.min(t);
            }
            if let Some(t) = p.downlink.next_arrival() {
                next = next.min(t);
            }
            if let Some(pb) = &p.publisher {
                for t in [pb.next_video(), pb.next_audio()].into_iter().flatten() {
                    next = next.min(t);
                }
            }
        }
        next
    }

    fn worker_due(&self) -> Duration {
        let t = self
            .worker
            .next_timeout(self.instant())
            .saturating_duration_since(self.t0);
        match self.worker_fed {
            Some(f) => t.max(f + MIN_STEP),
            None => t,
        }
    }

    /// Jump to the next event (at most `end`) and handle everything due then.
    fn step(&mut self, end: Duration) -> anyhow::Result<()> {
        self.stats.steps += 1;
        let mut next = self.next_event().min(end);
        if next <= self.now {
            self.same_instant += 1;
            if self.same_instant > MAX_SAME_INSTANT {
                self.stats.forced_steps += 1;
                next = (self.now + MIN_STEP).min(end);
                self.same_instant = 0;
            } else {
                next = self.now;
            }
        } else {
            self.same_instant = 0;
        }
        self.now = next;
        let now = self.now;
        let at = self.instant();

        let mut datagrams = false;
        for i in 0..self.peers.len() {
            while let Some(d) = self.peers[i].uplink.pop_due(now) {
                self.worker.handle_datagram(at, d.from, &d.data);
                datagrams = true;
            }
        }
        if datagrams {
            self.worker.flush(at);
        }
        if self.worker_due() <= now {
            self.worker.handle_timeout(at);
            self.worker_fed = Some(now);
        }
        self.route_outbox();

        for i in 0..self.peers.len() {
            if self.peers[i].gone() {
                // Whatever is still on its way is lost with the peer.
                while self.peers[i].downlink.pop_due(now).is_some() {}
                continue;
            }
            while let Some(d) = self.peers[i].downlink.pop_due(now) {
                let p = &mut self.peers[i];
                let Ok(r) = Receive::new(Protocol::Udp, d.from, d.to, &d.data) else {
                    continue;
                };
                p.rtc
                    .handle_input(Input::Receive(at, r))
                    .with_context(|| format!("peer {i} rejected a datagram"))?;
                self.drain_peer(i)?;
            }
        }

        for i in 0..self.peers.len() {
            if !self.peers[i].gone() {
                self.send_media(i)?;
            }
        }
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if !p.gone() && (p.dirty || p.due() <= now) {
                self.poll_peer(i)?;
            }
        }
        self.pump()
    }

    /// Give peer `i` the time and take its output.
    fn poll_peer(&mut self, i: usize) -> anyhow::Result<()> {
        let at = self.instant();
        let p = &mut self.peers[i];
        p.dirty = false;
        p.fed = Some(self.now);
        p.rtc
            .handle_input(Input::Timeout(at))
            .with_context(|| format!("peer {i} timeout"))?;
        self.drain_peer(i)
    }

    fn drain_peer(&mut self, i: usize) -> anyhow::Result<()> {
        let now = self.now;
        for _ in 0..MAX_POLL {
            let p = &mut self.peers[i];
            match p.rtc.poll_output().with_context(|| format!("peer {i}"))? {
                Output::Timeout(t) => {
                    p.wake = t.saturating_duration_since(self.t0);
                    return Ok(());
                }
                Output::Transmit(t) => {
                    p.uplink
                        .send(now, t.source, t.destination, t.contents.into());
                }
                Output::Event(e) => self.peer_event(i, e),
            }
        }
        bail!("peer {i} kept producing output")
    }

    fn peer_event(&mut self, i: usize, e: Event) {
        let now = self.now;
        let p = &mut self.peers[i];
        match e {
            Event::Connected => {
                p.connected_at.get_or_insert(now);
                if let Some(pb) = &mut p.publisher {
                    // A camera's clock has nothing to do with the connection;
                    // a grid keeps the frames' times round numbers.
                    let grid = MEDIA_GRID.as_nanos() as u64;
                    let start = (now.as_nanos() as u64).div_ceil(grid) * grid;
                    pb.started.get_or_insert(Duration::from_nanos(start));
                }
            }
            Event::RtpPacket(pkt) => {
                let Some(t) = p.rx_index(*pkt.header.ssrc) else {
                    return;
                };
                let t = &mut p.rx[t];
                let video = t.kind == Some(WireKind::Video);
                t.receive(now, &pkt, video);
            }
            Event::MediaData(_) => {
                if let Some(pb) = &mut p.publisher {
                    pb.media_received += 1;
                }
            }
            Event::KeyframeRequest(req) => {
                let Some(pb) = &mut p.publisher else { return };
                if Some(req.mid) != pb.video_mid {
                    return;
                }
                for l in &mut pb.layers {
                    if req.rid.is_none() || l.rid == req.rid {
                        l.keyframe_requests.push((now, req.kind));
                        l.encoder.request_keyframe();
                    }
                }
            }
            _ => {}
        }
    }

    /// Write the media frames publisher `i` has due now. Each frame is
    /// polled out before the next is written: str0m picks among streams with
    /// queued packets in hash-map order, which differs from run to run.
    fn send_media(&mut self, i: usize) -> anyhow::Result<()> {
        while self.write_frame(i)? {
            self.poll_peer(i)?;
        }
        Ok(())
    }

    /// Write publisher `i`'s next due frame (one layer's, or audio); false
    /// when nothing is due.
    fn write_frame(&mut self, i: usize) -> anyhow::Result<bool> {
        let now = self.now;
        let t0 = self.t0;
        let p = &mut self.peers[i];
        let Some(pb) = &mut p.publisher else {
            return Ok(false);
        };
        if pb.started.is_none() {
            return Ok(false);
        }
        let pts = match pb.pts {
            Some(pts) => pts,
            None => {
                let rtc = &mut p.rtc;
                let mut pt = |mid: Option<Mid>, codec: Codec| {
                    let w = rtc.writer(mid?)?;
                    w.payload_params()
                        .find(|c| c.spec().codec == codec)
                        .map(|c| c.pt())
                };
                let pts = (pt(pb.video_mid, Codec::Vp8), pt(pb.audio_mid, Codec::Opus));
                if pts.0.is_some() != pb.video_mid.is_some()
                    || pts.1.is_some() != pb.audio_mid.is_some()
                {
                    // Not negotiated yet: nothing could be sent anyway.
                    return Ok(false);
                }
                pb.pts = Some(pts);
                pts
            }
        };
        let video = pb.next_video().filter(|t| *t <= now);
        let audio = pb.next_audio().filter(|t| *t <= now);
        if let Some(at) = video.filter(|v| audio.is_none_or(|a| *v <= a)) {
            let (Some(mid), Some(pt)) = (pb.video_mid, pts.0) else {
                return Ok(false);
            };
            let tick = pb.tick;
            while pb.tick_layer < pb.layers.len() {
                let n = pb.tick_layer;
                pb.tick_layer += 1;
                let l = &mut pb.layers[n];
                if !l.active || tick % l.step != 0 {
                    continue;
                }
                let keyframe = l.encoder.next_frame(&mut self.frame_buf);
                FrameStamp {
                    sender: i as u32,
                    frame: tick as u32,
                    sent_us: at.as_micros() as u64,
                    layer: n as u8,
                    step: l.step as u8,
                    keyframe,
                    len: 0,
                }
                .append(&mut self.frame_buf);
                let mut w = p.rtc.writer(mid).context("video writer")?;
                if let Some(rid) = l.rid {
                    w = w.rid(rid);
                }
                let rtp = MediaTime::new(tick * 3000, Frequency::NINETY_KHZ);
                w.write(pt, t0 + at, rtp, self.frame_buf.as_slice())
                    .with_context(|| format!("peer {i} writing video"))?;
                l.frames_sent += 1;
                l.keyframes_sent += u64::from(keyframe);
                return Ok(true);
            }
            pb.tick += 1;
            pb.tick_layer = 0;
            // The tick may have had no active layer; look again.
            return self.write_frame(i);
        }
        let Some(at) = audio else {
            return Ok(false);
        };
        let (Some(mid), Some(pt)) = (pb.audio_mid, pts.1) else {
            return Ok(false);
        };
        let frame = pb.audio_frame;
        pb.audio_frame += 1;
        self.frame_buf.clear();
        self.frame_buf.extend_from_slice(&OPUS_PACKET);
        FrameStamp {
            sender: i as u32,
            frame: frame as u32,
            sent_us: at.as_micros() as u64,
            layer: 0,
            step: 1,
            keyframe: false,
            len: 0,
        }
        .append(&mut self.frame_buf);
        let w = p.rtc.writer(mid).context("audio writer")?;
        let level = pb.speaking.unwrap_or(-127);
        let rtp = MediaTime::new(frame * 960, Frequency::FORTY_EIGHT_KHZ);
        w.audio_level(level, pb.speaking.is_some())
            .write(pt, t0 + at, rtp, self.frame_buf.as_slice())
            .with_context(|| format!("peer {i} writing audio"))?;
        pb.audio_sent += 1;
        Ok(true)
    }

    /// Move the worker's datagrams onto the downlinks.
    fn route_outbox(&mut self) -> bool {
        let now = self.now;
        let out = self.worker.outbox();
        if out.is_empty() {
            return false;
        }
        for t in out.drain(..) {
            let Some(p) = peer_of(t.destination).and_then(|i| self.peers.get_mut(i)) else {
                continue;
            };
            p.downlink
                .send(now, t.source, t.destination, t.contents.into());
        }
        true
    }

    /// Exchange signals between the worker and the peers until both are quiet.
    fn pump(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_PUMP_ROUNDS {
            let mut busy = self.route_outbox();
            for i in 0..self.peers.len() {
                while let Ok(m) = self.peers[i].signal_rx.try_recv() {
                    busy = true;
                    self.server_signal(i, m)?;
                }
                if self.peers[i].dirty && !self.peers[i].gone() {
                    busy = true;
                    self.poll_peer(i)?;
                }
            }
            if !busy {
                return Ok(());
            }
        }
        bail!("signals kept bouncing at {:?}", self.now)
    }

    /// Remember the id the server gave the track on `mid` of `participant`.
    /// The server's answer lists the published tracks, but str0m reports an
    /// offer's new m-lines only once the connection is up, so the answer to
    /// the first offer lists none: the ids are also taken from the
    /// `track_published` every other participant receives.
    fn learn_track_id(&mut self, participant: &str, mid: &str, track_id: &str) {
        let Some(pb) = self
            .peers
            .iter_mut()
            .find(|p| p.id == participant)
            .and_then(|p| p.publisher.as_mut())
        else {
            return;
        };
        let mid = Some(Mid::from(mid));
        if mid == pb.video_mid {
            pb.video_track_id = Some(track_id.to_owned());
        } else if mid == pb.audio_mid {
            pb.audio_track_id = Some(track_id.to_owned());
        }
    }

    fn server_signal(&mut self, i: usize, m: ToParticipant) -> anyhow::Result<()> {
        let now = self.now;
        let at = self.instant();
        let s = match m {
            ToParticipant::Signal(s) => s,
            ToParticipant::Close(code, why) => {
                self.peers[i].closed.get_or_insert((code, why));
                return Ok(());
            }
        };
        if let ServerSignal::TrackPublished { track } = &s {
            self.learn_track_id(&track.participant_id, &track.mid, &track.id);
        }
        let p = &mut self.peers[i];
        p.signals.push((now, s.clone()));
        match s {
            ServerSignal::Offer { id, sdp, tracks } => {
                for t in tracks {
                    let mid = Mid::from(t.mid.as_str());
                    let rx = match p.rx.iter().position(|r| r.mid == mid) {
                        Some(n) => &mut p.rx[n],
                        None => {
                            p.rx.push(RxTrack::new(mid));
                            p.rx.last_mut().expect("pushed")
                        }
                    };
                    rx.track_id = Some(t.track_id);
                    rx.publisher_id = Some(t.participant_id);
                    rx.kind = Some(t.kind);
                }
                if p.pending.is_some() {
                    // Our own offer wins; the server offers again after answering it.
                    return Ok(());
                }
                if p.drop_offers > 0 {
                    p.drop_offers -= 1;
                    return Ok(());
                }
                if !p.answered_offers.take_new(id) {
                    return Ok(());
                }
                let offer = SdpOffer::from_sdp_string(&sdp).context("server offer")?;
                let answer = p
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .with_context(|| format!("peer {i} accepting the server offer"))?;
                p.dirty = true;
                let cmd = Command::Signal {
                    participant_id: p.id.clone(),
                    signal: ClientSignal::Answer {
                        id,
                        sdp: answer.to_sdp_string(),
                    },
                };
                self.worker.handle_command(at, cmd);
            }
            ServerSignal::Answer { sdp, tracks } => {
                if let Some(pending) = p.pending.take() {
                    let answer = SdpAnswer::from_sdp_string(&sdp).context("server answer")?;
                    p.rtc
                        .sdp_api()
                        .accept_answer(pending, answer)
                        .with_context(|| format!("peer {i} accepting the server answer"))?;
                    p.dirty = true;
                }
                let id = p.id.clone();
                for t in tracks {
                    self.learn_track_id(&id, &t.mid, &t.id);
                }
            }
            ServerSignal::PublishLayers {
                track_id,
                mid,
                layers,
            } => {
                let Some(pb) = &mut p.publisher else {
                    return Ok(());
                };
                // A publisher alone in the room may not know its track id
                // yet (see `learn_track_id`): the m-line names it.
                if pb.video_track_id.is_none() && pb.video_mid.is_some_and(|m| m.to_string() == mid)
                {
                    pb.video_track_id = Some(track_id.clone());
                }
                if pb.video_track_id.as_deref() != Some(track_id.as_str()) {
                    return Ok(());
                }
                for want in layers {
                    let rid = want.rid.as_deref().map(Rid::from);
                    let Some(l) = pb.layers.iter_mut().find(|l| l.rid == rid) else {
                        continue;
                    };
                    if l.active != want.active {
                        l.active = want.active;
                        l.activity.push((now, want.active));
                        if want.active {
                            // A resumed layer cannot start on a delta frame.
                            l.encoder.request_keyframe();
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
