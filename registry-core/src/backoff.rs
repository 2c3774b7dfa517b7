//! Jittered exponential back-off for retry loops that must never give up (re-registration,
//! watch reconnection).

use std::time::Duration;

/// Exponential back-off with ±50 % jitter, capped at a maximum; it never runs out.
///
/// ```
/// use std::time::Duration;
/// use registry_core::Backoff;
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// let first = backoff.delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
/// for _ in 0..100 {
///     assert!(backoff.delay() <= Duration::from_secs(15)); // the cap, jittered
/// }
/// backoff.reset(); // after a success
/// assert!(backoff.delay() <= Duration::from_millis(150));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The jittered delay to wait now; doubles the next one.
    pub fn delay(&mut self) -> Duration {
        let delay = self.next.mul_f64(rand::random_range(0.5..1.5));
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}
