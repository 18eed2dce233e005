//! A published source (microphone, camera, screen) and its simulcast layers.

use std::time::{Duration, Instant};

use stamma_proto::{LayerState, MediaKind, TrackInfo, TrackSource};
use str0m::format::Codec;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::Ssrc;

use crate::send_backlog::LastKeyframe;
use crate::silence_gate::SilenceGate;

/// Keyframe requests to a publisher are sent at most this often per layer:
/// many subscribers asking at once must not flood the publisher, and every
/// keyframe reaches every subscriber of the layer, not only the one that
/// asked. In a meeting of 50 behind 1 Mbit/s, where tiles pause and resume
/// all the time, 300 ms made a low layer carry a keyframe (eight frames'
/// worth) every 300 ms; with 1 s the video latency p99 was 130-175 ms
/// instead of 245-274 ms, audio 16-19 ms instead of 26-29 ms (load tester,
/// with the release queue). A subscriber that resumes waits at most this
/// long for its keyframe.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(1000);

/// While nobody receives a layer, requests for it go out at most this often:
/// its keyframe reaches only the subscribers waiting for one. With the full
/// interval, a participant whose first request went out before its media
/// connection was up waited up to a second for any video (the ICE-TCP
/// end-to-end test then needed 8-21 s instead of 3.7 s in about one run of six,
/// and once ran into its 30-s limit).
pub const UNWATCHED_KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

/// Whom a requested keyframe reaches, which decides how often one may be
/// asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeFor {
    /// Subscribers that receive the layer now, or may: every one of them
    /// pays for it ([`KEYFRAME_REQUEST_INTERVAL`]).
    Receivers,
    /// Only subscribers waiting to start the layer: nobody receives it now
    /// ([`UNWATCHED_KEYFRAME_INTERVAL`]).
    Waiters,
}

/// A layer that sent nothing for this long is treated as stopped (the
/// publisher's own congestion control or dynacast turned it off).
pub const LAYER_LIVE_TIMEOUT: Duration = Duration::from_millis(600);

/// Bytes a forwarded packet costs on the wire beyond its payload: RTP header
/// and extensions, SRTP tag, UDP and IP. Counted so the Allocator budgets
/// what the subscriber's link carries, not just payload.
pub const PACKET_OVERHEAD_BYTES: u64 = 70;

/// Window over which a layer's incoming rate is measured.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// Incoming bitrate of one layer, measured over fixed windows and smoothed.
/// O(1) per packet, no allocation.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window_start: Option<Instant>,
    window_bytes: u64,
    /// Smoothed rate while the layer was last live; kept while it is stopped,
    /// so the Allocator can budget for turning it back on.
    bps: Option<u64>,
}

impl RateMeter {
    pub const fn new() -> RateMeter {
        RateMeter {
            window_start: None,
            window_bytes: 0,
            bps: None,
        }
    }

    pub fn add(&mut self, now: Instant, bytes: u64) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            // A window with a long gap (layer stopped and restarted) would
            // understate the rate: only count windows that ended on time.
            if elapsed < RATE_WINDOW * 3 {
                let measured =
                    self.window_bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
                // Smooth keyframe bursts: a quarter of each new window.
                self.bps = Some(match self.bps {
                    Some(old) => (old * 3 + measured) / 4,
                    None => measured,
                });
            }
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    pub fn bps(&self) -> Option<u64> {
        self.bps
    }
}

impl Default for RateMeter {
    fn default() -> Self {
        RateMeter::new()
    }
}

/// One encoding of a track. Without simulcast a track has one layer with no rid.
#[derive(Debug, Clone)]
pub struct Layer {
    pub rid: Option<Rid>,
    pub ssrc: Option<Ssrc>,
    pub rate: RateMeter,
    /// What the rate is assumed to be before it was ever measured.
    pub nominal_bps: u64,
    pub last_packet: Option<Instant>,
    /// Whether the publisher was last told to send it (dynacast).
    pub publishing: bool,
    /// Whether any subscriber takes it (set by the worker's dynacast pass).
    pub wanted: bool,
    /// Since when no subscriber has wanted it; None while someone does.
    pub unwanted_since: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    /// A keyframe request was refused by the throttle: send it when allowed.
    pub keyframe_pending: bool,
    /// A keyframe arrived since the last request: requests refused now are
    /// answered by it (it is already on its way to whoever asked).
    pub keyframe_since_request: bool,
    /// The latest keyframe's size and arrival, for the send backlog
    /// allowance: every subscriber forwarding this layer forwarded it too
    /// (a subscription only starts a layer on a keyframe).
    pub last_keyframe: LastKeyframe,
}

impl Layer {
    fn new(rid: Option<Rid>, nominal_bps: u64, now: Instant) -> Layer {
        Layer {
            rid,
            ssrc: None,
            rate: RateMeter::new(),
            nominal_bps,
            last_packet: None,
            publishing: true,
            wanted: false,
            unwanted_since: Some(now),
            last_keyframe_request: None,
            keyframe_pending: false,
            keyframe_since_request: false,
            last_keyframe: LastKeyframe::default(),
        }
    }

    /// What forwarding this layer costs a subscriber, in bit/s.
    pub fn cost_bps(&self) -> u64 {
        self.rate.bps().unwrap_or(self.nominal_bps).max(1)
    }

    pub fn is_live(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_LIVE_TIMEOUT)
    }

    /// Whether a keyframe request may go to the publisher now; records it if
    /// so, and otherwise remembers that one is owed.
    pub fn allow_keyframe_request(&mut self, now: Instant, reaches: KeyframeFor) -> bool {
        let interval = match reaches {
            KeyframeFor::Receivers => KEYFRAME_REQUEST_INTERVAL,
            KeyframeFor::Waiters => UNWATCHED_KEYFRAME_INTERVAL,
        };
        match self.last_keyframe_request {
            Some(t) if now.saturating_duration_since(t) < interval => {
                if !self.keyframe_since_request {
                    self.keyframe_pending = true;
                }
                false
            }
            _ => {
                self.last_keyframe_request = Some(now);
                self.keyframe_pending = false;
                self.keyframe_since_request = false;
                true
            }
        }
    }
}

/// Order of a simulcast rid among its siblings, lowest first. Browsers name
/// layers by convention (LiveKit and most apps use q/h/f); unknown names keep
/// the order of the SDP, which by convention lists the lowest first.
fn rid_rank(rid: &str) -> Option<u8> {
    match rid {
        "q" | "l" | "low" | "lo" | "0" => Some(0),
        "h" | "m" | "mid" | "medium" | "1" => Some(1),
        "f" | "high" | "hi" | "full" | "2" => Some(2),
        _ => None,
    }
}

/// Assumed bitrates of a track's layers before they are measured, lowest
/// first: browsers' defaults for a 720p camera.
fn nominal_rates(kind: MediaKind, source: TrackSource, layers: usize) -> &'static [u64] {
    match (kind, source, layers) {
        (MediaKind::Audio, _, _) => &[40_000],
        (_, TrackSource::ScreenShare, 1) => &[1_500_000],
        (_, TrackSource::ScreenShare, _) => &[300_000, 1_500_000],
        (_, _, 1) => &[600_000],
        (_, _, 2) => &[200_000, 1_000_000],
        _ => &[150_000, 500_000, 1_500_000],
    }
}

#[derive(Debug)]
pub struct Track {
    pub id: String,
    /// m-line of the publisher's connection carrying it.
    pub mid: Mid,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    /// Lowest first.
    pub layers: Vec<Layer>,
    /// Full resolution the publisher announced, if any.
    pub size: Option<(u32, u32)>,
    /// The payload type last seen and its codec, so packets skip the lookup.
    pub codec: Option<(Pt, Codec)>,
    /// Audio only: whether its packets are forwarded (not while idle).
    pub silence_gate: SilenceGate,
}

/// Most simulcast layers a track may have (browsers send up to three).
pub const MAX_LAYERS: usize = 3;

impl Track {
    /// `rids` as the publisher's SDP lists them; empty without simulcast.
    /// Only the first [`MAX_LAYERS`] are kept.
    pub fn new(
        id: String,
        mid: Mid,
        kind: MediaKind,
        source: TrackSource,
        rids: &[Rid],
        now: Instant,
    ) -> Track {
        let mut rids: Vec<(usize, Rid)> =
            rids.iter().copied().take(MAX_LAYERS).enumerate().collect();
        rids.sort_by_key(|(i, r)| (rid_rank(r).unwrap_or(*i as u8), *i));
        let nominal = nominal_rates(kind, source, rids.len().max(1));
        let layers = if rids.is_empty() {
            vec![Layer::new(None, nominal[0], now)]
        } else {
            rids.iter()
                .enumerate()
                .map(|(i, (_, rid))| Layer::new(Some(*rid), nominal[i.min(nominal.len() - 1)], now))
                .collect()
        };
        Track {
            id,
            mid,
            kind,
            source,
            muted: false,
            layers,
            size: None,
            codec: None,
            silence_gate: SilenceGate::default(),
        }
    }

    pub fn info(&self, participant_id: &str) -> TrackInfo {
        TrackInfo {
            id: self.id.clone(),
            participant_id: participant_id.to_owned(),
            kind: self.kind,
            source: self.source,
            muted: self.muted,
            mid: self.mid.to_string(),
        }
    }

    /// The layer a packet with this SSRC and rid belongs to. Learns the SSRC
    /// the first time a rid (or, without simulcast, any SSRC) is seen.
    pub fn layer_of(&mut self, ssrc: Ssrc, rid: Option<Rid>) -> Option<usize> {
        if let Some(i) = self.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            return Some(i);
        }
        let i = if self.layers.len() == 1 && self.layers[0].rid.is_none() {
            0
        } else {
            let rid = rid?;
            self.layers.iter().position(|l| l.rid == Some(rid))?
        };
        // A new SSRC for a known layer: the publisher restarted its encoder.
        self.layers[i].ssrc = Some(ssrc);
        Some(i)
    }

    pub fn layer_states(&self) -> Vec<LayerState> {
        self.layers
            .iter()
            .map(|l| LayerState {
                rid: l.rid.map(|r| r.to_string()),
                active: l.publishing,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(rids: &[&str]) -> Track {
        let rids: Vec<Rid> = rids.iter().map(|r| Rid::from(*r)).collect();
        Track::new(
            "T".into(),
            Mid::from("0"),
            MediaKind::Video,
            TrackSource::Camera,
            &rids,
            Instant::now(),
        )
    }

    #[test]
    fn keyframe_requests_are_throttled_per_layer() {
        let mut t = camera(&[]);
        let now = Instant::now();
        let l = &mut t.layers[0];
        assert!(l.allow_keyframe_request(now, KeyframeFor::Receivers));
        assert!(
            !l.allow_keyframe_request(now + Duration::from_millis(100), KeyframeFor::Receivers)
        );
        assert!(l.keyframe_pending);
        // A keyframe that arrives answers what was held back.
        l.keyframe_pending = false;
        l.keyframe_since_request = true;
        assert!(
            !l.allow_keyframe_request(now + Duration::from_millis(150), KeyframeFor::Receivers)
        );
        assert!(!l.keyframe_pending);
        assert!(l.allow_keyframe_request(now + KEYFRAME_REQUEST_INTERVAL, KeyframeFor::Receivers));
        assert!(!l.keyframe_pending);
    }

    #[test]
    fn an_unwatched_layer_waits_less_for_a_keyframe() {
        let mut t = camera(&[]);
        let now = Instant::now();
        let l = &mut t.layers[0];
        assert!(l.allow_keyframe_request(now, KeyframeFor::Receivers));
        assert!(
            !l.allow_keyframe_request(now + UNWATCHED_KEYFRAME_INTERVAL / 2, KeyframeFor::Waiters)
        );
        let later = now + UNWATCHED_KEYFRAME_INTERVAL;
        assert!(
            !l.allow_keyframe_request(later, KeyframeFor::Receivers),
            "a watched layer still waits"
        );
        assert!(l.allow_keyframe_request(later, KeyframeFor::Waiters));
        // Which restarts the interval for everyone.
        assert!(!l.allow_keyframe_request(
            later + UNWATCHED_KEYFRAME_INTERVAL / 2,
            KeyframeFor::Waiters
        ));
    }

    #[test]
    fn layers_are_ordered_lowest_first_whatever_the_sdp_order() {
        let t = camera(&["f", "q", "h"]);
        let rids: Vec<String> = t
            .layers
            .iter()
            .map(|l| l.rid.unwrap().to_string())
            .collect();
        assert_eq!(rids, ["q", "h", "f"]);
        assert!(t.layers[0].nominal_bps < t.layers[2].nominal_bps);
        // Unknown names keep the SDP order.
        let t = camera(&["a", "b"]);
        assert_eq!(t.layers[0].rid.unwrap().to_string(), "a");
    }

    #[test]
    fn ssrcs_are_learned_per_rid() {
        let mut t = camera(&["q", "h", "f"]);
        assert_eq!(t.layer_of(Ssrc::from(7), Some(Rid::from("h"))), Some(1));
        // Later packets omit the rid extension.
        assert_eq!(t.layer_of(Ssrc::from(7), None), Some(1));
        assert_eq!(t.layer_of(Ssrc::from(8), None), None);
        assert_eq!(t.layer_of(Ssrc::from(8), Some(Rid::from("x"))), None);
    }

    #[test]
    fn rate_meter_measures_and_survives_gaps() {
        let mut m = RateMeter::new();
        let t0 = Instant::now();
        // 50 packets/s of 1250 bytes = 500 kbit/s.
        for i in 0..100 {
            m.add(t0 + Duration::from_millis(20 * i), 1250);
        }
        let bps = m.bps().unwrap();
        assert!((450_000..=550_000).contains(&bps), "{bps}");
        // A long gap does not count as a slow window.
        m.add(t0 + Duration::from_secs(10), 1250);
        assert_eq!(m.bps(), Some(bps));
    }
}
