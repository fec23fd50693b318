//! Hybrid loss recovery for one video stream: Reed-Solomon FEC first, NACK/RTX for what
//! FEC could not rebuild while there is time before the playout deadline, and frame
//! skipping with keyframe requests for what neither could. The receiver hands the
//! decoder only complete frames whose references were all delivered, so a loss can cost
//! frames but never corrupt a picture.
//!
//! - [`ProtectedSender`]: frames in, RTP + FEC + RTX out; NACK, PLI and loss reports in.
//! - [`ProtectedReceiver`]: media, repair and RTX packets in; complete frames, skip
//!   reports and RTCP feedback (NACK, PLI, loss report) out.
//!
//! Frames are found with the frame-marking header extension (RFC 9626: start/end of
//! frame, keyframe, temporal layer id, TL0 picture index), which is also what tells the
//! receiver which frames a lost one breaks. Rules and figures: `docs/recovery.md`.
//! Sans-IO: time comes in as `now`, nothing here reads a clock or a random source.

mod receiver;
mod sender;
pub mod wire;

pub use receiver::{
    DeliveredFrame, ProtectedReceiver, ReceiverConfig, ReceiverEvent, ReceiverStats, SkipReason,
    SkippedFrame,
};
pub use sender::{
    FecSizing, ProtectedSender, SenderConfig, SenderEvent, SenderStats, hybrid_design_loss,
};
pub use wire::{Feedback, FrameMarking, build_media_packet, rtx_unwrap, rtx_wrap};

/// Extend a wrapping counter of `bits` bits to 64 bits, nearest to `reference`.
fn extend_bits(value: u64, bits: u32, reference: Option<u64>) -> u64 {
    let span = 1u64 << bits;
    let half = span / 2;
    // Start high so early values can move backwards without underflow.
    let Some(r) = reference else {
        return (1 << 40) | value;
    };
    let cand = (r & !(span - 1)) | value;
    if cand + half <= r {
        cand + span
    } else if cand > r + half && cand >= span {
        cand - span
    } else {
        cand
    }
}

/// Extend a 16-bit RTP sequence number.
pub(crate) fn extend_seq(seq: u16, reference: Option<u64>) -> u64 {
    extend_bits(u64::from(seq), 16, reference)
}

/// Extend a 32-bit RTP timestamp.
fn extend_ts(ts: u32, reference: Option<u64>) -> u64 {
    extend_bits(u64::from(ts), 32, reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_wraps_both_ways() {
        let a = extend_seq(65530, None);
        let b = extend_seq(3, Some(a));
        assert_eq!(b, a + 9);
        assert_eq!(extend_seq(65534, Some(b)), a + 4);
        let t = extend_ts(u32::MAX - 10, None);
        assert_eq!(extend_ts(5, Some(t)), t + 16);
    }
}
