//! The receiving half: FEC → NACK → skip → keyframe request.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::wire::{Feedback, FrameMarking, rtx_unwrap};
use super::{extend_seq, extend_ts};
use crate::fec::{FEC_HEADER_LEN, FecDecoder, FecDecoderConfig, FecHeader, RtpView};

/// Configuration of a [`ProtectedReceiver`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiverConfig {
    /// SSRC of the media stream.
    pub media_ssrc: u32,
    /// Our own SSRC, the sender of the RTCP feedback.
    pub receiver_ssrc: u32,
    /// Media payload type (the RTX stream's `apt`).
    pub media_payload_type: u8,
    /// Whether repair packets are expected (FEC negotiated).
    pub fec: bool,
    /// Payload type of `x-huitong-rs-fec`.
    pub fec_payload_type: u8,
    /// SSRC of the repair stream if signalled.
    pub fec_ssrc: Option<u32>,
    /// SSRC of the RTX stream.
    pub rtx_ssrc: u32,
    /// Payload type of RTX.
    pub rtx_payload_type: u8,
    /// Header extension id of frame marking.
    pub frame_marking_id: u8,
    /// RTP clock rate of the media.
    pub clock_rate: u32,
    /// A frame must be complete this long after the earliest it could have arrived
    /// (its capture time plus the smallest transit seen), or it is skipped.
    pub playout_delay: Duration,
    /// RTT assumed until retransmissions measure it.
    pub initial_rtt: Duration,
    /// NACKs per missing packet at most.
    pub max_nacks: u32,
    /// Added to the RTT before a packet is asked for again.
    pub nack_margin: Duration,
    /// After a block's first repair packet, how long to wait for the rest (they are sent
    /// back to back) before asking for its shortfall.
    pub repair_guard: Duration,
    /// A missing packet of no known FEC block is asked for after this long (its block's
    /// repair may still come; without FEC it only covers reordering).
    pub unknown_wait: Duration,
    /// Copies of each NACK and PLI sent (the feedback path is lossy too).
    pub feedback_copies: u32,
    /// Interval of loss reports.
    pub report_interval: Duration,
    /// Keyframe requests are repeated this often until a keyframe arrives.
    pub keyframe_retry: Duration,
    /// Extra time a keyframe gets past `playout_delay` (frames behind it wait). Skipping
    /// a keyframe costs every frame until the next one completes, a PLI round trip plus
    /// another large frame through the same loss; waiting a few more repair rounds for
    /// the one in flight costs a short freeze instead.
    pub keyframe_grace: Duration,
    /// Time past a frame's planned deadline (`playout_delay`) before it is given up.
    /// Requests are planned to complete the frame by the planned deadline, as without
    /// a grace; once a repair round can no longer arrive by then, the planner plans
    /// for the give-up time instead, spreading requests over the rounds left (about
    /// five at the SFU's 300 ms), so a frame still short gets those rounds instead of
    /// being skipped. While the stream waits for a keyframe a non-key frame gets no
    /// grace. The SFU's uplink and a terminal behind an SFU use it, since a skip there
    /// costs a keyframe; zero by default.
    pub late_grace: Duration,
}

impl ReceiverConfig {
    /// Defaults for 30 fps video with FEC, for the stream the sender of the same
    /// defaults produces.
    pub fn new(media_ssrc: u32, receiver_ssrc: u32, rtx_ssrc: u32) -> Self {
        ReceiverConfig {
            media_ssrc,
            receiver_ssrc,
            media_payload_type: 102,
            fec: true,
            fec_payload_type: 115,
            fec_ssrc: None,
            rtx_ssrc,
            rtx_payload_type: 103,
            frame_marking_id: 5,
            clock_rate: 90_000,
            playout_delay: Duration::from_millis(225),
            initial_rtt: Duration::from_millis(40),
            max_nacks: 6,
            nack_margin: Duration::from_millis(10),
            repair_guard: Duration::from_millis(8),
            unknown_wait: Duration::from_millis(130),
            feedback_copies: 3,
            report_interval: Duration::from_millis(250),
            keyframe_retry: Duration::from_millis(150),
            keyframe_grace: Duration::from_millis(250),
            late_grace: Duration::ZERO,
        }
    }
}

/// A complete frame for the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredFrame {
    /// RTP timestamp.
    pub rtp_timestamp: u32,
    /// Temporal layer id.
    pub temporal_layer: u8,
    /// Keyframe.
    pub keyframe: bool,
    /// The frame's RTP packets, in order, byte-identical to what was sent.
    pub packets: Vec<Vec<u8>>,
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Still incomplete at its deadline.
    Incomplete,
    /// Complete, but a frame it references was not delivered.
    MissingReference,
    /// Complete, but the stream waits for a keyframe.
    AwaitingKeyframe,
}

/// A frame that was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedFrame {
    /// RTP timestamp.
    pub rtp_timestamp: u32,
    /// Temporal layer id.
    pub temporal_layer: u8,
    /// Keyframe.
    pub keyframe: bool,
    /// Why.
    pub reason: SkipReason,
}

/// What the receiver tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Hand this frame to the decoder.
    Frame(DeliveredFrame),
    /// This frame will never be delivered.
    Skipped(SkippedFrame),
    /// Packets of which nothing arrived were given up: whole frames may have been in
    /// this sequence range (inclusive); they are never delivered.
    Gap {
        /// First sequence number of the range.
        first_seq: u16,
        /// Last sequence number of the range.
        last_seq: u16,
    },
    /// A reference frame was lost; a keyframe request went out.
    KeyframeRequested,
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverStats {
    /// Media packets received (first transmissions).
    pub media_packets: u64,
    /// Repair packets received.
    pub fec_packets: u64,
    /// RTX packets received.
    pub rtx_packets: u64,
    /// Packets rebuilt by FEC.
    pub fec_recovered: u64,
    /// Packets arriving after they were rebuilt, retransmitted or given up.
    pub redundant: u64,
    /// Of those, retransmissions: requests that turned out not to be needed.
    pub redundant_rtx: u64,
    /// Of those, why, by what had brought the packet first: FEC (a request the block's
    /// repair made unnecessary, the planner's deliberate spare), an earlier RTX (a
    /// retry answered twice) or the original (late, not lost). The rest came after
    /// their frame was given up.
    pub redundant_rtx_after_fec: u64,
    pub redundant_rtx_after_rtx: u64,
    pub redundant_rtx_after_original: u64,
    /// Packets without a usable frame marking.
    pub unmarked: u64,
    /// Frames delivered.
    pub frames_delivered: u64,
    /// Frames skipped.
    pub frames_skipped: u64,
    /// NACK messages sent (not counting copies).
    pub nacks_sent: u64,
    /// Sequence numbers asked for.
    pub nacked_seqs: u64,
    /// Keyframe requests sent (not counting copies).
    pub keyframe_requests: u64,
}

impl std::ops::AddAssign for ReceiverStats {
    fn add_assign(&mut self, o: ReceiverStats) {
        // Destructured without `..`: a new counter cannot be left out of the sum.
        let ReceiverStats {
            media_packets,
            fec_packets,
            rtx_packets,
            fec_recovered,
            redundant,
            redundant_rtx,
            redundant_rtx_after_fec,
            redundant_rtx_after_rtx,
            redundant_rtx_after_original,
            unmarked,
            frames_delivered,
            frames_skipped,
            nacks_sent,
            nacked_seqs,
            keyframe_requests,
        } = o;
        self.media_packets += media_packets;
        self.fec_packets += fec_packets;
        self.rtx_packets += rtx_packets;
        self.fec_recovered += fec_recovered;
        self.redundant += redundant;
        self.redundant_rtx += redundant_rtx;
        self.redundant_rtx_after_fec += redundant_rtx_after_fec;
        self.redundant_rtx_after_rtx += redundant_rtx_after_rtx;
        self.redundant_rtx_after_original += redundant_rtx_after_original;
        self.unmarked += unmarked;
        self.frames_delivered += frames_delivered;
        self.frames_skipped += frames_skipped;
        self.nacks_sent += nacks_sent;
        self.nacked_seqs += nacked_seqs;
        self.keyframe_requests += keyframe_requests;
    }
}

#[derive(Debug)]
struct FrameState {
    tid: u8,
    keyframe: bool,
    tl0: u8,
    start: Option<u64>,
    end: Option<u64>,
    max_seq: u64,
    count: u64,
    /// When the planner means the frame to be complete.
    planned: Instant,
    /// When it is given up: `planned` plus the late grace.
    deadline: Instant,
}

impl FrameState {
    fn complete(&self) -> bool {
        matches!((self.start, self.end), (Some(s), Some(e)) if e >= s && e - s + 1 == self.count)
    }
}

#[derive(Debug)]
struct Miss {
    detected: Instant,
    nacks: u32,
    last_nack: Option<Instant>,
}

#[derive(Debug)]
struct BlockInfo {
    k: u64,
    repairs: Vec<bool>,
    repair_count: u64,
    first_at: Instant,
    last_round: Option<Instant>,
}

/// First transmissions seen on one stream, for loss fraction and loss-run length.
#[derive(Debug, Default)]
struct LossCounter {
    received: BTreeSet<u64>,
    highest: Option<u64>,
    from: Option<u64>,
}

impl LossCounter {
    fn record(&mut self, seq: u16) {
        let ext = extend_seq(seq, self.highest);
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        if self.from.is_none() {
            self.from = Some(ext);
        }
        if self.from.is_some_and(|f| ext >= f) {
            self.received.insert(ext);
        }
    }

    /// (expected, lost, loss runs) since the last call.
    fn take(&mut self) -> (u64, u64, u64) {
        let (Some(from), Some(high)) = (self.from, self.highest) else {
            return (0, 0, 0);
        };
        if high < from {
            return (0, 0, 0);
        }
        let (mut lost, mut runs, mut prev_lost) = (0, 0, false);
        for s in from..=high {
            let l = !self.received.contains(&s);
            if l {
                lost += 1;
                if !prev_lost {
                    runs += 1;
                }
            }
            prev_lost = l;
        }
        self.from = Some(high + 1);
        self.received = self.received.split_off(&(high + 1));
        (high + 1 - from, lost, runs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Original,
    Rtx,
    Fec,
}

/// Receiver side of the hybrid FEC + NACK loop for one video stream.
#[derive(Debug)]
pub struct ProtectedReceiver {
    cfg: ReceiverConfig,
    fec: Option<FecDecoder>,
    packets: BTreeMap<u64, Vec<u8>>,
    /// Every media sequence number that arrived or was rebuilt, for block accounting,
    /// with how it came first.
    received: BTreeMap<u64, Origin>,
    highest_seq: Option<u64>,
    highest_ts: Option<u64>,
    missing: BTreeMap<u64, Miss>,
    blocks: BTreeMap<u64, BlockInfo>,
    highest_block_base: Option<u64>,
    frames: BTreeMap<u64, FrameState>,
    next_seq: Option<u64>,
    last_resolved_ts: Option<u64>,
    need_keyframe: bool,
    requesting_keyframe: bool,
    last_pli: Option<Instant>,
    last_tl0: Option<u8>,
    lower_ok: [bool; 8],
    anchor: Option<(Instant, u64)>,
    rtt: Duration,
    loss_est: f64,
    burst_est: f64,
    loss_vif: f64,
    reports: u64,
    media_loss: LossCounter,
    fec_loss: LossCounter,
    next_report: Option<Instant>,
    next_nack_check: Option<Instant>,
    feedback: VecDeque<Vec<u8>>,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
}

impl ProtectedReceiver {
    /// A receiver; the stream starts at its first keyframe.
    pub fn new(cfg: ReceiverConfig) -> Self {
        let fec = cfg.fec.then(|| {
            let mut d = FecDecoderConfig::new(cfg.media_ssrc, cfg.fec_payload_type);
            d.fec_ssrc = cfg.fec_ssrc;
            d
        });
        ProtectedReceiver {
            fec: fec.map(FecDecoder::new),
            packets: BTreeMap::new(),
            received: BTreeMap::new(),
            highest_seq: None,
            highest_ts: None,
            missing: BTreeMap::new(),
            blocks: BTreeMap::new(),
            highest_block_base: None,
            frames: BTreeMap::new(),
            next_seq: None,
            last_resolved_ts: None,
            need_keyframe: true,
            requesting_keyframe: false,
            last_pli: None,
            last_tl0: None,
            lower_ok: [true; 8],
            anchor: None,
            rtt: cfg.initial_rtt,
            // Until the first report, size requests as the sender sizes its first
            // protection (`SenderConfig::initial_loss`): assuming a clean link makes the
            // first blocks' requests too few, and a lost first base layer costs a keyframe.
            loss_est: INITIAL_LOSS_ESTIMATE,
            burst_est: 1.0,
            reports: 0,
            loss_vif: 1.0,
            media_loss: LossCounter::default(),
            fec_loss: LossCounter::default(),
            next_report: None,
            next_nack_check: None,
            feedback: VecDeque::new(),
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
            cfg,
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Asks the sender for a keyframe on behalf of the owner (an SFU whose subscriber
    /// needs one), through this loop's feedback: in as many copies as a NACK, where a
    /// single RTCP PLI on a lossy link is lost as often as the link loses packets.
    pub fn request_keyframe(&mut self, now: Instant) {
        self.send_pli(now);
    }

    /// Current RTT estimate.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Next event for the owner.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Next RTCP packet to send to the media sender.
    pub fn poll_feedback(&mut self) -> Option<Vec<u8>> {
        self.feedback.pop_front()
    }

    /// Take in a packet of the media, repair or RTX stream. Packets of other streams and
    /// malformed bytes are ignored (counted); nothing panics.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) {
        if let Ok(rtp) = RtpView::parse(packet) {
            let is_repair = self.fec.is_some()
                && rtp.payload_type == self.cfg.fec_payload_type
                && self.cfg.fec_ssrc.is_none_or(|s| s == rtp.ssrc);
            if is_repair {
                self.stats.fec_packets += 1;
                self.fec_loss.record(rtp.seq);
                self.note_repair(now, &packet[rtp.payload_start..rtp.payload_end]);
                let rebuilt = self
                    .fec
                    .as_mut()
                    .and_then(|d| d.push(packet).ok())
                    .unwrap_or_default();
                for p in rebuilt {
                    self.accept(now, p, Origin::Fec);
                }
            } else if rtp.ssrc == self.cfg.rtx_ssrc && rtp.payload_type == self.cfg.rtx_payload_type
            {
                if let Some(orig) =
                    rtx_unwrap(packet, self.cfg.media_ssrc, self.cfg.media_payload_type)
                {
                    self.stats.rtx_packets += 1;
                    self.accept(now, orig, Origin::Rtx);
                }
            } else if rtp.ssrc == self.cfg.media_ssrc {
                self.stats.media_packets += 1;
                self.media_loss.record(rtp.seq);
                self.accept(now, packet.to_vec(), Origin::Original);
            }
        }
        self.handle_timeout(now);
    }

    /// When `handle_timeout` must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_report;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        take(self.frames.values().next().map(|f| self.give_up_at(f)));
        take(self.next_nack_check);
        if self.requesting_keyframe {
            take(self.last_pli.map(|p| p + self.cfg.keyframe_retry));
        }
        t
    }

    /// Resolve frames whose deadline passed, send due NACKs, PLIs and loss reports.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.resolve_frames(now);
        self.schedule_nacks(now);
        if self.requesting_keyframe
            && self
                .last_pli
                .is_none_or(|t| now >= t + self.cfg.keyframe_retry)
        {
            self.send_pli(now);
        }
        match self.next_report {
            None => self.next_report = Some(now + self.cfg.report_interval),
            Some(t) if now >= t => {
                self.report();
                self.next_report = Some(now + self.cfg.report_interval);
            }
            _ => {}
        }
    }

    /// Probability that `c` back-to-back copies are all lost on a channel with the
    /// measured loss and mean loss run (a loss run continues with `1 − 1/B`).
    fn all_copies_lost(&self, c: u32) -> f64 {
        let p = self.loss_est.clamp(0.0, 0.95);
        let b = self.burst_est.max(1.0 / (1.0 - p)).max(1.0);
        p * (1.0 - 1.0 / b).powi(i32::try_from(c.max(1)).unwrap_or(1) - 1)
    }

    /// Copies of each NACK/PLI: enough that all are lost at most 5 % of the time
    /// (feedback is tiny; a lost NACK costs a round trip), at least the configured.
    fn copies(&self) -> u32 {
        let mut c = self.cfg.feedback_copies.max(1);
        while c < MAX_FEEDBACK_COPIES && self.all_copies_lost(c) > FEEDBACK_FAILURE {
            c += 1;
        }
        c
    }

    fn send_pli(&mut self, now: Instant) {
        self.last_pli = Some(now);
        self.stats.keyframe_requests += 1;
        let b = Feedback::Pli {
            media_ssrc: self.cfg.media_ssrc,
        }
        .to_bytes(self.cfg.receiver_ssrc);
        for _ in 0..self.copies() {
            self.feedback.push_back(b.clone());
        }
    }

    fn report(&mut self) {
        let (e1, l1, r1) = self.media_loss.take();
        let (e2, l2, r2) = self.fec_loss.take();
        let (expected, lost, runs) = (e1 + e2, l1 + l2, r1 + r2);
        if expected == 0 {
            return;
        }
        let fraction = lost as f64 / expected as f64;
        let burst = if runs == 0 {
            1.0
        } else {
            lost as f64 / runs as f64
        };
        // The receiver's own estimate sizes NACK requests; weight by sample size.
        // The first report replaces the prior.
        self.reports += 1;
        let w = if self.reports == 1 {
            1.0
        } else {
            (expected as f64 / 500.0).min(0.5)
        };
        self.loss_est = (1.0 - w) * self.loss_est + w * fraction;
        self.burst_est = (1.0 - w) * self.burst_est + w * burst;
        self.loss_vif = crate::fec::redundancy_for(self.loss_est, self.burst_est, 0)
            .variance_inflation
            .clamp(1.0, 10.0);
        self.feedback.push_back(
            Feedback::LossReport {
                media_ssrc: self.cfg.media_ssrc,
                fraction,
                burstiness: burst,
                expected: expected.min(u64::from(u32::MAX)) as u32,
            }
            .to_bytes(self.cfg.receiver_ssrc),
        );
    }

    fn note_repair(&mut self, now: Instant, payload: &[u8]) {
        let Ok(h) = FecHeader::parse(payload) else {
            return;
        };
        if h.protected_ssrc != self.cfg.media_ssrc || payload.len() < FEC_HEADER_LEN {
            return;
        }
        let base = extend_seq(h.seq_base, self.highest_seq);
        if self.next_seq.is_some_and(|n| base + u64::from(h.k) <= n) {
            return;
        }
        if self.highest_block_base.is_none_or(|b| base > b) {
            self.highest_block_base = Some(base);
        }
        if !self.blocks.contains_key(&base) {
            self.next_nack_check = Some(now);
        }
        let b = self.blocks.entry(base).or_insert_with(|| BlockInfo {
            k: u64::from(h.k),
            repairs: vec![false; usize::from(h.r)],
            repair_count: 0,
            first_at: now,
            last_round: None,
        });
        if let Some(slot) = b.repairs.get_mut(usize::from(h.index))
            && !*slot
        {
            *slot = true;
            b.repair_count += 1;
        }
        // A block's repairs follow its last source: anything up to its end that has not
        // arrived is missing now.
        self.note_highest(now, base + u64::from(h.k) - 1, false);
    }

    /// Raise the highest sequence number known to exist; the numbers skipped are missing.
    fn note_highest(&mut self, now: Instant, ext: u64, present: bool) {
        let Some(h) = self.highest_seq else {
            if present {
                self.highest_seq = Some(ext);
            }
            return;
        };
        if ext <= h {
            return;
        }
        // A jump this large is a restart, not loss; do not flood NACKs.
        let from = if ext - h > 2048 { ext } else { h + 1 };
        for s in from..ext {
            if !self.packets.contains_key(&s) {
                self.missing.entry(s).or_insert(Miss {
                    detected: now,
                    nacks: 0,
                    last_nack: None,
                });
            }
        }
        if !present && !self.packets.contains_key(&ext) {
            self.missing.entry(ext).or_insert(Miss {
                detected: now,
                nacks: 0,
                last_nack: None,
            });
        }
        self.highest_seq = Some(ext);
        self.next_nack_check = Some(now);
    }

    fn accept(&mut self, now: Instant, packet: Vec<u8>, origin: Origin) {
        let mut work = vec![(packet, origin)];
        while let Some((p, origin)) = work.pop() {
            let Ok(rtp) = RtpView::parse(&p) else {
                continue;
            };
            let ext = extend_seq(rtp.seq, self.highest_seq);
            if self.next_seq.is_some_and(|n| ext < n) || self.packets.contains_key(&ext) {
                self.note_redundant(ext, origin);
                continue;
            }
            let Some(mark) = FrameMarking::parse(&p, self.cfg.frame_marking_id) else {
                self.stats.unmarked += 1;
                continue;
            };
            let ts = extend_ts(rtp.timestamp, self.highest_ts);
            if self.last_resolved_ts.is_some_and(|t| ts <= t) {
                self.note_redundant(ext, origin);
                continue;
            }
            if self.highest_ts.is_none_or(|h| ts > h) {
                self.highest_ts = Some(ts);
            }
            if origin == Origin::Original {
                self.update_anchor(now, ts);
            }
            match origin {
                Origin::Fec => self.stats.fec_recovered += 1,
                Origin::Rtx => {
                    if let Some(m) = self.missing.get(&ext)
                        && m.nacks == 1
                        && let Some(t) = m.last_nack
                    {
                        // Karn: only first requests give unambiguous samples.
                        let sample = now - t;
                        self.rtt = (self.rtt * 7 + sample) / 8;
                    }
                }
                Origin::Original => {}
            }
            self.note_highest(now, ext, true);
            self.missing.remove(&ext);
            let mut planned = self.deadline_for(now, ts);
            if mark.independent {
                planned += self.cfg.keyframe_grace;
            }
            let deadline = planned + self.cfg.late_grace;
            let f = self.frames.entry(ts).or_insert(FrameState {
                tid: mark.tid,
                keyframe: mark.independent,
                tl0: mark.tl0_pic_idx,
                start: None,
                end: None,
                max_seq: ext,
                count: 0,
                planned,
                deadline,
            });
            if mark.start {
                f.start = Some(ext);
            }
            if mark.end || rtp.marker {
                f.end = Some(ext);
            }
            f.max_seq = f.max_seq.max(ext);
            f.count += 1;
            if origin != Origin::Fec
                && let Some(d) = self.fec.as_mut()
            {
                for r in d.push(&p).unwrap_or_default() {
                    work.push((r, Origin::Fec));
                }
            }
            self.packets.insert(ext, p);
            self.received.insert(ext, origin);
            while self.received.len() > 8192 {
                self.received.pop_first();
            }
        }
    }

    fn note_redundant(&mut self, ext: u64, origin: Origin) {
        self.stats.redundant += 1;
        if origin == Origin::Rtx {
            self.stats.redundant_rtx += 1;
            match self.received.get(&ext) {
                Some(Origin::Fec) => self.stats.redundant_rtx_after_fec += 1,
                Some(Origin::Rtx) => self.stats.redundant_rtx_after_rtx += 1,
                Some(Origin::Original) => self.stats.redundant_rtx_after_original += 1,
                None => {}
            }
        }
    }

    fn update_anchor(&mut self, now: Instant, ts: u64) {
        match self.anchor {
            None => self.anchor = Some((now, ts)),
            Some((at, ats)) => {
                // Earliest possible arrival of `ts` by the anchor; keep the smallest transit.
                if let Some(expect) = self.ts_time(at, ats, ts)
                    && now < expect
                {
                    self.anchor = Some((now, ts));
                }
            }
        }
    }

    fn ts_time(&self, at: Instant, ats: u64, ts: u64) -> Option<Instant> {
        let rate = u64::from(self.cfg.clock_rate.max(1));
        if ts >= ats {
            at.checked_add(Duration::from_nanos((ts - ats) * 1_000_000_000 / rate))
        } else {
            at.checked_sub(Duration::from_nanos((ats - ts) * 1_000_000_000 / rate))
        }
    }

    fn deadline_for(&self, now: Instant, ts: u64) -> Instant {
        let base = self
            .anchor
            .and_then(|(at, ats)| self.ts_time(at, ats, ts))
            .unwrap_or(now);
        base + self.cfg.playout_delay
    }

    /// When an incomplete frame is given up. While the stream waits for a keyframe a
    /// non-key frame would be skipped even if it completed, so holding it through the
    /// late grace only delays the keyframe behind it.
    fn give_up_at(&self, f: &FrameState) -> Instant {
        if self.need_keyframe && !f.keyframe {
            f.planned
        } else {
            f.deadline
        }
    }

    /// Deliver or skip frames in decoding order.
    fn resolve_frames(&mut self, now: Instant) {
        while let Some((&ts, f)) = self.frames.first_key_value() {
            let complete = f.complete();
            let gap = match (self.next_seq, f.start) {
                (Some(n), Some(s)) => s > n,
                (Some(n), None) => f.max_seq >= n,
                _ => false,
            };
            let due = now >= self.give_up_at(f);
            if !(due || complete && !gap) {
                break;
            }
            let Some(f) = self.frames.remove(&ts) else {
                break;
            };
            if gap && complete {
                // Nothing arrived of the packets before this frame: whole frames may be gone.
                let (n, s) = (self.next_seq.unwrap_or(0), f.start.unwrap_or(0));
                self.report_gap(n, s - 1);
            } else if !complete && let Some(n) = self.next_seq {
                // The frame's own start is unknown: it may hide whole frames before it.
                let first = f
                    .start
                    .unwrap_or_else(|| self.packets.range(n..).next().map_or(n, |(s, _)| *s));
                if f.start.is_none() || first > n {
                    self.report_gap(n, first.saturating_sub(1).max(n));
                }
            }
            if complete {
                self.decide(ts, f);
            } else {
                self.skip(ts, &f, SkipReason::Incomplete);
                let end = f.end.unwrap_or(f.max_seq);
                self.advance(end + 1);
            }
            self.last_resolved_ts = Some(ts);
        }
    }

    fn report_gap(&mut self, first: u64, last: u64) {
        // Unknown frames may be upper-layer references: their dependants are unsafe.
        for ok in self.lower_ok.iter_mut().skip(1) {
            *ok = false;
        }
        self.events.push_back(ReceiverEvent::Gap {
            first_seq: first as u16,
            last_seq: last as u16,
        });
    }

    fn decide(&mut self, ts: u64, f: FrameState) {
        let t = usize::from(f.tid.min(7));
        let verdict = if f.keyframe {
            Ok(())
        } else if self.need_keyframe {
            Err(SkipReason::AwaitingKeyframe)
        } else if t == 0 {
            if self.last_tl0 == Some(f.tl0.wrapping_sub(1)) {
                Ok(())
            } else {
                Err(SkipReason::MissingReference)
            }
        } else if self.last_tl0 == Some(f.tl0) && self.lower_ok[t] {
            Ok(())
        } else {
            Err(SkipReason::MissingReference)
        };
        let (start, end) = (f.start.unwrap_or(0), f.end.unwrap_or(0));
        match verdict {
            Ok(()) => {
                let packets: Vec<Vec<u8>> = (start..=end)
                    .filter_map(|s| self.packets.remove(&s))
                    .collect();
                if f.keyframe || t == 0 {
                    self.last_tl0 = Some(f.tl0);
                    self.lower_ok = [true; 8];
                    if f.keyframe {
                        self.need_keyframe = false;
                        self.requesting_keyframe = false;
                    }
                } else {
                    for ok in self.lower_ok.iter_mut().skip(t + 1) {
                        *ok = true;
                    }
                }
                self.stats.frames_delivered += 1;
                self.events.push_back(ReceiverEvent::Frame(DeliveredFrame {
                    rtp_timestamp: ts as u32,
                    temporal_layer: f.tid,
                    keyframe: f.keyframe,
                    packets,
                }));
            }
            Err(reason) => {
                // A base-layer frame whose predecessor is gone breaks the chain even if
                // it is complete itself.
                if t == 0 && reason == SkipReason::MissingReference && self.last_tl0.is_some() {
                    self.last_tl0 = None;
                }
                self.skip(ts, &f, reason);
            }
        }
        self.advance(end + 1);
    }

    fn skip(&mut self, ts: u64, f: &FrameState, reason: SkipReason) {
        let t = usize::from(f.tid.min(7));
        if f.keyframe || t == 0 {
            self.need_keyframe = true;
            self.last_tl0 = None;
        } else {
            for ok in self.lower_ok.iter_mut().skip(t + 1) {
                *ok = false;
            }
        }
        if self.need_keyframe && !self.requesting_keyframe {
            self.requesting_keyframe = true;
            self.last_pli = None;
            self.events.push_back(ReceiverEvent::KeyframeRequested);
        }
        self.stats.frames_skipped += 1;
        self.events.push_back(ReceiverEvent::Skipped(SkippedFrame {
            rtp_timestamp: ts as u32,
            temporal_layer: f.tid,
            keyframe: f.keyframe,
            reason,
        }));
    }

    fn advance(&mut self, next: u64) {
        if self.next_seq.is_some_and(|n| n >= next) {
            return;
        }
        self.next_seq = Some(next);
        self.packets = self.packets.split_off(&next);
        self.missing = self.missing.split_off(&next);
        self.blocks.retain(|base, b| base + b.k > next);
    }

    /// What is lost, in packet-equivalents, if block `[base, base + k)` is still
    /// incomplete after request round `j` (entry `j`; round 0 is sent now, round `j`
    /// at `now + j·retry`): the frames of the block whose deadline that round's
    /// retransmissions are the last to meet. Frames that are complete or already out of
    /// reach do not count.
    fn round_stakes(&self, base: u64, k: u64, now: Instant, retry: Duration) -> Vec<f64> {
        let arrival = self.rtt + ARRIVAL_MARGIN;
        let mut stakes: Vec<f64> = Vec::new();
        for f in self.frames.values() {
            let overlaps = f.max_seq >= base && f.start.map_or(f.max_seq, |s| s) < base + k;
            if !overlaps || f.complete() || f.deadline < now + arrival {
                continue;
            }
            // Planned for its own deadline while that can still be met, then for the
            // last chance before it is given up.
            let target = if f.planned >= now + arrival {
                f.planned
            } else {
                f.deadline
            };
            let slack = target - (now + arrival);
            let j = (slack.as_nanos() / retry.as_nanos().max(1)).min(MAX_PLANNED_ROUNDS as u128);
            let j = j as usize;
            if stakes.len() <= j {
                stakes.resize(j + 1, 0.0);
            }
            stakes[j] += if f.keyframe || f.tid == 0 {
                BASE_FRAME_COST
            } else if f.tid == 1 {
                2.0 * FRAME_COST
            } else {
                FRAME_COST
            };
        }
        stakes
    }

    /// Deadline of the frame a missing packet belongs to (or of an earlier one).
    fn deadline_of_seq(&self, seq: u64) -> Option<Instant> {
        self.frames
            .values()
            .find(|f| f.max_seq >= seq)
            .map(|f| f.deadline)
    }

    fn schedule_nacks(&mut self, now: Instant) {
        if self.next_nack_check.is_none_or(|t| now < t) {
            return;
        }
        let retry = self.rtt + self.cfg.nack_margin;
        let mut next: Option<Instant> = None;
        let mut later = |t: Instant| {
            if t > now {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        let mut ask: Vec<u64> = Vec::new();
        // A retransmission arrives if one of the NACK copies and the RTX get through.
        let copies = self.copies();
        let q =
            ((1.0 - self.loss_est.clamp(0.0, 0.8)) * (1.0 - self.all_copies_lost(copies))).max(0.1);
        // FEC blocks that arrived short: ask for just enough sources to fill them.
        let bases: Vec<u64> = self.blocks.keys().copied().collect();
        for base in bases {
            let b = &self.blocks[&base];
            let ready = b.first_at + self.cfg.repair_guard;
            let due = b.last_round.map_or(ready, |t| (t + retry).max(ready));
            let k = b.k;
            // Count what arrived, not what was resolved: sources of a skipped frame
            // before `next_seq` are still missing for the block.
            let present = self.received.range(base..base + k).count() as u64;
            if present + b.repair_count >= k {
                continue;
            }
            if now < due {
                later(due);
                continue;
            }
            let deficit = k - present - b.repair_count;
            let mut cands: Vec<(u32, u64)> = self
                .missing
                .range(base..base + k)
                .filter(|(s, m)| {
                    m.nacks < self.cfg.max_nacks
                        && self.deadline_of_seq(**s).is_none_or(|d| now + self.rtt < d)
                })
                .map(|(s, m)| (m.nacks, *s))
                .collect();
            if cands.is_empty() {
                continue;
            }
            cands.sort_unstable();
            let stakes = self.round_stakes(base, k, now, retry);
            let want = if stakes.iter().any(|c| *c > 0.0) {
                // Size this round against the rounds still possible before the frames'
                // deadlines: few requests while later rounds can make up for a short
                // one, many when the next failure costs frames.
                let reach = 1.0 - self.all_copies_lost(copies);
                let arrive = 1.0 - self.loss_est.clamp(0.0, 0.8);
                plan_requests(deficit, reach, arrive, self.loss_vif, &stakes, cands.len())
            } else {
                // No incomplete frame of the block is known (whole frames lost): about
                // one standard deviation to spare, widened by the burst variance.
                let d = deficit as f64;
                let spare = (d * self.loss_vif).sqrt();
                ((d + spare) / q).ceil() as usize + 1
            }
            .min(cands.len());
            ask.extend(cands[..want].iter().map(|(_, s)| *s));
            if let Some(b) = self.blocks.get_mut(&base) {
                b.last_round = Some(now);
            }
            later(now + retry);
        }
        // Packets of no known block: after `unknown_wait` (or once a later block's
        // repairs show theirs are not coming), one by one.
        let fec = self.fec.is_some();
        let wait = self.cfg.unknown_wait;
        let later_block = self.highest_block_base;
        let in_block = |s: u64, blocks: &BTreeMap<u64, BlockInfo>| {
            blocks
                .range(..=s)
                .next_back()
                .is_some_and(|(base, b)| s < base + b.k)
        };
        let cands: Vec<u64> = self
            .missing
            .iter()
            .filter(|(s, m)| {
                if m.nacks >= self.cfg.max_nacks || in_block(**s, &self.blocks) {
                    return false;
                }
                let eligible_at = if fec && later_block.is_some_and(|b| b > **s) {
                    m.detected
                } else {
                    m.detected + wait
                };
                let due = m
                    .last_nack
                    .map_or(eligible_at, |t| (t + retry).max(eligible_at));
                if now < due {
                    later(due);
                    return false;
                }
                self.deadline_of_seq(**s).is_none_or(|d| now + self.rtt < d)
            })
            .map(|(s, _)| *s)
            .collect();
        if !cands.is_empty() {
            later(now + retry);
        }
        ask.extend(cands);
        self.next_nack_check = next;
        if ask.is_empty() {
            return;
        }
        for s in &ask {
            if let Some(m) = self.missing.get_mut(s) {
                m.nacks += 1;
                m.last_nack = Some(now);
            }
        }
        self.stats.nacks_sent += 1;
        self.stats.nacked_seqs += ask.len() as u64;
        let b = Feedback::Nack {
            media_ssrc: self.cfg.media_ssrc,
            seqs: ask.iter().map(|s| *s as u16).collect(),
        }
        .to_bytes(self.cfg.receiver_ssrc);
        for _ in 0..copies {
            self.feedback.push_back(b.clone());
        }
    }
}

/// Copies of a NACK or PLI at most.
const MAX_FEEDBACK_COPIES: u32 = 10;

/// Chance that all copies of a NACK are lost that the copy count aims for: a lost
/// round costs a round trip of a block's deadline whatever it asked for.
const FEEDBACK_FAILURE: f64 = 0.02;

/// Loss assumed for request sizing before the first report.
const INITIAL_LOSS_ESTIMATE: f64 = 0.5;

/// Price of a lost frame that nothing references, in packets sent: the exchange rate
/// between frame rate and retransmission bytes the request planner works with.
const FRAME_COST: f64 = 40.0;

/// Price of a lost base-layer frame or keyframe: every later frame until a keyframe is
/// lost (~10 frames: PLI round trip plus encoding) and the keyframe itself costs about
/// 130 packets, more under protection.
const BASE_FRAME_COST: f64 = 600.0;

/// Retransmissions must arrive this long before a frame's deadline (jitter).
const ARRIVAL_MARGIN: Duration = Duration::from_millis(5);

/// Rounds looked ahead by the planner; later deadlines are folded into the last.
const MAX_PLANNED_ROUNDS: usize = 6;

/// Largest deficit, in request groups, the planner searches over.
const MAX_PLANNED_UNITS: f64 = 32.0;

/// How many packets to request now for a block short by `deficit` packets: the first
/// decision of the policy minimising expected packets requested plus expected frame loss,
/// `stakes[j]` being the cost incurred if the block is still short after round `j` (the
/// last round is `stakes.len() − 1`). A round's request reaches the sender with
/// probability `reach` (all its copies lost is a failure of the whole round, whatever it
/// asked for), and each retransmission then arrives with probability `arrive`. Under
/// bursty loss (variance inflation `vif`) requests are counted in groups of `vif`
/// packets that arrive or are lost together, as the FEC sizing does. At most `max`.
fn plan_requests(
    deficit: u64,
    reach: f64,
    arrive: f64,
    vif: f64,
    stakes: &[f64],
    max: usize,
) -> usize {
    let v = if vif.is_finite() {
        vif.clamp(1.0, 10.0)
    } else {
        1.0
    };
    let unit = |x: f64| {
        if x.is_finite() {
            x.clamp(0.01, 1.0)
        } else {
            0.5
        }
    };
    let (reach, q) = (unit(reach), unit(arrive));
    if deficit == 0 || max == 0 || stakes.is_empty() {
        return 0;
    }
    // The search is cubic in the deficit: count a large one in coarser groups (a whole
    // block lost in a burst needs many requests whatever their exact number).
    let v = v.max(deficit as f64 / MAX_PLANNED_UNITS);
    let d = ((deficit as f64 / v).ceil() as usize).max(1);
    let max_units = ((max as f64 / v).floor() as usize).max(1);
    // value[e]: expected cost from the next round on with `e` units still missing.
    let mut value = vec![0.0f64; d + 1];
    let mut first = 0usize;
    for j in (0..stakes.len()).rev() {
        let mut cur = vec![0.0f64; d + 1];
        for e in 1..=d {
            // Asking far beyond the mean cannot pay: bound the search.
            let ef = e as f64;
            let cap = (((ef + 4.0 * ef.sqrt() + 4.0) / (q * reach)).ceil() as usize).min(max_units);
            let mut best = (f64::INFINITY, 0usize);
            for m in 0..=cap {
                // The request is lost: nothing arrives.
                let mut cost = m as f64 * v + (1.0 - reach) * (stakes[j] + value[e]);
                // It arrives: X ~ Binomial(m, q) retransmissions do; x < e leaves the
                // block short.
                let mut pmf = (1.0 - q).powi(i32::try_from(m).unwrap_or(i32::MAX));
                for x in 0..e.min(m + 1) {
                    cost += reach * pmf * (stakes[j] + value[e - x]);
                    if q < 1.0 {
                        pmf *= (m - x) as f64 / (x + 1) as f64 * q / (1.0 - q);
                    }
                }
                if cost < best.0 - 1e-9 {
                    best = (cost, m);
                }
            }
            cur[e] = best.0;
            if j == 0 && e == d {
                first = best.1;
            }
        }
        value = cur;
    }
    ((first as f64 * v).ceil() as usize).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::wire::{build_media_packet, rtx_wrap};

    #[test]
    fn planner_asks_little_early_and_much_at_the_end() {
        // Short by 4 at 50 % arrival. With several rounds left and cheap frames, ask
        // about the mean (8); with one round left and a base-layer frame at stake, ask
        // well beyond it.
        let early = plan_requests(4, 1.0, 0.5, 1.0, &[0.0, 0.0, 0.0, FRAME_COST], 100);
        let last = plan_requests(4, 1.0, 0.5, 1.0, &[BASE_FRAME_COST], 100);
        assert!((6..=10).contains(&early), "{early}");
        assert!(last >= 16, "{last}");
        // The figures quoted in docs/recovery.md.
        assert_eq!(
            plan_requests(4, 0.98, 0.5, 1.0, &[BASE_FRAME_COST], 100),
            18
        );
        let l1t3 = [0.0, FRAME_COST, 2.0 * FRAME_COST, BASE_FRAME_COST];
        assert_eq!(plan_requests(4, 0.98, 0.5, 1.0, &l1t3, 100), 9);
        // A round whose NACK may be lost is worth less: ask more before the last one.
        assert!(plan_requests(4, 0.7, 0.5, 1.0, &l1t3, 100) >= 9);
        // Nothing at stake: nothing asked; never more than available.
        assert_eq!(plan_requests(4, 1.0, 0.5, 1.0, &[0.0], 100), 0);
        assert!(plan_requests(40, 0.9, 0.3, 1.0, &[BASE_FRAME_COST], 25) <= 25);
        // Bursty channels ask more for the same stakes.
        let bursty = plan_requests(4, 1.0, 0.5, 3.0, &[BASE_FRAME_COST], 100);
        assert!(bursty > last, "{bursty} vs {last}");
        // Most of a block lost in a burst (bounded work): with rounds to go, everything
        // that can be asked is; when even that cannot complete it in time, nothing is.
        let stakes = [0.0, 0.0, 0.0, BASE_FRAME_COST];
        assert_eq!(plan_requests(100, 0.98, 0.5, 1.0, &stakes, 150), 150);
        assert_eq!(
            plan_requests(100, 0.98, 0.5, 1.0, &[BASE_FRAME_COST], 150),
            0
        );
        // Nonsense inputs stay bounded.
        assert!(plan_requests(3, f64::NAN, -1.0, f64::INFINITY, &[1.0], 7) <= 7);
    }

    const SSRC: u32 = 10;
    const RTX: u32 = 11;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    /// Frame `i` of an L1T3 stream starting with a keyframe: 3 packets each.
    fn frame(i: u64, keyframe: bool) -> Vec<Vec<u8>> {
        let tid = [0u8, 2, 1, 2][(i % 4) as usize];
        let tl0 = (i / 4) as u8;
        (0..3u64)
            .map(|j| {
                let m = FrameMarking {
                    start: j == 0,
                    end: j == 2,
                    independent: keyframe,
                    discardable: tid == 2,
                    base_sync: false,
                    tid,
                    lid: 0,
                    tl0_pic_idx: tl0,
                };
                let seq = (100 + i * 3 + j) as u16;
                build_media_packet(
                    SSRC,
                    102,
                    seq,
                    (i * 3000) as u32,
                    j == 2,
                    5,
                    m,
                    &[i as u8; 50],
                )
            })
            .collect()
    }

    fn receiver() -> ProtectedReceiver {
        let mut c = ReceiverConfig::new(SSRC, 1, RTX);
        c.fec = false;
        c.unknown_wait = Duration::from_millis(5);
        ProtectedReceiver::new(c)
    }

    /// Feed frames 0..n (frame 0 a keyframe) at 30 fps, dropping the listed
    /// (frame, packet) pairs; run 1 s past the end. Returns the events and feedback.
    fn run(
        r: &mut ProtectedReceiver,
        n: u64,
        drop: &[(u64, usize)],
    ) -> (Vec<ReceiverEvent>, Vec<Feedback>) {
        let start = t0();
        let mut events = Vec::new();
        let mut fb = Vec::new();
        let mut drain = |r: &mut ProtectedReceiver| {
            while let Some(e) = r.poll_event() {
                events.push(e);
            }
            while let Some(f) = r.poll_feedback() {
                fb.extend(Feedback::parse_compound(&f));
            }
        };
        for i in 0..n {
            let now = start + Duration::from_millis(i * 33 + 20);
            for (j, p) in frame(i, i == 0).iter().enumerate() {
                if !drop.contains(&(i, j)) {
                    r.handle_packet(now, p);
                }
            }
            drain(r);
        }
        let mut now = start + Duration::from_millis(n * 33);
        let end = now + Duration::from_secs(1);
        while now < end {
            r.handle_timeout(now);
            drain(r);
            now += Duration::from_millis(5);
        }
        (events, fb)
    }

    fn delivered(ev: &[ReceiverEvent]) -> Vec<u32> {
        ev.iter()
            .filter_map(|e| match e {
                ReceiverEvent::Frame(f) => Some(f.rtp_timestamp / 3000),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn losing_a_tl2_frame_costs_only_that_frame() {
        let mut r = receiver();
        // Frame 5 is TL2 (pattern 0,2,1,2): lose its middle packet.
        let (ev, fb) = run(&mut r, 12, &[(5, 1)]);
        let got = delivered(&ev);
        assert_eq!(got, vec![0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]);
        assert!(!ev.contains(&ReceiverEvent::KeyframeRequested));
        assert!(
            fb.iter()
                .any(|f| matches!(f, Feedback::Nack { seqs, .. } if seqs == &vec![116]))
        );
        assert!(!fb.iter().any(|f| matches!(f, Feedback::Pli { .. })));
    }

    #[test]
    fn losing_a_tl1_frame_skips_the_tl2_that_references_it() {
        let mut r = receiver();
        // Frame 6 is TL1; frame 7 (TL2) references it; frame 5 (TL2) does not.
        let (ev, _) = run(&mut r, 12, &[(6, 2)]);
        assert_eq!(delivered(&ev), vec![0, 1, 2, 3, 4, 5, 8, 9, 10, 11]);
        assert!(ev.iter().any(|e| matches!(e, ReceiverEvent::Skipped(s)
            if s.rtp_timestamp == 7 * 3000 && s.reason == SkipReason::MissingReference)));
        assert!(!ev.contains(&ReceiverEvent::KeyframeRequested));
    }

    #[test]
    fn an_owner_keyframe_request_leaves_as_several_plis() {
        let mut r = receiver();
        // Before any report the loss prior (50 %) sizes the copies.
        r.request_keyframe(t0());
        let mut plis = 0;
        while let Some(f) = r.poll_feedback() {
            for fb in Feedback::parse_compound(&f) {
                assert_eq!(fb, Feedback::Pli { media_ssrc: SSRC });
                plis += 1;
            }
        }
        assert!(plis >= 3, "{plis} copies");
        assert_eq!(r.stats().keyframe_requests, 1);
    }

    #[test]
    fn losing_a_base_layer_frame_requests_a_keyframe_and_skips_dependants() {
        let mut r = receiver();
        // Frame 4 is TL0: everything after it depends on it.
        let (ev, fb) = run(&mut r, 12, &[(4, 0)]);
        assert_eq!(delivered(&ev), vec![0, 1, 2, 3]);
        assert!(ev.contains(&ReceiverEvent::KeyframeRequested));
        assert!(
            fb.iter()
                .any(|f| matches!(f, Feedback::Pli { media_ssrc: SSRC }))
        );
        let skipped = ev
            .iter()
            .filter(|e| matches!(e, ReceiverEvent::Skipped(_)))
            .count();
        assert_eq!(skipped, 8);
        // A keyframe restores delivery.
        let now = t0() + Duration::from_secs(5);
        // Frame 148 is captured at ~4.9 s, so it arrives in time at 5 s.
        let kf: Vec<Vec<u8>> = frame(148, true)
            .into_iter()
            .map(|mut p| {
                // Keep sequence numbers contiguous after frame 11.
                let seq = u16::from_be_bytes([p[2], p[3]]) - (148 - 12) * 3;
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                p
            })
            .collect();
        for p in &kf {
            r.handle_packet(now, p);
        }
        let mut got = Vec::new();
        while let Some(e) = r.poll_event() {
            got.push(e);
        }
        assert!(
            got.iter()
                .any(|e| matches!(e, ReceiverEvent::Frame(f) if f.keyframe)),
            "{got:?} {:?}",
            r.stats()
        );
    }

    #[test]
    fn a_retransmission_completes_the_frame_byte_exact() {
        let mut r = receiver();
        let start = t0();
        let f0 = frame(0, true);
        r.handle_packet(start, &f0[0]);
        r.handle_packet(start, &f0[2]);
        let mut nacked = Vec::new();
        let mut now = start;
        for _ in 0..4 {
            now += Duration::from_millis(5);
            r.handle_timeout(now);
            while let Some(f) = r.poll_feedback() {
                for fb in Feedback::parse_compound(&f) {
                    if let Feedback::Nack { seqs, .. } = fb {
                        nacked.extend(seqs);
                    }
                }
            }
        }
        assert!(nacked.contains(&101), "{nacked:?}");
        assert!(
            r.poll_event().is_none(),
            "incomplete frame must not be delivered"
        );
        let rtx = rtx_wrap(&f0[1], RTX, 103, 7).unwrap();
        r.handle_packet(now, &rtx);
        match r.poll_event() {
            Some(ReceiverEvent::Frame(f)) => assert_eq!(f.packets, f0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unneeded_retransmission_is_counted_by_what_came_first() {
        let mut r = receiver();
        let start = t0();
        let f0 = frame(0, true);
        r.handle_packet(start, &f0[0]);
        r.handle_packet(start, &f0[2]);
        // The missing packet arrives late (reordered, not lost), then as RTX.
        let ms = |m: u64| start + Duration::from_millis(m);
        r.handle_packet(ms(30), &f0[1]);
        r.handle_packet(ms(40), &rtx_wrap(&f0[1], RTX, 103, 7).unwrap());
        let st = r.stats();
        assert_eq!(st.redundant_rtx, 1, "{st:?}");
        assert_eq!(st.redundant_rtx_after_original, 1, "{st:?}");
        assert_eq!(st.redundant_rtx_after_rtx + st.redundant_rtx_after_fec, 0);
        // Frame 1 lost one packet, completed by its RTX; a second RTX of it is a
        // duplicate answer.
        let f1 = frame(1, false);
        r.handle_packet(ms(53), &f1[0]);
        r.handle_packet(ms(53), &f1[2]);
        let x = rtx_wrap(&f1[1], RTX, 103, 8).unwrap();
        r.handle_packet(ms(95), &x);
        let y = rtx_wrap(&f1[1], RTX, 103, 9).unwrap();
        r.handle_packet(ms(96), &y);
        let st = r.stats();
        assert_eq!(st.frames_delivered, 2, "{st:?}");
        assert_eq!(st.redundant_rtx, 2, "{st:?}");
        assert_eq!(st.redundant_rtx_after_rtx, 1, "{st:?}");
    }

    #[test]
    fn late_grace_keeps_repairing_a_frame_past_its_deadline() {
        // Frame 1 (TL2) misses seq 104, and every request for it before 278 ms (its
        // arrival at 53 ms + 225 ms, the planned deadline) is lost. Only a request made
        // after that is answered, 20 ms later: without a late grace the frame is gone by
        // then and nobody asks; with 75 ms the receiver keeps asking and completes it.
        for (grace, want) in [
            (Duration::ZERO, vec![0, 2]),
            (Duration::from_millis(75), vec![0, 1, 2]),
        ] {
            let mut c = ReceiverConfig::new(SSRC, 1, RTX);
            c.fec = false;
            c.late_grace = grace;
            let mut r = ProtectedReceiver::new(c);
            let start = t0();
            let ms = |m: u64| start + Duration::from_millis(m);
            let (f0, f1, f2) = (frame(0, true), frame(1, false), frame(2, false));
            for p in &f0 {
                r.handle_packet(ms(20), p);
            }
            r.handle_packet(ms(53), &f1[0]);
            r.handle_packet(ms(53), &f1[2]);
            for p in &f2 {
                r.handle_packet(ms(86), p);
            }
            let mut events = Vec::new();
            let mut answer_at = None;
            let mut now = ms(86);
            while now < ms(600) {
                now += Duration::from_millis(5);
                if answer_at == Some(now) {
                    r.handle_packet(now, &rtx_wrap(&f1[1], RTX, 103, 7).unwrap());
                }
                r.handle_timeout(now);
                while let Some(f) = r.poll_feedback() {
                    let asks = Feedback::parse_compound(&f)
                        .into_iter()
                        .any(|fb| matches!(fb, Feedback::Nack { seqs, .. } if seqs.contains(&104)));
                    if asks && now > ms(278) && answer_at.is_none() {
                        answer_at = Some(now + Duration::from_millis(20));
                    }
                }
                while let Some(e) = r.poll_event() {
                    events.push(e);
                }
            }
            assert_eq!(delivered(&events), want, "late grace {grace:?}");
            assert_eq!(
                answer_at.is_some(),
                !grace.is_zero(),
                "late grace {grace:?}"
            );
        }
    }

    #[test]
    fn fec_rebuilds_without_nack() {
        use crate::fec::{FecEncoder, FecEncoderConfig};
        let mut c = ReceiverConfig::new(SSRC, 1, RTX);
        c.fec_payload_type = 115;
        let mut r = ProtectedReceiver::new(c);
        let mut enc_cfg = FecEncoderConfig::new(SSRC, 12, 115);
        enc_cfg.min_k = 1;
        let mut enc = FecEncoder::new(enc_cfg).unwrap();
        enc.set_channel(0.3, 1.0);
        let start = t0();
        let f0 = frame(0, true);
        let mut repairs = Vec::new();
        for p in &f0 {
            repairs.extend(enc.push_source(start, p, 0).unwrap());
        }
        assert!(!repairs.is_empty());
        r.handle_packet(start, &f0[0]);
        r.handle_packet(start, &f0[2]);
        r.handle_packet(start, &repairs[0]);
        match r.poll_event() {
            Some(ReceiverEvent::Frame(f)) => assert_eq!(f.packets, f0),
            other => panic!("{other:?}"),
        }
        assert!(r.poll_feedback().is_none_or(|f| !matches!(
            Feedback::parse_compound(&f).first(),
            Some(Feedback::Nack { .. })
        )));
        assert_eq!(r.stats().fec_recovered, 1);
    }
}
