//! 60 s of a 1080p30-sized synthetic stream through `media::netem` with loss in both
//! directions (RTT 40 ms): hybrid FEC + NACK at 10, 30, 50 (random and bursty) and 70 %
//! random loss, and a NACK-only baseline at 50 %.
//!
//! Every frame the sender sent must end up delivered byte-exact, reported skipped, or
//! inside a reported gap; delivered frames are compared with the sent bytes, so a frame
//! with a missing or wrong packet cannot pass. Run with `--nocapture` for the figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use media::netem::{GilbertElliott, LossModel, Netem, NetemConfig};
use media::recovery::{
    FecSizing, FrameMarking, ProtectedReceiver, ProtectedSender, ReceiverConfig, ReceiverEvent,
    SenderConfig, SenderEvent, build_media_packet,
};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

const MEDIA_SSRC: u32 = 0x1111_2222;
const FEC_SSRC: u32 = 0x3333_4444;
const RTX_SSRC: u32 = 0x5555_6666;
const RECV_SSRC: u32 = 0x7777_8888;
const PT: u8 = 102;
const EXT_ID: u8 = 5;
const FPS: u64 = 30;
const SECONDS: u64 = 60;
const MAX_PAYLOAD: usize = 1180;
const KEYFRAME_EVERY_S: u64 = 4;

/// Virtual time needs an origin; only offsets from it are used.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

/// Frame sizes like a real 1080p30 encoder at ~5 Mbit/s: keyframes ~150 kB, deltas
/// ~20 kB (base layer a little larger, TL2 a little smaller), ±20 %.
struct SyntheticEncoder {
    rng: ChaCha8Rng,
    seq: u16,
    frame: u64,
    tl0_idx: u8,
    pattern_pos: usize,
    force_keyframe: bool,
}

struct EncodedFrame {
    ts: u32,
    tid: u8,
    keyframe: bool,
    packets: Vec<Vec<u8>>,
}

impl SyntheticEncoder {
    fn new(seed: u64) -> Self {
        SyntheticEncoder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seq: 40_000,
            frame: 0,
            tl0_idx: 250,
            pattern_pos: 0,
            force_keyframe: true,
        }
    }

    fn next(&mut self) -> EncodedFrame {
        let periodic = self.frame.is_multiple_of(FPS * KEYFRAME_EVERY_S);
        let keyframe = self.force_keyframe || periodic;
        self.force_keyframe = false;
        if keyframe {
            self.pattern_pos = 0;
        }
        // L1T3: 0, 2, 1, 2.
        let tid = [0u8, 2, 1, 2][self.pattern_pos % 4];
        self.pattern_pos += 1;
        if tid == 0 {
            self.tl0_idx = self.tl0_idx.wrapping_add(1);
        }
        let nominal = if keyframe {
            150_000.0
        } else {
            [24_000.0, 20_000.0, 16_000.0][usize::from(tid)]
        };
        let jitter = 0.8 + 0.4 * (self.rng.next_u32() as f64 / f64::from(u32::MAX));
        let size = (nominal * jitter) as usize;
        let mut payload = vec![0u8; size];
        self.rng.fill_bytes(&mut payload);
        let ts = (self.frame * 3000) as u32;
        let chunks: Vec<&[u8]> = payload.chunks(MAX_PAYLOAD).collect();
        let n = chunks.len();
        let packets = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let m = FrameMarking {
                    start: i == 0,
                    end: i + 1 == n,
                    independent: keyframe,
                    discardable: tid == 2,
                    base_sync: tid == 1,
                    tid,
                    lid: 0,
                    tl0_pic_idx: self.tl0_idx,
                };
                let p = build_media_packet(MEDIA_SSRC, PT, self.seq, ts, i + 1 == n, EXT_ID, m, c);
                self.seq = self.seq.wrapping_add(1);
                p
            })
            .collect();
        self.frame += 1;
        EncodedFrame {
            ts,
            tid,
            keyframe,
            packets,
        }
    }
}

/// A sent frame: packets, send time, temporal layer, keyframe.
type SentFrame = (Vec<Vec<u8>>, Instant, u8, bool);

#[derive(Debug)]
struct Outcome {
    fps_avg: f64,
    fps_worst_1s: f64,
    p95_latency_ms: f64,
    overhead: f64,
    delivered: usize,
    skipped: usize,
    in_gaps: usize,
    keyframes_forced: u64,
    link_loss_fwd: f64,
    link_loss_rev: f64,
}

/// Loss on both directions of the link.
#[derive(Debug, Clone, Copy)]
enum Channel {
    /// Independent loss with this probability.
    Random(f64),
    /// Gilbert–Elliott averaging this loss, mean loss run 3 packets.
    Bursty(f64),
}

fn loss_model(channel: Channel, seed: u64) -> NetemConfig {
    let loss = match channel {
        Channel::Bursty(p) => LossModel::GilbertElliott(GilbertElliott::from_average(p, 3.0)),
        Channel::Random(p) => LossModel::Bernoulli(p),
    };
    NetemConfig::new()
        .latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(3))
        .reorder(0.005, Duration::from_millis(5))
        .loss(loss)
        .seed(seed)
}

fn run(name: &str, channel: Channel, sizing: FecSizing, seed: u64) -> Outcome {
    let t0 = origin();
    let mut scfg = SenderConfig::new(MEDIA_SSRC, FEC_SSRC, RTX_SSRC);
    scfg.sizing = sizing;
    let mut sender = ProtectedSender::new(scfg, 1000, 2000).expect("sender config");
    let mut rcfg = ReceiverConfig::new(MEDIA_SSRC, RECV_SSRC, RTX_SSRC);
    rcfg.media_payload_type = PT;
    rcfg.frame_marking_id = EXT_ID;
    rcfg.fec = sizing != FecSizing::Off;
    if !rcfg.fec {
        rcfg.unknown_wait = Duration::from_millis(5);
    }
    let mut receiver = ProtectedReceiver::new(rcfg);
    let mut fwd = Netem::<Vec<u8>>::new(loss_model(channel, seed));
    let mut rev = Netem::<Vec<u8>>::new(loss_model(channel, seed ^ 0x5eed));
    let mut enc = SyntheticEncoder::new(seed);

    // Sent frames by timestamp: packets, send time.
    let mut sent: BTreeMap<u32, SentFrame> = BTreeMap::new();
    let mut seq_of: BTreeMap<u32, (u16, u16)> = BTreeMap::new();
    let mut delivered: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut skipped: BTreeMap<u32, ()> = BTreeMap::new();
    let mut gaps: Vec<(u16, u16)> = Vec::new();
    let mut keyframes_forced = 0u64;
    let mut corrupt = 0usize;
    let mut skip_reasons: BTreeMap<String, usize> = BTreeMap::new();

    let frame_interval = Duration::from_nanos(1_000_000_000 / FPS);
    let end_of_media = t0 + Duration::from_secs(SECONDS);
    let end = end_of_media + Duration::from_secs(1);
    let mut next_frame = t0;
    let mut now = t0;
    while now < end {
        if now >= next_frame && next_frame < end_of_media {
            let f = enc.next();
            let first = f.packets.first().map(|p| u16::from_be_bytes([p[2], p[3]]));
            let last = f.packets.last().map(|p| u16::from_be_bytes([p[2], p[3]]));
            seq_of.insert(f.ts, (first.unwrap_or(0), last.unwrap_or(0)));
            sender
                .push_frame(now, &f.packets, f.tid, f.keyframe)
                .expect("valid packets");
            sent.insert(f.ts, (f.packets, now, f.tid, f.keyframe));
            next_frame += frame_interval;
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        while let Some(p) = fwd.poll_receive(now) {
            receiver.handle_packet(now, &p);
        }
        while let Some(p) = rev.poll_receive(now) {
            sender.handle_feedback(now, &p);
        }
        if receiver.poll_timeout().is_some_and(|t| t <= now) {
            receiver.handle_timeout(now);
        }
        while let Some(p) = sender.poll_transmit() {
            fwd.send(now, p);
        }
        while let Some(SenderEvent::KeyframeRequested) = sender.poll_event() {
            enc.force_keyframe = true;
            keyframes_forced += 1;
        }
        while let Some(p) = receiver.poll_feedback() {
            rev.send(now, p);
        }
        while let Some(e) = receiver.poll_event() {
            match e {
                ReceiverEvent::Frame(f) => {
                    let (want, _, tid, key) = sent.get(&f.rtp_timestamp).expect("a sent frame");
                    // A frame with any missing, extra or altered packet is corrupt.
                    if &f.packets != want || (f.temporal_layer, f.keyframe) != (*tid, *key) {
                        corrupt += 1;
                    }
                    assert!(
                        delivered.insert(f.rtp_timestamp, now).is_none(),
                        "delivered twice"
                    );
                }
                ReceiverEvent::Skipped(s) => {
                    assert!(
                        !delivered.contains_key(&s.rtp_timestamp),
                        "skipped after delivery"
                    );
                    skipped.insert(s.rtp_timestamp, ());
                    *skip_reasons
                        .entry(format!(
                            "{:?}/tl{}/k{}",
                            s.reason,
                            s.temporal_layer,
                            u8::from(s.keyframe)
                        ))
                        .or_insert(0usize) += 1;
                }
                ReceiverEvent::Gap {
                    first_seq,
                    last_seq,
                } => gaps.push((first_seq, last_seq)),
                ReceiverEvent::KeyframeRequested => {}
            }
        }
        let mut next = end;
        for t in [
            (next_frame < end_of_media).then_some(next_frame),
            sender.poll_timeout(),
            receiver.poll_timeout(),
            fwd.poll_timeout(),
            rev.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(t);
        }
        now = next.max(now + Duration::from_micros(1)).min(end);
        if now == end {
            break;
        }
    }

    println!("{name} {sizing:?} skips: {skip_reasons:?}");
    // Every frame is accounted for.
    let in_gap = |ts: u32| {
        let (a, b) = seq_of[&ts];
        gaps.iter().any(|&(g0, g1)| {
            a.wrapping_sub(g0) <= g1.wrapping_sub(g0) && b.wrapping_sub(g0) <= g1.wrapping_sub(g0)
        })
    };
    let mut in_gaps = 0;
    for ts in sent.keys() {
        if delivered.contains_key(ts) || skipped.contains_key(ts) {
            continue;
        }
        assert!(
            in_gap(*ts),
            "{name}: frame {ts} neither delivered, skipped nor in a gap"
        );
        in_gaps += 1;
    }

    // fps by capture second, latency send → deliver.
    let mut per_second = vec![0usize; SECONDS as usize];
    let mut latencies: Vec<Duration> = Vec::new();
    for (ts, at) in &delivered {
        let (_, sent_at, _, _) = &sent[ts];
        let sec = ((*sent_at - t0).as_secs()) as usize;
        if sec < per_second.len() {
            per_second[sec] += 1;
        }
        latencies.push(*at - *sent_at);
    }
    latencies.sort_unstable();
    let worst_at = per_second
        .iter()
        .enumerate()
        .min_by_key(|(_, n)| **n)
        .map(|(i, _)| i);
    println!(
        "{name} {sizing:?} first seconds {:?}, worst second at {worst_at:?}",
        &per_second[..5]
    );
    let p95 = latencies
        .get(latencies.len() * 95 / 100)
        .copied()
        .unwrap_or(Duration::MAX);
    let fwd_stats = fwd.stats();
    let rev_stats = rev.stats();
    let out = Outcome {
        fps_avg: delivered.len() as f64 / SECONDS as f64,
        fps_worst_1s: per_second.iter().copied().min().unwrap_or(0) as f64,
        p95_latency_ms: p95.as_secs_f64() * 1000.0,
        overhead: sender.stats().overhead(),
        delivered: delivered.len(),
        skipped: skipped.len(),
        in_gaps,
        keyframes_forced,
        link_loss_fwd: fwd_stats.lost as f64 / fwd_stats.offered.max(1) as f64,
        link_loss_rev: rev_stats.lost as f64 / rev_stats.offered.max(1) as f64,
    };
    let s = sender.stats();
    let r = receiver.stats();
    println!(
        "{{\"test\":\"recovery_loss\",\"scenario\":\"{name}\",\"method\":\"{}\",\"frames_sent\":{},\"delivered\":{},\"skipped\":{},\"in_gaps\":{},\"corrupt_frames\":{},\"fps_avg\":{:.2},\"fps_worst_1s\":{},\"p95_latency_ms\":{:.1},\"overhead\":{:.3},\"fec_bytes\":{},\"rtx_bytes\":{},\"media_bytes\":{},\"keyframes_forced\":{},\"nacks_sent\":{},\"nacked_seqs\":{},\"rtx_packets\":{},\"redundant_rtx\":{},\"fec_recovered\":{},\"rtt_ms\":{:.1},\"loss_fwd\":{:.3},\"loss_rev\":{:.3},\"sender_loss_estimate\":{:.3}}}",
        match sizing {
            FecSizing::Off => "nack_only",
            FecSizing::Full => "fec_full",
            FecSizing::Hybrid => "huitong",
        },
        sent.len(),
        out.delivered,
        out.skipped,
        out.in_gaps,
        corrupt,
        out.fps_avg,
        out.fps_worst_1s,
        out.p95_latency_ms,
        out.overhead,
        s.fec_bytes,
        s.rtx_bytes,
        s.media_bytes,
        out.keyframes_forced,
        r.nacks_sent,
        r.nacked_seqs,
        s.rtx_packets,
        r.redundant_rtx,
        r.fec_recovered,
        receiver.rtt().as_secs_f64() * 1000.0,
        out.link_loss_fwd,
        out.link_loss_rev,
        sender.channel().0,
    );
    assert_eq!(
        corrupt, 0,
        "{name}: frames delivered that differ from what was sent"
    );
    out
}

fn assert_goals(name: &str, o: &Outcome, overhead_bound: f64) {
    assert!(o.fps_avg >= 29.0, "{name}: fps avg {}", o.fps_avg);
    assert!(
        o.fps_worst_1s >= 25.0,
        "{name}: worst second {}",
        o.fps_worst_1s
    );
    assert!(
        o.p95_latency_ms <= 250.0,
        "{name}: p95 {} ms",
        o.p95_latency_ms
    );
    assert!(
        o.overhead <= overhead_bound,
        "{name}: overhead {}",
        o.overhead
    );
}

fn seed(default: u64) -> u64 {
    std::env::var("HT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn hybrid_at_50_percent_random_loss() {
    let o = run("random50", Channel::Random(0.5), FecSizing::Hybrid, seed(1));
    assert!((o.link_loss_fwd - 0.5).abs() < 0.02);
    // 2.0× is the erasure-channel floor at 50 %; measured 2.12–2.14× over seeds 1–6
    // (FEC ≈ 0.97×, RTX ≈ 0.14×, see docs/recovery.md). The goal is 2.2×.
    assert_goals("random50", &o, 2.2);
}

#[test]
fn hybrid_at_50_percent_bursty_loss() {
    let o = run("bursty50", Channel::Bursty(0.5), FecSizing::Hybrid, seed(2));
    assert!((o.link_loss_fwd - 0.5).abs() < 0.05);
    // Correlated losses inside a block and among back-to-back retransmissions cost
    // more repair: measured 2.20–2.26× over seeds 1–6.
    assert_goals("bursty50", &o, 2.3);
}

#[test]
fn hybrid_at_70_percent_random_loss() {
    let o = run("random70", Channel::Random(0.7), FecSizing::Hybrid, seed(3));
    assert!((o.link_loss_fwd - 0.7).abs() < 0.02);
    // The goal at 70 %: no corrupt frame (asserted by `run`) and ≥ 25 fps. The floor
    // is 1/(1 − 0.7) = 3.33×.
    assert!(o.fps_avg >= 25.0, "random70: fps avg {}", o.fps_avg);
    assert!(o.overhead <= 4.0, "random70: overhead {}", o.overhead);
}

#[test]
fn overhead_stays_proportionate_at_10_and_30_percent() {
    // Floors 1.11× and 1.43×: protection must shrink with the loss, not stay sized
    // for the worst case.
    let o10 = run("random10", Channel::Random(0.1), FecSizing::Hybrid, seed(4));
    assert!((o10.link_loss_fwd - 0.1).abs() < 0.02);
    assert_goals("random10", &o10, 1.3);
    let o30 = run("random30", Channel::Random(0.3), FecSizing::Hybrid, seed(5));
    assert!((o30.link_loss_fwd - 0.3).abs() < 0.02);
    assert_goals("random30", &o30, 1.65);
}

#[test]
fn nack_only_baseline_at_50_percent() {
    let r = run("random50", Channel::Random(0.5), FecSizing::Off, 1);
    let b = run("bursty50", Channel::Bursty(0.5), FecSizing::Off, 2);
    // The baseline keeps integrity (nothing corrupt) but cannot keep the frame rate.
    assert!(r.fps_avg < 25.0 && b.fps_avg < 25.0, "{r:?} {b:?}");
}
