//! Batch: resolved messages and early parts gathered into batches by the shared flush policy
//! (`crate::batcher`); poison and retried messages leave here for the dead-letter path or a
//! later retry.

use std::sync::Arc;

use annotation_source::Reservation;
use tokio::sync::mpsc;
use tracing::warn;

use super::Shared;
use super::dead_letter::poison;
use super::resolve::{Outcome, Resolved};
use super::visibility::{Held, release, retry_backoff};
use crate::batcher::{Batcher, FlushPolicy};
use crate::object_rows::KeyObservation;
use crate::rows::Observation;

/// Messages and observations committed together.
#[derive(Default)]
pub(crate) struct PendingBatch {
    pub messages: Vec<Held>,
    pub observations: Vec<Observation>,
    /// Key listings of object events (object journal rows).
    pub keys: Vec<KeyObservation>,
    /// Receipts of the messages whose early parts are in this batch.
    pub parts_of: Vec<String>,
    /// The payload bytes the observations hold, given back once committed.
    pub held: Vec<Reservation>,
}

impl PendingBatch {
    fn add(&mut self, resolved: Resolved) {
        match resolved {
            Resolved::Part { receipt, part } => {
                self.observations.push(part.observation);
                self.held.push(part.held);
                self.parts_of.push(receipt);
            }
            Resolved::Message {
                mut msg,
                outcome: Outcome::Observed(observations, keys),
                held,
            } => {
                msg.body = String::new();
                self.observations.extend(observations);
                self.keys.extend(keys);
                self.held.push(held);
                self.messages.push(msg);
            }
            // Never batched (see `batch_loop`).
            Resolved::Message { .. } => {}
        }
    }
}

/// Collects resolved messages into batches, flushed on rows, bytes or age.
pub(crate) async fn batch_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Resolved>,
    tx: mpsc::Sender<PendingBatch>,
) {
    let opts = &shared.options;
    let mut batch: Batcher<Resolved> = Batcher::new(FlushPolicy {
        rows: opts.flush_rows,
        bytes: opts.flush_bytes,
        age: opts.flush_age,
    });
    loop {
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = batch.aged() => {
                flush(&tx, &mut batch).await;
                continue;
            }
        };
        let Some(resolved) = next else {
            flush(&tx, &mut batch).await;
            return;
        };
        let since = match &resolved {
            Resolved::Message {
                msg,
                outcome: Outcome::Poison(reason),
                ..
            } => {
                let (shared, msg, reason) = (shared.clone(), msg.clone(), reason.clone());
                tokio::spawn(async move { poison(&shared, msg, &reason).await });
                continue;
            }
            Resolved::Message {
                msg,
                outcome: Outcome::Retry(reason),
                ..
            } => {
                shared.metrics.failed.inc();
                let wait = retry_backoff(msg.receive_count);
                warn!(message_id = %msg.message_id, receive_count = msg.receive_count, ?wait, %reason, "message failed; it will be retried");
                let (shared, msg) = (shared.clone(), msg.clone());
                tokio::spawn(async move { release(&shared, &msg, wait).await });
                continue;
            }
            Resolved::Message { msg, .. } => tokio::time::Instant::from_std(msg.received_at),
            Resolved::Part { .. } => tokio::time::Instant::now(),
        };
        let (observations, keys): (&[Observation], &[KeyObservation]) = match &resolved {
            Resolved::Part { part, .. } => (std::slice::from_ref(&part.observation), &[]),
            Resolved::Message {
                outcome: Outcome::Observed(observations, keys),
                ..
            } => (observations, keys),
            Resolved::Message { .. } => (&[], &[]),
        };
        let rows = observations
            .iter()
            .map(|o| o.observed.max_rows())
            .chain(keys.iter().map(KeyObservation::rows))
            .sum();
        let bytes = observations
            .iter()
            .map(|o| o.observed.estimated_bytes())
            .sum();
        batch.push(resolved, rows, bytes, since);
        if batch.is_full() {
            flush(&tx, &mut batch).await;
        }
    }
}

async fn flush(tx: &mpsc::Sender<PendingBatch>, batch: &mut Batcher<Resolved>) {
    if batch.is_empty() {
        return;
    }
    let mut pending = PendingBatch::default();
    for resolved in batch.take() {
        pending.add(resolved);
    }
    let _ = tx.send(pending).await;
}
