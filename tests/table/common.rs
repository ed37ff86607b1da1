//! Journal rows for the table tests: every column filled, keys with unicode, `+` and spaces.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use annotable_tests::py_tools_python;
use annotation_table::{JournalRow, RecordType, Source};
use chrono::{DateTime, TimeZone, Utc};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `n` rows over two buckets: PUTs with JSON payloads, some DELETEs and OBJECT_RESETs, half
/// the objects versioned.
pub fn rows(n: usize, at: DateTime<Utc>) -> Vec<JournalRow> {
    rows_from(0, n, at)
}

/// Like [`rows`], numbered from `start` (so successive calls write different objects).
pub fn rows_from(start: usize, n: usize, at: DateTime<Utc>) -> Vec<JournalRow> {
    (start..start + n)
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

/// pyiceberg opens `s3_metadata.annotation_journal` through the SQLite catalog and prints
/// the format version, snapshot count, batch ids, every row and a pruned scan's count.
pub const PYICEBERG_READER: &str = r#"
import json, sys, datetime
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import EqualTo
db, warehouse = sys.argv[1], sys.argv[2]
catalog = SqlCatalog("annotable", uri=f"sqlite:///{db}", warehouse=warehouse)
table = catalog.load_table("s3_metadata.annotation_journal")
epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
def micros(v):
    if v is None:
        return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=datetime.timezone.utc)
    return (v - epoch) // datetime.timedelta(microseconds=1)
def rows(scan):
    out = []
    for r in scan.to_arrow().to_pylist():
        for k in ("last_modified_date", "event_time", "ingested_at"):
            r[k] = micros(r[k])
        # decimal(38, 0) identities, as decimal strings (JSON numbers would lose digits)
        for k in ("annotation_hash", "object_version_hash"):
            r[k] = None if r[k] is None else str(r[k])
        out.append(r)
    return out
print(json.dumps({
    "format_version": table.metadata.format_version,
    "snapshots": len(table.metadata.snapshots),
    # iceberg-rust keeps snapshots in a map, so the metadata file lists them in no set order
    "batch_ids": sorted(s.summary.additional_properties.get("annotable.batch-id") for s in table.metadata.snapshots),
    "all": rows(table.scan()),
    "lake_b": len(rows(table.scan(row_filter=EqualTo("bucket", "lake-b")))),
}))
"#;

/// Runs [`PYICEBERG_READER`] on the SQLite catalog `db` with `warehouse`.
pub fn read_with_pyiceberg(
    db: &Path,
    warehouse: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let out = Command::new(py_tools_python())
        .args(["-c", PYICEBERG_READER])
        .arg(db)
        .arg(warehouse)
        .output()?;
    if !out.status.success() {
        return Err(format!("pyiceberg failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The rows pyiceberg read, one JSON text each.
pub fn pyiceberg_rows(read: &serde_json::Value) -> BTreeSet<String> {
    read["all"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r.to_string()).collect())
        .unwrap_or_default()
}

/// `rows` as pyiceberg prints them (timestamps in microseconds).
pub fn as_pyiceberg_rows(rows: &[JournalRow]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "bucket": r.bucket, "object_key": r.object_key, "object_version_id": r.object_version_id,
                "object_join_key": r.object_join_key, "name": r.name, "record_type": r.record_type.as_str(),
                "sequence_number": r.sequence_number,
                "last_modified_date": r.last_modified_date.map(|t| t.and_utc().timestamp_micros()),
                "size": r.size, "e_tag": r.e_tag, "checksum_algorithm": r.checksum_algorithm,
                "replication_status": r.replication_status, "text_value": r.text_value,
                "event_name": r.event_name, "event_time": r.event_time.map(|t| t.timestamp_micros()),
                "source": r.source.as_str(), "requester": r.requester,
                "source_ip_address": r.source_ip_address, "request_id": r.request_id,
                "ingested_at": r.ingested_at.timestamp_micros(),
                "annotation_hash": r.annotation_hash().map(|h| h.to_string()),
                "object_version_hash": r.object_version_hash().to_string(),
            })
            .to_string()
        })
        .collect()
}
