//! Feeds arbitrary bytes to the RFC 2198 RED parser (`media::red::parse`) and to the
//! SFU's RED frame history (`RedHistory`), as an SFU takes in a publisher's packets.
//! The first two bytes are the packet's timestamp step; the rest is split into packets
//! at each 0xFF byte. Invariants: no panic; blocks stay inside the payload; a payload the
//! parser accepts survives a rebuild (same blocks, same bytes, unless a block's offset
//! is 0, which a rebuild leaves out); and what the history builds parses again, with
//! the primary first asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::red::{RedHistory, build, parse};

fuzz_target!(|data: &[u8]| {
    let Some((step, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let step = u32::from(u16::from_be_bytes(*step));
    let mut h = RedHistory::new(16);
    for (i, p) in rest.split(|b| *b == 0xff).enumerate() {
        let ts = (i as u32).wrapping_mul(step);
        if let Ok((redundant, primary)) = parse(p) {
            let total: usize =
                redundant.iter().map(|b| b.data.len()).sum::<usize>() + primary.data.len();
            assert!(total <= p.len());
            if redundant.iter().all(|b| b.ts_offset > 0) {
                assert_eq!(build(&redundant, primary), p, "rebuild differs");
            }
        }
        if h.push_red(ts, p).is_err() {
            h.push_plain(ts, 0, p);
        }
        h.next_packet(ts);
        if let Some(out) = h.build(ts, &[1, 2, 3, 5, 8], Some) {
            let (_, primary) = parse(&out).expect("a built payload parses");
            assert_eq!(Some(primary.data), h.get(ts).map(|(_, d)| d));
        }
    }
});
