//! One participant receiving one track.

use std::time::Instant;

use stamma_proto::{MediaKind, VideoQuality};
use str0m::media::{Mid, Pt};

use crate::demux::ParticipantKey;
use crate::forwarder::Forwarder;
use crate::parked_stream::ParkedStream;

/// Where a subscription is in the subscriber's SDP negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Wants an m-line in the next server offer.
    Wanted,
    /// In the server offer awaiting the answer.
    Offered,
    /// Negotiated: packets flow.
    Active,
    /// The track is gone; its m-line is to be stopped in the next offer.
    Removing,
}

#[derive(Debug)]
pub struct Subscription {
    pub track_id: String,
    pub publisher: ParticipantKey,
    pub publisher_id: String,
    /// The track's m-line on the publisher's connection.
    pub source_mid: Mid,
    pub kind: MediaKind,
    /// The m-line on the subscriber's connection, once offered.
    pub mid: Option<Mid>,
    pub state: SubscriptionState,
    /// Whether the subscriber wants packets now (a paused grid tile does not).
    pub enabled: bool,
    /// The subscriber's cap on quality, and the size of its tile.
    pub quality: Option<VideoQuality>,
    pub tile: Option<(u32, u32)>,
    /// Served before the grid when bandwidth is short.
    pub pinned: bool,
    /// The Allocator's choice (index into the track's layers, lowest first);
    /// None: paused because the downlink cannot carry it.
    pub chosen: Option<usize>,
    /// The layer to forward: the chosen one, or the best live layer below it
    /// while the publisher does not send it.
    pub target: Option<usize>,
    /// The layer forwarded now. It changes to `target` on a keyframe of
    /// `target`, so the decoder never sees a switch mid-frame.
    pub current: Option<usize>,
    /// Whether the subscriber was told the track is paused.
    pub paused_sent: bool,
    /// Whether the outgoing str0m stream got its retransmission settings.
    pub stream_configured: bool,
    pub forwarder: Forwarder,
    /// Payload type mapping publisher → subscriber, learned on the first packet.
    pub pt_map: Option<(Pt, Pt)>,
    /// NACKs str0m had counted on the outgoing stream at its last stats report.
    pub nacks_seen: u64,
    /// Frames are being shed until the send queue drains (`send_backlog`).
    pub shedding: bool,
    /// The layer forwarded when shedding began (to count a restart on
    /// another layer as a switch).
    pub shed_layer: Option<usize>,
    /// The outgoing stream, while taken out of str0m for idleness.
    pub parked: Option<ParkedStream>,
    /// When a packet was last written to the outgoing stream (or the stream
    /// was restored, or first looked at idle).
    pub last_sent: Option<Instant>,
    /// The publisher's `SilenceGate` closings this subscription has caught
    /// up with (audio).
    pub gate_closings: u32,
}

impl Subscription {
    pub fn new(
        track_id: String,
        publisher: ParticipantKey,
        publisher_id: String,
        source_mid: Mid,
        kind: MediaKind,
    ) -> Subscription {
        Subscription {
            track_id,
            publisher,
            publisher_id,
            source_mid,
            kind,
            mid: None,
            state: SubscriptionState::Wanted,
            enabled: true,
            quality: None,
            tile: None,
            pinned: false,
            chosen: Some(0),
            target: Some(0),
            current: if kind == MediaKind::Audio {
                Some(0)
            } else {
                None
            },
            paused_sent: false,
            stream_configured: false,
            forwarder: match kind {
                MediaKind::Video => Forwarder::new(true, 90_000),
                MediaKind::Audio => Forwarder::new(false, 48_000),
            },
            pt_map: None,
            nacks_seen: 0,
            shedding: false,
            shed_layer: None,
            parked: None,
            last_sent: None,
            gate_closings: 0,
        }
    }
}
