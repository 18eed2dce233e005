//! Outgoing streams with nothing to send are taken out of str0m ("parked")
//! and put back on their next packet.
//!
//! str0m walks every outgoing stream of a connection on every timeout (send
//! queue snapshots, sender reports, the pacer's queue states), and a
//! connection gets a timeout per received packet and per batch forwarded to
//! it. A subscriber in a meeting of 50 has ~100 outgoing streams, but the
//! Allocator pauses most of its video and muted microphones send nothing:
//! those idle streams were most of the server's CPU. The m-line, SSRC and RTX
//! SSRC stay as negotiated, so the subscriber sees the same stream when it
//! resumes; our forwarder numbers packets itself, so sequence numbers and
//! timestamps stay continuous across a park.
//!
//! str0m makes a stream (with a new SSRC) for every sending m-line that has
//! none whenever an offer or answer is applied, so parked streams are
//! restored before any SDP change ([`restore_all`]).

use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::Mid;
use str0m::rtp::Ssrc;

use crate::subscription::Subscription;

/// Idle this long, a stream is parked. Longer than any repair is useful
/// (NACKs for older packets would be answered with stale video).
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// What is needed to put a parked stream back exactly as it was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedStream {
    pub ssrc: Ssrc,
    pub rtx: Option<Ssrc>,
}

impl ParkedStream {
    /// Take `mid`'s outgoing stream out of `rtc` if nothing waits in its send
    /// queue. None: no such stream, or it still has packets to send.
    pub fn park(rtc: &mut Rtc, mid: Mid) -> Option<ParkedStream> {
        let mut api = rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None)?;
        if tx.queue_info().is_some_and(|q| q.packet_count() > 0) {
            return None;
        }
        let parked = ParkedStream {
            ssrc: tx.ssrc(),
            rtx: tx.rtx(),
        };
        api.remove_stream_tx(parked.ssrc);
        Some(parked)
    }

    /// Put the stream back. False if its m-line is gone (then there is
    /// nothing to restore it to).
    pub fn restore(self, rtc: &mut Rtc, mid: Mid) -> bool {
        // str0m's declare panics on an unknown mid.
        if rtc.media(mid).is_none() {
            return false;
        }
        rtc.direct_api()
            .declare_stream_tx(self.ssrc, self.rtx, mid, None);
        true
    }
}

/// Restore every parked stream of a connection (before an SDP change).
pub fn restore_all(rtc: &mut Rtc, subscriptions: &mut [Subscription]) {
    for s in subscriptions {
        if let Some(mid) = s.mid {
            unpark(rtc, s, mid);
        }
    }
}

/// Put `s`'s stream (on m-line `mid`) back if it is parked, before anything
/// is written to it. True if it was parked.
pub fn unpark(rtc: &mut Rtc, s: &mut Subscription, mid: Mid) -> bool {
    let Some(parked) = s.parked.take() else {
        return false;
    };
    // The restored stream has str0m's default retransmission cache.
    s.stream_configured = false;
    parked.restore(rtc, mid);
    true
}

/// Park the streams of `subscriptions` that have sent nothing for
/// [`PARK_AFTER`]. Returns how many were parked.
pub fn park_idle(rtc: &mut Rtc, subscriptions: &mut [Subscription], now: Instant) -> usize {
    let mut parked = 0;
    for s in subscriptions {
        let Some(mid) = s.mid else { continue };
        if s.parked.is_some() {
            continue;
        }
        // First sighting starts the idle clock: a stream that never sent is
        // parked PARK_AFTER after it was first looked at.
        let last = *s.last_sent.get_or_insert(now);
        if now.saturating_duration_since(last) < PARK_AFTER {
            continue;
        }
        if let Some(p) = ParkedStream::park(rtc, mid) {
            s.parked = Some(p);
            parked += 1;
        }
    }
    parked
}
