//! Scenarios: who joins, who publishes what, who speaks when and what each
//! participant watches. Presets are realistic meetings, not worst cases.

use std::time::Duration;

use clap::ValueEnum;
use stamma_client::media::VideoLayer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// One room, 50 participants, all on camera and microphone (DTX), three
    /// speaking at a time in rotation; each watches a grid page of 24 videos
    /// that shifts every 10 s, and hears everyone.
    #[value(name = "meeting-50")]
    Meeting50,
    /// One room: 5 speakers on camera and microphone, 200 attendees
    /// watching all of it, publishing nothing.
    Hearing,
    /// One room, 300 participants, audio only, 3 unmuted speakers at a time,
    /// everyone hearing all audio.
    #[value(name = "audio-300")]
    Audio300,
    /// Everything from the command line (6 participants by default).
    Custom,
}

/// How much video a participant watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    /// Every published track.
    All,
    /// Nothing: every subscription is paused.
    None,
    /// All audio and a grid page of this many videos.
    Videos(usize),
}

impl std::str::FromStr for Subscribe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Subscribe::All),
            "none" => Ok(Subscribe::None),
            n => n
                .parse()
                .map(Subscribe::Videos)
                .map_err(|_| format!("expected all, none or a number, got {n:?}")),
        }
    }
}

/// What a publisher's microphone sends while its owner is not speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Unmuted: Opus DTX comfort noise, a small packet every 400 ms.
    Dtx,
    /// Muted: nothing.
    Muted,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub rooms: usize,
    /// Per room.
    pub participants: usize,
    /// Per room: the first participants of a room publish camera video.
    pub video_publishers: usize,
    /// Per room: the first participants of a room publish microphone audio.
    pub audio_publishers: usize,
    /// Speaking at any moment, per room.
    pub speakers: usize,
    /// How long one set of speakers talks before the next takes over.
    pub speaker_turn: Duration,
    pub silence: Silence,
    pub subscribe: Subscribe,
    /// How often a grid page moves on (when watching a page of videos).
    pub grid_shift: Duration,
    pub simulcast: bool,
    /// Every frame end-to-end encrypted (SFrame), as E2EE clients send them.
    pub e2ee: bool,
    pub duration: Duration,
    /// Joins per second.
    pub ramp: f64,
    pub downlink_kbps: Option<u32>,
    /// The bottleneck queue's longest delay before it drops.
    pub downlink_queue: Duration,
    pub max_loss_pct: f64,
    pub max_p99_latency_ms: f64,
}

impl Scenario {
    pub fn preset(preset: Preset) -> Scenario {
        let base = Scenario {
            name: "custom".into(),
            rooms: 1,
            participants: 6,
            video_publishers: 6,
            audio_publishers: 6,
            speakers: 3,
            speaker_turn: Duration::from_secs(5),
            silence: Silence::Dtx,
            subscribe: Subscribe::All,
            grid_shift: Duration::from_secs(10),
            simulcast: false,
            e2ee: false,
            duration: Duration::from_secs(30),
            ramp: 10.0,
            downlink_kbps: None,
            downlink_queue: Duration::from_millis(250),
            max_loss_pct: 1.0,
            max_p99_latency_ms: 50.0,
        };
        match preset {
            Preset::Custom => base,
            Preset::Meeting50 => Scenario {
                name: "meeting-50".into(),
                participants: 50,
                video_publishers: 50,
                audio_publishers: 50,
                subscribe: Subscribe::Videos(24),
                ..base
            },
            Preset::Hearing => Scenario {
                name: "hearing".into(),
                participants: 205,
                video_publishers: 5,
                audio_publishers: 5,
                ramp: 20.0,
                ..base
            },
            Preset::Audio300 => Scenario {
                name: "audio-300".into(),
                participants: 300,
                video_publishers: 0,
                audio_publishers: 300,
                silence: Silence::Muted,
                ramp: 25.0,
                ..base
            },
        }
    }

    pub fn total_participants(&self) -> usize {
        self.rooms * self.participants
    }

    pub fn layers(&self) -> Vec<VideoLayer> {
        if self.simulcast {
            VideoLayer::SIMULCAST.to_vec()
        } else {
            vec![VideoLayer::SINGLE]
        }
    }

    /// The role participant `i` (global index) plays.
    pub fn role_of(&self, i: usize) -> ParticipantPlan {
        let room = i / self.participants.max(1);
        let local = i % self.participants.max(1);
        ParticipantPlan {
            index: i as u32,
            room,
            local,
            video: local < self.video_publishers,
            audio: local < self.audio_publishers,
        }
    }

    pub fn publishers_per_room(&self) -> usize {
        self.video_publishers
            .max(self.audio_publishers)
            .min(self.participants)
    }

    /// Whether audio publisher `local` (index within its room) speaks at
    /// `elapsed` since the start: turns of `speakers` at a time, rotating.
    pub fn speaking(&self, local: usize, elapsed: Duration) -> bool {
        let n = self.audio_publishers.min(self.participants);
        if n == 0 || local >= n {
            return false;
        }
        if self.speakers >= n {
            return true;
        }
        let turn = (elapsed.as_millis() / self.speaker_turn.as_millis().max(1)) as usize;
        let first = (turn * self.speakers) % n;
        (local + n - first) % n < self.speakers
    }

    /// The video publishers (room-local indices) participant `local` watches
    /// after `shifts` grid moves: a page of consecutive others, moving on by
    /// as many tiles as there are speakers, as speakers get promoted.
    pub fn grid_page(&self, local: usize, shifts: usize) -> Option<Vec<usize>> {
        let Subscribe::Videos(page) = self.subscribe else {
            return None;
        };
        let others: Vec<usize> = (0..self.video_publishers.min(self.participants))
            .filter(|&v| v != local)
            .collect();
        if others.is_empty() {
            return Some(Vec::new());
        }
        let start = (local + shifts * self.speakers.max(1)) % others.len();
        Some(
            (0..page.min(others.len()))
                .map(|k| others[(start + k) % others.len()])
                .collect(),
        )
    }
}

/// One simulated participant's part.
#[derive(Debug, Clone, Copy)]
pub struct ParticipantPlan {
    /// Global index: the sender id in frame stamps.
    pub index: u32,
    pub room: usize,
    /// Index within its room.
    pub local: usize,
    pub video: bool,
    pub audio: bool,
}

impl ParticipantPlan {
    pub fn identity(&self) -> String {
        format!("lt{}", self.index)
    }

    pub fn room_name(&self) -> String {
        format!("load-{}", self.room)
    }

    /// The participant index behind an identity this tool gave out.
    pub fn index_of(identity: &str) -> Option<u32> {
        identity.strip_prefix("lt")?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_speak_at_a_time_and_everyone_gets_a_turn() {
        let s = Scenario::preset(Preset::Meeting50);
        let mut spoke = [false; 50];
        for t in 0..100 {
            let at = Duration::from_secs(t * 5);
            let now: Vec<usize> = (0..50).filter(|&p| s.speaking(p, at)).collect();
            assert_eq!(now.len(), 3, "at {t}: {now:?}");
            for p in now {
                spoke[p] = true;
            }
        }
        assert!(spoke.iter().all(|s| *s));
    }

    #[test]
    fn a_grid_page_holds_24_others_and_moves() {
        let s = Scenario::preset(Preset::Meeting50);
        let a = s.grid_page(7, 0).unwrap();
        let b = s.grid_page(7, 1).unwrap();
        assert_eq!(a.len(), 24);
        assert!(!a.contains(&7));
        assert_ne!(a, b);
        assert_eq!(a[3..], b[..21]);
        assert!(Scenario::preset(Preset::Hearing).grid_page(7, 0).is_none());
    }

    #[test]
    fn identities_map_back_to_indices() {
        let s = Scenario::preset(Preset::Hearing);
        let p = s.role_of(210);
        assert_eq!((p.room, p.local), (1, 5));
        assert_eq!(ParticipantPlan::index_of(&p.identity()), Some(210));
        assert_eq!(ParticipantPlan::index_of("bob"), None);
        // Five speakers per room publish; attendees do not.
        assert!(!p.video && !p.audio);
        assert!(s.role_of(4).video && s.role_of(209).video);
    }
}
