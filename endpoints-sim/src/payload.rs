//! Synthetic but well-formed media frames that carry a measurement marker.
//!
//! Every frame carries, right after its NAL header (video) or Opus TOC byte (audio), a
//! marker: magic, sender id, frame counter and send timestamp. The numbers are written
//! 7 bits per byte with the top bit set, so the marker never contains a zero byte: it can
//! never form an H.264 start code or need emulation prevention, and receivers read it
//! straight out of the depacketized frame.

use rand::RngCore;
use rand_chacha::ChaCha8Rng;

const MAGIC: [u8; 4] = *b"HTBM";
/// Bytes of a marker: magic + u32 + u64 + u64 in 7-bit groups.
pub const MARKER_LEN: usize = 4 + 5 + 10 + 10;

/// What a receiver learns from one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub sender: u32,
    pub counter: u64,
    /// Microseconds since the process-wide epoch of the sender (same process as the receiver).
    pub sent_us: u64,
}

fn put_varbits(out: &mut Vec<u8>, mut v: u64, groups: usize) {
    for _ in 0..groups {
        out.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
}

fn get_varbits(buf: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, b) in buf.iter().enumerate() {
        if b & 0x80 == 0 {
            return None;
        }
        v |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
    }
    Some(v)
}

impl Marker {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        put_varbits(out, u64::from(self.sender), 5);
        put_varbits(out, self.counter, 10);
        put_varbits(out, self.sent_us, 10);
    }

    /// Reads a marker at the start of `buf`; `None` if there is none.
    pub fn read(buf: &[u8]) -> Option<Marker> {
        let m = buf.get(..MARKER_LEN)?;
        if m[..4] != MAGIC {
            return None;
        }
        let sender = u32::try_from(get_varbits(&m[4..9])?).ok()?;
        Some(Marker {
            sender,
            counter: get_varbits(&m[9..19])?,
            sent_us: get_varbits(&m[19..29])?,
        })
    }
}

/// Appends `len` random RBSP bytes with emulation prevention, so the NAL unit contains
/// no start code, and ends with a non-zero byte (rbsp trailing bits).
fn push_random_rbsp(out: &mut Vec<u8>, rng: &mut ChaCha8Rng, len: usize) {
    let mut raw = vec![0u8; len];
    rng.fill_bytes(&mut raw);
    if let Some(last) = raw.last_mut() {
        *last = 0x80;
    }
    let mut zeros = 0;
    for b in raw {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// Constrained baseline, level 3.1, 1280x720 (a real encoder's parameter sets).
const SPS: [u8; 13] = [
    0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x06, 0xd0, 0xa1, 0x35,
];
const PPS: [u8; 4] = [0x68, 0xce, 0x06, 0xe2];

/// NAL unit types the generator writes.
pub const NAL_NON_IDR: u8 = 1;
pub const NAL_IDR: u8 = 5;

/// Builds one H.264 access unit in Annex-B form: SPS + PPS + IDR slice for a keyframe,
/// one non-IDR slice otherwise. `size` is the approximate total size in bytes.
pub fn h264_frame(marker: &Marker, keyframe: bool, size: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + size / 64 + 64);
    if keyframe {
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(&SPS);
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(&PPS);
    }
    out.extend_from_slice(&START_CODE);
    // nal_ref_idc 3 for IDR, 2 for reference P slices.
    out.push(if keyframe {
        0x60 | NAL_IDR
    } else {
        0x40 | NAL_NON_IDR
    });
    marker.write(&mut out);
    let body = size.saturating_sub(out.len()).max(16);
    push_random_rbsp(&mut out, rng, body);
    out
}

/// Finds the marker of the first slice NAL unit of an Annex-B access unit.
/// Returns the marker and whether the slice is an IDR slice.
pub fn h264_read_marker(frame: &[u8]) -> Option<(Marker, bool)> {
    let mut i = 0;
    while i + 3 <= frame.len() {
        if frame[i] == 0 && frame[i + 1] == 0 && frame[i + 2] == 1 {
            let nal = i + 3;
            let header = *frame.get(nal)?;
            let ty = header & 0x1f;
            if ty == NAL_IDR || ty == NAL_NON_IDR {
                return Marker::read(frame.get(nal + 1..)?).map(|m| (m, ty == NAL_IDR));
            }
            i = nal;
        } else {
            i += 1;
        }
    }
    None
}

/// Opus TOC: config 15 (hybrid fullband 20 ms), mono, one frame.
const OPUS_TOC: u8 = 15 << 3;

/// One 20 ms Opus-sized packet (~80 bytes) with the marker after the TOC byte.
pub fn opus_frame(marker: &Marker, size: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(MARKER_LEN + 8));
    out.push(OPUS_TOC);
    marker.write(&mut out);
    let pad = size.saturating_sub(out.len());
    let start = out.len();
    out.resize(start + pad, 0);
    rng.fill_bytes(&mut out[start..]);
    out
}

pub fn opus_read_marker(frame: &[u8]) -> Option<Marker> {
    Marker::read(frame.get(1..)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn marker_roundtrip_and_no_zero_bytes() {
        let m = Marker {
            sender: u32::MAX,
            counter: u64::MAX,
            sent_us: 0,
        };
        let mut v = Vec::new();
        m.write(&mut v);
        assert_eq!(v.len(), MARKER_LEN);
        assert!(v.iter().all(|&b| b != 0));
        assert_eq!(Marker::read(&v), Some(m));
        assert_eq!(Marker::read(&v[1..]), None);
        assert_eq!(Marker::read(&[]), None);
    }

    #[test]
    fn h264_frames_are_annex_b_without_stray_start_codes() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (n, key) in [(0u64, true), (1, false), (2, false)] {
            let m = Marker {
                sender: 9,
                counter: n,
                sent_us: 1234 + n,
            };
            let f = h264_frame(&m, key, 20_000, &mut rng);
            let starts = f.windows(3).filter(|w| w == &[0, 0, 1]).count();
            assert_eq!(starts, if key { 3 } else { 1 }, "only our start codes");
            assert_eq!(h264_read_marker(&f), Some((m, key)));
            assert_ne!(*f.last().unwrap_or(&0), 0);
        }
    }

    #[test]
    fn opus_roundtrip() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let m = Marker {
            sender: 3,
            counter: 77,
            sent_us: 99,
        };
        let f = opus_frame(&m, 80, &mut rng);
        assert_eq!(f.len(), 80);
        assert_eq!(opus_read_marker(&f), Some(m));
        assert_eq!(opus_read_marker(&[1, 2, 3]), None);
    }
}
