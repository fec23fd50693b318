//! How much of a signal is one tone: the measure audio tests use to check that a mix
//! holds the voices it should and not the ones it must leave out.

/// Share of the energy of `x` (sampled at `rate` Hz) at `freq` Hz: about 1 for a pure
/// tone at `freq`, about 0 when it is absent. One DFT bin with a Hann window, so a tone
/// that does not fall on a bin edge still counts fully.
pub fn tone_share(x: &[i16], rate: u32, freq: f64) -> f64 {
    let n = x.len() as f64;
    let (mut re, mut im, mut total) = (0.0, 0.0, 0.0);
    for (i, s) in x.iter().enumerate() {
        let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
        let s = f64::from(*s) * w;
        let ph = 2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate);
        re += s * ph.cos();
        im += s * ph.sin();
        total += s * s;
    }
    // A pure Hann-windowed tone gives |X|^2 = A^2 N^2 / 16 and energy 3 A^2 N / 16.
    (re * re + im * im) * 3.0 / (n * total.max(1e-9))
}

/// `n` samples of a sine at `freq` Hz and amplitude `amp`, from sample `from` on.
pub fn sine(freq: f64, rate: u32, n: usize, from: usize, amp: f64) -> Vec<i16> {
    (from..from + n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_is_found_where_it_is_and_not_elsewhere() {
        let a = sine(440.0, 48_000, 4800, 0, 6000.0);
        let b = sine(1000.0, 48_000, 4800, 0, 6000.0);
        let mix: Vec<i16> = a.iter().zip(&b).map(|(x, y)| x / 2 + y / 2).collect();
        assert!(tone_share(&a, 48_000, 440.0) > 0.9);
        assert!(tone_share(&a, 48_000, 1000.0) < 0.01);
        let (s440, s1000) = (
            tone_share(&mix, 48_000, 440.0),
            tone_share(&mix, 48_000, 1000.0),
        );
        assert!(
            (0.4..0.6).contains(&s440) && (0.4..0.6).contains(&s1000),
            "{s440} {s1000}"
        );
        assert_eq!(tone_share(&[0; 480], 48_000, 440.0), 0.0);
    }
}
