//! One participant receiving one track.

use stamma_proto::MediaKind;
use str0m::media::{Mid, Pt};

use crate::demux::ParticipantKey;
use crate::forwarder::Forwarder;

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
    /// Which simulcast layer is forwarded (index into the track's layers).
    pub layer: usize,
    /// Whether the subscriber wants packets now (a paused grid tile does not).
    pub enabled: bool,
    pub forwarder: Forwarder,
    /// Payload type mapping publisher → subscriber, learned on the first packet.
    pub pt_map: Option<(Pt, Pt)>,
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
            layer: 0,
            enabled: true,
            forwarder: Forwarder::new(kind == MediaKind::Video),
            pt_map: None,
        }
    }
}
