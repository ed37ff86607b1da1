//! An S3 event as EventBridge delivers it (an `aws.s3` event a rule sent to SQS) → [`Event`].
//!
//! EventBridge carries less than a bucket notification: no annotation names, no
//! `hasObjectAnnotation` flag, and a `detail-type` per family (`Object Created`, `Object
//! Deleted`, …) instead of the event name. So every event that can change a version's
//! annotations becomes a reset that re-lists the version: S3's answer at read time decides the
//! rows, which is right whatever the event was (an emulator that files annotation changes
//! under `Object Created` included). Events that say nothing about annotations (tags, ACLs,
//! restores, storage classes) are acknowledged and ignored.
//!
//! The object key in `detail.object.key` is taken as sent, not form-decoded: EventBridge
//! events are not form-encoded the way bucket notifications are.

use serde_json::{Map, Value};

use crate::event::{
    Action, Event, EventContext, EventKind, IgnoreReason, Notification, ObjectRef, ResetCause,
};
use crate::fields::{Fields, parse_time, strip_quotes};
use crate::{ParseError, Sequencer};

/// An EventBridge event is one record.
const FIELDS: Fields = Fields { index: 0 };

/// Whether `top` is an EventBridge event (any source).
pub(crate) fn is_eventbridge(top: &Map<String, Value>) -> bool {
    top.contains_key("detail-type") && top.contains_key("detail") && top.contains_key("source")
}

/// Parses one EventBridge event; its source must be `aws.s3`.
pub(crate) fn parse(top: &Map<String, Value>) -> Result<Notification, ParseError> {
    let source = top.get("source").and_then(Value::as_str).unwrap_or("");
    if source != "aws.s3" {
        return Err(ParseError::NotS3Notification {
            detail: format!(
                "an EventBridge event from {source:?}, not aws.s3; narrow the rule that targets this queue to `\"source\": [\"aws.s3\"]`"
            ),
        });
    }
    let f = FIELDS;
    let detail_type = f.required_str(top.get("detail-type"), "detail-type")?;
    let detail = f.required_object(top.get("detail"), "detail")?;
    let bucket = f.required_object(detail.get("bucket"), "detail.bucket")?;
    let bucket_name = f.required_str(bucket.get("name"), "detail.bucket.name")?;
    if bucket_name.is_empty() {
        return Err(f.invalid("detail.bucket.name", "is empty".into()));
    }
    let object_fields = f.required_object(detail.get("object"), "detail.object")?;
    let key = f.required_str(object_fields.get("key"), "detail.object.key")?;
    if key.is_empty() {
        return Err(f.invalid("detail.object.key", "is empty".into()));
    }
    let version_id = f
        .optional_str(object_fields.get("version-id"), "detail.object.version-id")?
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let reason = f.lenient_str(detail.get("reason"));
    let (event_name, kind) = classify(detail_type, reason.as_deref(), detail);
    let context = EventContext {
        event_name,
        event_version: f
            .lenient_str(detail.get("event-version"))
            .or_else(|| f.lenient_str(top.get("version")))
            .unwrap_or_default(),
        event_time: f.lenient_str(top.get("time")).and_then(|t| parse_time(&t)),
        region: f.lenient_str(top.get("region")),
        sequencer: f
            .lenient_str(object_fields.get("sequencer"))
            .and_then(|s| Sequencer::parse(&s)),
        object_size: object_fields.get("size").and_then(Value::as_u64),
        object_e_tag: f.lenient_str(object_fields.get("etag")).map(strip_quotes),
        has_object_annotation: None,
        requester: f.lenient_str(detail.get("requester")),
        source_ip_address: f.lenient_str(detail.get("source-ip-address")),
        request_id: f.lenient_str(detail.get("request-id")),
        configuration_id: f.lenient_str(top.get("id")),
    };
    let object = ObjectRef {
        bucket: bucket_name.to_string(),
        key: key.to_string(),
        version_id,
    };
    let (object, action) = match &kind {
        EventKind::ObjectCreated(_) => (
            object,
            Action::Reset {
                cause: ResetCause::ObjectCreated,
                relist: true,
            },
        ),
        EventKind::ObjectRemoved => (
            object,
            Action::Reset {
                cause: ResetCause::ObjectRemoved,
                relist: false,
            },
        ),
        EventKind::DeleteMarkerCreated => (
            // As for notifications: the marker may have replaced the null version.
            ObjectRef {
                version_id: Some("null".to_string()),
                ..object
            },
            Action::Reset {
                cause: ResetCause::NullVersionReplaced,
                relist: true,
            },
        ),
        EventKind::AnnotationPut | EventKind::AnnotationDelete | EventKind::AnnotationOther(_) => (
            object,
            Action::Reset {
                cause: ResetCause::AnnotationsChanged,
                relist: true,
            },
        ),
        EventKind::Other(name) => (
            object,
            Action::Ignore(IgnoreReason::Unrelated(name.clone())),
        ),
    };
    Ok(Notification::Events(vec![Event {
        object,
        kind,
        action,
        context,
    }]))
}

/// The notification-style event name (kept in the journal's context) and the kind, from the
/// detail type, the API `reason` and the `deletion-type`.
fn classify(
    detail_type: &str,
    reason: Option<&str>,
    detail: &Map<String, Value>,
) -> (String, EventKind) {
    let lifecycle = reason.is_some_and(|r| r.eq_ignore_ascii_case("Lifecycle Expiration"));
    match detail_type {
        "Object Created" => {
            let how = match reason {
                Some("CopyObject") => "Copy",
                Some("POST Object") => "Post",
                Some("CompleteMultipartUpload") => "CompleteMultipartUpload",
                _ => "Put",
            };
            (
                format!("ObjectCreated:{how}"),
                EventKind::ObjectCreated(how.to_string()),
            )
        }
        "Object Deleted" => {
            let family = if lifecycle {
                "LifecycleExpiration"
            } else {
                "ObjectRemoved"
            };
            let marker = detail
                .get("deletion-type")
                .and_then(Value::as_str)
                .is_some_and(|t| t == "Delete Marker Created");
            if marker {
                (
                    format!("{family}:DeleteMarkerCreated"),
                    EventKind::DeleteMarkerCreated,
                )
            } else {
                (format!("{family}:Delete"), EventKind::ObjectRemoved)
            }
        }
        other if other.contains("Annotation") => (
            format!("ObjectAnnotation:{other}"),
            EventKind::AnnotationOther(other.to_string()),
        ),
        other => (other.to_string(), EventKind::Other(other.to_string())),
    }
}
