//! Commit: a batch's observations become rows (minus the suppressed ones), committed once;
//! the batch's messages go to the acker only after their rows are in a committed snapshot.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annotation_table::{Batch, JournalRow, JournalTable, Source, TableError};
use chrono::Utc;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::Shared;
use super::batch::PendingBatch;
use super::health::Cause;
use super::visibility::{Held, release, retry_backoff};
use crate::journal_commit::commit_batch;
use crate::rows::rows_of;
use crate::suppression::{Overlay, StateCache};

/// Commits batches one at a time; hands their messages to the acker once committed.
///
/// Suppression needs no check of other writers here: a row is left out only when rows already
/// committed make it redundant whatever another writer commits (see `suppression`), so a
/// message is acknowledged as soon as the commit holding its rows landed.
pub(crate) async fn commit_loop(
    shared: Arc<Shared>,
    table: JournalTable,
    mut cache: StateCache,
    mut rx: mpsc::Receiver<PendingBatch>,
    ack: mpsc::Sender<Vec<Held>>,
) {
    // Messages an early part of which failed to commit: acknowledging them after their last
    // part would lose that part's rows, so they are released instead.
    let mut broken: HashSet<String> = HashSet::new();
    while let Some(batch) = rx.recv().await {
        let PendingBatch {
            messages,
            mut observations,
            parts_of,
            held,
            ..
        } = batch;
        // Resolves finish out of order; rows are decided in observation order (a stable sort:
        // the parts of one set keep their order).
        observations.sort_by(|a, b| a.sequence_number.cmp(&b.sequence_number));
        let mut overlay = Overlay::default();
        let now = Utc::now();
        let mut event_times = Vec::with_capacity(observations.len());
        let mut bytes = 0;
        let mut rows: Vec<JournalRow> = Vec::new();
        // Each observation is dropped once its rows exist, so a payload is held once, not twice.
        for o in observations {
            event_times.push(o.context.as_ref().and_then(|c| c.event_time));
            bytes += o.observed.estimated_bytes();
            let stated = rows_of(&o, Source::Notification, now);
            rows.extend(cache.keep(&mut overlay, &o, stated));
        }
        shared
            .metrics
            .rows_suppressed
            .inc_by(overlay.suppressed() as u64);
        let (sound, unsound): (Vec<Held>, Vec<Held>) = messages
            .into_iter()
            .partition(|m| !broken.remove(&m.receipt));
        for msg in unsound {
            warn!(message_id = %msg.message_id, "an earlier part of this message's annotation set was not committed; the message is released to be read again");
            release(&shared, &msg, retry_backoff(msg.receive_count)).await;
        }
        if rows.is_empty() {
            cache.commit(overlay);
            let _ = ack.send(sound).await;
            continue;
        }
        let row_count = rows.len();
        let result =
            commit_through_outages(&shared, &table, Batch::new(Source::Notification, rows)).await;
        drop(held);
        match result {
            Ok(()) => {
                cache.commit(overlay);
                let committed_at = Utc::now();
                shared
                    .metrics
                    .observe_commit(row_count, bytes, &event_times, committed_at);
                let _ = ack.send(sound).await;
            }
            Err(e) => {
                error!(table = %table.ident(), messages = sound.len(), rows = row_count, error = %e, "commit failed; the batch's messages are released and will be retried");
                shared.metrics.failed.inc_by(sound.len() as u64);
                broken.extend(parts_of);
                for msg in sound {
                    broken.remove(&msg.receipt);
                    let wait = retry_backoff(msg.receive_count);
                    release(&shared, &msg, wait).await;
                }
            }
        }
    }
}

/// Commits `batch`; while the catalog fails transiently, keeps trying (the batch's messages
/// stay held and invisible) until it lands or the process stops. Every try after the first
/// looks for the batch id first, so a commit whose outcome was unknown is not written twice.
async fn commit_through_outages(
    shared: &Shared,
    table: &JournalTable,
    batch: Batch,
) -> Result<(), TableError> {
    let mut outage = 0u32;
    loop {
        let started = Instant::now();
        let landed = match outage {
            0 => None,
            _ => table.committed_batch(&batch.id).await.ok().flatten(),
        };
        let result = match landed {
            Some(_) => Ok(()),
            None => commit_batch(table, &batch).await.map(|report| {
                debug!(batch_id = %report.batch_id, rows = report.rows, attempts = report.attempts, "committed");
            }),
        };
        match result {
            Ok(()) => {
                shared
                    .metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                if outage > 0 {
                    shared.health.recovered(Cause::Catalog);
                    info!(table = %table.ident(), batch_id = %batch.id, tries = outage + 1, "commits work again; the held batch is committed");
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() && !shared.stopping.is_cancelled() => {
                outage += 1;
                shared.health.failing(Cause::Catalog, e.to_string());
                let wait = Duration::from_secs(2u64 << outage.min(4));
                warn!(table = %table.ident(), batch_id = %batch.id, tries = outage, ?wait, error = %e, "commits keep failing; the batch's messages are held (not returned to the queue) and the commit is retried");
                tokio::select! {
                    _ = shared.stopping.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}
