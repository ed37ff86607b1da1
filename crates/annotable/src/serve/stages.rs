//! Resolve → batch → commit → ack, and the dead-letter path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annotation_source::{AnnotationState, MAX_ANNOTATION_BYTES, Reservation, SourceError};
use annotation_table::{Batch, CatalogConfig, JournalRow, JournalTable, Source, TableError};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageAttributeValue};
use chrono::Utc;
use s3_events::{Action, Event, Notification, ObjectRef};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::Shared;
use super::health::Cause;
use super::intake::Inbound;
use super::visibility::{Held, release, retry_backoff};
use crate::config::Config;
use crate::pipeline::{
    Observation, Observed, Overlay, StateCache, approx_row_bytes, commit_batch, sequence_number,
};
use crate::set_reader::Part;

/// What the resolve stage hands the batcher.
pub(crate) enum Resolved {
    /// An early part of a large annotation set (docs/correctness.md §8): committed before the
    /// message it belongs to is acknowledged.
    Part {
        /// The receipt of the message it belongs to.
        receipt: String,
        /// The part.
        part: Box<Part>,
    },
    /// A message after all its S3 reads.
    Message {
        msg: Held,
        outcome: Outcome,
        /// The payload bytes its observations hold.
        held: Reservation,
    },
}

pub(crate) enum Outcome {
    /// Everything the message's events established (empty for test events and ignored ones).
    Observed(Vec<Observation>),
    /// Cannot ever succeed: dead-letter path.
    Poison(String),
    /// May succeed later: release with a backoff.
    Retry(String),
}

/// Resolves up to `messages_in_flight` messages at once.
pub(crate) async fn resolve_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    tx: mpsc::Sender<Resolved>,
) {
    let limit = Arc::new(Semaphore::new(shared.options.messages_in_flight));
    let mut tasks = JoinSet::new();
    while let Some(inbound) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            let resolved = resolve_through_outages(&shared, inbound, &tx).await;
            let _ = tx.send(resolved).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Resolves a message, retrying in place while S3 fails transiently: the message stays held
/// (the heartbeat keeps it invisible), so an outage does not count receives towards the
/// dead-letter limit. Only a stop hands it back for a later retry.
async fn resolve_through_outages(
    shared: &Shared,
    inbound: Inbound,
    parts: &mpsc::Sender<Resolved>,
) -> Resolved {
    let Inbound { msg, parsed } = inbound;
    let mut attempt = 0u32;
    loop {
        let (outcome, held) = resolve_message(shared, &msg, &parsed, parts).await;
        let Outcome::Retry(reason) = &outcome else {
            if attempt > 0 {
                shared.health.recovered(Cause::S3);
                info!(message_id = %msg.message_id, attempts = attempt + 1, "S3 reads work again; message resolved");
            }
            return Resolved::Message { msg, outcome, held };
        };
        attempt += 1;
        shared.health.failing(Cause::S3, reason.clone());
        let wait = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
        warn!(message_id = %msg.message_id, attempt, ?wait, %reason, "S3 reads keep failing; the message is held and retried (not returned to the queue)");
        tokio::select! {
            _ = shared.stopping.cancelled() => return Resolved::Message { msg, outcome, held },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn resolve_message(
    shared: &Shared,
    msg: &Held,
    parsed: &Result<Notification, s3_events::ParseError>,
    parts: &mpsc::Sender<Resolved>,
) -> (Outcome, Reservation) {
    let events = match parsed {
        Err(e) => {
            return (
                Outcome::Poison(format!("unparseable notification: {e}")),
                Reservation::none(),
            );
        }
        Ok(Notification::Test(_)) => {
            shared.metrics.events_ignored.inc();
            return (Outcome::Observed(Vec::new()), Reservation::none());
        }
        Ok(Notification::Events(events)) => events,
        Ok(Notification::Partial { events, rejected }) => {
            // The good records go on; each bad one is reported with the message, which is
            // deleted once the good ones are committed (retrying cannot mend a bad record).
            for e in rejected {
                shared.metrics.poisoned.inc();
                error!(message_id = %msg.message_id, kind = e.kind(), reason = %e, "a record of this message cannot be parsed and is skipped; the message's other records are processed");
            }
            events
        }
    };
    let mut observations = Vec::with_capacity(events.len());
    let mut held = Reservation::none();
    for event in events {
        match resolve_event(shared, msg, event, parts).await {
            Ok(Some(part)) => {
                observations.push(part.observation);
                held.merge(part.held);
            }
            Ok(None) => {
                shared.metrics.events_ignored.inc();
            }
            Err(e) if e.is_retryable() => return (Outcome::Retry(e.to_string()), held),
            Err(e) => return (Outcome::Poison(e.to_string()), held),
        }
    }
    (Outcome::Observed(observations), held)
}

/// The S3 reads of docs/correctness.md §2. Every annotation change is verified by reading the annotation
/// (a delete event too: under reordering, the annotation may have been put again since), and
/// every object-level change by reading the version's whole set, so each row states what S3
/// held at its sequence number. A set too large for one part sends its early parts to the
/// batcher as they are read (each holding its bytes of the read budget until committed).
async fn resolve_event(
    shared: &Shared,
    msg: &Held,
    event: &Event,
    parts: &mpsc::Sender<Resolved>,
) -> Result<Option<Part>, SourceError> {
    let (at_nanos, observed, answered, held) = match &event.action {
        Action::FetchAnnotation(a) | Action::DeleteAnnotation(a) => {
            let mut held = shared.budget.reserve(MAX_ANNOTATION_BYTES).await;
            let got = shared.source.get(&event.object, &a.name).await?;
            let observed = match got.value {
                AnnotationState::Present(ann) => Observed::Annotation {
                    name: a.name.clone(),
                    state: Some(ann),
                },
                AnnotationState::Absent => Observed::Annotation {
                    name: a.name.clone(),
                    state: None,
                },
                AnnotationState::VersionGone => Observed::Version(None),
            };
            held.shrink_to(observed.payload_bytes() as u64);
            (got.at_nanos, observed, got.version_id, held)
        }
        Action::Reset { .. } => {
            let set = shared
                .sets
                .list(&event.object, Some(&event.context))
                .await?;
            let mut set = shared.sets.read(set, Some(&event.context));
            while let Some(part) = set.next().await? {
                if part.last {
                    return Ok(Some(part));
                }
                let receipt = msg.receipt.clone();
                let part = Box::new(part);
                if parts.send(Resolved::Part { receipt, part }).await.is_err() {
                    break;
                }
            }
            // The batcher is gone (the process is stopping): the message comes back later.
            return Err(SourceError::Closed);
        }
        Action::Ignore(_) => return Ok(None),
    };
    // An event without a versionId addressed the current version: the rows belong to the
    // version S3 answered for, never to a null version it was not.
    let object = match (&event.object.version_id, answered) {
        (None, Some(v)) if v != "null" => ObjectRef {
            version_id: Some(v),
            ..event.object.clone()
        },
        _ => event.object.clone(),
    };
    Ok(Some(Part {
        observation: Observation {
            object,
            sequence_number: sequence_number(at_nanos, &shared.writer_id),
            observed,
            context: Some(event.context.clone()),
        },
        held,
        last: true,
    }))
}

/// Messages and observations committed together.
#[derive(Default)]
pub(crate) struct PendingBatch {
    messages: Vec<Held>,
    observations: Vec<Observation>,
    /// Receipts of the messages whose early parts are in this batch.
    parts_of: Vec<String>,
    /// The payload bytes the observations hold, given back once committed.
    held: Vec<Reservation>,
    rows: usize,
    bytes: usize,
}

impl PendingBatch {
    fn add(&mut self, observations: &[Observation]) {
        for o in observations {
            self.rows += o.observed.max_rows();
            self.bytes += o.observed.payload_bytes() + 300 * o.observed.max_rows();
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
    let mut batch = PendingBatch::default();
    let mut oldest: Option<Instant> = None;
    loop {
        let deadline = oldest.map(|t| tokio::time::Instant::from_std(t + opts.flush_age));
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } else { std::future::pending::<()>().await } } => {
                flush(&tx, &mut batch, &mut oldest).await;
                continue;
            }
        };
        let Some(resolved) = next else {
            flush(&tx, &mut batch, &mut oldest).await;
            return;
        };
        match resolved {
            Resolved::Part { receipt, part } => {
                let part = *part;
                batch.add(std::slice::from_ref(&part.observation));
                batch.observations.push(part.observation);
                batch.held.push(part.held);
                batch.parts_of.push(receipt);
                oldest.get_or_insert_with(Instant::now);
            }
            Resolved::Message {
                msg,
                outcome: Outcome::Poison(reason),
                ..
            } => {
                let shared = shared.clone();
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
                let shared = shared.clone();
                tokio::spawn(async move { release(&shared, &msg, wait).await });
                continue;
            }
            Resolved::Message {
                mut msg,
                outcome: Outcome::Observed(observations),
                held,
            } => {
                msg.body = String::new();
                batch.add(&observations);
                batch.observations.extend(observations);
                batch.held.push(held);
                oldest.get_or_insert(msg.received_at);
                batch.messages.push(msg);
            }
        }
        if batch.rows >= opts.flush_rows || batch.bytes >= opts.flush_bytes {
            flush(&tx, &mut batch, &mut oldest).await;
        }
    }
}

async fn flush(
    tx: &mpsc::Sender<PendingBatch>,
    batch: &mut PendingBatch,
    oldest: &mut Option<Instant>,
) {
    *oldest = None;
    if batch.messages.is_empty() && batch.observations.is_empty() {
        return;
    }
    let full = std::mem::take(batch);
    let _ = tx.send(full).await;
}

/// The dead-letter path (docs/correctness.md §3).
async fn poison(shared: &Shared, msg: Held, reason: &str) {
    shared.metrics.poisoned.inc();
    if shared.queue.has_redrive {
        error!(message_id = %msg.message_id, receive_count = msg.receive_count, reason, "poison message: left to the queue's redrive policy (made visible again so it reaches the dead-letter queue)");
        release(shared, &msg, Duration::ZERO).await;
        return;
    }
    if let Some(dlq) = &shared.options.dead_letter_queue_url {
        let reason_attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(truncate(reason, 1024))
            .build();
        let mut send = shared
            .sqs
            .send_message()
            .queue_url(dlq)
            .message_body(&msg.body);
        if let Ok(attr) = reason_attr {
            send = send.message_attributes("annotable-reason", attr);
        }
        match send.send().await {
            Ok(_) => {
                error!(message_id = %msg.message_id, dead_letter_queue = %dlq, reason, "poison message moved to the dead-letter queue");
                delete_all(shared, std::slice::from_ref(&msg)).await;
                return;
            }
            Err(e) => {
                warn!(message_id = %msg.message_id, dead_letter_queue = %dlq, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not move a poison message to the dead-letter queue; it stays on the queue");
            }
        }
    } else {
        error!(message_id = %msg.message_id, receive_count = msg.receive_count, reason, "poison message: no dead-letter queue configured, it stays on the queue (hidden for a while) until its retention expires");
    }
    let wait = retry_backoff(msg.receive_count.max(4));
    release(shared, &msg, wait).await;
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Commits batches one at a time; hands their messages to the acker once committed.
///
/// Suppression needs no check of other writers here: a row is left out only when rows already
/// committed make it redundant whatever another writer commits (see `pipeline`), so a
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
        let mut rows: Vec<JournalRow> = Vec::new();
        // Each observation is dropped once its rows exist, so a payload is held once, not twice.
        for o in observations {
            event_times.push(o.context.as_ref().and_then(|c| c.event_time));
            rows.extend(cache.rows_for(&mut overlay, &o, Source::Notification, now));
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
        let bytes: usize = rows.iter().map(approx_row_bytes).sum();
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

/// Deletes committed messages (DeleteMessageBatch, 10 at a time, every per-entry failure
/// checked).
pub(crate) async fn ack_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Vec<Held>>) {
    while let Some(messages) = rx.recv().await {
        delete_all(&shared, &messages).await;
    }
}

async fn delete_all(shared: &Shared, messages: &[Held]) {
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
    let result = shared
        .sqs
        .delete_message_batch()
        .queue_url(&shared.queue.url)
        .set_entries(Some(entries))
        .send()
        .await;
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

/// Replays the journal rows ingested within `lookback` into the suppression memory. Payloads
/// are read only for rows without an ETag (see `pipeline`'s digest), so warming up does not
/// hold an hour of payloads.
pub(crate) async fn warm_up(
    table: &JournalTable,
    catalog_config: &CatalogConfig,
    config: &Config,
    lookback: Duration,
    cache: &mut StateCache,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
    if lookback.is_zero() {
        return Ok(0);
    }
    let session = annotation_sql::QuerySession::new(
        table.catalog().clone(),
        catalog_config.describe(),
        config.namespace(),
        config.table(),
    )
    .await?;
    let since = Utc::now() - chrono::Duration::from_std(lookback)?;
    let sql = format!(
        "SELECT bucket, object_key, object_version_id, name, record_type, sequence_number, \
         last_modified_date, size, e_tag, checksum_algorithm, replication_status, \
         CASE WHEN e_tag IS NULL THEN text_value END AS text_value, \
         event_name, event_time, request_id \
         FROM {} WHERE ingested_at >= TIMESTAMP '{}' \
         ORDER BY sequence_number, CASE WHEN record_type = 'OBJECT_RESET' THEN 0 ELSE 1 END",
        config.table(),
        since.format("%Y-%m-%dT%H:%M:%S%.6fZ")
    );
    let result = session.query(&sql).await?;
    let mut n = 0;
    for batch in &result.batches {
        let s = |i: usize| arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let (bucket, key, version, name, kind, seq, etag, checksum, repl, text) = (
            s(0)?,
            s(1)?,
            s(2)?,
            s(3)?,
            s(4)?,
            s(5)?,
            s(8)?,
            s(9)?,
            s(10)?,
            s(11)?,
        );
        let (event_name, request_id) = (s(12)?, s(14)?);
        let event_time = arrow::compute::cast(
            batch.column(13),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let event_time = event_time.as_primitive::<TimestampMicrosecondType>();
        let lm = arrow::compute::cast(
            batch.column(6),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let size = arrow::compute::cast(batch.column(7), &DataType::Int64)?;
        let str_at = |a: &arrow::array::ArrayRef, i: usize| {
            let a = a.as_string::<i32>();
            (!a.is_null(i)).then(|| a.value(i).to_string())
        };
        let lm = lm.as_primitive::<TimestampMicrosecondType>();
        let size = size.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let record_type = match str_at(&kind, i).as_deref() {
                Some("PUT") => annotation_table::RecordType::Put,
                Some("DELETE") => annotation_table::RecordType::Delete,
                Some("OBJECT_RESET") => annotation_table::RecordType::ObjectReset,
                // Not a row this version writes: it must not shape what is suppressed.
                _ => continue,
            };
            let row = JournalRow {
                bucket: str_at(&bucket, i).unwrap_or_default(),
                object_key: str_at(&key, i).unwrap_or_default(),
                object_version_id: str_at(&version, i),
                object_join_key: String::new(),
                name: str_at(&name, i),
                record_type,
                sequence_number: str_at(&seq, i).unwrap_or_default(),
                last_modified_date: (!lm.is_null(i))
                    .then(|| {
                        chrono::DateTime::from_timestamp_micros(lm.value(i)).map(|d| d.naive_utc())
                    })
                    .flatten(),
                size: (!size.is_null(i)).then(|| size.value(i)),
                e_tag: str_at(&etag, i),
                checksum_algorithm: str_at(&checksum, i),
                replication_status: str_at(&repl, i),
                text_value: str_at(&text, i),
                event_name: str_at(&event_name, i),
                event_time: (!event_time.is_null(i))
                    .then(|| chrono::DateTime::from_timestamp_micros(event_time.value(i)))
                    .flatten(),
                source: Source::Notification,
                requester: None,
                source_ip_address: None,
                request_id: str_at(&request_id, i),
                ingested_at: Utc::now(),
            };
            cache.apply_row(&row);
            n += 1;
        }
    }
    Ok(n)
}
