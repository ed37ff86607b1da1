//! Commits a batch exactly once (docs/correctness.md §3), for `serve` and `backfill` alike.

use annotation_table::{Batch, CommitReport, JournalTable, TableError};

/// Commits `batch` exactly once: [`JournalTable::append`] retries conflicts itself; when a
/// retryable failure outlasts those retries the batch is written again under the same id, after
/// checking that no earlier attempt landed (docs/correctness.md §3).
pub async fn commit_batch(table: &JournalTable, batch: &Batch) -> Result<CommitReport, TableError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if attempt > 1
            && let Some(snapshot) = table.committed_batch(&batch.id).await?
        {
            return Ok(CommitReport::already_committed(
                batch.id.clone(),
                batch.rows.len(),
                snapshot,
                attempt,
            ));
        }
        match table.append(batch.clone()).await {
            Ok(report) => return Ok(report),
            Err(e) if e.is_retryable() && attempt < 6 => {
                let wait = std::time::Duration::from_millis(500u64 << attempt);
                tracing::warn!(table = %table.ident(), batch_id = %batch.id, attempt, ?wait, error = %e, "commit failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}
