//! Ack: committed messages are deleted from the queue, every per-entry failure checked.

use std::sync::Arc;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::mpsc;
use tracing::warn;

use super::Shared;
use super::visibility::Held;

/// Deletes committed messages (DeleteMessageBatch, 10 at a time, every per-entry failure
/// checked).
pub(crate) async fn ack_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Vec<Held>>) {
    while let Some(messages) = rx.recv().await {
        delete_all(&shared, &messages).await;
    }
}

pub(crate) async fn delete_all(shared: &Shared, messages: &[Held]) {
    let chunks = messages.chunks(10).map(|chunk| delete_chunk(shared, chunk));
    futures::future::join_all(chunks).await;
}

async fn delete_chunk(shared: &Shared, chunk: &[Held]) {
    let entries: Vec<_> = chunk
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&m.receipt)
                .build()
                .ok()
        })
        .collect();
    let started = std::time::Instant::now();
    let result = shared
        .sqs
        .delete_message_batch()
        .queue_url(&shared.queue.url)
        .set_entries(Some(entries))
        .send()
        .await;
    shared.metrics.observe_delete(started.elapsed());
    match result {
        Ok(out) => {
            let failed: std::collections::HashMap<&str, String> = out
                .failed()
                .iter()
                .map(|f| {
                    (
                        f.id(),
                        format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    )
                })
                .collect();
            for (i, m) in chunk.iter().enumerate() {
                match failed.get(i.to_string().as_str()) {
                    Some(why) => {
                        shared.metrics.delete_failed.inc();
                        warn!(message_id = %m.message_id, reason = %why, "DeleteMessage failed after its rows were committed; a redelivery will restate nothing");
                    }
                    None => {
                        shared.metrics.acked.inc();
                    }
                }
                shared.registry.remove(&m.receipt);
            }
        }
        Err(e) => {
            shared.metrics.delete_failed.inc_by(chunk.len() as u64);
            warn!(queue_url = %shared.queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "DeleteMessageBatch failed after the rows were committed; the messages will be redelivered and restate nothing");
            for m in chunk {
                shared.registry.remove(&m.receipt);
            }
        }
    }
}
