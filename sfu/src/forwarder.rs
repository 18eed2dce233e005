//! Rewrites one track's packets for one subscriber, so its decoder sees one
//! continuous stream whatever layer, pause or restart it came from.
//!
//! Outgoing sequence numbers start at 1 for every subscriber (so the SRTP
//! rollover counter starts at 0 without signaling it). Each time forwarding
//! (re)starts — the first packet, a resume, a simulcast layer switch — a new
//! *segment* begins: sequence numbers continue from the last one sent, RTP
//! timestamps continue from the last one plus the wall-clock time that
//! passed, and VP8 picture ids / TL0PICIDX continue by one. Inside a segment
//! the publisher's gaps are kept, so the subscriber's NACKs still line up.

use std::time::Instant;

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// What the forwarder decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Send with this extended sequence number and RTP timestamp, patching
    /// the VP8 payload descriptor if given.
    Send {
        seq: u64,
        timestamp: u32,
        vp8: Option<Vp8Patch>,
    },
    /// Drop: waiting for a keyframe; the caller should make sure one was requested.
    NeedKeyframe,
    /// Drop: older than the point where the current segment started.
    Stale,
}

const PICTURE_ID_MOD: u16 = 1 << 15;

#[derive(Debug, Clone, Copy)]
struct Rebase {
    /// outgoing = incoming - offset (wrapping, in the field's modulus)
    offset: u16,
    last: u16,
}

#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Video must start on a keyframe; audio starts anywhere.
    gate_on_keyframe: bool,
    /// RTP clock rate of the codec, to carry wall-clock gaps into timestamps.
    clock_rate: u32,
    started: bool,
    /// Whether any packet was ever sent (the first segment keeps the
    /// publisher's timestamps and picture ids as they are).
    ever_sent: bool,
    /// outgoing = incoming - offset, wrapping.
    seq_offset: u64,
    /// The publisher's sequence number that started the current segment:
    /// anything older belongs to before it and would collide.
    segment_start: u64,
    /// Highest outgoing sequence number sent.
    last_seq: u64,
    ts_offset: u32,
    last_ts: u32,
    last_sent_at: Option<Instant>,
    picture_id: Option<Rebase>,
    tl0: Option<Rebase>,
    /// A new segment starts with the next admitted packet.
    rebase_pending: bool,
}

impl Forwarder {
    pub fn new(gate_on_keyframe: bool, clock_rate: u32) -> Forwarder {
        Forwarder {
            gate_on_keyframe,
            clock_rate,
            started: false,
            ever_sent: false,
            seq_offset: 0,
            segment_start: 0,
            last_seq: 0,
            ts_offset: 0,
            last_ts: 0,
            last_sent_at: None,
            picture_id: None,
            tl0: None,
            rebase_pending: true,
        }
    }

    /// Start over at the next keyframe (a resume, or a switch to another
    /// layer of the same track), keeping the outgoing stream continuous.
    pub fn restart(&mut self) {
        self.started = false;
        self.rebase_pending = true;
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// `seq` is the publisher's extended sequence number, `vp8` the parsed
    /// payload descriptor of a VP8 packet.
    pub fn forward(
        &mut self,
        now: Instant,
        seq: u64,
        timestamp: u32,
        starts_keyframe: bool,
        vp8: Option<&Vp8Descriptor>,
    ) -> Forward {
        if !self.started {
            if self.gate_on_keyframe && !starts_keyframe {
                return Forward::NeedKeyframe;
            }
            self.started = true;
        }
        if self.rebase_pending {
            self.rebase_pending = false;
            self.seq_offset = seq.wrapping_sub(self.last_seq + 1);
            self.segment_start = seq;
            if self.ever_sent {
                // Carry the wall-clock gap into the timestamp, at least one tick,
                // so the new segment neither repeats nor runs backwards.
                let gap = self
                    .last_sent_at
                    .map(|t| now.saturating_duration_since(t))
                    .unwrap_or_default();
                let ticks = ((gap.as_micros() as u64).saturating_mul(u64::from(self.clock_rate))
                    / 1_000_000)
                    .clamp(1, u64::from(u32::MAX / 2)) as u32;
                self.ts_offset = timestamp.wrapping_sub(self.last_ts.wrapping_add(ticks));
                if let Some(p) = self.picture_id.as_mut() {
                    p.offset = vp8
                        .and_then(|d| d.picture_id())
                        .map(|id| id.wrapping_sub(p.last.wrapping_add(1)) % PICTURE_ID_MOD)
                        .unwrap_or(p.offset);
                }
                if let Some(t) = self.tl0.as_mut() {
                    t.offset = vp8
                        .and_then(|d| d.tl0_pic_idx())
                        .map(|v| u16::from(v.wrapping_sub(t.last as u8).wrapping_sub(1)))
                        .unwrap_or(t.offset);
                }
            }
        }
        if seq < self.segment_start {
            return Forward::Stale;
        }
        // Wrapping: a layer's publisher numbering may be below what this
        // subscriber has already been sent (str0m starts each stream at a
        // random number), and then the offset is "negative". From the
        // segment's start on, `out` is at least `last_seq + 1`.
        let out = seq.wrapping_sub(self.seq_offset);
        let out_ts = timestamp.wrapping_sub(self.ts_offset);
        if out > self.last_seq {
            self.last_seq = out;
            self.last_ts = out_ts;
            self.last_sent_at = Some(now);
        }
        self.ever_sent = true;
        Forward::Send {
            seq: out,
            timestamp: out_ts,
            vp8: vp8.and_then(|d| self.vp8_patch(d)),
        }
    }

    /// Rewrite picture id and TL0PICIDX when a segment moved them; None when
    /// the payload can go out untouched.
    fn vp8_patch(&mut self, d: &Vp8Descriptor) -> Option<Vp8Patch> {
        let mut picture_id = None;
        if let Some(id) = d.picture_id() {
            let p = self.picture_id.get_or_insert(Rebase {
                offset: 0,
                last: id,
            });
            let out = id.wrapping_sub(p.offset) % PICTURE_ID_MOD;
            if is_newer_15(out, p.last) {
                p.last = out;
            }
            picture_id = (p.offset != 0).then_some(out);
        }
        let mut tl0 = None;
        if let Some(v) = d.tl0_pic_idx() {
            let t = self.tl0.get_or_insert(Rebase {
                offset: 0,
                last: u16::from(v),
            });
            let out = v.wrapping_sub(t.offset as u8);
            if out.wrapping_sub(t.last as u8) < 128 {
                t.last = u16::from(out);
            }
            tl0 = (t.offset != 0).then_some(out);
        }
        if picture_id.is_none() && tl0.is_none() {
            return None;
        }
        let build = |pid: Option<u16>| {
            let mut b = d.patch();
            if let Some(pid) = pid {
                b = b.picture_id(pid);
            }
            if let Some(v) = tl0 {
                b = b.tl0_pic_idx(v);
            }
            b.build()
        };
        // A 7-bit picture id field keeps 7 bits: receivers compare modulo 128.
        build(picture_id)
            .or_else(|_| build(picture_id.map(|p| p & 0x7f)))
            .ok()
    }
}

/// Whether 15-bit picture id `a` is after `b` (modulo arithmetic).
fn is_newer_15(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b) % PICTURE_ID_MOD;
    d != 0 && d < PICTURE_ID_MOD / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sent(f: Forward) -> (u64, u32) {
        match f {
            Forward::Send { seq, timestamp, .. } => (seq, timestamp),
            other => panic!("expected send, got {other:?}"),
        }
    }

    #[test]
    fn video_waits_for_keyframe_then_numbers_from_one() {
        let now = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        assert_eq!(
            f.forward(now, 70_000, 1, false, None),
            Forward::NeedKeyframe
        );
        assert_eq!(sent(f.forward(now, 70_001, 2, true, None)), (1, 2));
        assert_eq!(sent(f.forward(now, 70_002, 2, false, None)).0, 2);
        // Reordered packet from before the start is stale, later gaps are kept.
        assert_eq!(f.forward(now, 70_000, 1, false, None), Forward::Stale);
        assert_eq!(sent(f.forward(now, 70_005, 3, false, None)).0, 5);
    }

    #[test]
    fn a_switch_keeps_sequence_and_timestamps_continuous() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        assert_eq!(sent(f.forward(t0, 10, 1000, true, None)), (1, 1000));
        assert_eq!(sent(f.forward(t0, 11, 1000, false, None)), (2, 1000));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(sent(f.forward(t1, 12, 10_000, false, None)), (3, 10_000));
        // Another layer: unrelated numbering, starts 50 ms later.
        f.restart();
        let t2 = t1 + Duration::from_millis(50);
        assert_eq!(
            f.forward(t2, 90_000, 777, false, None),
            Forward::NeedKeyframe
        );
        assert_eq!(
            sent(f.forward(t2, 90_001, 777, true, None)),
            (4, 10_000 + 4_500)
        );
        assert_eq!(sent(f.forward(t2, 90_002, 777, false, None)), (5, 14_500));
        let t3 = t2 + Duration::from_millis(33);
        assert_eq!(
            sent(f.forward(t3, 90_003, 777 + 2970, false, None)),
            (6, 14_500 + 2970)
        );
        // Packets of the old layer (or reordered ones from before the switch) are stale.
        assert_eq!(f.forward(t3, 90_000, 777, false, None), Forward::Stale);
    }

    /// str0m numbers each layer from a random start: the layer switched to
    /// may be numbered below what the subscriber was already sent.
    #[test]
    fn a_switch_to_a_layer_numbered_below_the_output_still_forwards() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        assert_eq!(sent(f.forward(t0, 60_000, 1000, true, None)).0, 1);
        for i in 1..500u64 {
            assert_eq!(sent(f.forward(t0, 60_000 + i, 1000, false, None)).0, i + 1);
        }
        f.restart();
        assert_eq!(sent(f.forward(t0, 42, 5, true, None)).0, 501);
        assert_eq!(sent(f.forward(t0, 43, 5, false, None)).0, 502);
        assert_eq!(sent(f.forward(t0, 45, 5, false, None)).0, 504);
        assert_eq!(f.forward(t0, 41, 5, false, None), Forward::Stale);
    }

    #[test]
    fn timestamps_never_repeat_across_an_instant_switch() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(false, 48_000);
        assert_eq!(sent(f.forward(t0, 5, 960, false, None)), (1, 960));
        f.restart();
        let (seq, ts) = sent(f.forward(t0, 400, 5, false, None));
        assert_eq!(seq, 2);
        assert!(ts.wrapping_sub(960) >= 1 && ts.wrapping_sub(960) < 1000);
    }

    fn vp8(picture_id: u16, tl0: u8, keyframe: bool) -> Vec<u8> {
        // X=1, S=1, PID 0; I=1, L=1, T=1; 15-bit picture id; TL0PICIDX; TID byte; VP8 header.
        vec![
            0x90,
            0xE0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x00,
            if keyframe { 0x00 } else { 0x01 },
            0,
            0,
        ]
    }

    /// Checks the forwarder's patch against the one that writes `(picture_id, tl0)`.
    fn assert_patch(f: Forward, payload: &[u8], want: Option<(u16, u8)>) {
        let Forward::Send { vp8, .. } = f else {
            panic!("expected send, got {f:?}")
        };
        let d = Vp8Descriptor::parse(payload).unwrap();
        let expected =
            want.map(|(pid, tl0)| d.patch().picture_id(pid).tl0_pic_idx(tl0).build().unwrap());
        assert_eq!(vp8, expected);
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        let send = |f: &mut Forwarder, seq, pid, tl0, key, want| {
            let p = vp8(pid, tl0, key);
            let d = Vp8Descriptor::parse(&p).unwrap();
            assert_patch(f.forward(t0, seq, 0, key, Some(&d)), &p, want);
        };
        // The first segment goes out untouched.
        send(&mut f, 1, 100, 7, true, None);
        send(&mut f, 2, 101, 8, false, None);
        f.restart();
        send(&mut f, 900, 30_000, 200, true, Some((102, 9)));
        send(&mut f, 901, 30_001, 201, false, Some((103, 10)));
        // Picture ids wrap at 15 bits.
        send(&mut f, 902, 32_767, 202, false, Some((2869, 11)));
        // Outgoing picture ids wrap at 15 bits.
        let mut f = Forwarder::new(true, 90_000);
        send(&mut f, 1, 32_766, 7, true, None);
        f.restart();
        send(&mut f, 50, 5, 200, true, Some((32_767, 8)));
        send(&mut f, 51, 6, 201, false, Some((0, 9)));
    }

    #[test]
    fn audio_starts_immediately() {
        let mut f = Forwarder::new(false, 48_000);
        assert_eq!(
            sent(f.forward(Instant::now(), 1_000_000, 960, false, None)).0,
            1
        );
    }
}
