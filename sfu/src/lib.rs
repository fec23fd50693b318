//! Selective forwarding unit.
//!
//! [`engine::Sfu`] is the sans-IO core: rooms, peer connections (str0m in RTP mode),
//! per-subscriber forwarding with simulcast/temporal layer selection, keyframe-request
//! coalescing, active-speaker detection and network-quality reports. [`shell`] drives it
//! from one UDP socket and a command channel on tokio.

pub mod alloc;
pub mod engine;
pub mod forward;
pub mod keyframe;
pub mod protect;
pub mod shell;
mod udp;

use std::fmt;
use std::time::Duration;

pub use engine::{Counters, Input, Output, Sfu, SfuConfig, Transmit};
pub use shell::{SfuHandle, spawn};
pub use str0m::media::MediaKind;

/// A participant, as signalling numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// A published track, numbered by the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl TrackId {
    /// Parses the `t<N>` form used on the wire.
    pub fn parse(s: &str) -> Option<Self> {
        s.strip_prefix('t')?.parse().ok().map(TrackId)
    }
}

/// A forwarding domain: everyone in it may receive everyone's tracks.
pub type RoomId = String;

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcRole {
    Publish,
    Subscribe,
}

/// What a published track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackSource {
    Mic,
    Camera,
    Screen,
}

/// The client's statement of what one publish-pc m-line carries.
#[derive(Debug, Clone)]
pub struct TrackDecl {
    pub mid: String,
    pub kind: MediaKind,
    pub source: TrackSource,
    /// What a service publisher (the MCU) says this track is, e.g. which mix view;
    /// carried to subscribers unchanged, never interpreted by the SFU.
    pub label: Option<String>,
    /// The only participant offered this track (a service's per-person output, e.g. the
    /// MCU's audio mix without that person's own voice); `None`: everyone in the room.
    pub audience: Option<ParticipantId>,
}

/// Subscriber-chosen quality ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QualityPref {
    Off,
    Low,
    Medium,
    #[default]
    High,
}

/// A subscriber's wish for one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preference {
    pub quality: QualityPref,
    /// Size the subscriber renders the track at.
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: TrackId,
    pub owner: ParticipantId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub label: Option<String>,
    pub audience: Option<ParticipantId>,
}

/// A track carried by a subscribe pc, and its m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackMapping {
    pub track: TrackInfo,
    pub mid: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QualityStat {
    pub participant: ParticipantId,
    /// 0 (no media) … 5 (excellent).
    pub score: u8,
    pub rtt_ms: Option<u32>,
    pub loss_up: Option<f32>,
    pub loss_down: Option<f32>,
    pub bitrate_down_kbps: Option<u32>,
}

/// Network quality scoring shared by the engine and its tests.
pub struct Quality;

impl Quality {
    /// 5 = loss < 1 % and RTT < 100 ms … 1 = loss ≥ 20 % or RTT ≥ 800 ms.
    pub fn score(rtt: Option<Duration>, loss: f32) -> u8 {
        let rtt_ms = rtt.map_or(0, |d| d.as_millis());
        let by_loss = match loss {
            l if l < 0.01 => 5,
            l if l < 0.03 => 4,
            l if l < 0.08 => 3,
            l if l < 0.20 => 2,
            _ => 1,
        };
        let by_rtt = match rtt_ms {
            r if r < 100 => 5,
            r if r < 200 => 4,
            r if r < 400 => 3,
            r if r < 800 => 2,
            _ => 1,
        };
        by_loss.min(by_rtt)
    }
}

/// What the engine tells signalling.
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// Send this offer for the participant's subscribe pc.
    SubscriberOffer { participant: ParticipantId, sdp: String, tracks: Vec<TrackMapping> },
    TrackPublished { room: RoomId, track: TrackInfo },
    TrackUnpublished { room: RoomId, track: TrackId, owner: ParticipantId },
    ActiveSpeaker { room: RoomId, participant: Option<ParticipantId> },
    Quality { room: RoomId, stats: Vec<QualityStat> },
    MediaConnected { participant: ParticipantId, pc: PcRole },
    MediaDisconnected { participant: ParticipantId, pc: PcRole },
    /// A subscriber of `track` cannot decode its codec: its publisher should send a
    /// codec every receiver has (VP8).
    CodecUnsupported { publisher: ParticipantId, track: TrackId, codec: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("participant already joined")]
    AlreadyJoined,
    #[error("node is full")]
    Full,
    #[error("unknown participant")]
    UnknownParticipant,
    #[error("unknown track")]
    UnknownTrack,
    #[error("no subscriber offer is outstanding")]
    NoPendingOffer,
    #[error("SDP rejected: {0}")]
    Sdp(String),
    #[error("SFU stopped")]
    Stopped,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
