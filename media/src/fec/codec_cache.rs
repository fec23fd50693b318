//! Reed-Solomon codecs are costly to build (a matrix inversion), and a stream uses few
//! distinct (k, r) shapes: keep the recent ones.

use std::collections::HashMap;

use reed_solomon_erasure::galois_8::ReedSolomon;

const MAX_ENTRIES: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct CodecCache {
    codecs: HashMap<(usize, usize), ReedSolomon>,
}

impl CodecCache {
    /// The codec for `k` data and `r` parity shards; `None` if the shape is invalid.
    pub(crate) fn get(&mut self, k: usize, r: usize) -> Option<&ReedSolomon> {
        if !self.codecs.contains_key(&(k, r)) {
            let rs = ReedSolomon::new(k, r).ok()?;
            if self.codecs.len() >= MAX_ENTRIES {
                // Shapes change when the loss estimate does; the old ones are stale.
                self.codecs.clear();
            }
            self.codecs.insert((k, r), rs);
        }
        self.codecs.get(&(k, r))
    }
}
