//! The crate's error type.

/// Errors of the media core. Parsers return these instead of panicking on bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bytes that are not an RTP packet (too short, wrong version, lengths that overrun).
    #[error("not an RTP packet: {0}")]
    NotRtp(&'static str),
    /// An RTP packet of an SSRC this component does not handle.
    #[error("unexpected SSRC {got:#010x}, expected {expected:#010x}")]
    WrongSsrc {
        /// The SSRC configured.
        expected: u32,
        /// The SSRC in the packet.
        got: u32,
    },
    /// A packet too large to protect (its length does not fit the FEC length field).
    #[error("packet of {0} bytes is too large to protect")]
    TooLarge(usize),
    /// A FEC repair packet whose header is malformed or contradicts what was received.
    #[error("bad FEC packet: {0}")]
    BadFec(&'static str),
    /// An RFC 2198 RED payload whose block headers do not describe its bytes.
    #[error("bad RED payload: {0}")]
    BadRed(&'static str),
    /// A configuration value outside its range.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// A codec library refused to initialise, encode or decode (the message is the library's).
    #[error("{codec} codec error: {message}")]
    Codec {
        /// Which codec ("h264", "opus").
        codec: &'static str,
        /// What the library said.
        message: String,
    },
    /// Samples or pictures whose size does not match what the codec was set up for.
    #[error("bad frame size: {0}")]
    FrameSize(&'static str),
}
