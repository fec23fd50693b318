//! Sans-IO media core shared by every media crate: codec bitstream inspection, layer
//! selection, keyframe-request coalescing, active-speaker detection (and later FEC,
//! jitter buffer, loss models, codec wrappers).
//!
//! Nothing here reads a clock or a random source; time arrives as an argument.

pub mod codec;
pub mod speaker;
