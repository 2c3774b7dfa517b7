//! Pacing a source's own follow loop when its server answers at once without a change (a
//! long poll that does not block): the policy, written once here; a source only reports each
//! answer.

use std::time::Duration;

use crate::Backoff;

/// An answer to a long poll (a Consul blocking query) that comes back sooner than this without the index moving
/// came "at once": the agent did not block (an idempotent write, a busy index, a flapping
/// check, an agent that does not honour `index`).
const AT_ONCE: Duration = Duration::from_millis(100);

/// How many answers in a row may come back at once without the index moving before the watch
/// pauses between queries. A lone one is ordinary (Consul documents that an answer is no
/// promise of a change), and the next query goes out without a pause, so that a change right
/// after it is not delayed.
const STORM_AFTER: u32 = 3;

/// The first pause once answers come back at once in a row (jittered, doubling while they
/// keep coming at once up to [`STORM_CAP`]): Consul asks clients to rate-limit blocking
/// queries that do not block.
const STORM_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between two queries of a storm.
const STORM_CAP: Duration = Duration::from_secs(5);

/// Paces one follow loop's long polls (Consul's blocking queries): none while the index moves or the agent blocks, and a
/// growing pause only while answers keep coming back at once without the index moving.
#[derive(Debug)]
pub struct Pace {
    /// Answers in a row that came at once without the index moving.
    quick: u32,
    backoff: Backoff,
}

impl Pace {
    /// A pace with no storm yet.
    pub fn new() -> Self {
        Pace {
            quick: 0,
            backoff: Backoff::new(STORM_FIRST_PAUSE, STORM_CAP),
        }
    }

    /// The pause before the next query, after an answer that took `took` and moved the index
    /// (`moved`) or not.
    pub fn after(&mut self, moved: bool, took: Duration) -> Option<Duration> {
        if moved || took >= AT_ONCE {
            // A change, or the agent blocked as asked: whatever storm there was is over.
            self.quick = 0;
            self.backoff.reset();
            return None;
        }
        self.quick = self.quick.saturating_add(1);
        (self.quick >= STORM_AFTER).then(|| self.backoff.delay())
    }
}

impl Default for Pace {
    fn default() -> Self {
        Pace::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(1);

    /// A lone answer without a change, however quick, is followed by the next query at once:
    /// a change right after it is not delayed.
    #[test]
    fn no_pause_after_a_few_quick_answers() {
        let mut pace = Pace::new();
        for _ in 0..10 {
            assert_eq!(pace.after(true, QUICK), None, "the index moved");
        }
        for _ in 1..STORM_AFTER {
            assert_eq!(pace.after(false, QUICK), None);
        }
        assert_eq!(pace.after(true, QUICK), None);
        assert_eq!(pace.after(false, QUICK), None, "the count starts over");
    }

    /// Answers that keep coming at once without a change back off, more and more, up to the
    /// cap; a moved index or an answer the agent held for a while ends it.
    #[test]
    fn a_storm_of_quick_answers_backs_off_until_it_ends() {
        let mut pace = Pace::new();
        for _ in 1..STORM_AFTER {
            assert_eq!(pace.after(false, QUICK), None);
        }
        let pauses: Vec<Duration> = (0..12)
            .map(|_| pace.after(false, QUICK).expect("a storm pauses"))
            .collect();
        // Jittered ±50 %: the first around STORM_FIRST_PAUSE, later ones grow to the cap.
        assert!(pauses[0] >= STORM_FIRST_PAUSE / 2 && pauses[0] <= STORM_FIRST_PAUSE * 3 / 2);
        assert!(pauses[5] > STORM_FIRST_PAUSE * 3 / 2, "{pauses:?}");
        assert!(pauses.iter().all(|p| *p <= STORM_CAP * 3 / 2), "{pauses:?}");

        // The agent blocked for a while: over, and the next quick answer is not paused.
        assert_eq!(pace.after(false, Duration::from_secs(55)), None);
        assert_eq!(pace.after(false, QUICK), None);
        for _ in 2..STORM_AFTER {
            assert_eq!(pace.after(false, QUICK), None);
        }
        let pause = pace.after(false, QUICK).expect("a new storm");
        assert!(pause <= STORM_FIRST_PAUSE * 3 / 2, "starts over: {pause:?}");

        // A change ends it too.
        assert_eq!(pace.after(true, QUICK), None);
        assert_eq!(pace.after(false, QUICK), None);
    }
}
