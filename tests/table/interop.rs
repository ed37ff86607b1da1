//! Interoperability: pyiceberg (another Iceberg implementation) opens the table annotable
//! wrote, through the same SQLite catalog, and reads exactly the rows annotable wrote, with
//! a partition-pruning filter too.

#[path = "common.rs"]
mod common;

use std::collections::BTreeSet;
use std::process::Command;

use annotable_tests::py_tools_python;
use annotation_table::{Batch, CatalogConfig, JournalTable, Source, StorageConfig, connect};
use chrono::Utc;
use common::{TestResult, rows};

const READER: &str = r#"
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

#[tokio::test]
async fn pyiceberg_reads_what_annotable_wrote() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("catalog.db");
    let warehouse = format!("file://{}", dir.path().join("warehouse").display());
    let catalog = connect(
        "annotable",
        &CatalogConfig::Sql {
            uri: format!("sqlite:{}", db.display()),
            warehouse: warehouse.clone(),
        },
        &StorageConfig::default(),
    )
    .await?;
    let journal = JournalTable::open(catalog, "s3_metadata", None).await?;
    let written = rows(250, Utc::now());
    let (a, b) = written.split_at(100);
    let first = journal
        .append(Batch::new(Source::Backfill, a.to_vec()))
        .await?;
    let second = journal
        .append(Batch::new(Source::Notification, b.to_vec()))
        .await?;

    let out = Command::new(py_tools_python())
        .args(["-c", READER])
        .arg(&db)
        .arg(&warehouse)
        .output()?;
    assert!(
        out.status.success(),
        "pyiceberg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout)?;

    assert_eq!(read["format_version"], 2);
    assert_eq!(read["snapshots"], 2);
    let mut ids = [first.batch_id.as_str(), second.batch_id.as_str()];
    ids.sort();
    assert_eq!(read["batch_ids"], serde_json::json!(ids));
    let expected: BTreeSet<String> = written
        .iter()
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
            })
            .to_string()
        })
        .collect();
    let actual: BTreeSet<String> = read["all"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(
        actual.len(),
        written.len(),
        "pyiceberg read {} rows",
        actual.len()
    );
    assert_eq!(actual, expected);
    assert_eq!(
        read["lake_b"],
        written.iter().filter(|r| r.bucket == "lake-b").count()
    );
    Ok(())
}
