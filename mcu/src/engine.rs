//! One meeting's video mix: inputs are decoded pictures (or H.264 access units, decoded
//! here) per participant; outputs are encoded H.264 pictures per distinct output, where
//! an output is (layout, resolution, frame rate, bitrate tier, hidden self) and every
//! terminal wanting the same output shares its encoder.
//!
//! Sans-IO: `now` is an argument, nothing here reads a clock or spawns a thread.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use media::codec::openh264::{
    EncodedPicture, H264Complexity, H264Decoder, H264Encoder, H264EncoderConfig, I420Frame,
};
use media::speaker::SpeakerConfig;

pub use media::codec::openh264::{DecoderBackend, EncoderBackend};

use crate::Error;
use crate::compose::{Compositor, Placeholder, TileContent, TileSpec};
use crate::layout::{Layout, LayoutSet, PixelRect, TileRole};
use crate::mode::{Arrangement, Mode, ModeEngine, ParticipantId};
use crate::text::TextRenderer;

/// Bitrates terminals are grouped by: a terminal gets the highest tier not above what it
/// asked for, so 1.9 and 2.1 Mbit/s requests do not need two encoders.
pub const BITRATE_TIERS: [u32; 10] = [
    256_000, 384_000, 512_000, 768_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000,
    6_000_000,
];

/// The tier a requested bitrate falls into.
pub fn bitrate_tier(bps: u32) -> u32 {
    BITRATE_TIERS
        .iter()
        .rev()
        .copied()
        .find(|t| *t <= bps)
        .unwrap_or(BITRATE_TIERS[0])
}

/// What one receiving terminal asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalSettings {
    /// Layout name.
    pub layout: String,
    /// Picture width (even, 64..=3840).
    pub width: usize,
    /// Picture height (even, 64..=2160).
    pub height: usize,
    /// Frames per second (1..=60).
    pub fps: u32,
    /// Requested bitrate; rounded down to a tier.
    pub bitrate_bps: u32,
    /// Whether the terminal sees its own venue in the mix.
    pub self_view: bool,
}

impl Default for TerminalSettings {
    fn default() -> Self {
        Self {
            layout: "4".into(),
            width: 1920,
            height: 1080,
            fps: 30,
            bitrate_bps: 2_000_000,
            self_view: true,
        }
    }
}

/// Identity of one encoded output; terminals with equal keys share an encoder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutputKey {
    /// Layout name.
    pub layout: String,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Frame rate.
    pub fps: u32,
    /// Bitrate tier.
    pub bitrate_bps: u32,
    /// A participant left out of this picture (a terminal with self-view off).
    pub hidden: Option<ParticipantId>,
}

/// Counted causes of trouble; the mix keeps running through every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Access units the decoder rejected (corrupt or truncated bitstream).
    pub decode_errors: u64,
    /// Input pictures whose size differed from the participant's previous one.
    pub resolution_changes: u64,
    /// Tile-frames drawn as "camera off".
    pub no_video_tiles: u64,
    /// Tile-frames drawn as "signal lost" (stale, never received or undecodable video).
    pub lost_video_tiles: u64,
    /// Terminal settings naming a layout that does not exist (the terminal got the default).
    pub unknown_layouts: u64,
    /// Terminal settings out of range (clamped).
    pub bad_settings: u64,
    /// Composed frames with more participants than tiles.
    pub overflow_frames: u64,
    /// Composed frames of a meeting with nobody in it.
    pub empty_frames: u64,
    /// Encoder failures.
    pub encode_errors: u64,
    /// Input for a participant the meeting does not know.
    pub unknown_participant: u64,
    /// Pictures composed.
    pub frames_composed: u64,
    /// Pictures encoded and emitted.
    pub frames_encoded: u64,
    /// Output frames not encoded because the composed picture was unchanged.
    pub unchanged_frames: u64,
}

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An encoded picture for these terminals.
    Video {
        /// Which output.
        key: OutputKey,
        /// Terminals subscribed to it.
        to: Vec<ParticipantId>,
        /// The access unit.
        picture: EncodedPicture,
    },
    /// Ask this participant's sender for a keyframe (PLI) after a decode error.
    RequestKeyframe(ParticipantId),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Layout for terminals that name none or an unknown one.
    pub default_layout: String,
    /// Video older than this is shown as "signal lost" rather than frozen.
    pub stale_after: Duration,
    /// Speaker detection tuning.
    pub speaker: SpeakerConfig,
    /// Initial mode.
    pub mode: Mode,
    /// Which library decodes the venues' video. `Auto` takes libavcodec when the host has
    /// it: decoding is a third of the mix's CPU and libavcodec's decoder needs about a
    /// third less than OpenH264's (`docs/mcu.md`).
    pub decoder: DecoderBackend,
    /// Which library encodes the mixed outputs. `X264` (opt-in: GPL, and one temporal
    /// layer, so the SFU cannot thin a mix for a weak receiver) codes 1.4 dB more PSNR at
    /// the same bitrate than OpenH264 for a quarter less encode CPU (`docs/mcu.md`).
    pub encoder: EncoderBackend,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_layout: "4".into(),
            stale_after: Duration::from_secs(1),
            speaker: SpeakerConfig::default(),
            mode: Mode::VoiceActivated,
            decoder: DecoderBackend::Auto,
            encoder: EncoderBackend::OpenH264,
        }
    }
}

#[derive(Debug)]
struct Participant {
    name: String,
    has_video: bool,
    decoder: Option<H264Decoder>,
    frame: Option<I420Frame>,
    frame_at: Option<Instant>,
    /// Counts pictures received, so a composition can tell a new picture from the one it
    /// already drew.
    frame_seq: u64,
    /// Decoding failed and no good picture followed yet.
    broken: bool,
    terminal: Option<OutputKey>,
}

#[derive(Debug)]
struct Group {
    encoder: H264Encoder,
    canvas: I420Frame,
    next_due: Instant,
    /// What each tile of the canvas shows now; a tile is redrawn only when this changes.
    drawn: Vec<TileState>,
    /// The canvas changed since it was last encoded (a `compose` call between ticks
    /// must not make the tick think nothing changed).
    dirty: bool,
    /// When a picture was last encoded, and whether a keyframe is owed.
    last_encoded: Option<Instant>,
    keyframe_pending: bool,
}

/// Identity of what a tile shows: same state, same pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TileState {
    rect: PixelRect,
    content: DrawnContent,
    name: Option<String>,
    speaking: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrawnContent {
    Video(ParticipantId, u64),
    Content(u64),
    Placeholder(Placeholder),
}

/// An unchanged composed picture is still encoded this often, so receivers and their
/// freeze detection see a live stream.
const UNCHANGED_REFRESH: Duration = Duration::from_secs(1);

/// The video mix of one meeting.
#[derive(Debug)]
pub struct MeetingMixer {
    cfg: EngineConfig,
    layouts: LayoutSet,
    compositor: Compositor,
    modes: ModeEngine,
    participants: BTreeMap<ParticipantId, Participant>,
    order: Vec<ParticipantId>,
    groups: HashMap<OutputKey, Group>,
    content: Option<(I420Frame, Instant)>,
    content_seq: u64,
    out: VecDeque<Output>,
    counters: Counters,
    encoder_template: H264EncoderConfig,
}

/// Encoder settings for composed outputs (bitrate and frame rate come from the output
/// key). Chosen with `bench mcu` (docs/benchmarks.md): the encoder is most of the MCU's
/// CPU, and on a composed conference picture the pre-analyses that OpenH264 runs by
/// default buy little: a layout change is a deliberate cut the receivers need no IDR for
/// (scene-change detection off), adaptive quantisation costs a texture pass over every
/// 1080p picture for no PSNR gain, and the low-complexity mode search saves 12 % of the
/// encode for 0.1 dB on the talking scene. Background detection stays on: turning it off
/// costs 50 % more CPU (every static block goes through mode decision).
pub fn default_output_encoder() -> H264EncoderConfig {
    H264EncoderConfig {
        complexity: H264Complexity::Low,
        scene_change_detect: false,
        adaptive_quant: false,
        background_detection: true,
        ..H264EncoderConfig::default()
    }
}

/// Whether `backend` can encode on this host (libx264 is opened at run time).
pub fn encoder_available(backend: EncoderBackend) -> bool {
    match backend {
        EncoderBackend::OpenH264 => true,
        EncoderBackend::X264 | EncoderBackend::X264High => media::codec::x264::available(),
    }
}

/// The settings of the encoder for one output: the template's, at the output's bitrate
/// and frame rate, on the configured library (x264 codes one temporal layer).
fn output_encoder(
    template: &H264EncoderConfig,
    backend: EncoderBackend,
    key: &OutputKey,
) -> H264EncoderConfig {
    H264EncoderConfig {
        bitrate_bps: key.bitrate_bps,
        fps: key.fps as f32,
        backend,
        temporal_layers: if backend.temporal_scalable() {
            template.temporal_layers
        } else {
            1
        },
        ..*template
    }
}

impl MeetingMixer {
    /// A meeting with no participants. Without a font, names and captions are not drawn.
    pub fn new(
        now: Instant,
        cfg: EngineConfig,
        layouts: LayoutSet,
        font: Option<TextRenderer>,
    ) -> Result<Self, Error> {
        layouts.get(&cfg.default_layout)?;
        Ok(Self {
            modes: ModeEngine::new(now, cfg.mode.clone(), cfg.speaker),
            cfg,
            layouts,
            compositor: Compositor::new(font),
            participants: BTreeMap::new(),
            order: Vec::new(),
            groups: HashMap::new(),
            content: None,
            content_seq: 0,
            out: VecDeque::new(),
            counters: Counters::default(),
            encoder_template: default_output_encoder(),
        })
    }

    /// Adds a participant (venue). `has_video: false` for audio-only or camera-off.
    pub fn add_participant(&mut self, id: ParticipantId, name: &str, has_video: bool) {
        self.participants.insert(
            id,
            Participant {
                name: name.to_string(),
                has_video,
                decoder: None,
                frame: None,
                frame_at: None,
                frame_seq: 0,
                broken: false,
                terminal: None,
            },
        );
        if !self.order.contains(&id) {
            self.order.push(id);
        }
    }

    /// Adds a terminal that receives a mix but is never a venue in one (the MCU's own
    /// published mix, a recorder, a streaming output).
    pub fn add_viewer(&mut self, id: ParticipantId, name: &str) {
        self.add_participant(id, name, false);
        self.order.retain(|p| *p != id);
    }

    /// Encoder settings for outputs created from now on (bitrate and frame rate are
    /// always those of the output key). For benchmarks and operators tuning CPU against
    /// quality; `default_output_encoder()` is what a mixer starts with.
    pub fn set_encoder_template(&mut self, cfg: H264EncoderConfig) {
        self.encoder_template = cfg;
    }

    /// Camera switched on or off.
    pub fn set_has_video(&mut self, id: ParticipantId, has_video: bool) -> Result<(), Error> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(Error::UnknownParticipant(id))?;
        p.has_video = has_video;
        Ok(())
    }

    /// Removes a participant; its output group goes when no terminal uses it.
    pub fn remove_participant(&mut self, id: ParticipantId) {
        self.participants.remove(&id);
        self.order.retain(|p| *p != id);
        self.modes.remove(id);
        self.gc_groups();
    }

    /// What a participant's terminal receives. An unknown layout is counted and replaced by
    /// the default (the error is returned so signalling can tell the terminal), out-of-range
    /// sizes are clamped and counted.
    pub fn set_terminal(&mut self, id: ParticipantId, s: &TerminalSettings) -> Result<(), Error> {
        if !self.participants.contains_key(&id) {
            self.counters.unknown_participant += 1;
            return Err(Error::UnknownParticipant(id));
        }
        let mut result = Ok(());
        let layout = match self.layouts.get(&s.layout) {
            Ok(l) => l.name.clone(),
            Err(e) => {
                self.counters.unknown_layouts += 1;
                tracing::warn!(participant = id, layout = %s.layout, "unknown layout, using the default");
                result = Err(e);
                self.cfg.default_layout.clone()
            }
        };
        let width = s.width.clamp(64, 3840) & !1;
        let height = s.height.clamp(64, 2160) & !1;
        let fps = s.fps.clamp(1, 60);
        if width != s.width || height != s.height || fps != s.fps {
            self.counters.bad_settings += 1;
        }
        let key = OutputKey {
            layout,
            width,
            height,
            fps,
            bitrate_bps: bitrate_tier(s.bitrate_bps),
            hidden: (!s.self_view).then_some(id),
        };
        if let Some(p) = self.participants.get_mut(&id) {
            p.terminal = Some(key);
        }
        self.gc_groups();
        result
    }

    /// Stops sending the mix to a participant (it keeps appearing in it).
    pub fn clear_terminal(&mut self, id: ParticipantId) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.terminal = None;
        }
        self.gc_groups();
    }

    fn gc_groups(&mut self) {
        let used: BTreeSet<&OutputKey> = self
            .participants
            .values()
            .filter_map(|p| p.terminal.as_ref())
            .collect();
        self.groups.retain(|k, _| used.contains(k));
    }

    /// Changes the mode (voice-activated, host-fixed, roll call, polling).
    pub fn set_mode(&mut self, now: Instant, mode: Mode) {
        self.modes.set_mode(now, mode);
    }

    /// An audio level (RFC 6464, -dBov) from a participant, for voice activation.
    pub fn audio_level(&mut self, now: Instant, id: ParticipantId, level_dbov: u8) {
        if self.participants.contains_key(&id) {
            self.modes.audio_level(now, id, level_dbov);
        }
    }

    /// Content (presentation) picture; `None` stops content.
    pub fn push_content(&mut self, now: Instant, frame: Option<I420Frame>) {
        self.content = frame.map(|f| (f, now));
        self.content_seq += 1;
    }

    /// A decoded picture from a participant.
    pub fn push_frame(&mut self, now: Instant, id: ParticipantId, frame: I420Frame) {
        let Some(p) = self.participants.get_mut(&id) else {
            self.counters.unknown_participant += 1;
            return;
        };
        if p.frame
            .as_ref()
            .is_some_and(|f| (f.width(), f.height()) != (frame.width(), frame.height()))
        {
            self.counters.resolution_changes += 1;
            tracing::debug!(
                participant = id,
                w = frame.width(),
                h = frame.height(),
                "input resolution changed"
            );
        }
        p.frame = Some(frame);
        p.frame_at = Some(now);
        p.frame_seq += 1;
        p.broken = false;
    }

    /// An H.264 access unit (Annex B) from a participant, decoded here.
    pub fn push_access_unit(&mut self, now: Instant, id: ParticipantId, au: &[u8]) {
        let Some(p) = self.participants.get_mut(&id) else {
            self.counters.unknown_participant += 1;
            return;
        };
        let decoder = match p.decoder.as_mut() {
            Some(d) => d,
            None => match H264Decoder::with_backend(self.cfg.decoder) {
                Ok(d) => p.decoder.insert(d),
                Err(e) => {
                    self.counters.decode_errors += 1;
                    tracing::warn!(participant = id, error = %e, "cannot create decoder");
                    return;
                }
            },
        };
        match decoder.decode(au) {
            Ok(Some(frame)) => self.push_frame(now, id, frame),
            Ok(None) => {}
            Err(e) => {
                self.counters.decode_errors += 1;
                tracing::debug!(participant = id, error = %e, "undecodable access unit");
                if !p.broken {
                    p.broken = true;
                    self.out.push_back(Output::RequestKeyframe(id));
                }
            }
        }
    }

    /// A terminal lost pictures: its output restarts with an IDR.
    pub fn request_keyframe(&mut self, id: ParticipantId) {
        let key = self.participants.get(&id).and_then(|p| p.terminal.clone());
        if let Some(g) = key.and_then(|k| self.groups.get_mut(&k)) {
            g.encoder.force_keyframe();
            g.keyframe_pending = true;
        }
    }

    /// Distinct encoded outputs (encoders) the meeting needs right now.
    pub fn encoder_count(&self) -> usize {
        self.participants
            .values()
            .filter_map(|p| p.terminal.as_ref())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Trouble counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Next time `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.next_due).min()
    }

    /// Next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Composes and encodes every output that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.modes.update(now);
        let mut keys: BTreeMap<OutputKey, Vec<ParticipantId>> = BTreeMap::new();
        for (id, p) in &self.participants {
            if let Some(k) = &p.terminal {
                keys.entry(k.clone()).or_default().push(*id);
            }
        }
        for (key, to) in keys {
            if !self.groups.contains_key(&key) {
                let cfg = output_encoder(&self.encoder_template, self.cfg.encoder, &key);
                let group = Group {
                    encoder: H264Encoder::new(cfg)?,
                    canvas: I420Frame::filled(
                        key.width,
                        key.height,
                        self.compositor.theme.background,
                    )?,
                    next_due: now,
                    drawn: Vec::new(),
                    dirty: true,
                    last_encoded: None,
                    keyframe_pending: false,
                };
                self.groups.insert(key.clone(), group);
            }
            let due = self.groups.get(&key).is_some_and(|g| g.next_due <= now);
            if !due {
                continue;
            }
            let changed = self.compose_changed(now, &key);
            let Some(g) = self.groups.get_mut(&key) else {
                continue;
            };
            let period = Duration::from_secs(1) / key.fps;
            g.next_due += period;
            if g.next_due <= now {
                g.next_due = now + period;
            }
            // An identical picture costs a full encoder pass (pre-analysis and a mode
            // decision per macroblock) to send nothing new: skip it, but keep the stream
            // alive and honour keyframe requests.
            let refresh_due = g
                .last_encoded
                .is_none_or(|at| now.saturating_duration_since(at) >= UNCHANGED_REFRESH);
            if !changed && !g.dirty && !g.keyframe_pending && !refresh_due {
                self.counters.unchanged_frames += 1;
                continue;
            }
            match g.encoder.encode(&g.canvas) {
                Ok(Some(picture)) => {
                    g.dirty = false;
                    g.last_encoded = Some(now);
                    if picture.keyframe {
                        g.keyframe_pending = false;
                    }
                    self.counters.frames_encoded += 1;
                    self.out.push_back(Output::Video { key, to, picture });
                }
                Ok(None) => {}
                Err(e) => {
                    self.counters.encode_errors += 1;
                    tracing::warn!(error = %e, "mix encode failed");
                }
            }
        }
        Ok(())
    }

    /// Composes one output's canvas (public so benchmarks and tests can look at it).
    pub fn compose(&mut self, now: Instant, key: &OutputKey) {
        self.compose_changed(now, key);
    }

    /// Composes one output's canvas, redrawing only the tiles whose picture, placeholder,
    /// label or speaking state changed (and tiles drawn on top of those). Returns whether
    /// any pixel may have changed.
    fn compose_changed(&mut self, now: Instant, key: &OutputKey) -> bool {
        let Some(group) = self.groups.get_mut(key) else {
            return false;
        };
        let arranged = arrange(
            &self.layouts,
            &self.modes,
            &self.order,
            &self.cfg.default_layout,
            now,
            key,
        );
        let Some((layout, arrangement)) = arranged else {
            return false;
        };
        let (cw, ch) = (group.canvas.width(), group.canvas.height());
        let speaking = self.modes.speaking();
        let content = self
            .content
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.cfg.stale_after);
        let mut occupants = arrangement.tiles.iter();
        let mut specs = Vec::with_capacity(layout.tiles.len());
        let mut states = Vec::with_capacity(layout.tiles.len());
        for t in &layout.tiles {
            let rect = t.rect.to_pixels(cw, ch);
            if t.role == TileRole::Content {
                let (content, drawn) = match content {
                    Some((f, _)) => (
                        TileContent::Video(f),
                        DrawnContent::Content(self.content_seq),
                    ),
                    None => (
                        TileContent::Placeholder(Placeholder::Vacant),
                        DrawnContent::Placeholder(Placeholder::Vacant),
                    ),
                };
                specs.push(TileSpec {
                    rect,
                    content,
                    name: None,
                    speaking: false,
                });
                states.push(TileState {
                    rect,
                    content: drawn,
                    name: None,
                    speaking: false,
                });
                continue;
            }
            let Some(Some(id)) = occupants.next() else {
                specs.push(TileSpec {
                    rect,
                    content: TileContent::Placeholder(Placeholder::Vacant),
                    name: None,
                    speaking: false,
                });
                states.push(TileState {
                    rect,
                    content: DrawnContent::Placeholder(Placeholder::Vacant),
                    name: None,
                    speaking: false,
                });
                continue;
            };
            let Some(p) = self.participants.get(id) else {
                continue;
            };
            let fresh = p
                .frame_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.cfg.stale_after);
            let (content, drawn) = match (&p.frame, p.has_video) {
                (_, false) => {
                    self.counters.no_video_tiles += 1;
                    let ph = Placeholder::CameraOff;
                    (TileContent::Placeholder(ph), DrawnContent::Placeholder(ph))
                }
                (Some(f), true) if fresh && !p.broken => {
                    (TileContent::Video(f), DrawnContent::Video(*id, p.frame_seq))
                }
                _ => {
                    self.counters.lost_video_tiles += 1;
                    let ph = Placeholder::SignalLost;
                    (TileContent::Placeholder(ph), DrawnContent::Placeholder(ph))
                }
            };
            let is_speaking = speaking == Some(*id);
            specs.push(TileSpec {
                rect,
                content,
                name: Some(&p.name),
                speaking: is_speaking,
            });
            states.push(TileState {
                rect,
                content: drawn,
                name: Some(p.name.clone()),
                speaking: is_speaking,
            });
        }
        let present = self
            .order
            .iter()
            .filter(|p| Some(**p) != key.hidden)
            .count();
        // The arrangement has one entry per people tile of the terminal's layout.
        if present == 0 {
            self.counters.empty_frames += 1;
        } else if present > arrangement.tiles.len() {
            self.counters.overflow_frames += 1;
        }
        self.counters.frames_composed += 1;
        let same_geometry = group.drawn.len() == states.len()
            && group
                .drawn
                .iter()
                .zip(&states)
                .all(|(a, b)| a.rect == b.rect);
        let changed = if same_geometry {
            let mut redraw: Vec<bool> = group
                .drawn
                .iter()
                .zip(&states)
                .map(|(a, b)| a != b)
                .collect();
            // Tiles are painted in order, later ones on top: repainting a tile covers
            // whatever overlapping later tile was on it, so that one is repainted too.
            for i in 0..redraw.len() {
                if redraw[i] {
                    for j in i + 1..redraw.len() {
                        if overlaps(states[i].rect, states[j].rect) {
                            redraw[j] = true;
                        }
                    }
                }
            }
            let any = redraw.iter().any(|r| *r);
            if any {
                self.compositor
                    .compose_some(&mut group.canvas, &specs, &redraw);
            }
            any
        } else {
            self.compositor.compose(&mut group.canvas, &specs);
            true
        };
        group.drawn = states;
        group.dirty |= changed;
        changed
    }

    /// The last composed canvas of an output.
    pub fn canvas(&self, key: &OutputKey) -> Option<&I420Frame> {
        self.groups.get(key).map(|g| &g.canvas)
    }

    /// The output key a participant's terminal receives.
    pub fn terminal_key(&self, id: ParticipantId) -> Option<&OutputKey> {
        self.participants.get(&id).and_then(|p| p.terminal.as_ref())
    }
}

/// Who sits in which tile of `key`'s picture now, and the layout in force (the mode may
/// override the terminal's, e.g. roll call full screen). Free-standing so callers can
/// hold a mutable borrow of the output groups meanwhile.
fn arrange<'a>(
    layouts: &'a LayoutSet,
    modes: &ModeEngine,
    order: &[ParticipantId],
    default_layout: &str,
    now: Instant,
    key: &OutputKey,
) -> Option<(&'a Layout, Arrangement)> {
    let present: Vec<ParticipantId> = order
        .iter()
        .copied()
        .filter(|p| Some(*p) != key.hidden)
        .collect();
    let default = layouts.get(default_layout).ok();
    let layout = layouts.get(&key.layout).ok().or(default)?;
    let people = layout
        .tiles
        .iter()
        .filter(|t| t.role != TileRole::Content)
        .count();
    let arrangement = modes.arrange(now, &present, people);
    let layout = arrangement
        .layout_override
        .and_then(|n| layouts.get(n).ok())
        .unwrap_or(layout);
    Some((layout, arrangement))
}

fn overlaps(a: PixelRect, b: PixelRect) -> bool {
    a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
}

/// Tile sizes, for asking the SFU for the right simulcast layer of each input.
impl MeetingMixer {
    /// The pixel size of the tile each participant occupies in `key`'s picture right now
    /// (participants not shown are absent). Applies the mode's layout override.
    pub fn tile_sizes(&self, now: Instant, key: &OutputKey) -> Vec<(ParticipantId, usize, usize)> {
        let arranged = arrange(
            &self.layouts,
            &self.modes,
            &self.order,
            &self.cfg.default_layout,
            now,
            key,
        );
        let Some((layout, arrangement)) = arranged else {
            return Vec::new();
        };
        layout
            .tiles
            .iter()
            .filter(|t| t.role != TileRole::Content)
            .zip(arrangement.tiles.iter())
            .filter_map(|(t, who)| {
                let r = t.rect.to_pixels(key.width, key.height);
                who.map(|p| (p, r.w, r.h))
            })
            .collect()
    }
}

#[cfg(test)]
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::compose::rgb_to_yuv;

    fn colour(i: u64) -> [u8; 3] {
        [
            rgb_to_yuv(220, 40, 40),
            rgb_to_yuv(40, 200, 40),
            rgb_to_yuv(40, 60, 220),
            rgb_to_yuv(230, 230, 40),
        ][(i as usize - 1) % 4]
    }

    fn mixer(t0: Instant) -> MeetingMixer {
        MeetingMixer::new(t0, EngineConfig::default(), LayoutSet::default(), None).expect("mixer")
    }

    fn settings(layout: &str, w: usize, h: usize) -> TerminalSettings {
        TerminalSettings {
            layout: layout.into(),
            width: w,
            height: h,
            fps: 15,
            bitrate_bps: 1_000_000,
            self_view: true,
        }
    }

    fn drain(m: &mut MeetingMixer) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn region_mean(f: &I420Frame, x0: usize, y0: usize, w: usize, h: usize) -> [f64; 3] {
        let mut s = [0.0; 3];
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                s[0] += f64::from(f.y[y * f.width() + x]);
                s[1] += f64::from(f.u[(y / 2) * (f.width() / 2) + x / 2]);
                s[2] += f64::from(f.v[(y / 2) * (f.width() / 2) + x / 2]);
            }
        }
        s.map(|v| v / (w * h) as f64)
    }

    #[test]
    fn four_h264_sources_land_in_their_quadrants_and_the_picture_updates() {
        quadrants(EncoderBackend::OpenH264);
    }

    #[test]
    fn the_x264_encoded_mix_shows_the_same_quadrants() {
        if !encoder_available(EncoderBackend::X264) {
            assert!(
                std::env::var_os("HUITONG_REQUIRE_X264").is_none(),
                "HUITONG_REQUIRE_X264 is set but libx264 build 164 does not load"
            );
            eprintln!("libx264 not installed: skipped");
            return;
        }
        quadrants(EncoderBackend::X264);
        quadrants(EncoderBackend::X264High);
    }

    /// Four sources in a 2×2 mix coded by `encoder`: each quadrant shows its source's
    /// colour, and a change of one source shows up in the next picture.
    fn quadrants(encoder: EncoderBackend) {
        let t0 = Instant::now();
        let cfg = EngineConfig {
            encoder,
            ..EngineConfig::default()
        };
        let mut m = MeetingMixer::new(t0, cfg, LayoutSet::default(), None).expect("mixer");
        let mut encoders = Vec::new();
        for id in 1..=4 {
            m.add_participant(id, &format!("会场{id}"), true);
            encoders.push(
                H264Encoder::new(H264EncoderConfig {
                    allow_frame_skip: false,
                    ..Default::default()
                })
                .expect("enc"),
            );
        }
        m.add_participant(5, "主会场", false);
        m.set_terminal(5, &settings("4", 640, 360))
            .expect("settings");
        let mut rx = H264Decoder::new().expect("dec");
        let mut last = None;
        for frame in 0..8u32 {
            let now = t0 + Duration::from_millis(u64::from(frame) * 67);
            for (i, enc) in encoders.iter_mut().enumerate() {
                let id = i as u64 + 1;
                // Source 1 turns blue-ish grey from frame 5 on: the mix must follow.
                let c = if id == 1 && frame >= 5 {
                    [128, 160, 110]
                } else {
                    colour(id)
                };
                let src = I420Frame::filled(320, 180, c).expect("src");
                let au = enc.encode(&src).expect("encode").expect("picture");
                m.push_access_unit(now, id, &au.data);
            }
            m.handle_timeout(now).expect("tick");
            for o in drain(&mut m) {
                let Output::Video { to, picture, .. } = o else {
                    panic!("unexpected {o:?}")
                };
                assert_eq!(to, vec![5]);
                if picture.keyframe {
                    // x264 names itself in an SEI on its first keyframe.
                    let x264 = picture.data.windows(11).any(|w| w == b"x264 - core");
                    assert_eq!(x264, encoder != EncoderBackend::OpenH264);
                }
                last = rx.decode(&picture.data).expect("decode mix");
            }
            let pic = last.as_ref().expect("a picture per tick");
            assert_eq!((pic.width(), pic.height()), (640, 360));
            let want1 = if frame >= 5 {
                [128, 160, 110]
            } else {
                colour(1)
            };
            for (id, (x, y)) in [
                (1u64, (0, 0)),
                (2, (320, 0)),
                (3, (0, 180)),
                (4, (320, 180)),
            ] {
                let got = region_mean(pic, x + 80, y + 50, 160, 80);
                let want = if id == 1 { want1 } else { colour(id) };
                for k in 0..3 {
                    assert!(
                        (got[k] - f64::from(want[k])).abs() < 6.0,
                        "frame {frame} tile {id}: {got:?} vs {want:?}"
                    );
                }
            }
        }
        assert_eq!(m.counters().decode_errors, 0);
    }

    #[test]
    fn equal_settings_share_an_encoder_and_different_ones_do_not() {
        let t0 = Instant::now();
        let mut m = mixer(t0);
        for id in 1..=8 {
            m.add_participant(id, "v", true);
            m.push_frame(t0, id, I420Frame::filled(160, 90, colour(id)).expect("f"));
        }
        let base = settings("4", 640, 360);
        m.set_terminal(1, &base).expect("1");
        m.set_terminal(2, &base).expect("2");
        // 1.2 Mbit/s falls into the same 1 Mbit/s tier.
        m.set_terminal(
            3,
            &TerminalSettings {
                bitrate_bps: 1_200_000,
                ..base.clone()
            },
        )
        .expect("3");
        assert_eq!(m.encoder_count(), 1);
        m.set_terminal(4, &settings("9", 640, 360)).expect("4");
        m.set_terminal(5, &settings("4", 320, 180)).expect("5");
        m.set_terminal(
            6,
            &TerminalSettings {
                fps: 30,
                ..base.clone()
            },
        )
        .expect("6");
        m.set_terminal(
            7,
            &TerminalSettings {
                self_view: false,
                ..base.clone()
            },
        )
        .expect("7");
        assert_eq!(
            m.encoder_count(),
            5,
            "4@360p, 9@360p, 4@180p, 4@360p30, 4@360p without 7"
        );
        m.handle_timeout(t0).expect("tick");
        let outs = drain(&mut m);
        let videos: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Video { key, to, .. } => Some((key.clone(), to.clone())),
                Output::RequestKeyframe(_) => None,
            })
            .collect();
        assert_eq!(videos.len(), 5, "one encode per distinct output");
        let shared = videos
            .iter()
            .find(|(k, _)| k == m.terminal_key(1).expect("key"))
            .expect("group");
        assert_eq!(shared.1, vec![1, 2, 3]);
        // Terminal 7's picture leaves 7 out: its 4 tiles show 1, 2, 3, 4 and so does the
        // shared one, but with 7 in place of nobody. Check the hidden key differs.
        assert_eq!(m.terminal_key(7).expect("7").hidden, Some(7));
        // Moving terminals onto the shared settings retires their encoders.
        for id in [4, 5, 6] {
            m.set_terminal(id, &base).expect("same");
        }
        m.clear_terminal(7);
        assert_eq!(m.encoder_count(), 1);
        m.handle_timeout(t0 + Duration::from_millis(70))
            .expect("tick");
        assert_eq!(m.groups.len(), 1);
    }

    #[test]
    fn roll_call_full_screen_shows_only_the_named_venue() {
        let t0 = Instant::now();
        let mut m = mixer(t0);
        for id in 1..=4 {
            m.add_participant(id, "v", true);
            m.push_frame(t0, id, I420Frame::filled(320, 180, colour(id)).expect("f"));
        }
        m.set_terminal(1, &settings("4", 320, 180)).expect("t");
        m.set_mode(
            t0,
            Mode::RollCall {
                venue: 3,
                full_screen: true,
            },
        );
        m.handle_timeout(t0).expect("tick");
        let key = m.terminal_key(1).expect("k").clone();
        let c = m.canvas(&key).expect("canvas");
        for (x, y) in [(10, 10), (300, 10), (10, 160), (300, 160)] {
            let got = region_mean(c, x, y, 8, 8);
            assert!((got[0] - f64::from(colour(3)[0])).abs() < 2.0, "{got:?}");
        }
    }

    #[test]
    fn bad_inputs_are_counted_and_the_mix_keeps_running() {
        let t0 = Instant::now();
        let mut m = mixer(t0);
        // Zero participants: nothing to send, nothing breaks.
        m.handle_timeout(t0).expect("empty meeting");
        assert!(drain(&mut m).is_empty());
        // One participant that hides itself: an empty picture still goes out.
        m.add_participant(1, "一", true);
        m.set_terminal(
            1,
            &TerminalSettings {
                self_view: false,
                ..settings("4", 320, 180)
            },
        )
        .expect("t");
        m.handle_timeout(t0).expect("tick");
        assert_eq!(drain(&mut m).len(), 1);
        assert_eq!(m.counters().empty_frames, 1);

        // Unknown layout: error, counted, default layout used.
        m.add_participant(2, "二", true);
        let err = m.set_terminal(2, &settings("no-such-layout", 320, 180));
        assert!(matches!(err, Err(Error::UnknownLayout(_))));
        assert_eq!(m.terminal_key(2).expect("fallback").layout, "4");
        assert_eq!(m.counters().unknown_layouts, 1);
        // Out-of-range settings are clamped.
        m.add_participant(9, "九", true);
        m.set_terminal(
            9,
            &TerminalSettings {
                width: 10_000,
                height: 7,
                fps: 500,
                ..settings("1", 1, 1)
            },
        )
        .expect("t");
        assert_eq!(m.counters().bad_settings, 1);
        m.clear_terminal(9);

        // Participant 3 has no video at all.
        m.add_participant(3, "三", false);
        // Participant 2 sends garbage, then a truncated IDR, then a good stream.
        let mut enc = H264Encoder::new(H264EncoderConfig {
            allow_frame_skip: false,
            ..Default::default()
        })
        .expect("e");
        let idr = enc
            .encode(&I420Frame::filled(320, 180, colour(2)).expect("f"))
            .expect("e")
            .expect("p");
        let mut now = t0;
        m.push_access_unit(now, 2, &[0, 0, 0, 1, 0x67, 0xff, 0xff, 0xff, 0xff]);
        m.push_access_unit(now, 2, &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        m.push_access_unit(now, 2, &idr.data[..idr.data.len() / 2]);
        let errors = m.counters().decode_errors;
        let outs = drain(&mut m);
        if errors > 0 {
            assert_eq!(
                outs,
                vec![Output::RequestKeyframe(2)],
                "one PLI per broken episode"
            );
        }
        // Resolution change mid-stream on participant 1.
        m.push_frame(now, 1, I420Frame::filled(320, 180, colour(1)).expect("f"));
        m.push_frame(now, 1, I420Frame::filled(176, 144, colour(1)).expect("f"));
        assert_eq!(m.counters().resolution_changes, 1);
        m.push_frame(now, 77, I420Frame::filled(16, 16, [0; 3]).expect("f"));
        assert_eq!(m.counters().unknown_participant, 1);
        for _ in 0..5 {
            now += Duration::from_millis(67);
            m.handle_timeout(now).expect("tick");
        }
        let c = m.counters();
        assert!(c.no_video_tiles >= 5, "{c:?}");
        // Every tick either encoded a picture or counted an unchanged one (nothing moved).
        assert!(c.frames_encoded >= 1, "{c:?}");
        assert!(c.frames_encoded + c.unchanged_frames >= 6, "{c:?}");
        // Participant 2 recovers with a whole IDR: decoded picture, tile back to video.
        enc.force_keyframe();
        let idr = enc
            .encode(&I420Frame::filled(320, 180, colour(2)).expect("f"))
            .expect("e")
            .expect("p");
        m.push_access_unit(now, 2, &idr.data);
        let key = m.terminal_key(2).expect("k").clone();
        m.handle_timeout(now + Duration::from_millis(70))
            .expect("tick");
        let canvas = m.canvas(&key).expect("canvas");
        // Tile order: 1, 2, 9, 3; tile 2 is top-right.
        let got = region_mean(canvas, 200, 30, 60, 30);
        assert!(
            (got[0] - f64::from(colour(2)[0])).abs() < 4.0,
            "recovered tile {got:?}"
        );
        // Stale video becomes "signal lost", never a frozen picture.
        let lost_before = m.counters().lost_video_tiles;
        m.handle_timeout(now + Duration::from_secs(5))
            .expect("tick");
        assert!(m.counters().lost_video_tiles > lost_before);
    }

    /// Patterned (not flat) pictures so a misplaced or stale tile changes pixels.
    fn pattern(w: usize, h: usize, seed: u8) -> I420Frame {
        let mut f = I420Frame::filled(w, h, colour(u64::from(seed % 4) + 1)).expect("f");
        for (i, p) in f.y.iter_mut().enumerate() {
            *p = p.wrapping_add(((i % w) as u8 / 16).wrapping_mul(seed));
        }
        f
    }

    #[test]
    fn redrawing_only_changed_tiles_equals_a_full_composition() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(100);
        let font = || TextRenderer::from_file(crate::text::DEFAULT_FONT).ok();
        let mk = || {
            MeetingMixer::new(t0, EngineConfig::default(), LayoutSet::default(), font())
                .expect("mixer")
        };
        let (mut inc, mut full) = (mk(), mk());
        for m in [&mut inc, &mut full] {
            for id in 1..=4 {
                m.add_participant(id, &format!("会场{id}"), true);
                m.push_frame(t0, id, pattern(320, 180, id as u8));
            }
            // "pip" overlaps: the small tile lies on the main one and must be repainted
            // when only the main tile's source changes.
            m.set_terminal(1, &settings("4", 640, 360)).expect("t");
            m.set_terminal(2, &settings("pip", 640, 360)).expect("t");
        }
        inc.handle_timeout(t0).expect("tick");
        // Between the two ticks: participant 1 (main tile of "pip") and 3 send new
        // pictures, 4 switches its camera off.
        for m in [&mut inc, &mut full] {
            m.push_frame(t1, 1, pattern(320, 180, 9));
            m.push_frame(t1, 3, pattern(320, 180, 11));
            m.set_has_video(4, false).expect("p");
        }
        inc.handle_timeout(t1).expect("tick");
        full.handle_timeout(t1).expect("tick");
        for id in [1, 2] {
            let key = inc.terminal_key(id).expect("key").clone();
            assert!(
                inc.canvas(&key) == full.canvas(&key),
                "incremental canvas of {} differs from a full composition",
                key.layout
            );
        }
    }

    #[test]
    fn an_unchanged_picture_is_not_re_encoded_but_keyframes_and_refreshes_are() {
        let t0 = Instant::now();
        let mut m = mixer(t0);
        for id in 1..=2 {
            m.add_participant(id, "v", true);
            m.push_frame(t0, id, pattern(160, 90, id as u8));
        }
        m.set_terminal(1, &settings("2", 320, 180)).expect("t");
        let videos = |m: &mut MeetingMixer| {
            drain(m)
                .into_iter()
                .filter(|o| matches!(o, Output::Video { .. }))
                .count()
        };
        m.handle_timeout(t0).expect("tick");
        assert_eq!(videos(&mut m), 1);
        // Nothing new: no encode.
        let t = t0 + Duration::from_millis(67);
        m.handle_timeout(t).expect("tick");
        assert_eq!(videos(&mut m), 0);
        assert_eq!(m.counters().unchanged_frames, 1);
        // A keyframe request is honoured even when nothing changed.
        m.request_keyframe(1);
        let t = t + Duration::from_millis(67);
        m.handle_timeout(t).expect("tick");
        let outs = drain(&mut m);
        assert!(
            matches!(outs.as_slice(), [Output::Video { picture, .. }] if picture.keyframe),
            "{outs:?}"
        );
        // A new picture from one venue is encoded.
        m.push_frame(t, 2, pattern(160, 90, 7));
        let t = t + Duration::from_millis(67);
        m.handle_timeout(t).expect("tick");
        assert_eq!(videos(&mut m), 1);
        // Also when the canvas was composed ahead of the tick (benchmarks time the stages
        // apart): the tick then sees no new change but must still encode it.
        m.push_frame(t, 1, pattern(160, 90, 5));
        let key = m.terminal_key(1).expect("key").clone();
        let t = t + Duration::from_millis(67);
        m.compose(t, &key);
        m.handle_timeout(t).expect("tick");
        assert_eq!(videos(&mut m), 1);
        // Cameras off: a static picture is still sent once a second (30 ticks at 15 fps
        // = 2 s: the placeholder change, then refreshes).
        m.set_has_video(1, false).expect("p");
        m.set_has_video(2, false).expect("p");
        let mut sent = 0;
        let mut now = t;
        for _ in 0..30 {
            now += Duration::from_millis(67);
            m.handle_timeout(now).expect("tick");
            sent += videos(&mut m);
        }
        assert!(
            (2..=3).contains(&sent),
            "{sent} pictures for a static screen in 2 s"
        );
    }

    #[test]
    fn hundred_participants_in_a_36_picture_layout() {
        let t0 = Instant::now();
        let mut m = mixer(t0);
        for id in 1..=100 {
            m.add_participant(id, "村", id % 7 != 0);
            m.push_frame(t0, id, I420Frame::filled(160, 90, colour(id)).expect("f"));
        }
        m.set_terminal(1, &settings("36", 640, 360)).expect("t");
        m.set_terminal(2, &settings("1+12", 640, 360)).expect("t");
        m.handle_timeout(t0).expect("tick");
        assert_eq!(drain(&mut m).len(), 2);
        let c = m.counters();
        assert_eq!(c.overflow_frames, 2);
        assert!(
            c.no_video_tiles >= 5,
            "every 7th venue has no camera: {c:?}"
        );
        for id in 1..=100 {
            m.remove_participant(id);
        }
        assert_eq!(m.encoder_count(), 0);
        m.handle_timeout(t0 + Duration::from_secs(1)).expect("tick");
        assert!(drain(&mut m).is_empty());
    }
}
