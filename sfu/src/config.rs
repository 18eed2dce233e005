use std::net::IpAddr;
use std::time::Duration;

/// Media plane settings.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Address the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Address announced in ICE candidates (the public address behind NAT);
    /// `None` announces `bind_ip`.
    pub public_ip: Option<IpAddr>,
    /// UDP port of the first worker; worker `i` takes `first_port + i`.
    /// 0 lets the OS choose a port per worker (tests).
    pub first_port: u16,
    /// Number of workers (threads, one UDP socket each).
    pub workers: usize,
    /// Most participants one room admits.
    pub max_participants_per_room: usize,
    /// A participant whose media connection has not come up (or has been lost)
    /// for this long is removed.
    pub media_timeout: Duration,
    /// Choose each subscriber's simulcast layers from its estimated downlink
    /// (and pause what does not fit). `false` forwards every track's top
    /// layer to everyone: the behaviour of an SFU without an allocator, kept
    /// for comparison runs.
    pub allocator: bool,
    /// When a worker's thread is saturated, cap every subscriber's video
    /// (pausing what does not fit) rather than delay all media on it; see
    /// `load_shedder`. Needs the allocator.
    pub load_shedding: bool,
    /// Do not forward the audio of idle microphones (`silence_gate`).
    pub silence_gate: bool,
    /// Ask clients to send Opus with DTX (`usedtx=1` in our SDP).
    pub opus_dtx: bool,
    /// Downlink estimate a new subscriber starts from, before feedback.
    pub bwe_initial_kbps: u32,
    /// Where room, participant and track events go (webhooks).
    pub events: crate::EventSink,
    /// Also listen on TCP at each worker's media address and offer a passive
    /// ICE-TCP candidate there, for clients whose networks block UDP.
    pub ice_tcp: bool,
    /// Records what the workers forward (end-to-end tests only).
    #[cfg(feature = "test-tap")]
    pub tap: Option<std::sync::Arc<crate::tap::MediaTap>>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            public_ip: None,
            first_port: 7881,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_participants_per_room: 250,
            media_timeout: Duration::from_secs(30),
            allocator: true,
            load_shedding: true,
            silence_gate: true,
            opus_dtx: true,
            bwe_initial_kbps: 1_000,
            events: crate::EventSink::default(),
            ice_tcp: true,
            #[cfg(feature = "test-tap")]
            tap: None,
        }
    }
}
