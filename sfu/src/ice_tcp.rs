//! Passive ICE-TCP (RFC 6544) on a worker's media port, for clients whose
//! networks let no UDP out: the worker listens on TCP at the same address as
//! its UDP socket, and every participant's connection offers a passive TCP
//! host candidate there. Packets are framed with a 2-byte length (RFC 4571).
//!
//! Each TCP connection has a reader task that hands whole packets to the
//! worker and a writer task that takes framed packets from it. A writer
//! that cannot keep up drops packets (as a congested UDP path would); the
//! worker never waits on a socket. This path copies each packet once into a
//! `Vec`: it is the fallback for locked-down networks, not the hot path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

/// Open TCP media connections per worker; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends nothing for this long is closed (ICE consent
/// checks arrive every few seconds on a live one).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest framed packet accepted; media packets stay under the MTU.
pub const MAX_PACKET: usize = 2048;
/// Framed packets queued per connection before new ones are dropped.
const WRITE_QUEUE: usize = 512;
/// What the reader tasks hand to the worker at most at once.
const EVENT_QUEUE: usize = 4096;

pub enum TcpEvent {
    Opened(SocketAddr, mpsc::Sender<Vec<u8>>),
    Packet(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// The worker's side: packets in, framed writes out.
pub struct TcpMedia {
    pub events: mpsc::Receiver<TcpEvent>,
    writers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

impl TcpMedia {
    /// Start accepting on `listener` (inside the worker's runtime).
    pub fn start(listener: TcpListener) -> TcpMedia {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(accept(listener, tx));
        TcpMedia {
            events,
            writers: HashMap::new(),
        }
    }

    /// Track connections; returns a packet to hand to the worker.
    pub fn on_event(&mut self, e: TcpEvent) -> Option<(SocketAddr, Vec<u8>)> {
        match e {
            TcpEvent::Opened(addr, w) => {
                self.writers.insert(addr, w);
                None
            }
            TcpEvent::Closed(addr) => {
                self.writers.remove(&addr);
                None
            }
            TcpEvent::Packet(addr, p) => Some((addr, p)),
        }
    }

    /// Queue `packet` to `to`, framed; false when there is no such
    /// connection or its queue is full (the packet is dropped).
    pub fn send(&self, to: SocketAddr, packet: &[u8]) -> bool {
        let Some(w) = self.writers.get(&to) else {
            return false;
        };
        let Ok(len) = u16::try_from(packet.len()) else {
            return false;
        };
        let mut framed = Vec::with_capacity(packet.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(packet);
        w.try_send(framed).is_ok()
    }

    pub fn connections(&self) -> usize {
        self.writers.len()
    }
}

async fn accept(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "TCP media accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        if open.load(Relaxed) >= MAX_CONNECTIONS {
            debug!(%peer, "too many TCP media connections; closing");
            continue;
        }
        debug!(%peer, "TCP media connection accepted");
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Relaxed);
        let events = events.clone();
        let open = open.clone();
        tokio::spawn(async move {
            connection(stream, peer, events).await;
            open.fetch_sub(1, Relaxed);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, events: mpsc::Sender<TcpEvent>) {
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if events.send(TcpEvent::Opened(peer, wtx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(framed) = wrx.recv().await {
            if wr.write_all(&framed).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let mut len = [0u8; 2];
        let read = async {
            rd.read_exact(&mut len).await?;
            let n = usize::from(u16::from_be_bytes(len));
            if n == 0 || n > MAX_PACKET {
                return Err(std::io::Error::other("bad frame length"));
            }
            rd.read_exact(&mut buf[..n]).await?;
            Ok(n)
        };
        match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(Ok(n)) => {
                if events
                    .send(TcpEvent::Packet(peer, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TCP media connection ended");
                break;
            }
            Err(_) => {
                debug!(%peer, "TCP media connection idle; closing");
                break;
            }
        }
    }
    writer.abort();
    let _ = events.send(TcpEvent::Closed(peer)).await;
}
