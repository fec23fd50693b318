//! Time and randomness are inputs: handlers and repositories read them only through
//! these traits, so tests drive token expiry, lockout and sign-in deadlines with a
//! [`MockClock`] and get reproducible ids from [`SeededEntropy`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock source, in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The real clock, for the server.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place the admin plane reads the wall clock: the async shell injects it.
    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> i64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct MockClock {
    now: AtomicI64,
}

impl MockClock {
    pub fn new(now_ms: i64) -> Self {
        Self {
            now: AtomicI64::new(now_ms),
        }
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for MockClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// Random bytes for ids, salts, refresh tokens, meeting numbers and generated passwords.
pub trait Entropy: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG; the only source a server may use.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        // Linux getrandom(2) does not fail once the pool is initialised; a failure means
        // the machine cannot produce secrets at all, and continuing would be unsafe.
        getrandom::fill(buf).expect("operating system random source unavailable");
    }
}

/// Deterministic bytes (splitmix64) for tests. Not cryptographically secure.
#[derive(Debug)]
pub struct SeededEntropy {
    state: Mutex<u64>,
}

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(seed),
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in buf.chunks_mut(8) {
            *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

pub(crate) fn random_u64(e: &dyn Entropy) -> u64 {
    let mut b = [0u8; 8];
    e.fill(&mut b);
    u64::from_le_bytes(b)
}

/// A positive id below 2^53 so JavaScript clients read it exactly.
pub(crate) fn random_id(e: &dyn Entropy) -> i64 {
    let v = (random_u64(e) & ((1u64 << 53) - 1)).max(1);
    v as i64
}

pub(crate) fn random_hex(e: &dyn Entropy, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    e.fill(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_ids_are_js_safe() {
        let a = SeededEntropy::new(7);
        let b = SeededEntropy::new(7);
        let ids_a: Vec<i64> = (0..100).map(|_| random_id(&a)).collect();
        let ids_b: Vec<i64> = (0..100).map(|_| random_id(&b)).collect();
        assert_eq!(ids_a, ids_b);
        assert!(ids_a.iter().all(|&i| i > 0 && i < (1i64 << 53)));
        let mut dedup = ids_a.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), 100);
    }

    #[test]
    fn mock_clock_advances() {
        let c = MockClock::new(1_000);
        c.advance(std::time::Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3_000);
    }
}
