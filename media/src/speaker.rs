//! Dominant-speaker detection from RFC 6464 audio levels.
//!
//! Each audio packet carries the sender's level in -dBov (0 loud … 127 silent). A
//! speaker's activity is the smoothed loudness above a noise floor; the dominant speaker
//! changes only when a challenger has been clearly louder for a hold time, so a cough or
//! a short interjection does not flap the active-speaker view.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Tuning of [`SpeakerDetector`].
#[derive(Debug, Clone, Copy)]
pub struct SpeakerConfig {
    /// Levels quieter than this (in -dBov) count as silence.
    pub silence_dbov: u8,
    /// Time constant of the loudness smoothing.
    pub smoothing: Duration,
    /// How long a challenger must lead before it takes over.
    pub hold: Duration,
    /// How much louder (in smoothed dB above the floor) a challenger must be.
    pub margin_db: f32,
    /// A speaker silent for this long loses the floor.
    pub idle: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            silence_dbov: 60,
            smoothing: Duration::from_millis(300),
            hold: Duration::from_millis(800),
            margin_db: 3.0,
            idle: Duration::from_secs(2),
        }
    }
}

#[derive(Debug)]
struct Speaker {
    activity: f32,
    last_update: Instant,
    last_voice: Option<Instant>,
}

/// Tracks speakers of one room and reports the dominant one.
#[derive(Debug)]
pub struct SpeakerDetector<K> {
    cfg: SpeakerConfig,
    speakers: HashMap<K, Speaker>,
    dominant: Option<K>,
    challenger: Option<(K, Instant)>,
}

impl<K: Copy + Eq + Hash> SpeakerDetector<K> {
    /// A detector with no speakers.
    pub fn new(cfg: SpeakerConfig) -> Self {
        Self {
            cfg,
            speakers: HashMap::new(),
            dominant: None,
            challenger: None,
        }
    }

    /// Feeds one audio level sample (`level` in -dBov, as carried on the wire).
    pub fn add_level(&mut self, now: Instant, who: K, level: i8) {
        let loud = f32::from(self.cfg.silence_dbov.saturating_sub(level.unsigned_abs()));
        let tau = self.cfg.smoothing.as_secs_f32().max(1e-3);
        let s = self.speakers.entry(who).or_insert(Speaker {
            activity: 0.0,
            last_update: now,
            last_voice: None,
        });
        let dt = now.saturating_duration_since(s.last_update).as_secs_f32();
        let alpha = 1.0 - (-dt.max(0.02) / tau).exp();
        s.activity += alpha * (loud - s.activity);
        s.last_update = now;
        if loud > 0.0 {
            s.last_voice = Some(now);
        }
    }

    /// Forgets a speaker (left the room or muted).
    pub fn remove(&mut self, who: K) {
        self.speakers.remove(&who);
        if self.dominant == Some(who) {
            self.dominant = None;
        }
        if self.challenger.is_some_and(|(c, _)| c == who) {
            self.challenger = None;
        }
    }

    /// The current dominant speaker.
    pub fn dominant(&self) -> Option<K> {
        self.dominant
    }

    /// Re-evaluates the floor; returns `Some(new)` when the dominant speaker changed.
    pub fn evaluate(&mut self, now: Instant) -> Option<Option<K>> {
        let idle = self.cfg.idle;
        let active = |s: &Speaker| {
            s.last_voice
                .is_some_and(|t| now.saturating_duration_since(t) < idle)
        };
        let loudest = self
            .speakers
            .iter()
            .filter(|(_, s)| active(s))
            .max_by(|a, b| a.1.activity.total_cmp(&b.1.activity))
            .map(|(k, s)| (*k, s.activity));
        let current = self.dominant.and_then(|d| {
            self.speakers
                .get(&d)
                .filter(|s| active(s))
                .map(|s| s.activity)
        });

        let Some((best, best_act)) = loudest else {
            self.challenger = None;
            return self.dominant.take().map(|_| None);
        };
        let Some(cur_act) = current else {
            // Nobody holds the floor: the loudest takes it at once.
            self.challenger = None;
            return if self.dominant == Some(best) {
                None
            } else {
                self.dominant = Some(best);
                Some(Some(best))
            };
        };
        if Some(best) == self.dominant || best_act < cur_act + self.cfg.margin_db {
            self.challenger = None;
            return None;
        }
        match self.challenger {
            Some((c, since)) if c == best => {
                if now.saturating_duration_since(since) >= self.cfg.hold {
                    self.dominant = Some(best);
                    self.challenger = None;
                    Some(Some(best))
                } else {
                    None
                }
            }
            _ => {
                self.challenger = Some((best, now));
                None
            }
        }
    }
}

#[cfg(test)]
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn feed(
        d: &mut SpeakerDetector<u32>,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
        who: u32,
        level: i8,
    ) -> Vec<(u64, Option<u32>)> {
        let mut changes = vec![];
        let mut ms = from_ms;
        while ms < to_ms {
            let now = t0 + Duration::from_millis(ms);
            d.add_level(now, who, level);
            d.add_level(now, 99, 127);
            if let Some(c) = d.evaluate(now) {
                changes.push((ms, c));
            }
            ms += 20;
        }
        changes
    }

    #[test]
    fn first_speaker_takes_floor_and_short_interjection_does_not() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let c = feed(&mut d, t0, 0, 2000, 1, 20);
        assert_eq!(c.first().map(|x| x.1), Some(Some(1)));
        // Speaker 2 is louder for only 300 ms while 1 keeps talking.
        for ms in (2000..2300).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            d.add_level(now, 1, 20);
            d.add_level(now, 2, 5);
            assert_eq!(d.evaluate(now), None);
        }
        assert_eq!(d.dominant(), Some(1));
    }

    #[test]
    fn sustained_louder_speaker_takes_over_after_hold() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        feed(&mut d, t0, 0, 1000, 1, 40);
        let mut switched_at = None;
        for ms in (1000..4000).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            d.add_level(now, 1, 40);
            d.add_level(now, 2, 10);
            if let Some(Some(2)) = d.evaluate(now) {
                switched_at = Some(ms);
                break;
            }
        }
        let at = switched_at.expect("speaker 2 should take the floor");
        assert!((1800..=2600).contains(&at), "switched at {at} ms");
    }

    #[test]
    fn silence_releases_the_floor() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        feed(&mut d, t0, 0, 1000, 1, 20);
        let c = feed(&mut d, t0, 1000, 4000, 1, 127);
        assert_eq!(c.last().map(|x| x.1), Some(None));
    }
}
