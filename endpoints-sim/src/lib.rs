//! Simulated WebRTC terminals for load generation and exact forwarding measurements.
//!
//! * [`peer::Peer`] — sans-IO: one str0m `Rtc` with a synthetic H.264 + Opus source and a
//!   receiver that reads each frame's marker (sender, counter, send time).
//! * [`driver::PeerHandle`] — the tokio task that owns a peer and its UDP socket.
//! * [`huitong::HuitongTerminal`] — Huitong signalling v1 over WebSocket.
//! * [`protected::FecPublisher`], [`protected::FecSubscriber`] — sans-IO terminals that
//!   speak Huitong's hop-by-hop loss protection (FEC + NACK/RTX, issue 4).
//! * [`janus::JanusTerminal`] — Janus VideoRoom over its REST API, for comparisons.

pub mod driver;
pub mod error;
pub mod http;
pub mod huitong;
pub mod janus;
pub mod payload;
pub mod peer;
pub mod protected;
pub mod realvideo;
pub mod relay;
pub mod render;
pub mod stats;

pub use driver::{PeerHandle, PeerStatus};
pub use error::SimError;
pub use peer::{AudioSource, MediaConfig, Peer, PeerConfig, VideoSource};
pub use stats::{MediaTap, Snapshot, Stats};
