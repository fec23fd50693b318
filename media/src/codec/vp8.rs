//! VP8 RTP payload descriptor (RFC 7741 §4.2) and keyframe header inspection.

use super::PayloadInfo;

/// The parts of a VP8 payload descriptor a forwarder rewrites or decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// S bit: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// Partition index (PID).
    pub partition_index: u8,
    /// 7- or 15-bit PictureID when present.
    pub picture_id: Option<u16>,
    /// TL0PICIDX when present.
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer index when present.
    pub temporal_id: Option<u8>,
    /// Y bit: layer sync, the frame depends only on the base layer.
    pub layer_sync: bool,
    /// Length of the descriptor in bytes; the VP8 payload starts after it.
    pub len: usize,
}

/// Parses the payload descriptor; `None` when the packet is too short to hold what its
/// own flags announce.
pub fn parse_descriptor(p: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *p.first()?;
    let mut d = Vp8Descriptor {
        start_of_partition: b0 & 0x10 != 0,
        partition_index: b0 & 0x07,
        ..Default::default()
    };
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            let m = *p.get(i)?;
            if m & 0x80 != 0 {
                let lo = *p.get(i + 1)?;
                d.picture_id = Some((u16::from(m & 0x7f) << 8) | u16::from(lo));
                i += 2;
            } else {
                d.picture_id = Some(u16::from(m));
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0_pic_idx = Some(*p.get(i)?);
            i += 1;
        }
        if x & 0x30 != 0 {
            let t = *p.get(i)?;
            i += 1;
            if x & 0x20 != 0 {
                d.temporal_id = Some(t >> 6);
                d.layer_sync = t & 0x20 != 0;
            }
        }
    }
    d.len = i;
    Some(d)
}

/// Forwarding facts for one VP8 RTP payload.
pub fn inspect(payload: &[u8]) -> Option<PayloadInfo> {
    Some(info(&parse_descriptor(payload)?, payload))
}

/// Forwarding facts from an already parsed descriptor of `payload`.
pub fn info(d: &Vp8Descriptor, payload: &[u8]) -> PayloadInfo {
    let frame_start = d.start_of_partition && d.partition_index == 0;
    // The VP8 frame tag's P bit (RFC 6386 §9.1) is 0 on keyframes.
    let keyframe_start = frame_start && payload.get(d.len).is_some_and(|b| b & 0x01 == 0);
    PayloadInfo {
        keyframe_start,
        frame_start,
        temporal_id: d.temporal_id,
        layer_sync: d.layer_sync || d.temporal_id == Some(0),
    }
}

/// Width and height from the start of a VP8 keyframe (after the descriptor).
pub fn keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let d = parse_descriptor(payload)?;
    let f = payload.get(d.len..)?;
    // 3-byte frame tag, 3-byte start code 9d 01 2a, then 14-bit width and height.
    if f.len() < 10 || f[0] & 0x01 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_descriptor_and_keyframe() {
        // X=1,S=1,PID=0 | I,L,T | M=1 pic 0x1234 | tl0 7 | tid 2, Y=1 | keyframe tag + size
        let p = [
            0x90, 0xe0, 0x92, 0x34, 0x07, 0xa0, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02,
            0x68, 0x01,
        ];
        let d = parse_descriptor(&p).unwrap();
        assert_eq!(d.picture_id, Some(0x1234));
        assert_eq!(d.tl0_pic_idx, Some(7));
        assert_eq!(d.temporal_id, Some(2));
        assert!(d.layer_sync);
        assert_eq!(d.len, 6);
        let info = inspect(&p).unwrap();
        assert!(info.keyframe_start && info.frame_start);
        assert_eq!(keyframe_size(&p), Some((640, 360)));
    }

    #[test]
    fn interframe_and_continuation_are_not_keyframes() {
        let inter = [0x90, 0x80, 0x05, 0x01, 0x00];
        assert!(!inspect(&inter).unwrap().keyframe_start);
        let cont = [0x80, 0x80, 0x05, 0x00];
        let i = inspect(&cont).unwrap();
        assert!(!i.frame_start && !i.keyframe_start);
    }

    #[test]
    fn truncated_descriptors_are_rejected_not_panicking() {
        for p in [
            &[][..],
            &[0x80],
            &[0x80, 0x80],
            &[0x80, 0x80, 0x80],
            &[0x80, 0x40],
        ] {
            assert!(parse_descriptor(p).is_none(), "{p:?}");
        }
        for n in 0..64u8 {
            let buf: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) | 0x80).collect();
            let _ = inspect(&buf);
            let _ = keyframe_size(&buf);
        }
    }
}
