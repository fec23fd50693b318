//! G.711 and G.722 against an independent implementation: FFmpeg's (`adpcm_g722`,
//! `pcm_alaw`, `pcm_mulaw`, Debian ffmpeg 5.1), whose outputs for a fixed signal are kept
//! in `tests/data/`. Regenerate with:
//!
//! ```text
//! HUITONG_DUMP_SIGNAL=/tmp/sig16k.raw cargo test -p media --test codec_vectors
//! ffmpeg -f s16le -ar 16000 -ac 1 -i /tmp/sig16k.raw -c:a g722 -f g722 media/tests/data/sig.g722
//! ffmpeg -f g722 -i media/tests/data/sig.g722 -f s16le media/tests/data/sig_g722_dec.raw
//! ffmpeg -f alaw -ar 8000 -ac 1 -i media/tests/data/all_codes.bin -f s16le media/tests/data/alaw_dec.raw
//! ffmpeg -f mulaw -ar 8000 -ac 1 -i media/tests/data/all_codes.bin -f s16le media/tests/data/mulaw_dec.raw
//! ```
//! (`all_codes.bin` is the 256 byte values 0..=255.)

use media::codec::{g711, g722};

/// A deterministic test signal: a triangle sweep 200 Hz → 7 kHz with noise, then
/// full-scale random bursts and silence, in integer arithmetic only (no libm).
fn signal(n: usize) -> Vec<i16> {
    let mut x = 0x1234_5678u32;
    let mut phase = 0u32;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i >= n * 3 / 4 {
                return if (i / 500) % 2 == 0 { x as i16 } else { 0 };
            }
            let freq = 200 + (i as u64 * 6800 / n as u64) as u32;
            phase = phase.wrapping_add(((u64::from(freq) << 32) / 16000) as u32);
            let tri = ((phase >> 16) as i32 - 32768).abs() - 16384;
            let noise = i32::from((x >> 16) as i16) / 32;
            (tri * 6 / 10 + noise) as i16
        })
        .collect()
}

fn le16(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

const N: usize = 8000;

#[test]
fn g722_bit_exact_with_ffmpeg() {
    let pcm = signal(N);
    if let Ok(path) = std::env::var("HUITONG_DUMP_SIGNAL") {
        let raw: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        std::fs::write(path, raw).expect("dump signal");
    }
    let want_codes = include_bytes!("data/sig.g722");
    let want_pcm = le16(include_bytes!("data/sig_g722_dec.raw"));

    let mut codes = Vec::new();
    g722::G722Encoder::new().encode(&pcm, &mut codes);
    assert_eq!(codes.len(), want_codes.len());
    let first = codes.iter().zip(want_codes).position(|(a, b)| a != b);
    assert_eq!(first, None, "encoder differs from FFmpeg at byte {first:?}");

    let mut out = Vec::new();
    g722::G722Decoder::new().decode(want_codes, &mut out);
    assert_eq!(out.len(), want_pcm.len());
    let first = out.iter().zip(&want_pcm).position(|(a, b)| a != b);
    assert_eq!(
        first, None,
        "decoder differs from FFmpeg at sample {first:?}"
    );
}

#[test]
fn g711_decoders_match_ffmpeg_for_every_code() {
    let a = le16(include_bytes!("data/alaw_dec.raw"));
    let u = le16(include_bytes!("data/mulaw_dec.raw"));
    assert_eq!((a.len(), u.len()), (256, 256));
    for c in 0..=255u8 {
        assert_eq!(g711::alaw_to_linear(c), a[usize::from(c)], "A-law {c:#04x}");
        assert_eq!(g711::ulaw_to_linear(c), u[usize::from(c)], "µ-law {c:#04x}");
    }
}

/// FFmpeg's G.711 *encoders* pick the nearest output level, while the Recommendation
/// quantises by its decision levels; they differ only where a segment's step changes,
/// and then by one code. Ours follows the Recommendation; check the disagreement is of
/// exactly that kind.
#[test]
fn g711_encoders_differ_from_nearest_level_only_at_segment_edges() {
    for x in i16::MIN..=i16::MAX {
        for (enc, dec) in [
            (
                g711::linear_to_alaw as fn(i16) -> u8,
                g711::alaw_to_linear as fn(u8) -> i16,
            ),
            (g711::linear_to_ulaw, g711::ulaw_to_linear),
        ] {
            let ours = enc(x);
            let y = i32::from(dec(ours));
            let err = (y - i32::from(x)).abs();
            let levels: Vec<i32> = (0..=255u8).map(|c| i32::from(dec(c))).collect();
            let nearest = levels
                .iter()
                .copied()
                .min_by_key(|l| (l - i32::from(x)).abs())
                .unwrap_or(y);
            if err > (nearest - i32::from(x)).abs() {
                // Allowed only when the nearest level is the next one on the ladder (no
                // level strictly between), i.e. a one-code difference at a step change.
                let (lo, hi) = (y.min(nearest), y.max(nearest));
                let between = levels.iter().any(|&l| l > lo && l < hi);
                assert!(
                    !between,
                    "x={x}: code {ours:#04x} ({y}) is not next to the nearest level {nearest}"
                );
            }
        }
    }
}
