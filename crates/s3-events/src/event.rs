//! The typed result of parsing: which object version, what happened, what to do.

use chrono::{DateTime, Utc};

use crate::{ParseError, Sequencer};

/// One object version in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// Decoded object key.
    pub key: String,
    /// `versionId` exactly as the event gave it: `None` when absent (unversioned bucket),
    /// `Some("null")` for the null version of a versioned or suspended bucket.
    pub version_id: Option<String>,
}

impl ObjectRef {
    /// The version id to pass to S3 API calls so they address exactly this version
    /// (`"null"` is a valid `versionId` parameter; absent means "the current version").
    pub fn api_version_id(&self) -> Option<&str> {
        self.version_id.as_deref()
    }

    /// The version id as the table stores it: null for unversioned objects and the null version.
    pub fn table_version_id(&self) -> Option<&str> {
        self.version_id.as_deref().filter(|v| *v != "null")
    }
}

/// An annotation named by an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationRef {
    /// Annotation name (1–512 bytes of UTF-8).
    pub name: String,
    /// Payload size in bytes, when the event says.
    pub size: Option<u64>,
    /// Annotation ETag (quotes stripped), when the event says.
    pub e_tag: Option<String>,
}

/// The S3 event type, as far as annotable distinguishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `ObjectAnnotation:Put`: an annotation was created or replaced.
    AnnotationPut,
    /// `ObjectAnnotation:Delete`: an annotation was deleted.
    AnnotationDelete,
    /// Any other `ObjectAnnotation:*` event (the suffix as received).
    AnnotationOther(String),
    /// `ObjectCreated:*` (the suffix: `Put`, `Post`, `Copy`, `CompleteMultipartUpload`, …).
    ObjectCreated(String),
    /// `ObjectRemoved:Delete` or `LifecycleExpiration:Delete`: a version is permanently gone.
    ObjectRemoved,
    /// `ObjectRemoved:DeleteMarkerCreated` or `LifecycleExpiration:DeleteMarkerCreated`: the
    /// versions below the marker keep their annotations, except a null version that a
    /// versioning-suspended bucket replaced with the marker.
    DeleteMarkerCreated,
    /// Any other event name (as received, without the `s3:` prefix).
    Other(String),
}

/// Why an object version's annotations are reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// New content was written at this key/version (`ObjectCreated:*`).
    ObjectCreated,
    /// The version was permanently deleted.
    ObjectRemoved,
    /// An annotation event that names no annotation, or of an unknown kind: the version's
    /// annotation set must be re-read.
    AnnotationsChanged,
    /// A delete marker was created. With versioning *suspended* the same DELETE permanently
    /// removed the key's null version (the marker takes its place), and the event cannot say
    /// which case it was: the null version is re-read (gone: every annotation on it is gone).
    NullVersionReplaced,
}

/// Why an event needs no table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// The event type says nothing about annotations (tagging, restore, replication, …).
    Unrelated(String),
}

/// What the pipeline must do for an event (docs/correctness.md §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch this annotation (GetObjectAnnotation) and record its content; if it no longer
    /// exists, record that it is gone.
    FetchAnnotation(AnnotationRef),
    /// Record that this annotation is gone.
    DeleteAnnotation(AnnotationRef),
    /// Every annotation of the version is gone (`OBJECT_RESET`); when `relist` is set, list the
    /// version's annotations and record each one at the same sequence number.
    Reset {
        /// Why.
        cause: ResetCause,
        /// Whether the version may now hold annotations that must be read back.
        relist: bool,
    },
    /// Nothing to write; acknowledge and count.
    Ignore(IgnoreReason),
}

/// Fields of a notification record that are kept for the journal and for logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventContext {
    /// `eventName` without the `s3:` prefix, e.g. `ObjectAnnotation:Put`.
    pub event_name: String,
    /// `eventVersion` as received, e.g. `2.6`.
    pub event_version: String,
    /// `eventTime`: when S3 finished the request (`None` when absent or unreadable).
    pub event_time: Option<DateTime<Utc>>,
    /// `awsRegion`.
    pub region: Option<String>,
    /// `s3.object.sequencer`, when present and hexadecimal (object events; annotation events
    /// may lack it).
    pub sequencer: Option<Sequencer>,
    /// `s3.object.size`: the object's size.
    pub object_size: Option<u64>,
    /// `s3.object.eTag`: the object's ETag (quotes stripped; empty means absent).
    pub object_e_tag: Option<String>,
    /// `s3.object.hasObjectAnnotation`, when present.
    pub has_object_annotation: Option<bool>,
    /// `userIdentity.principalId`.
    pub requester: Option<String>,
    /// `requestParameters.sourceIPAddress`.
    pub source_ip_address: Option<String>,
    /// `responseElements.x-amz-request-id`.
    pub request_id: Option<String>,
    /// `s3.configurationId`: the notification configuration that matched.
    pub configuration_id: Option<String>,
}

/// What one SQS message body contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `s3:TestEvent`, sent when a notification configuration is saved: acknowledge it.
    Test(TestEvent),
    /// One or more events, in the order of the message's `Records` (a record that names several
    /// annotations yields one event per annotation).
    Events(Vec<Event>),
    /// Some records parsed and some did not: the events of the good ones, and why each bad one
    /// was rejected. One bad record does not hold its siblings back; the consumer processes
    /// the events and reports every rejected record with the message's id.
    Partial {
        /// The events of the records that parsed.
        events: Vec<Event>,
        /// One error per rejected record (each names its record index).
        rejected: Vec<ParseError>,
    },
}

/// The flat `s3:TestEvent` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEvent {
    /// `Bucket`, when present.
    pub bucket: Option<String>,
    /// `Time`, as received.
    pub time: Option<String>,
    /// `RequestId`, when present.
    pub request_id: Option<String>,
}

/// One change to one object version, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The object version concerned.
    pub object: ObjectRef,
    /// The event type.
    pub kind: EventKind,
    /// What the pipeline must do.
    pub action: Action,
    /// Record fields kept for the journal and logs.
    pub context: EventContext,
}
