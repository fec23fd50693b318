//! Feeds arbitrary RTP payloads to the codec inspectors the SFU runs on every forwarded
//! video packet (`media::codec::{h264, vp8}`, called from `sfu::engine`): H.264
//! `inspect`, `sps_size_in_payload` and `sps_size`; VP8 `parse_descriptor`, `info`,
//! `inspect` and `keyframe_size`; then, as the engine does before fan-out, str0m's VP8
//! descriptor patch built from the ids our parser read. Invariants: no panic; the VP8
//! descriptor lies inside the payload; `inspect` equals `info` of `parse_descriptor`;
//! a keyframe size implies a parsable descriptor; and when both parsers accept the
//! descriptor, patching it with the ids we read from it succeeds (the ids fit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::codec::{h264, vp8};
use str0m::rtp::Vp8Descriptor;

fn check_h264(p: &[u8]) {
    let info = h264::inspect(p);
    if let Some(i) = info {
        assert!(i.temporal_id.is_none_or(|t| t < 8));
    }
    let _ = h264::sps_size_in_payload(p);
    let _ = h264::sps_size(p);
}

fn check_vp8(p: &[u8]) {
    let d = vp8::parse_descriptor(p);
    if let Some(d) = &d {
        assert!(d.len <= p.len(), "{d:?}");
        assert!(d.temporal_id.is_none_or(|t| t < 4));
        assert!(d.picture_id.is_none_or(|id| id <= 0x7fff));
    }
    assert_eq!(vp8::inspect(p), d.map(|d| vp8::info(&d, p)));
    if vp8::keyframe_size(p).is_some() {
        assert!(d.is_some());
    }
    let (Some(ours), Ok(theirs)) = (d, Vp8Descriptor::parse(p)) else {
        return;
    };
    let mut patch = theirs.patch();
    if let Some(pic) = ours.picture_id {
        patch = patch.picture_id(pic);
    }
    if let Some(tl0) = ours.tl0_pic_idx {
        patch = patch.tl0_pic_idx(tl0);
    }
    if let Err(e) = patch.build() {
        panic!("our descriptor {ours:?} does not patch str0m's: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    check_h264(data);
    check_vp8(data);
});
