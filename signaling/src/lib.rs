//! Signalling: the WebSocket protocol of docs/signaling.md, meetings and their
//! participants, host controls. Media decisions belong to the SFU; this crate only asks
//! it (through [`sfu::SfuHandle`]) and relays its events to the right clients.

pub mod directory;
pub mod hub;
pub mod local;
pub mod protocol;
pub mod ws;

pub use directory::{
    DirectoryRole, Identity, JoinVerdict, MeetingDirectory, SignInReceipt, SignInWho,
};
pub use hub::{Hub, HubConfig, McuRequest, MeetingSeed};
pub use protocol::{McuOptions, MemberKind};
pub use ws::router;

/// Every refusal a client can get, with its stable wire code.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("{0}")]
    BadRequest(String),
    #[error("protocol version {0} is not supported; use 1")]
    UnsupportedVersion(u32),
    #[error("message larger than 64 KiB")]
    TooLarge,
    #[error("join first")]
    NotJoined,
    #[error("this connection already joined a meeting")]
    AlreadyJoined,
    #[error("no meeting with number {0}")]
    UnknownMeeting(String),
    #[error("wrong or missing passcode")]
    WrongPasscode,
    #[error("the meeting is locked")]
    MeetingLocked,
    #[error("the meeting was cancelled")]
    MeetingCancelled,
    #[error("this meeting admits directory members only; sign in and join with your token")]
    DirectoryOnly,
    #[error("no sign-in is open in this meeting")]
    NoOpenSignIn,
    #[error("this node cannot take more participants")]
    MeetingFull,
    #[error("only the host can do that")]
    NotHost,
    #[error("no participant {0}")]
    UnknownParticipant(String),
    #[error("no track {0}")]
    UnknownTrack(String),
    #[error("SDP rejected: {0}")]
    SdpRejected(String),
    #[error("too many messages; slow down")]
    RateLimited,
    #[error("not available: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SignalError {
    pub fn code(&self) -> &'static str {
        match self {
            SignalError::BadRequest(_) => "bad_request",
            SignalError::UnsupportedVersion(_) => "unsupported_version",
            SignalError::TooLarge => "message_too_large",
            SignalError::NotJoined => "not_joined",
            SignalError::AlreadyJoined => "already_joined",
            SignalError::UnknownMeeting(_) => "unknown_meeting",
            SignalError::WrongPasscode => "wrong_passcode",
            SignalError::MeetingLocked => "meeting_locked",
            SignalError::MeetingCancelled => "meeting_cancelled",
            SignalError::DirectoryOnly => "directory_only",
            SignalError::NoOpenSignIn => "no_open_signin",
            SignalError::MeetingFull => "meeting_full",
            SignalError::NotHost => "not_host",
            SignalError::UnknownParticipant(_) => "unknown_participant",
            SignalError::UnknownTrack(_) => "unknown_track",
            SignalError::SdpRejected(_) => "sdp_rejected",
            SignalError::RateLimited => "rate_limited",
            SignalError::Unavailable(_) => "unavailable",
            SignalError::Internal(_) => "internal",
        }
    }
}

impl From<sfu::SfuError> for SignalError {
    fn from(e: sfu::SfuError) -> Self {
        use sfu::SfuError as E;
        match e {
            E::Sdp(m) => SignalError::SdpRejected(m),
            E::Full => SignalError::MeetingFull,
            E::UnknownTrack => SignalError::UnknownTrack(String::new()),
            E::NoPendingOffer => {
                SignalError::BadRequest("no subscribe offer is outstanding".into())
            }
            other => SignalError::Internal(other.to_string()),
        }
    }
}
