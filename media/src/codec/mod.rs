//! What a forwarder needs to know about an RTP payload without decoding it.

pub mod g711;
pub mod g722;
pub mod h264;
pub mod libav;
pub mod openh264;
pub mod opus;
pub mod vp8;
pub mod x264;

/// Facts about one RTP payload that drive forwarding decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayloadInfo {
    /// The packet starts a frame that decodes without earlier frames.
    pub keyframe_start: bool,
    /// The packet is the first packet of a frame.
    pub frame_start: bool,
    /// Temporal layer id when the bitstream carries one (VP8 TID, H.264 SVC prefix).
    pub temporal_id: Option<u8>,
    /// Frames of higher temporal layers after this one may be dropped: the receiver can
    /// switch up at this frame (VP8 layer sync bit).
    pub layer_sync: bool,
}
