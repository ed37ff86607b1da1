//! Journal rows for the table tests: every column filled, keys with unicode, `+` and spaces.
#![allow(dead_code)]

use annotation_table::{JournalRow, RecordType, Source};
use chrono::{DateTime, TimeZone, Utc};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `n` rows over two buckets: PUTs with JSON payloads, some DELETEs and OBJECT_RESETs, half
/// the objects versioned.
pub fn rows(n: usize, at: DateTime<Utc>) -> Vec<JournalRow> {
    (0..n)
        .map(|i| {
            let record_type = match i % 10 {
                0 => RecordType::Delete,
                7 => RecordType::ObjectReset,
                _ => RecordType::Put,
            };
            let put = record_type == RecordType::Put;
            let bucket = if i % 3 == 0 { "lake-b" } else { "lake-a" };
            let key = format!("dir {}/obj+{i}-ü.jpg", i % 7);
            let version = (i % 2 == 0).then(|| format!("v{i:04}"));
            let text = put.then(|| format!(r#"{{"i":{i},"tag":"t{}"}}"#, i % 5));
            JournalRow {
                bucket: bucket.into(),
                object_key: key.clone(),
                object_version_id: version.clone(),
                object_join_key: format!("{bucket}/{key}/{}", version.as_deref().unwrap_or("null")),
                name: (record_type != RecordType::ObjectReset).then(|| format!("name-{}", i % 4)),
                record_type,
                sequence_number: format!("{:020}-0001", 1_000 + i),
                last_modified_date: put
                    .then(|| {
                        Utc.timestamp_opt(1_700_000_000 + i as i64, 123_456_000)
                            .single()
                            .map(|t| t.naive_utc())
                    })
                    .flatten(),
                size: text.as_ref().map(|t| t.len() as i64),
                e_tag: put.then(|| format!("\"etag{i}\"")),
                checksum_algorithm: put.then(|| "CRC64NVME".to_string()),
                replication_status: None,
                text_value: text,
                event_name: Some("ObjectAnnotation:Put".into()),
                event_time: Some(at),
                source: Source::Notification,
                requester: Some("123456789012".into()),
                source_ip_address: Some("127.0.0.1".into()),
                request_id: Some(format!("req-{i}")),
                ingested_at: at,
            }
        })
        .collect()
}
