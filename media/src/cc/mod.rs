//! Congestion control that tells random loss from congestion.
//!
//! A delay-gradient estimator in the style of Google Congestion Control
//! (draft-ietf-rmcat-gcc): packets are grouped by send time, the change of one-way
//! delay between groups is accumulated and smoothed, and the slope of a least-squares
//! line through the last groups (the *trendline*) is compared with an adaptive
//! threshold. A rising slope means a queue is building: the rate backs off to what the
//! path delivered. A flat slope means no queue, whatever the loss: loss that comes
//! without queueing delay is random (radio, a policer upstream, our 50 % test links) and
//! does not lower the rate, because it would not help — FEC and NACK deal with it.
//! Loss is used only to turn the delivered rate back into a sending rate
//! (`delivered / (1 − random loss)`) when backing off.
//!
//! A queue that is already full has no gradient: a sender that starts above the
//! bottleneck fills it before its first feedback, and from then on every packet waits
//! the same long time and the overflow reads as loss. So a *standing* delay counts as
//! congestion too: when even the lowest one-way delay of the last few reports stands
//! [`CcConfig::standing_delay`] above the lowest seen in [`CcConfig::base_window`],
//! the estimator overuses until the queue has drained, and loss seen meanwhile is not
//! taken for random loss.
//!
//! Sans-IO: the caller passes `now` and per-packet (send time, arrival time or lost,
//! size) from transport-wide feedback.

pub mod feedback;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Feedback about one sent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketFeedback {
    /// When it was sent (sender clock).
    pub send_time: Instant,
    /// When it arrived (receiver clock mapped to any fixed offset), `None` if lost.
    pub arrival: Option<Instant>,
    /// Bytes on the wire.
    pub size: usize,
}

/// The detector's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// No queue growing or shrinking.
    Normal,
    /// Delay grows: the path is congested.
    Overusing,
    /// Delay shrinks: a queue is draining.
    Underusing,
}

/// Tuning of [`DelayBasedBwe`]; the defaults are GCC's published values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CcConfig {
    /// Starting rate (bit/s).
    pub start_bps: u64,
    /// Never below this.
    pub min_bps: u64,
    /// Never above this (the encoder's top rate).
    pub max_bps: u64,
    /// Packets sent within this span form one group.
    pub burst: Duration,
    /// Groups in the trendline window.
    pub window: usize,
    /// Smoothing of the accumulated delay.
    pub smoothing: f64,
    /// Gain applied to the slope before comparing with the threshold.
    pub gain: f64,
    /// Initial threshold (ms).
    pub initial_threshold_ms: f64,
    /// Overuse must last this long before acting.
    pub overuse_time: Duration,
    /// Back off to this share of the delivered rate.
    pub beta: f64,
    /// Multiplicative increase per second away from the last congestion point.
    pub increase_per_s: f64,
    /// Window over which the delivered rate and loss are measured.
    pub rate_window: Duration,
    /// One-way delay this far above the path's base counts as a standing queue.
    pub standing_delay: Duration,
    /// The standing delay is the lowest one-way delay over this window, so that jitter
    /// spikes do not count and a queue that never empties does.
    pub standing_window: Duration,
    /// The path's base delay is the lowest one-way delay over this window (a route
    /// change that lengthens the path is taken for a standing queue for this long).
    pub base_window: Duration,
}

impl CcConfig {
    /// GCC-like defaults between `min_bps` and `max_bps`, starting at `start_bps`.
    pub fn new(start_bps: u64, min_bps: u64, max_bps: u64) -> Self {
        CcConfig {
            start_bps,
            min_bps,
            max_bps,
            burst: Duration::from_millis(5),
            window: 20,
            smoothing: 0.9,
            gain: 4.0,
            initial_threshold_ms: 12.5,
            overuse_time: Duration::from_millis(10),
            beta: 0.85,
            increase_per_s: 0.08,
            rate_window: Duration::from_millis(500),
            standing_delay: Duration::from_millis(40),
            standing_window: Duration::from_millis(300),
            base_window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send: Instant,
    last_send: Instant,
    last_arrival: Instant,
}

/// Delay-gradient bandwidth estimator.
#[derive(Debug)]
pub struct DelayBasedBwe {
    cfg: CcConfig,
    rate: f64,
    group: Option<Group>,
    prev_group: Option<Group>,
    first_arrival: Option<Instant>,
    acc_delay_ms: f64,
    smoothed_ms: f64,
    points: VecDeque<(f64, f64)>,
    deltas: usize,
    threshold_ms: f64,
    last_threshold_update: Option<Instant>,
    prev_trend: f64,
    overuse_since: Option<Instant>,
    overuse_count: u32,
    usage: Usage,
    /// (arrival or report time, size, arrived) over `rate_window`.
    recent: VecDeque<(Instant, usize, bool)>,
    random_loss: f64,
    loss_samples: u32,
    last_update: Option<Instant>,
    last_decrease: Option<Instant>,
    trend: f64,
    /// (report time, lowest one-way delay in it in ms, on the sender's mapping of the
    /// receiver's clock) over `base_window`.
    delays: VecDeque<(Instant, f64)>,
    standing: bool,
}

impl DelayBasedBwe {
    /// An estimator starting at `cfg.start_bps`.
    pub fn new(cfg: CcConfig) -> Self {
        DelayBasedBwe {
            rate: cfg.start_bps as f64,
            cfg,
            group: None,
            prev_group: None,
            first_arrival: None,
            acc_delay_ms: 0.0,
            smoothed_ms: 0.0,
            points: VecDeque::new(),
            deltas: 0,
            threshold_ms: cfg.initial_threshold_ms,
            last_threshold_update: None,
            prev_trend: 0.0,
            overuse_since: None,
            overuse_count: 0,
            usage: Usage::Normal,
            recent: VecDeque::new(),
            random_loss: 0.0,
            loss_samples: 0,
            last_update: None,
            last_decrease: None,
            trend: 0.0,
            delays: VecDeque::new(),
            standing: false,
        }
    }

    /// The rate the sender should use now (bit/s).
    pub fn target_bitrate(&self) -> u64 {
        self.rate as u64
    }

    /// The detector's current verdict.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Loss measured while the path was not congested (smoothed).
    pub fn random_loss(&self) -> f64 {
        self.random_loss
    }

    /// Whether the last feedback showed a standing queue.
    pub fn standing_queue(&self) -> bool {
        self.standing
    }

    /// Last modified trend (slope × gain × samples), in ms, for diagnostics.
    pub fn trend(&self) -> f64 {
        self.trend
    }

    /// Take in transport-wide feedback for packets in send order.
    pub fn on_feedback(&mut self, now: Instant, packets: &[PacketFeedback]) {
        for p in packets {
            self.recent
                .push_back((p.arrival.unwrap_or(now), p.size, p.arrival.is_some()));
            if let Some(arrival) = p.arrival {
                self.on_arrival(p.send_time, arrival);
            }
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| *t + self.cfg.rate_window < now)
        {
            self.recent.pop_front();
        }
        self.detect_standing(now, packets);
        let total = self.recent.len();
        if total >= 20 && self.usage == Usage::Normal && self.overuse_since.is_none() {
            let lost = self.recent.iter().filter(|r| !r.2).count();
            let l = lost as f64 / total as f64;
            // A running mean over the first samples, so that a back-off in the first
            // second does not take 50 % random loss for 20 % and undershoot.
            self.loss_samples += 1;
            let w = (1.0 / f64::from(self.loss_samples)).max(0.1);
            self.random_loss = (1.0 - w) * self.random_loss + w * l;
        }
        self.update_rate(now);
    }

    fn detect_standing(&mut self, now: Instant, packets: &[PacketFeedback]) {
        let lowest = packets
            .iter()
            .filter_map(|p| Some(secs_between(p.send_time, p.arrival?) * 1000.0))
            .reduce(f64::min);
        if let Some(d) = lowest {
            self.delays.push_back((now, d));
        }
        while self
            .delays
            .front()
            .is_some_and(|(t, _)| *t + self.cfg.base_window < now)
        {
            self.delays.pop_front();
        }
        let base = self.delays.iter().map(|d| d.1).reduce(f64::min);
        let recent = self
            .delays
            .iter()
            .rev()
            .take_while(|(t, _)| *t + self.cfg.standing_window >= now)
            .map(|d| d.1)
            .reduce(f64::min);
        self.standing = match (base, recent) {
            (Some(b), Some(r)) => r - b > self.cfg.standing_delay.as_secs_f64() * 1000.0,
            _ => false,
        };
        if self.standing {
            self.usage = Usage::Overusing;
        }
    }

    fn on_arrival(&mut self, send: Instant, arrival: Instant) {
        let Some(g) = self.group.as_mut() else {
            self.group = Some(Group {
                first_send: send,
                last_send: send,
                last_arrival: arrival,
            });
            return;
        };
        if send < g.first_send {
            // Reordered older packet: ignore for delay.
            return;
        }
        if send <= g.first_send + self.cfg.burst {
            g.last_send = g.last_send.max(send);
            g.last_arrival = g.last_arrival.max(arrival);
            return;
        }
        let done = *g;
        self.group = Some(Group {
            first_send: send,
            last_send: send,
            last_arrival: arrival,
        });
        if let Some(prev) = self.prev_group {
            let send_delta = secs_between(prev.last_send, done.last_send);
            let arrival_delta = secs_between(prev.last_arrival, done.last_arrival);
            self.update_trend((arrival_delta - send_delta) * 1000.0, done.last_arrival);
        }
        self.prev_group = Some(done);
    }

    fn update_trend(&mut self, delta_ms: f64, arrival: Instant) {
        let first = *self.first_arrival.get_or_insert(arrival);
        self.deltas += 1;
        self.acc_delay_ms += delta_ms;
        self.smoothed_ms =
            self.cfg.smoothing * self.smoothed_ms + (1.0 - self.cfg.smoothing) * self.acc_delay_ms;
        let x = secs_between(first, arrival) * 1000.0;
        self.points.push_back((x, self.smoothed_ms));
        if self.points.len() > self.cfg.window {
            self.points.pop_front();
        }
        if self.points.len() < self.cfg.window {
            return;
        }
        let n = self.points.len() as f64;
        let mx = self.points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = self.points.iter().map(|p| p.1).sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (x, y) in &self.points {
            num += (x - mx) * (y - my);
            den += (x - mx) * (x - mx);
        }
        let slope = if den > 0.0 { num / den } else { 0.0 };
        let trend = slope * (self.deltas.min(60) as f64) * self.cfg.gain;
        self.trend = trend;
        self.detect(trend, arrival);
    }

    fn detect(&mut self, trend: f64, now: Instant) {
        if trend > self.threshold_ms {
            let since = *self.overuse_since.get_or_insert(now);
            self.overuse_count += 1;
            if now >= since + self.cfg.overuse_time
                && self.overuse_count > 1
                && trend >= self.prev_trend
            {
                self.usage = Usage::Overusing;
            }
        } else if trend < -self.threshold_ms {
            self.overuse_since = None;
            self.overuse_count = 0;
            self.usage = Usage::Underusing;
        } else {
            self.overuse_since = None;
            self.overuse_count = 0;
            self.usage = Usage::Normal;
        }
        self.prev_trend = trend;
        // Adaptive threshold (GCC §5.4): follows |trend| slowly up, faster down, so a
        // competing loss-based flow does not starve us and noise does not trigger.
        let dt = self
            .last_threshold_update
            .map_or(0.0, |t| secs_between(t, now).min(0.1) * 1000.0);
        self.last_threshold_update = Some(now);
        let a = trend.abs();
        if a < self.threshold_ms + 15.0 {
            let k = if a < self.threshold_ms { 0.039 } else { 0.0087 };
            self.threshold_ms += k * (a - self.threshold_ms) * dt;
            self.threshold_ms = self.threshold_ms.clamp(6.0, 600.0);
        }
    }

    fn delivered_bps(&self) -> Option<f64> {
        let arrived: Vec<&(Instant, usize, bool)> = self.recent.iter().filter(|r| r.2).collect();
        if arrived.len() < 10 {
            return None;
        }
        let first = arrived.first()?.0;
        let last = arrived.last()?.0;
        let span = secs_between(first, last);
        if span < 0.05 {
            return None;
        }
        let bytes: usize = arrived.iter().skip(1).map(|r| r.1).sum();
        Some(bytes as f64 * 8.0 / span)
    }

    fn update_rate(&mut self, now: Instant) {
        let dt = self.last_update.map_or(0.0, |t| secs_between(t, now));
        self.last_update = Some(now);
        match self.usage {
            Usage::Overusing => {
                let recently = self
                    .last_decrease
                    .is_some_and(|t| now < t + Duration::from_millis(200));
                if !recently && let Some(d) = self.delivered_bps() {
                    // The delivered rate is what got through the bottleneck; random loss
                    // upstream of it thinned what we sent, so scale back up.
                    let send_equiv = d / (1.0 - self.random_loss.min(0.8));
                    self.rate = (self.cfg.beta * send_equiv).min(self.rate);
                    self.last_decrease = Some(now);
                }
            }
            Usage::Underusing => {}
            Usage::Normal => {
                self.rate *= (1.0 + self.cfg.increase_per_s).powf(dt.min(1.0));
            }
        }
        self.rate = self
            .rate
            .clamp(self.cfg.min_bps as f64, self.cfg.max_bps as f64);
    }
}

fn secs_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64()
    } else {
        -(a - b).as_secs_f64()
    }
}
