//! Reed-Solomon erasure FEC over RTP (`x-huitong-rs-fec`).
//!
//! A *block* is a run of consecutive RTP packets of one media SSRC (a frame, or a few
//! small frames). Each source packet becomes a *shard*: its 16-bit length followed by
//! the whole RTP packet (header, extensions, payload), zero-padded to the longest shard
//! of the block. `r` repair shards are computed over GF(2^8) and sent as RTP packets of
//! their own payload type and SSRC. A receiver holding any `k` of the `k + r` shards
//! rebuilds every missing source packet byte for byte. The wire format is specified in
//! `docs/fec.md`; the adaptation rule lives in [`adapt`].
//!
//! Everything here is sans-IO: the encoder takes `now` as an argument and returns the
//! packets to send; the decoder takes received bytes and returns rebuilt packets.

pub mod adapt;
pub mod decoder;
pub mod encoder;
mod rs;
pub mod wire;

pub use adapt::{Protection, redundancy_for};
pub use decoder::{FecDecoder, FecDecoderConfig, FecDecoderStats, FecEvent};
pub use encoder::{FecEncoder, FecEncoderConfig, FecEncoderStats};
pub use wire::{FEC_HEADER_LEN, FecHeader, RtpView};

/// Largest number of shards (source + repair) in one block: the size of GF(2^8).
pub const MAX_SHARDS: usize = 256;

#[cfg(test)]
mod tests;
