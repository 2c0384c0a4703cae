//! The error backoff of both controllers: per object, consecutive failures
//! and the earliest next attempt.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// 1 s, 2 s, 4 s ... capped at 5 minutes, with up to 20 % jitter.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    let base = Duration::from_secs(1u64 << exponent).min(Duration::from_secs(300));
    let jitter = rand::random::<f64>() * 0.2;
    base.mul_f64(1.0 + jitter)
}

struct Entry {
    count: u32,
    not_before: Instant,
}

/// Consecutive failures per key (an object reference).
pub struct Failures<K> {
    map: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq> Default for Failures<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Failures<K> {
    fn map(&self) -> MutexGuard<'_, HashMap<K, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more failure of `key`: how many in a row now, and the delay
    /// before the next attempt (which [`Self::backing_off`] then reports).
    pub fn record(&self, key: K) -> (u32, Duration) {
        let mut map = self.map();
        let entry = map.entry(key).or_insert(Entry {
            count: 0,
            not_before: Instant::now(),
        });
        entry.count = entry.count.saturating_add(1);
        let delay = backoff(entry.count);
        entry.not_before = Instant::now() + delay;
        (entry.count, delay)
    }

    /// `key` succeeded: its backoff starts again from the beginning.
    pub fn clear(&self, key: &K) {
        self.map().remove(key);
    }

    /// How long until the next attempt of `key` is allowed, while a backoff runs.
    pub fn backing_off(&self, key: &K) -> Option<Duration> {
        let wait = self
            .map()
            .get(key)?
            .not_before
            .checked_duration_since(Instant::now())?;
        (!wait.is_zero()).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) < Duration::from_millis(1300));
        assert!(backoff(3) >= Duration::from_secs(4));
        assert!(backoff(50) <= Duration::from_secs(361));
        assert!(backoff(50) >= Duration::from_secs(300));
    }

    #[test]
    fn failures_count_until_cleared_and_hold_back_the_next_attempt() {
        let failures = Failures::default();
        assert_eq!(failures.record("a").0, 1);
        let (count, delay) = failures.record("a");
        assert_eq!(count, 2);
        assert!(failures.backing_off(&"a").is_some_and(|wait| wait <= delay));
        assert!(failures.backing_off(&"b").is_none());
        failures.clear(&"a");
        assert!(failures.backing_off(&"a").is_none());
        assert_eq!(failures.record("a").0, 1);
    }
}
