//! A private emulator per test with SDK clients, the AWS resources a test needs, the
//! notifications S3 delivers, and the captured notification fixtures.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed set-up is a failed test

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, Event as S3Event, NotificationConfiguration, QueueConfiguration,
    VersioningConfiguration,
};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
pub use local_stack::LocalStack;

/// A running emulator with clients for it.
pub struct Stack {
    /// The emulator process (stopped on drop).
    pub stack: LocalStack,
    /// S3 client (path style).
    pub s3: aws_sdk_s3::Client,
    /// SQS client.
    pub sqs: aws_sdk_sqs::Client,
}

impl Stack {
    /// Starts a private emulator for one test.
    pub fn start() -> Stack {
        let stack = LocalStack::start().unwrap_or_else(|e| panic!("local AWS emulator: {e}"));
        let s3 = stack.s3();
        let sqs = stack.sqs();
        Stack { stack, s3, sqs }
    }

    /// Creates a bucket, versioned or not.
    pub async fn bucket(&self, name: &str, versioned: bool) {
        self.s3
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateBucket {name}: {e:?}"));
        if versioned {
            self.s3
                .put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("PutBucketVersioning {name}: {e:?}"));
        }
    }

    /// Creates a queue and returns (url, arn).
    pub async fn queue(&self, name: &str, attributes: &[(QueueAttributeName, String)]) -> Queue {
        let mut request = self.sqs.create_queue().queue_name(name);
        for (key, value) in attributes {
            request = request.attributes(key.clone(), value.clone());
        }
        let url = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateQueue {name}: {e:?}"))
            .queue_url
            .unwrap_or_else(|| panic!("CreateQueue {name}: no QueueUrl"));
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetQueueAttributes {name}: {e:?}"))
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .unwrap_or_else(|| panic!("GetQueueAttributes {name}: no QueueArn"));
        Queue { url, arn }
    }

    /// Sends bucket notifications for `events` to the queue.
    pub async fn notify(&self, bucket: &str, queue: &Queue, events: &[S3Event]) {
        let config = QueueConfiguration::builder()
            .id(format!("annotable-{bucket}"))
            .queue_arn(&queue.arn)
            .set_events(Some(events.to_vec()))
            .build()
            .expect("queue configuration");
        self.s3
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(config)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutBucketNotificationConfiguration {bucket}: {e:?}"));
    }

    /// Puts an object and returns its version id (if the bucket is versioned).
    pub async fn put_object(&self, bucket: &str, key: &str, body: &str) -> Option<String> {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.as_bytes().to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutObject {bucket}/{key}: {e:?}"))
            .version_id
    }

    /// Puts an annotation on the current (or given) version.
    pub async fn put_annotation(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        name: &str,
        payload: &str,
    ) {
        self.s3
            .put_object_annotation()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .annotation_name(name)
            .annotation_payload(ByteStream::from(payload.as_bytes().to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutObjectAnnotation {bucket}/{key} {name}: {e:?}"));
    }

    /// Receives messages until `want` have arrived or `timeout` passes, deleting each one;
    /// then waits `settle` more to catch any extra message. Returns the bodies in arrival order.
    pub async fn drain(
        &self,
        queue: &Queue,
        want: usize,
        timeout: Duration,
        settle: Duration,
    ) -> Vec<Message> {
        let mut messages = Vec::new();
        let started = Instant::now();
        let mut settle_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if messages.len() >= want && settle_until.is_none() {
                settle_until = Some(now + settle);
            }
            match settle_until {
                Some(until) if now >= until => break,
                None if started.elapsed() > timeout => break,
                _ => {}
            }
            let received = self
                .sqs
                .receive_message()
                .queue_url(&queue.url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap_or_else(|e| panic!("ReceiveMessage {}: {e:?}", queue.url));
            for message in received.messages.unwrap_or_default() {
                if let Some(handle) = message.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&queue.url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("DeleteMessage {}: {e:?}", queue.url));
                }
                messages.push(message);
            }
        }
        messages
    }
}

/// A queue's URL and ARN.
#[derive(Debug, Clone)]
pub struct Queue {
    /// QueueUrl.
    pub url: String,
    /// QueueArn.
    pub arn: String,
}

/// The directory of captured notification fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/notifications")
}

/// When `ANNOTABLE_UPDATE_FIXTURES=1`, saves real received messages as fixtures (pretty JSON),
/// replacing volatile values (times, ids, version ids, sequencers) with stable placeholders so
/// the files only change when the shape does. Otherwise does nothing.
pub fn save_fixture(name: &str, body: &str) {
    if std::env::var("ANNOTABLE_UPDATE_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    let mut value: serde_json::Value = serde_json::from_str(body).expect("fixture is JSON");
    let mut stable = HashMap::new();
    stabilise(&mut value, &mut stable);
    let text = serde_json::to_string_pretty(&value).expect("serialise fixture") + "\n";
    std::fs::write(fixtures_dir().join(format!("{name}.json")), text).expect("write fixture");
}

/// Replaces volatile strings with placeholders numbered per field (`version-1`, `version-2`, …
/// in order of appearance), the same value always with the same placeholder, so a fixture still
/// shows which events share a version id.
fn stabilise(value: &mut serde_json::Value, seen: &mut HashMap<(String, String), String>) {
    const VOLATILE: [&str; 5] = [
        "eventTime",
        "versionId",
        "x-amz-request-id",
        "RequestId",
        "Time",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match inner {
                    serde_json::Value::String(s)
                        if VOLATILE.contains(&key.as_str()) && s != "null" =>
                    {
                        let n = 1 + seen.keys().filter(|(k, _)| k == key).count();
                        *s = seen
                            .entry((key.clone(), s.clone()))
                            .or_insert_with(|| placeholder(key, n))
                            .clone();
                    }
                    _ => stabilise(inner, seen),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| stabilise(v, seen)),
        _ => {}
    }
}

fn placeholder(key: &str, n: usize) -> String {
    match key {
        "eventTime" | "Time" => format!("2026-11-21T12:00:{:02}.000Z", n % 60),
        "versionId" => format!("version-{n}"),
        _ => format!("request-{n}"),
    }
}

/// The Python of the project's py-tools venv (pyiceberg, DuckDB), installed on first use by
/// `scripts/py-tools.sh`.
pub fn py_tools_python() -> PathBuf {
    let script = local_stack::workspace_root().join("scripts/py-tools.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("python")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} python failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
