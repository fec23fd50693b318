//! Byte layouts the recovery loop needs besides FEC: the frame-marking header extension
//! that tells a receiver where frames start and end and which temporal layer they are
//! (RFC 9626, long form), RTX packets (RFC 4588) and the RTCP feedback the receiver
//! sends back (generic NACK and PLI of RFC 4585, and an APP packet carrying the loss
//! statistics the FEC adaptation needs). Every parser returns `None` instead of
//! panicking, whatever the bytes.

use crate::fec::RtpView;

/// Frame marking (RFC 9626 §3.2, the form for scalable streams), carried as a one-byte
/// RTP header extension element (RFC 8285) of 3 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMarking {
    /// First packet of the frame.
    pub start: bool,
    /// Last packet of the frame.
    pub end: bool,
    /// The frame can be decoded without any earlier frame (a keyframe).
    pub independent: bool,
    /// No other frame references this one.
    pub discardable: bool,
    /// Base-layer sync: the frame references only the base layer.
    pub base_sync: bool,
    /// Temporal layer id (0..=7).
    pub tid: u8,
    /// Spatial/quality layer id.
    pub lid: u8,
    /// Running index of base-layer (TL0) frames, wrapping; a frame of layer `tid > 0`
    /// carries the index of the TL0 frame it follows.
    pub tl0_pic_idx: u8,
}

impl FrameMarking {
    /// The marking of a whole picture of a stream with `layers` dyadic temporal layers
    /// (OpenH264's pattern): nothing references the top layer and T1 predicts from T0
    /// only. `start`/`end` are set for the picture; a packetiser sets them per packet.
    pub fn picture(tid: u8, layers: u8, keyframe: bool, tl0_pic_idx: u8) -> Self {
        FrameMarking {
            start: true,
            end: true,
            independent: keyframe,
            discardable: layers > 1 && tid + 1 == layers,
            base_sync: tid == 1,
            tid,
            lid: 0,
            tl0_pic_idx,
        }
    }

    /// The 3 bytes of the extension element's body.
    pub fn bytes(&self) -> [u8; 3] {
        let b0 = (u8::from(self.start) << 7)
            | (u8::from(self.end) << 6)
            | (u8::from(self.independent) << 5)
            | (u8::from(self.discardable) << 4)
            | (u8::from(self.base_sync) << 3)
            | (self.tid & 0x07);
        [b0, self.lid, self.tl0_pic_idx]
    }

    /// Parse an extension element's body (at least 3 bytes).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b0 = *b.first()?;
        Some(FrameMarking {
            start: b0 & 0x80 != 0,
            end: b0 & 0x40 != 0,
            independent: b0 & 0x20 != 0,
            discardable: b0 & 0x10 != 0,
            base_sync: b0 & 0x08 != 0,
            tid: b0 & 0x07,
            lid: *b.get(1)?,
            tl0_pic_idx: *b.get(2)?,
        })
    }

    /// Find the element with extension id `id` in a packet's one-byte header extension.
    pub fn parse(packet: &[u8], id: u8) -> Option<Self> {
        let rtp = RtpView::parse(packet).ok()?;
        if packet[0] & 0x10 == 0 {
            return None;
        }
        let ext_start = 12 + 4 * usize::from(packet[0] & 0x0f);
        // RtpView checked the extension fits; only the one-byte profile is read here.
        let profile = u16::from_be_bytes([*packet.get(ext_start)?, *packet.get(ext_start + 1)?]);
        if profile != 0xBEDE {
            return None;
        }
        let mut i = ext_start + 4;
        while i < rtp.payload_start {
            let h = packet[i];
            if h == 0 {
                i += 1;
                continue;
            }
            let el_id = h >> 4;
            let len = usize::from(h & 0x0f) + 1;
            if el_id == 15 {
                return None;
            }
            let data = packet.get(i + 1..i + 1 + len)?;
            if i + 1 + len > rtp.payload_start {
                return None;
            }
            if el_id == id {
                return Self::from_bytes(data);
            }
            i += 1 + len;
        }
        None
    }
}

/// Build a video RTP packet (no CSRC) carrying a frame-marking extension with id
/// `ext_id` (1..=14). Packetizers of Huitong endpoints add the element; tests use this.
#[allow(clippy::too_many_arguments)]
pub fn build_media_packet(
    ssrc: u32,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    marker: bool,
    ext_id: u8,
    marking: FrameMarking,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(20 + payload.len());
    p.push(0x90);
    p.push((u8::from(marker) << 7) | (payload_type & 0x7f));
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    // One 4-byte word: element header + 3 data bytes.
    p.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01]);
    p.push(((ext_id & 0x0f) << 4) | 2);
    p.extend_from_slice(&marking.bytes());
    p.extend_from_slice(payload);
    p
}

/// Wrap a media packet as RTX (RFC 4588): same header fields and extension, the RTX
/// payload type, SSRC and sequence number, and the original sequence number in front of
/// the original payload (padding is carried along as payload bytes).
pub fn rtx_wrap(original: &[u8], rtx_ssrc: u32, rtx_pt: u8, rtx_seq: u16) -> Option<Vec<u8>> {
    let rtp = RtpView::parse(original).ok()?;
    let mut p = Vec::with_capacity(original.len() + 2);
    p.extend_from_slice(&original[..rtp.payload_start]);
    p[1] = (p[1] & 0x80) | (rtx_pt & 0x7f);
    p[2..4].copy_from_slice(&rtx_seq.to_be_bytes());
    p[8..12].copy_from_slice(&rtx_ssrc.to_be_bytes());
    p.extend_from_slice(&rtp.seq.to_be_bytes());
    p.extend_from_slice(&original[rtp.payload_start..]);
    Some(p)
}

/// Undo [`rtx_wrap`]: the original packet, byte for byte, given the media SSRC and the
/// payload type the RTX stream is associated with (`apt`).
pub fn rtx_unwrap(rtx: &[u8], media_ssrc: u32, apt: u8) -> Option<Vec<u8>> {
    let rtp = RtpView::parse(rtx).ok()?;
    // With padding the OSN still sits right after the header.
    let osn = rtx.get(rtp.payload_start..rtp.payload_start + 2)?;
    let mut p = Vec::with_capacity(rtx.len() - 2);
    p.extend_from_slice(&rtx[..rtp.payload_start]);
    p[1] = (p[1] & 0x80) | (apt & 0x7f);
    p[2..4].copy_from_slice(osn);
    p[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    p.extend_from_slice(&rtx[rtp.payload_start + 2..]);
    RtpView::parse(&p).ok()?;
    Some(p)
}

/// RTCP feedback from the receiver to the sender of one video stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Feedback {
    /// Generic NACK (RFC 4585 §6.2.1): these sequence numbers are missing.
    Nack {
        /// SSRC of the media stream.
        media_ssrc: u32,
        /// Missing sequence numbers.
        seqs: Vec<u16>,
    },
    /// Picture Loss Indication (RFC 4585 §6.3.1): send a keyframe.
    Pli {
        /// SSRC of the media stream.
        media_ssrc: u32,
    },
    /// Loss statistics for FEC adaptation, RTCP APP (PT 204), name `HTLR`, subtype 0:
    /// media SSRC (4 bytes), loss fraction ×65535 (2), mean loss-run length in packets
    /// ×256 (2), packets expected in the interval (4).
    LossReport {
        /// SSRC of the media stream.
        media_ssrc: u32,
        /// Fraction of packets (media + repair, first transmissions) lost.
        fraction: f64,
        /// Mean length of runs of consecutive losses, in packets.
        burstiness: f64,
        /// Packets the interval should have carried.
        expected: u32,
    },
    /// Arrival times of carrier packets, for delay-based congestion control
    /// ([`crate::cc::feedback`]), RTCP APP (PT 204), name `HTAT`, subtype 0: media SSRC
    /// (4 bytes), first carrier sequence number covered (2), count (2), reference time
    /// in 250 µs units of the receiver's clock (4), then `count` arrival offsets from
    /// the reference in 250 µs units (2 each, `0xFFFF` = not received), zero-padded to
    /// a multiple of 4 bytes.
    Arrivals {
        /// SSRC of the media stream (= the carrier's).
        media_ssrc: u32,
        /// Carrier sequence number of the first offset.
        base_seq: u16,
        /// Receiver clock, 250 µs units, wrapping.
        reference: u32,
        /// One per sequence number from `base_seq`; [`ARRIVAL_NOT_RECEIVED`] if missing.
        offsets: Vec<u16>,
    },
}

/// The name of the arrival-time report.
pub const ARRIVALS_NAME: &[u8; 4] = b"HTAT";

/// An [`Feedback::Arrivals`] offset for a packet that has not arrived.
pub const ARRIVAL_NOT_RECEIVED: u16 = 0xFFFF;

/// The name of our APP packet.
pub const LOSS_REPORT_NAME: &[u8; 4] = b"HTLR";

impl Feedback {
    /// Serialise as one RTCP packet; `sender_ssrc` is the reporting receiver's SSRC.
    pub fn to_bytes(&self, sender_ssrc: u32) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Feedback::Nack { media_ssrc, seqs } => {
                p.extend_from_slice(&[0x81, 205, 0, 0]);
                p.extend_from_slice(&sender_ssrc.to_be_bytes());
                p.extend_from_slice(&media_ssrc.to_be_bytes());
                let mut sorted = seqs.clone();
                sorted.sort_unstable();
                sorted.dedup();
                let mut i = 0;
                while i < sorted.len() {
                    let pid = sorted[i];
                    let mut blp = 0u16;
                    let mut j = i + 1;
                    while j < sorted.len() {
                        let d = sorted[j].wrapping_sub(pid);
                        if d == 0 || d > 16 {
                            break;
                        }
                        blp |= 1 << (d - 1);
                        j += 1;
                    }
                    p.extend_from_slice(&pid.to_be_bytes());
                    p.extend_from_slice(&blp.to_be_bytes());
                    i = j;
                }
            }
            Feedback::Pli { media_ssrc } => {
                p.extend_from_slice(&[0x81, 206, 0, 0]);
                p.extend_from_slice(&sender_ssrc.to_be_bytes());
                p.extend_from_slice(&media_ssrc.to_be_bytes());
            }
            Feedback::LossReport {
                media_ssrc,
                fraction,
                burstiness,
                expected,
            } => {
                p.extend_from_slice(&[0x80, 204, 0, 0]);
                p.extend_from_slice(&sender_ssrc.to_be_bytes());
                p.extend_from_slice(LOSS_REPORT_NAME);
                p.extend_from_slice(&media_ssrc.to_be_bytes());
                let f = (fraction.clamp(0.0, 1.0) * 65535.0).round() as u16;
                // The field's whole range (8.8 fixed point): clamping lower would change
                // values a parsed report carries when it is forwarded.
                let b = (burstiness.clamp(0.0, f64::from(u16::MAX) / 256.0) * 256.0).round() as u16;
                p.extend_from_slice(&f.to_be_bytes());
                p.extend_from_slice(&b.to_be_bytes());
                p.extend_from_slice(&expected.to_be_bytes());
            }
            Feedback::Arrivals {
                media_ssrc,
                base_seq,
                reference,
                offsets,
            } => {
                p.extend_from_slice(&[0x80, 204, 0, 0]);
                p.extend_from_slice(&sender_ssrc.to_be_bytes());
                p.extend_from_slice(ARRIVALS_NAME);
                p.extend_from_slice(&media_ssrc.to_be_bytes());
                p.extend_from_slice(&base_seq.to_be_bytes());
                // The count field is 16 bits; a caller never has that many in one report.
                let n = offsets.len().min(usize::from(u16::MAX));
                p.extend_from_slice(&(n as u16).to_be_bytes());
                p.extend_from_slice(&reference.to_be_bytes());
                for o in &offsets[..n] {
                    p.extend_from_slice(&o.to_be_bytes());
                }
                p.resize(p.len().next_multiple_of(4), 0);
            }
        }
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    /// Parse every feedback packet of ours in an RTCP compound packet; other RTCP
    /// packets are skipped, a malformed one ends the parse.
    pub fn parse_compound(b: &[u8]) -> Vec<Feedback> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 4 <= b.len() {
            if b[i] >> 6 != 2 {
                break;
            }
            let fmt = b[i] & 0x1f;
            let pt = b[i + 1];
            let len = 4 * (usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]])) + 1);
            let Some(pkt) = b.get(i..i + len) else {
                break;
            };
            if let Some(f) = Self::parse_one(fmt, pt, pkt) {
                out.push(f);
            }
            i += len;
        }
        out
    }

    fn parse_one(fmt: u8, pt: u8, p: &[u8]) -> Option<Feedback> {
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_be_bytes(p.get(o..o + 4)?.try_into().ok()?))
        };
        let u16_at = |o: usize| -> Option<u16> {
            Some(u16::from_be_bytes(p.get(o..o + 2)?.try_into().ok()?))
        };
        match (pt, fmt) {
            (205, 1) => {
                let media_ssrc = u32_at(8)?;
                let mut seqs = Vec::new();
                let mut o = 12;
                while o + 4 <= p.len() {
                    let pid = u16_at(o)?;
                    let blp = u16_at(o + 2)?;
                    seqs.push(pid);
                    for bit in 0..16u16 {
                        if blp & (1 << bit) != 0 {
                            seqs.push(pid.wrapping_add(bit + 1));
                        }
                    }
                    o += 4;
                }
                Some(Feedback::Nack { media_ssrc, seqs })
            }
            (206, 1) => Some(Feedback::Pli {
                media_ssrc: u32_at(8)?,
            }),
            (204, 0) if p.get(8..12)? == LOSS_REPORT_NAME => {
                let f = f64::from(u16_at(16)?) / 65535.0;
                let b = f64::from(u16_at(18)?) / 256.0;
                Some(Feedback::LossReport {
                    media_ssrc: u32_at(12)?,
                    fraction: f,
                    burstiness: b,
                    expected: u32_at(20)?,
                })
            }
            (204, 0) if p.get(8..12)? == ARRIVALS_NAME => {
                let n = usize::from(u16_at(18)?);
                let offsets = p
                    .get(24..24 + 2 * n)?
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                Some(Feedback::Arrivals {
                    media_ssrc: u32_at(12)?,
                    base_seq: u16_at(16)?,
                    reference: u32_at(20)?,
                    offsets,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_marking_round_trip() {
        let m = FrameMarking {
            start: true,
            end: false,
            independent: false,
            discardable: true,
            base_sync: false,
            tid: 2,
            lid: 0,
            tl0_pic_idx: 201,
        };
        let p = build_media_packet(7, 96, 65535, 1234, false, 3, m, b"hello");
        assert_eq!(FrameMarking::parse(&p, 3), Some(m));
        assert_eq!(FrameMarking::parse(&p, 4), None);
        let v = RtpView::parse(&p).unwrap();
        assert_eq!(&p[v.payload_start..], b"hello");
    }

    #[test]
    fn rtx_round_trip_is_byte_exact() {
        let m = FrameMarking {
            end: true,
            ..Default::default()
        };
        let p = build_media_packet(7, 96, 40000, 99, true, 3, m, &[1, 2, 3, 4, 5]);
        let r = rtx_wrap(&p, 9, 97, 12).unwrap();
        let v = RtpView::parse(&r).unwrap();
        assert_eq!((v.ssrc, v.payload_type, v.seq, v.marker), (9, 97, 12, true));
        assert_eq!(rtx_unwrap(&r, 7, 96).unwrap(), p);
    }

    #[test]
    fn feedback_round_trip() {
        let seqs: Vec<u16> = vec![65530, 65531, 65535, 3, 4, 100, 117, 118];
        let msgs = [
            Feedback::Nack {
                media_ssrc: 5,
                seqs: seqs.clone(),
            },
            Feedback::Pli { media_ssrc: 5 },
            Feedback::LossReport {
                media_ssrc: 5,
                fraction: 0.5,
                burstiness: 2.25,
                expected: 1000,
            },
        ];
        let mut compound = Vec::new();
        for m in &msgs {
            compound.extend(m.to_bytes(1));
        }
        let back = Feedback::parse_compound(&compound);
        assert_eq!(back.len(), 3);
        let Feedback::Nack { seqs: got, .. } = &back[0] else {
            panic!("{back:?}")
        };
        let mut want = seqs;
        want.sort_unstable();
        let mut got = got.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(back[1], msgs[1]);
        let Feedback::LossReport {
            fraction,
            burstiness,
            ..
        } = back[2]
        else {
            panic!()
        };
        assert!((fraction - 0.5).abs() < 1e-4 && (burstiness - 2.25).abs() < 1e-3);
    }

    #[test]
    fn arrivals_round_trip_and_refuse_a_short_list() {
        let a = Feedback::Arrivals {
            media_ssrc: 9,
            base_seq: 65535,
            reference: 0xdead_beef,
            offsets: vec![0, 3, ARRIVAL_NOT_RECEIVED],
        };
        let b = a.to_bytes(1);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(Feedback::parse_compound(&b), vec![a]);
        // A count larger than the offsets that follow is malformed.
        let mut short = b.clone();
        short[18..20].copy_from_slice(&5u16.to_be_bytes());
        assert!(Feedback::parse_compound(&short).is_empty());
    }

    #[test]
    fn loss_report_round_trips_the_whole_burstiness_range() {
        // Found by `cargo fuzz run recovery_wire`: the writer clamped burstiness at 255,
        // so a parsed report of 255.996 (0xffff) came back as 255.0.
        let mut p = vec![0x80, 204, 0, 5, 0, 0, 0, 1];
        p.extend_from_slice(LOSS_REPORT_NAME);
        p.extend_from_slice(&[0, 0, 0, 5, 0x80, 0x00, 0xff, 0xff, 0, 0, 3, 0xe8]);
        let parsed = Feedback::parse_compound(&p);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].to_bytes(1), p);
        assert_eq!(Feedback::parse_compound(&parsed[0].to_bytes(1)), parsed);
    }

    #[test]
    fn parsers_never_panic() {
        let mut seed = 1u64;
        for len in 0..200usize {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 33) as u8
                    })
                    .collect();
                let _ = Feedback::parse_compound(&bytes);
                let _ = FrameMarking::parse(&bytes, 3);
                let _ = rtx_unwrap(&bytes, 1, 96);
                let mut b2 = bytes.clone();
                if b2.len() > 1 {
                    b2[0] = 0x90 | (b2[0] & 0x2f);
                }
                let _ = FrameMarking::parse(&b2, 3);
                let _ = rtx_unwrap(&b2, 1, 96);
            }
        }
    }
}
