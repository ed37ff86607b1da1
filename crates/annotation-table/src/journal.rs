//! The journal table handle: create-or-validate, write, and the idempotent commit.
//!
//! Commit protocol (design.md §3.3). A batch's data files are written once, named after the
//! batch id. Then, per attempt: load the table; from the second attempt on, look for a snapshot
//! whose summary carries this batch id and stop if one exists (the earlier attempt did land,
//! only its answer was lost); otherwise `fast_append` the files with the batch id in the summary.
//! iceberg's own commit retries are disabled on the table (`commit.retry.num-retries = 0`)
//! because they re-apply the append without that check, which would duplicate rows after a
//! commit whose answer was lost. The duplicate-file check is off: file names embed the batch id,
//! so they cannot collide, and the check reads every manifest, which grows with the table.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tracing::{debug, warn};

use crate::encode::{encode_rows, sort_rows};
use crate::error::is_transient;
use crate::{JournalRow, Source, TableError, journal_spec};

/// Snapshot-summary key holding the batch id.
pub const SUMMARY_BATCH_ID: &str = "annotable.batch-id";
const SUMMARY_ROWS: &str = "annotable.rows";
const SUMMARY_SOURCE: &str = "annotable.source";
const SUMMARY_WRITER: &str = "annotable.writer";

/// A batch id: unique per batch, time-ordered (UUIDv7).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchId(String);

impl BatchId {
    /// A fresh id.
    pub fn new() -> Self {
        BatchId(uuid::Uuid::now_v7().to_string())
    }

    /// A given id (for resuming a known batch).
    pub fn from_string(id: impl Into<String>) -> Self {
        BatchId(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for BatchId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rows committed together in one snapshot.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The batch id written to the snapshot summary.
    pub id: BatchId,
    /// Where the rows came from (recorded in the summary).
    pub source: Source,
    /// The rows.
    pub rows: Vec<JournalRow>,
}

impl Batch {
    /// A batch with a fresh id.
    pub fn new(source: Source, rows: Vec<JournalRow>) -> Self {
        Batch {
            id: BatchId::new(),
            source,
            rows,
        }
    }
}

/// How commit attempts are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time, with full jitter.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// The batch id.
    pub batch_id: BatchId,
    /// Rows in the batch.
    pub rows: usize,
    /// Data files written.
    pub data_files: usize,
    /// The snapshot that holds the batch.
    pub snapshot_id: Option<i64>,
    /// Attempts made.
    pub attempts: u32,
    /// True when an earlier attempt had landed and this call only confirmed it.
    pub already_committed: bool,
}

/// The journal table in one catalog.
pub struct JournalTable {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    arrow_schema: arrow::datatypes::SchemaRef,
    writer_id: String,
    retry: RetryPolicy,
}

impl std::fmt::Debug for JournalTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalTable")
            .field("ident", &self.ident)
            .field("writer_id", &self.writer_id)
            .finish()
    }
}

impl JournalTable {
    /// Opens `namespace.table` (default name from the schema file), creating the namespace and
    /// the table if missing, and refusing a table whose schema differs from ours.
    pub async fn open(
        catalog: Arc<dyn Catalog>,
        namespace: &str,
        table: Option<&str>,
    ) -> Result<Self, TableError> {
        let spec = journal_spec()?;
        let ns = NamespaceIdent::from_strs(namespace.split('.'))
            .map_err(|e| catalog_error(namespace, "parsing the namespace", e))?;
        let ident = TableIdent::new(ns.clone(), table.unwrap_or(&spec.table).to_string());
        let name = ident.to_string();

        let namespace_exists = catalog
            .namespace_exists(&ns)
            .await
            .map_err(|e| catalog_error(&name, "checking the namespace", e))?;
        // Another writer may create the namespace meanwhile; catalogs report that race
        // differently (the SQL catalog as a unique-key violation), so look again on failure.
        if !namespace_exists
            && let Err(e) = catalog.create_namespace(&ns, HashMap::new()).await
            && !catalog.namespace_exists(&ns).await.unwrap_or(false)
        {
            return Err(catalog_error(&name, "creating the namespace", e));
        }
        if !catalog
            .table_exists(&ident)
            .await
            .map_err(|e| catalog_error(&name, "checking the table", e))?
        {
            let creation = TableCreation::builder()
                .name(ident.name().to_string())
                .schema(spec.schema.clone())
                .partition_spec(spec.partition_spec.clone())
                .sort_order(spec.sort_order.clone())
                .properties(spec.properties.clone())
                .format_version(spec.format_version)
                .build();
            match catalog.create_table(&ns, creation).await {
                Ok(_) => debug!(table = %name, "created the journal table"),
                // Another writer created it first (its schema is checked below like any other).
                Err(e) if catalog.table_exists(&ident).await.unwrap_or(false) => {
                    debug!(table = %name, error = %e, "the table was created concurrently");
                }
                Err(e) => return Err(catalog_error(&name, "creating the table", e)),
            }
        }
        let loaded = catalog
            .load_table(&ident)
            .await
            .map_err(|e| catalog_error(&name, "loading the table", e))?;
        let schema = loaded.metadata().current_schema();
        if let Some(detail) = spec.schema_difference(schema) {
            return Err(TableError::SchemaMismatch {
                table: name,
                detail,
            });
        }
        let arrow_schema = Arc::new(
            schema_to_arrow_schema(schema)
                .map_err(|e| catalog_error(&name, "mapping the schema to Arrow", e))?,
        );
        Ok(JournalTable {
            catalog,
            ident,
            arrow_schema,
            writer_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The table identifier.
    pub fn ident(&self) -> &TableIdent {
        &self.ident
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The Arrow schema rows are encoded in.
    pub fn arrow_schema(&self) -> &arrow::datatypes::SchemaRef {
        &self.arrow_schema
    }

    /// Loads the current table metadata.
    pub async fn load(&self) -> Result<Table, TableError> {
        self.catalog
            .load_table(&self.ident)
            .await
            .map_err(|e| catalog_error(&self.ident.to_string(), "loading the table", e))
    }

    /// Writes the batch as Parquet data files and commits them in one snapshot, exactly once
    /// (see the module doc). An empty batch commits nothing.
    pub async fn append(&self, batch: Batch) -> Result<CommitReport, TableError> {
        let Batch {
            id,
            source,
            mut rows,
        } = batch;
        let row_count = rows.len();
        let table_name = self.ident.to_string();
        if rows.is_empty() {
            return Ok(CommitReport {
                batch_id: id,
                rows: 0,
                data_files: 0,
                snapshot_id: None,
                attempts: 0,
                already_committed: false,
            });
        }
        sort_rows(&mut rows);
        let encoded =
            encode_rows(&self.arrow_schema, &rows).map_err(|source| TableError::Encode {
                table: table_name.clone(),
                rows: row_count,
                source,
            })?;
        drop(rows);

        let mut table = self.load().await?;
        let files = write_data_files(&table, &id, &encoded)
            .await
            .map_err(|source| TableError::Write {
                table: table_name.clone(),
                batch_id: id.to_string(),
                source: Box::new(source),
            })?;
        drop(encoded);

        let summary = HashMap::from([
            (SUMMARY_BATCH_ID.to_string(), id.to_string()),
            (SUMMARY_ROWS.to_string(), row_count.to_string()),
            (SUMMARY_SOURCE.to_string(), source.as_str().to_string()),
            (SUMMARY_WRITER.to_string(), self.writer_id.clone()),
        ]);
        let report = |snapshot_id, attempts, already_committed| CommitReport {
            batch_id: id.clone(),
            rows: row_count,
            data_files: files.len(),
            snapshot_id,
            attempts,
            already_committed,
        };

        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                if attempt > 1 {
                    table = self.catalog.load_table(&self.ident).await?;
                    if let Some(snapshot) = find_batch(&table, &id) {
                        return Ok((Some(snapshot), true));
                    }
                }
                let tx = Transaction::new(&table);
                let tx = tx
                    .fast_append()
                    .with_check_duplicate(false)
                    .add_data_files(files.clone())
                    .set_snapshot_properties(summary.clone())
                    .apply(tx)?;
                let committed = tx.commit(self.catalog.as_ref()).await?;
                let snapshot = find_batch(&committed, &id).or_else(|| {
                    committed
                        .metadata()
                        .current_snapshot()
                        .map(|s| s.snapshot_id())
                });
                Ok::<_, iceberg::Error>((snapshot, false))
            }
            .await;
            match result {
                Ok((snapshot_id, already)) => return Ok(report(snapshot_id, attempt, already)),
                Err(e) if attempt < self.retry.max_attempts && is_transient(&e) => {
                    let wait = backoff(&self.retry, attempt);
                    warn!(table = %table_name, batch_id = %id, attempt, error = %e, wait_ms = wait.as_millis() as u64,
                        "commit did not go through; checking for the batch and retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(source) => {
                    return Err(TableError::Commit {
                        table: table_name,
                        batch_id: id.to_string(),
                        rows: row_count,
                        attempts: attempt,
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    /// The snapshot holding batch `id`, if it has been committed (and not expired).
    pub async fn committed_batch(&self, id: &BatchId) -> Result<Option<i64>, TableError> {
        Ok(find_batch(&self.load().await?, id))
    }
}

fn find_batch(table: &Table, id: &BatchId) -> Option<i64> {
    table
        .metadata()
        .snapshots()
        .find(|s| {
            s.summary()
                .additional_properties
                .get(SUMMARY_BATCH_ID)
                .map(String::as_str)
                == Some(id.as_str())
        })
        .map(|s| s.snapshot_id())
}

/// Full-jitter exponential backoff.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .initial_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(policy.max_backoff);
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    exp.mul_f64((random % 1000) as f64 / 1000.0)
}

/// Parquet writer settings from the table properties (iceberg-rust leaves
/// `write.parquet.compression-*` to the caller): zstd level 3 unless the table says otherwise.
fn writer_properties(table: &Table) -> Result<WriterProperties, iceberg::Error> {
    let props = table.metadata().properties();
    let codec = props
        .get("write.parquet.compression-codec")
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_else(|| "zstd".into());
    let level: Option<i32> = props
        .get("write.parquet.compression-level")
        .and_then(|l| l.parse().ok());
    let compression = match codec.as_str() {
        "zstd" => Compression::ZSTD(
            ZstdLevel::try_new(level.unwrap_or(3))
                .map_err(|e| iceberg::Error::new(ErrorKind::DataInvalid, e.to_string()))?,
        ),
        "snappy" => Compression::SNAPPY,
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        other => {
            return Err(iceberg::Error::new(
                ErrorKind::FeatureUnsupported,
                format!(
                    "write.parquet.compression-codec {other} is not supported by annotable (use zstd, snappy or uncompressed)"
                ),
            ));
        }
    };
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .build())
}

/// Splits the batch by partition and writes one Parquet file per partition (more if a partition
/// passes the target file size), named `<batch id>-NNNNN.parquet`.
async fn write_data_files(
    table: &Table,
    id: &BatchId,
    batch: &RecordBatch,
) -> Result<Vec<DataFile>, iceberg::Error> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
        schema.clone(),
        metadata.default_partition_spec().clone(),
    )?;
    let parquet = ParquetWriterBuilder::new(writer_properties(table)?, schema);
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        parquet,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        DefaultFileNameGenerator::new(id.to_string(), None, DataFileFormat::Parquet),
    );
    let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
    for (key, part) in splitter.split(batch)? {
        writer.write(key, part).await?;
    }
    writer.close().await
}

fn catalog_error(table: &str, action: &str, source: iceberg::Error) -> TableError {
    TableError::Catalog {
        catalog: table.to_string(),
        action: action.to_string(),
        hint: "is the catalog reachable and the namespace/table name right?",
        source: Box::new(source),
    }
}
