//! An independent WebRTC peer for tests: one `webrtc` (webrtc-rs 0.21) peer connection that
//! speaks RTP at the packet level.
//!
//! The peer is built to exercise the Stämma SFU from the outside, so it is deliberately plain:
//!
//! * **Loopback only.** It binds a single UDP socket to `bind_ip:0` and gathers exactly one host
//!   candidate for it. There are no STUN/TURN servers and mDNS is disabled, so with
//!   `127.0.0.1` nothing ever leaves the machine.
//! * **Fixed codecs.** Opus (48000/2, payload type 111) and VP8 (payload type 96, with
//!   `nack`, `nack pli` and `transport-cc` feedback), BUNDLE (max-bundle) and rtcp-mux.
//! * **RTP in, RTP out.** Tests write pre-encoded payloads with their own sequence numbers and
//!   timestamps through a [`LocalTrack`]; the peer fills in SSRC and payload type. Received
//!   media comes out of a [`RemoteTrack`] packet by packet.
//!
//! Remote tracks are announced through [`PeerEvent::Track`] when their first RTP packet
//! arrives (that is when webrtc-rs fires `on_track`), including tracks added later by a
//! renegotiation. A track whose m-line a later remote description sets to `inactive`,
//! `recvonly` or port 0 is ended by this module (webrtc-rs 0.21 itself never ends a remote
//! track on renegotiation).

use std::collections::HashSet;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet as InterceptorPacket, Slot, StreamInfo,
    TaggedPacket,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::marshal::Unmarshal;
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc, watch};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCBundlePolicy, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionState, RTCRtcpMuxPolicy,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender, RtpTransceiver,
};

/// Payload type registered for Opus (48000 Hz, 2 channels).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Payload type registered for VP8 (90000 Hz).
pub const VP8_PAYLOAD_TYPE: u8 = 96;
/// Payload type registered for VP8 retransmissions (RTX, apt=96).
pub const VP8_RTX_PAYLOAD_TYPE: u8 = 97;

/// How long [`Peer::create_offer`] / [`Peer::accept_offer`] wait for ICE gathering.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Capacity of the [`PeerEvent`] channel returned by [`Peer::new`].
const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Packets buffered per [`RemoteTrack`] before the forwarder applies back-pressure (the
/// webrtc-rs driver then drops, as it does for any slow reader).
const REMOTE_TRACK_BUFFER: usize = 1024;
/// Interceptor slot for [`KeyframeRequestForwarder`]: after every built-in interceptor, so it
/// is the application-most stage (as in webrtc-rs' `rtcp-processing` example).
const KEYFRAME_FORWARDER_SLOT: usize = 14_000;

/// Errors returned by [`Peer`], [`LocalTrack`] and [`RemoteTrack`].
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// An error reported by webrtc-rs.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// ICE gathering did not finish in time and no candidate was gathered.
    #[error("ICE gathering did not complete within {0:?}")]
    GatheringTimeout(Duration),
    /// Negotiation left no local description to hand out.
    #[error("no local description after negotiation")]
    NoLocalDescription,
    /// The remote track has ended (removed by renegotiation, or the peer closed).
    #[error("remote track ended")]
    TrackEnded,
    /// [`Peer::send_pli`] was given an SSRC that no received track carries.
    #[error("no remote track with SSRC {0}")]
    UnknownSsrc(u32),
    /// A raw RTP packet could not be parsed.
    #[error("invalid RTP packet: {0}")]
    InvalidRtp(String),
    /// The peer (or the part of it the call needed) has been closed.
    #[error("peer closed")]
    Closed,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Opus audio.
    Audio,
    /// VP8 video.
    Video,
}

impl MediaKind {
    fn codec_kind(self) -> RtpCodecKind {
        match self {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        }
    }

    fn from_codec_kind(kind: RtpCodecKind) -> Self {
        if kind == RtpCodecKind::Audio {
            MediaKind::Audio
        } else {
            MediaKind::Video
        }
    }

    fn mime_type(self) -> &'static str {
        match self {
            MediaKind::Audio => MIME_TYPE_OPUS,
            MediaKind::Video => MIME_TYPE_VP8,
        }
    }

    fn default_payload_type(self) -> u8 {
        match self {
            MediaKind::Audio => OPUS_PAYLOAD_TYPE,
            MediaKind::Video => VP8_PAYLOAD_TYPE,
        }
    }

    fn codec(self) -> RTCRtpCodec {
        match self {
            MediaKind::Audio => RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            MediaKind::Video => RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![
                    RTCPFeedback {
                        typ: "nack".to_owned(),
                        parameter: String::new(),
                    },
                    RTCPFeedback {
                        typ: "nack".to_owned(),
                        parameter: "pli".to_owned(),
                    },
                ],
            },
        }
    }

    fn codec_parameters(self) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: self.codec(),
            payload_type: self.default_payload_type(),
        }
    }
}

/// One received RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRtp {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// SSRC the packet arrived with.
    pub ssrc: u32,
    /// Payload type the packet arrived with.
    pub payload_type: u8,
    /// Payload (after SRTP decryption; header extensions and padding removed).
    pub payload: Bytes,
}

/// Something that happened on a [`Peer`].
#[derive(Debug)]
pub enum PeerEvent {
    /// A remote track delivered its first RTP packet.
    Track(RemoteTrack),
    /// The peer connection reached `connected` (ICE + DTLS done).
    Connected,
    /// The peer connection went `disconnected` (may recover).
    Disconnected,
    /// The peer connection failed.
    Failed(String),
    /// The peer connection was closed.
    Closed,
}

/// A track this peer sends. Cheap to clone; all clones write to the same RTP stream.
#[derive(Clone)]
pub struct LocalTrack {
    inner: Arc<LocalTrackInner>,
}

struct LocalTrackInner {
    kind: MediaKind,
    id: String,
    stream_id: String,
    ssrc: u32,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    transceiver: Arc<dyn RtpTransceiver>,
    keyframe_requests: watch::Receiver<u64>,
}

impl fmt::Debug for LocalTrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTrack")
            .field("kind", &self.inner.kind)
            .field("id", &self.inner.id)
            .field("stream_id", &self.inner.stream_id)
            .field("ssrc", &self.inner.ssrc)
            .finish()
    }
}

impl LocalTrack {
    /// Media kind of the track.
    pub fn kind(&self) -> MediaKind {
        self.inner.kind
    }

    /// Track id (the msid track identifier).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Stream id (the msid stream identifier).
    pub fn stream_id(&self) -> &str {
        &self.inner.stream_id
    }

    /// SSRC every packet of this track is sent with.
    pub fn ssrc(&self) -> u32 {
        self.inner.ssrc
    }

    /// Sends one RTP packet with the given header fields and payload. SSRC and payload type are
    /// filled in (the negotiated Opus/VP8 payload type). Before the connection is up the packet
    /// is silently dropped by webrtc-rs.
    pub async fn write_rtp(
        &self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), PeerError> {
        let header = rtc::rtp::Header {
            version: 2,
            marker,
            sequence_number: seq,
            timestamp,
            ..Default::default()
        };
        self.send(rtc::rtp::Packet {
            header,
            payload: Bytes::copy_from_slice(payload),
        })
        .await
    }

    /// Sends a complete, serialized RTP packet. Sequence number, timestamp, marker, CSRCs and
    /// payload are kept; SSRC and payload type are replaced by this track's; header extensions
    /// and padding are dropped (webrtc-rs rejects extension ids it has not negotiated).
    pub async fn write_rtp_packet(&self, raw: &[u8]) -> Result<(), PeerError> {
        let mut buf = raw;
        let mut packet = rtc::rtp::Packet::unmarshal(&mut buf)
            .map_err(|err| PeerError::InvalidRtp(err.to_string()))?;
        packet.header.padding = false;
        packet.header.extension = false;
        packet.header.extensions.clear();
        self.send(packet).await
    }

    /// Number of keyframe requests (PLI or FIR) received for this track so far.
    pub fn keyframe_requests(&self) -> u64 {
        *self.inner.keyframe_requests.borrow()
    }

    /// Waits until at least `count` keyframe requests (PLI or FIR) have been received for this
    /// track and returns the total. Errs with [`PeerError::Closed`] if the peer closes first.
    pub async fn wait_keyframe_requests(&self, count: u64) -> Result<u64, PeerError> {
        let mut requests = self.inner.keyframe_requests.clone();
        let total = requests
            .wait_for(|total| *total >= count)
            .await
            .map(|total| *total)
            .map_err(|_| PeerError::Closed)?;
        Ok(total)
    }

    async fn send(&self, mut packet: rtc::rtp::Packet) -> Result<(), PeerError> {
        packet.header.version = 2;
        packet.header.ssrc = self.inner.ssrc;
        packet.header.payload_type = self.payload_type().await;
        self.inner.track.write_rtp(packet).await?;
        Ok(())
    }

    /// The payload type negotiated for this track's codec, or the registered default.
    async fn payload_type(&self) -> u8 {
        let wanted = self.inner.kind.mime_type();
        match self.inner.sender.get_parameters().await {
            Ok(parameters) => parameters
                .rtp_parameters
                .codecs
                .iter()
                .find(|codec| codec.rtp_codec.mime_type.eq_ignore_ascii_case(wanted))
                .map(|codec| codec.payload_type)
                .unwrap_or_else(|| self.inner.kind.default_payload_type()),
            Err(_) => self.inner.kind.default_payload_type(),
        }
    }
}

/// A track received from the remote side.
pub struct RemoteTrack {
    mid: Option<String>,
    kind: MediaKind,
    ssrc: u32,
    stream_id: String,
    track_id: String,
    packets: AsyncMutex<mpsc::Receiver<ReceivedRtp>>,
}

impl fmt::Debug for RemoteTrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTrack")
            .field("mid", &self.mid)
            .field("kind", &self.kind)
            .field("ssrc", &self.ssrc)
            .field("stream_id", &self.stream_id)
            .field("track_id", &self.track_id)
            .finish()
    }
}

impl RemoteTrack {
    /// The mid of the m-line this track arrived on, if it could be resolved.
    pub fn mid(&self) -> Option<&str> {
        self.mid.as_deref()
    }

    /// Media kind of the track.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// SSRC of the first packet (the SSRC the remote sends this track with).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// msid stream id announced by the remote (generated by webrtc-rs if there was none).
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// msid track id announced by the remote (generated by webrtc-rs if there was none).
    pub fn track_id(&self) -> &str {
        &self.track_id
    }

    /// Next received packet. Errs with [`PeerError::TrackEnded`] once the track has ended and
    /// every packet received before that has been read.
    pub async fn read_rtp(&self) -> Result<ReceivedRtp, PeerError> {
        self.packets
            .lock()
            .await
            .recv()
            .await
            .ok_or(PeerError::TrackEnded)
    }
}

/// A WebRTC peer connection (see the module docs). `Send + Sync`; share it with `Arc`.
pub struct Peer {
    shared: Arc<Shared>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Shared {
    pc: Arc<dyn PeerConnection>,
    /// Counts completed ICE gathering rounds (one per `set_local_description`).
    gathered: watch::Receiver<u64>,
    remote_tracks: StdMutex<Vec<RemoteEntry>>,
    closed: AtomicBool,
    /// ICE over TCP: remote passive candidates already handed to the stack.
    tcp_dialed: Option<StdMutex<Vec<String>>>,
}

#[derive(Clone)]
struct RemoteEntry {
    mid: Option<String>,
    track: Arc<dyn TrackRemote>,
    stop: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A peer dropped without `close()` would otherwise keep its driver task and socket alive.
        if !self.closed.load(Ordering::Acquire)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let pc = Arc::clone(&self.pc);
            runtime.spawn(async move {
                if let Err(err) = pc.close().await {
                    tracing::debug!(%err, "closing dropped peer failed");
                }
            });
        }
    }
}

/// How a [`Peer`] reaches the server.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    pub ice_servers: Vec<stamma_proto::IceServer>,
    /// Gather only TURN relay candidates (`iceTransportPolicy: "relay"`).
    pub relay_only: bool,
    /// No UDP at all: active ICE-TCP candidates only (RFC 6544), as a
    /// client on a network that blocks UDP.
    pub tcp_only: bool,
}

impl Peer {
    /// Creates a peer whose single UDP socket is bound to `bind_ip:0` (use `127.0.0.1` to
    /// stay on loopback). Returns the peer and the receiver of its [`PeerEvent`]s. Must be
    /// called inside a Tokio runtime.
    pub async fn new(bind_ip: IpAddr) -> Result<(Peer, mpsc::Receiver<PeerEvent>), PeerError> {
        Self::with_options(bind_ip, &PeerOptions::default()).await
    }

    /// [`Peer::new`] with TURN/STUN servers (from `joined`) and, for clients
    /// on networks that allow nothing else, relay-only ICE.
    pub async fn with_options(
        bind_ip: IpAddr,
        options: &PeerOptions,
    ) -> Result<(Peer, mpsc::Receiver<PeerEvent>), PeerError> {
        let mut media_engine = MediaEngine::default();
        media_engine.register_codec(
            MediaKind::Audio.codec_parameters(),
            MediaKind::Audio.codec_kind(),
        )?;
        media_engine.register_codec(
            MediaKind::Video.codec_parameters(),
            MediaKind::Video.codec_kind(),
        )?;
        // RTX (RFC 4588) for VP8, so retransmissions can be negotiated.
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_RTX.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: format!("apt={VP8_PAYLOAD_TYPE}"),
                    rtcp_feedback: vec![],
                },
                payload_type: VP8_RTX_PAYLOAD_TYPE,
            },
            MediaKind::Video.codec_kind(),
        )?;
        // NACK generator/responder (+ `nack`, `nack pli` feedback on video), sender/receiver
        // reports, TWCC feedback and the mid/rid header extensions.
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        let registry = registry.with(
            Slot::from(KEYFRAME_FORWARDER_SLOT),
            KeyframeRequestForwarder::default(),
        );

        let mut setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true);
        if options.tcp_only {
            setting_engine = setting_engine.with_network_types(vec![NetworkType::Tcp4]);
        }
        let setting_engine = setting_engine.build();
        let ice_servers = options
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        let policy = if options.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .with_bundle_policy(RTCBundlePolicy::MaxBundle)
            .with_rtcp_mux_policy(RTCRtcpMuxPolicy::Require)
            .build();

        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let (gathered_tx, gathered_rx) = watch::channel(0u64);
        let (tracks_tx, tracks_rx) = mpsc::unbounded_channel();
        let handler = Arc::new(EventHandler {
            events: events_tx.clone(),
            gathered: gathered_tx,
            new_tracks: tracks_tx,
        });

        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(if options.tcp_only {
                vec![]
            } else {
                vec![SocketAddr::new(bind_ip, 0)]
            })
            .with_tcp_addrs(if options.tcp_only {
                vec![SocketAddr::new(bind_ip, 0)]
            } else {
                vec![]
            })
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let shared = Arc::new(Shared {
            pc,
            gathered: gathered_rx,
            remote_tracks: StdMutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            tcp_dialed: options.tcp_only.then(|| StdMutex::new(Vec::new())),
        });
        tokio::spawn(announce_remote_tracks(
            Arc::downgrade(&shared),
            tracks_rx,
            events_tx,
        ));
        Ok((Peer { shared }, events_rx))
    }

    /// Adds a send-only track (its own transceiver and m-line; takes effect with the next
    /// negotiation). `track_id` and `stream_id` become the msid.
    pub async fn add_track(
        &self,
        kind: MediaKind,
        track_id: &str,
        stream_id: &str,
    ) -> Result<LocalTrack, PeerError> {
        let ssrc = random_ssrc();
        let media_track = MediaStreamTrack::new(
            stream_id.to_owned(),
            track_id.to_owned(),
            track_id.to_owned(),
            kind.codec_kind(),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                active: true,
                codec: kind.codec(),
                ..Default::default()
            }],
        );
        let track = Arc::new(TrackLocalStaticRTP::new(media_track));
        let transceiver = self
            .shared
            .pc
            .add_transceiver_from_track(
                Arc::clone(&track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id.to_owned()],
                    send_encodings: vec![],
                }),
            )
            .await?;
        let sender = transceiver
            .sender()
            .await?
            .ok_or(webrtc::error::Error::ErrRTPSenderNotExisted)?;

        let (requests_tx, requests_rx) = watch::channel(0u64);
        tokio::spawn(count_keyframe_requests(Arc::clone(&track), requests_tx));

        Ok(LocalTrack {
            inner: Arc::new(LocalTrackInner {
                kind,
                id: track_id.to_owned(),
                stream_id: stream_id.to_owned(),
                ssrc,
                track,
                sender,
                transceiver,
                keyframe_requests: requests_rx,
            }),
        })
    }

    /// Creates an offer, sets it as the local description, waits (at most 5 s) for ICE
    /// gathering and returns the complete offer SDP, candidates included.
    pub async fn create_offer(&self) -> Result<String, PeerError> {
        let offer = self.shared.pc.create_offer(None).await?;
        self.set_local_and_gather(offer).await
    }

    /// Applies the remote answer to the last [`create_offer`](Self::create_offer).
    pub async fn apply_answer(&self, sdp: &str) -> Result<(), PeerError> {
        let answer = RTCSessionDescription::answer(sdp.to_owned())?;
        let not_sending = not_sending_mids(&answer);
        self.shared.pc.set_remote_description(answer).await?;
        self.end_remote_tracks(&not_sending);
        self.dial_passive_tcp(sdp).await?;
        Ok(())
    }

    /// webrtc-rs connects to a remote passive ICE-TCP candidate only when it
    /// arrives through `add_ice_candidate` (trickle), not in an SDP: hand it
    /// the SDP's passive TCP candidates that way, once each.
    async fn dial_passive_tcp(&self, sdp: &str) -> Result<(), PeerError> {
        let Some(dialed) = &self.shared.tcp_dialed else {
            return Ok(());
        };
        let mid = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::to_owned);
        for line in sdp.lines() {
            let Some(c) = line.strip_prefix("a=") else {
                continue;
            };
            if !(c.starts_with("candidate:")
                && c.contains(" tcp ")
                && c.contains("tcptype passive"))
            {
                continue;
            }
            {
                let mut d = dialed.lock().unwrap_or_else(|e| e.into_inner());
                if d.iter().any(|x| x == c) {
                    continue;
                }
                d.push(c.to_owned());
            }
            self.shared
                .pc
                .add_ice_candidate(RTCIceCandidateInit {
                    candidate: c.to_owned(),
                    sdp_mid: mid.clone(),
                    sdp_mline_index: Some(0),
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    /// Applies a remote offer (initial or renegotiation), answers it and returns the answer SDP
    /// with candidates. New send-only m-lines of the remote become receive-only here; remote
    /// tracks on m-lines the offer disables are ended.
    pub async fn accept_offer(&self, sdp: &str) -> Result<String, PeerError> {
        let offer = RTCSessionDescription::offer(sdp.to_owned())?;
        let not_sending = not_sending_mids(&offer);
        self.shared.pc.set_remote_description(offer).await?;
        self.end_remote_tracks(&not_sending);
        self.dial_passive_tcp(sdp).await?;
        let answer = self.shared.pc.create_answer(None).await?;
        self.set_local_and_gather(answer).await
    }

    /// The mid of a local track's transceiver; `None` before it has been negotiated.
    pub async fn mid_of(&self, track: &LocalTrack) -> Option<String> {
        track.inner.transceiver.mid().await.ok().flatten()
    }

    /// Sends a Picture Loss Indication for the received stream `media_ssrc`.
    pub async fn send_pli(&self, media_ssrc: u32) -> Result<(), PeerError> {
        let entries: Vec<RemoteEntry> = lock(&self.shared.remote_tracks).clone();
        for entry in entries {
            if entry.track.ssrcs().await.contains(&media_ssrc) {
                entry
                    .track
                    .write_rtcp(vec![Box::new(PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    })])
                    .await?;
                return Ok(());
            }
        }
        Err(PeerError::UnknownSsrc(media_ssrc))
    }

    /// Closes the peer connection and ends every remote track. Idempotent.
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let entries: Vec<RemoteEntry> = lock(&self.shared.remote_tracks).drain(..).collect();
        for entry in entries {
            entry.stop.notify_one();
        }
        if let Err(err) = self.shared.pc.close().await {
            tracing::debug!(%err, "closing peer connection failed");
        }
    }

    async fn set_local_and_gather(&self, desc: RTCSessionDescription) -> Result<String, PeerError> {
        let mut gathered = self.shared.gathered.clone();
        let before = *gathered.borrow_and_update();
        self.shared.pc.set_local_description(desc).await?;
        let completed =
            tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|rounds| *rounds > before))
                .await
                .map(|result| result.is_ok());
        let local = self
            .shared
            .pc
            .local_description()
            .await
            .ok_or(PeerError::NoLocalDescription)?;
        match completed {
            Ok(true) => Ok(local.sdp),
            Ok(false) => Err(PeerError::Closed),
            Err(_) if local.sdp.contains("a=candidate:") => {
                tracing::warn!("ICE gathering still running; using the candidates gathered so far");
                Ok(local.sdp)
            }
            Err(_) => Err(PeerError::GatheringTimeout(GATHER_TIMEOUT)),
        }
    }

    /// Ends (and forgets) every remote track received on one of `mids`.
    fn end_remote_tracks(&self, mids: &HashSet<String>) {
        if mids.is_empty() {
            return;
        }
        let mut tracks = lock(&self.shared.remote_tracks);
        tracks.retain(|entry| {
            let ended = entry.mid.as_ref().is_some_and(|mid| mids.contains(mid));
            if ended {
                entry.stop.notify_one();
            }
            !ended
        });
    }
}

impl Shared {
    /// Wraps a track webrtc-rs announced, starts its packet forwarder and remembers it.
    async fn register_remote(&self, track: Arc<dyn TrackRemote>) -> RemoteTrack {
        let kind = MediaKind::from_codec_kind(track.kind().await);
        let ssrc = track.ssrcs().await.first().copied().unwrap_or_default();
        let stream_id = track.stream_id().await;
        let track_id = track.track_id().await;
        let mid = remote_track_mid(self.pc.as_ref(), &track).await;

        let (packets_tx, packets_rx) = mpsc::channel(REMOTE_TRACK_BUFFER);
        let stop = Arc::new(Notify::new());
        if self.closed.load(Ordering::Acquire) {
            stop.notify_one();
        } else {
            lock(&self.remote_tracks).push(RemoteEntry {
                mid: mid.clone(),
                track: Arc::clone(&track),
                stop: Arc::clone(&stop),
            });
        }
        tokio::spawn(forward_remote_packets(track, packets_tx, stop));

        RemoteTrack {
            mid,
            kind,
            ssrc,
            stream_id,
            track_id,
            packets: AsyncMutex::new(packets_rx),
        }
    }
}

/// Receives webrtc-rs callbacks. Runs on the connection's driver task, so it never blocks.
struct EventHandler {
    events: mpsc::Sender<PeerEvent>,
    gathered: watch::Sender<u64>,
    new_tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EventHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|rounds| *rounds += 1);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let event = match state {
            RTCPeerConnectionState::Connected => PeerEvent::Connected,
            RTCPeerConnectionState::Disconnected => PeerEvent::Disconnected,
            RTCPeerConnectionState::Failed => {
                PeerEvent::Failed("peer connection state is failed".to_owned())
            }
            RTCPeerConnectionState::Closed => PeerEvent::Closed,
            _ => return,
        };
        if let Err(err) = self.events.try_send(event) {
            tracing::warn!(%err, "peer event dropped");
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Resolving the mid needs the peer connection, which must not be called back into from
        // the driver task: hand the track to `announce_remote_tracks`.
        if self.new_tracks.send(track).is_err() {
            tracing::debug!("remote track arrived after the peer was dropped");
        }
    }
}

/// Turns tracks announced by webrtc-rs into [`PeerEvent::Track`]s.
async fn announce_remote_tracks(
    shared: Weak<Shared>,
    mut tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
    events: mpsc::Sender<PeerEvent>,
) {
    while let Some(track) = tracks.recv().await {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let remote = shared.register_remote(track).await;
        drop(shared);
        if events.send(PeerEvent::Track(remote)).await.is_err() {
            tracing::debug!("peer event receiver dropped; remote track not announced");
        }
    }
}

/// The mid of the transceiver whose receiver carries `track`.
async fn remote_track_mid(pc: &dyn PeerConnection, track: &Arc<dyn TrackRemote>) -> Option<String> {
    for transceiver in pc.get_transceivers().await {
        if let Ok(Some(receiver)) = transceiver.receiver().await
            && Arc::ptr_eq(receiver.track(), track)
        {
            return transceiver.mid().await.ok().flatten();
        }
    }
    None
}

/// Moves RTP packets from a webrtc-rs remote track into a [`RemoteTrack`]'s channel until the
/// track ends, the reader goes away or `stop` is notified.
async fn forward_remote_packets(
    track: Arc<dyn TrackRemote>,
    packets: mpsc::Sender<ReceivedRtp>,
    stop: Arc<Notify>,
) {
    loop {
        let event = tokio::select! {
            _ = stop.notified() => break,
            event = track.poll() => event,
        };
        match event {
            Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                let received = ReceivedRtp {
                    seq: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    marker: packet.header.marker,
                    ssrc: packet.header.ssrc,
                    payload_type: packet.header.payload_type,
                    payload: packet.payload,
                };
                tokio::select! {
                    _ = stop.notified() => break,
                    sent = packets.send(received) => {
                        if sent.is_err() {
                            break;
                        }
                    }
                }
            }
            Some(TrackRemoteEvent::OnEnded) | None => break,
            Some(_) => {}
        }
    }
}

/// Counts PLI/FIR feedback webrtc-rs delivers for a local track (see
/// [`KeyframeRequestForwarder`]).
async fn count_keyframe_requests(track: Arc<TrackLocalStaticRTP>, counter: watch::Sender<u64>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            let requests = packets
                .iter()
                .filter(|packet| is_keyframe_request(packet.as_ref()))
                .count() as u64;
            if requests > 0 {
                counter.send_modify(|total| *total += requests);
            }
        }
    }
}

/// mids whose m-line in `desc` says the remote will not send on it (port 0, `inactive` or
/// `recvonly`).
fn not_sending_mids(desc: &RTCSessionDescription) -> HashSet<String> {
    let Ok(parsed) = desc.unmarshal() else {
        return HashSet::new();
    };
    parsed
        .media_descriptions
        .iter()
        .filter_map(|media| {
            let mid = media.attribute("mid").flatten()?;
            let not_sending = media.media_name.port.value == 0
                || media.attribute("inactive").is_some()
                || media.attribute("recvonly").is_some();
            not_sending.then(|| mid.to_owned())
        })
        .collect()
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let packet = packet.as_any();
    packet.is::<PictureLossIndication>() || packet.is::<FullIntraRequest>()
}

/// Locks a std mutex, ignoring poisoning (the protected data stays consistent: every critical
/// section is a single push/retain/clone).
fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A non-zero, practically unique SSRC (std's randomly keyed hasher; no `rand` dependency).
fn random_ssrc() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let ssrc = hasher.finish() as u32;
    if ssrc == 0 { 1 } else { ssrc }
}

/// Interceptor that lets inbound keyframe requests (PLI, FIR) reach the application.
///
/// webrtc-rs 0.21 stops inbound RTCP at the end of the interceptor chain unless an interceptor
/// marks it with [`Attribute::DeliverToApplication`]. This one leaves every packet as it is
/// and adds a marked copy holding only the keyframe requests, which the core routes (by media
/// SSRC) to the local track being asked for a keyframe.
#[derive(Default)]
struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = webrtc::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet
            && !msg.message.has(&Attribute::DeliverToApplication)
        {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|packet| is_keyframe_request(packet.as_ref()))
                .cloned()
                .collect();
            if !requests.is_empty() {
                let mut copy = AttributedPacket::new(InterceptorPacket::Rtcp(requests));
                copy.add(Attribute::DeliverToApplication);
                self.read_queue.push_back(TaggedPacket {
                    now: msg.now,
                    transport: msg.transport,
                    message: copy,
                });
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const STEP: Duration = Duration::from_secs(10);

    /// Addresses of all `a=candidate` lines of an SDP.
    fn candidate_addresses(sdp: &str) -> Vec<String> {
        sdp.lines()
            .filter(|line| line.starts_with("a=candidate:"))
            .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
            .collect()
    }

    fn assert_loopback_only(sdp: &str) {
        let addresses = candidate_addresses(sdp);
        assert!(!addresses.is_empty(), "no candidates in SDP:\n{sdp}");
        assert!(
            addresses.iter().all(|address| address == "127.0.0.1"),
            "non-loopback candidate in SDP: {addresses:?}\n{sdp}"
        );
        assert!(
            sdp.lines()
                .filter(|line| line.starts_with("a=candidate:"))
                .all(|line| line.contains(" typ host")),
            "non-host candidate in SDP:\n{sdp}"
        );
    }

    async fn next_event(events: &mut mpsc::Receiver<PeerEvent>) -> TestResult<PeerEvent> {
        Ok(tokio::time::timeout(STEP, events.recv())
            .await?
            .ok_or("event channel closed")?)
    }

    async fn wait_connected(events: &mut mpsc::Receiver<PeerEvent>) -> TestResult {
        loop {
            match next_event(events).await? {
                PeerEvent::Connected => return Ok(()),
                PeerEvent::Failed(reason) => return Err(format!("failed: {reason}").into()),
                _ => {}
            }
        }
    }

    async fn wait_track(events: &mut mpsc::Receiver<PeerEvent>) -> TestResult<RemoteTrack> {
        loop {
            if let PeerEvent::Track(track) = next_event(events).await? {
                return Ok(track);
            }
        }
    }

    /// Writes `count` packets on each track, 10 ms apart, sequence numbers from `first_seq`.
    fn spawn_writer(tracks: Vec<LocalTrack>, first_seq: u16, count: u16) {
        tokio::spawn(async move {
            for i in 0..count {
                for track in &tracks {
                    let (step, payload): (u32, &[u8]) = match track.kind() {
                        MediaKind::Audio => (960, &[0xf8, 0xff, 0xfe]),
                        MediaKind::Video => (3000, &[0x10, 0x00, 0x9d, 0x01, 0x2a, 0xaa]),
                    };
                    let seq = first_seq.wrapping_add(i);
                    let marker = track.kind() == MediaKind::Video;
                    if let Err(err) = track
                        .write_rtp(seq, u32::from(i) * step, marker, payload)
                        .await
                    {
                        tracing::warn!(%err, "test write failed");
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    /// Reads `count` packets and checks SSRC, payload type, payload and increasing seq.
    async fn read_increasing(
        track: &RemoteTrack,
        count: usize,
        payload_type: u8,
    ) -> TestResult<Vec<ReceivedRtp>> {
        let mut received: Vec<ReceivedRtp> = Vec::new();
        while received.len() < count {
            let packet = tokio::time::timeout(STEP, track.read_rtp()).await??;
            assert_eq!(packet.ssrc, track.ssrc());
            assert_eq!(packet.payload_type, payload_type);
            if let Some(last) = received.last() {
                assert!(
                    packet.seq > last.seq,
                    "seq not increasing: {} after {}",
                    packet.seq,
                    last.seq
                );
            }
            received.push(packet);
        }
        Ok(received)
    }

    async fn exchange() -> TestResult {
        let (a, mut a_events) = Peer::new(LOOPBACK).await?;
        let (b, mut b_events) = Peer::new(LOOPBACK).await?;
        let audio = a.add_track(MediaKind::Audio, "a-audio", "a-stream").await?;
        let video = a.add_track(MediaKind::Video, "a-video", "a-stream").await?;

        let offer = a.create_offer().await?;
        assert_loopback_only(&offer);
        assert!(offer.contains("a=rtpmap:111 opus/48000/2"), "{offer}");
        assert!(offer.contains("a=rtpmap:96 VP8/90000"), "{offer}");
        assert!(offer.contains("a=rtcp-fb:96 nack pli"), "{offer}");
        assert!(offer.contains("a=rtcp-fb:96 nack\r\n"), "{offer}");
        assert!(offer.contains("a=group:BUNDLE"), "{offer}");
        assert!(offer.contains("a=rtcp-mux"), "{offer}");

        let answer = b.accept_offer(&offer).await?;
        assert_loopback_only(&answer);
        a.apply_answer(&answer).await?;

        let audio_mid = a.mid_of(&audio).await.ok_or("audio has no mid")?;
        let video_mid = a.mid_of(&video).await.ok_or("video has no mid")?;
        assert_ne!(audio_mid, video_mid);

        wait_connected(&mut a_events).await?;
        wait_connected(&mut b_events).await?;

        spawn_writer(vec![audio.clone(), video.clone()], 1000, 50);

        let first = wait_track(&mut b_events).await?;
        let second = wait_track(&mut b_events).await?;
        let (remote_audio, remote_video) = if first.kind() == MediaKind::Audio {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(remote_audio.kind(), MediaKind::Audio);
        assert_eq!(remote_video.kind(), MediaKind::Video);
        assert_eq!(remote_audio.ssrc(), audio.ssrc());
        assert_eq!(remote_video.ssrc(), video.ssrc());
        assert_eq!(remote_audio.mid(), Some(audio_mid.as_str()));
        assert_eq!(remote_video.mid(), Some(video_mid.as_str()));
        assert_eq!(remote_audio.track_id(), "a-audio");
        assert_eq!(remote_video.stream_id(), "a-stream");

        let audio_packets = read_increasing(&remote_audio, 30, OPUS_PAYLOAD_TYPE).await?;
        let video_packets = read_increasing(&remote_video, 30, VP8_PAYLOAD_TYPE).await?;
        assert_eq!(&audio_packets[0].payload[..], &[0xf8, 0xff, 0xfe]);
        assert!(video_packets.iter().all(|packet| packet.marker));

        // PLI from the receiver reaches the sending track.
        assert_eq!(video.keyframe_requests(), 0);
        b.send_pli(remote_video.ssrc()).await?;
        tokio::time::timeout(STEP, video.wait_keyframe_requests(1)).await??;
        assert!(matches!(
            b.send_pli(0xdead_beef).await,
            Err(PeerError::UnknownSsrc(0xdead_beef))
        ));

        a.close().await;
        b.close().await;
        // Closing ends received tracks once their buffered packets are read.
        let ended = tokio::time::timeout(STEP, async {
            while remote_audio.read_rtp().await.is_ok() {}
        })
        .await;
        assert!(ended.is_ok(), "remote track did not end after close");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_loopback_peers_exchange_rtp() {
        match tokio::time::timeout(Duration::from_secs(20), exchange()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("exchange failed: {err}"),
            Err(_) => panic!("exchange timed out"),
        }
    }

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: T) {}

    /// Compile-time check that the async API can be driven from `tokio::spawn`.
    fn futures_are_send(peer: &Peer, local: &LocalTrack, remote: &RemoteTrack) {
        assert_send(Peer::new(LOOPBACK));
        assert_send(peer.add_track(MediaKind::Audio, "t", "s"));
        assert_send(peer.create_offer());
        assert_send(peer.apply_answer(""));
        assert_send(peer.accept_offer(""));
        assert_send(peer.mid_of(local));
        assert_send(peer.send_pli(1));
        assert_send(peer.close());
        assert_send(local.write_rtp(0, 0, false, &[]));
        assert_send(local.write_rtp_packet(&[]));
        assert_send(local.wait_keyframe_requests(1));
        assert_send(remote.read_rtp());
    }

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Peer>();
        assert_send_sync::<LocalTrack>();
        assert_send_sync::<RemoteTrack>();
        assert_send_sync::<PeerEvent>();
        assert_send_sync::<PeerError>();
        let _check: fn(&Peer, &LocalTrack, &RemoteTrack) = futures_are_send;
    }

    #[test]
    fn not_sending_mids_detects_disabled_m_lines() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=recvonly\r\n";
        let desc = RTCSessionDescription::offer(sdp.to_owned()).expect("valid SDP");
        let mids = not_sending_mids(&desc);
        let expected: HashSet<String> = ["1", "2", "3"].into_iter().map(String::from).collect();
        assert_eq!(mids, expected);
    }

    /// Replaces `a=sendonly` by `a=inactive` in the m-section with `mid`.
    fn deactivate(sdp: &str, mid: &str) -> String {
        let mut in_section = false;
        let mut out = String::with_capacity(sdp.len());
        for line in sdp.split_inclusive("\r\n") {
            if line.starts_with("m=") {
                in_section = false;
            }
            if line.trim_end() == format!("a=mid:{mid}") {
                in_section = true;
            }
            if in_section && line.trim_end() == "a=sendonly" {
                out.push_str("a=inactive\r\n");
            } else {
                out.push_str(line);
            }
        }
        out
    }

    async fn renegotiate() -> TestResult {
        let (a, mut a_events) = Peer::new(LOOPBACK).await?;
        let (b, mut b_events) = Peer::new(LOOPBACK).await?;
        let audio = a.add_track(MediaKind::Audio, "a-audio", "a-stream").await?;

        let answer = b.accept_offer(&a.create_offer().await?).await?;
        a.apply_answer(&answer).await?;
        wait_connected(&mut a_events).await?;
        wait_connected(&mut b_events).await?;
        spawn_writer(vec![audio.clone()], 1, 20);
        let remote_audio = wait_track(&mut b_events).await?;
        read_increasing(&remote_audio, 5, OPUS_PAYLOAD_TYPE).await?;

        // Renegotiation adding a send-only m-line: the answerer gets a new track.
        let video = a.add_track(MediaKind::Video, "a-video", "a-stream").await?;
        let offer = a.create_offer().await?;
        assert_loopback_only(&offer);
        let answer = b.accept_offer(&offer).await?;
        assert_loopback_only(&answer);
        a.apply_answer(&answer).await?;
        let video_mid = a.mid_of(&video).await.ok_or("video has no mid")?;
        spawn_writer(vec![video.clone()], 500, 50);
        let remote_video = wait_track(&mut b_events).await?;
        assert_eq!(remote_video.kind(), MediaKind::Video);
        assert_eq!(remote_video.mid(), Some(video_mid.as_str()));
        read_increasing(&remote_video, 5, VP8_PAYLOAD_TYPE).await?;

        // Renegotiation disabling that m-line ends the remote track, the other keeps going.
        let offer = deactivate(&a.create_offer().await?, &video_mid);
        assert!(offer.contains("a=inactive"), "{offer}");
        let _answer = b.accept_offer(&offer).await?;
        let ended = tokio::time::timeout(STEP, async {
            while remote_video.read_rtp().await.is_ok() {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "video track did not end after inactive m-line"
        );
        assert!(matches!(
            remote_video.read_rtp().await,
            Err(PeerError::TrackEnded)
        ));
        // The audio track is untouched: its buffered packets are still readable.
        tokio::time::timeout(STEP, remote_audio.read_rtp()).await??;

        a.close().await;
        b.close().await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renegotiation_adds_and_ends_remote_tracks() {
        match tokio::time::timeout(Duration::from_secs(20), renegotiate()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("renegotiation failed: {err}"),
            Err(_) => panic!("renegotiation timed out"),
        }
    }
}
