//! An in-memory meeting: one sans-IO [`Worker`] and str0m client peers,
//! datagrams handed between them in process. No sockets, no threads, so the
//! forwarding path can be measured and tested deterministically.
//!
//! Addresses come from 198.18.0.0/15 but nothing is ever sent on a network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stamma_client::media::Vp8Frames;
use stamma_proto::{
    ClientSignal, MediaKind as WireKind, PublishedTrack, Role, ServerSignal, TrackSource,
};
use stamma_sfu::{Command, JoinRequest, SfuConfig, ToParticipant, Worker};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::sync::mpsc;

/// One simulated participant.
pub struct SimPeer {
    pub id: String,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    signals: mpsc::Receiver<ToParticipant>,
    pending: Option<SdpPendingOffer>,
    pub connected: bool,
    /// RTP packets received, per mid.
    pub received: HashMap<Mid, u64>,
    /// The first payload received, per mid.
    pub first_payload: HashMap<Mid, Vec<u8>>,
    /// Payloads in arrival order, per mid.
    pub payloads: HashMap<Mid, Vec<Vec<u8>>>,
    /// Track ids of the subscriptions the server offered.
    pub subscribed: Vec<String>,
    video_mid: Option<Mid>,
    seq: u64,
    timestamp: u32,
}

/// A worker with its peers.
pub struct SimRoom {
    pub worker: Worker,
    pub server: SocketAddr,
    pub peers: Vec<SimPeer>,
    frames: Vp8Frames,
    /// Datagrams in flight: (from, to, bytes).
    wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl SimRoom {
    pub fn new() -> anyhow::Result<SimRoom> {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .context("certificate")?;
        let server: SocketAddr = "198.18.0.1:7881".parse()?;
        // Without the Allocator there is no estimator and no pacer, so a
        // packet written is a packet sent: what these tests and the
        // forwarding bench measure. The Allocator is tested on the virtual
        // clock in `netsim`.
        let config = SfuConfig {
            max_participants_per_room: 1000,
            allocator: false,
            ..SfuConfig::default()
        };
        Ok(SimRoom {
            worker: Worker::new(config, server, server, cert, Instant::now()),
            server,
            peers: Vec::new(),
            frames: Vp8Frames::default(),
            wire: Vec::new(),
        })
    }

    /// Add a participant; a publisher offers one VP8 track.
    pub fn join(&mut self, publish_video: bool) -> anyhow::Result<usize> {
        let n = self.peers.len();
        let now = Instant::now();
        let addr = SocketAddr::from(([198, 18, 1 + (n / 250) as u8, 1 + (n % 250) as u8], 5000));
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp")?);
        let (tx, rx) = mpsc::channel(4096);
        let id = format!("PA_sim{n}");
        self.worker.handle_command(
            now,
            Command::Join(Box::new(JoinRequest {
                participant_id: id.clone(),
                room: "sim".into(),
                identity: format!("sim{n}"),
                name: None,
                role: Role::Speaker,
                can_publish: true,
                can_subscribe: true,
                can_admin: false,
                signals: tx,
                room_options: Default::default(),
            })),
        );
        let mut peer = SimPeer {
            id,
            addr,
            rtc,
            signals: rx,
            pending: None,
            connected: false,
            received: HashMap::new(),
            first_payload: HashMap::new(),
            payloads: HashMap::new(),
            subscribed: Vec::new(),
            video_mid: None,
            seq: 1,
            timestamp: 0,
        };
        if publish_video {
            let mut api = peer.rtc.sdp_api();
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply().context("offer")?;
            peer.pending = Some(pending);
            peer.video_mid = Some(mid);
            self.worker.handle_command(
                now,
                Command::Signal {
                    participant_id: peer.id.clone(),
                    signal: ClientSignal::Offer {
                        sdp: offer.to_sdp_string(),
                        tracks: vec![PublishedTrack {
                            mid: mid.to_string(),
                            kind: WireKind::Video,
                            source: TrackSource::Camera,
                            width: None,
                            height: None,
                        }],
                    },
                },
            );
        }
        self.peers.push(peer);
        Ok(n)
    }

    /// Exchange signals and datagrams until everyone is connected and every
    /// subscription is negotiated, within `limit` of real time.
    pub fn settle(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let moved = self.step()?;
            let done = self.peers.iter().all(|p| p.connected)
                && self.peers.iter().all(|p| p.pending.is_none());
            if done && moved == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not settled: {} of {} connected",
                    self.peers.iter().filter(|p| p.connected).count(),
                    self.peers.len()
                );
            }
            if moved == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// One round: signals, peer outputs, server inputs and outputs, timers.
    /// Returns how many datagrams moved.
    pub fn step(&mut self) -> anyhow::Result<usize> {
        let now = Instant::now();
        self.worker.handle_timeout(now);
        for i in 0..self.peers.len() {
            self.signals(i, now)?;
            self.poll_peer(i, now)?;
        }
        let mut moved = 0;
        for (from, to, data) in std::mem::take(&mut self.wire) {
            moved += 1;
            if to == self.server {
                self.worker.handle_datagram(now, from, &data);
            }
        }
        self.worker.flush(now);
        let out: Vec<_> = self.worker.outbox().drain(..).collect();
        for t in out {
            moved += 1;
            if let Some(p) = self.peers.iter_mut().find(|p| p.addr == t.destination) {
                let r = Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)?;
                p.rtc.handle_input(Input::Receive(now, r))?;
            }
        }
        Ok(moved)
    }

    fn signals(&mut self, i: usize, now: Instant) -> anyhow::Result<()> {
        while let Ok(m) = self.peers[i].signals.try_recv() {
            let ToParticipant::Signal(s) = m else {
                bail!("peer {i} was closed: {m:?}");
            };
            let p = &mut self.peers[i];
            match s {
                ServerSignal::Offer { id, sdp, tracks } => {
                    for t in tracks {
                        if !p.subscribed.contains(&t.track_id) {
                            p.subscribed.push(t.track_id);
                        }
                    }
                    if p.pending.is_some() {
                        continue; // our own offer wins
                    }
                    let answer = p
                        .rtc
                        .sdp_api()
                        .accept_offer(SdpOffer::from_sdp_string(&sdp)?)?;
                    let cmd = Command::Signal {
                        participant_id: p.id.clone(),
                        signal: ClientSignal::Answer {
                            id,
                            sdp: answer.to_sdp_string(),
                        },
                    };
                    self.worker.handle_command(now, cmd);
                }
                ServerSignal::Answer { sdp, .. } => {
                    if let Some(pending) = p.pending.take() {
                        p.rtc
                            .sdp_api()
                            .accept_answer(pending, SdpAnswer::from_sdp_string(&sdp)?)?;
                    }
                }
                ServerSignal::Error { code, message } => bail!("peer {i}: {code:?}: {message}"),
                _ => {}
            }
        }
        Ok(())
    }

    fn poll_peer(&mut self, i: usize, now: Instant) -> anyhow::Result<()> {
        let p = &mut self.peers[i];
        p.rtc.handle_input(Input::Timeout(now))?;
        loop {
            match p.rtc.poll_output()? {
                Output::Timeout(_) => break,
                Output::Transmit(t) => self.wire.push((p.addr, t.destination, t.contents.into())),
                Output::Event(Event::Connected) => p.connected = true,
                Output::Event(Event::RtpPacket(pkt)) => {
                    let mid = p
                        .rtc
                        .direct_api()
                        .stream_rx(&pkt.header.ssrc)
                        .map(|s| s.mid());
                    if let Some(mid) = mid {
                        *p.received.entry(mid).or_default() += 1;
                        p.first_payload
                            .entry(mid)
                            .or_insert_with(|| pkt.payload.to_vec());
                        p.payloads
                            .entry(mid)
                            .or_default()
                            .push(pkt.payload.to_vec());
                    }
                }
                Output::Event(_) => {}
            }
        }
        Ok(())
    }

    /// The publisher `i` writes one VP8 packet (a keyframe start when `keyframe`)
    /// and polls it onto the wire. Returns false if its stream is not ready.
    pub fn publish_packet(&mut self, i: usize, keyframe: bool, size: usize) -> bool {
        let now = Instant::now();
        let payload = self
            .frames
            .frame(keyframe, size)
            .into_iter()
            .next()
            .unwrap_or_default();
        let p = &mut self.peers[i];
        let Some(mid) = p.video_mid else { return false };
        let Some(pt) = p
            .rtc
            .codec_config()
            .find(|c| c.spec().codec == Codec::Vp8)
            .map(|c| c.pt())
        else {
            return false;
        };
        let mut api = p.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        tx.write_rtp(
            RtpWrite::new(pt, p.seq.into(), p.timestamp, now, payload)
                .marker(true)
                .nackable(true),
        );
        p.seq += 1;
        p.timestamp = p.timestamp.wrapping_add(3000);
        // str0m sends queued RTP when its clock advances.
        if p.rtc.handle_input(Input::Timeout(now)).is_err() {
            return false;
        }
        while let Ok(o) = p.rtc.poll_output() {
            match o {
                Output::Timeout(_) => break,
                Output::Transmit(t) => self.wire.push((p.addr, t.destination, t.contents.into())),
                Output::Event(_) => {}
            }
        }
        true
    }

    /// Hand the wire to the server only (no delivery to peers); returns the
    /// number of datagrams the server produced. The hot path, isolated.
    pub fn server_round(&mut self) -> usize {
        let now = Instant::now();
        for (from, to, data) in self.wire.drain(..) {
            if to == self.server {
                self.worker.handle_datagram(now, from, &data);
            }
        }
        self.worker.flush(now);
        // As the driver does: a timeout that is due runs before the next receive.
        if self.worker.next_timeout(now) <= now {
            self.worker.handle_timeout(now);
        }
        let out = self.worker.outbox();
        let n = out.len();
        out.clear();
        n
    }

    /// Participant `i` sends a signal to the server.
    pub fn signal(&mut self, i: usize, signal: ClientSignal) {
        let cmd = Command::Signal {
            participant_id: self.peers[i].id.clone(),
            signal,
        };
        self.worker.handle_command(Instant::now(), cmd);
    }

    /// Packets received per peer on all mids.
    pub fn received(&self, i: usize) -> u64 {
        self.peers[i].received.values().sum()
    }
}
