//! H.264 RTP payload inspection (RFC 6184 single NAL, STAP-A, FU-A) and SPS size parsing.

use super::PayloadInfo;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PREFIX: u8 = 14;
const NAL_SVC_SLICE: u8 = 20;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Forwarding facts for one H.264 RTP payload. `frame_start` is best effort: H.264 RTP
/// has no frame-start flag, so a packet that opens with a parameter set, a prefix NAL or
/// the first fragment of a slice counts as a start.
pub fn inspect(payload: &[u8]) -> Option<PayloadInfo> {
    let hdr = *payload.first()?;
    if hdr & 0x80 != 0 {
        return None; // forbidden_zero_bit
    }
    let mut info = PayloadInfo::default();
    match hdr & 0x1f {
        0 | 30 | 31 => return None,
        STAP_A => {
            let mut rest = &payload[1..];
            let mut first = true;
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + len)?;
                if nal.is_empty() {
                    return None;
                }
                note_nal(nal, &mut info, first);
                first = false;
                rest = &rest[2 + len..];
            }
            if first {
                return None;
            }
        }
        FU_A => {
            let fu = *payload.get(1)?;
            let start = fu & 0x80 != 0;
            let t = fu & 0x1f;
            if start {
                info.frame_start = is_frame_opening(t);
                info.keyframe_start = t == NAL_IDR;
            }
        }
        25..=29 => return None, // STAP-B, MTAP, FU-B: not negotiated
        _ => note_nal(payload, &mut info, true),
    }
    Some(info)
}

fn is_frame_opening(t: u8) -> bool {
    matches!(
        t,
        1 | NAL_IDR | NAL_SPS | 8 | 9 | NAL_PREFIX | NAL_SVC_SLICE
    )
}

fn note_nal(nal: &[u8], info: &mut PayloadInfo, first: bool) {
    let t = nal[0] & 0x1f;
    if first && is_frame_opening(t) {
        info.frame_start = true;
    }
    if t == NAL_IDR || t == NAL_SPS {
        info.keyframe_start = true;
    }
    if (t == NAL_PREFIX || t == NAL_SVC_SLICE) && nal.len() >= 4 && nal[1] & 0x80 != 0 {
        // nal_unit_header_svc_extension: temporal_id is the top 3 bits of its third byte.
        info.temporal_id = Some(nal[3] >> 5);
        // An IDR-flagged prefix starts a decodable picture.
        if nal[1] & 0x40 != 0 {
            info.keyframe_start = true;
        }
    }
}

/// Picture size from the first SPS found in an RTP payload (single NAL or STAP-A).
pub fn sps_size_in_payload(payload: &[u8]) -> Option<(u16, u16)> {
    let hdr = *payload.first()?;
    match hdr & 0x1f {
        NAL_SPS => sps_size(payload),
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + len)?;
                if nal.first().is_some_and(|b| b & 0x1f == NAL_SPS) {
                    return sps_size(nal);
                }
                rest = &rest[2 + len..];
            }
            None
        }
        _ => None,
    }
}

/// Width and height (after cropping) from an SPS NAL unit including its header byte.
pub fn sps_size(nal: &[u8]) -> Option<(u16, u16)> {
    let rbsp = unescape(nal.get(1..)?);
    let mut r = BitReader {
        data: &rbsp,
        pos: 0,
    };
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bits(1)?;
        }
        r.ue()?; // bit_depth_luma
        r.ue()?; // bit_depth_chroma
        r.bits(1)?;
        if r.bits(1)? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?;
    let w_mbs = r.ue()?.checked_add(1)?;
    let h_map = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?; // direct_8x8_inference
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        0 | 3 => (1, 1),
        2 => (2, 1),
        _ => (2, 2),
    };
    let crop_x = sub_w;
    let crop_y = sub_h * (2 - frame_mbs_only);
    // Every count is an Exp-Golomb value up to 2^32 - 2 from untrusted bytes: checked
    // arithmetic turns an absurd SPS into `None` instead of an overflow.
    let w = w_mbs
        .checked_mul(16)?
        .checked_sub(cl.checked_add(cr)?.checked_mul(crop_x)?)?;
    let h = (2 - frame_mbs_only)
        .checked_mul(h_map)?
        .checked_mul(16)?
        .checked_sub(ct.checked_add(cb)?.checked_mul(crop_y)?)?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Removes emulation-prevention bytes (00 00 03 → 00 00).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut zeros = 0;
    for &x in b {
        if zeros >= 2 && x == 3 {
            zeros = 0;
            continue;
        }
        zeros = if x == 0 { zeros + 1 } else { 0 };
        out.push(x);
    }
    out
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + u64::from(rest)).try_into().ok()
    }

    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS of a 640x480 constrained-baseline stream (from an openh264 encode).
    const SPS_640X480: [u8; 10] = [0x67, 0x42, 0xc0, 0x1e, 0x8c, 0x8d, 0x40, 0x50, 0x1e, 0xd0];
    // SPS of a 1920x1080 high-profile stream (cropping 1088 → 1080).
    const SPS_1080P: [u8; 25] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60,
    ];

    #[test]
    fn sps_sizes() {
        assert_eq!(sps_size(&SPS_640X480), Some((640, 480)));
        assert_eq!(sps_size(&SPS_1080P), Some((1920, 1080)));
    }

    #[test]
    fn stap_a_with_sps_is_keyframe_start() {
        let mut p = vec![STAP_A];
        p.extend_from_slice(&(SPS_640X480.len() as u16).to_be_bytes());
        p.extend_from_slice(&SPS_640X480);
        p.extend_from_slice(&[0, 2, 0x68, 0xce]);
        let i = inspect(&p).unwrap();
        assert!(i.keyframe_start && i.frame_start);
        assert_eq!(sps_size_in_payload(&p), Some((640, 480)));
    }

    #[test]
    fn fu_a_start_and_middle() {
        assert!(inspect(&[0x7c, 0x85, 1, 2]).unwrap().keyframe_start);
        let mid = inspect(&[0x7c, 0x05, 1, 2]).unwrap();
        assert!(!mid.keyframe_start && !mid.frame_start);
        let p_slice = inspect(&[0x7c, 0x81, 1]).unwrap();
        assert!(p_slice.frame_start && !p_slice.keyframe_start);
    }

    #[test]
    fn svc_prefix_gives_temporal_id() {
        // prefix NAL: svc_extension_flag=1, idr=0 | dep/qual | temporal_id=2
        let i = inspect(&[0x6e, 0x80, 0x00, 0x40 | 0x07]).unwrap();
        assert_eq!(i.temporal_id, Some(2));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678u32;
        for len in 0..200usize {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = inspect(&buf);
            let _ = sps_size_in_payload(&buf);
            let _ = sps_size(&buf);
        }
        assert!(inspect(&[]).is_none());
        assert!(inspect(&[STAP_A, 0, 9, 1]).is_none());
    }

    #[test]
    fn huge_sps_dimensions_are_rejected_not_overflowing() {
        // Found by `cargo fuzz run sfu_payload`: pic_width_in_mbs_minus1 near 2^31, so
        // the width in pixels overflowed u32 (a panic wherever overflow checks are on).
        let sps = [
            0x67, 0x64, 0x28, 0xae, 0xac, 0xd9, 0, 0, 0, 0, 0x28, 0xf0, 0xfd, 0x3c, 0x60,
        ];
        assert_eq!(sps_size_in_payload(&sps), None);
        assert_eq!(sps_size(&sps), None);
    }
}
