//! Harness for the end-to-end tests: a server on ephemeral loopback ports and
//! participants built on webrtc-rs (a WebRTC stack independent of the server's).
//! [`sim`] is the in-memory variant: the sans-IO worker with str0m peers;
//! [`netsim`] adds a virtual clock and access links with rate, queue, delay
//! and loss.

pub mod netsim;
pub mod sim;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stamma::{Server, ServerConfig};
use stamma_client::e2ee::{self, Codec};
use stamma_client::key_exchange::KeyExchange;
use stamma_client::media::opus_tone::{ToneDecoder, encode_tone};
use stamma_client::media::{Vp8Frames, vp8_grey_frame};
use stamma_client::peer::{
    LocalTrack, MediaKind as PeerKind, Peer, PeerEvent, PeerOptions, RemoteTrack,
};
use stamma_client::sframe::{CipherSuite, Decryptor, Encryptor};
use stamma_client::signal::{SignalClient, rtc_url};
use stamma_proto::{
    ClientSignal, Grant, MediaKind, PublishedTrack, Role, ServerSignal, SubscribedTrack,
    TrackSource,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const KEY: &str = "test_key";
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A server on 127.0.0.1 with OS-chosen ports.
pub struct TestServer {
    pub server: Server,
    pub base: String,
}

impl TestServer {
    pub async fn start(workers: usize) -> anyhow::Result<TestServer> {
        Self::start_with(workers, |_| {}).await
    }

    /// Start with a config adjusted by `tweak` (e.g. shorter timeouts).
    pub async fn start_with(
        workers: usize,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<TestServer> {
        init_tracing();
        let mut config = ServerConfig::dev();
        config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.media.first_port = 0;
        config.media.workers = workers;
        config.keys.insert(KEY, SECRET)?;
        tweak(&mut config);
        let server = Server::start(config).await?;
        let base = format!("http://{}", server.http_addr);
        Ok(TestServer { server, base })
    }

    pub fn token(&self, room: &str, identity: &str, role: Role) -> String {
        token(room, identity, role)
    }

    pub fn media_addr(&self) -> SocketAddr {
        self.server.media_addrs[0]
    }

    /// Participants the server currently holds (from /healthz).
    pub async fn participants(&self) -> anyhow::Result<u64> {
        let (status, body) = http_get(self.server.http_addr, "/healthz").await?;
        if status != 200 {
            bail!("healthz returned {status}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["participants"]
            .as_u64()
            .context("participants in healthz")
    }
}

pub fn token(room: &str, identity: &str, role: Role) -> String {
    let g = Grant::new(KEY, room, identity, role, 600);
    g.mint(KEY, SECRET.as_bytes()).unwrap_or_default()
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, path, &[]).await
}

/// GET with extra headers (e.g. WebSocket upgrade headers).
pub async fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The next server signal, failing the test if none comes within 5 s.
pub async fn next_signal(
    c: &mut SignalClient,
) -> Result<ServerSignal, stamma_client::signal::SignalError> {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .expect("a reply in time")
}

/// Assert that the next signal is an error with `code` and a message.
pub async fn expect_error(c: &mut SignalClient, code: stamma_proto::ErrorCode) {
    match next_signal(c).await {
        Ok(ServerSignal::Error { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// Wait until `f` is true, polling; fails after `timeout`.
pub async fn wait_until<F: FnMut() -> bool>(
    timeout: Duration,
    what: &str,
    mut f: F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What one participant has received from one remote track.
#[derive(Debug, Default)]
pub struct Received {
    pub publisher_id: String,
    pub track_id: String,
    pub kind: Option<MediaKind>,
    pub ssrc: u32,
    pub packets: u64,
    /// Video frames begun (packets that start a VP8 frame).
    pub frames: u64,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    /// Decoded audio (audio tracks).
    pub pcm: Vec<i16>,
    /// Audio packets that did not decrypt (E2EE participants only).
    pub decrypt_failures: u64,
    /// Audio packets that decrypted.
    pub decrypted: u64,
    /// Sequence numbers in arrival order (video tracks).
    pub seqs: Vec<u16>,
    /// (arrival, picture id) of keyframe starts (video tracks).
    pub keyframes: Vec<(Instant, u16)>,
    /// Whether the packet with sequence number 1 (the server numbers each
    /// subscriber's video from 1, at a keyframe) starts a keyframe. `None` if
    /// the client never saw it: webrtc-rs can lose a track's first packets
    /// while it installs its SRTP keys.
    pub first_is_keyframe: Option<bool>,
    pub ended: bool,
}

/// How a test participant's media reaches the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Route {
    /// Replace the server's media address by a relay's in the SDPs.
    pub via: Option<(SocketAddr, SocketAddr)>,
    /// Through the TURN servers from `joined` only (`iceTransportPolicy: "relay"`).
    pub relay_only: bool,
    /// ICE over TCP only, no UDP socket at all (a network that blocks UDP).
    pub tcp_only: bool,
}

/// How a test participant publishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Publish {
    pub tone_hz: Option<f32>,
    pub video: bool,
    /// End-to-end encryption of its audio (SFrame, docs/e2ee.md) and the
    /// key it reads others' audio with.
    pub e2ee: Option<E2ee>,
}

/// A test participant's SFrame keys: `(kid, base key)` to send with, and
/// to read with; or, with `room_secret`, keys from the key exchange
/// (`stamma_client::key_exchange`, docs/e2ee.md) that change as people come
/// and go. It seals its audio and its grey VP8 frames with one encryptor
/// (one KID, one counter, as the browser does) and opens others' audio.
#[derive(Debug, Clone, Copy, Default)]
pub struct E2ee {
    pub send: Option<(u64, [u8; 32])>,
    pub read: Option<(u64, [u8; 32])>,
    pub room_secret: Option<[u8; 32]>,
}

/// The keys a test participant uses now; `version` changes with them.
#[derive(Debug, Clone, Default)]
pub struct E2eeKeys {
    pub send: Option<(u64, [u8; 32])>,
    pub read: Vec<(u64, [u8; 32])>,
    /// The key exchange's generation (`None` without one, or before a key).
    pub generation: Option<u8>,
    /// The key exchange's safety code, as the page shows it.
    pub safety_code: Option<String>,
    pub version: u64,
}

type SharedKeys = Arc<Mutex<E2eeKeys>>;

/// The one encryptor a participant's audio and video share, so no
/// (KID, counter) pair is ever used twice; rebuilt when the keys change.
struct Sealer {
    keys: SharedKeys,
    current: Mutex<(u64, Option<Encryptor>)>,
}

impl Sealer {
    fn new(keys: SharedKeys) -> Arc<Sealer> {
        Arc::new(Sealer {
            keys,
            current: Mutex::new((0, None)),
        })
    }

    /// `frame` sealed for sending; `None` while there is no key yet (a
    /// newcomer waiting for one sends nothing rather than clear media).
    fn seal(&self, codec: Codec, frame: &[u8]) -> Option<Vec<u8>> {
        let (version, send) = {
            let k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            (k.version, k.send)
        };
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.0 != version {
            let enc = send.and_then(|(kid, key)| {
                Encryptor::new(CipherSuite::Aes128GcmSha256, kid, &key).ok()
            });
            *cur = (version, enc);
        }
        let enc = cur.1.as_mut()?;
        e2ee::protect(enc, codec, frame)
            .map_err(|e| tracing::error!(error = %e, "e2ee protect"))
            .ok()
    }
}

fn publish_keys(keys: &SharedKeys, kx: &KeyExchange) {
    let mut k = keys.lock().unwrap_or_else(|e| e.into_inner());
    k.send = kx.send_key();
    k.read = kx.receive_keys(Instant::now());
    k.generation = kx.generation();
    k.safety_code = kx.safety_code();
    k.version += 1;
}

/// A participant: signaling + webrtc-rs peer, negotiating on its own and
/// recording everything it receives.
pub struct TestParticipant {
    pub id: String,
    pub identity: String,
    pub peer: Arc<Peer>,
    pub connected_at: Instant,
    /// Every signal received, in order.
    pub signals: Arc<Mutex<Vec<(Instant, ServerSignal)>>>,
    /// Received media per remote track id.
    pub received: Arc<Mutex<HashMap<String, Received>>>,
    pub local_tracks: Arc<Mutex<Vec<LocalTrack>>>,
    /// The E2EE keys in use (see [`E2ee`]).
    pub e2ee_keys: SharedKeys,
    outgoing: mpsc::UnboundedSender<ClientSignal>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestParticipant {
    pub async fn join(
        base: &str,
        room: &str,
        identity: &str,
        role: Role,
        publish: Publish,
    ) -> anyhow::Result<TestParticipant> {
        Self::join_via(base, room, identity, role, publish, None).await
    }

    /// Join with the server's media address replaced by `via` in every SDP
    /// the server sends, so media goes through a relay (see [`LossyRelay`]).
    pub async fn join_via(
        base: &str,
        room: &str,
        identity: &str,
        role: Role,
        publish: Publish,
        via: Option<(SocketAddr, SocketAddr)>,
    ) -> anyhow::Result<TestParticipant> {
        let route = Route {
            via,
            ..Route::default()
        };
        Self::join_with(base, room, identity, role, publish, route).await
    }

    /// Join with the media path `route` chooses (relay, TURN only, TCP only).
    pub async fn join_with(
        base: &str,
        room: &str,
        identity: &str,
        role: Role,
        publish: Publish,
        route: Route,
    ) -> anyhow::Result<TestParticipant> {
        let url = rtc_url(base, &token(room, identity, role), None)?;
        Self::join_url(&url, publish, route).await
    }

    /// Join through a complete signaling URL (`ws://…/rtc?access_token=…`),
    /// with whatever token it carries.
    pub async fn join_url(
        url: &str,
        publish: Publish,
        route: Route,
    ) -> anyhow::Result<TestParticipant> {
        let Route {
            via,
            relay_only,
            tcp_only,
        } = route;
        let rewrite = move |sdp: String| match via {
            Some((server, relay)) => sdp.replace(
                &format!("{} {} typ host", server.ip(), server.port()),
                &format!("{} {} typ host", relay.ip(), relay.port()),
            ),
            None => sdp,
        };
        let connected_at = Instant::now();
        let mut sig = SignalClient::connect_url(url)
            .await
            .context("connecting signaling")?;
        let (me, others) = sig.join().await.context("joining")?;
        let identity = me.identity.as_str();
        let e2ee_keys: SharedKeys = Arc::default();
        let mut kx = None;
        let mut kx_hello = Vec::new();
        match publish.e2ee {
            Some(E2ee {
                room_secret: Some(secret),
                ..
            }) => {
                let mut x = KeyExchange::new(sig.room(), &secret, &me.id, me.join_seq)?;
                let list: Vec<(String, u64)> =
                    others.iter().map(|o| (o.id.clone(), o.join_seq)).collect();
                kx_hello = x.joined(&list)?;
                publish_keys(&e2ee_keys, &x);
                kx = Some(x);
            }
            Some(E2ee { send, read, .. }) => {
                let mut k = e2ee_keys.lock().unwrap_or_else(|e| e.into_inner());
                k.send = send;
                k.read = read.into_iter().collect();
                k.version = 1;
            }
            None => {}
        }
        let options = PeerOptions {
            ice_servers: sig.ice_servers().to_vec(),
            relay_only,
            tcp_only,
        };
        let (peer, mut events) = Peer::with_options([127, 0, 0, 1].into(), &options).await?;
        let peer = Arc::new(peer);
        let signals: Arc<Mutex<Vec<(Instant, ServerSignal)>>> = Arc::default();
        let received: Arc<Mutex<HashMap<String, Received>>> = Arc::default();
        let mids: Arc<Mutex<HashMap<String, SubscribedTrack>>> = Arc::default();
        let local_tracks: Arc<Mutex<Vec<LocalTrack>>> = Arc::default();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientSignal>();
        let mut tasks = Vec::new();

        // Publishing: add tracks and make the first offer before anything else
        // touches the peer, so the negotiation task starts with it outstanding.
        let mut offer = None;
        if publish.tone_hz.is_some() || publish.video {
            let mut announced = Vec::new();
            let mut added = Vec::new();
            if publish.tone_hz.is_some() {
                added.push(peer.add_track(PeerKind::Audio, "mic", identity).await?);
            }
            if publish.video {
                added.push(peer.add_track(PeerKind::Video, "cam", identity).await?);
            }
            let sdp = peer.create_offer().await?;
            for t in &added {
                let mid = peer.mid_of(t).await.context("mid of local track")?;
                let kind = match t.kind() {
                    PeerKind::Audio => MediaKind::Audio,
                    PeerKind::Video => MediaKind::Video,
                };
                announced.push(PublishedTrack {
                    mid,
                    kind,
                    source: TrackSource::default_for(kind),
                    width: None,
                    height: None,
                });
            }
            offer = Some(ClientSignal::Offer {
                sdp,
                tracks: announced,
            });
            local_tracks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(added);
        }

        // Negotiation and signal recording.
        {
            let peer = peer.clone();
            let signals = signals.clone();
            let mids = mids.clone();
            let received = received.clone();
            let e2ee_keys = e2ee_keys.clone();
            let mut kx = kx;
            tasks.push(tokio::spawn(async move {
                let mut local_offer_out = false;
                let mut answered = stamma_client::signal::AnsweredOffers::default();
                for o in kx_hello {
                    if sig.send(&ClientSignal::E2ee { to: o.to, payload: o.payload }).await.is_err() {
                        return;
                    }
                }
                if let Some(o) = offer {
                    if sig.send(&o).await.is_err() {
                        return;
                    }
                    local_offer_out = true;
                }
                loop {
                    tokio::select! {
                        s = sig.recv() => {
                            let Ok(s) = s else { return };
                            signals.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), s.clone()));
                            match s {
                                ServerSignal::Offer { id, sdp, tracks } => {
                                    // Impolite side: ignore while our offer is out;
                                    // and a copy of an offer answered already.
                                    if local_offer_out || !answered.take_new(id) {
                                        continue;
                                    }
                                    {
                                        let mut m = mids.lock().unwrap_or_else(|e| e.into_inner());
                                        for t in tracks {
                                            m.insert(t.mid.clone(), t);
                                        }
                                    }
                                    match peer.accept_offer(&rewrite(sdp)).await {
                                        Ok(answer) => {
                                            if sig.send(&ClientSignal::Answer { id, sdp: answer }).await.is_err() {
                                                return;
                                            }
                                        }
                                        Err(e) => tracing::error!(error = %e, "accept_offer failed"),
                                    }
                                }
                                ServerSignal::Answer { sdp, .. } => {
                                    local_offer_out = false;
                                    if let Err(e) = peer.apply_answer(&rewrite(sdp)).await {
                                        tracing::error!(error = %e, "apply_answer failed");
                                    }
                                }
                                ServerSignal::TrackUnpublished { track_id, .. } => {
                                    if let Some(r) = received.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&track_id) {
                                        r.ended = true;
                                    }
                                }
                                ServerSignal::ParticipantJoined { participant } => {
                                    if let Some(x) = &mut kx {
                                        x.participant_joined(&participant.id, participant.join_seq);
                                    }
                                }
                                ServerSignal::ParticipantLeft { participant_id, .. } => {
                                    if let Some(x) = &mut kx {
                                        let out = x.participant_left(&participant_id, Instant::now()).unwrap_or_default();
                                        publish_keys(&e2ee_keys, x);
                                        for o in out {
                                            if sig.send(&ClientSignal::E2ee { to: o.to, payload: o.payload }).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                                ServerSignal::E2ee { from, payload } => {
                                    if let Some(x) = &mut kx {
                                        let out = match x.receive(&from, &payload, Instant::now()) {
                                            Ok(out) => out,
                                            Err(e) => {
                                                tracing::debug!(error = %e, "e2ee message refused");
                                                Vec::new()
                                            }
                                        };
                                        publish_keys(&e2ee_keys, x);
                                        for o in out {
                                            if sig.send(&ClientSignal::E2ee { to: o.to, payload: o.payload }).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                        o = out_rx.recv() => {
                            let Some(o) = o else { sig.close().await; return };
                            let leave = o == ClientSignal::Leave;
                            if sig.send(&o).await.is_err() || leave {
                                sig.close().await;
                                return;
                            }
                        }
                    }
                }
            }));
        }

        // Remote tracks.
        {
            let received = received.clone();
            let mids = mids.clone();
            let e2ee_keys = e2ee_keys.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    if let PeerEvent::Track(t) = ev {
                        let keys = publish.e2ee.map(|_| e2ee_keys.clone());
                        tokio::spawn(read_track(t, received.clone(), mids.clone(), keys));
                    }
                }
            }));
        }

        // Media senders.
        let sealer = publish.e2ee.map(|_| Sealer::new(e2ee_keys.clone()));
        let tracks = local_tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for t in tracks {
            match t.kind() {
                PeerKind::Audio => {
                    let hz = publish.tone_hz.unwrap_or(440.0);
                    tasks.push(tokio::spawn(send_tone(t, hz, sealer.clone())));
                }
                PeerKind::Video => tasks.push(tokio::spawn(send_video(t, sealer.clone()))),
            }
        }

        Ok(TestParticipant {
            identity: me.identity.clone(),
            id: me.id,
            peer,
            connected_at,
            signals,
            received,
            local_tracks,
            e2ee_keys,
            outgoing: out_tx,
            tasks,
        })
    }

    pub fn send(&self, s: ClientSignal) {
        let _ = self.outgoing.send(s);
    }

    /// The safety code of the key exchange's current epoch, if any.
    pub fn safety_code(&self) -> Option<String> {
        self.e2ee_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .safety_code
            .clone()
    }

    /// Remote track ids received from `publisher_id` of `kind`.
    /// The tone in the last second of audio received from `publisher_id`.
    pub fn heard_frequency(&self, publisher_id: &str) -> Option<f32> {
        let track = self.received_from(publisher_id, MediaKind::Audio)?;
        self.with_received(&track, |r| {
            let last = r.pcm.len().checked_sub(48_000)?;
            Some(stamma_client::media::dominant_frequency(
                &r.pcm[last..],
                100.0,
                4000.0,
                5.0,
            ))
        })
        .flatten()
    }

    pub fn received_from(&self, publisher_id: &str, kind: MediaKind) -> Option<String> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, r)| r.publisher_id == publisher_id && r.kind == Some(kind))
            .map(|(k, _)| k.clone())
    }

    pub fn with_received<T>(&self, track_id: &str, f: impl FnOnce(&Received) -> T) -> Option<T> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(track_id)
            .map(f)
    }

    pub fn has_signal(&self, f: impl Fn(&ServerSignal) -> bool) -> Option<Instant> {
        self.signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, s)| f(s))
            .map(|(t, _)| *t)
    }

    /// When the first signal received after `since` that matches `f` arrived.
    pub fn signal_after(
        &self,
        since: Instant,
        f: impl Fn(&ServerSignal) -> bool,
    ) -> Option<Instant> {
        self.signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, s)| *t >= since && f(s))
            .map(|(t, _)| *t)
    }

    /// Leave properly and stop everything.
    pub async fn leave(mut self) {
        self.send(ClientSignal::Leave);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stop().await;
    }

    pub async fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.peer.close().await;
    }
}

impl Drop for TestParticipant {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

async fn read_track(
    track: RemoteTrack,
    received: Arc<Mutex<HashMap<String, Received>>>,
    mids: Arc<Mutex<HashMap<String, SubscribedTrack>>>,
    e2ee_keys: Option<SharedKeys>,
) {
    // The keys change as people come and go: rebuilt when their version does.
    let mut decryptor: Option<(u64, Decryptor)> = None;
    // The msid track id is the server's track id.
    let track_id = track.track_id().to_owned();
    let publisher_id = track.stream_id().to_owned();
    let kind = match track.kind() {
        PeerKind::Audio => MediaKind::Audio,
        PeerKind::Video => MediaKind::Video,
    };
    if let Some(mid) = track.mid() {
        let m = mids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = m.get(mid)
            && t.track_id != track_id
        {
            tracing::error!(mid, expected = %t.track_id, got = %track_id, "mid/track mismatch");
        }
    }
    let mut decoder = match ToneDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "opus decoder");
            return;
        }
    };
    let mut pcm = Vec::new();
    loop {
        let Ok(pkt) = track.read_rtp().await else {
            break;
        };
        let now = Instant::now();
        pcm.clear();
        let (mut decrypted, mut failed) = (0, 0);
        if let Some(keys) = &e2ee_keys {
            let k = keys.lock().unwrap_or_else(|e| e.into_inner());
            if decryptor.as_ref().is_none_or(|(v, _)| *v != k.version) {
                let mut d = Decryptor::new();
                for (kid, key) in &k.read {
                    if let Err(e) = d.add_key(CipherSuite::Aes128GcmSha256, *kid, key) {
                        tracing::error!(error = %e, "e2ee key");
                    }
                }
                decryptor = Some((k.version, d));
            }
        }
        let clear = match (&mut decryptor, kind) {
            (Some((_, d)), MediaKind::Audio) => match e2ee::unprotect(d, Codec::Opus, &pkt.payload)
            {
                Ok(frame) => {
                    decrypted = 1;
                    Some(frame)
                }
                Err(_) => {
                    failed = 1;
                    None
                }
            },
            _ => Some(pkt.payload.to_vec()),
        };
        if kind == MediaKind::Audio
            && let Some(frame) = &clear
            && decoder.decode(frame, &mut pcm).is_err()
        {
            tracing::error!("undecodable opus packet");
        }
        let mut all = received.lock().unwrap_or_else(|e| e.into_inner());
        let r = all.entry(track_id.clone()).or_default();
        r.publisher_id.clone_from(&publisher_id);
        r.track_id.clone_from(&track_id);
        r.kind = Some(kind);
        r.ssrc = pkt.ssrc;
        r.packets += 1;
        r.decrypted += decrypted;
        r.decrypt_failures += failed;
        r.first_at.get_or_insert(now);
        r.last_at = Some(now);
        match kind {
            MediaKind::Audio => r.pcm.extend_from_slice(&pcm),
            MediaKind::Video => {
                r.seqs.push(pkt.seq);
                if let Some(info) = Vp8Frames::parse(&pkt.payload) {
                    r.frames += u64::from(info.start_of_frame);
                    if pkt.seq == 1 {
                        r.first_is_keyframe = Some(info.keyframe);
                    }
                    if info.keyframe {
                        r.keyframes.push((now, info.picture_id));
                    }
                }
            }
        }
    }
    if let Some(r) = received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&track_id)
    {
        r.ended = true;
    }
}

/// Opus tone, 20 ms packets, until aborted.
async fn send_tone(track: LocalTrack, hz: f32, sealer: Option<Arc<Sealer>>) {
    let packets = match encode_tone(hz, 250) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "opus encode");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Start near the 16-bit wrap so the server's sequence handling is exercised.
    let mut seq: u16 = 65_000;
    let mut ts: u32 = 0;
    for i in 0.. {
        tick.tick().await;
        let p = &packets[i % packets.len()];
        match &sealer {
            None => {
                let _ = track.write_rtp(seq, ts, false, p).await;
            }
            Some(s) => {
                if let Some(sealed) = s.seal(Codec::Opus, p) {
                    let _ = track.write_rtp(seq, ts, false, &sealed).await;
                }
            }
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(960);
    }
}

/// Grey VP8 frames (`vp8_grey_frame`, which browsers decode) at 15 fps: a
/// keyframe first, every 5 s and on every PLI; sealed with E2EE.
async fn send_video(track: LocalTrack, sealer: Option<Arc<Sealer>>) {
    let mut frames = Vp8Frames::default();
    let mut body = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(66));
    let mut seq: u16 = 65_300;
    let mut ts: u32 = 0;
    let mut answered = track.keyframe_requests();
    for n in 0u64.. {
        tick.tick().await;
        let requests = track.keyframe_requests();
        let keyframe = n % 75 == 0 || requests > answered;
        answered = requests;
        let size = if keyframe { 5000 } else { 1000 };
        vp8_grey_frame(keyframe, size, 320, 180, &mut body);
        let payloads = match &sealer {
            None => frames.packetize(&body),
            Some(s) => match s.seal(Codec::Vp8, &body) {
                Some(sealed) => frames.packetize(&sealed),
                None => Vec::new(),
            },
        };
        let last = payloads.len().saturating_sub(1);
        for (i, p) in payloads.iter().enumerate() {
            let _ = track.write_rtp(seq, ts, i == last, p).await;
            seq = seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(6000);
    }
}

/// A UDP relay between one client and the server that drops every `nth`
/// large RTP packet (video) of its first payload type in one direction.
/// Retransmissions use another payload type (RTX) and are never dropped.
pub struct LossyRelay {
    pub addr: SocketAddr,
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

impl LossyRelay {
    pub async fn start(
        server: SocketAddr,
        lossy: Direction,
        nth: u64,
    ) -> anyhow::Result<LossyRelay> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = front.local_addr()?;
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
            let mut video_pt: Option<u8> = None;
            let mut seen = 0u64;
            let mut drop_it = |d: &[u8]| -> bool {
                // Large RTP packets only.
                if d.len() <= 500 || !stamma_sfu::demux::is_rtp(d) {
                    return false;
                }
                let pt = d[1] & 0x7f;
                if *video_pt.get_or_insert(pt) != pt {
                    return false;
                }
                seen += 1;
                if seen.is_multiple_of(nth) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                false
            };
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if lossy == Direction::ToServer && drop_it(&a[..n]) { continue; }
                        let _ = back.send_to(&a[..n], server).await;
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { return };
                        if lossy == Direction::ToClient && drop_it(&b[..n]) { continue; }
                        if let Some(c) = client {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Ok(LossyRelay {
            addr,
            dropped,
            task,
        })
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
