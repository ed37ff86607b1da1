//! Commit: batches in listing order through the table's commit loop, each with the run id and
//! the position after its last object in the snapshot summary, then the checkpoint copied into
//! the lease document. A batch's object journal rows are committed first, in a batch of their
//! own: a crash between the two commits resumes before them, so they are written again (the
//! `objects` view folds re-stated rows away) and never lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use annotation_table::{Batch, JournalTable, Source};
use tokio::sync::mpsc;
use tracing::warn;

use super::checkpoint::{StoredPosition, WalkLease};
use super::outbox::Pending;
use super::progress::Counters;
use super::{BackfillError, SUMMARY_OBJECTS, SUMMARY_POSITION, SUMMARY_RUN};

/// Commits batches in order; each carries the run id and the position after its last object.
pub(super) async fn commit_loop(
    table: Option<JournalTable>,
    object_table: Option<JournalTable>,
    lease: Option<Arc<WalkLease>>,
    run_id: String,
    mut objects_done: u64,
    mut rx: mpsc::Receiver<Pending>,
    counters: Arc<Counters>,
) -> Result<(), BackfillError> {
    while let Some(pending) = rx.recv().await {
        let (Some(table), Some(lease)) = (&table, &lease) else {
            // Dry run: count and drop.
            counters
                .committed_objects
                .fetch_add(pending.objects, Ordering::Relaxed);
            continue;
        };
        if !lease.is_valid().await {
            // One renewal may be late on a stalled machine: try it before giving up.
            lease.renew().await?;
        }
        objects_done += pending.objects;
        if let Some(object_table) = &object_table
            && !pending.object_rows.is_empty()
        {
            let count = pending.object_rows.len() as u64;
            object_table
                .append(Batch::new(Source::Backfill, pending.object_rows))
                .await?;
            counters.object_rows.fetch_add(count, Ordering::Relaxed);
        }
        let rows = pending.rows.len() as u64;
        let mut batch = Batch::new(Source::Backfill, pending.rows);
        if let Some(position) = &pending.position {
            batch
                .properties
                .insert(SUMMARY_RUN.to_string(), run_id.clone());
            batch.properties.insert(
                SUMMARY_POSITION.to_string(),
                serde_json::to_string(&StoredPosition::from(position)).unwrap_or_default(),
            );
            batch
                .properties
                .insert(SUMMARY_OBJECTS.to_string(), objects_done.to_string());
        }
        // Rows may be empty (every version restated nothing): the position still advances,
        // recorded in the lease document only.
        if rows > 0 {
            table.append(batch).await?;
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        counters.rows.fetch_add(rows, Ordering::Relaxed);
        counters
            .committed_objects
            .fetch_add(pending.objects, Ordering::Relaxed);
        drop(pending.held);
        let Some(position) = &pending.position else {
            continue;
        };
        if let Err(e) = lease.checkpoint(position, objects_done).await {
            match e {
                BackfillError::LeaseLost { .. } => return Err(e),
                other => {
                    warn!(error = %other, "could not record the checkpoint in the lease document; the committed snapshot has it")
                }
            }
        }
    }
    Ok(())
}
