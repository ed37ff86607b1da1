//! Held messages and the visibility heartbeat (docs/correctness.md §3).
//!
//! Every received message is registered with the time its visibility runs out. The heartbeat
//! extends (ChangeMessageVisibilityBatch) every message within half a timeout of running out,
//! for as long as it is held: while it is resolved, waits in a batch, or its batch commits.
//! Deleting or releasing a message unregisters it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;

/// A received message, as the stages carry it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub receipt: String,
    pub message_id: String,
    pub receive_count: u32,
    pub received_at: Instant,
    /// Kept until the message resolves, for moving it to an explicit dead-letter queue.
    pub body: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// receipt handle → (message id, visibility deadline).
    held: HashMap<String, (String, Instant)>,
    last_received: Option<Instant>,
    /// When held work last moved on: a message left, a commit landed, or work appeared.
    last_moved: Option<Instant>,
}

/// The messages held by this process.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, msg: &Held, visible_again: Instant) {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.held.is_empty() {
            inner.last_moved = Some(now);
        }
        inner
            .held
            .insert(msg.receipt.clone(), (msg.message_id.clone(), visible_again));
        inner.last_received = Some(now);
    }

    pub fn remove(&self, receipt: &str) {
        let mut inner = self.lock();
        inner.held.remove(receipt);
        inner.last_moved = Some(Instant::now());
    }

    /// Held work moved on without a message leaving (a commit of part of a large set).
    pub fn moved(&self) {
        self.lock().last_moved = Some(Instant::now());
    }

    /// How many messages are held, and for how long none of them has moved on.
    pub fn stalled(&self) -> (usize, Duration) {
        let inner = self.lock();
        let still = inner
            .last_moved
            .map(|t| t.elapsed())
            .unwrap_or(Duration::ZERO);
        (inner.held.len(), still)
    }

    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    /// When a message was last received (or `None`).
    pub fn last_received(&self) -> Option<Instant> {
        self.lock().last_received
    }

    /// Receipts whose visibility runs out before `horizon`.
    fn due(&self, horizon: Instant) -> Vec<(String, String)> {
        self.lock()
            .held
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= horizon)
            .map(|(r, (id, _))| (r.clone(), id.clone()))
            .collect()
    }

    fn extended(&self, receipt: &str, until: Instant) {
        if let Some(entry) = self.lock().held.get_mut(receipt) {
            entry.1 = until;
        }
    }
}

/// Extends held messages until `stop`.
pub(crate) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let timeout = shared.queue.visibility_timeout;
    let tick = (timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let due = shared.registry.due(Instant::now() + timeout / 2);
        for chunk in due.chunks(10) {
            extend(&shared, chunk, timeout).await;
        }
    }
}

async fn extend(shared: &Shared, chunk: &[(String, String)], timeout: Duration) {
    let secs = i32::try_from(timeout.as_secs()).unwrap_or(43_200);
    let entries = chunk.iter().enumerate().filter_map(|(i, (receipt, _))| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .build()
            .ok()
    });
    let sent_at = Instant::now();
    match shared
        .sqs
        .change_message_visibility_batch()
        .queue_url(&shared.queue.url)
        .set_entries(Some(entries.collect()))
        .send()
        .await
    {
        Ok(out) => {
            let failed: std::collections::HashSet<&str> =
                out.failed().iter().map(|f| f.id()).collect();
            for (i, (receipt, id)) in chunk.iter().enumerate() {
                if failed.contains(i.to_string().as_str()) {
                    debug!(message_id = %id, "visibility not extended (the message may have been deleted meanwhile)");
                } else {
                    shared.registry.extended(receipt, sent_at + timeout);
                    shared.metrics.visibility_extended.inc();
                }
            }
        }
        Err(e) => {
            warn!(queue_url = %shared.queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "ChangeMessageVisibilityBatch failed; will retry on the next heartbeat")
        }
    }
}

/// Makes a message visible again after `after` (0: at once) and stops holding it.
pub(crate) async fn release(shared: &Shared, msg: &Held, after: Duration) {
    let secs = i32::try_from(after.as_secs()).unwrap_or(43_200);
    if let Err(e) = shared
        .sqs
        .change_message_visibility()
        .queue_url(&shared.queue.url)
        .receipt_handle(&msg.receipt)
        .visibility_timeout(secs)
        .send()
        .await
    {
        warn!(message_id = %msg.message_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not release the message; it becomes visible when its timeout runs out");
    }
    shared.registry.remove(&msg.receipt);
}

/// Backoff before a failed message is tried again: 10 s doubling per receive, at most 15 min.
pub(crate) fn retry_backoff(receive_count: u32) -> Duration {
    let exp = receive_count.saturating_sub(1).min(7);
    Duration::from_secs((10u64 << exp).min(900))
}
