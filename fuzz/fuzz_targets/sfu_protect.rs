//! Drives one protected hop of the SFU (`sfu::protect`): a `ProtectedTx` protects
//! genuine frames, the carried packets reach a `ProtectedRx` with losses the fuzzer
//! chooses, and the fuzzer also injects its own carried packets (what a hostile
//! publisher sends the SFU) and its own feedback payloads (what a hostile subscriber
//! sends). Each input byte is an operation; its high bits advance the clock, so
//! deadlines, retransmissions and keyframe requests all run. The receiver's own
//! feedback is looped back to the sender, as on a real hop. Invariants: no panic; every
//! delivered packet is RTP of the media SSRC, and byte-identical to one that was sent
//! while the fuzzer has injected nothing; feedback payloads respect the size cap.
#![no_main]

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media::fec::RtpView;
use media::recovery::{FrameMarking, ReceiverEvent};
use sfu::protect::{
    Carried, FramePacket, HOP_PLAYOUT_DELAY, ProtectedRx, ProtectedTx, TxPolicy, expand_carried,
};

const MEDIA_SSRC: u32 = 0x0102_0304;
const MEDIA_PT: u8 = 96;

fuzz_target!(|data: &[u8]| {
    let Ok(mut tx) = ProtectedTx::new(MEDIA_SSRC, MEDIA_PT, 97, TxPolicy::ENDPOINT, 0xfff0) else {
        return;
    };
    let mut rx = ProtectedRx::new(MEDIA_SSRC, 0x0a0b_0c0d, HOP_PLAYOUT_DELAY);
    // sans-IO: the hop only compares instants derived from this one.
    let mut now = Instant::now();
    let mut in_flight: VecDeque<Carried> = VecDeque::new();
    let mut sent: HashSet<Vec<u8>> = HashSet::new();
    let mut injected = false;
    let (mut ts, mut frame) = (0u32, 0u32);
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        now += Duration::from_millis(u64::from(op >> 3) * 2);
        match op & 0x07 {
            // A frame of 1..=4 packets; every 8th is a keyframe.
            0 | 1 => {
                let n = 1 + usize::from(op >> 6);
                for i in 0..n {
                    let payload = vec![frame as u8; 40 + 30 * i];
                    let marking = FrameMarking {
                        start: i == 0,
                        end: i + 1 == n,
                        independent: frame % 8 == 0,
                        tid: if frame % 8 == 0 { 0 } else { (frame % 2) as u8 },
                        tl0_pic_idx: (frame / 2) as u8,
                        ..Default::default()
                    };
                    let p = FramePacket {
                        timestamp: ts,
                        marker: i + 1 == n,
                        marking,
                        payload: &payload,
                    };
                    let _ = tx.push_packet(now, &p);
                }
                frame += 1;
                ts = ts.wrapping_add(3000);
                carry(now, &mut tx, &mut in_flight, &mut sent);
            }
            // Deliver the next carried packet, or lose it.
            2 | 3 => {
                if let Some(c) = in_flight.pop_front() {
                    if op & 0x08 == 0 {
                        rx.handle_carried(now, c.seq as u16, c.timestamp, &c.payload, &[]);
                    }
                }
            }
            // The fuzzer's own carried packet or feedback: 1-byte length, then bytes.
            k => {
                let len = rest.first().map_or(0, |&b| usize::from(b));
                let bytes = rest.get(1..1 + len).unwrap_or(rest.get(1..).unwrap_or(&[]));
                rest = &rest[(1 + bytes.len()).min(rest.len())..];
                if k < 6 {
                    injected = true;
                    // The carrier sequence number from the payload's length, so that
                    // the arrival reports see duplicates, gaps and jumps too.
                    let seq = (len as u16).wrapping_mul(0x0101);
                    rx.handle_carried(now, seq, u32::from(seq) * 3000, bytes, &[]);
                } else {
                    tx.handle_feedback(now, bytes);
                }
            }
        }
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        if tx.poll_timeout().is_some_and(|t| t <= now) {
            tx.handle_timeout(now);
        }
        while let Some(ev) = rx.poll_event() {
            if let ReceiverEvent::Frame(f) = ev {
                for p in &f.packets {
                    let v = RtpView::parse(p).expect("delivered packets are RTP");
                    assert_eq!(v.ssrc, MEDIA_SSRC);
                    assert!(injected || sent.contains(p), "unsent packet delivered");
                }
            }
        }
        while let Some(fb) = rx.poll_feedback() {
            assert!(fb.len() <= 1_000);
            tx.handle_feedback(now, &fb);
        }
        while tx.poll_event().is_some() {}
        carry(now, &mut tx, &mut in_flight, &mut sent);
    }
});

/// Moves what the sender produced onto the hop, remembering the media packets: a lost
/// one may still be delivered after FEC or RTX rebuilt it.
fn carry(
    now: Instant,
    tx: &mut ProtectedTx,
    in_flight: &mut VecDeque<Carried>,
    sent: &mut HashSet<Vec<u8>>,
) {
    while let Some(c) = tx.poll_carried(now) {
        let inner = expand_carried(MEDIA_SSRC, c.timestamp, &c.payload).expect("our own payload");
        if RtpView::parse(&inner).is_ok_and(|v| v.ssrc == MEDIA_SSRC) {
            sent.insert(inner);
        }
        in_flight.push_back(c);
    }
}
