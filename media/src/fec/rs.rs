//! Systematic Reed-Solomon erasure code over GF(2^8), parity rows built per block size.
//!
//! The generator is `V · V_top⁻¹` with `V[i][j] = i^j` (field polynomial 0x11D), the
//! construction of the `reed-solomon-erasure` crate and of Backblaze's coder. Its parity
//! row `k + j` depends on `k` only, not on how many repairs a block has, so this module
//! caches the inverse and the rows per `k` and builds only the rows a block uses: the
//! crate's own constructor builds all `n × k` entries per `(k, r)` shape, which costs
//! ~10 ms at k = 100 and would be paid on most blocks since shapes vary with frame size.
//! Bulk byte work uses the crate's `mul_slice_xor` (SIMD with `simd-accel`).

use std::collections::HashMap;

use reed_solomon_erasure::galois_8 as gf;

/// Distinct block sizes whose matrices are kept (each ≤ 64 KiB).
const MAX_CACHED: usize = 48;

#[derive(Debug)]
struct KMatrix {
    /// Parity rows computed so far: row j is generator row k + j.
    rows: Vec<Vec<u8>>,
    /// V_top⁻¹, k × k, row-major.
    inv_top: Vec<Vec<u8>>,
}

/// Invert an n × n matrix by Gauss–Jordan elimination; `None` if singular.
fn invert(m: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let n = m.len();
    let mut aug: Vec<Vec<u8>> = m
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.resize(2 * n, 0);
            r[n + i] = 1;
            r
        })
        .collect();
    for c in 0..n {
        let piv = (c..n).find(|&i| aug[i][c] != 0)?;
        aug.swap(c, piv);
        let f = gf::div(1, aug[c][c]);
        if f != 1 {
            let row = aug[c].clone();
            gf::mul_slice(f, &row, &mut aug[c]);
        }
        let pivot = aug[c].clone();
        for (i, row) in aug.iter_mut().enumerate() {
            if i != c && row[c] != 0 {
                let f = row[c];
                gf::mul_slice_xor(f, &pivot, row);
            }
        }
    }
    Some(aug.into_iter().map(|r| r[n..].to_vec()).collect())
}

impl KMatrix {
    fn new(k: usize) -> Option<Self> {
        let top: Vec<Vec<u8>> = (0..k)
            .map(|i| (0..k).map(|j| gf::exp(i as u8, j)).collect())
            .collect();
        Some(KMatrix {
            rows: Vec::new(),
            inv_top: invert(&top)?,
        })
    }

    fn ensure_rows(&mut self, k: usize, r: usize) {
        while self.rows.len() < r {
            let i = (k + self.rows.len()) as u8;
            let v: Vec<u8> = (0..k).map(|m| gf::exp(i, m)).collect();
            let row = (0..k)
                .map(|c| {
                    v.iter()
                        .zip(&self.inv_top)
                        .fold(0u8, |acc, (&vm, inv)| acc ^ gf::mul(vm, inv[c]))
                })
                .collect();
            self.rows.push(row);
        }
    }
}

/// Per-k generator cache; encode and reconstruct blocks of any shape with `k + r ≤ 256`.
#[derive(Debug, Default)]
pub(crate) struct RsCache {
    per_k: HashMap<usize, KMatrix>,
}

impl RsCache {
    fn rows(&mut self, k: usize, r: usize) -> Option<&[Vec<u8>]> {
        if k == 0 || r == 0 || k + r > super::MAX_SHARDS {
            return None;
        }
        if !self.per_k.contains_key(&k) {
            if self.per_k.len() >= MAX_CACHED {
                // Block sizes drift with bitrate and loss; the old ones are stale.
                self.per_k.clear();
            }
            self.per_k.insert(k, KMatrix::new(k)?);
        }
        let m = self.per_k.get_mut(&k)?;
        m.ensure_rows(k, r);
        Some(&m.rows[..r])
    }

    /// Parity shards `0..r` of `data` (k equal-length shards).
    pub(crate) fn encode(&mut self, data: &[Vec<u8>], r: usize) -> Option<Vec<Vec<u8>>> {
        let k = data.len();
        let len = data.first()?.len();
        let rows = self.rows(k, r)?;
        let mut parity = vec![vec![0u8; len]; r];
        for (row, out) in rows.iter().zip(parity.iter_mut()) {
            for (&c, d) in row.iter().zip(data) {
                gf::mul_slice_xor(c, d, out);
            }
        }
        Some(parity)
    }

    /// Rebuild missing data shards. `data[i]` is `Some(shard)` for received sources,
    /// `repairs[j]` `Some(shard)` for received repair j; all shards have length `len`.
    /// Returns the rebuilt shards of the missing sources in index order, or `None` when
    /// fewer than k shards are present.
    pub(crate) fn reconstruct(
        &mut self,
        data: &[Option<Vec<u8>>],
        repairs: &[Option<Vec<u8>>],
        len: usize,
    ) -> Option<Vec<Vec<u8>>> {
        let k = data.len();
        let missing: Vec<usize> = (0..k).filter(|&i| data[i].is_none()).collect();
        if missing.is_empty() {
            return Some(Vec::new());
        }
        let used: Vec<usize> = (0..repairs.len())
            .filter(|&j| repairs[j].is_some())
            .take(missing.len())
            .collect();
        if used.len() < missing.len() {
            return None;
        }
        let rows = self.rows(k, repairs.len())?;
        // Remove the known sources' share from each repair: y_j = Σ_{c missing} P[j][c]·d_c.
        let mut y: Vec<Vec<u8>> = Vec::with_capacity(used.len());
        for &j in &used {
            let mut acc = repairs[j].clone()?;
            if acc.len() != len {
                return None;
            }
            for (c, d) in data.iter().enumerate() {
                if let Some(d) = d {
                    if d.len() != len {
                        return None;
                    }
                    gf::mul_slice_xor(rows[j][c], d, &mut acc);
                }
            }
            y.push(acc);
        }
        // Any square submatrix of an MDS code's parity part is invertible.
        let a: Vec<Vec<u8>> = used
            .iter()
            .map(|&j| missing.iter().map(|&c| rows[j][c]).collect())
            .collect();
        let inv = invert(&a)?;
        let mut out = vec![vec![0u8; len]; missing.len()];
        for (row, o) in inv.iter().zip(out.iter_mut()) {
            for (&c, yj) in row.iter().zip(&y) {
                gf::mul_slice_xor(c, yj, o);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reed_solomon_erasure::galois_8::ReedSolomon;

    fn shards(k: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..k)
            .map(|i| {
                (0..len)
                    .map(|j| (i as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(seed) ^ seed)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn parity_equals_the_reference_crate() {
        let mut cache = RsCache::default();
        for &(k, r) in &[(1, 1), (2, 5), (10, 10), (37, 91), (100, 156), (255, 1)] {
            let data = shards(k, 64, k as u8);
            let mine = cache.encode(&data, r).unwrap();
            let rs = ReedSolomon::new(k, r).unwrap();
            let mut theirs = vec![vec![0u8; 64]; r];
            rs.encode_sep(&data, &mut theirs).unwrap();
            assert_eq!(mine, theirs, "k={k} r={r}");
        }
    }

    #[test]
    fn any_k_shards_rebuild() {
        let mut cache = RsCache::default();
        for &(k, r) in &[(1, 3), (5, 5), (20, 30), (100, 150)] {
            let data = shards(k, 100, 7);
            let parity = cache.encode(&data, r).unwrap();
            for pattern in 0..20usize {
                // Drop up to r shards in a pattern-dependent way.
                let mut d: Vec<Option<Vec<u8>>> = data.iter().cloned().map(Some).collect();
                let mut p: Vec<Option<Vec<u8>>> = parity.iter().cloned().map(Some).collect();
                let mut dropped = 0;
                for i in 0..k + r {
                    if dropped < r && (i * 7 + pattern * 13) % 3 != 0 {
                        if i < k {
                            d[i] = None;
                        } else {
                            p[i - k] = None;
                        }
                        dropped += 1;
                    }
                }
                let missing: Vec<usize> = (0..k).filter(|&i| d[i].is_none()).collect();
                let got = cache.reconstruct(&d, &p, 100).unwrap();
                assert_eq!(got.len(), missing.len());
                for (g, &i) in got.iter().zip(&missing) {
                    assert_eq!(g, &data[i], "k={k} r={r} pattern {pattern} shard {i}");
                }
            }
            // One too few: k − 1 shards present.
            let drop_src = k.min(r + 1);
            let drop_rep = r + 1 - drop_src;
            let d: Vec<Option<Vec<u8>>> = (0..k)
                .map(|i| (i >= drop_src).then(|| data[i].clone()))
                .collect();
            let p: Vec<Option<Vec<u8>>> = (0..r)
                .map(|j| (j >= drop_rep).then(|| parity[j].clone()))
                .collect();
            assert!(cache.reconstruct(&d, &p, 100).is_none(), "k={k} r={r}");
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut cache = RsCache::default();
        assert!(cache.encode(&shards(200, 8, 1), 57).is_none());
        assert!(cache.encode(&[], 1).is_none());
        let d = vec![None, Some(vec![1u8; 8])];
        assert!(cache.reconstruct(&d, &[Some(vec![0u8; 9])], 8).is_none());
    }
}
