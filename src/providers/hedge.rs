//! A route's hedging policy and its budget: how long to wait on a silent target before
//! the rest of the chain starts as well, and how many requests may be hedged.
//!
//! The budget counts the route's requests and hedges over a rolling minute (six buckets
//! of ten seconds) and allows a hedge while hedges stay under `hedge_max_share` of the
//! requests, with one hedge a minute always allowed so a quiet route can still hedge (a
//! share of 0 turns hedging off).
//! It only counts; `chain` decides when to hedge.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 6;
const BUCKET_LENGTH: Duration = Duration::from_secs(10);

/// When and how often a route hedges.
#[derive(Clone)]
pub struct HedgePolicy {
    /// How long the target being tried may stay silent before the hedge starts.
    pub after: Duration,
    /// Shared with the route's chains drawn for single requests.
    pub budget: std::sync::Arc<HedgeBudget>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which ten-second slot since the budget began this bucket counts.
    slot: u64,
    requests: u64,
    hedges: u64,
}

pub struct HedgeBudget {
    max_share: f64,
    began: Instant,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

impl HedgeBudget {
    pub fn new(max_share: f64) -> HedgeBudget {
        HedgeBudget {
            max_share,
            began: Instant::now(),
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.began).as_secs();
        elapsed / BUCKET_LENGTH.as_secs()
    }

    /// The bucket of `slot`, emptied first when it still holds an older slot's counts.
    fn bucket(buckets: &mut [Bucket; BUCKETS], slot: u64) -> &mut Bucket {
        let bucket = &mut buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// Count one request of the route.
    pub fn note_request(&self) {
        self.note_request_at(Instant::now());
    }

    fn note_request_at(&self, now: Instant) {
        let slot = self.slot(now);
        if let Ok(mut buckets) = self.buckets.lock() {
            Self::bucket(&mut buckets, slot).requests += 1;
        }
    }

    /// Take one hedge from the budget, or say there is none left.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let slot = self.slot(now);
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        let (requests, hedges) = buckets
            .iter()
            .filter(|bucket| bucket.slot >= oldest && bucket.slot <= slot)
            .fold((0u64, 0u64), |(requests, hedges), bucket| {
                (requests + bucket.requests, hedges + bucket.hedges)
            });
        // A share of 0 turns hedging off; any other share allows at least one a minute.
        let allowed = if self.max_share <= 0.0 {
            0.0
        } else {
            ((requests as f64) * self.max_share).floor().max(1.0)
        };
        if (hedges as f64) >= allowed {
            return false;
        }
        Self::bucket(&mut buckets, slot).hedges += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedges_stay_under_the_share_of_requests() {
        let budget = HedgeBudget::new(0.1);
        let now = budget.began;
        for _ in 0..100 {
            budget.note_request_at(now);
        }
        let taken = (0..100).filter(|_| budget.try_take_at(now)).count();
        assert_eq!(taken, 10);
    }

    #[test]
    fn a_quiet_route_may_hedge_once_a_minute() {
        let budget = HedgeBudget::new(0.1);
        let now = budget.began;
        budget.note_request_at(now);
        assert!(budget.try_take_at(now));
        budget.note_request_at(now);
        assert!(!budget.try_take_at(now));
        // A minute later the old counts have rolled out of the window.
        let later = now + Duration::from_secs(61);
        budget.note_request_at(later);
        assert!(budget.try_take_at(later));
    }

    #[test]
    fn a_share_of_zero_never_hedges_and_one_hedges_every_request() {
        let none = HedgeBudget::new(0.0);
        none.note_request_at(none.began);
        assert!(!none.try_take_at(none.began));
        let all = HedgeBudget::new(1.0);
        let now = all.began;
        for _ in 0..20 {
            all.note_request_at(now);
        }
        assert_eq!((0..30).filter(|_| all.try_take_at(now)).count(), 20);
    }
}
