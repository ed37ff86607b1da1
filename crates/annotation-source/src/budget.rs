//! The ceiling on annotation payload bytes a process holds between reading them from S3 and
//! committing their rows (docs/correctness.md §8).
//!
//! One object version can carry 1,000 annotations of 1 MiB, and every copy of it carries them
//! again; reading such sets whole, several at a time, would hold gigabytes. A reader reserves
//! the bytes it is about to read (the sizes ListObjectAnnotations reported, or the largest
//! payload S3 allows for a single read) and the [`Reservation`] travels with the rows until
//! they are committed; dropping it gives the bytes back. A reservation larger than the whole
//! budget is cut to the budget, so one oversized read waits for everything else to drain
//! instead of waiting forever.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Bytes per permit: the semaphore counts KiB so that a budget of gigabytes fits its `u32`
/// acquisitions.
const UNIT: u64 = 1024;

/// The largest payload one annotation can have (S3 limit).
pub const MAX_ANNOTATION_BYTES: u64 = 1 << 20;

/// A shared budget of payload bytes. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

/// Bytes held against a [`ReadBudget`] until dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back as soon as the reservation is dropped"]
pub struct Reservation {
    permits: Option<Arc<Semaphore>>,
    units: u32,
}

impl ReadBudget {
    /// A budget of `bytes` (at least one annotation's worth).
    pub fn new(bytes: u64) -> Self {
        let units =
            u32::try_from(bytes.max(MAX_ANNOTATION_BYTES).div_ceil(UNIT)).unwrap_or(u32::MAX);
        ReadBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Waits until `bytes` (cut to the whole budget) are free and holds them.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = units_for(bytes).min(self.units);
        if units == 0 {
            return Reservation::none();
        }
        match self.permits.acquire_many(units).await {
            Ok(permit) => {
                permit.forget();
                Reservation {
                    permits: Some(self.permits.clone()),
                    units,
                }
            }
            // The semaphore is never closed; an unbounded read is the only alternative.
            Err(_) => Reservation::none(),
        }
    }
}

impl Reservation {
    /// A reservation of nothing (for reads that hold no payload).
    pub fn none() -> Self {
        Reservation {
            permits: None,
            units: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// Gives back what is held beyond `bytes` (a read turned out smaller than reserved).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = units_for(bytes).min(self.units);
        if let Some(permits) = &self.permits {
            permits.add_permits((self.units - keep) as usize);
        }
        self.units = keep;
    }

    /// Holds `other`'s bytes too, until this reservation is dropped.
    pub fn merge(&mut self, mut other: Reservation) {
        match (&self.permits, other.permits.take()) {
            (_, None) => {}
            (None, Some(p)) => {
                self.permits = Some(p);
                self.units = other.units;
            }
            (Some(mine), Some(theirs)) if Arc::ptr_eq(mine, &theirs) => {
                self.units += other.units;
            }
            // Another budget: give its bytes back when this one is dropped.
            (Some(_), Some(theirs)) => {
                drop(Reservation {
                    permits: Some(theirs),
                    units: other.units,
                });
            }
        }
        other.units = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(permits) = &self.permits
            && self.units > 0
        {
            permits.add_permits(self.units as usize);
        }
    }
}

fn units_for(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_hold_bytes_until_dropped() {
        let budget = ReadBudget::new(4 << 20);
        let a = budget.reserve(3 << 20).await;
        assert_eq!(budget.available(), 1 << 20);
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(2 << 20));
        assert!(
            waiting.await.is_err(),
            "2 MiB must wait while 3 of 4 are held"
        );
        drop(a);
        let b = budget.reserve(2 << 20).await;
        assert_eq!(budget.available(), 2 << 20);
        drop(b);
        assert_eq!(budget.available(), 4 << 20);
    }

    #[tokio::test]
    async fn a_read_larger_than_the_budget_waits_for_all_of_it_not_forever() {
        let budget = ReadBudget::new(2 << 20);
        let all = budget.reserve(10 << 20).await;
        assert_eq!(all.bytes(), 2 << 20);
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test]
    async fn shrinking_and_merging_give_back_exactly_what_was_taken() {
        let budget = ReadBudget::new(4 << 20);
        let mut a = budget.reserve(MAX_ANNOTATION_BYTES).await;
        a.shrink_to(10);
        assert_eq!(a.bytes(), 1024);
        let b = budget.reserve(1 << 20).await;
        a.merge(b);
        assert_eq!(budget.available(), (4 << 20) - (1 << 20) - 1024);
        a.merge(Reservation::none());
        drop(a);
        assert_eq!(budget.available(), 4 << 20);
    }
}
