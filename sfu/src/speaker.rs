//! Active-speaker detection from the RFC 6464 audio-level header extension.
//!
//! Sans-IO: the worker feeds one level per received Opus packet and calls
//! [`SpeakerDetector::tick`] about every 100 ms; no audio is decoded (the SFU
//! could not: the payload is end-to-end encrypted, the header extension is not).
//!
//! How it decides:
//! - Levels are kept in the dB domain, as "dB above the noise floor"
//!   ([`SILENCE_DB`] minus the attenuation). Averaging dB rather than linear
//!   power keeps one loud syllable from dominating a window, and makes margins
//!   plain additive dB.
//! - Each key has a small fixed ring of 100 ms buckets (packet counts and the
//!   sum of the speech levels in it). Observing a packet touches one bucket; nothing allocates.
//!   Windows are read at tick time by bucket index, so a sender that stops
//!   sending (DTX) decays by elapsed time, not by packet count: its buckets
//!   simply age out.
//! - A packet at least [`VOICED_MIN_DB`] above the floor is *speech*; a bucket
//!   is *voiced* when at least a third of its packets are speech. A key's
//!   loudness is the mean over its speech packets only, so a sender that keeps
//!   sending silence in its pauses is not rated quieter than one using DTX.
//!   A key is *speaking* when 2 of its last 5 buckets are voiced: short pauses
//!   between syllables do not drop it, and it stops ~0.5 s after the last word.
//! - The floor (dominant speaker) moves only when the holder is not speaking,
//!   or a challenger has talked for most of the last second (7 of 10 buckets,
//!   roughly 600+ ms of speech) and is clearly louder ([`CHALLENGE_MARGIN_DB`])
//!   or the holder has barely talked. A one-word interjection cannot meet that,
//!   however loud it is.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Width of one history bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Attenuation (dB below full scale) at and above which a packet counts as
/// silence. Speech is typically -20 to -50 dBov; comfort noise and quiet rooms
/// sit at -70 dBov and below, and must never make anyone a speaker.
pub const SILENCE_DB: u8 = 70;
/// A packet at least this many dB above [`SILENCE_DB`] (louder than -60 dBov)
/// carries speech.
pub const VOICED_MIN_DB: u8 = 10;
/// A challenger must be this much louder than the holder to take the floor
/// while the holder keeps talking: 4 dB is ~2.5x the power, clearly audible,
/// and well above the error of a one-second mean of jittery levels (< 1 dB).
pub const CHALLENGE_MARGIN_DB: f32 = 4.0;
/// Among the non-dominant speakers, one moves ahead of another only when this
/// much louder, so two similar voices do not reorder the list (and signal
/// everyone) on every tick.
pub const ORDER_MARGIN_DB: f32 = 3.0;
/// More keys than a worker has audio tracks; past it new keys are ignored so
/// that a flood of new ids cannot grow memory.
pub const MAX_KEYS: usize = 1024;
/// Longest speaker list reported: clients highlight a few speakers, and a
/// room full of open microphones must not produce huge signals for everyone.
pub const MAX_LISTED: usize = 16;

/// Buckets in the long window (1 s) used for the floor decision.
const LONG_BUCKETS: u64 = 10;
/// Buckets in the short window (500 ms) used for "speaking now".
const SHORT_BUCKETS: u64 = 5;
/// Voiced buckets in the short window to count as speaking: 2 tolerates
/// pauses between syllables and words, 1 would let a cough or a click through.
const SPEAKING_VOICED: u8 = 2;
/// Voiced buckets in the long window a challenger needs. Bucket edges round a
/// word up by up to 100 ms at each end, so 7 touched buckets means roughly
/// 600 ms of speech or more; a word of ~500 ms or less never gets there.
const CHALLENGE_VOICED: u8 = 7;
/// A holder with at most this many voiced buckets in the long window (back-
/// channel "mm"s) yields to a challenger who talks, whatever the levels.
const HOLDER_SPARSE_VOICED: u8 = 3;
/// The current, still filling bucket plus the long window, plus slack so that
/// slightly late packets still land in their own bucket.
const RING: usize = 12;
const EMPTY: u64 = u64::MAX;

/// Converts str0m's `ext_vals.audio_level` to attenuation in dB (0 loudest,
/// 127 silence). str0m 0.25 stores the RFC 6464 value negated (0 to -127,
/// i.e. dBov); taking the magnitude accepts either sign.
pub fn attenuation_db(audio_level: i8) -> u8 {
    audio_level.unsigned_abs().min(127)
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Absolute bucket index since the detector's origin; [`EMPTY`] if unused.
    idx: u64,
    /// Sum of dB above the floor over the speech packets in this bucket.
    sum: u32,
    speech: u16,
    /// All packets, speech or not.
    count: u16,
}

struct Voice {
    ring: [Bucket; RING],
}

#[derive(Clone, Copy, Default)]
struct Stats {
    voiced_long: u8,
    voiced_short: u8,
    /// Mean dB above the floor over the speech packets of the voiced buckets
    /// of the long window: how loud this key is while it talks, not diluted
    /// by its pauses.
    loud: f32,
}

impl Stats {
    fn speaking(&self) -> bool {
        self.voiced_short >= SPEAKING_VOICED
    }
}

impl Voice {
    fn new() -> Voice {
        Voice {
            ring: [Bucket {
                idx: EMPTY,
                sum: 0,
                speech: 0,
                count: 0,
            }; RING],
        }
    }

    fn add(&mut self, idx: u64, above_floor: u8) {
        let slot = &mut self.ring[(idx % RING as u64) as usize];
        if slot.idx != idx {
            if slot.idx != EMPTY && slot.idx > idx {
                // A newer bucket already owns the slot: the packet is too late
                // to matter for any window still read.
                return;
            }
            *slot = Bucket {
                idx,
                sum: 0,
                speech: 0,
                count: 0,
            };
        }
        slot.count = slot.count.saturating_add(1);
        if above_floor >= VOICED_MIN_DB {
            slot.sum = slot.sum.saturating_add(u32::from(above_floor));
            slot.speech = slot.speech.saturating_add(1);
        }
    }

    /// Statistics over the completed buckets before `now_idx`. The bucket
    /// still filling is left out so that the result does not depend on where
    /// in the bucket the tick falls; that costs at most 100 ms of latency.
    fn stats(&self, now_idx: u64) -> Stats {
        let mut s = Stats::default();
        let mut loud_sum = 0;
        let mut speech = 0;
        for age in 1..=LONG_BUCKETS {
            let Some(idx) = now_idx.checked_sub(age) else {
                break;
            };
            let b = &self.ring[(idx % RING as u64) as usize];
            // A third: a 20 ms click among the packets of a silent bucket
            // is not speech, a syllable cut by a 60 ms pause still is.
            if b.idx != idx || b.speech == 0 || u32::from(b.speech) * 3 < u32::from(b.count) {
                continue;
            }
            s.voiced_long += 1;
            if age <= SHORT_BUCKETS {
                s.voiced_short += 1;
            }
            loud_sum += u64::from(b.sum);
            speech += u64::from(b.speech);
        }
        if speech > 0 {
            s.loud = (loud_sum as f64 / speech as f64) as f32;
        }
        s
    }
}

/// Active-speaker detection for the audio tracks of one room (or a worker),
/// keyed by whatever id the caller uses.
pub struct SpeakerDetector<K> {
    voices: HashMap<K, Voice>,
    /// Time of bucket 0, set by the first call.
    origin: Option<Instant>,
    dominant: Option<K>,
    /// Keys of the list last reported, in order.
    listed: Vec<K>,
    /// Speaking keys and their stats, sorted by key; reused every tick.
    speaking: Vec<(K, Stats)>,
    /// The list being built; reused every tick.
    order: Vec<(K, f32)>,
}

impl<K: Copy + Eq + Hash + Ord> Default for SpeakerDetector<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash + Ord> SpeakerDetector<K> {
    pub fn new() -> Self {
        SpeakerDetector {
            voices: HashMap::new(),
            origin: None,
            dominant: None,
            listed: Vec::new(),
            speaking: Vec::new(),
            order: Vec::new(),
        }
    }

    /// One audio packet of `key` with the given attenuation (dB below full
    /// scale; see [`attenuation_db`]). Allocates only for a new key.
    pub fn observe(&mut self, key: K, attenuation_db: u8, now: Instant) {
        let idx = self.bucket_index(now);
        let above_floor = SILENCE_DB.saturating_sub(attenuation_db);
        let len = self.voices.len();
        let voice = match self.voices.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if len >= MAX_KEYS {
                    return;
                }
                e.insert(Voice::new())
            }
        };
        voice.add(idx, above_floor);
    }

    /// Forgets `key` (track unpublished, participant left). If it was listed,
    /// the next [`tick`](Self::tick) reports a list without it; if it held
    /// the floor, nobody does until someone speaks.
    pub fn remove(&mut self, key: K) {
        self.voices.remove(&key);
        if self.dominant == Some(key) {
            self.dominant = None;
        }
    }

    /// The current holder of the floor. When everyone falls silent it stays
    /// the last one who held it, so that clients keep showing the last
    /// speaker rather than blanking the main view; `None` only before anyone
    /// spoke or after the holder was removed.
    pub fn dominant(&self) -> Option<K> {
        self.dominant
    }

    /// Re-evaluates; call about every 100 ms. Returns the speakers (dominant
    /// first, then the others, louder first) with their smoothed level only
    /// when the list of keys or their order changed; an empty list once when
    /// everyone fell silent. The level is the loudness while speaking over
    /// the last second, 0.0 at [`SILENCE_DB`] below full scale, 1.0 at full
    /// scale (0 dBov).
    pub fn tick(&mut self, now: Instant) -> Option<Vec<(K, f32)>> {
        let n = self.bucket_index(now);
        self.speaking.clear();
        for (key, voice) in &self.voices {
            let s = voice.stats(n);
            if s.speaking() {
                self.speaking.push((*key, s));
            }
        }
        // HashMap order is arbitrary; sorting makes ties and tests deterministic.
        self.speaking.sort_unstable_by_key(|a| a.0);
        self.update_dominant();
        self.build_order();
        if self
            .order
            .iter()
            .map(|e| e.0)
            .eq(self.listed.iter().copied())
        {
            return None;
        }
        self.listed.clear();
        self.listed.extend(self.order.iter().map(|e| e.0));
        Some(
            self.order
                .iter()
                .map(|&(k, loud)| (k, (loud / f32::from(SILENCE_DB)).clamp(0.0, 1.0)))
                .collect(),
        )
    }

    fn bucket_index(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        (now.saturating_duration_since(origin).as_millis() / BUCKET.as_millis()) as u64
    }

    fn stats_of(&self, key: K) -> Option<Stats> {
        self.speaking
            .binary_search_by(|e| e.0.cmp(&key))
            .ok()
            .map(|i| self.speaking[i].1)
    }

    fn update_dominant(&mut self) {
        let holder = self.dominant.and_then(|d| self.stats_of(d));
        let next = match holder {
            Some(h) => loudest(self.speaking.iter().filter(|(k, s)| {
                Some(*k) != self.dominant
                    && s.voiced_long >= CHALLENGE_VOICED
                    && (s.loud >= h.loud + CHALLENGE_MARGIN_DB
                        || h.voiced_long <= HOLDER_SPARSE_VOICED)
            })),
            // A silent (or removed) holder yields to whoever speaks: the list
            // is "dominant first", so a speaker must never sit behind a
            // silent holder.
            None => loudest(self.speaking.iter()),
        };
        if next.is_some() {
            self.dominant = next;
        }
    }

    fn build_order(&mut self) {
        self.order.clear();
        let dominant = self.dominant.and_then(|d| self.stats_of(d).map(|s| (d, s)));
        if let Some((d, s)) = dominant {
            self.order.push((d, s.loud));
        }
        let first_other = self.order.len();
        // Keep the previous order of those still speaking, then append the
        // newcomers loudest first; reordering below needs a clear margin.
        for &k in &self.listed {
            if Some(k) == self.dominant {
                continue;
            }
            if let Some(s) = self.stats_of(k) {
                self.order.push((k, s.loud));
            }
        }
        let first_new = self.order.len();
        for &(k, s) in &self.speaking {
            if Some(k) != self.dominant && !self.listed.contains(&k) {
                self.order.push((k, s.loud));
            }
        }
        self.order[first_new..].sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Cutting before reordering changes nothing (a newcomer past the cut
        // cannot pass the louder newcomers before it) and keeps the pass below
        // quadratic in MAX_LISTED, not in the number of open microphones.
        self.order.truncate(MAX_LISTED);
        for i in first_other + 1..self.order.len() {
            let mut j = i;
            while j > first_other && self.order[j].1 > self.order[j - 1].1 + ORDER_MARGIN_DB {
                self.order.swap(j, j - 1);
                j -= 1;
            }
        }
    }
}

/// The loudest of `candidates`; the first (smallest key) on a tie.
fn loudest<'a, K: Copy + 'a>(candidates: impl Iterator<Item = &'a (K, Stats)>) -> Option<K> {
    let mut best: Option<(K, f32)> = None;
    for &(k, s) in candidates {
        if best.is_none_or(|(_, loud)| s.loud > loud) {
            best = Some((k, s.loud));
        }
    }
    best.map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic simulated sender: syllables of 120–300 ms at
    /// `base` ±6 dB, separated by 60–100 ms pauses, one packet every 20 ms.
    struct Talker {
        key: u32,
        base: u8,
        from_ms: u64,
        to_ms: u64,
        /// Continuous (no syllable pauses), e.g. comfort noise.
        steady: bool,
        /// What a pause sends: `None` is DTX (nothing), else this attenuation.
        pause_level: Option<u8>,
        rng: u64,
        in_pause: bool,
        segment_end: u64,
    }

    impl Talker {
        fn new(key: u32, base: u8, from_ms: u64, to_ms: u64) -> Talker {
            Talker {
                key,
                base,
                from_ms,
                to_ms,
                steady: false,
                pause_level: None,
                rng: (u64::from(key) << 32) ^ (u64::from(base) << 16) ^ from_ms,
                in_pause: false,
                segment_end: from_ms,
            }
        }

        fn next(&mut self) -> u64 {
            // splitmix64: well mixed even from similar seeds.
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }

        /// The attenuation sent at `ms`, if a packet is sent then.
        fn packet(&mut self, ms: u64) -> Option<u8> {
            if ms < self.from_ms || ms >= self.to_ms || !(ms - self.from_ms).is_multiple_of(20) {
                return None;
            }
            if !self.steady && ms >= self.segment_end {
                if ms == self.from_ms || self.in_pause {
                    self.in_pause = false;
                    self.segment_end = ms + self.range(120, 300);
                } else {
                    self.in_pause = true;
                    self.segment_end = ms + self.range(60, 100);
                }
            }
            if self.in_pause {
                return self.pause_level;
            }
            let jitter = self.range(0, 12) as i32 - 6;
            Some((i32::from(self.base) + jitter).clamp(0, 127) as u8)
        }
    }

    struct Sim {
        det: SpeakerDetector<u32>,
        t0: Instant,
        ms: u64,
        talkers: Vec<Talker>,
        /// Every `Some` that tick returned, with its time.
        reports: Vec<(u64, Vec<(u32, f32)>)>,
    }

    impl Sim {
        fn new() -> Sim {
            let t0 = Instant::now();
            let mut det = SpeakerDetector::new();
            // Puts the bucket edges at t0, so that ticks fall mid-bucket.
            assert_eq!(det.tick(t0), None);
            Sim {
                det,
                t0,
                ms: 0,
                talkers: Vec::new(),
                reports: Vec::new(),
            }
        }

        /// Runs to `end_ms`, ticking every 100 ms, mid-bucket, and
        /// calls `check` with the time and the dominant after each tick.
        fn run(&mut self, end_ms: u64, mut check: impl FnMut(u64, Option<u32>)) {
            while self.ms < end_ms {
                let now = self.t0 + Duration::from_millis(self.ms);
                for t in &mut self.talkers {
                    // Talkers' packets are spread over the 20 ms so that they
                    // do not all land on the same millisecond.
                    if let Some(level) = t.packet(self.ms) {
                        self.det.observe(t.key, level, now);
                    }
                }
                if self.ms % 100 == 50 {
                    if let Some(list) = self.det.tick(now) {
                        self.reports.push((self.ms, list));
                    }
                    check(self.ms, self.det.dominant());
                }
                self.ms += 1;
            }
        }

        fn last_list(&self) -> Vec<u32> {
            self.reports
                .last()
                .map(|(_, l)| l.iter().map(|e| e.0).collect())
                .unwrap_or_default()
        }
    }

    #[test]
    fn audio_level_sign_either_way() {
        assert_eq!(attenuation_db(-42), 42);
        assert_eq!(attenuation_db(42), 42);
        assert_eq!(attenuation_db(0), 0);
        assert_eq!(attenuation_db(-127), 127);
        assert_eq!(attenuation_db(i8::MIN), 127);
    }

    #[test]
    fn loudest_of_three_speakers_wins_within_a_second() {
        let mut sim = Sim::new();
        sim.talkers.push(Talker::new(1, 40, 1_000, 8_000));
        sim.talkers.push(Talker::new(2, 20, 1_003, 8_000));
        sim.talkers.push(Talker::new(3, 30, 1_011, 8_000));
        sim.run(1_000, |_, d| assert_eq!(d, None));
        sim.run(8_000, |ms, d| {
            if ms >= 2_000 {
                assert_eq!(d, Some(2), "at {ms} ms");
            }
        });
        assert_eq!(sim.last_list(), vec![2, 3, 1]);
        let levels = &sim.reports.last().unwrap().1;
        assert!(levels[0].1 > levels[1].1 && levels[1].1 > levels[2].1);
        assert!(levels.iter().all(|e| (0.0..=1.0).contains(&e.1)));
    }

    #[test]
    fn one_word_interjection_does_not_steal_the_floor() {
        let mut sim = Sim::new();
        sim.talkers.push(Talker::new(1, 30, 0, 20_000));
        // One ~350 ms word, 10 dB louder than A.
        sim.talkers.push(Talker::new(2, 20, 3_000, 3_350));
        // Then B holds forth, still 10 dB louder, from 6 s on.
        sim.talkers.push(Talker::new(2, 20, 6_000, 20_000));
        sim.run(6_000, |ms, d| {
            if ms >= 1_000 {
                assert_eq!(d, Some(1), "interjection took the floor at {ms} ms");
            }
        });
        assert!(
            sim.reports.iter().any(|(_, l)| l.len() == 2),
            "B is listed as speaking while it says its word"
        );
        let mut took_at = None;
        sim.run(12_000, |ms, d| {
            if d == Some(2) && took_at.is_none() {
                took_at = Some(ms);
            }
            if took_at.is_some() {
                assert_eq!(d, Some(2), "floor went back at {ms} ms");
            }
        });
        let took_at = took_at.expect("sustained louder speaker never took the floor");
        assert!(
            took_at <= 6_000 + 1_500,
            "took the floor only at {took_at} ms"
        );
    }

    #[test]
    fn floor_moves_when_dominant_stops() {
        let mut sim = Sim::new();
        // A is louder and holds the floor; B keeps talking quietly.
        sim.talkers.push(Talker::new(1, 20, 0, 4_000));
        sim.talkers.push(Talker::new(2, 40, 0, 10_000));
        sim.run(4_000, |ms, d| {
            if ms >= 1_000 {
                assert_eq!(d, Some(1));
            }
        });
        let mut moved_at = None;
        sim.run(10_000, |ms, d| {
            if d == Some(2) && moved_at.is_none() {
                moved_at = Some(ms);
            }
        });
        let moved_at = moved_at.expect("floor never moved");
        assert!(moved_at <= 4_000 + 1_500, "moved only at {moved_at} ms");
        assert_eq!(sim.det.dominant(), Some(2));
    }

    #[test]
    fn silence_and_comfort_noise_never_speak() {
        let mut sim = Sim::new();
        // 127 (digital silence) in pauses and after the talk ends.
        let mut a = Talker::new(1, 25, 0, 3_000);
        a.pause_level = Some(127);
        sim.talkers.push(a);
        let mut silent = Talker::new(1, 127, 3_000, 10_000);
        silent.steady = true;
        sim.talkers.push(silent);
        // Comfort noise / room noise around -75 dBov, all along.
        let mut noise = Talker::new(2, 75, 0, 10_000);
        noise.steady = true;
        sim.talkers.push(noise);
        // C talks and then goes DTX (sends nothing), before A stops.
        sim.talkers.push(Talker::new(3, 35, 0, 2_000));
        sim.run(10_000, |_, _| {});
        for (_, list) in &sim.reports {
            assert!(list.iter().all(|e| e.0 != 2), "noise listed: {list:?}");
        }
        let (last_ms, last) = sim.reports.last().unwrap();
        assert!(last.is_empty(), "everyone silent: empty list");
        assert!(*last_ms < 4_000, "silence noticed at {last_ms} ms");
        let empties = sim.reports.iter().filter(|(_, l)| l.is_empty()).count();
        assert_eq!(empties, 1, "empty list reported once");
        // Clients keep showing the last speaker.
        assert_eq!(sim.det.dominant(), Some(1));
    }

    #[test]
    fn tick_is_quiet_when_nothing_changes() {
        let mut sim = Sim::new();
        // Three steady talkers within 1 dB, less than the margins: neither
        // the floor nor the order flaps with the jitter of their levels.
        sim.talkers.push(Talker::new(1, 30, 0, 20_000));
        sim.talkers.push(Talker::new(2, 31, 0, 20_000));
        sim.talkers.push(Talker::new(3, 31, 0, 20_000));
        sim.run(20_000, |_, _| {});
        assert!(
            sim.reports.len() <= 3,
            "{} reports for a steady conversation: {:?}",
            sim.reports.len(),
            sim.reports
        );
        assert_eq!(sim.last_list().len(), 3);
        // Nothing at all while nobody sends.
        let mut quiet = Sim::new();
        quiet.run(5_000, |_, d| assert_eq!(d, None));
        assert!(quiet.reports.is_empty());
    }

    #[test]
    fn removed_keys_are_never_listed() {
        let mut sim = Sim::new();
        sim.talkers.push(Talker::new(1, 20, 0, 10_000));
        sim.talkers.push(Talker::new(2, 30, 0, 10_000));
        sim.run(3_000, |_, _| {});
        assert_eq!(sim.last_list(), vec![1, 2]);
        // The dominant leaves but its packets are still in flight.
        sim.det.remove(1);
        let now = sim.t0 + Duration::from_millis(sim.ms);
        let list = sim.det.tick(now).expect("list changes on removal");
        assert_eq!(list.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2]);
        sim.reports.push((sim.ms, list));
        assert_eq!(sim.det.dominant(), Some(2));
        sim.talkers.retain(|t| t.key != 1);
        sim.run(6_000, |_, d| assert_eq!(d, Some(2)));
        for (_, list) in &sim.reports {
            assert!(list.len() <= 2);
        }
        assert_eq!(sim.last_list(), vec![2]);
    }

    #[test]
    fn keys_past_the_bound_are_ignored() {
        let mut det = SpeakerDetector::<u32>::new();
        let t0 = Instant::now();
        for ms in (0..2_000).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            for key in 0..(MAX_KEYS as u32 + 100) {
                det.observe(key, 20, now);
            }
        }
        assert_eq!(det.voices.len(), MAX_KEYS);
        let list = det.tick(t0 + Duration::from_millis(2_000)).unwrap();
        assert_eq!(list.len(), MAX_LISTED);
        assert!(list.iter().all(|e| (e.0 as usize) < MAX_KEYS));
    }

    #[test]
    fn late_and_out_of_order_times_are_harmless() {
        let mut det = SpeakerDetector::<u32>::new();
        let t0 = Instant::now() + Duration::from_secs(10);
        for ms in (0..2_000).step_by(20) {
            det.observe(1, 20, t0 + Duration::from_millis(ms));
            // A packet stamped long ago, and one before the origin.
            det.observe(1, 0, t0 + Duration::from_millis(ms / 4));
            det.observe(2, 0, t0 - Duration::from_secs(5));
        }
        let list = det.tick(t0 + Duration::from_millis(2_000)).unwrap();
        assert_eq!(list.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(det.dominant(), Some(1));
    }
}
