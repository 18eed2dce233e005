//! The LoadShedder: what a Worker does when its own thread cannot keep up.
//!
//! A worker that is busy all the time lets datagrams wait in its socket, and
//! then every participant of every room on it gets all media late (measured
//! with the load tester on two cores: a meeting of 50 without simulcast had a
//! p99 latency of 250 ms, the seconds at the top of its rate up to 990 ms).
//! Pausing some video beats delaying all of it: while the worker's duty
//! cycle (the share of wall-clock time it spends working rather than
//! waiting for input) stays high, every subscriber's video budget is capped
//! on top of its bandwidth estimate; the Allocator then pauses what does not
//! fit (the client is told why: `server_load`), speakers and pinned tracks
//! last. Audio is never capped. The cap is cut multiplicatively and lifted
//! slowly, the way a congestion controller treats a link.
//!
//! Sans-IO: the driver reports how long each loop turn worked; the worker
//! asks for the cap when it allocates.

use std::time::{Duration, Instant};

/// Duty cycle is judged over windows of this length.
pub const WINDOW: Duration = Duration::from_millis(500);
/// Above this duty cycle (percent) the worker is saturated: input waits.
pub const HIGH_DUTY_PCT: u64 = 80;
/// Consecutive saturated windows before a cut: a burst of joins (SDP work
/// on the worker) is no reason to pause anyone's video.
pub const HIGH_WINDOWS: u32 = 2;
/// Below this the cap is raised again.
pub const LOW_DUTY_PCT: u64 = 55;
/// A cut keeps this share (percent) of what subscribers received.
pub const CUT_PCT: u64 = 75;
/// A raise adds this share (percent) of the cap.
pub const RAISE_PCT: u64 = 10;
/// After a change, the next judgement waits this long: a cut takes effect
/// at the next allocation (within a tick) and its keyframes must pass.
pub const SETTLE: Duration = Duration::from_secs(1);
/// After a cut, raises stop at this share (percent) of what subscribers
/// received when the worker saturated, for [`CEILING_MEMORY`]; then they
/// go on past it (the room may have changed). Without it the cap climbed
/// straight back into saturation and every climb cost a latency spike.
pub const CEILING_PCT: u64 = 90;
pub const CEILING_MEMORY: Duration = Duration::from_secs(20);
/// The cap never goes below this (bit/s). The worker also keeps each
/// subscriber's cap above what its speaker and pinned videos need at their
/// lowest layer, which a fixed floor cannot know.
pub const FLOOR_BPS: u64 = 250_000;

/// What subscribers of this worker receive, computed at a window's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VideoLoad {
    /// Mean video rate allocated per subscriber that receives video.
    pub mean_used_bps: u64,
    /// The largest video rate any subscriber wants.
    pub max_wanted_bps: u64,
}

/// What a closed window changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The cap was set or lowered.
    Cut(u64),
    /// The cap was raised.
    Raised(u64),
    /// The cap was removed.
    Lifted,
}

#[derive(Debug)]
pub struct LoadShedder {
    window_start: Option<Instant>,
    busy: Duration,
    cap: Option<u64>,
    /// No judgement before this.
    settle_until: Option<Instant>,
    /// Duty cycle (percent) of the last closed window.
    last_duty_pct: u64,
    /// Saturated windows in a row, up to now.
    high_streak: u32,
    /// What subscribers received at the last cut, and when.
    ceiling: Option<(u64, Instant)>,
}

impl Default for LoadShedder {
    fn default() -> Self {
        LoadShedder::new()
    }
}

impl LoadShedder {
    pub fn new() -> LoadShedder {
        LoadShedder {
            window_start: None,
            busy: Duration::ZERO,
            cap: None,
            settle_until: None,
            last_duty_pct: 0,
            high_streak: 0,
            ceiling: None,
        }
    }

    /// The video budget every subscriber is held to now, if any.
    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// Duty cycle (percent) of the last closed window.
    pub fn last_duty_pct(&self) -> u64 {
        self.last_duty_pct
    }

    /// One loop turn worked `busy` and ended at `now`. At a window's end the
    /// duty cycle is judged; `load` is asked only then.
    pub fn record(
        &mut self,
        now: Instant,
        busy: Duration,
        load: impl FnOnce() -> VideoLoad,
    ) -> Option<Change> {
        let start = *self.window_start.get_or_insert(now);
        self.busy += busy;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW {
            return None;
        }
        let duty = (self.busy.as_micros() * 100 / elapsed.as_micros().max(1)).min(100) as u64;
        self.last_duty_pct = duty;
        self.window_start = Some(now);
        self.busy = Duration::ZERO;
        self.high_streak = if duty >= HIGH_DUTY_PCT {
            self.high_streak.saturating_add(1)
        } else {
            0
        };
        if self.settle_until.is_some_and(|t| now < t) {
            return None;
        }
        let change = self.judge(now, duty, load())?;
        self.settle_until = Some(now + SETTLE);
        Some(change)
    }

    fn judge(&mut self, now: Instant, duty: u64, load: VideoLoad) -> Option<Change> {
        if duty >= HIGH_DUTY_PCT {
            if self.high_streak < HIGH_WINDOWS {
                return None;
            }
            // Cut from what subscribers actually get (a cap far above it
            // would take several cuts to bite).
            let received = match self.cap {
                Some(c) => c.min(load.mean_used_bps),
                None => load.mean_used_bps,
            };
            if received == 0 && self.cap.is_none() {
                // Saturated by something other than video: nothing to shed.
                return None;
            }
            let cut = (received / 100 * CUT_PCT).max(FLOOR_BPS);
            if self.cap.is_some_and(|c| c <= cut) {
                return None;
            }
            self.cap = Some(cut);
            self.ceiling = Some((received, now));
            return Some(Change::Cut(cut));
        }
        let cap = self.cap?;
        if duty > LOW_DUTY_PCT {
            return None;
        }
        let mut raised = cap + (cap / 100 * RAISE_PCT).max(50_000);
        if let Some((level, at)) = self.ceiling {
            if now.saturating_duration_since(at) < CEILING_MEMORY {
                raised = raised.min(level / 100 * CEILING_PCT);
                if raised <= cap {
                    return None;
                }
            } else {
                self.ceiling = None;
            }
        }
        if raised >= load.max_wanted_bps {
            self.cap = None;
            return Some(Change::Lifted);
        }
        self.cap = Some(raised);
        Some(Change::Raised(raised))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOAD: VideoLoad = VideoLoad {
        mean_used_bps: 4_000_000,
        max_wanted_bps: 12_000_000,
    };

    /// Runs `windows` windows of 10 turns each at `duty` percent from `t`.
    fn run(s: &mut LoadShedder, t: &mut Instant, windows: u32, duty: u32) -> Vec<Change> {
        let turn = WINDOW / 10;
        let mut changes = Vec::new();
        // Opens the first window at `t` (a no-op later: no time passes).
        assert_eq!(s.record(*t, Duration::ZERO, || LOAD), None);
        for _ in 0..windows * 10 {
            *t += turn;
            if let Some(c) = s.record(*t, turn * duty / 100, || LOAD) {
                changes.push(c);
            }
        }
        changes
    }

    #[test]
    fn an_idle_worker_never_caps() {
        let (mut s, mut t) = (LoadShedder::new(), Instant::now());
        assert!(run(&mut s, &mut t, 20, 50).is_empty());
        assert_eq!(s.cap(), None);
        assert_eq!(s.last_duty_pct(), 50);
    }

    #[test]
    fn a_saturated_worker_cuts_from_what_subscribers_get_then_waits() {
        let (mut s, mut t) = (LoadShedder::new(), Instant::now());
        // One saturated window is a burst, not saturation.
        assert!(run(&mut s, &mut t, 1, 95).is_empty());
        assert!(run(&mut s, &mut t, 1, 50).is_empty());
        // Two in a row cut; the next one is in the settle time.
        let changes = run(&mut s, &mut t, 3, 95);
        assert_eq!(changes, [Change::Cut(3_000_000)]);
        // Still saturated: cut again from the cap, never below the floor.
        let changes = run(&mut s, &mut t, 40, 95);
        assert_eq!(changes[0], Change::Cut(2_250_000));
        assert_eq!(s.cap(), Some(FLOOR_BPS));
    }

    #[test]
    fn the_cap_rises_slowly_once_the_worker_has_time_and_is_lifted_at_the_top() {
        let (mut s, mut t) = (LoadShedder::new(), Instant::now());
        run(&mut s, &mut t, 2, 90);
        assert_eq!(s.cap(), Some(3_000_000));
        // In between: held.
        assert!(run(&mut s, &mut t, 6, 70).is_empty());
        let changes = run(&mut s, &mut t, 4, 30);
        // Up by a tenth, but not past 90 % of the 4 Mbit/s that saturated it.
        assert_eq!(
            changes,
            [Change::Raised(3_300_000), Change::Raised(3_600_000)]
        );
        // Held there while the worker remembers that level...
        assert!(run(&mut s, &mut t, 20, 30).is_empty());
        assert_eq!(s.cap(), Some(3_600_000));
        // ...then raised until what the subscribers want fits, and lifted.
        let changes = run(&mut s, &mut t, 60, 30);
        assert_eq!(changes.last(), Some(&Change::Lifted));
        assert_eq!(s.cap(), None);
    }

    #[test]
    fn saturation_without_video_sheds_nothing() {
        let (mut s, mut t) = (LoadShedder::new(), Instant::now());
        let turn = WINDOW / 10;
        for _ in 0..100 {
            t += turn;
            assert_eq!(s.record(t, turn, VideoLoad::default), None);
        }
        assert_eq!(s.cap(), None);
    }

    #[test]
    fn long_turns_count_whole() {
        // One turn longer than the window (a stalled thread) is 100 %.
        let (mut s, t) = (LoadShedder::new(), Instant::now());
        s.record(t, Duration::ZERO, || LOAD);
        assert_eq!(s.record(t + 2 * WINDOW, 2 * WINDOW, || LOAD), None);
        let c = s.record(t + 4 * WINDOW, 2 * WINDOW, || LOAD);
        assert_eq!(c, Some(Change::Cut(3_000_000)));
        assert_eq!(s.last_duty_pct(), 100);
    }
}
