//! The MCU as a participant of the SFU: a sans-IO client that joins a meeting through
//! signalling protocol v1 (docs/signaling.md) like any other client, subscribes to the
//! camera, screen and microphone tracks, mixes them with a [`MeetingMixer`] and publishes
//! the mix (and, while someone shares, the content as a second stream) as ordinary tracks.
//!
//! It owns two str0m peer connections (publish: we offer; subscribe: the SFU offers) and
//! speaks JSON text; it never touches the SFU's internals, so it can run in-process
//! (`huitong serve`, over `signaling::local`) or on another node (over the WebSocket).
//! Inputs: [`McuClient::handle_signal`], [`McuClient::handle_datagram`],
//! [`McuClient::handle_timeout`]; outputs: [`McuClient::poll_output`]. Time is an argument.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::codec::openh264::{
    EncodedPicture, H264Decoder, H264Encoder, H264EncoderConfig, I420Frame,
};
use media::codec::opus::FRAME_SAMPLES;
use media::recovery::FrameMarking;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpApi, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Pt,
};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Event, Rtc};

use crate::Error;
use crate::audio::{AudioCodec, AudioSession, MixerConfig};
use crate::engine::{EngineConfig, MeetingMixer, Output as MixOutput, OutputKey, TerminalSettings};
use crate::layout::LayoutSet;
use crate::mode::ParticipantId;
use crate::text::TextRenderer;

/// The name the MCU joins under; clients show it as the participant's name.
pub const MCU_NAME: &str = "会议画面";

/// Inputs are asked for again at most this often when their picture is broken.
const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(500);
/// How often the tile sizes are compared with what was asked of the SFU.
const SIZE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// The `view` label of the meeting's own mix track.
const MIX_VIEW: &str = "mix";
/// The `view` label of a participant's own audio mix track.
const AUDIO_VIEW: &str = "audio";
/// One round of audio mixing.
const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// Mixing rounds missed by more than this (a stalled task) are skipped, not bursted.
const AUDIO_MAX_CATCH_UP: u32 = 5;
/// Distinct pictures one MCU publishes besides its own mix; more requests share the
/// closest existing one rather than grow the CPU bill without bound.
const MAX_VIEWS: usize = 16;

/// What one MCU publishes.
#[derive(Debug, Clone)]
pub struct McuClientConfig {
    /// The meeting number to join.
    pub meeting: String,
    /// Participant name.
    pub name: String,
    /// The mix: layout, size, frame rate, bitrate (`self_view` is ignored).
    pub mix: TerminalSettings,
    /// Frame rate of the content (dual) stream.
    pub content_fps: u32,
    /// Bitrate of the content stream.
    pub content_bitrate_bps: u32,
    /// Mixer settings.
    pub engine: EngineConfig,
    /// Temporal layers of every mixed output (1..=4): with 2, the SFU can send a weak
    /// receiver the mix at half the frame rate from the same encode.
    pub temporal_layers: u8,
}

impl Default for McuClientConfig {
    fn default() -> Self {
        Self {
            meeting: String::new(),
            name: MCU_NAME.into(),
            mix: TerminalSettings {
                self_view: false,
                ..TerminalSettings::default()
            },
            content_fps: 5,
            content_bitrate_bps: 1_500_000,
            engine: EngineConfig::default(),
            temporal_layers: 2,
        }
    }
}

/// Which of the two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcSide {
    /// We offer, we send the mix and content.
    Publish,
    /// The SFU offers, we receive the inputs.
    Subscribe,
}

/// Something for the shell to do.
#[derive(Debug)]
pub enum ClientOutput {
    /// Send this signalling message (JSON text).
    Signal(String),
    /// Send this datagram from the socket of `pc`.
    Transmit(PcSide, Transmit),
    /// Call [`McuClient::handle_timeout`] at this time.
    Timeout(Instant),
    /// The MCU left the meeting (nobody to mix for, removed, or told to stop).
    Done,
}

#[derive(Debug, Clone)]
struct Track {
    owner: ParticipantId,
    kind: String,
    source: String,
}

#[derive(Debug)]
struct Person {
    camera_muted: bool,
}

/// A picture some participants asked for with `mcu_view`, published as its own track.
#[derive(Debug)]
struct View {
    label: String,
    mid: Option<Mid>,
    /// Its track id, once the server has announced it.
    track: Option<String>,
}

/// Send m-lines of outputs nobody wants any more. A line is offered inactive (so the SFU
/// unpublishes its track) before it is reused: reused within the same offer, the SFU
/// would keep the old track, with the old label and audience.
#[derive(Debug, Default)]
struct MidPool {
    retired: Vec<Mid>,
    free: Vec<Mid>,
}

impl MidPool {
    fn retire(&mut self, mid: Mid) {
        self.retired.push(mid);
    }

    /// A line for a new output: a free one switched back on, or a new one.
    fn take(&mut self, api: &mut SdpApi<'_>, kind: MediaKind, stream: String, track: &str) -> Mid {
        match self.free.pop() {
            Some(mid) => {
                api.set_direction(mid, Direction::SendOnly);
                mid
            }
            None => api.add_media(
                kind,
                Direction::SendOnly,
                Some(stream.clone()),
                Some(format!("{stream}-{track}")),
                None,
            ),
        }
    }

    /// Turns off the lines retired since the last offer; they are free from the next.
    fn offer_retired(&mut self, api: &mut SdpApi<'_>) {
        for mid in self.retired.drain(..) {
            api.set_direction(mid, Direction::Inactive);
            self.free.push(mid);
        }
    }
}

struct Content {
    track: String,
    decoder: Option<H264Decoder>,
    encoder: Option<H264Encoder>,
    frame: Option<I420Frame>,
    next_due: Option<Instant>,
}

/// Counters of the client (the mixer has its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Mixed pictures written to the publish pc.
    pub mix_frames_sent: u64,
    /// Content pictures written to the publish pc.
    pub content_frames_sent: u64,
    /// Audio mix frames written to the publish pc (all listeners together).
    pub audio_frames_sent: u64,
    /// Video frames received from inputs.
    pub input_frames: u64,
    /// Keyframe requests sent to inputs.
    pub keyframe_requests_sent: u64,
    /// Signalling errors the server answered with.
    pub signal_errors: u64,
}

/// One meeting's MCU, as a client of the SFU.
pub struct McuClient {
    cfg: McuClientConfig,
    mixer: MeetingMixer,
    me: Option<ParticipantId>,
    pub_rtc: Rtc,
    sub_rtc: Rtc,
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    pub_pending: Option<SdpPendingOffer>,
    /// The publish pc must be (re)negotiated once the outstanding offer is answered.
    pub_dirty: bool,
    mix_mid: Option<Mid>,
    content_mid: Option<Mid>,
    pts: HashMap<Mid, Pt>,
    people: BTreeMap<ParticipantId, Person>,
    tracks: HashMap<String, Track>,
    sub_mids: HashMap<Mid, String>,
    asked_size: HashMap<String, (usize, usize)>,
    next_size_check: Instant,
    got_key: HashMap<Mid, bool>,
    last_kf_req: HashMap<Mid, Instant>,
    content: Option<Content>,
    /// Pictures of their own that participants asked for, by output.
    views: BTreeMap<OutputKey, View>,
    /// m-lines of views nobody wants any more, inactive until reused.
    view_mids: MidPool,
    /// The meeting's sound, decoded and mixed for those who asked (`mcu_view.audio`).
    audio: AudioSession,
    /// Who asked for the audio mix, and the m-line of its own track once offered.
    audio_outs: BTreeMap<ParticipantId, Option<Mid>>,
    audio_mids: MidPool,
    /// When the next round of audio is mixed (`None` while nobody listens).
    audio_due: Option<Instant>,
    /// Audio rounds mixed, the RTP clock of every audio output.
    audio_rounds: u64,
    next_view: u64,
    /// Track id of our own mix, once announced.
    mix_track: Option<String>,
    /// The track each participant was last told is its picture.
    routed: HashMap<ParticipantId, Option<String>>,
    media_start: Instant,
    pub_timeout: Instant,
    sub_timeout: Instant,
    out: VecDeque<ClientOutput>,
    counters: ClientCounters,
    /// TL0PICIDX per mixed output.
    tl0: HashMap<Mid, u8>,
    done: bool,
}

impl std::fmt::Debug for McuClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McuClient")
            .field("meeting", &self.cfg.meeting)
            .field("me", &self.me)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn parse_pid(s: &str) -> Option<ParticipantId> {
    s.strip_prefix('p')?.parse().ok()
}

fn new_rtc(now: Instant, local: SocketAddr) -> Rtc {
    // H.264 is what the mixer decodes and encodes; Opus carries the audio levels.
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .set_extension(
            sfu::protect::FRAME_MARKING_EXT_ID,
            sfu::protect::frame_marking_extension(),
        )
        .build(now);
    if let Ok(c) = Candidate::host(local, "udp") {
        rtc.add_local_candidate(c);
    }
    rtc
}

impl McuClient {
    /// A client whose publish and subscribe pcs use sockets bound at `pub_addr` and
    /// `sub_addr`. It starts by joining (see [`McuClient::poll_output`]).
    pub fn new(
        now: Instant,
        mut cfg: McuClientConfig,
        layouts: LayoutSet,
        font: Option<TextRenderer>,
        pub_addr: SocketAddr,
        sub_addr: SocketAddr,
    ) -> Result<Self, Error> {
        // Without temporal scalability every picture is base layer.
        cfg.temporal_layers = if cfg.engine.encoder.temporal_scalable() {
            cfg.temporal_layers.clamp(1, 4)
        } else {
            1
        };
        let mut mixer = MeetingMixer::new(now, cfg.engine.clone(), layouts, font)?;
        mixer.set_encoder_template(H264EncoderConfig {
            temporal_layers: cfg.temporal_layers,
            ..crate::engine::default_output_encoder()
        });
        let join = json!({"type": "join", "v": 1, "id": "join", "meeting": cfg.meeting,
            "name": cfg.name, "kind": "mcu"});
        let mut out = VecDeque::new();
        out.push_back(ClientOutput::Signal(join.to_string()));
        Ok(Self {
            mixer,
            me: None,
            pub_rtc: new_rtc(now, pub_addr),
            sub_rtc: new_rtc(now, sub_addr),
            pub_addr,
            sub_addr,
            pub_pending: None,
            pub_dirty: false,
            mix_mid: None,
            content_mid: None,
            pts: HashMap::new(),
            people: BTreeMap::new(),
            tracks: HashMap::new(),
            sub_mids: HashMap::new(),
            asked_size: HashMap::new(),
            next_size_check: now,
            got_key: HashMap::new(),
            last_kf_req: HashMap::new(),
            content: None,
            views: BTreeMap::new(),
            view_mids: MidPool::default(),
            audio: AudioSession::new(MixerConfig::default()),
            audio_outs: BTreeMap::new(),
            audio_mids: MidPool::default(),
            audio_due: None,
            audio_rounds: 0,
            next_view: 1,
            mix_track: None,
            routed: HashMap::new(),
            media_start: now,
            pub_timeout: now,
            sub_timeout: now,
            out,
            counters: ClientCounters::default(),
            tl0: HashMap::new(),
            done: false,
            cfg,
        })
    }

    /// Our participant id, once joined.
    pub fn participant(&self) -> Option<ParticipantId> {
        self.me
    }

    /// Client counters.
    pub fn counters(&self) -> ClientCounters {
        self.counters
    }

    /// The mixer (for its counters and encoder count).
    pub fn mixer(&self) -> &MeetingMixer {
        &self.mixer
    }

    /// The host changed the layout.
    pub fn set_layout(&mut self, layout: &str) {
        self.cfg.mix.layout = layout.to_string();
        self.apply_terminal();
        self.sync_views();
    }

    /// Leaves the meeting.
    pub fn stop(&mut self) {
        if !self.done {
            self.out
                .push_back(ClientOutput::Signal(json!({"type": "leave"}).to_string()));
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.pub_rtc.disconnect();
        self.sub_rtc.disconnect();
        self.out.push_back(ClientOutput::Done);
    }

    fn signal(&mut self, v: Value) {
        self.out.push_back(ClientOutput::Signal(v.to_string()));
    }

    fn apply_terminal(&mut self) {
        let Some(me) = self.me else { return };
        // The MCU is no venue, so "self view" hides nothing; on, its key equals that of
        // a participant asking for the same picture, and they share the encode.
        let settings = TerminalSettings {
            self_view: true,
            ..self.cfg.mix.clone()
        };
        if let Err(e) = self.mixer.set_terminal(me, &settings) {
            tracing::warn!(meeting = %self.cfg.meeting, error = %e, "MCU layout refused; using the default");
        }
    }

    /// One signalling message from the server.
    pub fn handle_signal(&mut self, now: Instant, text: &str) {
        let Ok(m) = serde_json::from_str::<Value>(text) else {
            tracing::warn!("MCU: unreadable signalling message");
            return;
        };
        if let Err(e) = self.on_signal(now, &m) {
            tracing::warn!(meeting = %self.cfg.meeting, kind = %m["type"], error = %e, "MCU signalling");
        }
    }

    fn on_signal(&mut self, now: Instant, m: &Value) -> Result<(), String> {
        match m["type"].as_str().unwrap_or_default() {
            "joined" => {
                let me = m["participant"]
                    .as_str()
                    .and_then(parse_pid)
                    .ok_or("joined without an id")?;
                self.me = Some(me);
                // Our own entry is the output terminal of the shared mix, never a venue.
                self.mixer.add_viewer(me, &self.cfg.name);
                self.apply_terminal();
                for p in m["participants"].as_array().into_iter().flatten() {
                    self.on_participant(p);
                }
                for t in m["tracks"].as_array().into_iter().flatten() {
                    self.on_track_published(t);
                }
                self.pub_dirty = true;
                self.offer_if_needed();
                if !self.has_people() {
                    self.stop();
                }
            }
            "participant_joined" | "participant_updated" => self.on_participant(&m["participant"]),
            "participant_left" => {
                if let Some(pid) = m["participant"].as_str().and_then(parse_pid) {
                    self.people.remove(&pid);
                    self.mixer.remove_participant(pid);
                    let sharing = self
                        .content
                        .as_ref()
                        .is_some_and(|c| self.tracks.get(&c.track).is_some_and(|t| t.owner == pid));
                    self.tracks.retain(|_, t| t.owner != pid);
                    self.routed.remove(&pid);
                    self.set_audio_out(pid, false);
                    self.audio.remove(pid);
                    if sharing {
                        self.stop_content(now);
                    }
                    self.sync_views();
                    if !self.has_people() {
                        tracing::info!(meeting = %self.cfg.meeting, "MCU: nobody left to mix for");
                        self.stop();
                    }
                }
            }
            "track_published" => self.on_track_published(&m["track"]),
            "mcu_view" => self.on_view_request(m),
            "track_unpublished" => {
                let id = m["track"].as_str().unwrap_or_default().to_string();
                self.forget_own_track(&id);
                if let Some(t) = self.tracks.remove(&id) {
                    self.asked_size.remove(&id);
                    if t.source == "camera" {
                        self.refresh_has_video(t.owner);
                    }
                    if self.content.as_ref().is_some_and(|c| c.track == id) {
                        self.stop_content(now);
                    }
                }
            }
            "offer" if m["pc"] == "sub" => {
                let offer = SdpOffer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())
                    .map_err(|e| format!("subscribe offer: {e}"))?;
                let answer = self
                    .sub_rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| format!("subscribe offer: {e}"))?;
                self.sub_mids.clear();
                for t in m["tracks"].as_array().into_iter().flatten() {
                    if let (Some(mid), Some(id)) = (t["mid"].as_str(), t["id"].as_str()) {
                        self.sub_mids.insert(Mid::from(mid), id.to_string());
                    }
                }
                self.signal(json!({"type": "answer", "pc": "sub", "sdp": answer.to_sdp_string()}));
            }
            "answer" if m["pc"] == "pub" => {
                let pending = self.pub_pending.take().ok_or("answer without an offer")?;
                let answer = SdpAnswer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())
                    .map_err(|e| format!("publish answer: {e}"))?;
                self.pub_rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .map_err(|e| format!("publish answer: {e}"))?;
                self.pick_payload_types();
                self.offer_if_needed();
            }
            "removed" => {
                tracing::info!(meeting = %self.cfg.meeting, "MCU removed from the meeting");
                self.finish();
            }
            "error" => {
                self.counters.signal_errors += 1;
                tracing::warn!(meeting = %self.cfg.meeting, code = %m["code"], message = %m["message"], "MCU: server refused");
                if m["re"] == "join" {
                    self.finish();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn has_people(&self) -> bool {
        !self.people.is_empty()
    }

    fn on_participant(&mut self, p: &Value) {
        let Some(pid) = p["id"].as_str().and_then(parse_pid) else {
            return;
        };
        if Some(pid) == self.me || p["kind"] == "mcu" {
            return;
        }
        let camera_muted = p["camera_muted"].as_bool().unwrap_or(false);
        if !self.people.contains_key(&pid) {
            self.mixer
                .add_participant(pid, p["name"].as_str().unwrap_or("?"), false);
        }
        self.people.insert(pid, Person { camera_muted });
        self.refresh_has_video(pid);
    }

    fn refresh_has_video(&mut self, pid: ParticipantId) {
        let Some(person) = self.people.get(&pid) else {
            return;
        };
        let camera = self
            .tracks
            .values()
            .any(|t| t.owner == pid && t.kind == "video" && t.source == "camera");
        let _ = self
            .mixer
            .set_has_video(pid, camera && !person.camera_muted);
    }

    fn on_track_published(&mut self, t: &Value) {
        let (Some(id), Some(owner)) = (
            t["id"].as_str(),
            t["participant"].as_str().and_then(parse_pid),
        ) else {
            return;
        };
        if Some(owner) == self.me {
            self.on_own_track(id, t["view"].as_str());
            return;
        }
        let track = Track {
            owner,
            kind: t["kind"].as_str().unwrap_or_default().to_string(),
            source: t["source"].as_str().unwrap_or_default().to_string(),
        };
        self.tracks.insert(id.to_string(), track.clone());
        if track.kind != "video" {
            return;
        }
        if track.source == "camera" {
            self.refresh_has_video(owner);
            // Until we know its tile, take the smallest layer rather than the biggest.
            self.signal(json!({"type": "subscribe", "track": id, "quality": "low"}));
        } else if track.source == "screen" && self.people.contains_key(&owner) {
            self.start_content(id);
        }
    }

    /// The server announced one of our own tracks: learn its id so participants can be
    /// told which track is their picture.
    fn on_own_track(&mut self, id: &str, view: Option<&str>) {
        match view {
            Some(MIX_VIEW) => self.mix_track = Some(id.to_string()),
            Some(label) => {
                if let Some(v) = self.views.values_mut().find(|v| v.label == label) {
                    v.track = Some(id.to_string());
                }
            }
            None => return,
        }
        self.route();
    }

    fn forget_own_track(&mut self, id: &str) {
        if self.mix_track.as_deref() == Some(id) {
            self.mix_track = None;
        }
        for v in self.views.values_mut() {
            if v.track.as_deref() == Some(id) {
                v.track = None;
            }
        }
    }

    /// `mcu_view`: a participant wants its own layout/size/rate (or no longer does).
    fn on_view_request(&mut self, m: &Value) {
        let Some(pid) = m["participant"].as_str().and_then(parse_pid) else {
            return;
        };
        if !self.people.contains_key(&pid) {
            tracing::debug!(participant = pid, "MCU: view for someone not (yet) here");
            return;
        }
        let v = &m["view"];
        self.set_audio_out(pid, v["audio"].as_bool().unwrap_or(false));
        if v.is_null() {
            self.mixer.clear_terminal(pid);
        } else {
            let num = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
            let d = &self.cfg.mix;
            let settings = TerminalSettings {
                layout: v["layout"].as_str().unwrap_or(&d.layout).to_string(),
                width: num("width").map_or(d.width, |w| w as usize),
                height: num("height").map_or(d.height, |h| h as usize),
                fps: num("fps").unwrap_or(d.fps),
                bitrate_bps: num("bitrate_bps").unwrap_or(d.bitrate_bps),
                self_view: v["self_view"].as_bool().unwrap_or(true),
            };
            let want_new = self.mixer.terminal_key(pid).is_none();
            if let Err(e) = self.mixer.set_terminal(pid, &settings) {
                tracing::info!(participant = pid, error = %e, "MCU view: using the default layout");
            }
            // Over the cap, a new picture is refused: the participant keeps the shared mix.
            let key = self.mixer.terminal_key(pid).cloned();
            let default = self.me.and_then(|me| self.mixer.terminal_key(me)).cloned();
            if key.as_ref().is_some_and(|k| {
                Some(k) != default.as_ref()
                    && !self.views.contains_key(k)
                    && self.views.len() >= MAX_VIEWS
            }) {
                tracing::warn!(
                    participant = pid,
                    "MCU: too many distinct views; sending the shared mix"
                );
                if want_new {
                    self.mixer.clear_terminal(pid);
                }
                self.routed.remove(&pid);
                if let Some(track) = self.mix_track.clone() {
                    self.send_route(pid, Some(track));
                }
                return;
            }
        }
        self.sync_views();
    }

    /// Publishes a track per distinct requested picture and retires unused ones.
    fn sync_views(&mut self) {
        let default = self.me.and_then(|me| self.mixer.terminal_key(me)).cloned();
        let wanted: BTreeSet<OutputKey> = self
            .people
            .keys()
            .filter_map(|p| self.mixer.terminal_key(*p))
            .filter(|k| Some(*k) != default.as_ref())
            .cloned()
            .collect();
        let before = self.views.len();
        let pool = &mut self.view_mids;
        self.views.retain(|k, v| {
            let keep = wanted.contains(k);
            if !keep && let Some(mid) = v.mid {
                pool.retire(mid);
            }
            keep
        });
        let mut changed = before != self.views.len();
        for key in wanted {
            if self.views.contains_key(&key) {
                continue;
            }
            let label = format!(
                "{} {}x{}@{} #{}",
                key.layout, key.width, key.height, key.fps, self.next_view
            );
            self.next_view += 1;
            self.views.insert(
                key,
                View {
                    label,
                    mid: None,
                    track: None,
                },
            );
            changed = true;
        }
        if changed {
            self.pub_dirty = true;
            self.offer_if_needed();
        }
        self.route();
    }

    /// Tells each participant with a picture of its own which track carries it.
    fn route(&mut self) {
        let default = self.me.and_then(|me| self.mixer.terminal_key(me)).cloned();
        let people: Vec<ParticipantId> = self.people.keys().copied().collect();
        for pid in people {
            let want = match self.mixer.terminal_key(pid) {
                None => None,
                Some(k) if Some(k) == default.as_ref() => self.mix_track.clone(),
                Some(k) => self.views.get(k).and_then(|v| v.track.clone()),
            };
            let told = self.routed.get(&pid).cloned().flatten();
            // Nothing to say until the track exists, unless an earlier answer is now void.
            if want == told || (want.is_none() && !self.routed.contains_key(&pid)) {
                continue;
            }
            self.send_route(pid, want);
        }
    }

    fn send_route(&mut self, pid: ParticipantId, track: Option<String>) {
        self.routed.insert(pid, track.clone());
        self.signal(json!({"type": "mcu_route", "participant": format!("p{pid}"), "track": track}));
    }

    fn start_content(&mut self, track: &str) {
        // The latest share wins, as in the clients.
        self.content = Some(Content {
            track: track.to_string(),
            decoder: None,
            encoder: None,
            frame: None,
            next_due: None,
        });
        self.pub_dirty = true;
        self.offer_if_needed();
    }

    fn stop_content(&mut self, now: Instant) {
        self.content = None;
        self.mixer.push_content(now, None);
        if self.content_mid.is_some() {
            self.pub_dirty = true;
            self.offer_if_needed();
        }
    }

    fn offer_if_needed(&mut self) {
        if !self.pub_dirty || self.pub_pending.is_some() || self.done {
            return;
        }
        // The whole wanted state goes into one SdpApi: str0m keeps changes only until
        // `apply`, so they cannot be staged across calls.
        let me = self.me.unwrap_or_default();
        let mut api = self.pub_rtc.sdp_api();
        if self.mix_mid.is_none() {
            let stream = format!("mcu{me}");
            self.mix_mid = Some(api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(stream.clone()),
                Some(format!("{stream}-mix")),
                None,
            ));
        }
        for v in self.views.values_mut().filter(|v| v.mid.is_none()) {
            let stream = format!("mcu{me}v{}", self.next_view);
            self.next_view += 1;
            v.mid = Some(
                self.view_mids
                    .take(&mut api, MediaKind::Video, stream, "view"),
            );
        }
        for (pid, mid) in self.audio_outs.iter_mut().filter(|(_, m)| m.is_none()) {
            let stream = format!("mcu{me}a{pid}");
            *mid = Some(
                self.audio_mids
                    .take(&mut api, MediaKind::Audio, stream, "audio"),
            );
        }
        // Unused m-lines stay (inactive) for the next output, like the content one.
        self.view_mids.offer_retired(&mut api);
        self.audio_mids.offer_retired(&mut api);
        match (self.content.is_some(), self.content_mid) {
            (true, None) => {
                let stream = format!("mcu{me}c");
                self.content_mid = Some(api.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    Some(stream.clone()),
                    Some(format!("{stream}-content")),
                    None,
                ));
            }
            (true, Some(mid)) => api.set_direction(mid, Direction::SendOnly),
            // Inactive (not stopped) so the next share can reuse the m-line; the offer
            // leaves it undeclared and the SFU unpublishes the content track.
            (false, Some(mid)) => api.set_direction(mid, Direction::Inactive),
            (false, None) => {}
        }
        let Some((offer, pending)) = api.apply() else {
            self.pub_dirty = false;
            return;
        };
        self.pub_dirty = false;
        self.pub_pending = Some(pending);
        let mut tracks = vec![];
        if let Some(mid) = self.mix_mid {
            tracks.push(json!({"mid": mid.to_string(), "kind": "video", "source": "camera", "view": MIX_VIEW}));
        }
        for v in self.views.values() {
            if let Some(mid) = v.mid {
                tracks.push(json!({"mid": mid.to_string(), "kind": "video", "source": "camera", "view": v.label}));
            }
        }
        if let (Some(mid), Some(_)) = (self.content_mid, &self.content) {
            tracks.push(json!({"mid": mid.to_string(), "kind": "video", "source": "screen"}));
        }
        for (pid, mid) in &self.audio_outs {
            if let Some(mid) = mid {
                tracks.push(
                    json!({"mid": mid.to_string(), "kind": "audio", "source": "mic",
                    "view": AUDIO_VIEW, "audience": format!("p{pid}")}),
                );
            }
        }
        self.signal(json!({"type": "offer", "id": "pub", "pc": "pub", "sdp": offer.to_sdp_string(), "tracks": tracks}));
    }

    fn pick_payload_types(&mut self) {
        let views: Vec<Mid> = self.views.values().filter_map(|v| v.mid).collect();
        let video = [self.mix_mid, self.content_mid]
            .into_iter()
            .flatten()
            .chain(views);
        let audio = self.audio_outs.values().flatten().copied();
        let lines = video
            .map(|m| (m, Codec::H264))
            .chain(audio.map(|m| (m, Codec::Opus)))
            .collect::<Vec<_>>();
        for (mid, codec) in lines {
            let Some(w) = self.pub_rtc.writer(mid) else {
                continue;
            };
            let params: Vec<_> = w
                .payload_params()
                .filter(|p| p.spec().codec == codec)
                .collect();
            let pt = params
                .iter()
                .find(|p| p.spec().format.packetization_mode == Some(1))
                .or(params.first())
                .map(|p| p.pt());
            if let Some(pt) = pt {
                self.pts.insert(mid, pt);
            }
        }
    }

    /// A datagram arrived on the socket of `pc`.
    pub fn handle_datagram(&mut self, now: Instant, pc: PcSide, source: SocketAddr, buf: &[u8]) {
        let (rtc, local) = match pc {
            PcSide::Publish => (&mut self.pub_rtc, self.pub_addr),
            PcSide::Subscribe => (&mut self.sub_rtc, self.sub_addr),
        };
        let Ok(r) = Receive::new(Protocol::Udp, source, local, buf) else {
            return;
        };
        if let Err(e) = rtc.handle_input(str0m::Input::Receive(now, r)) {
            tracing::debug!(?pc, error = %e, "MCU: datagram refused");
        }
        self.drain_events(now);
    }

    /// Time passed: str0m timers, composing and encoding what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for rtc in [&mut self.pub_rtc, &mut self.sub_rtc] {
            if let Err(e) = rtc.handle_input(str0m::Input::Timeout(now)) {
                tracing::debug!(error = %e, "MCU: timeout input");
            }
        }
        self.drain_events(now);
        if self.done {
            return;
        }
        if now >= self.next_size_check {
            self.next_size_check = now + SIZE_CHECK_EVERY;
            self.ask_tile_sizes(now);
        }
        if self.mixer.poll_timeout().is_none_or(|t| t <= now) {
            if let Err(e) = self.mixer.handle_timeout(now) {
                tracing::warn!(error = %e, "MCU: mix failed");
            }
        }
        self.mix_audio(now);
        while let Some(o) = self.mixer.poll_output() {
            match o {
                MixOutput::Video { key, picture, .. } => {
                    let mine = self.me.and_then(|me| self.mixer.terminal_key(me)) == Some(&key);
                    let mid = if mine {
                        self.mix_mid
                    } else {
                        self.views.get(&key).and_then(|v| v.mid)
                    };
                    let marking = mid.map(|m| self.marking(m, &picture));
                    if self.write_marked(now, mid, &picture.data, marking) {
                        self.counters.mix_frames_sent += 1;
                    }
                }
                MixOutput::RequestKeyframe(pid) => {
                    let mids: Vec<Mid> = self
                        .sub_mids
                        .iter()
                        .filter(|(_, t)| {
                            self.tracks
                                .get(*t)
                                .is_some_and(|t| t.owner == pid && t.source == "camera")
                        })
                        .map(|(m, _)| *m)
                        .collect();
                    for mid in mids {
                        self.request_keyframe(now, mid);
                    }
                }
            }
        }
        self.encode_content(now);
    }

    fn ask_tile_sizes(&mut self, now: Instant) {
        let Some(key) = self.me.and_then(|me| self.mixer.terminal_key(me)).cloned() else {
            return;
        };
        let sizes: HashMap<ParticipantId, (usize, usize)> = self
            .mixer
            .tile_sizes(now, &key)
            .into_iter()
            .map(|(p, w, h)| (p, (w, h)))
            .collect();
        let mut asks = vec![];
        for (id, t) in &self.tracks {
            if t.kind != "video" || t.source != "camera" {
                continue;
            }
            // Not on screen: the smallest layer keeps the picture ready for its turn.
            let want = sizes.get(&t.owner).copied().unwrap_or((0, 0));
            if self.asked_size.get(id) != Some(&want) {
                asks.push((id.clone(), want));
            }
        }
        for (id, (w, h)) in asks {
            self.asked_size.insert(id.clone(), (w, h));
            if w == 0 {
                self.signal(json!({"type": "subscribe", "track": id, "quality": "low"}));
            } else {
                self.signal(json!({"type": "subscribe", "track": id, "quality": "high", "max_width": w, "max_height": h}));
            }
        }
    }

    fn encode_content(&mut self, now: Instant) {
        let fps = self.cfg.content_fps.max(1);
        let bitrate = self.cfg.content_bitrate_bps;
        let Some(c) = self.content.as_mut() else {
            return;
        };
        let Some(frame) = c.frame.as_ref() else {
            return;
        };
        if c.next_due.is_some_and(|t| t > now) {
            return;
        }
        let period = Duration::from_secs(1) / fps;
        c.next_due = Some(c.next_due.map_or(now, |t| (t + period).max(now)));
        if c.encoder.is_none() {
            let cfg = H264EncoderConfig {
                bitrate_bps: bitrate,
                fps: fps as f32,
                ..H264EncoderConfig::default()
            };
            match H264Encoder::new(cfg) {
                Ok(e) => c.encoder = Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "MCU: content encoder");
                    return;
                }
            }
        }
        let Some(enc) = c.encoder.as_mut() else {
            return;
        };
        let data = match enc.encode(frame) {
            Ok(Some(p)) => p.data,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "MCU: content encode failed");
                return;
            }
        };
        if self.write(now, self.content_mid, &data) {
            self.counters.content_frames_sent += 1;
        }
    }

    /// Starts or stops `pid`'s own audio mix track.
    fn set_audio_out(&mut self, pid: ParticipantId, on: bool) {
        if on == self.audio_outs.contains_key(&pid) {
            return;
        }
        if on {
            let added = if self.audio.contains(pid) {
                Ok(())
            } else {
                self.audio.add(pid, AudioCodec::Opus)
            };
            if let Err(e) = added.and_then(|()| self.audio.set_receives(pid, true)) {
                tracing::warn!(participant = pid, error = %e, "MCU: audio mix refused");
                return;
            }
            self.audio_outs.insert(pid, None);
        } else {
            if let Some(Some(mid)) = self.audio_outs.remove(&pid) {
                self.audio_mids.retire(mid);
            }
            let _ = self.audio.set_receives(pid, false);
        }
        if self.audio_outs.is_empty() {
            self.audio_due = None;
        }
        self.pub_dirty = true;
        self.offer_if_needed();
    }

    /// Mixes the 20 ms rounds that are due and writes each listener its packet.
    fn mix_audio(&mut self, now: Instant) {
        if self.audio_outs.is_empty() {
            return;
        }
        let mut due = *self.audio_due.get_or_insert(now);
        if now.saturating_duration_since(due) > AUDIO_FRAME * AUDIO_MAX_CATCH_UP {
            due = now;
        }
        while due <= now {
            let rtp = MediaTime::new(
                self.audio_rounds * FRAME_SAMPLES as u64,
                Frequency::FORTY_EIGHT_KHZ,
            );
            match self.audio.tick() {
                Ok((_, packets)) => {
                    for p in packets {
                        for to in &p.to {
                            let Some(Some(mid)) = self.audio_outs.get(to).copied() else {
                                continue;
                            };
                            if self.write_at(now, mid, rtp, &p.payload, None) {
                                self.counters.audio_frames_sent += 1;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "MCU: audio mix failed"),
            }
            self.audio_rounds += 1;
            due += AUDIO_FRAME;
        }
        self.audio_due = Some(due);
    }

    fn write(&mut self, now: Instant, mid: Option<Mid>, data: &[u8]) -> bool {
        self.write_marked(now, mid, data, None)
    }

    fn write_marked(
        &mut self,
        now: Instant,
        mid: Option<Mid>,
        data: &[u8],
        marking: Option<FrameMarking>,
    ) -> bool {
        let Some(mid) = mid else { return false };
        let ticks = now.saturating_duration_since(self.media_start).as_micros() as u64 * 9 / 100;
        self.write_at(
            now,
            mid,
            MediaTime::new(ticks, Frequency::NINETY_KHZ),
            data,
            marking,
        )
    }

    /// The picture-level frame marking of a mixed picture on the output at `mid`: its
    /// temporal layer and the running index of base-layer pictures.
    fn marking(&mut self, mid: Mid, picture: &EncodedPicture) -> FrameMarking {
        let layers = self.cfg.temporal_layers;
        let tl0 = self.tl0.entry(mid).or_insert(0);
        if picture.temporal_id == 0 {
            *tl0 = tl0.wrapping_add(1);
        }
        FrameMarking::picture(picture.temporal_id, layers, picture.keyframe, *tl0)
    }

    fn write_at(
        &mut self,
        now: Instant,
        mid: Mid,
        time: MediaTime,
        data: &[u8],
        marking: Option<FrameMarking>,
    ) -> bool {
        let Some(pt) = self.pts.get(&mid).copied() else {
            return false;
        };
        let Some(mut w) = self.pub_rtc.writer(mid) else {
            return false;
        };
        if let Some(m) = marking {
            w = w.user_extension_value(m);
        }
        match w.write(pt, now, time, data.to_vec()) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "MCU: write failed");
                false
            }
        }
    }

    fn request_keyframe(&mut self, now: Instant, mid: Mid) {
        if self
            .last_kf_req
            .get(&mid)
            .is_some_and(|t| now.saturating_duration_since(*t) < KEYFRAME_REQUEST_GAP)
        {
            return;
        }
        if let Some(mut w) = self.sub_rtc.writer(mid) {
            if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                self.counters.keyframe_requests_sent += 1;
                self.last_kf_req.insert(mid, now);
            }
        }
    }

    /// Moves everything str0m has into `out` (and the handlers) and notes its timeouts.
    fn drain_events(&mut self, now: Instant) {
        loop {
            match self.sub_rtc.poll_output() {
                Ok(str0m::Output::Transmit(t)) => self
                    .out
                    .push_back(ClientOutput::Transmit(PcSide::Subscribe, t)),
                Ok(str0m::Output::Event(Event::MediaData(d))) => self.on_media(now, d),
                Ok(str0m::Output::Event(_)) => {}
                Ok(str0m::Output::Timeout(t)) => {
                    self.sub_timeout = t;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "MCU: subscribe pc");
                    self.sub_timeout = now + Duration::from_millis(100);
                    break;
                }
            }
        }
        loop {
            match self.pub_rtc.poll_output() {
                Ok(str0m::Output::Transmit(t)) => self
                    .out
                    .push_back(ClientOutput::Transmit(PcSide::Publish, t)),
                Ok(str0m::Output::Event(Event::KeyframeRequest(r))) => {
                    let view = self.views.iter().find(|(_, v)| v.mid == Some(r.mid));
                    if let Some((key, _)) = view {
                        // Any terminal of the output stands for it: they share one encoder.
                        let viewer = self
                            .people
                            .keys()
                            .find(|p| self.mixer.terminal_key(**p) == Some(key))
                            .copied();
                        if let Some(p) = viewer {
                            self.mixer.request_keyframe(p);
                        }
                    } else if Some(r.mid) == self.mix_mid {
                        if let Some(me) = self.me {
                            self.mixer.request_keyframe(me);
                        }
                    } else if let Some(enc) = self.content.as_mut().and_then(|c| c.encoder.as_mut())
                    {
                        enc.force_keyframe();
                    }
                }
                Ok(str0m::Output::Event(_)) => {}
                Ok(str0m::Output::Timeout(t)) => {
                    self.pub_timeout = t;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "MCU: publish pc");
                    self.pub_timeout = now + Duration::from_millis(100);
                    break;
                }
            }
        }
    }

    fn on_media(&mut self, now: Instant, d: MediaData) {
        let Some(track_id) = self.sub_mids.get(&d.mid).cloned() else {
            return;
        };
        let Some(track) = self.tracks.get(&track_id).cloned() else {
            return;
        };
        if track.kind == "audio" {
            if let Some(level) = d.ext_vals.audio_level {
                self.mixer
                    .audio_level(now, track.owner, level.unsigned_abs());
            }
            // Voices are decoded only while someone listens to the mix.
            if !self.audio_outs.is_empty() && d.params.spec().codec == Codec::Opus {
                if !self.audio.contains(track.owner) {
                    let added = self.audio.add(track.owner, AudioCodec::Opus);
                    if let Err(e) = added.and_then(|()| self.audio.set_receives(track.owner, false))
                    {
                        tracing::warn!(error = %e, "MCU: audio decoder");
                        return;
                    }
                }
                if let Err(e) = self.audio.push(track.owner, &d.data) {
                    tracing::debug!(error = %e, "MCU: audio input");
                }
            }
            return;
        }
        if d.params.spec().codec != Codec::H264 {
            return;
        }
        self.counters.input_frames += 1;
        let have_key = {
            let k = self.got_key.entry(d.mid).or_insert(false);
            *k |= d.is_keyframe();
            *k
        };
        if !d.contiguous || !have_key {
            self.request_keyframe(now, d.mid);
            if !have_key {
                return;
            }
        }
        if track.source == "camera" {
            self.mixer.push_access_unit(now, track.owner, &d.data);
        } else if track.source == "screen" {
            let Some(c) = self.content.as_mut().filter(|c| c.track == track_id) else {
                return;
            };
            if c.decoder.is_none() {
                c.decoder = H264Decoder::with_backend(self.cfg.engine.decoder).ok();
            }
            let Some(dec) = c.decoder.as_mut() else {
                return;
            };
            match dec.decode(&d.data) {
                Ok(Some(frame)) => {
                    if c.frame
                        .as_ref()
                        .is_some_and(|f| (f.width(), f.height()) != (frame.width(), frame.height()))
                    {
                        // The encoder is sized by its first picture.
                        c.encoder = None;
                    }
                    self.mixer.push_content(now, Some(frame.clone()));
                    c.frame = Some(frame);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "MCU: content undecodable");
                    self.request_keyframe(now, d.mid);
                }
            }
        }
    }

    /// Next thing to do.
    pub fn poll_output(&mut self, now: Instant) -> ClientOutput {
        if self.out.is_empty() && !self.done {
            // Signalling and writes may have queued datagrams since the last drain.
            self.drain_events(now);
        }
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let mut next = self
            .next_size_check
            .min(self.pub_timeout)
            .min(self.sub_timeout);
        if let Some(t) = self.mixer.poll_timeout() {
            next = next.min(t);
        }
        if let Some(t) = self.audio_due {
            next = next.min(t);
        }
        if let Some(t) = self
            .content
            .as_ref()
            .filter(|c| c.frame.is_some())
            .and_then(|c| c.next_due)
        {
            next = next.min(t);
        }
        ClientOutput::Timeout(next)
    }
}

#[cfg(test)]
// Tests need an arbitrary origin for virtual time; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn drain(c: &mut McuClient, now: Instant) -> (Vec<Value>, bool) {
        let mut signals = vec![];
        let mut done = false;
        loop {
            match c.poll_output(now) {
                ClientOutput::Signal(s) => signals.push(serde_json::from_str(&s).expect("json")),
                ClientOutput::Transmit(..) => {}
                ClientOutput::Timeout(_) => return (signals, done),
                ClientOutput::Done => done = true,
            }
        }
    }

    /// Plays the SFU's part of a publish negotiation.
    fn answer(sfu: &mut Rtc, offer: &Value) -> Value {
        let offer = SdpOffer::from_sdp_string(offer["sdp"].as_str().expect("sdp")).expect("offer");
        let answer = sfu.sdp_api().accept_offer(offer).expect("answer");
        json!({"type": "answer", "pc": "pub", "re": "pub", "sdp": answer.to_sdp_string()})
    }

    fn declared(offer: &Value) -> Vec<String> {
        offer["tracks"]
            .as_array()
            .expect("tracks")
            .iter()
            .map(|t| t["source"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn joins_as_mcu_publishes_the_mix_and_content_while_someone_shares() {
        let t0 = Instant::now();
        let addr = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let cfg = McuClientConfig {
            meeting: "123456".into(),
            ..McuClientConfig::default()
        };
        let mut c = McuClient::new(
            t0,
            cfg,
            LayoutSet::default(),
            None,
            addr(40001),
            addr(40002),
        )
        .expect("client");
        let (s, _) = drain(&mut c, t0);
        assert_eq!(s[0]["type"], "join");
        assert_eq!(s[0]["kind"], "mcu");
        assert_eq!(s[0]["name"], MCU_NAME);

        c.handle_signal(
            t0,
            &json!({"type": "joined", "participant": "p9", "role": "participant",
                "participants": [{"id": "p1", "name": "一", "camera_muted": false},
                                 {"id": "p9", "name": MCU_NAME, "kind": "mcu"}],
                "tracks": [{"id": "t1", "participant": "p1", "kind": "video", "source": "camera"}]})
            .to_string(),
        );
        let (s, _) = drain(&mut c, t0);
        let offer = s
            .iter()
            .find(|m| m["type"] == "offer")
            .expect("publish offer");
        assert_eq!(declared(offer), vec!["camera"]);
        assert!(
            s.iter()
                .any(|m| m["type"] == "subscribe" && m["track"] == "t1"),
            "{s:?}"
        );
        let mut sfu = Rtc::builder().enable_h264(true).build(t0);
        c.handle_signal(t0, &answer(&mut sfu, offer).to_string());

        // p1 sits in the first tile of the 1080p "4" picture: the MCU asks for that size.
        let tile = LayoutSet::default().get("4").expect("4").tiles[0]
            .rect
            .to_pixels(1920, 1080);
        assert!(tile.w >= 900 && tile.w <= 960, "{tile:?}");
        c.handle_timeout(t0 + Duration::from_secs(1));
        let (s, _) = drain(&mut c, t0 + Duration::from_secs(1));
        let sub = s
            .iter()
            .find(|m| m["type"] == "subscribe")
            .expect("size preference");
        assert_eq!(
            (sub["max_width"].as_u64(), sub["max_height"].as_u64()),
            (Some(tile.w as u64), Some(tile.h as u64)),
            "{sub}"
        );

        // Someone shares: a second track, declared as screen.
        c.handle_signal(
            t0,
            &json!({"type": "track_published", "track": {"id": "t2", "participant": "p1", "kind": "video", "source": "screen"}})
                .to_string(),
        );
        let (s, _) = drain(&mut c, t0);
        let offer = s
            .iter()
            .find(|m| m["type"] == "offer")
            .expect("re-offer with content");
        assert_eq!(declared(offer), vec!["camera", "screen"]);
        c.handle_signal(t0, &answer(&mut sfu, offer).to_string());

        // The share ends: the content track is no longer declared.
        c.handle_signal(
            t0,
            &json!({"type": "track_unpublished", "track": "t2"}).to_string(),
        );
        let (s, _) = drain(&mut c, t0);
        let offer = s
            .iter()
            .find(|m| m["type"] == "offer")
            .expect("re-offer without content");
        assert_eq!(declared(offer), vec!["camera"]);
        c.handle_signal(t0, &answer(&mut sfu, offer).to_string());

        // The last person leaves: so does the MCU.
        c.handle_signal(
            t0,
            &json!({"type": "participant_left", "participant": "p1", "reason": "left"}).to_string(),
        );
        let (s, done) = drain(&mut c, t0);
        assert!(s.iter().any(|m| m["type"] == "leave"), "{s:?}");
        assert!(done);
    }
}
