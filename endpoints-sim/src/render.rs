//! When a receiving terminal shows a decoded picture: a render clock in the manner of a
//! WebRTC receiver's jitter buffer, sans-IO.
//!
//! Under loss, repair holds a frame back while the frames behind it complete; when it
//! completes they all leave the recovery at once. A terminal that showed each picture the
//! moment it was decoded would freeze on the late frame and then flash the ones behind it.
//! Real receivers show each picture at its capture time (as the RTP timestamp tells it)
//! plus a target delay that covers most frames' delay, and show a later frame as soon as
//! it is decoded. The target adapts to the delays seen: here it is a high quantile of
//! the delays over a recent window, so a frame's repair rounds become latency once
//! instead of a freeze followed by a burst.
//!
//! Delays are measured against the smallest transit (decode time less timestamp time)
//! in the window, so the clock needs no synchronisation with the sender and follows
//! drift between the two clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tuning of [`RenderClock`].
#[derive(Debug, Clone, Copy)]
pub struct RenderConfig {
    /// RTP clock rate of the video.
    pub clock_rate: u32,
    /// The window of recent pictures the target delay is taken from.
    pub window: Duration,
    /// The share of the window's pictures the target delay covers.
    pub quantile: f64,
    /// The target never exceeds this: beyond it a picture is shown late instead.
    pub max_target: Duration,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            clock_rate: 90_000,
            window: Duration::from_secs(4),
            quantile: 0.9,
            max_target: Duration::from_millis(500),
        }
    }
}

/// Chooses each decoded picture's display time.
#[derive(Debug)]
pub struct RenderClock {
    cfg: RenderConfig,
    /// The first picture's decode time and extended timestamp: transits are measured
    /// from it.
    origin: Option<(Instant, i64)>,
    /// Recent pictures: decode time and transit (decode time less the timestamp's
    /// time, both from `origin`, in seconds).
    recent: VecDeque<(Instant, f64)>,
    last_ts: Option<i64>,
    last_render: Option<Instant>,
}

impl RenderClock {
    pub fn new(cfg: RenderConfig) -> Self {
        RenderClock {
            cfg,
            origin: None,
            recent: VecDeque::new(),
            last_ts: None,
            last_render: None,
        }
    }

    /// Extends a 32-bit RTP timestamp to the one nearest the last seen.
    fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ts {
            None => i64::from(ts),
            Some(last) => last + i64::from(ts.wrapping_sub(last as u32) as i32),
        };
        self.last_ts = Some(ext);
        ext
    }

    /// The window's smallest transit and the configured quantile of the delays over
    /// it, capped. Taking the smallest over the window, not over the call, keeps clock
    /// drift between sender and receiver out of the delays.
    fn floor_and_target(&self) -> (f64, f64) {
        let floor = self
            .recent
            .iter()
            .map(|r| r.1)
            .fold(f64::INFINITY, f64::min);
        let mut delays: Vec<f64> = self.recent.iter().map(|r| r.1 - floor).collect();
        if delays.is_empty() {
            return (0.0, 0.0);
        }
        delays.sort_unstable_by(f64::total_cmp);
        let i = ((delays.len() - 1) as f64 * self.cfg.quantile.clamp(0.0, 1.0)).round() as usize;
        (floor, delays[i].min(self.cfg.max_target.as_secs_f64()))
    }

    #[cfg(test)]
    fn target(&self) -> Duration {
        Duration::from_secs_f64(self.floor_and_target().1)
    }

    /// A picture with RTP timestamp `ts` finished decoding at `decoded`: when it is
    /// shown. Never earlier than `decoded`, never before the picture shown last.
    pub fn render_at(&mut self, ts: u32, decoded: Instant) -> Instant {
        let ts = self.extend(ts);
        let (o_at, o_ts) = *self.origin.get_or_insert((decoded, ts));
        let transit = decoded.saturating_duration_since(o_at).as_secs_f64()
            - o_at.saturating_duration_since(decoded).as_secs_f64()
            - (ts - o_ts) as f64 / f64::from(self.cfg.clock_rate);
        while self
            .recent
            .front()
            .is_some_and(|&(at, _)| decoded.saturating_duration_since(at) > self.cfg.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((decoded, transit));
        let (floor, target) = self.floor_and_target();
        // Shown at the smallest transit plus the target; this picture is `transit −
        // floor` behind the smallest already.
        let wait = floor + target - transit;
        let mut at = if wait > 0.0 {
            decoded + Duration::from_secs_f64(wait)
        } else {
            decoded
        };
        if let Some(last) = self.last_render {
            at = at.max(last);
        }
        self.last_render = Some(at);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKS: u32 = 3_000;

    #[allow(clippy::disallowed_methods)] // Any start will do: only differences matter.
    fn t0() -> Instant {
        Instant::now()
    }
    const FRAME: Duration = Duration::from_micros(33_333);

    /// Frames 0..n, each decoded at `capture + delay(i)`, in order (a late frame holds
    /// those behind it), through a clock; returns (decode, render) times.
    fn play(n: u64, delay: impl Fn(u64) -> Duration) -> Vec<(Instant, Instant)> {
        let t0 = t0();
        let mut clock = RenderClock::new(RenderConfig::default());
        let mut last = t0;
        (0..n)
            .map(|i| {
                let decoded = (t0 + FRAME * i as u32 + delay(i)).max(last);
                last = decoded;
                let ts = (i as u32)
                    .wrapping_mul(TICKS)
                    .wrapping_add(u32::MAX - 100_000);
                (decoded, clock.render_at(ts, decoded))
            })
            .collect()
    }

    fn max_gap(times: impl Iterator<Item = Instant>) -> Duration {
        let v: Vec<Instant> = times.collect();
        v.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    #[test]
    fn a_steady_stream_is_shown_as_decoded() {
        let out = play(300, |_| Duration::from_millis(60));
        for (d, r) in &out {
            assert!(*r - *d < Duration::from_millis(1), "{:?}", *r - *d);
        }
    }

    #[test]
    fn a_frame_held_by_repair_becomes_latency_not_a_freeze() {
        // One frame in eight takes 250 ms more, and the frames behind it wait for it.
        let late = |i: u64| Duration::from_millis(if i % 8 == 2 { 300 } else { 50 });
        let out = play(600, late);
        let skip = 150; // the first seconds teach the clock the delays
        let decoded_gap = max_gap(out[skip..].iter().map(|p| p.0));
        let render_gap = max_gap(out[skip..].iter().map(|p| p.1));
        assert!(decoded_gap > Duration::from_millis(250), "{decoded_gap:?}");
        assert!(render_gap < Duration::from_millis(50), "{render_gap:?}");
        // The price: latency close to the late frames' for every frame.
        let extra = out[skip..].iter().map(|(d, r)| *r - *d).max().unwrap();
        assert!(extra <= Duration::from_millis(260), "{extra:?}");
    }

    #[test]
    fn the_target_stays_within_its_cap() {
        // One frame in five 900 ms late (decoded out of order, without holding others):
        // the 90th percentile of the delays is 860 ms over the smallest.
        let t0 = t0();
        let mut clock = RenderClock::new(RenderConfig::default());
        for i in 0..100u32 {
            let late = if i % 5 == 3 { 900 } else { 40 };
            clock.render_at(i * TICKS, t0 + FRAME * i + Duration::from_millis(late));
        }
        assert_eq!(clock.target(), Duration::from_millis(500));
    }
}
