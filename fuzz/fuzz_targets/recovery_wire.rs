//! Feeds arbitrary bytes to the hand-written wire parsers of loss recovery:
//! `FrameMarking::parse` (RFC 9626 header extension), `rtx_unwrap` (RFC 4588),
//! `Feedback::parse_compound` (NACK, PLI, our `HTLR` loss report), `RtpView::parse` and
//! `FecHeader::parse`. The first byte picks the extension id and the RTX payload type;
//! the rest is the packet. Invariants: no panic; views stay inside the packet; and every
//! value a parser accepts survives its writer: frame marking, RTX wrap/unwrap in both
//! directions (byte exact), feedback (same NACK set, same PLI, loss report within the
//! wire's quantisation) and FEC header (the same 16 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::fec::{FEC_HEADER_LEN, FecHeader, RtpView};
use media::recovery::{Feedback, FrameMarking, build_media_packet, rtx_unwrap, rtx_wrap};

fn check_rtp(p: &[u8]) {
    let Ok(v) = RtpView::parse(p) else { return };
    assert!(
        v.payload_start <= v.payload_end && v.payload_end <= p.len(),
        "{v:?}"
    );
    // A packet we can parse we can also retransmit, and the receiver gets it back exactly.
    let rtx =
        rtx_wrap(p, v.ssrc ^ 1, v.payload_type ^ 1, v.seq.wrapping_add(7)).expect("RTP wraps");
    assert_eq!(rtx.len(), p.len() + 2);
    assert_eq!(rtx_unwrap(&rtx, v.ssrc, v.payload_type).as_deref(), Some(p));
}

fn check_rtx(p: &[u8], apt: u8) {
    let Some(orig) = rtx_unwrap(p, 0x0102_0304, apt) else {
        return;
    };
    assert_eq!(orig.len() + 2, p.len());
    let v = RtpView::parse(p).expect("an unwrapped packet came from RTP");
    assert_eq!(
        rtx_wrap(&orig, v.ssrc, v.payload_type, v.seq).as_deref(),
        Some(p)
    );
}

fn check_marking(p: &[u8], id: u8) {
    let Some(m) = FrameMarking::parse(p, id) else {
        return;
    };
    assert!(m.tid <= 7);
    // The one-byte form carries ids 1..=14; id 0 and 15 are padding and the terminator.
    if (1..=14).contains(&id) {
        let built = build_media_packet(1, 96, 2, 3, false, id, m, &p[p.len().min(12)..]);
        assert_eq!(FrameMarking::parse(&built, id), Some(m));
    }
}

fn check_feedback(p: &[u8]) {
    for f in Feedback::parse_compound(p) {
        let back = Feedback::parse_compound(&f.to_bytes(0xdead_beef));
        assert_eq!(back.len(), 1, "{f:?} -> {back:?}");
        match (&f, &back[0]) {
            (
                Feedback::Nack {
                    media_ssrc: a,
                    seqs: s,
                },
                Feedback::Nack {
                    media_ssrc: b,
                    seqs: t,
                },
            ) => {
                assert_eq!(a, b);
                let (mut s, mut t) = (s.clone(), t.clone());
                s.sort_unstable();
                s.dedup();
                t.sort_unstable();
                t.dedup();
                assert_eq!(s, t);
            }
            (
                Feedback::LossReport {
                    media_ssrc: a,
                    fraction: f1,
                    burstiness: b1,
                    expected: e1,
                },
                Feedback::LossReport {
                    media_ssrc: b,
                    fraction: f2,
                    burstiness: b2,
                    expected: e2,
                },
            ) => {
                assert_eq!((a, e1), (b, e2));
                // Parsed values are already on the wire's grid, so they come back exactly.
                assert_eq!(f1, f2, "fraction");
                assert_eq!(b1, b2, "burstiness");
            }
            (a, b) => assert_eq!(a, b),
        }
    }
}

fn check_fec_header(p: &[u8]) {
    let Ok(h) = FecHeader::parse(p) else { return };
    let mut out = Vec::new();
    h.write(&mut out);
    assert_eq!(out, p[..FEC_HEADER_LEN]);
    assert_eq!(FecHeader::parse(&out), Ok(h));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, p)) = data.split_first() else {
        return;
    };
    check_rtp(p);
    check_rtx(p, sel >> 1);
    check_marking(p, sel & 0x0f);
    check_feedback(p);
    check_fec_header(p);
    // FEC headers sit after the RTP header of a repair packet; parse them there too.
    if let Ok(v) = RtpView::parse(p) {
        check_fec_header(&p[v.payload_start..v.payload_end]);
    }
});
