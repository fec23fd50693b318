//! Feeds arbitrary packets to the FEC decoder. The input is split into packets by a
//! 2-byte length prefix; half of the runs first prime the decoder with genuine traffic
//! so the fuzzer mutates around real blocks (recovery, CRC and wrap paths), not only
//! the header checks. Invariants: no panic, and no rebuilt packet that was not sent
//! unless the fuzzer itself supplied bytes that pass the checks (then the rebuilt bytes
//! must at least be RTP of the protected SSRC).
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::fec::{FecDecoder, FecDecoderConfig, FecEncoder, FecEncoderConfig, RtpView};

const MEDIA_SSRC: u32 = 0x0102_0304;
const FEC_PT: u8 = 115;

fn genuine(seed: u8) -> Vec<Vec<u8>> {
    // A deterministic small stream: 3 frames of 3 packets with repairs.
    let mut enc = FecEncoder::new(FecEncoderConfig {
        min_k: 3,
        ..FecEncoderConfig::new(MEDIA_SSRC, 0x0a0b_0c0d, FEC_PT)
    })
    .expect("valid config");
    enc.set_channel(0.3, 1.0);
    let mut out = Vec::new();
    // sans-IO: time is an input; the encoder only compares instants it was given.
    let now = std::time::Instant::now();
    for i in 0..9u16 {
        let seq = u16::from(seed).wrapping_mul(251).wrapping_add(i);
        let mut p = vec![0x80, if i % 3 == 2 { 0x80 | 96 } else { 96 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(i / 3) * 3000).to_be_bytes());
        p.extend_from_slice(&MEDIA_SSRC.to_be_bytes());
        p.extend((0..(20 + i as usize * 13)).map(|j| (j as u8) ^ seed));
        out.extend(enc.push_source(now, &p, (i % 2) as u8).expect("valid packet"));
        out.push(p);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut dec = FecDecoder::new(FecDecoderConfig::new(MEDIA_SSRC, FEC_PT));
    let (prime, seed, mut rest) = match data {
        [a, b, rest @ ..] => (a & 1 == 1, *b, rest),
        _ => return,
    };
    let sent = if prime { genuine(seed) } else { Vec::new() };
    // Prime with every other genuine packet so blocks stay open for the fuzzer's packets.
    for p in sent.iter().step_by(2) {
        let _ = dec.push(p);
    }
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 1600;
        rest = &rest[2..];
        let (p, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        if let Ok(out) = dec.push(p) {
            for r in out {
                let v = RtpView::parse(&r).expect("rebuilt packets are RTP");
                assert_eq!(v.ssrc, MEDIA_SSRC);
            }
        }
    }
    for p in sent.iter().skip(1).step_by(2) {
        if let Ok(out) = dec.push(p) {
            for r in out {
                let v = RtpView::parse(&r).expect("rebuilt packets are RTP");
                assert_eq!(v.ssrc, MEDIA_SSRC);
            }
        }
    }
    dec.flush();
    while dec.poll_event().is_some() {}
});
