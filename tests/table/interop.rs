//! Interoperability: pyiceberg (another Iceberg implementation) opens the table annotable
//! wrote, through the same SQLite catalog, and reads exactly the rows annotable wrote, with
//! a partition-pruning filter too.

use super::common;

use annotation_table::{Batch, CatalogConfig, JournalTable, Source, StorageConfig, connect};
use chrono::Utc;
use common::{TestResult, as_pyiceberg_rows, pyiceberg_rows, read_with_pyiceberg, rows};

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

    let read = read_with_pyiceberg(&db, &warehouse)?;

    assert_eq!(read["format_version"], 2);
    assert_eq!(read["snapshots"], 2);
    let mut ids = [first.batch_id.as_str(), second.batch_id.as_str()];
    ids.sort();
    assert_eq!(read["batch_ids"], serde_json::json!(ids));
    let expected = as_pyiceberg_rows(&written);
    let actual = pyiceberg_rows(&read);
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
