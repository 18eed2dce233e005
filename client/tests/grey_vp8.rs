//! The grey VP8 frames the test clients send, decoded by libvpx's `vpxdec`
//! (installed by `scripts/test`): every frame decodes, at the size it
//! claims, to a flat grey picture.

use std::process::Command;

use stamma_client::media::{vp8_grey_frame, vp8_grey_min_size};

/// An IVF file (the container `vpxdec` reads) of `frames`.
fn ivf(width: u16, height: u16, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"DKIF");
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(b"VP80");
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&30u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (pts, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(pts as u64).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn have_vpxdec() -> bool {
    let found = Command::new("vpxdec").arg("--help").output().is_ok();
    if !found {
        // scripts/test installs it; CI must not pass without the check.
        assert!(
            std::env::var_os("CI").is_none(),
            "vpxdec is missing (apt-get install vpx-tools)"
        );
        eprintln!("skipped: vpxdec is missing (apt-get install vpx-tools)");
    }
    found
}

#[test]
fn libvpx_decodes_grey_frames_of_every_size_to_grey() {
    if !have_vpxdec() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("stamma-grey-vp8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Camera layers, a size that is no multiple of 16, and frames asked for
    // smaller than the minimum (lengthened) and larger (zero-padded).
    for (width, height) in [(320u16, 180u16), (640, 360), (1280, 720), (200, 100)] {
        let mut frames = Vec::new();
        for n in 0..12 {
            let keyframe = n % 5 == 0;
            let size = [10, 1200, 9000][n % 3];
            let mut f = Vec::new();
            vp8_grey_frame(keyframe, size, width, height, &mut f);
            assert_eq!(
                f.len(),
                size.max(vp8_grey_min_size(keyframe, width, height))
            );
            frames.push(f);
        }
        let input = dir.join(format!("{width}x{height}.ivf"));
        let output = dir.join(format!("{width}x{height}.yuv"));
        std::fs::write(&input, ivf(width, height, &frames)).unwrap();
        let run = Command::new("vpxdec")
            .arg("--i420")
            .arg("-o")
            .arg(&output)
            .arg(&input)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{width}x{height}: {stderr}");
        assert!(!stderr.contains("Failed"), "{width}x{height}: {stderr}");
        let yuv = std::fs::read(&output).unwrap();
        let (w, h) = (width as usize, height as usize);
        let picture = w * h + 2 * w.div_ceil(2) * h.div_ceil(2);
        assert_eq!(yuv.len(), frames.len() * picture, "{width}x{height}");
        let (lo, hi) = (yuv.iter().min().unwrap(), yuv.iter().max().unwrap());
        assert!(*lo >= 126 && *hi <= 130, "{width}x{height}: {lo}..={hi}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grey_frames_are_vp8_frames_with_the_right_header() {
    let mut f = Vec::new();
    vp8_grey_frame(true, 0, 640, 360, &mut f);
    assert_eq!(f[0] & 1, 0, "keyframe");
    assert_eq!(f[0] & 0x10, 0x10, "shown");
    assert_eq!(f[3..6], [0x9d, 0x01, 0x2a]);
    assert_eq!(u16::from_le_bytes([f[6], f[7]]), 640);
    assert_eq!(u16::from_le_bytes([f[8], f[9]]), 360);
    let first = (u32::from_le_bytes([f[0], f[1], f[2], 0]) >> 5) as usize;
    assert!(
        10 + first < f.len(),
        "the token partition follows the first"
    );
    vp8_grey_frame(false, 0, 640, 360, &mut f);
    assert_eq!(f[0] & 1, 1, "inter frame");
}
