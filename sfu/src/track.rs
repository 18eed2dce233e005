//! A published source (microphone, camera, screen) and its simulcast layers.

use std::time::{Duration, Instant};

use stamma_proto::{MediaKind, TrackInfo, TrackSource};
use str0m::format::Codec;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::Ssrc;

/// Keyframe requests to a publisher are sent at most this often per track:
/// many subscribers asking at once must not flood the publisher.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

/// One encoding of a track. Without simulcast a track has one layer with no rid.
#[derive(Debug, Clone)]
pub struct Layer {
    pub rid: Option<Rid>,
    pub ssrc: Option<Ssrc>,
}

#[derive(Debug)]
pub struct Track {
    pub id: String,
    /// m-line of the publisher's connection carrying it.
    pub mid: Mid,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    pub layers: Vec<Layer>,
    /// The payload type last seen and its codec, so packets skip the lookup.
    pub codec: Option<(Pt, Codec)>,
    last_keyframe_request: Option<Instant>,
}

impl Track {
    pub fn new(id: String, mid: Mid, kind: MediaKind, source: TrackSource) -> Track {
        Track {
            id,
            mid,
            kind,
            source,
            muted: false,
            layers: vec![Layer {
                rid: None,
                ssrc: None,
            }],
            codec: None,
            last_keyframe_request: None,
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

    /// Whether a keyframe request may go to the publisher now; records it if so.
    pub fn allow_keyframe_request(&mut self, now: Instant) -> bool {
        match self.last_keyframe_request {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL => false,
            _ => {
                self.last_keyframe_request = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_requests_are_throttled_per_track() {
        let mut t = Track::new(
            "T".into(),
            Mid::from("0"),
            MediaKind::Video,
            TrackSource::Camera,
        );
        let now = Instant::now();
        assert!(t.allow_keyframe_request(now));
        assert!(!t.allow_keyframe_request(now + Duration::from_millis(100)));
        assert!(t.allow_keyframe_request(now + KEYFRAME_REQUEST_INTERVAL));
    }
}
