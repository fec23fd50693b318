//! The sending side: groups source packets into blocks and emits repair packets when a
//! block closes.

use std::time::{Duration, Instant};

use super::MAX_SHARDS;
use super::adapt::{Protection, redundancy_for};
use super::rs::RsCache;
use super::wire::{FEC_HEADER_LEN, FecHeader, RtpView, block_crc, write_shard};
use crate::Error;

/// How the encoder forms blocks and addresses its repair packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FecEncoderConfig {
    /// SSRC of the media stream protected; other SSRCs are refused.
    pub media_ssrc: u32,
    /// SSRC of the repair stream (negotiated, e.g. `a=ssrc-group:FEC-FR media fec`).
    pub fec_ssrc: u32,
    /// Payload type of `x-huitong-rs-fec` negotiated in SDP.
    pub fec_payload_type: u8,
    /// First RTP sequence number of the repair stream.
    pub first_seq: u16,
    /// First block id.
    pub first_block_id: u16,
    /// A block closes at a frame end once it holds at least this many packets...
    pub min_k: usize,
    /// ...or holds this many frames, whichever comes first.
    pub max_frames: usize,
    /// Upper bound on sources per block (also limited so `k + r ≤ 256`).
    pub max_k: usize,
    /// A block still open this long after its first packet closes on `handle_timeout`.
    pub max_delay: Duration,
}

impl FecEncoderConfig {
    /// Defaults that suit 30 fps video: a block per frame once frames have ≥ 12 packets,
    /// up to 3 small frames per block (≤ 67 ms added before the first can be repaired).
    pub fn new(media_ssrc: u32, fec_ssrc: u32, fec_payload_type: u8) -> Self {
        FecEncoderConfig {
            media_ssrc,
            fec_ssrc,
            fec_payload_type,
            first_seq: 0,
            first_block_id: 0,
            min_k: 12,
            max_frames: 3,
            max_k: 128,
            max_delay: Duration::from_millis(80),
        }
    }
}

/// What the encoder has sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FecEncoderStats {
    /// Source packets accepted.
    pub source_packets: u64,
    /// Source bytes accepted (whole RTP packets).
    pub source_bytes: u64,
    /// Blocks closed with at least one repair packet.
    pub blocks: u64,
    /// Repair packets emitted.
    pub repair_packets: u64,
    /// Repair bytes emitted (whole RTP packets).
    pub repair_bytes: u64,
}

/// Reed-Solomon FEC encoder for one media SSRC.
#[derive(Debug)]
pub struct FecEncoder {
    cfg: FecEncoderConfig,
    codecs: RsCache,
    loss: f64,
    burstiness: f64,
    /// Largest block size per temporal layer for the current loss estimate.
    max_k_by_layer: [usize; 4],
    sources: Vec<Vec<u8>>,
    seq_base: u16,
    last_timestamp: u32,
    frames: usize,
    min_layer: u8,
    opened_at: Option<Instant>,
    next_seq: u16,
    next_block_id: u16,
    stats: FecEncoderStats,
    shard_scratch: Vec<Vec<u8>>,
    /// Repair count by (layer, k) under the current loss estimate: the binomial search
    /// is cheap but not free, and block shapes repeat.
    repair_memo: std::collections::HashMap<(u8, usize), usize>,
}

impl FecEncoder {
    /// A new encoder; the loss estimate starts at zero (base layer floor only).
    pub fn new(cfg: FecEncoderConfig) -> Result<Self, Error> {
        if cfg.fec_payload_type > 127 {
            return Err(Error::Config("payload type above 127"));
        }
        if cfg.min_k == 0 || cfg.max_k == 0 || cfg.max_frames == 0 {
            return Err(Error::Config(
                "min_k, max_k and max_frames must be at least 1",
            ));
        }
        let mut e = FecEncoder {
            cfg,
            codecs: RsCache::default(),
            loss: 0.0,
            burstiness: 1.0,
            max_k_by_layer: [1; 4],
            sources: Vec::new(),
            seq_base: 0,
            last_timestamp: 0,
            frames: 0,
            min_layer: u8::MAX,
            opened_at: None,
            next_seq: cfg.first_seq,
            next_block_id: cfg.first_block_id,
            stats: FecEncoderStats::default(),
            shard_scratch: Vec::new(),
            repair_memo: std::collections::HashMap::new(),
        };
        e.set_channel(0.0, 1.0);
        Ok(e)
    }

    /// Update the loss fraction and mean loss-run length the receiver reports; applies
    /// from the next block.
    pub fn set_channel(&mut self, loss_fraction: f64, burstiness: f64) {
        self.loss = loss_fraction;
        self.burstiness = burstiness;
        self.repair_memo.clear();
        for (tl, mk) in self.max_k_by_layer.iter_mut().enumerate() {
            *mk = redundancy_for(loss_fraction, burstiness, tl as u8).max_k(self.cfg.max_k);
        }
    }

    /// The protection a block of this temporal layer currently gets.
    pub fn protection(&self, temporal_layer: u8) -> Protection {
        redundancy_for(self.loss, self.burstiness, temporal_layer)
    }

    /// Counters.
    pub fn stats(&self) -> FecEncoderStats {
        self.stats
    }

    /// Add the next source RTP packet of the media stream (the exact bytes that go on the
    /// wire before SRTP). Returns the repair packets of any block this closes, to be sent
    /// after the source packet.
    pub fn push_source(
        &mut self,
        now: Instant,
        packet: &[u8],
        temporal_layer: u8,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let rtp = RtpView::parse(packet)?;
        if rtp.ssrc != self.cfg.media_ssrc {
            return Err(Error::WrongSsrc {
                expected: self.cfg.media_ssrc,
                got: rtp.ssrc,
            });
        }
        // The shard carries the length in 16 bits.
        if packet.len() > usize::from(u16::MAX) - 2 {
            return Err(Error::TooLarge(packet.len()));
        }
        let mut out = Vec::new();
        let layer = temporal_layer.min(3);
        if !self.sources.is_empty() {
            let expected = self.seq_base.wrapping_add(self.sources.len() as u16);
            let block_layer = self.min_layer.min(layer);
            let limit = self.max_k_by_layer[usize::from(block_layer)];
            // Blocks cover consecutive sequence numbers only, and must fit the code.
            if rtp.seq != expected || self.sources.len() >= limit {
                self.close_block(&mut out);
            }
        }
        if self.sources.is_empty() {
            self.seq_base = rtp.seq;
            self.frames = 0;
            self.min_layer = layer;
            self.opened_at = Some(now);
        }
        self.min_layer = self.min_layer.min(layer);
        self.last_timestamp = rtp.timestamp;
        self.sources.push(packet.to_vec());
        self.stats.source_packets += 1;
        self.stats.source_bytes += packet.len() as u64;
        if rtp.marker {
            self.frames += 1;
        }
        let limit = self.max_k_by_layer[usize::from(self.min_layer)];
        if (rtp.marker
            && (self.sources.len() >= self.cfg.min_k || self.frames >= self.cfg.max_frames))
            || self.sources.len() >= limit
        {
            self.close_block(&mut out);
        }
        Ok(out)
    }

    /// When an open block must be closed even if no more packets come.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.cfg.max_delay)
    }

    /// Close the open block if it has waited `max_delay`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.close_block(&mut out);
        }
        out
    }

    /// Close the open block now (end of stream, or before a pause).
    pub fn flush(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.close_block(&mut out);
        out
    }

    fn close_block(&mut self, out: &mut Vec<Vec<u8>>) {
        self.opened_at = None;
        if self.sources.is_empty() {
            return;
        }
        let sources = std::mem::take(&mut self.sources);
        let k = sources.len();
        let prot = self.protection(self.min_layer);
        let memo = self.repair_memo.entry((self.min_layer, k));
        let r = (*memo.or_insert_with(|| prot.repair_count(k))).min(MAX_SHARDS - k);
        if r == 0 {
            return;
        }
        let shard_len = 2 + sources.iter().map(Vec::len).max().unwrap_or(0);
        self.shard_scratch.resize_with(k, Vec::new);
        for (shard, p) in self.shard_scratch.iter_mut().zip(&sources) {
            write_shard(p, shard_len, shard);
        }
        // Shapes are valid by construction (1 ≤ k, 1 ≤ r, k + r ≤ 256).
        let Some(parity) = self.codecs.encode(&self.shard_scratch[..k], r) else {
            return;
        };
        let header = FecHeader {
            k: k as u16,
            r: r as u16,
            index: 0,
            protected_ssrc: self.cfg.media_ssrc,
            block_id: self.next_block_id,
            seq_base: self.seq_base,
            crc: block_crc(sources.iter().map(Vec::as_slice)),
        };
        for (j, shard) in parity.iter().enumerate() {
            let mut p = Vec::with_capacity(12 + FEC_HEADER_LEN + shard_len);
            p.push(0x80);
            let marker = if j + 1 == r { 0x80 } else { 0 };
            p.push(marker | self.cfg.fec_payload_type);
            p.extend_from_slice(&self.next_seq.to_be_bytes());
            p.extend_from_slice(&self.last_timestamp.to_be_bytes());
            p.extend_from_slice(&self.cfg.fec_ssrc.to_be_bytes());
            FecHeader {
                index: j as u8,
                ..header
            }
            .write(&mut p);
            p.extend_from_slice(shard);
            self.next_seq = self.next_seq.wrapping_add(1);
            self.stats.repair_packets += 1;
            self.stats.repair_bytes += p.len() as u64;
            out.push(p);
        }
        self.stats.blocks += 1;
        self.next_block_id = self.next_block_id.wrapping_add(1);
    }
}
