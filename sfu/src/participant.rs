//! One client connection: its str0m `Rtc`, what it publishes and receives,
//! and where its SDP negotiation stands.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stamma_proto::{
    ParticipantInfo, PublishedTrack, Role, ServerSignal, SubscribedTrack, random_token,
};
use str0m::bwe::Bitrate;
use str0m::change::SdpPendingOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, CodecConfig, FormatParams};
use str0m::media::Mid;
use str0m::net::TcpType;
use str0m::rtp::RtpWrite;
use str0m::{Candidate, IceCreds, Reason, Rtc};
use tokio::sync::mpsc;

use crate::allocator::{EstimateStall, IncreaseTrial};
use crate::command::{JoinRequest, ToParticipant};
use crate::demux::ParticipantKey;
use crate::release_queue::ReleaseQueue;
use crate::subscription::{Subscription, SubscriptionState};
use crate::track::Track;

/// How often str0m reports per-stream statistics (see `Participant::new`).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// A server offer waiting for the client's answer.
pub struct PendingOffer {
    pub id: u64,
    pub offer: SdpPendingOffer,
    /// The signal as sent, to send again if no answer comes.
    pub signal: ServerSignal,
    pub sent_at: Instant,
    pub resends: u32,
}

pub struct Participant {
    pub id: String,
    pub room: String,
    pub identity: String,
    pub name: Option<String>,
    pub role: Role,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// May moderate the others in the room (a host).
    pub can_admin: bool,
    pub hand_raised: bool,
    /// Order of joining in the room's life (1: first); see `ParticipantInfo`.
    pub join_seq: u64,
    pub rtc: Rtc,
    pub ufrag: String,
    /// Remote addresses this participant's datagrams came from (for the demux).
    pub addrs: Vec<SocketAddr>,
    pub published: Vec<Track>,
    /// What the client said about the m-lines of its latest offer.
    pub announced: Vec<PublishedTrack>,
    pub subscriptions: Vec<Subscription>,
    pub pending_offer: Option<PendingOffer>,
    pub next_offer_id: u64,
    pub joined_at: Instant,
    pub connected: bool,
    /// When the media connection first came up.
    pub connected_at: Option<Instant>,
    /// Since when the media connection has been down (or never up).
    pub down_since: Option<Instant>,
    pub next_timeout: Option<Instant>,
    /// The time the `Rtc` last got as input (its clock).
    pub clock: Instant,
    signals: mpsc::Sender<ToParticipant>,
    /// Set when the signal queue overflowed or the session went away.
    pub signal_failed: bool,
    /// str0m's latest estimate of this participant's downlink (TWCC), bit/s.
    pub bwe_bps: Option<u64>,
    /// The estimate the last allocation used.
    pub allocated_for_bps: u64,
    /// Video rate the last allocation chose, and what everything wanted
    /// would cost (for the worker's LoadShedder).
    pub video_used_bps: u64,
    pub video_wanted_bps: u64,
    /// Subscriptions, settings or the estimate changed: allocate again.
    pub allocation_due: bool,
    /// Allocate again at the first tick from this time: at once when a
    /// video layer came back, 60 ms on when a voice started (see
    /// `VOICING`). While it is set, `allocation_due` waits for it.
    pub allocate_at: Option<Instant>,
    /// The desired rate last given to str0m's estimator.
    pub bwe_desired: u64,
    /// When the link may next be probed for more bandwidth.
    pub next_probe: Instant,
    /// Whether its estimator is stuck (see `EstimateStall`).
    pub estimate_stall: EstimateStall,
    /// Padding that verifies the link before an increase (`IncreaseTrial`).
    pub increase_trial: IncreaseTrial,
    /// The minimum (padding) rate last given to str0m's estimator.
    pub bwe_minimum: u64,
    /// When str0m last reported NACKs from this subscriber.
    pub last_nack_at: Option<Instant>,
    /// RTP was written to this subscriber's streams and is not sent yet:
    /// `Worker::settle` sends it all with one clock step and one drain.
    pub send_due: bool,
    /// When the last server offer went out, and whether one waits for
    /// `OFFER_COALESCE` to pass.
    pub last_offer_at: Option<Instant>,
    pub offer_waiting: bool,
    /// Packets written for the pending send, and whether any was video.
    pub written: u32,
    pub wrote_video: bool,
    /// Why str0m wants `next_timeout`.
    pub timeout_reason: Reason,
    /// RTP datagrams this connection has sent.
    pub rtp_sent: u64,
    /// Video waiting for its time on this subscriber's link.
    pub release: ReleaseQueue<HeldStream, RtpWrite>,
}

/// Which stream a held packet is for: the outgoing m-line, and the track it
/// forwards (an m-line can be reused for another track before the packet
/// leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldStream {
    pub mid: Mid,
    pub publisher: ParticipantKey,
    pub source_mid: Mid,
}

/// Our Opus parameters with `usedtx=1`: browsers configure their encoder
/// from the remote description, and then send a silent microphone as
/// occasional comfort noise instead of fifty packets a second (Chromium, a
/// microphone looping 1 s of tone and 3 s of silence: 165-175 packets in
/// 8 s instead of 388). Otherwise the same payload type and parameters as
/// str0m's own Opus entry.
fn ask_for_opus_dtx(codecs: &mut CodecConfig) {
    let Some(opus) = codecs.find(|p| p.spec().codec == Codec::Opus).copied() else {
        return;
    };
    let spec = opus.spec();
    codecs.enable_opus(false, false);
    codecs.add_config(
        opus.pt(),
        opus.resend(),
        Codec::Opus,
        spec.clock_rate,
        spec.channels,
        FormatParams {
            use_dtx: Some(true),
            ..spec.format
        },
    );
}

impl Participant {
    pub fn new(
        req: JoinRequest,
        cert: &DtlsCert,
        candidate: SocketAddr,
        ice_tcp: bool,
        bwe_initial_kbps: Option<u32>,
        opus_dtx: bool,
        now: Instant,
    ) -> Result<Participant, String> {
        let ufrag = random_token(16);
        let creds = IceCreds {
            ufrag: ufrag.clone(),
            pass: random_token(32),
        };
        // The estimator (TWCC) drives the Allocator; without the Allocator
        // nothing reads it, so it is left off (as is its pacer).
        let bwe = bwe_initial_kbps.map(|k| Bitrate::kbps(u64::from(k)));
        let mut builder = Rtc::builder()
            .enable_bwe(bwe)
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(cert.clone())
            .set_local_ice_credentials(creds)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            // Stats events are the only way str0m tells how many NACKs a
            // subscriber sent (stamma_nacks_received_total); once a second
            // per stream is cheap next to the media.
            .set_stats_interval(Some(STATS_INTERVAL));
        if opus_dtx {
            ask_for_opus_dtx(builder.codec_config());
        }
        let mut rtc = builder.build(now);
        let cand = Candidate::host(candidate, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(cand);
        if ice_tcp {
            // Same address, TCP: for networks that let no UDP out (RFC 6544).
            let tcp = Candidate::builder()
                .tcp()
                .host(candidate)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| e.to_string())?;
            rtc.add_local_candidate(tcp);
        }
        Ok(Participant {
            id: req.participant_id,
            room: req.room,
            identity: req.identity,
            name: req.name,
            role: req.role,
            can_publish: req.can_publish,
            can_subscribe: req.can_subscribe,
            can_admin: req.can_admin,
            hand_raised: false,
            join_seq: 0,
            rtc,
            ufrag,
            addrs: Vec::new(),
            published: Vec::new(),
            announced: Vec::new(),
            subscriptions: Vec::new(),
            pending_offer: None,
            next_offer_id: 1,
            joined_at: now,
            connected: false,
            connected_at: None,
            down_since: Some(now),
            next_timeout: Some(now),
            clock: now,
            signals: req.signals,
            signal_failed: false,
            bwe_bps: None,
            allocated_for_bps: 0,
            video_used_bps: 0,
            video_wanted_bps: 0,
            allocation_due: true,
            allocate_at: None,
            bwe_desired: 0,
            next_probe: now,
            estimate_stall: EstimateStall::default(),
            increase_trial: IncreaseTrial::default(),
            bwe_minimum: 0,
            last_nack_at: None,
            send_due: false,
            last_offer_at: None,
            offer_waiting: false,
            written: 0,
            wrote_video: false,
            timeout_reason: Reason::NotHappening,
            rtp_sent: 0,
            release: ReleaseQueue::default(),
        })
    }

    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id.clone(),
            identity: self.identity.clone(),
            name: self.name.clone(),
            role: self.role,
            tracks: self.published.iter().map(|t| t.info(&self.id)).collect(),
            hand_raised: self.hand_raised,
            join_seq: self.join_seq,
        }
    }

    /// Queue a signal for the session. A full queue marks the participant for
    /// removal instead of blocking the worker.
    pub fn send(&mut self, signal: ServerSignal) {
        if self.signal_failed {
            return;
        }
        if self
            .signals
            .try_send(ToParticipant::Signal(signal))
            .is_err()
        {
            self.signal_failed = true;
        }
    }

    pub fn close(&mut self, code: stamma_proto::ErrorCode, message: String) {
        let _ = self.signals.try_send(ToParticipant::Close(code, message));
        self.signal_failed = true;
    }

    pub fn track_by_mid(&mut self, mid: Mid) -> Option<&mut Track> {
        self.published.iter_mut().find(|t| t.mid == mid)
    }

    pub fn subscription_by_mid(&mut self, mid: Mid) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| s.mid == Some(mid))
    }

    /// The m-line → track map of everything this participant receives.
    pub fn subscribed_tracks(&self) -> Vec<SubscribedTrack> {
        self.subscriptions
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    SubscriptionState::Offered | SubscriptionState::Active
                )
            })
            .filter_map(|s| {
                Some(SubscribedTrack {
                    mid: s.mid?.to_string(),
                    track_id: s.track_id.clone(),
                    participant_id: s.publisher_id.clone(),
                    kind: s.kind,
                })
            })
            .collect()
    }

    pub fn needs_offer(&self) -> bool {
        self.subscriptions.iter().any(|s| {
            matches!(
                s.state,
                SubscriptionState::Wanted | SubscriptionState::Removing
            )
        })
    }
}
