//! One object journal row: what one observation of S3 said about one object version, or that a
//! key's other versions are gone (field meanings are in `schemas/object_journal.json`).

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::Source;

/// What an object journal row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectRecordType {
    /// The version exists with these facts (a delete marker is a version too).
    Put,
    /// Every version of the key not re-stated at the same sequence number is gone.
    KeyReset,
}

impl ObjectRecordType {
    /// The value stored in `record_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectRecordType::Put => "PUT",
            ObjectRecordType::KeyReset => "KEY_RESET",
        }
    }
}

/// One row of `object_journal`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ObjectRow {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub object_join_key: String,
    pub record_type: ObjectRecordType,
    pub sequence_number: String,
    pub is_delete_marker: Option<bool>,
    pub size: Option<i64>,
    pub last_modified_date: Option<NaiveDateTime>,
    pub e_tag: Option<String>,
    pub storage_class: Option<String>,
    pub checksum_algorithm: Option<String>,
    pub event_name: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    pub source: Source,
    pub requester: Option<String>,
    pub source_ip_address: Option<String>,
    pub request_id: Option<String>,
    pub ingested_at: DateTime<Utc>,
}

impl ObjectRow {
    /// Whether the object was uploaded in parts, read from its ETag: S3 gives a multipart
    /// upload's object an ETag ending in `-<number of parts>`; `None` without an ETag.
    pub fn is_multipart(&self) -> Option<bool> {
        let e_tag = self.e_tag.as_deref()?;
        Some(e_tag.rsplit_once('-').is_some_and(|(_, parts)| {
            !parts.is_empty() && parts.bytes().all(|b| b.is_ascii_digit())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_e_tag(e_tag: Option<&str>) -> ObjectRow {
        ObjectRow {
            bucket: "b".into(),
            key: "k".into(),
            version_id: None,
            object_join_key: "j".into(),
            record_type: ObjectRecordType::Put,
            sequence_number: "1".into(),
            is_delete_marker: Some(false),
            size: Some(1),
            last_modified_date: None,
            e_tag: e_tag.map(str::to_string),
            storage_class: None,
            checksum_algorithm: None,
            event_name: None,
            event_time: None,
            source: Source::Backfill,
            requester: None,
            source_ip_address: None,
            request_id: None,
            ingested_at: Utc::now(),
        }
    }

    #[test]
    fn a_multipart_upload_is_known_by_its_e_tag() {
        assert_eq!(
            with_e_tag(Some("9b2cf535f27731c974343645a3985328-3")).is_multipart(),
            Some(true)
        );
        assert_eq!(
            with_e_tag(Some("9b2cf535f27731c974343645a3985328")).is_multipart(),
            Some(false)
        );
        assert_eq!(with_e_tag(Some("abc-")).is_multipart(), Some(false));
        assert_eq!(with_e_tag(None).is_multipart(), None);
    }
}
