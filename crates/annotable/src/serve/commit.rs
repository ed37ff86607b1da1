//! Commit: a batch's observations become rows (minus the suppressed ones), committed once;
//! the batch's messages go to the acker only after their rows are in a committed snapshot.
//!
//! With objects on, a batch is two commits: its object journal rows first, then its
//! annotation rows, each exactly once by its own batch id. Iceberg commits one table at a time;
//! this order means an annotation row is never committed before the object rows its event
//! produced, and a crash between the two only makes a redelivered message list its keys again
//! (object rows re-stated, which the `objects` view folds away).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annotation_table::{Batch, JournalRow, JournalTable, ObjectRow, Source, TableError, TableRow};
use chrono::Utc;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::Shared;
use super::batch::PendingBatch;
use super::health::Cause;
use super::visibility::{Held, release, retry_backoff};
use crate::object_rows::object_rows_of;
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
    objects: Option<JournalTable>,
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
            keys,
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
        let object_rows: Vec<ObjectRow> = keys
            .iter()
            .flat_map(|k| object_rows_of(k, Source::Notification, now))
            .collect();
        if rows.is_empty() && object_rows.is_empty() {
            cache.commit(overlay);
            let _ = ack.send(sound).await;
            continue;
        }
        let row_count = rows.len() + object_rows.len();
        let mut result = Ok(());
        if let Some(objects) = &objects
            && !object_rows.is_empty()
        {
            let batch = Batch::new(Source::Notification, object_rows);
            result = commit_through_outages(&shared, objects, batch).await;
        }
        if result.is_ok() && !rows.is_empty() {
            let batch = Batch::new(Source::Notification, rows);
            result = commit_through_outages(&shared, &table, batch).await;
        }
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

/// Commits `batch` through the table's one commit loop. While the catalog fails
/// transiently the loop keeps trying (the serve table's policy has no time limit; the batch's
/// messages stay held and invisible) and readiness reports the outage; once the process stops
/// receiving, the loop gives up at the commit deadline, inside the shutdown deadline, and the
/// messages come back to be committed again.
async fn commit_through_outages<R: TableRow>(
    shared: &Shared,
    table: &JournalTable,
    batch: Batch<R>,
) -> Result<(), TableError> {
    let started = Instant::now();
    let batch_id = batch.id.clone();
    let give_up = async {
        shared.stopping.cancelled().await;
        tokio::time::sleep(commit_grace(shared.options.shutdown_timeout)).await;
    };
    let mut failed = false;
    let report = table
        .append_until(batch, give_up, |retry| {
            failed = true;
            shared
                .health
                .failing(Cause::Catalog, retry.error.to_string());
        })
        .await?;
    debug!(batch_id = %report.batch_id, rows = report.rows, attempts = report.attempts, "committed");
    shared.registry.moved();
    shared.metrics.commit_seconds.observe(started.elapsed());
    if failed {
        shared.health.recovered(Cause::Catalog);
        info!(table = %table.ident(), batch_id = %batch_id, attempts = report.attempts, "commits work again; the held batch is committed");
    }
    Ok(())
}

/// How long a commit may keep trying once the process stops receiving: most of the shutdown
/// deadline, leaving the rest to acknowledge what committed and release what did not.
pub(crate) fn commit_grace(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.saturating_sub(shutdown_timeout / 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_gives_up_inside_the_shutdown_deadline() {
        assert_eq!(
            commit_grace(Duration::from_secs(25)),
            Duration::from_secs(20)
        );
        assert_eq!(commit_grace(Duration::ZERO), Duration::ZERO);
    }
}
