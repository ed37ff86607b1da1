//! Contract tests: the SQS behaviour the `serve` consumer relies on (docs/correctness.md §3): receive
//! limits, visibility timeouts and their extension, per-entry batch-delete failures, receive
//! counts and redrive to a dead-letter queue, and the 1 MiB message size.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use annotable_tests::{Queue, Stack};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};

async fn receive(s: &Stack, q: &Queue, max: i32, visibility: i32) -> Vec<Message> {
    s.sqs
        .receive_message()
        .queue_url(&q.url)
        .max_number_of_messages(max)
        .visibility_timeout(visibility)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default()
}

fn receive_count(m: &Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .expect("ApproximateReceiveCount attribute")
}

async fn send(s: &Stack, q: &Queue, body: &str) {
    s.sqs
        .send_message()
        .queue_url(&q.url)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage");
}

#[tokio::test]
async fn receive_returns_at_most_ten_and_long_polls() {
    let s = Stack::start();
    let q = s.queue("q", &[]).await;
    for i in 0..15 {
        send(&s, &q, &format!("m{i}")).await;
    }
    let first = receive(&s, &q, 10, 30).await;
    assert!(
        !first.is_empty() && first.len() <= 10,
        "ReceiveMessage(10) returned {}",
        first.len()
    );
    let mut total = first.len();
    while total < 15 {
        let more = receive(&s, &q, 10, 30).await;
        assert!(
            !more.is_empty(),
            "ReceiveMessage lost messages: {total} of 15"
        );
        total += more.len();
    }
    // Everything is in flight now: a long poll waits for WaitTimeSeconds and returns nothing.
    let started = Instant::now();
    assert!(
        receive(&s, &q, 10, 30).await.is_empty(),
        "in-flight messages were redelivered"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "WaitTimeSeconds=1 did not long-poll"
    );
}

#[tokio::test]
async fn visibility_timeout_redelivers_and_change_visibility_extends() {
    let s = Stack::start();
    let q = s.queue("q", &[]).await;
    send(&s, &q, "a").await;

    let got = receive(&s, &q, 1, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(receive_count(&got[0]), 1, "first receive count");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = receive(&s, &q, 1, 1).await;
    assert_eq!(
        again.len(),
        1,
        "message not redelivered after its visibility timeout"
    );
    assert_eq!(
        receive_count(&again[0]),
        2,
        "ApproximateReceiveCount after redelivery"
    );

    // Extend the visibility of the in-flight copy: it must stay hidden past the original 1 s.
    s.sqs
        .change_message_visibility()
        .queue_url(&q.url)
        .receipt_handle(again[0].receipt_handle().expect("receipt handle"))
        .visibility_timeout(10)
        .send()
        .await
        .expect("ChangeMessageVisibility");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receive(&s, &q, 1, 1).await.is_empty(),
        "ChangeMessageVisibility did not extend the visibility timeout"
    );
}

#[tokio::test]
async fn delete_message_batch_reports_per_entry_failures() {
    let s = Stack::start();
    let q = s.queue("q", &[]).await;
    send(&s, &q, "a").await;
    let got = receive(&s, &q, 1, 30).await;
    let handle = got[0].receipt_handle().expect("receipt handle");
    let out = s
        .sqs
        .delete_message_batch()
        .queue_url(&q.url)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("good")
                .receipt_handle(handle)
                .build()
                .unwrap(),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("bad")
                .receipt_handle("not-a-receipt-handle")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("DeleteMessageBatch answers 200 even when an entry fails");
    let ok: Vec<&str> = out.successful().iter().map(|e| e.id()).collect();
    let failed: Vec<(&str, &str)> = out.failed().iter().map(|e| (e.id(), e.code())).collect();
    assert_eq!(ok, ["good"], "DeleteMessageBatch successful entries");
    assert_eq!(
        failed.len(),
        1,
        "DeleteMessageBatch failed entries: {failed:?}"
    );
    assert_eq!(failed[0].0, "bad");
    assert!(
        !failed[0].1.is_empty(),
        "a failed entry carries an error code"
    );
}

#[tokio::test]
async fn redrive_moves_a_message_to_the_dead_letter_queue() {
    let s = Stack::start();
    let dlq = s.queue("events-dlq", &[]).await;
    let policy = format!(
        r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":"2"}}"#,
        dlq.arn
    );
    let q = s
        .queue("events", &[(QueueAttributeName::RedrivePolicy, policy)])
        .await;
    send(&s, &q, "poison").await;

    for attempt in 1..=2 {
        let got = receive(&s, &q, 1, 1).await;
        assert_eq!(got.len(), 1, "receive #{attempt} of the poison message");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // The third receive finds it gone from the source queue and in the DLQ.
    assert!(
        receive(&s, &q, 1, 1).await.is_empty(),
        "message still in the source queue after maxReceiveCount"
    );
    let dead = receive(&s, &dlq, 1, 30).await;
    assert_eq!(dead.len(), 1, "message not redriven to the DLQ");
    assert_eq!(dead[0].body(), Some("poison"));
}

#[tokio::test]
async fn accepts_a_one_mebibyte_message() {
    let s = Stack::start();
    let q = s.queue("q", &[]).await;
    let body = "x".repeat(1024 * 1024);
    send(&s, &q, &body).await;
    let got = receive(&s, &q, 1, 30).await;
    assert_eq!(
        got[0].body().map(str::len),
        Some(body.len()),
        "1 MiB message body"
    );
}
