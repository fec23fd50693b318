//! The receiving side: collects source and repair packets, rebuilds missing sources.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::rs::RsCache;
use super::wire::{FEC_HEADER_LEN, FecHeader, RtpView, block_crc, write_shard};
use crate::Error;

/// Which packets the decoder handles and how much it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecDecoderConfig {
    /// SSRC of the protected media stream.
    pub media_ssrc: u32,
    /// Payload type of `x-huitong-rs-fec`.
    pub fec_payload_type: u8,
    /// SSRC of the repair stream, when known from SDP; `None` accepts any SSRC whose
    /// header names `media_ssrc` as protected.
    pub fec_ssrc: Option<u32>,
    /// Blocks kept open waiting for more packets; older ones are given up and reported.
    pub max_open_blocks: u64,
    /// Source packets remembered (by sequence distance from the newest).
    pub max_buffered_sources: u64,
    /// With `push_at`/`handle_timeout`: a block still short this long after its first
    /// repair packet arrived is given up (its repairs are sent back to back, so only
    /// jitter separates them), early enough to NACK before the playout deadline.
    pub max_wait: Duration,
}

impl FecDecoderConfig {
    /// Defaults: 32 open blocks (about a second of 1080p30), 4096 remembered sources.
    pub fn new(media_ssrc: u32, fec_payload_type: u8) -> Self {
        FecDecoderConfig {
            media_ssrc,
            fec_payload_type,
            fec_ssrc: None,
            max_open_blocks: 32,
            max_buffered_sources: 4096,
            max_wait: Duration::from_millis(60),
        }
    }
}

/// Something the decoder concluded about a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FecEvent {
    /// Missing sources of the block were rebuilt and returned by `push`.
    Recovered {
        /// Block id from the FEC header.
        block_id: u16,
        /// Sequence numbers rebuilt.
        seqs: Vec<u16>,
    },
    /// The block was given up with sources still missing (too few packets arrived, or
    /// the rebuilt data failed its checksum): NACK them or skip the frame.
    Unrecoverable {
        /// Block id from the FEC header.
        block_id: u16,
        /// Sequence number of its first source.
        seq_base: u16,
        /// Number of sources.
        k: u16,
        /// Sequence numbers still missing.
        missing: Vec<u16>,
        /// Packets of the block that arrived (sources + repairs).
        received: u16,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FecDecoderStats {
    /// Source packets taken in (not counting duplicates).
    pub sources: u64,
    /// Repair packets taken in (not counting duplicates).
    pub repairs: u64,
    /// Duplicate packets ignored.
    pub duplicates: u64,
    /// Packets refused as malformed or contradicting the block they name.
    pub rejected: u64,
    /// Repair packets of blocks already finished or too old.
    pub late_repairs: u64,
    /// Source packets rebuilt.
    pub recovered_packets: u64,
    /// Blocks that needed and got recovery.
    pub recovered_blocks: u64,
    /// Blocks given up with sources missing.
    pub unrecoverable_blocks: u64,
    /// Blocks whose rebuilt data failed the CRC.
    pub crc_failures: u64,
}

#[derive(Debug)]
struct Block {
    header: FecHeader,
    seq_base: u64,
    shard_len: usize,
    repairs: Vec<Option<Vec<u8>>>,
    repair_count: usize,
    /// When its first repair packet arrived, if the caller gives time.
    opened_at: Option<Instant>,
}

/// Reed-Solomon FEC decoder for one media SSRC.
#[derive(Debug)]
pub struct FecDecoder {
    cfg: FecDecoderConfig,
    codecs: RsCache,
    highest_seq: Option<u64>,
    sources: BTreeMap<u64, Vec<u8>>,
    highest_block: Option<u64>,
    blocks: BTreeMap<u64, Block>,
    finished: BTreeSet<u64>,
    events: VecDeque<FecEvent>,
    stats: FecDecoderStats,
    now: Option<Instant>,
}

/// Extend a 16-bit wrapping counter to 64 bits, choosing the value nearest `reference`.
fn extend(value: u16, reference: Option<u64>) -> u64 {
    // Start high so the first values can move backwards without underflow.
    let Some(r) = reference else {
        return (1 << 32) | u64::from(value);
    };
    let cand = (r & !0xffff) | u64::from(value);
    if cand + 0x8000 <= r {
        cand + 0x1_0000
    } else if cand > r + 0x8000 && cand >= 0x1_0000 {
        cand - 0x1_0000
    } else {
        cand
    }
}

impl FecDecoder {
    /// A decoder for one protected stream.
    pub fn new(cfg: FecDecoderConfig) -> Self {
        FecDecoder {
            cfg,
            codecs: RsCache::default(),
            highest_seq: None,
            sources: BTreeMap::new(),
            highest_block: None,
            blocks: BTreeMap::new(),
            finished: BTreeSet::new(),
            events: VecDeque::new(),
            stats: FecDecoderStats::default(),
            now: None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> FecDecoderStats {
        self.stats
    }

    /// Next conclusion about a block.
    pub fn poll_event(&mut self) -> Option<FecEvent> {
        self.events.pop_front()
    }

    /// Take in one received packet of the media stream or of its repair stream (after
    /// SRTP). Returns the source packets it allowed to rebuild, byte-identical to what the
    /// sender sent, in sequence order. Packets of other streams and malformed packets are
    /// refused with an error; nothing panics whatever the bytes.
    pub fn push(&mut self, packet: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let rtp = match RtpView::parse(packet) {
            Ok(r) => r,
            Err(e) => {
                self.stats.rejected += 1;
                return Err(e);
            }
        };
        let is_repair = rtp.payload_type == self.cfg.fec_payload_type
            && self.cfg.fec_ssrc.is_none_or(|s| s == rtp.ssrc);
        let res = if is_repair {
            self.push_repair(&packet[rtp.payload_start..rtp.payload_end])
        } else if rtp.ssrc == self.cfg.media_ssrc {
            Ok(self.push_source(rtp.seq, packet))
        } else {
            Err(Error::WrongSsrc {
                expected: self.cfg.media_ssrc,
                got: rtp.ssrc,
            })
        };
        if res.is_err() {
            self.stats.rejected += 1;
        }
        res
    }

    /// `push` with the arrival time, so blocks can be given up by `handle_timeout`.
    pub fn push_at(&mut self, now: Instant, packet: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.now = Some(now);
        self.push(packet)
    }

    /// When the oldest open block's wait runs out (only for blocks opened via `push_at`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.blocks
            .values()
            .filter_map(|b| b.opened_at)
            .min()
            .map(|t| t + self.cfg.max_wait)
    }

    /// Give up the blocks whose wait has run out, reporting their missing packets.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let due: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.opened_at.is_some_and(|t| t + self.cfg.max_wait <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.give_up(id);
        }
    }

    /// Give up every open block now (end of stream), reporting those with losses.
    pub fn flush(&mut self) {
        let ids: Vec<u64> = self.blocks.keys().copied().collect();
        for id in ids {
            self.give_up(id);
        }
    }

    fn push_source(&mut self, seq: u16, packet: &[u8]) -> Vec<Vec<u8>> {
        let ext = extend(seq, self.highest_seq);
        if self.highest_seq.is_none_or(|h| ext > h) {
            self.highest_seq = Some(ext);
        }
        let floor = self
            .highest_seq
            .unwrap_or(0)
            .saturating_sub(self.cfg.max_buffered_sources);
        if ext < floor {
            return Vec::new();
        }
        if self.sources.contains_key(&ext) {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        self.stats.sources += 1;
        self.sources.insert(ext, packet.to_vec());
        while self
            .sources
            .first_key_value()
            .is_some_and(|(s, _)| *s < floor)
        {
            self.sources.pop_first();
        }
        let containing: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| ext >= b.seq_base && ext < b.seq_base + u64::from(b.header.k))
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in containing {
            out.extend(self.try_decode(id));
        }
        out
    }

    fn push_repair(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let header = FecHeader::parse(payload)?;
        if header.protected_ssrc != self.cfg.media_ssrc {
            return Err(Error::WrongSsrc {
                expected: self.cfg.media_ssrc,
                got: header.protected_ssrc,
            });
        }
        let shard = &payload[FEC_HEADER_LEN..];
        // The smallest RTP packet is 12 bytes, plus the 2-byte length.
        if shard.len() < 14 {
            return Err(Error::BadFec("repair shard shorter than any source shard"));
        }
        let id = extend(header.block_id, self.highest_block);
        let floor = self
            .highest_block
            .unwrap_or(0)
            .saturating_sub(self.cfg.max_open_blocks);
        if id < floor || self.finished.contains(&id) {
            self.stats.late_repairs += 1;
            return Ok(Vec::new());
        }
        if let Some(b) = self.blocks.get_mut(&id) {
            if b.header
                != (FecHeader {
                    index: b.header.index,
                    ..header
                })
                || b.shard_len != shard.len()
            {
                return Err(Error::BadFec("contradicts earlier packets of its block"));
            }
            let slot = &mut b.repairs[usize::from(header.index)];
            if slot.is_some() {
                self.stats.duplicates += 1;
                return Ok(Vec::new());
            }
            *slot = Some(shard.to_vec());
            b.repair_count += 1;
        } else {
            // The base's extension follows the source stream, so wrap is handled there.
            let seq_base = extend(header.seq_base, self.highest_seq);
            let mut repairs = vec![None; usize::from(header.r)];
            repairs[usize::from(header.index)] = Some(shard.to_vec());
            self.blocks.insert(
                id,
                Block {
                    header,
                    seq_base,
                    shard_len: shard.len(),
                    repairs,
                    repair_count: 1,
                    opened_at: self.now,
                },
            );
        }
        self.stats.repairs += 1;
        if self.highest_block.is_none_or(|h| id > h) {
            self.highest_block = Some(id);
            let floor = id.saturating_sub(self.cfg.max_open_blocks);
            let stale: Vec<u64> = self.blocks.range(..floor).map(|(k, _)| *k).collect();
            for old in stale {
                self.give_up(old);
            }
            while self.finished.first().is_some_and(|f| *f < floor) {
                self.finished.pop_first();
            }
        }
        Ok(self.try_decode(id))
    }

    /// Source packets of block `b` that fit its shard length, by index.
    fn present_sources(&self, b: &Block) -> Vec<Option<&[u8]>> {
        (0..u64::from(b.header.k))
            .map(|i| {
                self.sources
                    .get(&(b.seq_base + i))
                    .map(Vec::as_slice)
                    .filter(|p| p.len() + 2 <= b.shard_len)
            })
            .collect()
    }

    fn try_decode(&mut self, id: u64) -> Vec<Vec<u8>> {
        let Some(b) = self.blocks.get(&id) else {
            return Vec::new();
        };
        let k = usize::from(b.header.k);
        let present = self.present_sources(b);
        let have = present.iter().filter(|p| p.is_some()).count();
        if have == k {
            self.blocks.remove(&id);
            self.finished.insert(id);
            return Vec::new();
        }
        if have + b.repair_count < k {
            return Vec::new();
        }
        let shard_len = b.shard_len;
        let data: Vec<Option<Vec<u8>>> = present
            .iter()
            .map(|p| {
                p.map(|p| {
                    let mut s = Vec::new();
                    write_shard(p, shard_len, &mut s);
                    s
                })
            })
            .collect();
        let (header, seq_base) = (b.header, b.seq_base);
        let received = (have + b.repair_count) as u16;
        let missing: Vec<usize> = (0..k).filter(|&i| present[i].is_none()).collect();
        let rebuilt_shards = self.codecs.reconstruct(&data, &b.repairs, shard_len);
        self.blocks.remove(&id);
        self.finished.insert(id);
        let rebuilt = rebuilt_shards.and_then(|r| {
            let mut all = data;
            for (shard, &i) in r.into_iter().zip(&missing) {
                all[i] = Some(shard);
            }
            Self::unpack(&all, header, seq_base)
        });
        let Some(packets) = rebuilt else {
            self.stats.crc_failures += 1;
            self.report_unrecoverable(header, &missing, received);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(missing.len());
        let mut seqs = Vec::with_capacity(missing.len());
        for i in missing {
            let p = packets[i].clone();
            self.sources.insert(seq_base + i as u64, p.clone());
            seqs.push(header.seq_base.wrapping_add(i as u16));
            out.push(p);
        }
        self.stats.recovered_blocks += 1;
        self.stats.recovered_packets += out.len() as u64;
        self.events.push_back(FecEvent::Recovered {
            block_id: header.block_id,
            seqs,
        });
        out
    }

    /// Turn rebuilt shards back into packets and check them: each must be RTP of the
    /// protected SSRC with its expected sequence number, and the whole block must match
    /// the sender's CRC. Anything else means a forged or corrupted repair packet.
    fn unpack(
        shards: &[Option<Vec<u8>>],
        header: FecHeader,
        seq_base: u64,
    ) -> Option<Vec<Vec<u8>>> {
        let mut packets = Vec::with_capacity(shards.len());
        for (i, s) in shards.iter().enumerate() {
            let s = s.as_ref()?;
            let len = usize::from(u16::from_be_bytes([*s.first()?, *s.get(1)?]));
            let p = s.get(2..2 + len)?;
            let rtp = RtpView::parse(p).ok()?;
            let want_seq = (seq_base + i as u64) as u16;
            if rtp.ssrc != header.protected_ssrc || rtp.seq != want_seq {
                return None;
            }
            packets.push(p.to_vec());
        }
        if block_crc(packets.iter().map(Vec::as_slice)) != header.crc {
            return None;
        }
        Some(packets)
    }

    fn give_up(&mut self, id: u64) {
        let Some(b) = self.blocks.get(&id) else {
            return;
        };
        let present = self.present_sources(b);
        let missing: Vec<usize> = (0..present.len())
            .filter(|&i| present[i].is_none())
            .collect();
        let received = (present.len() - missing.len() + b.repair_count) as u16;
        let header = b.header;
        self.blocks.remove(&id);
        self.finished.insert(id);
        if !missing.is_empty() {
            self.report_unrecoverable(header, &missing, received);
        }
    }

    fn report_unrecoverable(&mut self, header: FecHeader, missing: &[usize], received: u16) {
        self.stats.unrecoverable_blocks += 1;
        self.events.push_back(FecEvent::Unrecoverable {
            block_id: header.block_id,
            seq_base: header.seq_base,
            k: header.k,
            missing: missing
                .iter()
                .map(|&i| header.seq_base.wrapping_add(i as u16))
                .collect(),
            received,
        });
    }
}
