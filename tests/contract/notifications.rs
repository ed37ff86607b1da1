//! Contract tests: the bucket notifications annotable consumes. Each step performs one S3
//! operation, receives exactly the messages it must cause, and checks both the raw shape and
//! what `s3-events` makes of it. A failure names the operation and the bucket kind.
//!
//! `ANNOTABLE_UPDATE_FIXTURES=1` saves the received messages to `tests/fixtures/notifications/`
//! (volatile ids replaced by placeholders); the parser's own tests run over those files.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use annotable_tests::{Queue, Stack, save_fixture};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AnnotationDirective, CompletedMultipartUpload, CompletedPart, Event as S3Event,
};
use s3_events::{Action, Event, EventKind, Notification, ResetCause, parse_message};

const KEY: &str = "dir/a b+c ü.txt";

struct Flow {
    s: Stack,
    q: Queue,
    bucket: &'static str,
    versioned: bool,
}

impl Flow {
    async fn new(bucket: &'static str, versioned: bool) -> Flow {
        let s = Stack::start();
        s.bucket(bucket, versioned).await;
        let q = s.queue("events", &[]).await;
        let flow = Flow {
            s,
            q,
            bucket,
            versioned,
        };
        flow.s
            .notify(
                bucket,
                &flow.q,
                &[
                    S3Event::S3ObjectAnnotation,
                    S3Event::from("s3:ObjectCreated:*"),
                    S3Event::from("s3:ObjectRemoved:*"),
                ],
            )
            .await;
        flow
    }

    fn kind(&self) -> &'static str {
        if self.versioned {
            "versioned"
        } else {
            "unversioned"
        }
    }

    /// Receives exactly `want` messages caused by `step`, saves the first as fixture `fixture`
    /// (when asked to), and returns them parsed.
    async fn expect(&self, step: &str, fixture: Option<&str>, want: usize) -> Vec<Notification> {
        let messages = self
            .s
            .drain(
                &self.q,
                want,
                Duration::from_secs(10),
                Duration::from_millis(400),
            )
            .await;
        let bodies: Vec<&str> = messages.iter().filter_map(|m| m.body()).collect();
        assert_eq!(
            bodies.len(),
            want,
            "{} bucket, {step}: expected {want} notification(s), received {}: {bodies:#?}",
            self.kind(),
            bodies.len()
        );
        if let (Some(name), Some(first)) = (fixture, bodies.first()) {
            save_fixture(&format!("ministack-{}-{name}", self.kind()), first);
        }
        bodies
            .iter()
            .map(|body| {
                parse_message(body.as_bytes()).unwrap_or_else(|e| {
                    panic!(
                        "{} bucket, {step}: s3-events rejected the message: {e}\n{body}",
                        self.kind()
                    )
                })
            })
            .collect()
    }

    /// Like [`Flow::expect`] for one message holding one record.
    async fn expect_one(&self, step: &str, fixture: Option<&str>) -> Event {
        let mut parsed = self.expect(step, fixture, 1).await;
        match parsed.pop() {
            Some(Notification::Events(mut events)) if events.len() == 1 => events.remove(0),
            other => panic!(
                "{} bucket, {step}: expected one event, got {other:?}",
                self.kind()
            ),
        }
    }

    fn check(&self, step: &str, event: &Event, name: &str, version: Option<&str>, action: Action) {
        let what = format!("{} bucket, {step}", self.kind());
        assert_eq!(event.context.event_name, name, "{what}: eventName");
        assert!(
            event.context.event_version.starts_with("2."),
            "{what}: eventVersion {}",
            event.context.event_version
        );
        assert!(event.context.event_time.is_some(), "{what}: eventTime");
        assert_eq!(event.object.bucket, self.bucket, "{what}: bucket");
        assert_eq!(
            event.object.key, KEY,
            "{what}: the key does not decode to the original"
        );
        assert_eq!(
            event.object.version_id.as_deref(),
            version,
            "{what}: versionId"
        );
        assert_eq!(event.action, action, "{what}: action");
    }

    async fn put_object(&self) -> Option<String> {
        let version = self.s.put_object(self.bucket, KEY, "content").await;
        assert_eq!(
            version.is_some(),
            self.versioned,
            "{} PutObject VersionId",
            self.kind()
        );
        version
    }

    /// Copies the object onto itself (new metadata, so S3 accepts it) with `directive`.
    async fn copy_onto_itself(
        &self,
        directive: AnnotationDirective,
    ) -> aws_sdk_s3::operation::copy_object::CopyObjectOutput {
        self.s
            .s3
            .copy_object()
            .bucket(self.bucket)
            .key(KEY)
            .copy_source(format!("{}/{}", self.bucket, urlencode(KEY)))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .annotation_directive(directive.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} CopyObject {directive:?}: {e:?}", self.kind()))
    }

    async fn annotate(&self, version: Option<&str>, name: &str, payload: &str) {
        self.s
            .put_annotation(self.bucket, KEY, version, name, payload)
            .await
    }
}

fn fetch(name: &str, size: u64) -> impl Fn(&Action) -> bool {
    let name = name.to_string();
    move |action| matches!(action, Action::FetchAnnotation(a) if a.name == name && a.size == Some(size) && a.e_tag.is_some())
}

async fn every_kind_of_message(versioned: bool) {
    let bucket = if versioned {
        "conf-versioned"
    } else {
        "conf-plain"
    };
    let f = Flow::new(bucket, versioned).await;

    // Saving the configuration sends s3:TestEvent.
    match f
        .expect("PutBucketNotificationConfiguration", Some("test-event"), 1)
        .await
        .pop()
    {
        Some(Notification::Test(test)) => {
            assert_eq!(test.bucket.as_deref(), Some(bucket), "s3:TestEvent Bucket")
        }
        other => panic!("{} bucket: expected s3:TestEvent, got {other:?}", f.kind()),
    }

    // ObjectCreated:Put — resets the version, nothing to re-list.
    let v1 = f.put_object().await;
    let e = f.expect_one("PutObject", Some("object-created-put")).await;
    f.check(
        "PutObject",
        &e,
        "ObjectCreated:Put",
        v1.as_deref(),
        Action::Reset {
            cause: ResetCause::ObjectCreated,
            relist: false,
        },
    );
    assert!(
        e.context.sequencer.is_some(),
        "{} PutObject: object events carry a sequencer",
        f.kind()
    );
    assert_eq!(
        e.context.object_size,
        Some(7),
        "{} PutObject: object size",
        f.kind()
    );

    // ObjectAnnotation:Put names the annotation with its size and ETag.
    f.annotate(None, "label", "cat-001").await;
    let e = f
        .expect_one("PutObjectAnnotation", Some("annotation-put"))
        .await;
    assert_eq!(e.kind, EventKind::AnnotationPut);
    assert!(
        fetch("label", 7)(&e.action),
        "{} PutObjectAnnotation: action {:?}",
        f.kind(),
        e.action
    );
    f.check(
        "PutObjectAnnotation",
        &e,
        "ObjectAnnotation:Put",
        v1.as_deref(),
        e.action.clone(),
    );

    // Overwrite: another Put with the new size.
    f.annotate(None, "label", "dog").await;
    let e = f.expect_one("PutObjectAnnotation (overwrite)", None).await;
    assert!(
        fetch("label", 3)(&e.action),
        "{} overwrite: action {:?}",
        f.kind(),
        e.action
    );

    // ObjectAnnotation:Delete names the annotation.
    f.s.s3
        .delete_object_annotation()
        .bucket(bucket)
        .key(KEY)
        .annotation_name("label")
        .send()
        .await
        .expect("DeleteObjectAnnotation");
    let e = f
        .expect_one("DeleteObjectAnnotation", Some("annotation-delete"))
        .await;
    f.check(
        "DeleteObjectAnnotation",
        &e,
        "ObjectAnnotation:Delete",
        v1.as_deref(),
        e.action.clone(),
    );
    assert!(
        matches!(&e.action, Action::DeleteAnnotation(a) if a.name == "label"),
        "{} DeleteObjectAnnotation: {:?}",
        f.kind(),
        e.action
    );

    // CopyObject with COPY: hasObjectAnnotation true → re-list.
    f.annotate(None, "label", "copied").await;
    f.expect("PutObjectAnnotation before copy", None, 1).await;
    let copy = f.copy_onto_itself(AnnotationDirective::Copy).await;
    let e = f
        .expect_one("CopyObject (COPY)", Some("object-created-copy"))
        .await;
    f.check(
        "CopyObject (COPY)",
        &e,
        "ObjectCreated:Copy",
        copy.version_id(),
        Action::Reset {
            cause: ResetCause::ObjectCreated,
            relist: true,
        },
    );
    assert_eq!(
        e.context.has_object_annotation,
        Some(true),
        "{} CopyObject COPY: hasObjectAnnotation",
        f.kind()
    );

    // CopyObject with EXCLUDE: hasObjectAnnotation false → reset only.
    let copy = f.copy_onto_itself(AnnotationDirective::Exclude).await;
    let e = f
        .expect_one("CopyObject (EXCLUDE)", Some("object-created-copy-exclude"))
        .await;
    f.check(
        "CopyObject (EXCLUDE)",
        &e,
        "ObjectCreated:Copy",
        copy.version_id(),
        Action::Reset {
            cause: ResetCause::ObjectCreated,
            relist: false,
        },
    );

    // CompleteMultipartUpload.
    let upload =
        f.s.s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(KEY)
            .send()
            .await
            .expect("CreateMultipartUpload");
    let upload_id = upload.upload_id().expect("UploadId");
    let part =
        f.s.s3
            .upload_part()
            .bucket(bucket)
            .key(KEY)
            .upload_id(upload_id)
            .part_number(1)
            .body(ByteStream::from_static(b"part"))
            .send()
            .await
            .expect("UploadPart");
    let done =
        f.s.s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(KEY)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(
                        CompletedPart::builder()
                            .part_number(1)
                            .set_e_tag(part.e_tag().map(str::to_string))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("CompleteMultipartUpload");
    let e = f
        .expect_one("CompleteMultipartUpload", Some("object-created-multipart"))
        .await;
    f.check(
        "CompleteMultipartUpload",
        &e,
        "ObjectCreated:CompleteMultipartUpload",
        done.version_id(),
        Action::Reset {
            cause: ResetCause::ObjectCreated,
            relist: false,
        },
    );

    if versioned {
        // A plain DELETE creates a delete marker: the versions keep their annotations.
        f.s.s3
            .delete_object()
            .bucket(bucket)
            .key(KEY)
            .send()
            .await
            .expect("DeleteObject");
        let e = f
            .expect_one(
                "DeleteObject (delete marker)",
                Some("object-removed-delete-marker"),
            )
            .await;
        assert_eq!(
            e.context.event_name, "ObjectRemoved:DeleteMarkerCreated",
            "versioned DeleteObject"
        );
        // The marker may have replaced a null version (versioning suspended): re-read that one.
        assert_eq!(
            e.action,
            Action::Reset {
                cause: ResetCause::NullVersionReplaced,
                relist: true
            }
        );
        assert_eq!(e.object.api_version_id(), Some("null"));

        // Deleting a specific version removes its annotations.
        let v1 = v1.expect("versioned bucket");
        f.s.s3
            .delete_object()
            .bucket(bucket)
            .key(KEY)
            .version_id(&v1)
            .send()
            .await
            .expect("DeleteObject version");
        let e = f
            .expect_one(
                "DeleteObject (version)",
                Some("object-removed-delete-version"),
            )
            .await;
        f.check(
            "DeleteObject (version)",
            &e,
            "ObjectRemoved:Delete",
            Some(&v1),
            Action::Reset {
                cause: ResetCause::ObjectRemoved,
                relist: false,
            },
        );
    } else {
        f.s.s3
            .delete_object()
            .bucket(bucket)
            .key(KEY)
            .send()
            .await
            .expect("DeleteObject");
        let e = f
            .expect_one("DeleteObject", Some("object-removed-delete"))
            .await;
        f.check(
            "DeleteObject",
            &e,
            "ObjectRemoved:Delete",
            None,
            Action::Reset {
                cause: ResetCause::ObjectRemoved,
                relist: false,
            },
        );
    }
}

fn urlencode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn versioned_bucket_sends_every_kind_of_message() {
    every_kind_of_message(true).await;
}

#[tokio::test]
async fn unversioned_bucket_sends_every_kind_of_message() {
    every_kind_of_message(false).await;
}

/// The null version of a versioned bucket is addressed as versionId "null".
#[tokio::test]
async fn null_version_events_say_null() {
    let s = Stack::start();
    s.bucket("nullv", false).await;
    s.put_object("nullv", KEY, "before versioning").await;
    s.s3.put_bucket_versioning()
        .bucket("nullv")
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("PutBucketVersioning");
    let q = s.queue("events", &[]).await;
    s.notify("nullv", &q, &[S3Event::S3ObjectAnnotation]).await;
    s.drain(&q, 1, Duration::from_secs(10), Duration::from_millis(200))
        .await; // s3:TestEvent
    s.put_annotation("nullv", KEY, Some("null"), "label", "x")
        .await;
    let messages = s
        .drain(&q, 1, Duration::from_secs(10), Duration::from_millis(400))
        .await;
    assert_eq!(
        messages.len(),
        1,
        "PutObjectAnnotation on the null version: one notification"
    );
    let body = messages[0].body().expect("body");
    save_fixture("ministack-versioned-annotation-put-null-version", body);
    let Ok(Notification::Events(events)) = parse_message(body.as_bytes()) else {
        panic!("null-version annotation event did not parse: {body}");
    };
    assert_eq!(
        events[0].object.version_id.as_deref(),
        Some("null"),
        "null version: versionId"
    );
    assert_eq!(events[0].object.table_version_id(), None);
    assert_eq!(events[0].object.api_version_id(), Some("null"));
}
