//! Per-subscription forwarding decisions: which packets of a published track reach one
//! subscriber, and how their sequence numbers, timestamps and VP8 picture ids are
//! rewritten so the subscriber sees one continuous stream across simulcast-layer
//! switches and dropped temporal layers.

use std::collections::VecDeque;
use std::time::Instant;

use media::codec::PayloadInfo;

/// Simulcast layer index: 0 = lowest (`q`), 2 = highest (`f`). Non-simulcast tracks use 0.
pub type Layer = u8;

/// Highest temporal id we forward when the subscriber can take everything.
pub const MAX_TEMPORAL: u8 = 3;

/// One incoming packet, as far as forwarding is concerned.
#[derive(Debug, Clone, Copy)]
pub struct InPacket {
    pub layer: Layer,
    /// Extended (64-bit, rollover-free) sequence number on the publisher's stream.
    pub seq: u64,
    pub ts: u32,
    pub clock_rate: u32,
    pub info: PayloadInfo,
    pub vp8_picture_id: Option<u16>,
    pub vp8_tl0: Option<u8>,
    pub arrival: Instant,
}

/// Rewritten header fields of a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket {
    pub seq: u64,
    pub ts: u32,
    pub vp8_picture_id: Option<u16>,
    pub vp8_tl0: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward(OutPacket),
    Drop,
}

/// Frames whose fate we remember, to place late (retransmitted) packets.
const FRAME_MEMORY: usize = 32;
/// Sequence-offset change points we remember, likewise.
const OFFSET_MEMORY: usize = 64;

#[derive(Debug)]
pub struct Forwarder {
    /// Layer the allocator wants; `None` pauses the subscription.
    target: Option<Layer>,
    /// Layer currently forwarded; changes only on a keyframe of the target.
    current: Option<Layer>,
    target_temporal: u8,
    current_temporal: u8,
    /// Set when the current layer disappeared or a switch is pending.
    needs_keyframe: bool,

    epoch_start_seq: u64,
    highest_in_seq: Option<u64>,
    /// out_seq = in_seq + offset; (first in_seq, offset) pairs of this epoch.
    offsets: VecDeque<(u64, i64)>,
    last_out_seq: Option<u64>,

    ts_offset: u32,
    last_out_ts: Option<u32>,
    last_out_at: Option<Instant>,

    pic_offset: i32,
    tl0_offset: u8,
    last_out_pic: Option<u16>,
    last_out_tl0: Option<u8>,

    /// (timestamp, dropped) of recent frames in this epoch.
    frames: VecDeque<(u32, bool)>,
}

impl Forwarder {
    pub fn new(target: Option<Layer>) -> Self {
        Self {
            target,
            current: None,
            target_temporal: MAX_TEMPORAL,
            current_temporal: MAX_TEMPORAL,
            needs_keyframe: target.is_some(),
            epoch_start_seq: 0,
            highest_in_seq: None,
            offsets: VecDeque::new(),
            last_out_seq: None,
            ts_offset: 0,
            last_out_ts: None,
            last_out_at: None,
            pic_offset: 0,
            tl0_offset: 0,
            last_out_pic: None,
            last_out_tl0: None,
            frames: VecDeque::new(),
        }
    }

    pub fn target(&self) -> Option<Layer> {
        self.target
    }

    pub fn current(&self) -> Option<Layer> {
        self.current
    }

    pub fn target_temporal(&self) -> u8 {
        self.target_temporal
    }

    /// Sets the wanted spatial and temporal layer. A spatial change takes effect at the
    /// next keyframe of the new layer; [`Forwarder::wanted_keyframe`] says which.
    pub fn set_target(&mut self, target: Option<Layer>, temporal: u8) {
        if target != self.target {
            self.target = target;
            self.needs_keyframe = target.is_some() && target != self.current;
            if target.is_none() {
                self.current = None;
            }
        }
        self.target_temporal = temporal.min(MAX_TEMPORAL);
    }

    /// The layer the forwarder waits on a keyframe from, if any.
    pub fn wanted_keyframe(&self) -> Option<Layer> {
        if self.needs_keyframe { self.target } else { None }
    }

    /// The current layer stopped (publisher paused it): forward nothing until a keyframe.
    pub fn layer_lost(&mut self, layer: Layer) {
        if self.current == Some(layer) {
            self.current = None;
            self.needs_keyframe = self.target.is_some();
        }
    }

    pub fn process(&mut self, p: &InPacket) -> Verdict {
        let Some(target) = self.target else {
            return Verdict::Drop;
        };
        if self.current != Some(p.layer) {
            if p.layer == target && p.info.keyframe_start {
                self.start_epoch(p);
            } else {
                return Verdict::Drop;
            }
        }
        // Late packet: place it with the offset that applied when its successors went out.
        if let Some(h) = self.highest_in_seq {
            if p.seq <= h {
                return self.process_late(p);
            }
        }
        self.highest_in_seq = Some(p.seq);

        let drop = self.frame_fate(p);
        if drop {
            // The next forwarded packet takes this packet's place in the output sequence.
            let off = self.current_offset() - 1;
            self.offsets.push_back((p.seq + 1, off));
            if self.offsets.len() > OFFSET_MEMORY {
                self.offsets.pop_front();
            }
            return Verdict::Drop;
        }
        let out = self.rewrite(p, self.current_offset());
        self.last_out_seq = Some(out.seq);
        self.last_out_ts = Some(out.ts);
        self.last_out_at = Some(p.arrival);
        if out.vp8_picture_id.is_some() {
            self.last_out_pic = out.vp8_picture_id;
        }
        if out.vp8_tl0.is_some() {
            self.last_out_tl0 = out.vp8_tl0;
        }
        Verdict::Forward(out)
    }

    fn process_late(&mut self, p: &InPacket) -> Verdict {
        if p.seq < self.epoch_start_seq {
            return Verdict::Drop;
        }
        match self.frames.iter().find(|(ts, _)| *ts == p.ts) {
            Some((_, false)) => {}
            // A dropped frame, or one too old to know: forwarding could collide with a
            // sequence number already handed to a later packet.
            _ => return Verdict::Drop,
        }
        let off = self
            .offsets
            .iter()
            .rev()
            .find(|(from, _)| *from <= p.seq)
            .map(|(_, o)| *o);
        match off {
            Some(off) => Verdict::Forward(self.rewrite(p, off)),
            None => Verdict::Drop,
        }
    }

    fn current_offset(&self) -> i64 {
        self.offsets.back().map(|(_, o)| *o).unwrap_or(0)
    }

    /// Decides (once per frame) whether the frame of `p` is dropped for temporal scaling.
    fn frame_fate(&mut self, p: &InPacket) -> bool {
        if let Some((_, dropped)) = self.frames.iter().find(|(ts, _)| *ts == p.ts) {
            return *dropped;
        }
        let tid = p.info.temporal_id.unwrap_or(0);
        // Going up is only safe where the stream says higher layers may start.
        let going_up = self.target_temporal > self.current_temporal;
        if !going_up || p.info.layer_sync {
            self.current_temporal = self.target_temporal;
        }
        let dropped = tid > self.current_temporal;
        if dropped {
            self.pic_offset -= 1;
        }
        self.frames.push_back((p.ts, dropped));
        if self.frames.len() > FRAME_MEMORY {
            self.frames.pop_front();
        }
        dropped
    }

    fn rewrite(&self, p: &InPacket, offset: i64) -> OutPacket {
        let seq = (p.seq as i64 + offset).max(0) as u64;
        let ts = p.ts.wrapping_add(self.ts_offset);
        let vp8_picture_id = p
            .vp8_picture_id
            .map(|id| ((i32::from(id) + self.pic_offset).rem_euclid(1 << 15)) as u16);
        let vp8_tl0 = p.vp8_tl0.map(|t| t.wrapping_add(self.tl0_offset));
        OutPacket { seq, ts, vp8_picture_id, vp8_tl0 }
    }

    /// Begins forwarding `p.layer` at this keyframe, continuing the output numbering.
    fn start_epoch(&mut self, p: &InPacket) {
        self.current = Some(p.layer);
        self.needs_keyframe = false;
        self.current_temporal = self.target_temporal;
        self.epoch_start_seq = p.seq;
        self.highest_in_seq = None;
        self.frames.clear();
        self.offsets.clear();
        // The first packet of a fresh stream stays below 2^15 so the subscriber's SRTP
        // rollover counter starts at 0 without out-of-band signalling.
        let next_out = match self.last_out_seq {
            Some(s) => s + 1,
            None => p.seq & 0x7fff,
        };
        self.offsets.push_back((p.seq, next_out as i64 - p.seq as i64));
        self.ts_offset = match (self.last_out_ts, self.last_out_at) {
            (Some(last), Some(at)) => {
                let gap = p.arrival.saturating_duration_since(at).as_secs_f64();
                let ticks = ((gap * f64::from(p.clock_rate)) as u32).max(1);
                last.wrapping_add(ticks).wrapping_sub(p.ts)
            }
            _ => 0,
        };
        self.pic_offset = match (self.last_out_pic, p.vp8_picture_id) {
            (Some(last), Some(id)) => i32::from(last) + 1 - i32::from(id),
            _ => 0,
        };
        self.tl0_offset = match (self.last_out_tl0, p.vp8_tl0) {
            (Some(last), Some(t)) => last.wrapping_add(1).wrapping_sub(t),
            _ => 0,
        };
    }
}

#[cfg(test)]
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Src {
        layer: Layer,
        seq: u64,
        ts: u32,
        pic: u16,
        tl0: u8,
        frame: u32,
        t0: Instant,
    }

    impl Src {
        fn new(layer: Layer, seq: u64, ts: u32) -> Self {
            Self { layer, seq, ts, pic: 100 * u16::from(layer), tl0: 0, frame: 0, t0: Instant::now() }
        }
        /// One frame of `n` packets; L1T3 pattern 0,2,1,2.
        fn frame(&mut self, n: usize, key: bool) -> Vec<InPacket> {
            let tid = [0u8, 2, 1, 2][(self.frame % 4) as usize];
            if tid == 0 {
                self.tl0 = self.tl0.wrapping_add(1);
            }
            let arrival = self.t0 + Duration::from_millis(33 * u64::from(self.frame));
            let out = (0..n)
                .map(|i| InPacket {
                    layer: self.layer,
                    seq: self.seq + i as u64,
                    ts: self.ts,
                    clock_rate: 90_000,
                    info: PayloadInfo {
                        keyframe_start: key && i == 0,
                        frame_start: i == 0,
                        temporal_id: Some(tid),
                        layer_sync: tid == 0 || tid == 1,
                    },
                    vp8_picture_id: Some(self.pic),
                    vp8_tl0: Some(self.tl0),
                    arrival,
                })
                .collect();
            self.seq += n as u64;
            self.ts = self.ts.wrapping_add(3000);
            self.pic = (self.pic + 1) % (1 << 15);
            self.frame += 1;
            out
        }
    }

    fn run(f: &mut Forwarder, pkts: &[InPacket]) -> Vec<OutPacket> {
        pkts.iter()
            .filter_map(|p| match f.process(p) {
                Verdict::Forward(o) => Some(o),
                Verdict::Drop => None,
            })
            .collect()
    }

    fn assert_contiguous(out: &[OutPacket]) {
        for w in out.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1, "sequence gap in {out:?}");
        }
    }

    #[test]
    fn waits_for_keyframe_then_forwards_contiguously() {
        let mut f = Forwarder::new(Some(2));
        let mut s = Src::new(2, 1000, 5000);
        assert!(run(&mut f, &s.frame(3, false)).is_empty());
        assert_eq!(f.wanted_keyframe(), Some(2));
        let mut out = run(&mut f, &s.frame(3, true));
        for _ in 0..10 {
            out.extend(run(&mut f, &s.frame(2, false)));
        }
        assert_eq!(out.len(), 23);
        assert_contiguous(&out);
        assert_eq!(f.wanted_keyframe(), None);
    }

    #[test]
    fn layer_switch_keeps_numbering_continuous() {
        let mut f = Forwarder::new(Some(2));
        let mut hi = Src::new(2, 40_000, 1_000_000);
        let mut lo = Src::new(0, 7, 77);
        let mut out = run(&mut f, &hi.frame(4, true));
        out.extend(run(&mut f, &lo.frame(1, true)));
        out.extend(run(&mut f, &hi.frame(4, false)));
        // Bandwidth drops: the allocator asks for the low layer.
        f.set_target(Some(0), MAX_TEMPORAL);
        assert_eq!(f.wanted_keyframe(), Some(0));
        out.extend(run(&mut f, &lo.frame(1, false))); // not a keyframe: still high
        out.extend(run(&mut f, &hi.frame(4, false)));
        out.extend(run(&mut f, &lo.frame(1, true))); // switch here
        out.extend(run(&mut f, &hi.frame(4, false))); // ignored now
        out.extend(run(&mut f, &lo.frame(1, false)));
        assert_eq!(f.current(), Some(0));
        assert_eq!(out.len(), 4 + 4 + 4 + 1 + 1);
        assert_contiguous(&out);
        for w in out.windows(2) {
            let dt = w[1].ts.wrapping_sub(w[0].ts);
            assert!(dt < 90_000, "timestamp jumped by {dt}");
        }
        let pics: Vec<u16> = out.iter().filter_map(|o| o.vp8_picture_id).collect();
        let mut uniq = pics.clone();
        uniq.dedup();
        for w in uniq.windows(2) {
            assert_eq!(w[1], w[0] + 1, "picture ids {uniq:?}");
        }
    }

    #[test]
    fn temporal_downswitch_drops_upper_layers_without_gaps() {
        let mut f = Forwarder::new(Some(0));
        let mut s = Src::new(0, 10, 0);
        let mut out = run(&mut f, &s.frame(2, true));
        f.set_target(Some(0), 0);
        for _ in 0..8 {
            out.extend(run(&mut f, &s.frame(2, false)));
        }
        // Frames 1..=8 follow the pattern 2,1,2,0,2,1,2,0: only the two TL0 frames remain.
        assert_eq!(out.len(), 2 + 2 * 2);
        assert_contiguous(&out);
        let pics: Vec<u16> = out.iter().filter_map(|o| o.vp8_picture_id).collect();
        assert_eq!(pics, vec![0, 0, 1, 1, 2, 2]);
        // Going back up waits for a sync frame, then everything flows.
        f.set_target(Some(0), MAX_TEMPORAL);
        let mut more = vec![];
        for _ in 0..4 {
            more.extend(run(&mut f, &s.frame(1, false)));
        }
        assert!(more.len() >= 3, "{more:?}");
    }

    #[test]
    fn late_retransmission_lands_in_its_reserved_slot() {
        let mut f = Forwarder::new(Some(0));
        let mut s = Src::new(0, 500, 0);
        let k = s.frame(3, true);
        let out1 = run(&mut f, &k);
        let mut fr = s.frame(3, false);
        let lost = fr.remove(1);
        let out2 = run(&mut f, &fr);
        let late = f.process(&lost);
        let Verdict::Forward(o) = late else { panic!("late packet dropped") };
        assert_eq!(o.seq, out2[0].seq + 1);
        assert_eq!(out1.len(), 3);
    }

    #[test]
    fn paused_subscription_forwards_nothing() {
        let mut f = Forwarder::new(None);
        let mut s = Src::new(0, 1, 0);
        assert!(run(&mut f, &s.frame(3, true)).is_empty());
        assert_eq!(f.wanted_keyframe(), None);
    }
}
