//! Sans-IO media core shared by every media crate: codec bitstream inspection and
//! codecs (G.711, G.722), Reed-Solomon FEC over RTP, RFC 2198 redundant audio, a seeded network emulator for
//! deterministic loss tests, and active-speaker detection.
//!
//! Nothing here reads a clock or a random source; time and seeds arrive as arguments.

pub mod cc;
pub mod codec;
pub mod error;
pub mod fec;
pub mod netem;
pub mod recovery;
pub mod red;
pub mod speaker;
pub mod tone;

pub use error::Error;
