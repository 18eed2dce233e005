//! Reading the few codec bytes the SFU needs: is this packet the start of a keyframe?
//! These bytes stay in clear under end-to-end encryption (DESIGN.md).

/// Whether a VP8 RTP payload starts a keyframe (RFC 7741 §4.2/§4.3).
pub fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = payload.get(at) else {
            return false;
        };
        at += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let Some(&pid) = payload.get(at) else {
                return false;
            };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
    }
    // VP8 payload header: P bit (inverse keyframe flag) is bit 0.
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_keyframe_with_and_without_extensions() {
        assert!(vp8_starts_keyframe(&[0x10, 0x00, 0x9d]));
        assert!(!vp8_starts_keyframe(&[0x10, 0x01]));
        // X, I with 15-bit picture id, then keyframe header.
        assert!(vp8_starts_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!vp8_starts_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x01]));
        // Not the start of the partition.
        assert!(!vp8_starts_keyframe(&[0x00, 0x00]));
    }

    #[test]
    fn truncated_payloads_are_not_keyframes() {
        for p in [
            &[][..],
            &[0x90],
            &[0x90, 0x80],
            &[0x90, 0x80, 0x81],
            &[0x10],
        ] {
            assert!(!vp8_starts_keyframe(p));
        }
    }
}
