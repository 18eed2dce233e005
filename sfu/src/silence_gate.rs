//! The SilenceGate: the audio packets of an idle microphone are not
//! forwarded.
//!
//! In a meeting of 50 nearly every microphone is open and nearly every one
//! is idle, yet each keeps sending: Opus DTX comfort noise every 400 ms, or
//! 50 packets a second from a browser that does not use DTX. Every such
//! packet goes to every subscriber. Measured with the load tester on two
//! cores (`meeting-50 --simulcast`, 30 s): without the gate the server
//! forwarded 21,500 packets/s at 45 % of a core; with it 13,900-15,200 at
//! 26-32 %, for as much video (docs/measurements.md, Capacity).
//!
//! The gate is judged once per packet of a published audio track, from the
//! RFC 6464 level in the RTP header (in the clear also with end-to-end
//! encryption, which the active-speaker detection relies on already), so
//! it costs one comparison per packet and nothing per subscriber. It closes
//! after [`HANGOVER`] without a voiced packet and opens at the first one.
//! Packets without a level are always forwarded: nothing says they are
//! silent.
//!
//! Subscribers see one continuous stream: each time the gate closes, their
//! forwarders start a new segment at the next packet they forward, so
//! sequence numbers go on without a gap (no loss to report, nothing to
//! NACK) and the timestamp carries the pause, as after DTX.

use std::time::{Duration, Instant};

use crate::speaker::SILENCE_DB;

/// How long a track stays open after its last voiced packet: pauses between
/// words (up to a few hundred milliseconds) and the fading end of a word
/// pass, so speech is never clipped; only a microphone idle for longer is
/// gated.
pub const HANGOVER: Duration = Duration::from_millis(600);

#[derive(Debug, Clone, Default)]
pub struct SilenceGate {
    last_voiced: Option<Instant>,
    open: bool,
    /// Whether the last packet carried a level.
    levelled: bool,
    /// How often the gate closed; a subscription that last saw another
    /// count restarts its forwarder.
    closings: u32,
}

impl SilenceGate {
    /// Whether a packet whose level is `attenuation` dB below full scale
    /// (`None`: the packet has no level) is forwarded.
    pub fn admit(&mut self, now: Instant, attenuation: Option<u8>) -> bool {
        self.levelled = attenuation.is_some();
        match attenuation {
            Some(db) if db < SILENCE_DB => {
                self.last_voiced = Some(now);
                self.open = true;
            }
            Some(_) => {
                let hanging = self
                    .last_voiced
                    .is_some_and(|t| now.saturating_duration_since(t) < HANGOVER);
                if !hanging && self.open {
                    self.open = false;
                    self.closings = self.closings.wrapping_add(1);
                }
            }
            None => self.open = true,
        }
        self.open
    }

    /// Whether the last packet was forwarded.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether the last packet carried a level: without one the gate
    /// stays open, and judges nothing.
    pub fn is_levelled(&self) -> bool {
        self.levelled
    }

    pub fn closings(&self) -> u32 {
        self.closings
    }

    /// Whether this microphone, its gate still open, has stopped talking
    /// because someone else started: no voiced packet for `quiet`, and
    /// another gate in the room opened (at `last_opening`) after its last
    /// one. A lone speaker's pauses between words never count, however
    /// long: nobody took over.
    pub fn handed_over(
        &self,
        now: Instant,
        quiet: Duration,
        last_opening: Option<Instant>,
    ) -> bool {
        self.last_voiced.is_some_and(|voiced| {
            now.saturating_duration_since(voiced) >= quiet
                && last_opening.is_some_and(|opened| opened > voiced)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const VOICED: Option<u8> = Some(30);
    const QUIET: Option<u8> = Some(SILENCE_DB);

    #[test]
    fn an_idle_microphone_is_gated_until_it_speaks() {
        let t0 = Instant::now();
        let mut g = SilenceGate::default();
        assert!(!g.admit(t0, QUIET), "never voiced: nothing to forward");
        assert!(!g.admit(t0 + 400 * MS, Some(127)));
        assert_eq!(g.closings(), 0, "it never was open");
        assert!(g.admit(t0 + 420 * MS, VOICED));
        assert!(g.open);
    }

    #[test]
    fn pauses_shorter_than_the_hangover_pass_and_a_longer_one_closes_once() {
        let t0 = Instant::now();
        let mut g = SilenceGate::default();
        assert!(g.admit(t0, VOICED));
        // A pause between words: all of it passes.
        for ms in (20..HANGOVER.as_millis() as u32).step_by(20) {
            assert!(g.admit(t0 + ms * MS, QUIET), "{ms} ms into the pause");
        }
        assert!(!g.admit(t0 + HANGOVER, QUIET));
        assert!(!g.admit(t0 + HANGOVER + 400 * MS, QUIET));
        assert_eq!(g.closings(), 1, "closed once, not per packet");
        assert!(!g.open);
        // Speech again, then silence again: a second closing.
        let t1 = t0 + 2 * HANGOVER;
        assert!(g.admit(t1, VOICED));
        assert!(g.admit(t1 + 20 * MS, QUIET));
        assert!(!g.admit(t1 + HANGOVER, QUIET));
        assert_eq!(g.closings(), 2);
    }

    #[test]
    fn a_voice_hands_over_only_when_another_starts_after_its_last_word() {
        let t0 = Instant::now();
        let quiet = 60 * MS;
        let mut g = SilenceGate::default();
        assert!(!g.handed_over(t0, quiet, Some(t0)), "never voiced");
        assert!(g.admit(t0, VOICED));
        // A lone speaker's pause, however long (within the hangover).
        assert!(g.admit(t0 + 500 * MS, QUIET));
        assert!(!g.handed_over(t0 + 500 * MS, quiet, None));
        // Someone who started before the last word took nothing over.
        assert!(!g.handed_over(t0 + 500 * MS, quiet, Some(t0 - MS)));
        assert!(!g.handed_over(t0 + 500 * MS, quiet, Some(t0)));
        // Someone started after it: handed over once quiet long enough.
        assert!(g.handed_over(t0 + 60 * MS, quiet, Some(t0 + 20 * MS)));
        assert!(!g.handed_over(t0 + 59 * MS, quiet, Some(t0 + 20 * MS)));
        // Talking again takes the turn back.
        assert!(g.admit(t0 + 520 * MS, VOICED));
        assert!(!g.handed_over(t0 + 600 * MS, quiet, Some(t0 + 20 * MS)));
    }

    #[test]
    fn packets_without_a_level_always_pass() {
        let t0 = Instant::now();
        let mut g = SilenceGate::default();
        assert!(g.admit(t0, None));
        assert!(g.open);
        assert!(!g.is_levelled());
        // A silent level after them closes at once: nothing voiced to hang on.
        assert!(!g.admit(t0 + 20 * MS, QUIET));
        assert!(g.is_levelled());
        assert_eq!(g.closings(), 1);
        assert!(g.admit(t0 + 40 * MS, None));
        assert!(!g.is_levelled());
    }
}
