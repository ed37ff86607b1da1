//! Resolve: a received message's events become observations, by reading S3 (what each event
//! makes us read is in docs/correctness.md §2). Transient S3 failures are retried in place
//! while the message stays held; early parts of a large set go to the batcher as they are read.

use std::sync::Arc;
use std::time::Duration;

use annotation_source::{AnnotationState, MAX_ANNOTATION_BYTES, Reservation, SourceError};
use s3_events::{Action, Event, EventKind, Notification, ObjectRef};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::Shared;
use super::health::Cause;
use super::intake::Inbound;
use super::visibility::Held;
use crate::object_rows::KeyObservation;
use crate::rows::{Observation, Observed, sequence_number};
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
    /// Everything the message's events established (empty for test events and ignored ones):
    /// annotation observations, and the key listings of its object events.
    Observed(Vec<Observation>, Vec<KeyObservation>),
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
            let started = std::time::Instant::now();
            let resolved = resolve_through_outages(&shared, inbound, &tx).await;
            shared.metrics.resolve_seconds.observe(started.elapsed());
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
            return (
                Outcome::Observed(Vec::new(), Vec::new()),
                Reservation::none(),
            );
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
    let mut keys = Vec::new();
    let mut held = Reservation::none();
    for event in events {
        // The key listing and the annotation reads are independent S3 calls: made together.
        let (listed, resolved) = tokio::join!(
            list_key(shared, event),
            resolve_event(shared, msg, event, parts)
        );
        match listed {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(e) if e.is_retryable() => return (Outcome::Retry(e.to_string()), held),
            Err(e) => return (Outcome::Poison(e.to_string()), held),
        }
        match resolved {
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
    (Outcome::Observed(observations, keys), held)
}

/// For an object event under the object scope: every version of its key, listed now
/// (`object_rows`). The event's own size and ETag are not used: under reordering they may
/// describe a version already gone, and they name no storage class.
async fn list_key(shared: &Shared, event: &Event) -> Result<Option<KeyObservation>, SourceError> {
    let object_event = matches!(
        event.kind,
        EventKind::ObjectCreated(_) | EventKind::ObjectRemoved | EventKind::DeleteMarkerCreated
    );
    let Some(scope) = &shared.objects else {
        return Ok(None);
    };
    if !object_event || !scope.covers(&event.object.key) {
        return Ok(None);
    }
    let listed = shared
        .source
        .list_key_versions(&event.object.bucket, &event.object.key)
        .await?;
    Ok(Some(KeyObservation {
        bucket: event.object.bucket.clone(),
        key: event.object.key.clone(),
        sequence_number: sequence_number(listed.at_nanos, &shared.writer_id),
        versions: listed.value,
        whole_key: true,
        context: Some(event.context.clone()),
    }))
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
