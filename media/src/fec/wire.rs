//! Byte layouts: the few RTP header fields FEC needs, and the FEC header.

use crate::Error;

/// Length of the FEC header that follows the RTP header of a repair packet.
pub const FEC_HEADER_LEN: usize = 16;
/// Version carried in the high nibble of the first FEC header byte.
pub const FEC_VERSION: u8 = 1;

/// The RTP fields FEC looks at, from a packet checked to be well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView {
    /// Marker bit (end of frame for video).
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// SSRC.
    pub ssrc: u32,
    /// Offset of the payload (after CSRCs and header extension).
    pub payload_start: usize,
    /// End of the payload (before padding).
    pub payload_end: usize,
}

impl RtpView {
    /// Check `b` is an RTP packet (RFC 3550 §5.1) and read its fields. Never panics.
    pub fn parse(b: &[u8]) -> Result<RtpView, Error> {
        if b.len() < 12 {
            return Err(Error::NotRtp("shorter than the 12-byte header"));
        }
        if b[0] >> 6 != 2 {
            return Err(Error::NotRtp("version is not 2"));
        }
        let mut start = 12 + 4 * usize::from(b[0] & 0x0f);
        if b.len() < start {
            return Err(Error::NotRtp("CSRC list overruns the packet"));
        }
        if b[0] & 0x10 != 0 {
            if b.len() < start + 4 {
                return Err(Error::NotRtp("extension header overruns the packet"));
            }
            let words = usize::from(u16::from_be_bytes([b[start + 2], b[start + 3]]));
            start += 4 + 4 * words;
            if b.len() < start {
                return Err(Error::NotRtp("extension overruns the packet"));
            }
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = usize::from(b[b.len() - 1]);
            if pad == 0 || start + pad > b.len() {
                return Err(Error::NotRtp("bad padding length"));
            }
            end -= pad;
        }
        Ok(RtpView {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7f,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload_start: start,
            payload_end: end,
        })
    }
}

/// The FEC header of a repair packet (16 bytes, network byte order):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  VER  | flags |   k - 1       |     r - 1     |  repair index |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       protected SSRC                          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           block id            |        sequence base          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                 CRC-32 of the block's sources                 |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// `k - 1` and `r - 1` are stored so that the full range 1..=256 fits a byte; `k + r`
/// may not exceed 256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecHeader {
    /// Number of source packets in the block (1..=255).
    pub k: u16,
    /// Number of repair packets of the block (1..=255, `k + r ≤ 256`).
    pub r: u16,
    /// Which repair shard this is, `0..r` (shard number `k + index` of the code).
    pub index: u8,
    /// SSRC of the protected media stream.
    pub protected_ssrc: u32,
    /// Block number, +1 per block that has repair packets, wrapping.
    pub block_id: u16,
    /// Sequence number of the block's first source packet; sources are consecutive.
    pub seq_base: u16,
    /// CRC-32 (IEEE 802.3) of the concatenated unpadded source shards.
    pub crc: u32,
}

impl FecHeader {
    /// Serialise into the first 16 bytes of `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(FEC_VERSION << 4);
        out.push((self.k - 1) as u8);
        out.push((self.r - 1) as u8);
        out.push(self.index);
        out.extend_from_slice(&self.protected_ssrc.to_be_bytes());
        out.extend_from_slice(&self.block_id.to_be_bytes());
        out.extend_from_slice(&self.seq_base.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
    }

    /// Parse and validate a FEC header. Never panics.
    pub fn parse(b: &[u8]) -> Result<FecHeader, Error> {
        if b.len() < FEC_HEADER_LEN {
            return Err(Error::BadFec("shorter than the FEC header"));
        }
        if b[0] >> 4 != FEC_VERSION {
            return Err(Error::BadFec("unknown FEC version"));
        }
        if b[0] & 0x0f != 0 {
            return Err(Error::BadFec("reserved flags set"));
        }
        let k = u16::from(b[1]) + 1;
        let r = u16::from(b[2]) + 1;
        if usize::from(k + r) > super::MAX_SHARDS {
            return Err(Error::BadFec("k + r exceeds 256"));
        }
        if u16::from(b[3]) >= r {
            return Err(Error::BadFec("repair index not below r"));
        }
        Ok(FecHeader {
            k,
            r,
            index: b[3],
            protected_ssrc: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            block_id: u16::from_be_bytes([b[8], b[9]]),
            seq_base: u16::from_be_bytes([b[10], b[11]]),
            crc: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        })
    }
}

/// Write `packet` as a shard of length `shard_len` into `out`: 16-bit length, bytes, zeros.
pub(crate) fn write_shard(packet: &[u8], shard_len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(shard_len);
    out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    out.extend_from_slice(packet);
    out.resize(shard_len, 0);
}

/// CRC-32 over the unpadded shards (`len ‖ packet`) of a block, in order.
pub(crate) fn block_crc<'a>(packets: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in packets {
        h.update(&(p.len() as u16).to_be_bytes());
        h.update(p);
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FecHeader {
            k: 256 - 17,
            r: 17,
            index: 16,
            protected_ssrc: 0xdead_beef,
            block_id: 65535,
            seq_base: 1,
            crc: 0x0102_0304,
        };
        let mut b = Vec::new();
        h.write(&mut b);
        assert_eq!(b.len(), FEC_HEADER_LEN);
        assert_eq!(b[0], 0x10);
        assert_eq!(b[1], 238);
        assert_eq!(FecHeader::parse(&b), Ok(h));
    }

    #[test]
    fn header_rejects_bad_values() {
        let mut b = Vec::new();
        FecHeader {
            k: 4,
            r: 2,
            index: 1,
            protected_ssrc: 1,
            block_id: 0,
            seq_base: 0,
            crc: 0,
        }
        .write(&mut b);
        let mut bad = b.clone();
        bad[3] = 2;
        assert!(FecHeader::parse(&bad).is_err());
        let mut bad = b.clone();
        bad[1] = 200;
        bad[2] = 100;
        assert!(FecHeader::parse(&bad).is_err());
        let mut bad = b.clone();
        bad[0] = 0x20;
        assert!(FecHeader::parse(&bad).is_err());
        assert!(FecHeader::parse(&b[..15]).is_err());
    }

    #[test]
    fn rtp_parse_handles_csrc_extension_padding() {
        let mut p = vec![
            0x80 | 0x20 | 0x10 | 2,
            0x80 | 96,
            0x12,
            0x34,
            0,
            0,
            0,
            9,
            1,
            2,
            3,
            4,
        ];
        p.extend_from_slice(&[0; 8]); // two CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]); // one-word extension
        p.extend_from_slice(b"payload");
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let v = RtpView::parse(&p).unwrap();
        assert!(v.marker);
        assert_eq!(v.payload_type, 96);
        assert_eq!(v.seq, 0x1234);
        assert_eq!(v.timestamp, 9);
        assert_eq!(v.ssrc, 0x0102_0304);
        assert_eq!(&p[v.payload_start..v.payload_end], b"payload");
        // Truncations are errors, not panics.
        for n in 0..p.len() - 3 {
            let _ = RtpView::parse(&p[..n]);
        }
        let mut bad = p.clone();
        *bad.last_mut().unwrap() = 200;
        assert!(RtpView::parse(&bad).is_err());
    }
}
