//! The stamp a load-test frame carries in its last bytes: who sent it, which
//! frame it is and when it was sent. With sender and receiver in one process
//! (one clock), a receiver measures one-way latency, frame loss and freezes
//! from the payload alone, whatever the SFU in between rewrote.
//!
//! The stamp is at the end so the codec bytes an SFU reads (the VP8 payload
//! header, the Opus TOC byte) stay where they belong, at the start.

/// Bytes a stamp occupies at the end of a frame.
pub const STAMP_LEN: usize = 28;

const MAGIC: [u8; 4] = *b"STMP";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStamp {
    /// The sending participant's index in the load test.
    pub sender: u32,
    /// Counts frames of one source; a simulcast layer that skips frames
    /// skips numbers (see `step`).
    pub frame: u32,
    /// Microseconds since the process's epoch when the frame was sent.
    pub sent_us: u64,
    /// Simulcast layer (0 = lowest); 0 for audio.
    pub layer: u8,
    /// How far `frame` advances between consecutive frames of this layer.
    pub step: u8,
    pub keyframe: bool,
    /// The whole frame's length, stamp included, as sent: a receiver whose
    /// frame differs got a frame mixed up or cut short by the SFU.
    pub len: u32,
}

impl FrameStamp {
    /// Append the stamp to a frame being built; `len` is set to the
    /// frame's final length.
    pub fn append(&self, out: &mut Vec<u8>) {
        let len = (out.len() + STAMP_LEN) as u32;
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.frame.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.push(self.layer);
        out.push(self.step);
        out.push(u8::from(self.keyframe));
        out.push(0);
        out.extend_from_slice(&len.to_be_bytes());
    }

    /// The stamp at the end of `frame`, if it has one.
    pub fn read(frame: &[u8]) -> Option<FrameStamp> {
        let at = frame.len().checked_sub(STAMP_LEN)?;
        let s = &frame[at..];
        if s[..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| Some(u32::from_be_bytes(s.get(i..i + 4)?.try_into().ok()?));
        Some(FrameStamp {
            sender: u32_at(4)?,
            frame: u32_at(8)?,
            sent_us: u64::from_be_bytes(s.get(12..20)?.try_into().ok()?),
            layer: s[20],
            step: s[21].max(1),
            keyframe: s[22] != 0,
            len: u32_at(24)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_at_the_end_of_a_frame() {
        let st = FrameStamp {
            sender: 41,
            frame: 70_000,
            sent_us: 123_456_789,
            layer: 2,
            step: 1,
            keyframe: true,
            len: 0,
        };
        let mut frame = vec![0x10, 0x02, 0x00];
        frame.extend(std::iter::repeat_n(0xab, 500));
        st.append(&mut frame);
        let read = FrameStamp::read(&frame).expect("stamp");
        assert_eq!(read.len as usize, frame.len());
        assert_eq!(FrameStamp { len: 0, ..read }, st);
    }

    #[test]
    fn frames_without_a_stamp_are_not_misread() {
        assert_eq!(FrameStamp::read(&[]), None);
        assert_eq!(FrameStamp::read(&[0u8; 100]), None);
        assert_eq!(FrameStamp::read(&[0u8; 10]), None);
    }
}
