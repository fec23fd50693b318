//! ITU-T G.711 companding: µ-law (North America, Japan) and A-law (Europe, China's
//! PSTN), between 16-bit linear PCM and 8-bit codes at 8 kHz.
//!
//! The code is written from the Recommendation's segment description: A-law quantises
//! 13-bit magnitudes in 8 segments (the first two share a step), with even bits
//! inverted on the wire (XOR 0x55); µ-law quantises 14-bit magnitudes biased by 33 in 8
//! segments and sends every bit inverted. Decoders return the mid-point of the
//! quantisation interval, scaled to 16 bits.

/// Upper end (inclusive) of each A-law segment, on 13-bit magnitudes.
const A_SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
/// Upper end (inclusive) of each µ-law segment, on biased 14-bit magnitudes.
const U_SEG_END: [i32; 8] = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
/// µ-law bias (33 on 14-bit magnitudes, 132 on 16-bit ones).
const U_BIAS: i32 = 0x84;
/// Largest µ-law magnitude before the bias, on 14-bit values.
const U_CLIP: i32 = 8159;

fn segment(value: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|&e| value <= e).unwrap_or(8)
}

/// Encode one 16-bit sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 3;
    let mask = if v >= 0 {
        0xd5
    } else {
        // One's complement: −1 maps to magnitude 0, keeping the code symmetric.
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &A_SEG_END);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    let mantissa = if seg < 2 { v >> 1 } else { v >> seg } & 0x0f;
    ((seg as i32) << 4 | mantissa) as u8 ^ mask
}

/// Decode one A-law code to a 16-bit sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = i32::from(code ^ 0x55);
    let mut t = (a & 0x0f) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Encode one 16-bit sample to µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut v = i32::from(sample) >> 2;
    let mask = if v < 0 {
        v = -v;
        0x7f
    } else {
        0xff
    };
    v = v.min(U_CLIP) + (U_BIAS >> 2);
    let seg = segment(v, &U_SEG_END);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    ((seg as i32) << 4 | ((v >> (seg + 1)) & 0x0f)) as u8 ^ mask
}

/// Decode one µ-law code to a 16-bit sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = i32::from(!code);
    let t = (((u & 0x0f) << 3) + U_BIAS) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 {
        U_BIAS - t
    } else {
        t - U_BIAS
    }) as i16
}

/// Encode a buffer of samples to A-law, one code per sample.
pub fn encode_alaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_alaw(s)));
}

/// Decode A-law codes, one sample per code.
pub fn decode_alaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_to_linear(c)));
}

/// Encode a buffer of samples to µ-law, one code per sample.
pub fn encode_ulaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_ulaw(s)));
}

/// Decode µ-law codes, one sample per code.
pub fn decode_ulaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_to_linear(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Silence: µ-law 0xFF (and its negative twin 0x7F) is 0; A-law's smallest
        // positive/negative codes 0xD5/0x55 are ±8 (half a step of 16).
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        // Full scale.
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
        // First output value of a segment, from the Recommendation's tables (14-bit
        // µ-law values ×4, 13-bit A-law values ×8): µ-law segment 1 → 33, segment 2 → 99;
        // A-law segment 1 → 33.
        assert_eq!(ulaw_to_linear(0xef), 33 * 4);
        assert_eq!(ulaw_to_linear(0xdf), 99 * 4);
        assert_eq!(alaw_to_linear(0xc5), 33 * 8);
        // Decision values: µ-law 14-bit 31 | 35 is the boundary 0xF0 | 0xEF.
        assert_eq!(linear_to_ulaw(30 * 4), 0xf0);
        assert_eq!(linear_to_ulaw(31 * 4), 0xef);
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "A-law {c:#04x}");
            let back = linear_to_ulaw(ulaw_to_linear(c));
            // µ-law has two zeros (0xFF and 0x7F); both decode to 0, which encodes as 0xFF.
            let want = if c == 0x7f { 0xff } else { c };
            assert_eq!(back, want, "µ-law {c:#04x}");
        }
    }

    #[test]
    fn decoding_is_monotonic_and_antisymmetric() {
        let mut a: Vec<i16> = (0..=255u8).map(alaw_to_linear).collect();
        let mut u: Vec<i16> = (0..=255u8).map(ulaw_to_linear).collect();
        a.sort_unstable();
        u.sort_unstable();
        a.dedup();
        u.dedup();
        assert_eq!(a.len(), 256);
        assert_eq!(u.len(), 255); // the two zeros
        for c in 0..=127u8 {
            assert_eq!(alaw_to_linear(c), -alaw_to_linear(c | 0x80));
            assert_eq!(ulaw_to_linear(c), -ulaw_to_linear(c | 0x80));
        }
    }

    #[test]
    fn quantisation_error_is_within_half_a_step_everywhere() {
        for x in i16::MIN..=i16::MAX {
            let xa = i32::from(x);
            // A-law: steps of 16 in segments 0–1, doubling per segment after.
            let ya = i32::from(alaw_to_linear(linear_to_alaw(x)));
            let seg = (i32::from(linear_to_alaw(x) ^ 0x55) & 0x70) >> 4;
            let step = if seg < 2 { 16 } else { 16 << (seg - 1) };
            let clip = (xa.abs() - 32256).max(0);
            assert!(
                (ya - xa).abs() <= step / 2 + clip + 8,
                "A-law x={x} y={ya} step {step}"
            );
            // µ-law: steps of 8 in segment 0, doubling per segment after.
            let yu = i32::from(ulaw_to_linear(linear_to_ulaw(x)));
            let seg = (i32::from(!linear_to_ulaw(x)) & 0x70) >> 4;
            let step = 8 << seg;
            let clip = (xa.abs() - 32124).max(0);
            assert!(
                (yu - xa).abs() <= step / 2 + clip + 4,
                "µ-law x={x} y={yu} step {step}"
            );
        }
    }

    #[test]
    fn buffers() {
        let pcm: Vec<i16> = (0..160)
            .map(|i| ((i * 997) % 65536 - 32768) as i16)
            .collect();
        let (mut a, mut u) = (Vec::new(), Vec::new());
        encode_alaw(&pcm, &mut a);
        encode_ulaw(&pcm, &mut u);
        assert_eq!((a.len(), u.len()), (160, 160));
        let (mut da, mut du) = (Vec::new(), Vec::new());
        decode_alaw(&a, &mut da);
        decode_ulaw(&u, &mut du);
        assert_eq!(da[7], alaw_to_linear(linear_to_alaw(pcm[7])));
        assert_eq!(du[9], ulaw_to_linear(linear_to_ulaw(pcm[9])));
    }
}
