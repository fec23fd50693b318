//! Who sits in which tile: voice-activated, host-fixed, roll call (点名) and polling
//! (轮询). Pure state machines; `now` is always an argument.

use std::time::{Duration, Instant};

use media::speaker::{SpeakerConfig, SpeakerDetector};

/// A participant (venue or person) of one meeting.
pub type ParticipantId = u64;

/// What polling cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollScope {
    /// Only the main tile changes; the other tiles stay put.
    MainTile,
    /// Every tile: the venues are shown page by page.
    WholePicture,
}

/// The host's choice of how tiles are filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The dominant speaker takes the main tile.
    VoiceActivated,
    /// The host pins participants to tiles; `auto_fill` puts everyone else in the free tiles.
    HostFixed {
        /// Tile index → participant.
        positions: Vec<Option<ParticipantId>>,
        /// Fill unpinned tiles in join order.
        auto_fill: bool,
    },
    /// 点名: the named venue goes to the main tile, or alone full screen.
    RollCall {
        /// The venue called.
        venue: ParticipantId,
        /// Show it alone (layout "1") instead of in the main tile.
        full_screen: bool,
    },
    /// 轮询: cycle through venues every `interval`.
    Polling {
        /// Venues in polling order; empty means everyone in join order.
        venues: Vec<ParticipantId>,
        /// Time each venue (or page) stays.
        interval: Duration,
        /// Main tile only or whole picture.
        scope: PollScope,
    },
}

/// The result of arranging: optionally a forced layout, and the occupant of each tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrangement {
    /// A layout the mode imposes (roll call full screen), overriding the terminal's choice.
    pub layout_override: Option<&'static str>,
    /// Occupant per tile (`None`: vacant).
    pub tiles: Vec<Option<ParticipantId>>,
}

/// Mode state of one meeting.
#[derive(Debug)]
pub struct ModeEngine {
    mode: Mode,
    since: Instant,
    detector: SpeakerDetector<ParticipantId>,
    /// Who holds the main tile in voice-activated mode (kept through silence).
    main: Option<ParticipantId>,
    last_switch: Option<Instant>,
    /// Shortest time between two main-tile changes, on top of the detector's hold.
    pub min_dwell: Duration,
}

impl ModeEngine {
    /// Starts in `mode` at `now`.
    pub fn new(now: Instant, mode: Mode, speaker: SpeakerConfig) -> Self {
        Self {
            mode,
            since: now,
            detector: SpeakerDetector::new(speaker),
            main: None,
            last_switch: None,
            min_dwell: Duration::from_secs(2),
        }
    }

    /// The current mode.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Switches mode; polling restarts its cycle at `now`.
    pub fn set_mode(&mut self, now: Instant, mode: Mode) {
        self.mode = mode;
        self.since = now;
    }

    /// Feeds an RFC 6464 audio level (-dBov: 0 loud … 127 silent).
    pub fn audio_level(&mut self, now: Instant, who: ParticipantId, level_dbov: u8) {
        self.detector.add_level(now, who, level_dbov.min(127) as i8);
    }

    /// Forgets a participant who left.
    pub fn remove(&mut self, who: ParticipantId) {
        self.detector.remove(who);
        if self.main == Some(who) {
            self.main = None;
        }
        if let Mode::HostFixed { positions, .. } = &mut self.mode {
            for p in positions.iter_mut().filter(|p| **p == Some(who)) {
                *p = None;
            }
        }
    }

    /// Re-evaluates the floor. Call once per audio frame or video tick.
    pub fn update(&mut self, now: Instant) {
        self.detector.evaluate(now);
        let Some(d) = self.detector.dominant() else {
            return;
        };
        if self.main == Some(d) {
            return;
        }
        let dwelt = self
            .last_switch
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_dwell);
        if self.main.is_none() || dwelt {
            self.main = Some(d);
            self.last_switch = Some(now);
        }
    }

    /// The participant currently speaking (for the speaking border).
    pub fn speaking(&self) -> Option<ParticipantId> {
        self.detector.dominant()
    }

    /// Who holds the main tile in voice-activated mode.
    pub fn voice_main(&self) -> Option<ParticipantId> {
        self.main
    }

    /// Fills `tiles` tiles from `present` (participants in join order, already without
    /// anyone the receiver must not see).
    pub fn arrange(&self, now: Instant, present: &[ParticipantId], tiles: usize) -> Arrangement {
        let with_main = |first: Option<ParticipantId>| -> Vec<Option<ParticipantId>> {
            let first = first.filter(|f| present.contains(f));
            let rest = present.iter().copied().filter(|p| Some(*p) != first);
            first
                .into_iter()
                .chain(rest)
                .map(Some)
                .chain(std::iter::repeat(None))
                .take(tiles)
                .collect()
        };
        match &self.mode {
            Mode::VoiceActivated => Arrangement {
                layout_override: None,
                tiles: with_main(self.main),
            },
            Mode::RollCall { venue, full_screen } => Arrangement {
                layout_override: (*full_screen && present.contains(venue)).then_some("1"),
                tiles: with_main(Some(*venue)),
            },
            Mode::HostFixed {
                positions,
                auto_fill,
            } => {
                let mut out: Vec<Option<ParticipantId>> = (0..tiles)
                    .map(|i| {
                        positions
                            .get(i)
                            .copied()
                            .flatten()
                            .filter(|p| present.contains(p))
                    })
                    .collect();
                if *auto_fill {
                    let placed: Vec<ParticipantId> = out.iter().flatten().copied().collect();
                    let mut rest = present.iter().copied().filter(|p| !placed.contains(p));
                    for slot in out.iter_mut().filter(|s| s.is_none()) {
                        *slot = rest.next();
                    }
                }
                Arrangement {
                    layout_override: None,
                    tiles: out,
                }
            }
            Mode::Polling {
                venues,
                interval,
                scope,
            } => {
                let order: Vec<ParticipantId> = if venues.is_empty() {
                    present.to_vec()
                } else {
                    venues
                        .iter()
                        .copied()
                        .filter(|v| present.contains(v))
                        .collect()
                };
                if order.is_empty() || tiles == 0 {
                    return Arrangement {
                        layout_override: None,
                        tiles: with_main(None),
                    };
                }
                let step = (now.saturating_duration_since(self.since).as_millis()
                    / interval.as_millis().max(1)) as usize;
                match scope {
                    PollScope::MainTile => Arrangement {
                        layout_override: None,
                        tiles: with_main(Some(order[step % order.len()])),
                    },
                    PollScope::WholePicture => {
                        let pages = order.len().div_ceil(tiles);
                        let page = step % pages;
                        let tiles = (0..tiles)
                            .map(|i| order.get(page * tiles + i).copied())
                            .collect();
                        Arrangement {
                            layout_override: None,
                            tiles,
                        }
                    }
                }
            }
        }
    }

    /// When the picture changes next without any input (polling), so a shell can set a timer.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let Mode::Polling { interval, .. } = &self.mode else {
            return None;
        };
        let iv = interval.as_millis().max(1);
        let steps = now.saturating_duration_since(self.since).as_millis() / iv + 1;
        Some(self.since + Duration::from_millis((steps * iv) as u64))
    }
}

#[cfg(test)]
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const ALL: [ParticipantId; 5] = [1, 2, 3, 4, 5];

    fn run(
        m: &mut ModeEngine,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
        loud: &[(ParticipantId, u8)],
    ) {
        for ms in (from_ms..to_ms).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            for p in ALL {
                let lvl = loud.iter().find(|(q, _)| *q == p).map_or(127, |(_, l)| *l);
                m.audio_level(now, p, lvl);
            }
            m.update(now);
        }
    }

    #[test]
    fn voice_activated_follows_the_speaker_with_hold_and_no_flapping() {
        let t0 = Instant::now();
        let mut m = ModeEngine::new(t0, Mode::VoiceActivated, SpeakerConfig::default());
        assert_eq!(
            m.arrange(t0, &ALL, 4).tiles,
            vec![Some(1), Some(2), Some(3), Some(4)]
        );
        run(&mut m, t0, 0, 1500, &[(3, 20)]);
        assert_eq!(
            m.arrange(t0, &ALL, 4).tiles,
            vec![Some(3), Some(1), Some(2), Some(4)]
        );
        // A 300 ms interjection by 5 does not move anything.
        run(&mut m, t0, 1500, 1800, &[(3, 30), (5, 5)]);
        assert_eq!(m.voice_main(), Some(3));
        // 5 keeps talking: takes the main tile after the hold.
        run(&mut m, t0, 1800, 4500, &[(3, 40), (5, 5)]);
        assert_eq!(m.voice_main(), Some(5));
        let switched = m.last_switch.expect("switched");
        // 3 answers straight away and louder: the dwell keeps 5 for 2 s from the switch.
        let back_from = (switched - t0).as_millis() as u64 + 20;
        run(&mut m, t0, back_from, back_from + 1500, &[(3, 0)]);
        assert_eq!(m.voice_main(), Some(5), "no flapping inside the dwell");
        run(&mut m, t0, back_from + 1500, back_from + 4000, &[(3, 0)]);
        assert_eq!(m.voice_main(), Some(3));
        // Silence keeps the last speaker in the main tile.
        run(&mut m, t0, back_from + 4000, back_from + 9000, &[]);
        assert_eq!(m.voice_main(), Some(3));
        assert_eq!(m.speaking(), None);
        // The speaker's tile falls back to join order; others keep their places.
        assert_eq!(
            m.arrange(t0, &ALL, 3).tiles,
            vec![Some(3), Some(1), Some(2)]
        );
    }

    #[test]
    fn roll_call_puts_the_named_venue_big_or_full_screen() {
        let t0 = Instant::now();
        let mut m = ModeEngine::new(
            t0,
            Mode::RollCall {
                venue: 4,
                full_screen: false,
            },
            SpeakerConfig::default(),
        );
        let a = m.arrange(t0, &ALL, 6);
        assert_eq!(a.layout_override, None);
        assert_eq!(
            a.tiles,
            vec![Some(4), Some(1), Some(2), Some(3), Some(5), None]
        );
        m.set_mode(
            t0,
            Mode::RollCall {
                venue: 2,
                full_screen: true,
            },
        );
        let a = m.arrange(t0, &ALL, 1);
        assert_eq!((a.layout_override, a.tiles), (Some("1"), vec![Some(2)]));
        // Calling a venue that is not present changes nothing visible.
        m.set_mode(
            t0,
            Mode::RollCall {
                venue: 42,
                full_screen: true,
            },
        );
        assert_eq!(m.arrange(t0, &ALL, 2).layout_override, None);
    }

    #[test]
    fn polling_cycles_main_tile_or_pages() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(10);
        let mode = Mode::Polling {
            venues: vec![5, 3, 1],
            interval: iv,
            scope: PollScope::MainTile,
        };
        let m = ModeEngine::new(t0, mode, SpeakerConfig::default());
        let main_at = |s: u64| m.arrange(t0 + Duration::from_secs(s), &ALL, 4).tiles[0];
        assert_eq!(
            [
                main_at(0),
                main_at(9),
                main_at(10),
                main_at(25),
                main_at(30)
            ],
            [Some(5), Some(5), Some(3), Some(1), Some(5)]
        );
        assert_eq!(
            m.arrange(t0 + Duration::from_secs(10), &ALL, 4).tiles,
            vec![Some(3), Some(1), Some(2), Some(4)]
        );
        assert_eq!(
            m.poll_timeout(t0 + Duration::from_secs(12)),
            Some(t0 + Duration::from_secs(20))
        );
        // A polled venue that left is skipped.
        assert_eq!(
            m.arrange(t0 + Duration::from_secs(10), &[1, 2, 5], 2).tiles[0],
            Some(1)
        );

        let mode = Mode::Polling {
            venues: vec![],
            interval: iv,
            scope: PollScope::WholePicture,
        };
        let m = ModeEngine::new(t0, mode, SpeakerConfig::default());
        let page = |s: u64| m.arrange(t0 + Duration::from_secs(s), &ALL, 2).tiles;
        assert_eq!(page(0), vec![Some(1), Some(2)]);
        assert_eq!(page(10), vec![Some(3), Some(4)]);
        assert_eq!(page(20), vec![Some(5), None]);
        assert_eq!(page(30), vec![Some(1), Some(2)]);
        assert_eq!(m.arrange(t0, &[], 2).tiles, vec![None, None]);
    }

    #[test]
    fn host_fixed_positions_with_and_without_fill() {
        let t0 = Instant::now();
        let positions = vec![Some(5), None, Some(2)];
        let mut m = ModeEngine::new(
            t0,
            Mode::HostFixed {
                positions: positions.clone(),
                auto_fill: false,
            },
            SpeakerConfig::default(),
        );
        assert_eq!(
            m.arrange(t0, &ALL, 4).tiles,
            vec![Some(5), None, Some(2), None]
        );
        m.set_mode(
            t0,
            Mode::HostFixed {
                positions,
                auto_fill: true,
            },
        );
        assert_eq!(
            m.arrange(t0, &ALL, 4).tiles,
            vec![Some(5), Some(1), Some(2), Some(3)]
        );
        m.remove(5);
        assert_eq!(
            m.arrange(t0, &[1, 2, 3, 4], 4).tiles,
            vec![Some(1), Some(3), Some(2), Some(4)]
        );
    }
}
