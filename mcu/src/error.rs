//! The crate's error type.

/// Errors of the MCU core.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No layout of that name is built in or configured.
    #[error("unknown layout {0:?}")]
    UnknownLayout(String),
    /// A configured layout that cannot be used.
    #[error("bad layout: {0}")]
    BadLayout(String),
    /// The font file could not be read or parsed.
    #[error("font: {0}")]
    Font(String),
    /// A picture size or setting outside what the MCU supports.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A participant id the meeting does not know.
    #[error("unknown participant {0}")]
    UnknownParticipant(u64),
    /// Sockets or threads of the MCU shell.
    #[error("io: {0}")]
    Io(String),
    /// A codec or picture error from `media`.
    #[error(transparent)]
    Media(#[from] media::Error),
}
