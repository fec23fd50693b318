//! How much repair to send: from the loss the receiver reports, its burstiness and the
//! temporal layer of the frames in the block.
//!
//! A block of `k` sources and `r` repairs is rebuilt when at least `k` of its `n = k + r`
//! packets arrive. Under independent loss `p` the number that arrive is Binomial(n, 1−p),
//! so the recovery probability is the binomial upper tail `P[X ≥ k]`, and `r` is the
//! smallest value that lifts it to the layer's target. Bursty loss (Gilbert–Elliott with
//! mean loss run `B`) makes arrivals inside a block positively correlated; the count's
//! variance grows by `(1+ρ)/(1−ρ)` with `ρ = 1 − 1/(B(1−p))` the chain's correlation, and
//! the block is treated as that many times fewer independent trials.

use super::MAX_SHARDS;

/// Per-block recovery target by temporal layer: the base layer is what every later
/// frame references, so losing it costs a keyframe; upper layers only cost one frame
/// (TL2) or a short run of frames (TL1).
pub const LAYER_TARGETS: [f64; 4] = [0.999, 0.99, 0.95, 0.90];

/// Lowest loss the base layer is protected against even when none is reported: loss
/// reports lag by an RTCP interval, and one or two repairs per block are cheap. (It was
/// 0.02 until session 10: four repairs per 30-packet block, 16 % of a clean link's
/// video, with NACK/RTX there anyway for what a sudden loss leaves.)
pub const BASE_LAYER_LOSS_FLOOR: f64 = 0.005;

/// Highest loss the rule designs for; above it the blocks would be mostly repair and
/// the sender should rather lower its bitrate.
pub const MAX_DESIGN_LOSS: f64 = 0.8;

/// The protection level for a block: what loss it is designed for and how sure its
/// recovery must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protection {
    /// Independent-loss probability designed for.
    pub loss: f64,
    /// Variance inflation of the arrival count from burstiness (1 = independent loss).
    pub variance_inflation: f64,
    /// Required probability that a block is rebuilt.
    pub target: f64,
}

/// The adaptation rule: protection for a block of `temporal_layer` frames, given the
/// loss fraction the receiver reports (0..1) and the mean length of its loss runs in
/// packets (`burstiness`; independent loss at `p` has runs of mean `1/(1−p)`, and any
/// value at or below that is treated as independent).
pub fn redundancy_for(loss_fraction: f64, burstiness: f64, temporal_layer: u8) -> Protection {
    let layer = usize::from(temporal_layer).min(LAYER_TARGETS.len() - 1);
    let mut p = if loss_fraction.is_finite() {
        loss_fraction.clamp(0.0, MAX_DESIGN_LOSS)
    } else {
        MAX_DESIGN_LOSS
    };
    if layer == 0 {
        p = p.max(BASE_LAYER_LOSS_FLOOR);
    }
    let b = if burstiness.is_finite() {
        burstiness
    } else {
        1.0
    };
    let rho = if p > 0.0 && b > 0.0 {
        (1.0 - 1.0 / (b * (1.0 - p))).max(0.0)
    } else {
        0.0
    };
    // ρ → 1 means one endless burst: cap so arithmetic stays finite.
    let rho = rho.min(0.98);
    Protection {
        loss: p,
        variance_inflation: (1.0 + rho) / (1.0 - rho),
        target: LAYER_TARGETS[layer],
    }
}

impl Protection {
    /// Probability that a block of `k` sources and `r` repairs is rebuilt.
    pub fn recovery_probability(&self, k: usize, r: usize) -> f64 {
        if k == 0 {
            return 1.0;
        }
        let vif = self.variance_inflation.max(1.0);
        let trials = (((k + r) as f64) / vif).floor().max(1.0) as usize;
        let need = ((k as f64) / vif).ceil().max(1.0) as usize;
        binomial_upper_tail(trials, need, 1.0 - self.loss)
    }

    /// Smallest `r` whose recovery probability meets the target, capped so `k + r ≤ 256`
    /// (the cap is returned when the target cannot be met).
    pub fn repair_count(&self, k: usize) -> usize {
        if k == 0 || k >= MAX_SHARDS {
            return 0;
        }
        if self.recovery_probability(k, 0) >= self.target {
            return 0;
        }
        let cap = MAX_SHARDS - k;
        if self.recovery_probability(k, cap) < self.target {
            return cap;
        }
        // Recovery probability grows with r: binary search the smallest that suffices.
        let (mut lo, mut hi) = (0usize, cap);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.recovery_probability(k, mid) >= self.target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    /// Largest block size `≤ limit` whose repair fits in one code (`k + r ≤ 256`) while
    /// meeting the target; blocks longer than this are split. At least 1.
    pub fn max_k(&self, limit: usize) -> usize {
        let limit = limit.clamp(1, MAX_SHARDS - 1);
        let fits = |k: usize| {
            let r = self.repair_count(k);
            k + r <= MAX_SHARDS && self.recovery_probability(k, r) >= self.target
        };
        if fits(limit) {
            return limit;
        }
        // Fitting is monotone in k (more sources need more repair per source, not less).
        let (mut lo, mut hi) = (1usize, limit);
        if !fits(lo) {
            return 1;
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// `P[X ≥ need]` for `X ~ Binomial(n, q)`, summed in log space so `q^n` cannot underflow.
pub fn binomial_upper_tail(n: usize, need: usize, q: f64) -> f64 {
    if need == 0 {
        return 1.0;
    }
    if need > n {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    if q <= 0.0 {
        return 0.0;
    }
    let (lq, lp) = (q.ln(), (1.0 - q).ln());
    // log pmf(i) for i = 0..=n by the ratio pmf(i+1)/pmf(i) = (n−i)/(i+1) · q/p.
    let mut logs = Vec::with_capacity(n + 1);
    let mut l = n as f64 * lp;
    logs.push(l);
    for i in 0..n {
        l += ((n - i) as f64 / (i + 1) as f64).ln() + lq - lp;
        logs.push(l);
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logs.iter().map(|v| (v - max).exp()).sum();
    let upper: f64 = logs[need..].iter().map(|v| (v - max).exp()).sum();
    (upper / total).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact tail by summing C(n,i) / 2^n in integers, for p = 1/2 and n ≤ 60.
    fn exact_half_tail(n: usize, need: usize) -> f64 {
        let mut c: u128 = 1;
        let mut sum: u128 = 0;
        for i in 0..=n {
            if i >= need {
                sum += c;
            }
            c = c * (n - i) as u128 / (i + 1) as u128;
        }
        sum as f64 / (1u128 << n) as f64
    }

    #[test]
    fn tail_matches_exact_values() {
        for n in [1, 5, 20, 40, 60] {
            for need in 0..=n + 1 {
                let a = binomial_upper_tail(n, need, 0.5);
                let b = exact_half_tail(n, need);
                assert!((a - b).abs() < 1e-12, "n={n} need={need}: {a} vs {b}");
            }
        }
        // Tiny q stays finite and sensible.
        let t = binomial_upper_tail(256, 1, 0.001);
        assert!((t - (1.0 - 0.999f64.powi(256))).abs() < 1e-12);
    }

    #[test]
    fn base_layer_at_half_loss_meets_999_and_is_minimal() {
        let prot = redundancy_for(0.5, 2.0, 0);
        assert_eq!(prot.variance_inflation, 1.0);
        for k in 1..=prot.max_k(255) {
            let r = prot.repair_count(k);
            assert!(k + r <= 256);
            let n = k + r;
            let ok = if n <= 60 {
                exact_half_tail(n, k)
            } else {
                prot.recovery_probability(k, r)
            };
            assert!(ok >= 0.999, "k={k} r={r}: {ok}");
            if r > 0 {
                let less = prot.recovery_probability(k, r - 1);
                assert!(less < 0.999, "k={k}: r={r} not minimal ({less})");
            }
        }
        // Known points: 1 source needs 10 copies in total (1 − 2^-10 ≥ 0.999).
        assert_eq!(prot.repair_count(1), 9);
        // Big blocks are cheaper per source.
        let per = |k: usize| (k + prot.repair_count(k)) as f64 / k as f64;
        assert!(per(8) > per(32) && per(32) > per(96));
        assert!(per(96) < 2.7, "{}", per(96));
    }

    #[test]
    fn unequal_protection_by_layer() {
        for &p in &[0.05, 0.2, 0.5] {
            let r: Vec<usize> = (0..4)
                .map(|tl| redundancy_for(p, 0.0, tl).repair_count(20))
                .collect();
            assert!(r[0] > r[1] && r[1] >= r[2] && r[2] >= r[3], "p={p} {r:?}");
        }
        // No loss reported: upper layers get nothing, the base layer keeps a floor.
        assert_eq!(redundancy_for(0.0, 1.0, 2).repair_count(20), 0);
        assert!(redundancy_for(0.0, 1.0, 0).repair_count(20) >= 1);
    }

    #[test]
    fn burstiness_raises_repair_and_lowers_max_k() {
        let iid = redundancy_for(0.3, 1.0, 0);
        let bursty = redundancy_for(0.3, 6.0, 0);
        assert!(bursty.variance_inflation > 3.0);
        assert!(bursty.repair_count(30) > iid.repair_count(30));
        assert!(bursty.max_k(255) < iid.max_k(255));
    }

    #[test]
    fn nonsense_inputs_stay_in_range() {
        for &(p, b) in &[
            (f64::NAN, f64::NAN),
            (-1.0, -5.0),
            (7.0, f64::INFINITY),
            (1.0, 1e9),
        ] {
            let prot = redundancy_for(p, b, 9);
            assert!(prot.loss >= 0.0 && prot.loss <= MAX_DESIGN_LOSS);
            assert!(prot.variance_inflation.is_finite());
            let k = prot.max_k(255);
            assert!(k >= 1 && k + prot.repair_count(k) <= 256);
        }
    }

    /// The table in docs/fec.md is printed by this test (`--nocapture`).
    #[test]
    fn print_adaptation_table() {
        println!(
            "| loss | burst | layer | r(k=4) | r(k=8) | r(k=16) | r(k=32) | r(k=64) | max k | overhead at max k |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for &(p, b) in &[
            (0.01, 1.0),
            (0.05, 1.0),
            (0.1, 1.0),
            (0.2, 1.0),
            (0.3, 1.0),
            (0.5, 1.0),
            (0.5, 5.0),
            (0.7, 1.0),
        ] {
            for tl in 0..3u8 {
                let prot = redundancy_for(p, b, tl);
                let mk = prot.max_k(128);
                let cells: Vec<String> = [4, 8, 16, 32, 64]
                    .iter()
                    .map(|&k| {
                        if k <= mk {
                            prot.repair_count(k).to_string()
                        } else {
                            "split".into()
                        }
                    })
                    .collect();
                println!(
                    "| {p} | {b} | TL{tl} | {} | {mk} | {:.2}× |",
                    cells.join(" | "),
                    (mk + prot.repair_count(mk)) as f64 / mk as f64
                );
            }
        }
    }
}
