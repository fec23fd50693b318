//! The sending half: FEC with adapted redundancy, a retransmission buffer answering
//! NACKs with RTX, and keyframe requests passed up to the encoder.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::extend_seq;
use super::wire::{Feedback, rtx_wrap};
use crate::Error;
use crate::fec::adapt::redundancy_for;
use crate::fec::{FecEncoder, FecEncoderConfig, RtpView};

/// How much FEC the sender adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FecSizing {
    /// No FEC: NACK/RTX only (what browsers and open-source SFUs do).
    Off,
    /// FEC alone must rebuild a block with the layer targets of `media::fec::adapt`
    /// (99.9 % for the base layer) at the loss the receiver reports.
    Full,
    /// FEC sized for the cheapest expected total (repair + retransmissions) given that
    /// NACK/RTX repairs what FEC could not, see [`hybrid_design_loss`].
    Hybrid,
}

/// Configuration of a [`ProtectedSender`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenderConfig {
    /// SSRC of the media stream.
    pub media_ssrc: u32,
    /// SSRC of the FEC repair stream.
    pub fec_ssrc: u32,
    /// Payload type of `x-huitong-rs-fec`.
    pub fec_payload_type: u8,
    /// SSRC of the RTX stream.
    pub rtx_ssrc: u32,
    /// Payload type of RTX (`apt` = the media payload type).
    pub rtx_payload_type: u8,
    /// FEC policy.
    pub sizing: FecSizing,
    /// FEC block: closes at a frame end once it holds this many packets...
    pub min_k: usize,
    /// ...or this many frames.
    pub max_frames: usize,
    /// Close the FEC block after every base-layer frame, so base-layer frames (whose
    /// loss costs a keyframe) are repaired without waiting for later frames, while the
    /// upper-layer frames before them share a longer, cheaper block.
    pub close_on_base_layer: bool,
    /// An open block closes this long after its first packet at the latest.
    pub max_delay: Duration,
    /// How long sent packets stay available for retransmission.
    pub rtx_history: Duration,
    /// A packet is retransmitted at most once per this interval (NACKs arrive in
    /// duplicate copies on purpose). It must cover how far apart the copies of one NACK
    /// can be *handled*, not only how far apart they arrive: a terminal that encodes on
    /// its network thread reads the rest of them after a frame's encode (10–12 ms at
    /// 1080p in `bench loss`, longer under load). At 10 ms, 7 % of a 50 %-loss sender's
    /// retransmissions answered the same NACK twice. Below the receiver's retry interval
    /// (RTT + `nack_margin`, 10 ms) a lost retransmission is sent again at the next
    /// request: at 20 ms that holds for RTTs above 10 ms; on a LAN the packet waits one
    /// more retry.
    pub rtx_min_interval: Duration,
    /// Keyframe requests closer together than this are merged into one.
    pub keyframe_request_hold: Duration,
    /// Loss assumed before the first report arrives (which then replaces it): the
    /// first keyframe is the most expensive frame to lose, and on a clean link the
    /// cost of assuming 50 % is one report interval (250 ms) of extra repair.
    pub initial_loss: f64,
    /// Weight of a new loss report in the smoothed estimate.
    pub report_weight: f64,
    /// Scales the price [`FecSizing::Hybrid`] puts on a block needing a NACK round
    /// (1 = the byte-minimising rule of [`hybrid_design_loss`]). Above 1 the sender
    /// buys latency with repair: an SFU's downlink uses it because a frame there has
    /// already spent its uplink's repair rounds.
    pub round_penalty_scale: f64,
}

impl SenderConfig {
    /// Defaults for 30 fps video: a FEC block closes after each base-layer frame, or at 96
    /// packets, 4 frames or 120 ms, whichever comes first; hybrid sizing.
    pub fn new(media_ssrc: u32, fec_ssrc: u32, rtx_ssrc: u32) -> Self {
        SenderConfig {
            media_ssrc,
            fec_ssrc,
            fec_payload_type: 115,
            rtx_ssrc,
            rtx_payload_type: 103,
            sizing: FecSizing::Hybrid,
            min_k: 96,
            max_frames: 4,
            close_on_base_layer: true,
            max_delay: Duration::from_millis(120),
            rtx_history: Duration::from_secs(1),
            rtx_min_interval: Duration::from_millis(20),
            keyframe_request_hold: Duration::from_millis(300),
            initial_loss: 0.5,
            report_weight: 0.3,
            round_penalty_scale: 1.0,
        }
    }
}

/// What the sender tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver lost a reference frame: encode the next frame as a keyframe.
    KeyframeRequested,
}

/// Counters of what went on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderStats {
    /// Media packets sent (first transmissions).
    pub media_packets: u64,
    /// Their bytes.
    pub media_bytes: u64,
    /// FEC repair packets sent.
    pub fec_packets: u64,
    /// Their bytes.
    pub fec_bytes: u64,
    /// RTX packets sent.
    pub rtx_packets: u64,
    /// Their bytes.
    pub rtx_bytes: u64,
    /// NACK messages received.
    pub nacks_received: u64,
    /// Sequence numbers asked for that were no longer (or never) in the buffer.
    pub rtx_missing: u64,
    /// PLIs received.
    pub plis_received: u64,
    /// Loss reports received.
    pub reports_received: u64,
    /// FEC blocks closed with at least one repair packet. Blocks the sizing left without
    /// repair are not counted, so `media_packets / fec_blocks` overstates the block size
    /// at low loss, where many blocks get none; at 50 % every block gets some, and it is
    /// the size the hybrid sizing works with (small blocks need relatively more repair
    /// and rounds).
    pub fec_blocks: u64,
}

impl std::ops::AddAssign for SenderStats {
    fn add_assign(&mut self, o: SenderStats) {
        // Destructured without `..`: a new counter cannot be left out of the sum.
        let SenderStats {
            media_packets,
            media_bytes,
            fec_packets,
            fec_bytes,
            rtx_packets,
            rtx_bytes,
            nacks_received,
            rtx_missing,
            plis_received,
            reports_received,
            fec_blocks,
        } = o;
        self.media_packets += media_packets;
        self.media_bytes += media_bytes;
        self.fec_packets += fec_packets;
        self.fec_bytes += fec_bytes;
        self.rtx_packets += rtx_packets;
        self.rtx_bytes += rtx_bytes;
        self.nacks_received += nacks_received;
        self.rtx_missing += rtx_missing;
        self.plis_received += plis_received;
        self.reports_received += reports_received;
        self.fec_blocks += fec_blocks;
    }
}

impl SenderStats {
    /// Bytes sent / media bytes.
    pub fn overhead(&self) -> f64 {
        (self.media_bytes + self.fec_bytes + self.rtx_bytes) as f64 / self.media_bytes.max(1) as f64
    }
}

#[derive(Debug)]
struct Sent {
    at: Instant,
    packet: Vec<u8>,
    last_rtx: Option<Instant>,
}

/// Sender side of the hybrid FEC + NACK loop for one video stream.
#[derive(Debug)]
pub struct ProtectedSender {
    cfg: SenderConfig,
    fec: Option<FecEncoder>,
    history: BTreeMap<u64, Sent>,
    highest: Option<u64>,
    rtx_seq: u16,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<SenderEvent>,
    loss: f64,
    burstiness: f64,
    last_keyframe_request: Option<Instant>,
    stats: SenderStats,
}

impl ProtectedSender {
    /// A sender; `rtx_first_seq` and the FEC stream's first sequence number are the
    /// caller's (random in production, seeded in tests).
    pub fn new(cfg: SenderConfig, rtx_first_seq: u16, fec_first_seq: u16) -> Result<Self, Error> {
        let fec = if cfg.sizing == FecSizing::Off {
            None
        } else {
            let mut fc = FecEncoderConfig::new(cfg.media_ssrc, cfg.fec_ssrc, cfg.fec_payload_type);
            fc.first_seq = fec_first_seq;
            fc.min_k = cfg.min_k;
            fc.max_frames = cfg.max_frames;
            fc.max_delay = cfg.max_delay;
            Some(FecEncoder::new(fc)?)
        };
        if !(cfg.round_penalty_scale.is_finite() && cfg.round_penalty_scale >= 0.0) {
            return Err(Error::Config("round penalty scale must be finite and ≥ 0"));
        }
        if cfg.rtx_payload_type > 127 {
            return Err(Error::Config("payload type above 127"));
        }
        let mut s = ProtectedSender {
            cfg,
            fec,
            history: BTreeMap::new(),
            highest: None,
            rtx_seq: rtx_first_seq,
            out: VecDeque::new(),
            events: VecDeque::new(),
            loss: cfg.initial_loss,
            burstiness: 1.0,
            last_keyframe_request: None,
            stats: SenderStats::default(),
        };
        s.apply_channel();
        Ok(s)
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        SenderStats {
            fec_blocks: self.fec.as_ref().map_or(0, |f| f.stats().blocks),
            ..self.stats
        }
    }

    /// Smoothed loss fraction and mean loss run the FEC is currently adapted to.
    pub fn channel(&self) -> (f64, f64) {
        (self.loss, self.burstiness)
    }

    /// Send one frame: its RTP packets in order and its temporal layer. The packets
    /// (and FEC repair of any block this closes) come out of `poll_transmit`.
    ///
    /// With [`FecSizing::Hybrid`] a keyframe goes in blocks of its own, sized with a
    /// higher price on NACK rounds than other blocks: losing it costs every frame until
    /// the next one, but its blocks close at once and so have the whole playout delay
    /// for retransmission rounds.
    pub fn push_frame(
        &mut self,
        now: Instant,
        packets: &[Vec<u8>],
        temporal_layer: u8,
        keyframe: bool,
    ) -> Result<(), Error> {
        let own_blocks = keyframe && self.cfg.sizing == FecSizing::Hybrid;
        if own_blocks && let Some(fec) = &mut self.fec {
            let repairs = fec.flush();
            let design = design_loss(
                self.loss,
                self.burstiness,
                KEYFRAME_BLOCK,
                KEYFRAME_ROUND_PENALTY_SCALE * self.cfg.round_penalty_scale,
            );
            fec.set_channel(design, self.burstiness);
            self.queue_repairs(repairs);
        }
        for p in packets {
            let rtp = RtpView::parse(p)?;
            if rtp.ssrc != self.cfg.media_ssrc {
                return Err(Error::WrongSsrc {
                    expected: self.cfg.media_ssrc,
                    got: rtp.ssrc,
                });
            }
            let ext = extend_seq(rtp.seq, self.highest);
            if self.highest.is_none_or(|h| ext > h) {
                self.highest = Some(ext);
            }
            self.history.insert(
                ext,
                Sent {
                    at: now,
                    packet: p.clone(),
                    last_rtx: None,
                },
            );
            self.stats.media_packets += 1;
            self.stats.media_bytes += p.len() as u64;
            self.out.push_back(p.clone());
            if let Some(fec) = &mut self.fec {
                let repairs = fec.push_source(now, p, temporal_layer)?;
                self.queue_repairs(repairs);
            }
        }
        if own_blocks && let Some(fec) = &mut self.fec {
            let repairs = fec.flush();
            self.queue_repairs(repairs);
            self.apply_channel();
        } else if temporal_layer == 0
            && self.cfg.close_on_base_layer
            && let Some(fec) = &mut self.fec
        {
            let repairs = fec.flush();
            self.queue_repairs(repairs);
        }
        self.prune(now);
        Ok(())
    }

    /// Take in an RTCP packet (compound or not) from the receiver.
    pub fn handle_feedback(&mut self, now: Instant, rtcp: &[u8]) {
        for f in Feedback::parse_compound(rtcp) {
            match f {
                Feedback::Nack { media_ssrc, seqs } if media_ssrc == self.cfg.media_ssrc => {
                    self.stats.nacks_received += 1;
                    for s in seqs {
                        self.retransmit(now, s);
                    }
                }
                Feedback::Pli { media_ssrc } if media_ssrc == self.cfg.media_ssrc => {
                    self.stats.plis_received += 1;
                    let held = self
                        .last_keyframe_request
                        .is_some_and(|t| now < t + self.cfg.keyframe_request_hold);
                    if !held {
                        self.last_keyframe_request = Some(now);
                        self.events.push_back(SenderEvent::KeyframeRequested);
                    }
                }
                Feedback::LossReport {
                    media_ssrc,
                    fraction,
                    burstiness,
                    expected,
                } if media_ssrc == self.cfg.media_ssrc && expected > 0 => {
                    self.stats.reports_received += 1;
                    // Fast attack on a jump (under-protection costs frames at once,
                    // over-protection only bandwidth); symmetric otherwise, so report
                    // noise does not bias the estimate upwards. The first report
                    // replaces the prior.
                    let w = if self.stats.reports_received == 1 {
                        1.0
                    } else if fraction > self.loss + 0.1 {
                        (2.0 * self.cfg.report_weight).clamp(0.0, 1.0)
                    } else {
                        self.cfg.report_weight.clamp(0.0, 1.0)
                    };
                    self.loss = (1.0 - w) * self.loss + w * fraction;
                    self.burstiness = (1.0 - w) * self.burstiness + w * burstiness.max(1.0);
                    self.apply_channel();
                }
                _ => {}
            }
        }
    }

    /// Next packet to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Next event for the owner (the encoder).
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must run (an open FEC block's time limit).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.fec.as_ref().and_then(FecEncoder::poll_timeout)
    }

    /// Close FEC blocks that waited too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(fec) = &mut self.fec {
            let repairs = fec.handle_timeout(now);
            self.queue_repairs(repairs);
        }
    }

    fn queue_repairs(&mut self, repairs: Vec<Vec<u8>>) {
        for r in repairs {
            self.stats.fec_packets += 1;
            self.stats.fec_bytes += r.len() as u64;
            self.out.push_back(r);
        }
    }

    fn apply_channel(&mut self) {
        let (p, b) = (self.loss, self.burstiness);
        let design = match self.cfg.sizing {
            FecSizing::Off => return,
            FecSizing::Full => p,
            FecSizing::Hybrid => {
                // Size for the blocks actually formed so far (frames end blocks early).
                let k = self.fec.as_ref().map_or(self.cfg.min_k, |f| {
                    let s = f.stats();
                    if s.blocks >= 8 {
                        (s.source_packets / s.blocks).max(1) as usize
                    } else {
                        self.cfg.min_k.min(64)
                    }
                });
                design_loss(p, b, k, self.cfg.round_penalty_scale)
            }
        };
        if let Some(fec) = &mut self.fec {
            fec.set_channel(design, b);
        }
    }

    fn retransmit(&mut self, now: Instant, seq: u16) {
        let ext = extend_seq(seq, self.highest);
        let Some(sent) = self.history.get_mut(&ext) else {
            self.stats.rtx_missing += 1;
            return;
        };
        if sent
            .last_rtx
            .is_some_and(|t| now < t + self.cfg.rtx_min_interval)
        {
            return;
        }
        sent.last_rtx = Some(now);
        if let Some(p) = rtx_wrap(
            &sent.packet,
            self.cfg.rtx_ssrc,
            self.cfg.rtx_payload_type,
            self.rtx_seq,
        ) {
            self.rtx_seq = self.rtx_seq.wrapping_add(1);
            self.stats.rtx_packets += 1;
            self.stats.rtx_bytes += p.len() as u64;
            self.out.push_back(p);
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .history
            .first_key_value()
            .is_some_and(|(_, s)| s.at + self.cfg.rtx_history < now)
        {
            self.history.pop_first();
        }
    }
}

/// Weight, in "packets per source", of a block that needs a NACK round: it is
/// delivered about one RTT later and risks its deadline, so the hybrid rule pays a
/// little repair to make that rarer.
const NACK_ROUND_PENALTY: f64 = 0.15;

/// How steeply the round price grows above 50 % loss, as a power of `0.5/(1 − p)`:
/// each round then delivers less and a block needs more of them before its deadline.
/// 4 (×7.7 at 70 %) rather than 1 (×1.7): over real sockets at 70 % the SFU's uplink lost
/// base-layer frames to exhausted rounds and 720p ran at 18 fps (`docs/recovery.md`).
const HIGH_LOSS_ROUND_EXPONENT: i32 = 4;

/// Keyframes are split into blocks of about this many sources at 50 % loss.
const KEYFRAME_BLOCK: usize = 64;

/// Keyframe blocks weigh a NACK round this many times more than other blocks: a lost
/// keyframe costs every frame until the next one, but its block closes right after it,
/// so it has the whole playout delay (about four rounds) to be repaired.
const KEYFRAME_ROUND_PENALTY_SCALE: f64 = 3.0;

/// The loss to size FEC for when NACK/RTX repairs the rest: the design loss `p_d ≤ p`
/// minimising, for a base-layer block of `k` sources, the expected packets sent per
/// source — `(k + r(p_d))/k` for repair, plus the expected shortfall
/// `E[max(0, k − X)]` (`X` the arrivals of the `k + r` packets at the true loss `p`)
/// retransmitted at `1/(1−p)` copies each, plus [`NACK_ROUND_PENALTY`] ×
/// `v · max(1, 0.5/(1−p))^4` times the probability a NACK round is needed at all,
/// `v` the variance inflation of the channel (above 50 % loss a round delivers less, so
/// blocks need more of them). Burstiness is handled as in `media::fec::adapt` (fewer effective
/// independent trials).
pub fn hybrid_design_loss(p: f64, burstiness: f64, k: usize) -> f64 {
    design_loss(p, burstiness, k, 1.0)
}

/// [`hybrid_design_loss`] with the round penalty scaled by `penalty_scale`.
fn design_loss(p: f64, burstiness: f64, k: usize, penalty_scale: f64) -> f64 {
    let p = if p.is_finite() {
        p.clamp(0.0, 0.8)
    } else {
        0.8
    };
    if p <= 0.0 || k == 0 {
        return p;
    }
    let truth = redundancy_for(p, burstiness, 0);
    let vif = truth.variance_inflation.max(1.0);
    // Under bursty loss back-to-back retransmissions are lost together, so a block that
    // needs NACK needs more rounds: weigh a round by the channel's variance inflation.
    // In full: with `v^0.75` (until session 20) 2 of 40 bursty runs of the two-hop
    // harness lost a base-layer frame at the SFU's uplink (docs/recovery.md).
    // Above 50 % loss a request round delivers less and more blocks need a second one
    // before their deadline: the price of needing rounds grows steeply with the loss
    // (HIGH_LOSS_ROUND_EXPONENT).
    let penalty = penalty_scale
        * NACK_ROUND_PENALTY
        * vif
        * (0.5 / (1.0 - p)).max(1.0).powi(HIGH_LOSS_ROUND_EXPONENT);
    let mut best = (f64::INFINITY, p);
    let steps = 80;
    for i in 0..=steps {
        let pd = p * f64::from(i) / f64::from(steps);
        let r = redundancy_for(pd, burstiness, 0).repair_count(k);
        let n_eff = (((k + r) as f64) / vif).floor().max(1.0) as usize;
        let k_eff = ((k as f64) / vif).ceil().max(1.0) as usize;
        let (short, p_short) = expected_shortfall(n_eff, k_eff, 1.0 - p);
        let cost =
            (k + r) as f64 / k as f64 + short * vif / (1.0 - p) / k as f64 + penalty * p_short;
        if cost < best.0 - 1e-9 {
            best = (cost, pd);
        }
    }
    best.1
}

/// `(E[max(0, need − X)], P[X < need])` for `X ~ Binomial(n, q)`.
fn expected_shortfall(n: usize, need: usize, q: f64) -> (f64, f64) {
    if q >= 1.0 {
        return (0.0, 0.0);
    }
    if q <= 0.0 {
        return (need as f64, 1.0);
    }
    let (lq, lp) = (q.ln(), (1.0 - q).ln());
    let mut l = n as f64 * lp;
    let (mut e, mut pr) = (0.0, 0.0);
    for x in 0..need.min(n + 1) {
        let pmf = l.exp();
        e += (need - x) as f64 * pmf;
        pr += pmf;
        l += ((n - x) as f64 / (x + 1) as f64).ln() + lq - lp;
    }
    if need > n {
        // Fewer packets than needed even if all arrive.
        return (need as f64 - n as f64 * q, 1.0);
    }
    (e, pr)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::recovery::wire::{FrameMarking, build_media_packet, rtx_unwrap};

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn frame(first_seq: u16, n: usize, ts: u32) -> Vec<Vec<u8>> {
        (0..n)
            .map(|j| {
                let m = FrameMarking {
                    start: j == 0,
                    end: j + 1 == n,
                    ..Default::default()
                };
                build_media_packet(
                    1,
                    102,
                    first_seq + j as u16,
                    ts,
                    j + 1 == n,
                    5,
                    m,
                    &[7; 900],
                )
            })
            .collect()
    }

    fn drain(s: &mut ProtectedSender) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn nack_gets_byte_exact_rtx_once_per_interval() {
        let mut s = ProtectedSender::new(SenderConfig::new(1, 2, 3), 500, 900).unwrap();
        let now = t0();
        let f = frame(10, 5, 0);
        s.push_frame(now, &f, 0, true).unwrap();
        let out = drain(&mut s);
        assert_eq!(&out[..5], &f[..]);
        assert!(out.len() > 5, "keyframe must get repair packets");
        let nack = Feedback::Nack {
            media_ssrc: 1,
            seqs: vec![12, 99],
        }
        .to_bytes(9);
        s.handle_feedback(now, &nack);
        s.handle_feedback(now, &nack);
        let rtx = drain(&mut s);
        assert_eq!(rtx.len(), 1, "duplicate NACK copies answered once");
        assert_eq!(rtx_unwrap(&rtx[0], 1, 102).unwrap(), f[2]);
        assert_eq!(s.stats().rtx_missing, 2);
        s.handle_feedback(now + Duration::from_millis(20), &nack);
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn loss_reports_drive_repair_and_plis_are_merged() {
        let mut cfg = SenderConfig::new(1, 2, 3);
        cfg.initial_loss = 0.0;
        cfg.close_on_base_layer = true;
        let mut s = ProtectedSender::new(cfg, 0, 0).unwrap();
        let now = t0();
        s.push_frame(now, &frame(0, 40, 0), 0, false).unwrap();
        let clean = drain(&mut s).len() - 40;
        let report = Feedback::LossReport {
            media_ssrc: 1,
            fraction: 0.5,
            burstiness: 2.0,
            expected: 1000,
        }
        .to_bytes(9);
        s.handle_feedback(now, &report);
        assert!((s.channel().0 - 0.5).abs() < 1e-3);
        s.push_frame(now, &frame(40, 40, 3000), 0, false).unwrap();
        let lossy = drain(&mut s).len() - 40;
        assert!(lossy > 3 * clean.max(1), "{clean} → {lossy}");
        let pli = Feedback::Pli { media_ssrc: 1 }.to_bytes(9);
        s.handle_feedback(now, &pli);
        s.handle_feedback(now + Duration::from_millis(100), &pli);
        assert_eq!(s.poll_event(), Some(SenderEvent::KeyframeRequested));
        assert_eq!(s.poll_event(), None);
        s.handle_feedback(now + Duration::from_millis(400), &pli);
        assert_eq!(s.poll_event(), Some(SenderEvent::KeyframeRequested));
    }

    #[test]
    fn a_higher_round_price_buys_more_repair() {
        let repairs = |scale: f64| {
            let mut cfg = SenderConfig::new(1, 2, 3);
            cfg.round_penalty_scale = scale;
            let mut s = ProtectedSender::new(cfg, 0, 0).unwrap();
            let now = t0();
            // 16 base-layer blocks of 30 packets at the 50 % prior (sized as 64-packet
            // blocks until 8 have been seen, then as 30).
            let mut n = 0;
            for f in 0..16u16 {
                s.push_frame(now, &frame(f * 30, 30, u32::from(f) * 3000), 0, false)
                    .unwrap();
                n += drain(&mut s).len() - 30;
            }
            n
        };
        let (cheap, quick) = (repairs(1.0), repairs(4.0));
        assert!(quick > cheap + cheap / 10, "{cheap} → {quick}");
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            let mut cfg = SenderConfig::new(1, 2, 3);
            cfg.round_penalty_scale = bad;
            assert!(ProtectedSender::new(cfg, 0, 0).is_err(), "{bad}");
        }
        let d1 = design_loss(0.5, 1.0, 30, 1.0);
        let d4 = design_loss(0.5, 1.0, 30, 4.0);
        assert!(d1 < d4 && d4 <= 0.5, "{d1} {d4}");
    }

    #[test]
    fn shortfall_matches_direct_sum() {
        // n = 4, q = 1/2, need 3: P(0)=1/16 (3), P(1)=4/16 (2), P(2)=6/16 (1).
        let (e, p) = expected_shortfall(4, 3, 0.5);
        assert!((e - (3.0 + 8.0 + 6.0) / 16.0).abs() < 1e-12, "{e}");
        assert!((p - 11.0 / 16.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn hybrid_sizes_below_full_and_tracks_loss() {
        let d50 = hybrid_design_loss(0.5, 2.0, 48);
        let d10 = hybrid_design_loss(0.1, 1.1, 48);
        assert!(d50 < 0.5 && d50 > 0.2, "{d50}");
        assert!(d10 < d50, "{d10} {d50}");
        let r_full = redundancy_for(0.5, 2.0, 0).repair_count(48);
        let r_hyb = redundancy_for(d50, 2.0, 0).repair_count(48);
        assert!(r_hyb < r_full && r_hyb >= 40, "{r_hyb} vs {r_full}");
        assert_eq!(hybrid_design_loss(0.0, 1.0, 48), 0.0);
    }
}
