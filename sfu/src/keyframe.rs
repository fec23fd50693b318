//! Coalescing and throttling of keyframe requests towards a publisher.
//!
//! Every subscriber that loses a picture sends PLI; a layer switch wants a keyframe too.
//! Forwarding each one upstream would make the publisher spend its bitrate on keyframes
//! (each is 5–10× a delta frame). One gate per (track, layer) lets the first request
//! through, absorbs the rest for `min_interval`, and re-asks once when the interval ends
//! if requests kept coming and no keyframe has arrived since (the keyframe itself may
//! have been lost).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct KeyframeGate {
    min_interval: Duration,
    last_sent: Option<Instant>,
    /// A request was absorbed while throttled and is still unanswered.
    pending: bool,
    last_keyframe: Option<Instant>,
}

impl KeyframeGate {
    pub fn new(min_interval: Duration) -> Self {
        Self { min_interval, last_sent: None, pending: false, last_keyframe: None }
    }

    /// A subscriber (or a layer switch) wants a keyframe. Returns true when a request
    /// should go to the publisher now.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < self.min_interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// A keyframe arrived from the publisher: absorbed requests are answered by it.
    pub fn keyframe_received(&mut self, now: Instant) {
        self.last_keyframe = Some(now);
        if self.last_sent.is_some_and(|t| t <= now) {
            self.pending = false;
        }
    }

    pub fn last_keyframe(&self) -> Option<Instant> {
        self.last_keyframe
    }

    /// When [`KeyframeGate::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending { self.last_sent.map(|t| t + self.min_interval) } else { None }
    }

    /// Returns true when an absorbed request must now be sent upstream.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.poll_timeout() {
            Some(t) if t <= now => self.request(now),
            _ => false,
        }
    }
}

#[cfg(test)]
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn burst_of_plis_becomes_one_request() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(Duration::from_millis(500));
        let sent: usize = (0..10)
            .map(|i| g.request(t0 + Duration::from_millis(i * 10)) as usize)
            .sum();
        assert_eq!(sent, 1);
        // The keyframe arrives: nothing left to re-ask.
        g.keyframe_received(t0 + Duration::from_millis(120));
        assert_eq!(g.poll_timeout(), None);
        assert!(!g.handle_timeout(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn unanswered_absorbed_request_is_retried_once_after_interval() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(Duration::from_millis(500));
        assert!(g.request(t0));
        assert!(!g.request(t0 + Duration::from_millis(100)));
        assert_eq!(g.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        assert!(!g.handle_timeout(t0 + Duration::from_millis(499)));
        assert!(g.handle_timeout(t0 + Duration::from_millis(500)));
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn requests_after_interval_pass() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(Duration::from_millis(300));
        assert!(g.request(t0));
        assert!(g.request(t0 + Duration::from_millis(300)));
    }
}
