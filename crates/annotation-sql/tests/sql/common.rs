//! Shared helpers: a real embedded catalog (SQLite file + local warehouse) holding a journal.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use annotation_sql::QuerySession;
use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, Source, StorageConfig, connect,
};
use chrono::{DateTime, Utc};
use iceberg::Catalog;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const NAMESPACE: &str = "s3_metadata";

/// An embedded catalog in a temporary folder.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub catalog: Arc<dyn Catalog>,
}

impl Fixture {
    pub async fn new() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let catalog = connect(
            "test",
            &CatalogConfig::embedded(dir.path()),
            &StorageConfig::default(),
        )
        .await?;
        Ok(Fixture { dir, catalog })
    }

    pub async fn journal(&self) -> Result<JournalTable, Box<dyn std::error::Error>> {
        Ok(JournalTable::open(self.catalog.clone(), NAMESPACE, None).await?)
    }

    pub async fn append(&self, rows: Vec<JournalRow>) -> TestResult {
        self.journal()
            .await?
            .append(Batch::new(Source::Notification, rows))
            .await?;
        Ok(())
    }

    pub async fn session(&self) -> Result<QuerySession, Box<dyn std::error::Error>> {
        Ok(QuerySession::new(
            self.catalog.clone(),
            "test catalog",
            NAMESPACE,
            "annotation_journal",
        )
        .await?)
    }
}

/// A fixed-width sequence number, as the writers make them.
pub fn seq(n: u64) -> String {
    format!("{n:020}-0000")
}

/// A journal row with the fields the views read; the rest plausible.
#[allow(clippy::too_many_arguments)]
pub fn row(
    bucket: &str,
    key: &str,
    version: Option<&str>,
    name: Option<&str>,
    record_type: RecordType,
    sequence: u64,
    text: Option<&str>,
    ingested_at: DateTime<Utc>,
) -> JournalRow {
    JournalRow {
        bucket: bucket.into(),
        object_key: key.into(),
        object_version_id: version.map(Into::into),
        object_join_key: format!("{bucket}/{key}/{}", version.unwrap_or("null")),
        name: name.map(Into::into),
        record_type,
        sequence_number: seq(sequence),
        last_modified_date: (record_type == RecordType::Put).then(|| ingested_at.naive_utc()),
        size: text.map(|t| t.len() as i64),
        e_tag: text.map(|t| format!("\"{:08x}\"", t.len())),
        checksum_algorithm: None,
        replication_status: None,
        text_value: text.map(Into::into),
        event_name: Some(
            match record_type {
                RecordType::Put => "ObjectAnnotation:Put",
                RecordType::Delete => "ObjectAnnotation:Delete",
                RecordType::ObjectReset => "ObjectCreated:Put",
            }
            .into(),
        ),
        event_time: Some(ingested_at),
        source: Source::Notification,
        requester: None,
        source_ip_address: None,
        request_id: None,
        ingested_at,
    }
}

/// Every value of a string column of a query result, row by row, NULL as None.
pub fn strings(result: &annotation_sql::QueryResult, column: &str) -> Vec<Option<String>> {
    use arrow::array::{Array, AsArray};
    use arrow::compute::cast;
    use arrow::datatypes::DataType;
    let mut out = Vec::new();
    for batch in &result.batches {
        let Some(col) = batch.column_by_name(column) else {
            panic!("no column {column} in {:?}", batch.schema());
        };
        let col = cast(col, &DataType::Utf8).unwrap_or_else(|e| panic!("{column}: {e}"));
        let col = col.as_string::<i32>();
        for i in 0..col.len() {
            out.push(col.is_valid(i).then(|| col.value(i).to_string()));
        }
    }
    out
}
