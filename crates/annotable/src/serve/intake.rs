//! The receive loops: long polls that never wait for a commit (README.md, Architecture).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use s3_events::{Notification, ParseError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;
use super::health::Cause;
use super::visibility::Held;

/// A received message and what its body parsed to.
pub(crate) struct Inbound {
    pub msg: Held,
    pub parsed: Result<Notification, ParseError>,
}

/// One receiver: long-polls (20 s, 10 messages) until `stop`, parses, hands on. Blocks only
/// when the stages behind it are full, which bounds memory whatever the backlog.
pub(crate) async fn receive_loop(
    shared: Arc<Shared>,
    index: usize,
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    let timeout = shared.queue.visibility_timeout;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let request = shared
            .sqs
            .receive_message()
            .queue_url(&shared.queue.url)
            .max_number_of_messages(10)
            .wait_time_seconds(20)
            .visibility_timeout(i32::try_from(timeout.as_secs()).unwrap_or(43_200))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send();
        let mut request = std::pin::pin!(request);
        let polled = Instant::now();
        let response = tokio::select! {
            _ = stop.cancelled() => {
                hand_back_last_poll(&shared, request, index).await;
                return;
            }
            r = &mut request => r,
        };
        let messages = match response {
            Ok(out) => {
                if failures > 0 {
                    shared.health.recovered(Cause::Queue);
                }
                failures = 0;
                let messages = out.messages.unwrap_or_default();
                if !messages.is_empty() {
                    shared
                        .metrics
                        .observe_received(messages.len(), polled.elapsed());
                }
                messages
            }
            Err(e) => {
                failures += 1;
                shared.metrics.receive_errors.inc();
                shared.health.failing(
                    Cause::Queue,
                    format!(
                        "{} ({})",
                        aws_sdk_sqs::error::DisplayErrorContext(&e),
                        shared.queue.url
                    ),
                );
                let wait = Duration::from_millis(200u64 << failures.min(6));
                warn!(receiver = index, queue_url = %shared.queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), ?wait, "ReceiveMessage failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        // Every message of the poll is held (and so kept invisible by the heartbeat) from now
        // on, including those that wait below while the stages behind are full.
        let mut received = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(receipt) = m.receipt_handle else {
                continue;
            };
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let msg = Held {
                receipt,
                message_id: m.message_id.unwrap_or_default(),
                receive_count,
                received_at: Instant::now(),
                body: m.body.unwrap_or_default(),
            };
            shared.registry.insert(&msg, msg.received_at + timeout);
            debug!(message_id = %msg.message_id, receive_count, "received");
            received.push(msg);
        }
        for msg in received {
            let parsed = s3_events::parse_message(msg.body.as_bytes());
            if tx.send(Inbound { msg, parsed }).await.is_err() {
                return;
            }
        }
    }
}

/// On stop, a long poll may be answering with messages (it returns as soon as there are some):
/// dropping it would leave them invisible until their timeout. Wait a moment for an answer and
/// make its messages visible again at once; a poll still waiting after that found nothing.
async fn hand_back_last_poll<F, E>(shared: &Shared, request: std::pin::Pin<&mut F>, index: usize)
where
    F: std::future::Future<
            Output = Result<aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput, E>,
        >,
{
    let Ok(Ok(out)) = tokio::time::timeout(Duration::from_millis(1500), request).await else {
        return;
    };
    for m in out.messages.unwrap_or_default() {
        let Some(receipt) = m.receipt_handle else {
            continue;
        };
        let msg = Held {
            receipt,
            message_id: m.message_id.unwrap_or_default(),
            receive_count: 0,
            received_at: Instant::now(),
            body: String::new(),
        };
        debug!(receiver = index, message_id = %msg.message_id, "stopping: handed back a message the last poll received");
        super::visibility::release(shared, &msg, Duration::ZERO).await;
    }
}

/// Cancels `stop` once nothing has been received for `idle` and nothing is held.
pub(crate) async fn idle_watch(shared: Arc<Shared>, idle: Duration, stop: CancellationToken) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let last = shared.registry.last_received().unwrap_or(started);
        if shared.registry.len() == 0 && last.elapsed() >= idle {
            tracing::info!(
                ?idle,
                "idle: nothing received or held; stopping (--exit-when-idle)"
            );
            stop.cancel();
            return;
        }
    }
}
