//! Media helpers: test tones, frequency detection, synthetic and grey VP8 frames.

/// Samples per second of Opus in WebRTC.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 960;

/// One 20 ms mono frame of a sine tone, continuing at `phase` (updated).
pub fn sine_frame(freq_hz: f32, phase: &mut f32, out: &mut [i16; FRAME_SAMPLES]) {
    let step = std::f32::consts::TAU * freq_hz / SAMPLE_RATE as f32;
    for s in out.iter_mut() {
        *s = (phase.sin() * 12_000.0) as i16;
        *phase = (*phase + step) % std::f32::consts::TAU;
    }
}

/// Power of `freq_hz` in `samples` (Goertzel algorithm).
pub fn goertzel_power(samples: &[i16], freq_hz: f32) -> f32 {
    let w = std::f32::consts::TAU * freq_hz / SAMPLE_RATE as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x as f32 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The strongest frequency between `lo` and `hi` Hz, scanned in `step` Hz.
pub fn dominant_frequency(samples: &[i16], lo: f32, hi: f32, step: f32) -> f32 {
    let mut best = (lo, f32::MIN);
    let mut f = lo;
    while f <= hi {
        let p = goertzel_power(samples, f);
        if p > best.1 {
            best = (f, p);
        }
        f += step;
    }
    best.0
}

/// Opus tone generation and decoding (needs the system libopus).
#[cfg(feature = "opus")]
pub mod opus_tone {
    use super::{FRAME_SAMPLES, SAMPLE_RATE, sine_frame};

    /// `count` Opus packets (20 ms each) of a continuous sine tone.
    pub fn encode_tone(freq_hz: f32, count: usize) -> Result<Vec<Vec<u8>>, opus::Error> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)?;
        let mut phase = 0.0;
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut out = vec![0u8; 1500];
        let mut packets = Vec::with_capacity(count);
        for _ in 0..count {
            sine_frame(freq_hz, &mut phase, &mut pcm);
            let n = enc.encode(&pcm, &mut out)?;
            packets.push(out[..n].to_vec());
        }
        Ok(packets)
    }

    /// Decodes a stream of Opus packets to mono PCM.
    /// Opus packets of 20 ms with DTX, for a publisher to loop: `None`
    /// where DTX sends nothing (the encoder's 1–2 byte packets), so silence
    /// costs what it costs a browser. `speech` false encodes silence.
    pub fn encode_dtx(speech: bool, frames: usize) -> Result<Vec<Option<Vec<u8>>>, opus::Error> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_bitrate(opus::Bitrate::Bits(32_000))?;
        enc.set_dtx(true)?;
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut out = vec![0u8; 1500];
        let mut packets = Vec::with_capacity(frames);
        let mut phase = [0.0f32; 4];
        for n in 0..frames {
            if speech {
                voice_frame(n, &mut phase, &mut pcm);
            } else {
                pcm.fill(0);
            }
            let len = enc.encode(&pcm, &mut out)?;
            packets.push((len > 2).then(|| out[..len].to_vec()));
        }
        Ok(packets)
    }

    /// Speech-like sound: a voiced tone with harmonics in syllables of
    /// 200 ms, and a short pause every two seconds.
    fn voice_frame(n: usize, phase: &mut [f32; 4], out: &mut [i16; FRAME_SAMPLES]) {
        let pause = n % 100 >= 90;
        let pitch = 120.0 + 40.0 * ((n / 10) % 5) as f32;
        let envelope = if pause {
            0.0
        } else {
            0.3 + 0.7 * ((n % 10) as f32 / 10.0 * std::f32::consts::PI).sin()
        };
        let mut parts = [[0i16; FRAME_SAMPLES]; 4];
        for (h, part) in parts.iter_mut().enumerate() {
            sine_frame(pitch * (h + 1) as f32, &mut phase[h], part);
        }
        for (i, s) in out.iter_mut().enumerate() {
            let mix: f32 = parts
                .iter()
                .enumerate()
                .map(|(h, p)| p[i] as f32 / (h + 1) as f32)
                .sum();
            *s = (mix * 0.4 * envelope) as i16;
        }
    }

    pub struct ToneDecoder {
        dec: opus::Decoder,
        buf: Vec<i16>,
    }

    impl ToneDecoder {
        pub fn new() -> Result<ToneDecoder, opus::Error> {
            Ok(ToneDecoder {
                dec: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
                buf: vec![0; FRAME_SAMPLES * 6],
            })
        }

        /// Decode one packet, appending its samples to `pcm`.
        pub fn decode(&mut self, packet: &[u8], pcm: &mut Vec<i16>) -> Result<usize, opus::Error> {
            let n = self.dec.decode(packet, &mut self.buf, false)?;
            pcm.extend_from_slice(&self.buf[..n]);
            Ok(n)
        }
    }
}

/// Builds VP8 RTP payloads (RFC 7741): a payload descriptor with a picture
/// id, so a receiver can tell keyframes and frames apart without a VP8
/// decoder, around grey frames a real decoder shows too.
#[derive(Debug, Clone)]
pub struct Vp8Frames {
    picture_id: u16,
    /// Largest payload per RTP packet.
    pub max_payload: usize,
}

/// What a receiver reads back from a synthetic VP8 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Info {
    pub start_of_frame: bool,
    pub keyframe: bool,
    pub picture_id: u16,
}

const DESCRIPTOR: usize = 4;

impl Default for Vp8Frames {
    fn default() -> Self {
        Vp8Frames {
            picture_id: 0,
            max_payload: 1100,
        }
    }
}

impl Vp8Frames {
    /// Payloads of one grey frame ([`vp8_grey_frame`], 320×180) of at
    /// least `size` bytes; the last one gets the RTP marker.
    pub fn frame(&mut self, keyframe: bool, size: usize) -> Vec<Vec<u8>> {
        let mut body = Vec::with_capacity(size);
        vp8_grey_frame(keyframe, size, 320, 180, &mut body);
        self.packetize(&body)
    }

    /// RTP payloads of one encoded frame (sealed or not), each with a
    /// payload descriptor carrying the next picture id.
    pub fn packetize(&mut self, body: &[u8]) -> Vec<Vec<u8>> {
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        let pid = self.picture_id;
        let chunk = self.max_payload.saturating_sub(DESCRIPTOR).max(1);
        body.chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                let mut p = Vec::with_capacity(DESCRIPTOR + part.len());
                // X=1, S on the first packet, PID 0; I=1 with a 15-bit picture id.
                p.push(if i == 0 { 0x90 } else { 0x80 });
                p.push(0x80);
                p.push(0x80 | (pid >> 8) as u8);
                p.push(pid as u8);
                p.extend_from_slice(part);
                p
            })
            .collect()
    }

    /// Parse what [`Vp8Frames::frame`] wrote (and any VP8 payload with a 15-bit picture id).
    pub fn parse(payload: &[u8]) -> Option<Vp8Info> {
        let b0 = *payload.first()?;
        let start_of_frame = b0 & 0x10 != 0 && b0 & 0x07 == 0;
        let mut at = 1;
        let mut picture_id = 0;
        if b0 & 0x80 != 0 {
            let x = *payload.get(at)?;
            at += 1;
            if x & 0x80 != 0 {
                let m = *payload.get(at)?;
                if m & 0x80 != 0 {
                    picture_id = (((m & 0x7f) as u16) << 8) | *payload.get(at + 1)? as u16;
                    at += 2;
                } else {
                    picture_id = m as u16;
                    at += 1;
                }
            }
            if x & 0x40 != 0 {
                at += 1;
            }
            if x & 0x30 != 0 {
                at += 1;
            }
        }
        let keyframe = start_of_frame && payload.get(at)? & 0x01 == 0;
        Some(Vp8Info {
            start_of_frame,
            keyframe,
            picture_id,
        })
    }
}

/// The start of a VP8 frame (RFC 6386 §9.1): the 3-byte frame tag (P bit
/// clear for a keyframe, show_frame set) and, for a keyframe, the start code
/// and dimensions. What an SFU reads to find keyframes; a synthetic frame's
/// rest is filler.
pub fn vp8_frame_header(keyframe: bool, size: usize, width: u16, height: u16, out: &mut Vec<u8>) {
    let tag: u32 = (if keyframe { 0 } else { 1 }) | (1 << 4) | (((size as u32) & 0x7ffff) << 5);
    out.extend_from_slice(&tag.to_le_bytes()[..3]);
    if keyframe {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&width.to_le_bytes());
        out.extend_from_slice(&height.to_le_bytes());
    }
}

/// Bytes of the first partition for the frame header and its 1,056
/// coefficient-probability flags (about 140 needed), plus two per
/// macroblock for the modes: at most 11 bits, 7 of them for an inter
/// frame's "intra" symbol, read at probability 0.
const GREY_HEADER_BYTES: usize = 280;
const GREY_MODE_BYTES_PER_MB: usize = 2;
/// One byte per macroblock for its 25 end-of-block symbols: libvpx reads
/// 5.7 bits per macroblock of a keyframe and 0.9 of an inter frame (found
/// by shortening the partition until `vpxdec` calls the frame corrupt).
const GREY_TOKEN_BYTES_PER_MB: usize = 1;

/// The smallest frame [`vp8_grey_frame`] writes for this picture size.
pub fn vp8_grey_min_size(keyframe: bool, width: u16, height: u16) -> usize {
    let header = if keyframe { 10 } else { 3 };
    let mbs = macroblocks(width, height);
    header + GREY_HEADER_BYTES + (GREY_MODE_BYTES_PER_MB + GREY_TOKEN_BYTES_PER_MB) * mbs
}

fn macroblocks(width: u16, height: u16) -> usize {
    (width as usize).div_ceil(16) * (height as usize).div_ceil(16)
}

/// A VP8 frame (RFC 6386) that every decoder shows as a flat mid-grey
/// picture, written without an encoder, so a browser can decode what a Rust
/// test client sends (`framesDecoded` grows) and a test can tell that
/// picture from noise.
///
/// After the frame tag (and a keyframe's start code and size), both
/// partitions are zero bytes. A boolean decoder whose value is zero decodes
/// every symbol as the first branch of its tree whatever the probability,
/// so no probability table is needed: every header field is 0 (quantizer 0,
/// no loop filter, no probability updates, no skip flags); a keyframe's
/// macroblocks are B_PRED with B_DC_PRED sub-blocks, an inter frame's are
/// intra DC_PRED (its `prob_intra` reads as 0); and every block ends at
/// once (EOB is the token tree's first branch). Without residual, DC
/// prediction from the frame's edges (127 above, 129 left) gives 128
/// (129 in places). Frames shorter than [`vp8_grey_min_size`] are lengthened to
/// it, since a decoder that runs out of bytes calls the frame corrupt;
/// longer ones end in zero bytes nobody reads.
pub fn vp8_grey_frame(keyframe: bool, size: usize, width: u16, height: u16, out: &mut Vec<u8>) {
    let first = GREY_HEADER_BYTES + GREY_MODE_BYTES_PER_MB * macroblocks(width, height);
    let size = size.max(vp8_grey_min_size(keyframe, width, height));
    let tag: u32 = (if keyframe { 0 } else { 1 }) | (1 << 4) | ((first as u32 & 0x7ffff) << 5);
    out.clear();
    out.extend_from_slice(&tag.to_le_bytes()[..3]);
    if keyframe {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&(width & 0x3fff).to_le_bytes());
        out.extend_from_slice(&(height & 0x3fff).to_le_bytes());
    }
    out.resize(size, 0);
}

/// One encoding a synthetic video source produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoLayer {
    pub bitrate_bps: u32,
    pub fps: u32,
    pub width: u16,
    pub height: u16,
}

impl VideoLayer {
    /// The three simulcast layers of a camera: about 150/500/1500 kbit/s at 15/30/30 fps.
    pub const SIMULCAST: [VideoLayer; 3] = [
        VideoLayer {
            bitrate_bps: 150_000,
            fps: 15,
            width: 320,
            height: 180,
        },
        VideoLayer {
            bitrate_bps: 500_000,
            fps: 30,
            width: 640,
            height: 360,
        },
        VideoLayer {
            bitrate_bps: 1_500_000,
            fps: 30,
            width: 1280,
            height: 720,
        },
    ];
    /// A camera without simulcast: one 500 kbit/s 30 fps layer.
    pub const SINGLE: VideoLayer = VideoLayer::SIMULCAST[1];
}

/// Stands in for a VP8 encoder: frames of realistic size and rate
/// (keyframes about eight times a delta frame, deltas varying ±30 %), a
/// keyframe first and whenever one is asked for (PLI/FIR).
#[derive(Debug, Clone)]
pub struct SyntheticVp8 {
    pub layer: VideoLayer,
    keyframe_wanted: bool,
    rng: u64,
}

/// Keyframes of real encoders at these rates are 5–10× a delta frame.
const KEYFRAME_FACTOR: usize = 8;

impl SyntheticVp8 {
    pub fn new(layer: VideoLayer, seed: u64) -> SyntheticVp8 {
        SyntheticVp8 {
            layer,
            keyframe_wanted: true,
            rng: seed | 1,
        }
    }

    pub fn request_keyframe(&mut self) {
        self.keyframe_wanted = true;
    }

    /// The next frame's bytes into `out` (cleared first); returns whether it
    /// is a keyframe. A stamp may be appended after.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> bool {
        let keyframe = std::mem::take(&mut self.keyframe_wanted);
        let mean = (self.layer.bitrate_bps / 8 / self.layer.fps.max(1)) as usize;
        // xorshift: cheap and deterministic per seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let wobble = 70 + (self.rng % 61) as usize; // 70..=130 %
        let size = if keyframe {
            mean * KEYFRAME_FACTOR
        } else {
            mean * wobble / 100
        }
        .max(16);
        out.clear();
        vp8_frame_header(keyframe, size, self.layer.width, self.layer.height, out);
        let fill = (self.rng >> 24) as u8;
        out.resize(size, fill);
        keyframe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_the_tone() {
        let mut phase = 0.0;
        let mut frame = [0i16; FRAME_SAMPLES];
        let mut pcm = Vec::new();
        for _ in 0..25 {
            sine_frame(660.0, &mut phase, &mut frame);
            pcm.extend_from_slice(&frame);
        }
        let f = dominant_frequency(&pcm, 200.0, 2000.0, 10.0);
        assert!((f - 660.0).abs() <= 10.0, "found {f}");
    }

    #[test]
    fn vp8_frames_round_trip() {
        let mut v = Vp8Frames::default();
        let key = v.frame(true, 3000);
        assert!(key.len() >= 3);
        let first = Vp8Frames::parse(&key[0]).unwrap();
        assert!(first.keyframe && first.start_of_frame);
        assert!(!Vp8Frames::parse(&key[1]).unwrap().start_of_frame);
        let delta = v.frame(false, 500);
        let d = Vp8Frames::parse(&delta[0]).unwrap();
        assert!(!d.keyframe && d.start_of_frame);
        assert_eq!(d.picture_id, first.picture_id + 1);
    }

    #[cfg(feature = "opus")]
    #[test]
    fn opus_tone_survives_encode_decode() {
        let packets = opus_tone::encode_tone(880.0, 50).unwrap();
        let mut dec = opus_tone::ToneDecoder::new().unwrap();
        let mut pcm = Vec::new();
        for p in &packets {
            dec.decode(p, &mut pcm).unwrap();
        }
        let f = dominant_frequency(&pcm[4800..], 200.0, 2000.0, 10.0);
        assert!((f - 880.0).abs() <= 10.0, "found {f}");
    }

    #[test]
    fn synthetic_vp8_sizes_follow_the_layer_and_keyframes_are_bigger() {
        let mut v = SyntheticVp8::new(VideoLayer::SINGLE, 7);
        let mut frame = Vec::new();
        assert!(v.next_frame(&mut frame), "first frame is a keyframe");
        let key = frame.len();
        let mut total = 0;
        for _ in 0..300 {
            assert!(!v.next_frame(&mut frame));
            assert_eq!(frame[0] & 1, 1, "delta frames have the P bit set");
            total += frame.len();
        }
        let kbps = total * 8 * 30 / 300 / 1000;
        assert!((450..=550).contains(&kbps), "{kbps} kbit/s");
        assert!(key >= 6 * total / 300, "keyframe {key} B");
        v.request_keyframe();
        assert!(v.next_frame(&mut frame));
        assert_eq!(frame[3..6], [0x9d, 0x01, 0x2a]);
    }

    #[cfg(feature = "opus")]
    #[test]
    fn dtx_sends_speech_and_almost_nothing_for_silence() {
        let speech = opus_tone::encode_dtx(true, 200).unwrap();
        let silence = opus_tone::encode_dtx(false, 200).unwrap();
        let sent = |p: &[Option<Vec<u8>>]| p.iter().filter(|p| p.is_some()).count();
        assert!(sent(&speech) >= 170, "speech sent {}", sent(&speech));
        assert!(sent(&silence) <= 30, "silence sent {}", sent(&silence));
    }
}
