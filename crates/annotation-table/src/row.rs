//! One journal row.

use chrono::{DateTime, NaiveDateTime, Utc};

/// What a journal row says about an annotation (docs/correctness.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// The annotation is present with this content.
    Put,
    /// The annotation is gone.
    Delete,
    /// Every annotation of the object version not re-stated at the same sequence number is gone.
    ObjectReset,
}

impl RecordType {
    /// The value stored in `record_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Put => "PUT",
            RecordType::Delete => "DELETE",
            RecordType::ObjectReset => "OBJECT_RESET",
        }
    }
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A bucket notification (`serve`).
    Notification,
    /// A bucket listing (`backfill`).
    Backfill,
}

impl Source {
    /// The value stored in `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Notification => "notification",
            Source::Backfill => "backfill",
        }
    }
}

/// One row of `annotation_journal`; field meanings are in `schemas/annotation_journal.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct JournalRow {
    pub bucket: String,
    pub object_key: String,
    pub object_version_id: Option<String>,
    pub object_join_key: String,
    pub name: Option<String>,
    pub record_type: RecordType,
    pub sequence_number: String,
    pub last_modified_date: Option<NaiveDateTime>,
    pub size: Option<i64>,
    pub e_tag: Option<String>,
    pub checksum_algorithm: Option<String>,
    pub replication_status: Option<String>,
    pub text_value: Option<String>,
    pub event_name: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    pub source: Source,
    pub requester: Option<String>,
    pub source_ip_address: Option<String>,
    pub request_id: Option<String>,
    pub ingested_at: DateTime<Utc>,
}

impl JournalRow {
    /// The row's `annotation_hash` column: the identity of (bucket, object_key,
    /// object_version_id, name) as written to the table; `None` on object-level rows.
    pub fn annotation_hash(&self) -> Option<i128> {
        crate::encode::annotation_hash(&mut Default::default(), self)
    }

    /// The row's `object_version_hash` column: the identity of (bucket, object_key,
    /// object_version_id) as written to the table.
    pub fn object_version_hash(&self) -> i128 {
        crate::encode::object_version_hash(&mut Default::default(), self)
    }
}
