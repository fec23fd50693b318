//! `media::cc` against `media::netem`: a paced sender at the estimator's rate, per-packet
//! feedback (transport-wide style: every 50 ms, each packet up to the newest arrival,
//! with its arrival time or as lost) returning 20 ms later. Deterministic from seeds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use media::cc::{CcConfig, DelayBasedBwe, PacketFeedback};
use media::netem::{LossModel, Netem, NetemConfig};

const PACKET: usize = 1200;

#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

/// The loss-based rule of GCC (draft-ietf-rmcat-gcc §6): above 10 % loss the rate is
/// multiplied by `1 − loss/2` per report, below 2 % it grows 5 %. Printed for contrast.
struct LossBased {
    rate: f64,
}

impl LossBased {
    fn on_report(&mut self, loss: f64) {
        if loss > 0.1 {
            self.rate *= 1.0 - 0.5 * loss;
        } else if loss < 0.02 {
            self.rate *= 1.05;
        }
        self.rate = self.rate.clamp(300_000.0, 8_000_000.0);
    }
}

struct Run {
    /// (second, target bit/s) sampled once per second.
    rates: Vec<f64>,
    /// One-way delay of each delivered packet, by send second.
    delays: Vec<Vec<Duration>>,
    loss_based_final: f64,
    random_loss: f64,
}

fn run(link: NetemConfig, seconds: u64) -> Run {
    run_from(5_000_000, Duration::ZERO, link, seconds)
}

/// [`run`] with the estimator starting at `start` bit/s and the sender keeping to
/// `start` for the first `fixed_for`, whatever the estimate says (an encoder that
/// has not been told yet, a stream the sender cannot thin).
fn run_from(start: u64, fixed_for: Duration, link: NetemConfig, seconds: u64) -> Run {
    let t0 = origin();
    let mut bwe = DelayBasedBwe::new(CcConfig::new(start, 300_000, 8_000_000));
    let mut lb = LossBased { rate: 5_000_000.0 };
    let mut net = Netem::<Vec<u8>>::new(link);
    let mut sent: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut arrivals: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut reported_up_to = 0u64;
    let mut pending: Vec<(Instant, Vec<PacketFeedback>, f64)> = Vec::new();
    let mut seq = 0u64;
    let mut next_send = t0;
    let mut next_report = t0 + Duration::from_millis(50);
    let end = t0 + Duration::from_secs(seconds);
    let mut rates = Vec::new();
    let mut delays = vec![Vec::new(); seconds as usize];
    let mut next_sample = t0 + Duration::from_secs(1);
    let mut now = t0;
    while now < end {
        if now >= next_send {
            let mut p = vec![0u8; PACKET];
            p[..8].copy_from_slice(&seq.to_be_bytes());
            net.send(now, p);
            sent.insert(seq, now);
            seq += 1;
            let rate = if now < t0 + fixed_for {
                start
            } else {
                bwe.target_bitrate()
            };
            let gap = PACKET as f64 * 8.0 / rate as f64;
            next_send = now + Duration::from_secs_f64(gap);
        }
        while let Some(p) = net.poll_receive(now) {
            let s = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
            arrivals.insert(s, now);
            let sec = (sent[&s] - t0).as_secs() as usize;
            if sec < delays.len() {
                delays[sec].push(now - sent[&s]);
            }
        }
        if now >= next_report {
            if let Some((&high, _)) = arrivals.last_key_value()
                && high >= reported_up_to
            {
                let fb: Vec<PacketFeedback> = (reported_up_to..=high)
                    .map(|s| PacketFeedback {
                        send_time: sent[&s],
                        arrival: arrivals.get(&s).copied(),
                        size: PACKET,
                    })
                    .collect();
                let lost = fb.iter().filter(|f| f.arrival.is_none()).count();
                let loss = lost as f64 / fb.len() as f64;
                pending.push((now + Duration::from_millis(20), fb, loss));
                reported_up_to = high + 1;
            }
            next_report += Duration::from_millis(50);
        }
        let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(t, _, _)| *t <= now);
        pending = later;
        for (_, fb, loss) in due {
            bwe.on_feedback(now, &fb);
            lb.on_report(loss);
        }
        if now >= next_sample {
            rates.push(bwe.target_bitrate() as f64);
            next_sample += Duration::from_secs(1);
        }
        let mut next = next_send.min(next_report).min(next_sample);
        if let Some(t) = net.poll_timeout() {
            next = next.min(t);
        }
        if let Some((t, _, _)) = pending.first() {
            next = next.min(*t);
        }
        now = next.max(now + Duration::from_micros(1));
    }
    Run {
        rates,
        delays,
        loss_based_final: lb.rate,
        random_loss: bwe.random_loss(),
    }
}

impl Run {
    /// From second `from` on: the average target rate, and the p95 one-way delay of
    /// packets sent before the last second (whose later packets may not have arrived).
    fn settled(&self, from: usize) -> (f64, Duration) {
        let tail = &self.rates[from..];
        let avg = tail.iter().sum::<f64>() / tail.len() as f64;
        let last = self.delays.len() - 1;
        let delays = self.delays[from..last].iter().flatten().copied().collect();
        (avg, p95(delays))
    }
}

fn p95(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() * 95 / 100).copied().unwrap_or_default()
}

fn mbps(v: f64) -> f64 {
    v / 1e6
}

#[test]
fn random_loss_with_flat_delay_does_not_lower_the_rate() {
    let link = NetemConfig::new()
        .latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(2))
        .loss(LossModel::Bernoulli(0.5))
        .seed(21);
    let r = run(link, 30);
    let min = r.rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{{\"test\":\"cc\",\"scenario\":\"random50_flat_delay\",\"delay_based_min_mbps\":{:.2},\"delay_based_final_mbps\":{:.2},\"loss_based_final_mbps\":{:.2},\"random_loss\":{:.3}}}",
        mbps(min),
        mbps(*r.rates.last().unwrap_or(&0.0)),
        mbps(r.loss_based_final),
        r.random_loss
    );
    assert!(min >= 5_000_000.0, "rate fell to {min}");
    assert!(
        *r.rates.last().unwrap_or(&0.0) >= 7_500_000.0,
        "{:?}",
        r.rates
    );
    assert!((r.random_loss - 0.5).abs() < 0.05, "{}", r.random_loss);
    // The loss-based rule collapses on the same link.
    assert!(r.loss_based_final < 1_000_000.0);
}

#[test]
fn bottleneck_queue_makes_it_back_off() {
    // 3 Mbit/s bottleneck with a 400 ms queue, no random loss, starting at 5 Mbit/s.
    let link = NetemConfig::new()
        .latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(1))
        .rate(3_000_000, 150_000)
        .seed(22);
    let r = run(link, 40);
    let (avg, d95) = r.settled(20);
    let early = r.rates[..3].iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{{\"test\":\"cc\",\"scenario\":\"bottleneck3M\",\"min_first_3s_mbps\":{:.2},\"avg_last_20s_mbps\":{:.2},\"p95_owd_last_20s_ms\":{:.1}}}",
        mbps(early),
        mbps(avg),
        d95.as_secs_f64() * 1000.0
    );
    assert!(early <= 3_300_000.0, "did not back off: {:?}", r.rates);
    assert!((1_800_000.0..=3_300_000.0).contains(&avg), "{:?}", r.rates);
    assert!(
        d95 <= Duration::from_millis(150),
        "queue kept full: {d95:?}"
    );
}

#[test]
fn bottleneck_behind_random_loss_backs_off_to_the_bottleneck_not_below() {
    // 50 % random loss upstream of a 3 Mbit/s bottleneck: the path carries about
    // 6 Mbit/s of sending rate; the estimator backs off when the queue grows but keeps
    // the loss out of the decrease.
    let link = NetemConfig::new()
        .latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(1))
        .rate(3_000_000, 150_000)
        .loss(LossModel::Bernoulli(0.5))
        .seed(23);
    let r = run(link, 40);
    let (avg, d95) = r.settled(20);
    println!(
        "{{\"test\":\"cc\",\"scenario\":\"random50_then_bottleneck3M\",\"avg_last_20s_mbps\":{:.2},\"p95_owd_last_20s_ms\":{:.1},\"loss_based_final_mbps\":{:.2}}}",
        mbps(avg),
        d95.as_secs_f64() * 1000.0,
        mbps(r.loss_based_final)
    );
    assert!((3_500_000.0..=6_600_000.0).contains(&avg), "{:?}", r.rates);
    assert!(d95 <= Duration::from_millis(150), "{d95:?}");
}

#[test]
fn a_queue_kept_full_is_taken_for_congestion_not_random_loss() {
    // A sender held at 4 Mbit/s for its first 5 s into a 2 Mbit/s bottleneck with a
    // 250 ms queue: the queue fills, and then stays full with no gradient to see, every
    // packet waiting the same 250 ms while half of them overflow. Taken for random loss,
    // that overflow would scale the backed-off rate up by `1 / (1 − loss)` and keep the
    // queue full once the sender follows the estimate. The standing delay over the
    // path's base says it is a queue.
    let link = NetemConfig::new()
        .latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(1))
        .rate(2_000_000, 62_500)
        .seed(24);
    let r = run_from(4_000_000, Duration::from_secs(5), link, 30);
    let (avg, d95) = r.settled(10);
    println!(
        "{{\"test\":\"cc\",\"scenario\":\"held_4M_into_2M_full_queue\",\"avg_last_20s_mbps\":{:.2},\"p95_owd_last_20s_ms\":{:.1},\"random_loss\":{:.3}}}",
        mbps(avg),
        d95.as_secs_f64() * 1000.0,
        r.random_loss
    );
    assert!((1_200_000.0..=2_200_000.0).contains(&avg), "{:?}", r.rates);
    assert!(
        d95 <= Duration::from_millis(120),
        "queue kept full: {d95:?}"
    );
    assert!(
        r.random_loss < 0.05,
        "overflow taken for random loss: {}",
        r.random_loss
    );
}
