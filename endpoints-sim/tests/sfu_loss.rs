//! Hop-by-hop loss protection through the SFU, on a virtual clock: a protected publisher
//! and a protected subscriber, each behind its own emulated link to the SFU with 50 %
//! loss in both directions (media, repair, retransmissions and feedback alike) and
//! 20 ms each way. 60 s of 30 fps synthetic video must arrive intact or be reported
//! skipped, never corrupt, at ≥ 29 fps: two 50 % hops do not compound.
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use endpoints_sim::protected::{
    FRAME_INTERVAL, FecPublisher, FecSubscriber, FrameFate, SyntheticVideo,
};
use media::netem::{GilbertElliott, LossModel, Netem, NetemConfig};
use media::recovery::FecSizing;
use sfu::protect::TxPolicy;
use sfu::{Input, Output, ParticipantId, Sfu, SfuConfig, SfuEvent, TrackDecl, TrackSource, shell};
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive};

const SFU_ADDR: &str = "10.0.0.1:5000";
const PUB_ADDR: &str = "10.0.1.1:4000";
const SUB_ADDR: &str = "10.0.1.2:4000";

#[derive(Clone)]
struct Dgram {
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

impl AsRef<[u8]> for Dgram {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// One way on each link; 20 ms makes an RTT of 40 ms per hop and 80 ms end to end.
const LINK_DELAY: Duration = Duration::from_millis(20);

fn link(seed: u64, delay: Duration, loss: LossModel) -> NetemConfig {
    NetemConfig::new()
        .latency(delay)
        .jitter(Duration::from_millis(3))
        .loss(loss)
        .seed(seed)
}

fn recv(d: &Dgram) -> Receive<'_> {
    Receive {
        proto: Protocol::Udp,
        source: d.src,
        destination: d.dst,
        contents: d.data.as_slice().try_into().unwrap(),
    }
}

struct World {
    now: Instant,
    sfu: Sfu,
    publisher: FecPublisher,
    subscriber: FecSubscriber,
    /// publisher→SFU, SFU→publisher, subscriber→SFU, SFU→subscriber.
    links: [Netem<Dgram>; 4],
    sfu_addr: SocketAddr,
    delay: Duration,
    /// The SFU's own time: `now`, except where a timeout run early moved it ahead.
    sfu_clock: Instant,
    /// What `sfu::shell` does with the engine's timers: a timeout due within this of
    /// now runs at once, up to `shell::MAX_EARLY` in a row, with the engine's clock moved
    /// to it. With BWE on, str0m's pacer releases one packet per timeout and asks for the
    /// next a microsecond later; a world that only ran the SFU's timers once per 1 ms
    /// step would cap a subscriber's downlink near 1,000 packets/s (a 4 Mbit/s stream
    /// with 50 % loss protection needs about 1,200).
    timer_slack: Duration,
    /// Header-extension ids seen on the RTP datagrams the publisher sent and the SFU
    /// sent the subscriber, by datagram count.
    uplink_ext_ids: BTreeMap<u8, u64>,
    downlink_ext_ids: BTreeMap<u8, u64>,
}

/// The one-byte header-extension ids of an RTP datagram (RFC 8285; SRTP leaves the
/// header in the clear), or `None` for anything that is not RTP.
fn rtp_extension_ids(d: &[u8]) -> Option<Vec<u8>> {
    let first = *d.first()?;
    // RTP, not RTCP (payload types 72–79 with the marker bit are RTCP's 200–207).
    if first >> 6 != 2 || (192..=223).contains(d.get(1)?) {
        return None;
    }
    if first & 0x10 == 0 {
        return Some(vec![]);
    }
    let at = 12 + 4 * usize::from(first & 0x0f);
    if d.get(at..at + 2)? != [0xbe, 0xde] {
        return Some(vec![]);
    }
    let words = usize::from(u16::from_be_bytes(d.get(at + 2..at + 4)?.try_into().ok()?));
    let ext = d.get(at + 4..at + 4 + 4 * words)?;
    let mut ids = vec![];
    let mut i = 0;
    while i < ext.len() {
        let (id, len) = (ext[i] >> 4, usize::from(ext[i] & 0x0f) + 1);
        if id == 0 {
            i += 1;
            continue;
        }
        if id == 15 {
            break;
        }
        ids.push(id);
        i += 1 + len;
    }
    Some(ids)
}

fn tally_extensions(tally: &mut BTreeMap<u8, u64>, d: &[u8]) {
    for id in rtp_extension_ids(d).unwrap_or_default() {
        *tally.entry(id).or_default() += 1;
    }
}

impl World {
    fn new(seed: u64, delay: Duration, video: SyntheticVideo) -> Self {
        let now = Instant::now();
        let sfu_addr: SocketAddr = SFU_ADDR.parse().unwrap();
        let mut cfg = SfuConfig {
            candidates: vec![sfu_addr],
            ..Default::default()
        };
        // `HT_DOWN=<round price>|full` tries another downlink policy (docs/recovery.md,
        // *Two hops*, was measured with it).
        if let Ok(v) = std::env::var("HT_DOWN") {
            cfg.downlink_protection = if v == "full" {
                TxPolicy {
                    sizing: FecSizing::Full,
                    round_penalty_scale: 1.0,
                }
            } else {
                TxPolicy {
                    sizing: FecSizing::Hybrid,
                    round_penalty_scale: v.parse().expect("HT_DOWN: a number or `full`"),
                }
            };
        }
        let links = [0, 1, 2, 3].map(|i| Netem::new(link(seed * 10 + i, delay, LossModel::None)));
        let timer_slack = cfg.timer_slack;
        let mut publisher = FecPublisher::new(now, PUB_ADDR.parse().unwrap(), video).unwrap();
        // `HT_UP=<round price>` moves the publisher's uplink along the trade between its
        // overhead and the repair rounds its blocks wait for (docs/recovery.md, session 20).
        if let Ok(v) = std::env::var("HT_UP") {
            publisher.uplink_policy.round_penalty_scale = v.parse().expect("HT_UP: a number");
        }
        World {
            now,
            timer_slack,
            sfu: Sfu::new(cfg, now),
            publisher,
            subscriber: FecSubscriber::new(now, SUB_ADDR.parse().unwrap()).unwrap(),
            links,
            sfu_addr,
            delay,
            sfu_clock: now,
            uplink_ext_ids: BTreeMap::new(),
            downlink_ext_ids: BTreeMap::new(),
        }
    }

    /// The SFU's clock for an input at `self.now` (never going back).
    fn sfu_now(&mut self) -> Instant {
        self.sfu_clock = self.sfu_clock.max(self.now);
        self.sfu_clock
    }

    fn set_loss(&mut self, seed: u64, loss: LossModel) {
        for (i, l) in self.links.iter_mut().enumerate() {
            l.set_config(link(seed * 10 + i as u64 + 100, self.delay, loss));
        }
    }

    fn sfu_out(&mut self) -> Vec<SfuEvent> {
        let mut events = vec![];
        let mut early = 0;
        loop {
            match self.sfu.poll_output() {
                Output::Transmit(t) => {
                    let d = Dgram {
                        src: t.source,
                        dst: t.destination,
                        data: t.contents,
                    };
                    if d.dst == self.publisher.addr {
                        self.links[1].send(self.now, d);
                    } else if d.dst == self.subscriber.addr {
                        tally_extensions(&mut self.downlink_ext_ids, &d.data);
                        self.links[3].send(self.now, d);
                    }
                }
                Output::Event(e) => events.push(e),
                Output::Timeout(t) => {
                    if early == shell::MAX_EARLY || t > self.now + self.timer_slack {
                        break;
                    }
                    early += 1;
                    self.sfu_clock = self.sfu_clock.max(t);
                    let at = self.sfu_now();
                    self.sfu.handle_input(Input::Timeout(at));
                }
            }
        }
        events
    }

    fn pub_out(&mut self) {
        loop {
            match self.publisher.rtc.poll_output().unwrap() {
                str0m::Output::Transmit(t) => {
                    let d = Dgram {
                        src: t.source,
                        dst: t.destination,
                        data: t.contents.into(),
                    };
                    tally_extensions(&mut self.uplink_ext_ids, &d.data);
                    self.links[0].send(self.now, d);
                }
                str0m::Output::Event(e) => self.publisher.handle_event(self.now, &e),
                str0m::Output::Timeout(_) => break,
            }
        }
    }

    fn sub_out(&mut self) {
        // Feedback leaves one message per datagram: queue the next after each drain.
        loop {
            match self.subscriber.rtc.poll_output().unwrap() {
                str0m::Output::Transmit(t) => {
                    let d = Dgram {
                        src: t.source,
                        dst: t.destination,
                        data: t.contents.into(),
                    };
                    self.links[2].send(self.now, d);
                }
                str0m::Output::Event(e) => self.subscriber.handle_event(self.now, &e),
                str0m::Output::Timeout(_) => {
                    if !self.subscriber.queue_feedback() {
                        break;
                    }
                }
            }
        }
    }

    /// One millisecond of virtual time.
    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        for i in 0..4 {
            while let Some(d) = self.links[i].poll_receive(now) {
                if d.dst == self.sfu_addr {
                    let now = self.sfu_now();
                    self.sfu.handle_input(Input::Datagram {
                        now,
                        source: d.src,
                        destination: d.dst,
                        contents: &d.data,
                    });
                    self.sfu_out();
                } else if d.dst == self.publisher.addr {
                    let _ = self
                        .publisher
                        .rtc
                        .handle_input(str0m::Input::Receive(now, recv(&d)));
                    self.pub_out();
                } else if d.dst == self.subscriber.addr {
                    let _ = self
                        .subscriber
                        .rtc
                        .handle_input(str0m::Input::Receive(now, recv(&d)));
                    self.sub_out();
                }
            }
        }
        let at = self.sfu_now();
        self.sfu.handle_input(Input::Timeout(at));
        self.sfu_out();
        let _ = self.publisher.rtc.handle_input(str0m::Input::Timeout(now));
        self.publisher.handle_timeout(now);
        self.pub_out();
        let _ = self.subscriber.rtc.handle_input(str0m::Input::Timeout(now));
        self.subscriber.handle_timeout(now);
        self.sub_out();
    }

    /// Joins both, publishes, answers the subscribe offer and waits for both connections.
    fn connect(&mut self) {
        let room = "room".to_string();
        let at = self.sfu_now();
        self.sfu.join(at, room.clone(), ParticipantId(2)).unwrap();
        self.sfu.join(at, room, ParticipantId(1)).unwrap();
        self.sfu_out();
        let (offer, pending, mid) = self.publisher.offer().unwrap();
        let decls = vec![TrackDecl {
            mid: mid.to_string(),
            kind: MediaKind::Video,
            source: TrackSource::Camera,
            label: None,
            audience: None,
        }];
        let at = self.sfu_now();
        let answer = self
            .sfu
            .publish(at, ParticipantId(1), &offer, &decls)
            .unwrap();
        self.publisher.accept_answer(pending, &answer).unwrap();
        let mut answered = false;
        for _ in 0..5_000 {
            for e in self.sfu_out() {
                if let SfuEvent::SubscriberOffer {
                    participant, sdp, ..
                } = e
                {
                    assert_eq!(participant, ParticipantId(2));
                    let a = self.subscriber.accept_offer(&sdp).unwrap();
                    let at = self.sfu_now();
                    self.sfu.subscriber_answer(at, participant, &a).unwrap();
                    answered = true;
                }
            }
            self.pub_out();
            self.sub_out();
            if answered && self.publisher.rtc.is_connected() && self.subscriber.rtc.is_connected() {
                return;
            }
            self.step();
        }
        panic!("peers did not connect");
    }
}

struct Outcome {
    sent: u64,
    intact: u64,
    corrupt: u64,
    skipped_down: u64,
    skipped_up: u64,
    unaccounted: u64,
    fps_avg: f64,
    worst_1s: u64,
    up_overhead: f64,
    down_overhead: f64,
    p95_latency: Duration,
}

/// Capture → display of each intact frame sent at a time in `sent_at`, sorted.
fn intact_latencies(
    frames: impl Iterator<Item = (u64, FrameFate)>,
    sent_at: &HashMap<u64, Instant>,
) -> Vec<Duration> {
    let mut latency: Vec<Duration> = frames
        .filter_map(|(n, f)| match f {
            FrameFate::Intact { at } => Some(at.saturating_duration_since(*sent_at.get(&n)?)),
            _ => None,
        })
        .collect();
    latency.sort();
    latency
}

fn run(seed: u64, loss: LossModel, seconds: u64) -> Outcome {
    run_with(seed, LINK_DELAY, loss, seconds)
}

/// `HT_SEED=n` replaces the test's seed, to try a test's bounds at other seeds (they
/// were set from seeds 1–6 at 50 % loss, `docs/recovery.md`, and may not hold at every
/// seed; the 10 ms-link test was measured at its own seed only).
fn run_with(seed: u64, delay: Duration, loss: LossModel, seconds: u64) -> Outcome {
    let seed = std::env::var("HT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(seed);
    run_shaped(seed, delay, SyntheticVideo::default(), loss, seconds)
}

fn run_shaped(
    seed: u64,
    delay: Duration,
    video: SyntheticVideo,
    loss: LossModel,
    seconds: u64,
) -> Outcome {
    let mut w = World::new(seed, delay, video);
    w.connect();
    // Loss starts once ICE and DTLS are up. The first second is not measured: the SFU
    // learns the stream's rate and allocates it, the subscriber's first keyframe arrives.
    w.set_loss(seed, loss);
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut next_frame = w.now;
    let warm = w.now + Duration::from_secs(1);
    while w.now < warm {
        if w.now >= next_frame {
            sent_at.insert(w.publisher.frames_sent, w.now);
            w.publisher.send_frame(w.now).unwrap();
            w.pub_out();
            next_frame += FRAME_INTERVAL;
        }
        w.step();
    }
    let first = w.publisher.frames_sent;
    let skipped_before = w.sfu.counters().protected_skipped_up;
    let start = w.now;
    let end = start + Duration::from_secs(seconds);
    while w.now < end {
        if w.now >= next_frame {
            sent_at.insert(w.publisher.frames_sent, w.now);
            w.publisher.send_frame(w.now).unwrap();
            w.pub_out();
            next_frame += FRAME_INTERVAL;
        }
        w.step();
    }
    // Let the last frames resolve (playout deadlines are a few hundred ms).
    for _ in 0..1_000 {
        w.step();
    }
    let sent = w.publisher.frames_sent - first;
    let mut fate: HashMap<u64, FrameFate> = HashMap::new();
    let mut corrupt = 0;
    for (n, f) in &w.subscriber.frames {
        if *n < first {
            continue;
        }
        if matches!(f, FrameFate::Corrupt) {
            corrupt += 1;
        }
        let again = fate.insert(*n, *f);
        assert!(
            again.is_none(),
            "frame {n} resolved twice: {again:?} then {f:?}"
        );
    }
    let intact: Vec<Instant> = fate
        .values()
        .filter_map(|f| match f {
            FrameFate::Intact { at } => Some(*at),
            _ => None,
        })
        .collect();
    let latency = intact_latencies(fate.iter().map(|(n, f)| (*n, *f)), &sent_at);
    let p95_latency = latency
        .get(latency.len() * 95 / 100)
        .copied()
        .unwrap_or_default();
    let skipped_down = fate
        .values()
        .filter(|f| matches!(f, FrameFate::Skipped(_)))
        .count() as u64;
    let counters = w.sfu.counters().clone();
    let skipped_up = counters.protected_skipped_up - skipped_before;
    let resolved = fate.len() as u64 + skipped_up + w.subscriber.skipped_unknown;
    let mut per_s = vec![0u64; seconds as usize + 2];
    for at in &intact {
        let s = at.saturating_duration_since(start).as_secs() as usize;
        if let Some(c) = per_s.get_mut(s) {
            *c += 1;
        }
    }
    // The first second includes connection warm-up of the loss estimate; the last is
    // partly after the end of sending.
    eprintln!("intact frames per second: {per_s:?}");
    let worst_1s = per_s[1..seconds as usize]
        .iter()
        .copied()
        .min()
        .unwrap_or(0);
    let o = Outcome {
        sent,
        intact: intact.len() as u64,
        corrupt,
        skipped_down,
        skipped_up,
        unaccounted: sent.saturating_sub(resolved),
        fps_avg: intact.len() as f64 / seconds as f64,
        worst_1s,
        up_overhead: w.publisher.overhead(),
        down_overhead: w.sfu.downlink_protection_stats().overhead(),
        p95_latency,
    };
    eprintln!(
        "seed {seed} {loss:?} {}: sent {} intact {} corrupt {} skipped down {} up {} (unknown {}) gaps {} unaccounted {} fps {:.2} worst 1 s {} p95 latency {:?} overhead uplink {:.3} downlink {:.3} sfu frames up {} sub stats {:?}",
        if video.temporal_layers >= 3 {
            "L1T3"
        } else {
            "L1T2"
        },
        o.sent,
        o.intact,
        o.corrupt,
        o.skipped_down,
        o.skipped_up,
        w.subscriber.skipped_unknown,
        w.subscriber.gaps,
        o.unaccounted,
        o.fps_avg,
        o.worst_1s,
        o.p95_latency,
        o.up_overhead,
        o.down_overhead,
        counters.protected_frames_up,
        w.subscriber.stats(),
    );
    eprintln!(
        "publisher {:?} shed {:?}; SFU uplink {:?}",
        w.publisher.protection_stats(),
        w.publisher.shed(),
        w.sfu.uplink_protection_stats()
    );
    eprintln!(
        "sfu {counters:?} publisher kf sent {} requests {}",
        w.publisher.keyframes_sent, w.publisher.keyframe_requests
    );
    assert_eq!(
        w.subscriber.unprotected_packets, 0,
        "video bypassed the protection"
    );
    o
}

#[test]
fn half_loss_on_uplink_and_downlink_does_not_compound() {
    let o = run(1, LossModel::Bernoulli(0.5), 60);
    assert_eq!(o.corrupt, 0, "a corrupt frame was handed out");
    assert!(o.fps_avg >= 29.0, "fps {:.2} below 29", o.fps_avg);
    assert!(o.worst_1s >= 20, "worst second {}", o.worst_1s);
    // Every frame is delivered, reported skipped (here or at the SFU), or still in
    // flight at the end.
    assert!(
        o.unaccounted <= 10,
        "{} frames neither delivered nor reported",
        o.unaccounted
    );
    assert!(o.intact + o.skipped_down + o.skipped_up <= o.sent);
    // Measured: no frame skipped (15 at the SFU without its late grace).
    assert!(
        o.skipped_up + o.skipped_down <= 5,
        "{} + {} frames skipped",
        o.skipped_up,
        o.skipped_down
    );
    // Capture to display over two hops, 20 ms each way on each: measured 250–263 ms and
    // 2.47–2.50× on the downlink over seeds 1–6 (317 ms and 2.25× with the downlink's
    // round price at 4 instead of 16: docs/recovery.md, *Two hops*).
    assert!(
        o.p95_latency <= Duration::from_millis(290),
        "p95 latency {:?}",
        o.p95_latency
    );
    assert!(o.up_overhead <= 2.2, "uplink overhead {:.3}", o.up_overhead);
    assert!(
        o.down_overhead <= 2.6,
        "downlink overhead {:.3}",
        o.down_overhead
    );
}

/// The "RTT 40 ms" read end to end: 10 ms each way on each link.
#[test]
fn half_loss_at_40_ms_end_to_end() {
    let o = run_with(1, Duration::from_millis(10), LossModel::Bernoulli(0.5), 60);
    assert_eq!(o.corrupt, 0, "a corrupt frame was handed out");
    assert!(o.fps_avg >= 29.5, "fps {:.2} below 29.5", o.fps_avg);
    assert!(o.worst_1s >= 24, "worst second {}", o.worst_1s);
    // Measured 191–219 ms over seeds 1–6 (260 ms at seed 1 with the downlink's round
    // price at 4, 296 ms with the downlink sized like the uplink).
    assert!(
        o.p95_latency <= Duration::from_millis(240),
        "p95 latency {:?}",
        o.p95_latency
    );
    assert!(o.up_overhead <= 2.2, "uplink overhead {:.3}", o.up_overhead);
}

#[test]
fn bursty_half_loss_on_both_hops() {
    let o = run(
        3,
        LossModel::GilbertElliott(GilbertElliott::from_average(0.5, 3.0)),
        60,
    );
    assert_eq!(o.corrupt, 0, "a corrupt frame was handed out");
    // Measured 29.98 with 1 frame skipped at the SFU. Without the uplink's late grace
    // the uplink skipped 57 of 1800 (29.05 fps); see docs/recovery.md.
    assert!(o.fps_avg >= 29.7, "fps {:.2} below 29.7", o.fps_avg);
    assert!(
        o.skipped_up <= 10,
        "{} frames skipped at the SFU",
        o.skipped_up
    );
    assert!(
        o.unaccounted <= 10,
        "{} frames neither delivered nor reported",
        o.unaccounted
    );
}

/// `bench loss`'s stream (L1T2, 4 Mbit/s, keyframes only when asked for) at 50 % on
/// every link. Over seeds 1–12 nothing was skipped on either hop; without the late
/// grace of the SFU's uplink and the subscriber, the uplink skipped 63 frames (random)
/// and 208 (bursty), each base-layer frame among them costing a keyframe.
#[test]
fn bench_shaped_stream_keeps_every_frame_at_half_loss() {
    for loss in [
        LossModel::Bernoulli(0.5),
        LossModel::GilbertElliott(GilbertElliott::from_average(0.5, 3.0)),
    ] {
        let o = run_shaped(1, LINK_DELAY, SyntheticVideo::like_bench_1080p(), loss, 30);
        assert_eq!(o.corrupt, 0, "{loss:?}: a corrupt frame was handed out");
        assert!(
            o.skipped_up + o.skipped_down <= 3,
            "{loss:?}: {} + {} frames skipped",
            o.skipped_up,
            o.skipped_down
        );
        assert!(o.fps_avg >= 29.8, "{loss:?}: fps {:.2}", o.fps_avg);
        assert!(
            o.up_overhead <= 2.25,
            "{loss:?}: uplink overhead {:.3}",
            o.up_overhead
        );
    }
}

#[test]
fn clean_links_deliver_every_frame() {
    let o = run(2, LossModel::None, 5);
    assert_eq!(o.corrupt, 0);
    assert_eq!(o.skipped_down + o.skipped_up, 0);
    assert!(
        o.intact + 10 >= o.sent,
        "{} of {} delivered",
        o.intact,
        o.sent
    );
}

/// A protected publisher leaves abs-send-time, transport-wide sequence numbers and the
/// MID out of its uplink (`protect::drop_uplink_extensions`): 12 bytes of every
/// datagram that nothing on a protected uplink reads. The SFU's downlink keeps them for
/// str0m's estimate and pacer.
#[test]
fn a_protected_uplink_carries_no_unread_extensions() {
    use str0m::rtp::Extension;
    let std = str0m::rtp::ExtensionMap::standard();
    let ast = std.id_of(Extension::AbsoluteSendTime).unwrap();
    let twcc = std.id_of(Extension::TransportSequenceNumber).unwrap();
    let mid = std.id_of(Extension::RtpMid).unwrap();
    let mut w = World::new(4, LINK_DELAY, SyntheticVideo::default());
    w.connect();
    let mut next_frame = w.now;
    let end = w.now + Duration::from_secs(3);
    while w.now < end {
        if w.now >= next_frame {
            w.publisher.send_frame(w.now).unwrap();
            w.pub_out();
            next_frame += FRAME_INTERVAL;
        }
        w.step();
    }
    assert!(
        w.publisher.frames_sent >= 89,
        "{} frames",
        w.publisher.frames_sent
    );
    eprintln!(
        "extension ids by datagrams: uplink {:?}, downlink {:?}",
        w.uplink_ext_ids, w.downlink_ext_ids
    );
    let up = &w.uplink_ext_ids;
    assert!(
        up.is_empty(),
        "uplink ids {up:?} (abs-send-time {ast}, twcc {twcc}, mid {mid})"
    );
    // The SFU sent the subscriber the video it received, each datagram with a
    // transport-wide sequence number.
    let down = &w.downlink_ext_ids;
    let carried = w.subscriber.frames.len() as u64;
    assert!(carried >= 50, "{carried} frames reached the subscriber");
    assert!(
        down.get(&twcc).copied().unwrap_or(0) >= carried,
        "downlink ids {down:?}"
    );
}

/// The seeds a sweep runs: `HT_SEEDS=a-b` (or one seed), else `default`.
fn env_seeds(default: &str) -> std::ops::RangeInclusive<u64> {
    let seeds = std::env::var("HT_SEEDS").unwrap_or_else(|_| default.into());
    let (a, b) = seeds.split_once('-').unwrap_or((&seeds, &seeds));
    a.parse().expect("HT_SEEDS: a-b")..=b.parse().expect("HT_SEEDS: a-b")
}

/// Seed sweeps in the shape of `bench loss`'s stream: `HT_SEEDS=1-6 cargo test --release
/// -p endpoints-sim --test sfu_loss sweep_bench_shape -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement sweep, not a check"]
fn sweep_bench_shape() {
    // `HT_DELAY_MS=10` reads the "RTT 40 ms" end to end instead of per link.
    let delay = std::env::var("HT_DELAY_MS").map_or(LINK_DELAY, |v| {
        Duration::from_millis(v.parse().expect("HT_DELAY_MS: a number"))
    });
    for seed in env_seeds("1-3") {
        for loss in [
            LossModel::Bernoulli(0.5),
            LossModel::GilbertElliott(GilbertElliott::from_average(0.5, 3.0)),
        ] {
            let o = run_shaped(seed, delay, SyntheticVideo::like_bench_1080p(), loss, 30);
            println!(
                "SWEEP seed {seed} {:<6} fps {:.2} worst {} p95 {} ms skipped up {} down {} up ovh {:.3} down ovh {:.3}",
                if matches!(loss, LossModel::Bernoulli(_)) {
                    "random"
                } else {
                    "bursty"
                },
                o.fps_avg,
                o.worst_1s,
                o.p95_latency.as_millis(),
                o.skipped_up,
                o.skipped_down,
                o.up_overhead,
                o.down_overhead
            );
        }
    }
}

/// What [`run_congested`] measured over its last 10 s.
#[derive(Debug)]
struct Congested {
    p95_latency: Duration,
    intact: u64,
    sent: u64,
    frames_scaled: u64,
    /// The publisher's lowest media budget after its first 2 s (bit/s).
    min_budget: u64,
}

/// Publisher → SFU → subscriber with `loss` on every link and, if `bottleneck` is set,
/// a rate limit on the publisher's uplink with a tail-drop queue of 250 ms. With
/// `follow`, the publisher scales its delta frames to its uplink's congestion control.
fn run_congested(seed: u64, loss: LossModel, bottleneck: Option<u64>, follow: bool) -> Congested {
    run_bottlenecked(seed, loss, bottleneck, None, follow)
}

/// [`run_congested`] with, if `down` is set, a rate limit (250 ms tail-drop queue) on
/// the subscriber's downlink too.
fn run_bottlenecked(
    seed: u64,
    loss: LossModel,
    bottleneck: Option<u64>,
    down: Option<u64>,
    follow: bool,
) -> Congested {
    let seconds = 20;
    let mut w = World::new(seed, LINK_DELAY, SyntheticVideo::default());
    w.connect();
    w.set_loss(seed, loss);
    if let Some(bps) = bottleneck {
        w.links[0]
            .set_config(link(seed * 10 + 100, LINK_DELAY, loss).rate(bps, (bps / 32) as usize));
    }
    if let Some(bps) = down {
        w.links[3]
            .set_config(link(seed * 10 + 103, LINK_DELAY, loss).rate(bps, (bps / 32) as usize));
    }
    w.publisher.follow_congestion_control = follow;
    let start = w.now;
    let late = start + Duration::from_secs(seconds - 10);
    let end = start + Duration::from_secs(seconds);
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut min_budget = u64::MAX;
    let trace = std::env::var("HT_TRACE").is_ok();
    let mut next_frame = w.now;
    while w.now < end {
        if w.now >= next_frame {
            if w.now >= late {
                sent_at.insert(w.publisher.frames_sent, w.now);
            }
            w.publisher.send_frame(w.now).unwrap();
            w.pub_out();
            next_frame += FRAME_INTERVAL;
            if w.now >= start + Duration::from_secs(2)
                && let Some((_, b)) = w.publisher.congestion_control()
            {
                min_budget = min_budget.min(b);
            }
            if trace && w.publisher.frames_sent.is_multiple_of(15) {
                let c = w.sfu.counters();
                eprintln!(
                    "  t {:>5} ms cc {:?} {:?} channel {:?} kf {} up frames {} skipped {} link {:?} shed {:?}",
                    (w.now - start).as_millis(),
                    w.publisher.congestion_control(),
                    w.publisher.usage(),
                    w.publisher.channel(),
                    w.publisher.keyframes_sent,
                    c.protected_frames_up,
                    c.protected_skipped_up,
                    w.links[0].stats(),
                    w.publisher.shed(),
                );
            }
        }
        w.step();
    }
    for _ in 0..1_000 {
        w.step();
    }
    let latency = intact_latencies(w.subscriber.frames.iter().copied(), &sent_at);
    let c = Congested {
        p95_latency: latency
            .get(latency.len() * 95 / 100)
            .copied()
            .unwrap_or(Duration::MAX),
        intact: latency.len() as u64,
        sent: sent_at.len() as u64,
        frames_scaled: w.publisher.frames_scaled,
        min_budget,
    };
    eprintln!(
        "seed {seed} {loss:?} bottleneck {bottleneck:?} down {down:?} follow {follow}: {c:?}; publisher {:?}; uplink link {:?}; downlink link {:?}",
        w.publisher.congestion_control(),
        w.links[0].stats(),
        w.links[3].stats()
    );
    eprintln!(
        "  publisher {:?} keyframes {} requests {}; sfu {:?}; subscriber {:?}",
        w.publisher.protection_stats(),
        w.publisher.keyframes_sent,
        w.publisher.keyframe_requests,
        w.sfu.counters(),
        w.subscriber.stats()
    );
    c
}

/// Random loss is not congestion: 50 % random loss on every link leaves the publisher's
/// delay-based estimate (fed by the SFU's arrival reports) above its media rate, so a
/// publisher that follows it sends every frame at full size.
#[test]
fn random_loss_does_not_lower_the_congestion_controlled_rate() {
    let nominal = SyntheticVideo::default().delta_bps();
    let lossy = run_congested(1, LossModel::Bernoulli(0.5), None, true);
    assert_eq!(
        lossy.frames_scaled, 0,
        "random loss lowered the rate: {lossy:?}"
    );
    assert!(lossy.min_budget >= nominal, "{lossy:?}");
    assert!(lossy.intact * 100 >= lossy.sent * 98, "{lossy:?}");
    assert!(lossy.p95_latency <= Duration::from_millis(350), "{lossy:?}");
}

/// A real bottleneck on the publisher's uplink (250 ms tail-drop queue) against
/// ~2.2 Mbit/s of media plus protection: 1.5 Mbit/s on a clean link, and 2 Mbit/s behind
/// 50 % random loss (about 4 Mbit/s of sending rate reaches it). A publisher that follows
/// its congestion control fits its frames, keyframes included, to the estimate; the
/// protection sheds repair beyond it; the queue drains. A publisher that keeps its rate
/// on the same clean link gets nothing through: the queue's overflow costs base-layer
/// frames, their keyframes overflow it again (`docs/recovery.md`, *Congestion control*).
#[test]
fn a_publisher_following_its_estimate_fits_a_bottleneck() {
    let fixed = run_congested(1, LossModel::None, Some(1_500_000), false);
    assert!(fixed.intact * 10 < fixed.sent, "{fixed:?}");
    let clean = run_congested(1, LossModel::None, Some(1_500_000), true);
    // Measured over seeds 1–4: 300/300 intact, p95 79–123 ms.
    assert!(clean.intact * 100 >= clean.sent * 99, "{clean:?}");
    assert!(clean.p95_latency <= Duration::from_millis(200), "{clean:?}");
    let lossy = run_congested(1, LossModel::Bernoulli(0.5), Some(2_000_000), true);
    // Measured over seeds 1–4: 288–300 of 300 intact, p95 302–440 ms (bursts of repair
    // and keyframes queue at the bottleneck, and shed repair costs NACK rounds).
    assert!(lossy.intact * 100 >= lossy.sent * 95, "{lossy:?}");
    assert!(lossy.p95_latency <= Duration::from_millis(500), "{lossy:?}");
}

/// A 1.5 Mbit/s bottleneck (250 ms tail-drop queue) on the subscriber's downlink: the
/// SFU cannot re-encode, so it holds the protected subscriber to its downlink's estimate
/// by temporal layer. With the allocation not following the estimate, or pausing the
/// stream below it, nothing arrived intact (the queue's overflow cost base-layer frames
/// and their keyframes; a paused stream sends nothing to estimate from).
#[test]
fn the_sfu_thins_a_protected_stream_to_its_downlink() {
    let c = run_bottlenecked(1, LossModel::None, None, Some(1_500_000), true);
    // Measured at seeds 1–2: the base temporal layer, 75 of 300 frames (7.5 fps), p95
    // 222–225 ms. L1T3's lower two layers are costed at 75 % of the stream (1.65 Mbit/s
    // here), more than fits.
    assert!(c.intact >= 70, "{c:?}");
    assert!(c.p95_latency <= Duration::from_millis(300), "{c:?}");
}

/// [`a_publisher_following_its_estimate_fits_a_bottleneck`] over seeds, following or
/// not: `HT_SEEDS=1-4 cargo test -p endpoints-sim --test sfu_loss sweep_uplink_bottleneck
/// -- --ignored --nocapture` (`HT_TRACE=1` prints the estimate twice a second).
#[test]
#[ignore = "a measurement sweep, not a check"]
fn sweep_uplink_bottleneck() {
    for seed in env_seeds("1-1") {
        for follow in [false, true] {
            if std::env::var("HT_ONLY_RANDOM").is_err() {
                run_congested(seed, LossModel::None, Some(1_500_000), follow);
            }
            run_congested(seed, LossModel::Bernoulli(0.5), Some(2_000_000), follow);
        }
        run_bottlenecked(seed, LossModel::None, None, Some(1_500_000), true);
        run_bottlenecked(seed, LossModel::Bernoulli(0.5), None, Some(2_000_000), true);
    }
}
