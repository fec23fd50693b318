//! Counters shared by every peer of a run. Counters are cumulative (callers take deltas
//! between snapshots); latency samples are kept only while recording is switched on, so a
//! measurement window holds exactly its own samples.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

#[derive(Default)]
pub struct Stats {
    pub video_frames_sent: AtomicU64,
    pub audio_frames_sent: AtomicU64,
    pub rtp_packets_sent: AtomicU64,
    pub rtp_packets_received: AtomicU64,
    pub video_frames_received: AtomicU64,
    pub audio_frames_received: AtomicU64,
    /// Frames never received, from gaps in each sender's frame counter.
    pub frames_lost: AtomicU64,
    /// Frames that arrived after a later one (or twice).
    pub frames_late: AtomicU64,
    /// Frames without a readable marker (would mean corruption on the way).
    pub frames_unreadable: AtomicU64,
    pub keyframe_requests_received: AtomicU64,
    pub keyframe_requests_sent: AtomicU64,
    recording: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
    video_tap: Mutex<Option<MediaTap>>,
    audio_tap: Mutex<Option<MediaTap>>,
}

/// Sees every frame of one kind the peers of a [`Stats`] receive: `(mid, access unit
/// or audio packet)`.
pub type MediaTap = std::sync::Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Hands every received video frame to `tap` (tests decode real pictures with it).
    pub fn set_video_tap(&self, tap: MediaTap) {
        set_tap(&self.video_tap, tap);
    }

    /// Hands every received audio packet to `tap` (tests decode real sound with it).
    pub fn set_audio_tap(&self, tap: MediaTap) {
        set_tap(&self.audio_tap, tap);
    }

    pub(crate) fn tap_video(&self, mid: &str, data: &[u8]) {
        call_tap(&self.video_tap, mid, data);
    }

    pub(crate) fn tap_audio(&self, mid: &str, data: &[u8]) {
        call_tap(&self.audio_tap, mid, data);
    }
}

fn set_tap(slot: &Mutex<Option<MediaTap>>, tap: MediaTap) {
    if let Ok(mut t) = slot.lock() {
        *t = Some(tap);
    }
}

fn call_tap(slot: &Mutex<Option<MediaTap>>, mid: &str, data: &[u8]) {
    // Cloned out so a tap may take its time without holding the lock.
    let tap = slot.lock().ok().and_then(|t| t.clone());
    if let Some(tap) = tap {
        tap(mid, data);
    }
}

/// A plain copy of [`Stats`] at one instant.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Snapshot {
    pub video_frames_sent: u64,
    pub audio_frames_sent: u64,
    pub rtp_packets_sent: u64,
    pub rtp_packets_received: u64,
    pub video_frames_received: u64,
    pub audio_frames_received: u64,
    pub frames_lost: u64,
    pub frames_late: u64,
    pub frames_unreadable: u64,
    pub keyframe_requests_received: u64,
    pub keyframe_requests_sent: u64,
}

impl Snapshot {
    /// Counter deltas from `earlier` to `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            video_frames_sent: self.video_frames_sent - earlier.video_frames_sent,
            audio_frames_sent: self.audio_frames_sent - earlier.audio_frames_sent,
            rtp_packets_sent: self.rtp_packets_sent - earlier.rtp_packets_sent,
            rtp_packets_received: self.rtp_packets_received - earlier.rtp_packets_received,
            video_frames_received: self.video_frames_received - earlier.video_frames_received,
            audio_frames_received: self.audio_frames_received - earlier.audio_frames_received,
            frames_lost: self.frames_lost - earlier.frames_lost,
            frames_late: self.frames_late - earlier.frames_late,
            frames_unreadable: self.frames_unreadable - earlier.frames_unreadable,
            keyframe_requests_received: self.keyframe_requests_received
                - earlier.keyframe_requests_received,
            keyframe_requests_sent: self.keyframe_requests_sent - earlier.keyframe_requests_sent,
        }
    }

    /// Lost frames over frames that should have arrived.
    pub fn loss(&self) -> f64 {
        let received = self.video_frames_received + self.audio_frames_received;
        let expected = received + self.frames_lost;
        if expected == 0 {
            0.0
        } else {
            self.frames_lost as f64 / expected as f64
        }
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            video_frames_sent: g(&self.video_frames_sent),
            audio_frames_sent: g(&self.audio_frames_sent),
            rtp_packets_sent: g(&self.rtp_packets_sent),
            rtp_packets_received: g(&self.rtp_packets_received),
            video_frames_received: g(&self.video_frames_received),
            audio_frames_received: g(&self.audio_frames_received),
            frames_lost: g(&self.frames_lost),
            frames_late: g(&self.frames_late),
            frames_unreadable: g(&self.frames_unreadable),
            keyframe_requests_received: g(&self.keyframe_requests_received),
            keyframe_requests_sent: g(&self.keyframe_requests_sent),
        }
    }

    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    pub fn record_latency(&self, us: u64) {
        if self.recording.load(Ordering::Relaxed) {
            let v = u32::try_from(us).unwrap_or(u32::MAX);
            if let Ok(mut l) = self.latencies_us.lock() {
                l.push(v);
            }
        }
    }

    /// Takes the recorded latency samples (microseconds), leaving none.
    pub fn take_latencies(&self) -> Vec<u32> {
        self.latencies_us
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// The `q`-quantile (0..=1) of `samples`, which it sorts. `None` when empty.
pub fn quantile(samples: &mut [u32], q: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let idx = ((samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    samples.get(idx).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_loss() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.5), Some(51));
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut [], 0.5), None);
        let s = Snapshot {
            video_frames_received: 90,
            audio_frames_received: 0,
            frames_lost: 10,
            ..Default::default()
        };
        assert!((s.loss() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn latencies_only_while_recording() {
        let s = Stats::default();
        s.record_latency(5);
        s.set_recording(true);
        s.record_latency(7);
        assert_eq!(s.take_latencies(), vec![7]);
        assert!(s.take_latencies().is_empty());
    }
}
