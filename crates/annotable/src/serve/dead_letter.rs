//! The dead-letter path (docs/correctness.md §3): a message that can never succeed is left to
//! the queue's redrive policy or moved to the configured dead-letter queue, never deleted.

use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use tracing::{error, warn};

use super::Shared;
use super::ack::delete_all;
use super::visibility::{Held, release, retry_backoff};

/// The dead-letter path (docs/correctness.md §3).
pub(crate) async fn poison(shared: &Shared, msg: Held, reason: &str) {
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
