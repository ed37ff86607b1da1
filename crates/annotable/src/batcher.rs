//! The flush policy `serve` and `backfill` share: items gather into a batch until it holds
//! `flush_rows` rows or `flush_bytes` bytes, or its oldest item is `flush_age` old.
//!
//! The batcher only counts and times; what an item is (a message and its observations, a
//! version's rows and its listing position) is its user's business. Sizes are estimated once,
//! by [`crate::rows::Observed::estimated_bytes`].

use std::time::Duration;

use tokio::time::Instant;

/// When a batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// At this many rows.
    pub rows: usize,
    /// At this many estimated bytes.
    pub bytes: usize,
    /// When the oldest item is this old.
    pub age: Duration,
}

/// Items waiting to be committed together.
#[derive(Debug)]
pub struct Batcher<T> {
    policy: FlushPolicy,
    items: Vec<T>,
    rows: usize,
    bytes: usize,
    oldest: Option<Instant>,
}

impl<T> Batcher<T> {
    /// An empty batcher.
    pub fn new(policy: FlushPolicy) -> Self {
        Batcher {
            policy,
            items: Vec::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
        }
    }

    /// Adds an item of `rows` rows and `bytes` bytes, received at `since` (the batch's age
    /// counts from its oldest item).
    pub fn push(&mut self, item: T, rows: usize, bytes: usize, since: Instant) {
        self.items.push(item);
        self.rows += rows;
        self.bytes += bytes;
        self.oldest = Some(self.oldest.map_or(since, |o| o.min(since)));
    }

    /// Whether the batch has reached its row or byte limit.
    pub fn is_full(&self) -> bool {
        self.rows >= self.policy.rows || self.bytes >= self.policy.bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the batch, leaving the batcher empty.
    pub fn take(&mut self) -> Vec<T> {
        self.rows = 0;
        self.bytes = 0;
        self.oldest = None;
        std::mem::take(&mut self.items)
    }

    /// When the batch must be flushed for its age (`None` while empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.policy.age)
    }

    /// Resolves when the batch is due for its age; never while it is empty.
    pub async fn aged(&self) {
        match self.deadline() {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FlushPolicy {
        FlushPolicy {
            rows: 10,
            bytes: 1_000,
            age: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_due_when_its_oldest_item_reaches_the_age() {
        let mut b = Batcher::new(policy());
        assert!(b.deadline().is_none());
        let first = Instant::now();
        b.push("a", 1, 10, first);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        b.push("b", 1, 10, Instant::now());
        assert!(!b.is_full());
        let waited = Instant::now();
        b.aged().await;
        assert_eq!(
            Instant::now() - waited,
            Duration::from_millis(500),
            "due 2 s after the first item, not the last"
        );
        assert_eq!(b.take(), vec!["a", "b"]);
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_batch_is_never_due() {
        let b: Batcher<()> = Batcher::new(policy());
        let waited = tokio::time::timeout(Duration::from_secs(3600), b.aged()).await;
        assert!(waited.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_full_at_its_row_or_byte_limit() {
        let mut b = Batcher::new(policy());
        for i in 0..9 {
            b.push(i, 1, 1, Instant::now());
        }
        assert!(!b.is_full());
        b.push(9, 1, 1, Instant::now());
        assert!(b.is_full(), "10 rows");
        b.take();
        b.push(0, 1, 999, Instant::now());
        assert!(!b.is_full());
        b.push(1, 0, 1, Instant::now());
        assert!(b.is_full(), "1,000 bytes");
        assert_eq!(b.take().len(), 2);
        assert!(!b.is_full(), "taking the batch resets the counts");
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_received_earlier_makes_the_batch_due_earlier() {
        let mut b = Batcher::new(policy());
        let now = Instant::now();
        b.push("late", 1, 1, now);
        b.push("held since before", 1, 1, now - Duration::from_secs(1));
        assert_eq!(b.deadline(), Some(now + Duration::from_secs(1)));
    }
}
