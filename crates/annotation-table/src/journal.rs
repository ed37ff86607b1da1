//! The journal table handle: create-or-validate, write, and the idempotent commit.
//!
//! Commit protocol (docs/correctness.md §3). A batch's data files are written once, named after the
//! batch id. Then, per attempt: load the table; from the second attempt on, look for a snapshot
//! whose summary carries this batch id and stop if one exists (the earlier attempt did land,
//! only its answer was lost); otherwise `fast_append` the files with the batch id in the summary.
//! iceberg's own commit retries are disabled on the table (`commit.retry.num-retries = 0`)
//! because they re-apply the append without that check, which would duplicate rows after a
//! commit whose answer was lost. The duplicate-file check is off: file names embed the batch id,
//! so they cannot collide, and the check reads every manifest, which grows with the table.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, Transform};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tracing::{debug, warn};

use crate::encode::{encode_sorted, sort_keys};
use crate::object_encode::encode_object_rows;
use crate::{
    JournalRow, JournalSpec, ObjectRow, Source, TableError, journal_spec, object_journal_spec,
};

/// Snapshot-summary key holding the batch id.
pub const SUMMARY_BATCH_ID: &str = "annotable.batch-id";
const SUMMARY_ROWS: &str = "annotable.rows";
const SUMMARY_SOURCE: &str = "annotable.source";
/// Snapshot-summary key holding the id of the process that committed.
pub const SUMMARY_WRITER: &str = "annotable.writer";

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

/// A row a journal table holds: an annotation journal row or an object journal row. What the
/// commit needs of it: the partition it falls in, and its Arrow encoding.
pub trait TableRow: Send + Sync + 'static {
    /// The bucket (the first partition field).
    fn bucket(&self) -> &str;
    /// When it was written (its day is the second partition field).
    fn ingested_at(&self) -> DateTime<Utc>;
    /// Encodes rows into a batch of `schema`, sorted by `keys`.
    fn encode(
        schema: &SchemaRef,
        rows: &[&Self],
        keys: &[(usize, SortOptions)],
    ) -> Result<RecordBatch, arrow::error::ArrowError>;
}

impl TableRow for JournalRow {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn ingested_at(&self) -> DateTime<Utc> {
        self.ingested_at
    }

    fn encode(
        schema: &SchemaRef,
        rows: &[&Self],
        keys: &[(usize, SortOptions)],
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        encode_sorted(schema, rows, keys)
    }
}

impl TableRow for ObjectRow {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn ingested_at(&self) -> DateTime<Utc> {
        self.ingested_at
    }

    fn encode(
        schema: &SchemaRef,
        rows: &[&Self],
        keys: &[(usize, SortOptions)],
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        encode_object_rows(schema, rows, keys)
    }
}

/// Rows committed together in one snapshot.
#[derive(Debug, Clone)]
pub struct Batch<R = JournalRow> {
    /// The batch id written to the snapshot summary.
    pub id: BatchId,
    /// Where the rows came from (recorded in the summary).
    pub source: Source,
    /// The rows (shared: a retried commit re-sends the same rows without copying payloads).
    pub rows: Arc<Vec<R>>,
    /// More snapshot-summary properties, committed atomically with the rows (backfill records
    /// its listing position this way). Keys should start with `annotable.`.
    pub properties: BTreeMap<String, String>,
}

impl<R> Batch<R> {
    /// A batch with a fresh id.
    pub fn new(source: Source, rows: Vec<R>) -> Self {
        Batch {
            id: BatchId::new(),
            source,
            rows: Arc::new(rows),
            properties: BTreeMap::new(),
        }
    }
}

/// How long the commit loop keeps retrying transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Wait before the second attempt; doubles each time, with full jitter.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Stop retrying once this much time has passed since the first attempt; `None` keeps
    /// retrying until the commit lands, fails permanently, or the caller's deadline passes
    /// (`serve` holds a batch's messages through a catalog outage this way).
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Some(Duration::from_secs(120)),
        }
    }
}

/// A failed attempt that the commit loop is about to retry.
#[derive(Debug)]
pub struct Retry<'a> {
    /// Why the attempt failed.
    pub error: &'a TableError,
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// The wait before the next attempt.
    pub wait: Duration,
}

/// Data files written by an earlier attempt (they are written once per batch).
struct Written {
    files: Vec<DataFile>,
    encode_time: Duration,
    write_time: Duration,
}

/// How one attempt failed.
enum Failed {
    GaveUp,
    Encode(arrow::error::ArrowError),
    Write(iceberg::Error),
    Commit(iceberg::Error),
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
    /// CPU time spent sorting and encoding rows to Arrow, summed over the parallel tasks.
    pub encode_time: Duration,
    /// Wall time from rows to written Parquet data files (sorting and encoding included).
    pub write_time: Duration,
    /// Time spent committing (all attempts, backoff included).
    pub commit_time: Duration,
}

/// The journal table in one catalog.
#[derive(Clone)]
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
        Self::open_spec(catalog, namespace, table.unwrap_or(&spec.table), spec).await
    }

    /// Opens `namespace.table` (default name `object_journal`), the object journal, creating
    /// it if missing and refusing a table whose schema differs from ours.
    pub async fn open_objects(
        catalog: Arc<dyn Catalog>,
        namespace: &str,
        table: Option<&str>,
    ) -> Result<Self, TableError> {
        let spec = object_journal_spec()?;
        Self::open_spec(catalog, namespace, table.unwrap_or(&spec.table), spec).await
    }

    /// Opens (creating if missing) the table `namespace.table` defined by `spec`: the journal,
    /// or one of the current-state tables [`crate::state`] keeps.
    pub async fn open_spec(
        catalog: Arc<dyn Catalog>,
        namespace: &str,
        table: &str,
        spec: &JournalSpec,
    ) -> Result<Self, TableError> {
        let ns = NamespaceIdent::from_strs(namespace.split('.'))
            .map_err(|e| catalog_error(namespace, "parsing the namespace", e))?;
        let ident = TableIdent::new(ns.clone(), table.to_string());
        let name = ident.to_string();

        let namespace_exists = catalog
            .namespace_exists(&ns)
            .await
            .map_err(|e| catalog_error(&name, "checking the namespace", e))?;
        // Another writer may create the namespace meanwhile; catalogs report that race
        // differently (REST as NamespaceAlreadyExists, the SQL catalog as a unique-key
        // violation), so look again on any other failure.
        if !namespace_exists {
            match catalog.create_namespace(&ns, HashMap::new()).await {
                Ok(_) => {}
                Err(e) if e.kind() == iceberg::ErrorKind::NamespaceAlreadyExists => {}
                Err(_) if catalog.namespace_exists(&ns).await.unwrap_or(false) => {}
                Err(e) => return Err(catalog_error(&name, "creating the namespace", e)),
            }
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
                Ok(_) => debug!(table = %name, "created the table"),
                // Another writer created it first (its schema is checked below like any other).
                Err(e)
                    if e.kind() == iceberg::ErrorKind::TableAlreadyExists
                        || catalog.table_exists(&ident).await.unwrap_or(false) =>
                {
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

    /// This handle's writer id (recorded in every snapshot it commits).
    pub fn writer_id(&self) -> &str {
        &self.writer_id
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
    /// (see the module doc), retrying transient failures for as long as the table's
    /// [`RetryPolicy`] allows. An empty batch commits nothing.
    pub async fn append<R: TableRow>(&self, batch: Batch<R>) -> Result<CommitReport, TableError> {
        self.append_until(batch, std::future::pending(), |_| {})
            .await
    }

    /// [`append`](Self::append) with a deadline and an observer: the one commit loop.
    ///
    /// Every transient failure (writing the files, loading the table, the commit itself) is
    /// retried in this one loop, with full-jitter backoff; every attempt after the first looks
    /// for the batch id before committing, so an attempt whose answer was lost is not written
    /// twice. The loop stops on success, on a permanent error, when the policy's
    /// `max_elapsed` is spent, or when `give_up` completes (a shutdown deadline): an attempt
    /// or a wait in progress is abandoned then, which is safe because an abandoned commit
    /// either landed whole or not at all. `on_retry` sees every failure that is retried
    /// (callers report health and metrics through it).
    pub async fn append_until<R: TableRow>(
        &self,
        batch: Batch<R>,
        give_up: impl Future<Output = ()>,
        mut on_retry: impl FnMut(&Retry<'_>),
    ) -> Result<CommitReport, TableError> {
        let Batch {
            id,
            source,
            rows,
            properties,
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
                encode_time: Duration::ZERO,
                write_time: Duration::ZERO,
                commit_time: Duration::ZERO,
            });
        }
        let mut summary: HashMap<String, String> = properties.into_iter().collect();
        summary.extend([
            (SUMMARY_BATCH_ID.to_string(), id.to_string()),
            (SUMMARY_ROWS.to_string(), row_count.to_string()),
            (SUMMARY_SOURCE.to_string(), source.as_str().to_string()),
            (SUMMARY_WRITER.to_string(), self.writer_id.clone()),
        ]);
        let started = Instant::now();
        let mut give_up = std::pin::pin!(give_up);
        let mut written: Option<Written> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                biased;
                _ = &mut give_up => Err(Failed::GaveUp),
                r = self.attempt(&id, &rows, &summary, &mut written, attempt) => r,
            };
            let error = match result {
                Ok((snapshot_id, already_committed)) => {
                    let (data_files, encode_time, write_time) = written
                        .as_ref()
                        .map(|w| (w.files.len(), w.encode_time, w.write_time))
                        .unwrap_or_default();
                    return Ok(CommitReport {
                        batch_id: id,
                        rows: row_count,
                        data_files,
                        snapshot_id,
                        attempts: attempt,
                        already_committed,
                        encode_time,
                        write_time,
                        commit_time: started.elapsed().saturating_sub(write_time),
                    });
                }
                Err(Failed::GaveUp) => {
                    return Err(TableError::GaveUp {
                        table: table_name,
                        batch_id: id.to_string(),
                        rows: row_count,
                        attempts: attempt,
                    });
                }
                Err(Failed::Encode(source)) => {
                    return Err(TableError::Encode {
                        table: table_name,
                        rows: row_count,
                        source,
                    });
                }
                Err(Failed::Write(source)) => TableError::Write {
                    table: table_name.clone(),
                    batch_id: id.to_string(),
                    source: Box::new(source),
                },
                Err(Failed::Commit(source)) => TableError::Commit {
                    table: table_name.clone(),
                    batch_id: id.to_string(),
                    rows: row_count,
                    attempts: attempt,
                    source: Box::new(source),
                },
            };
            let within_budget = self
                .retry
                .max_elapsed
                .is_none_or(|limit| started.elapsed() < limit);
            if !(error.is_retryable() && within_budget) {
                return Err(error);
            }
            let wait = backoff(&self.retry, attempt);
            warn!(table = %table_name, batch_id = %id, attempt, error = %error, wait_ms = wait.as_millis() as u64,
                "commit did not go through; checking for the batch and retrying");
            on_retry(&Retry {
                error: &error,
                attempt,
                wait,
            });
            tokio::select! {
                biased;
                _ = &mut give_up => {
                    return Err(TableError::GaveUp {
                        table: table_name,
                        batch_id: id.to_string(),
                        rows: row_count,
                        attempts: attempt,
                    });
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt: from the second on, look for the batch first; write the data files unless
    /// an earlier attempt did; commit them.
    async fn attempt<R: TableRow>(
        &self,
        id: &BatchId,
        rows: &Arc<Vec<R>>,
        summary: &HashMap<String, String>,
        written: &mut Option<Written>,
        attempt: u32,
    ) -> Result<(Option<i64>, bool), Failed> {
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(Failed::Commit)?;
        if attempt > 1
            && let Some(snapshot) = find_batch(&table, id)
        {
            return Ok((Some(snapshot), true));
        }
        let files = match written {
            Some(w) => w.files.clone(),
            None => {
                let started = Instant::now();
                let (files, encode_time) =
                    write_data_files(&table, &self.arrow_schema, id, rows.clone())
                        .await
                        .map_err(|failure| match failure {
                            WriteFailure::Encode(e) => Failed::Encode(e),
                            WriteFailure::Write(e) => Failed::Write(e),
                        })?;
                *written = Some(Written {
                    files: files.clone(),
                    encode_time,
                    write_time: started.elapsed(),
                });
                files
            }
        };
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(summary.clone())
            .apply(tx)
            .map_err(Failed::Commit)?;
        let committed = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(Failed::Commit)?;
        let snapshot = find_batch(&committed, id).or_else(|| {
            committed
                .metadata()
                .current_snapshot()
                .map(|s| s.snapshot_id())
        });
        Ok((snapshot, false))
    }

    /// The summary of the newest snapshot (by sequence number) whose summary has
    /// `key = value`, if any is still in the table's history.
    pub async fn latest_summary_with(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<HashMap<String, String>>, TableError> {
        let table = self.load().await?;
        Ok(table
            .metadata()
            .snapshots()
            .filter(|s| {
                s.summary()
                    .additional_properties
                    .get(key)
                    .map(String::as_str)
                    == Some(value)
            })
            .max_by_key(|s| s.sequence_number())
            .map(|s| s.summary().additional_properties.clone()))
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
    let mut builder = WriterProperties::builder().set_compression(compression);
    // Iceberg's own property for rows per page. The state tables set it small: a refresh and a
    // lookup read only the pages whose `object_key` range holds their keys (`state::pages`).
    if let Some(rows) = props.get("write.parquet.page-row-limit") {
        let rows: usize = rows.parse().ok().filter(|&r| r > 0).ok_or_else(|| {
            iceberg::Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "table property write.parquet.page-row-limit is {rows:?}: set a positive number of rows"
                ),
            )
        })?;
        // Parquet checks the limit after each write batch, so the batch may not exceed it.
        builder = builder
            .set_data_page_row_count_limit(rows)
            .set_write_batch_size(rows.min(parquet::file::properties::DEFAULT_WRITE_BATCH_SIZE));
    }
    // Columns that are (nearly) unique per row: a dictionary never pays off there, and Parquet
    // would build one for the first megabyte of every column chunk before falling back.
    for column in [
        "text_value",
        "sequence_number",
        "object_join_key",
        "request_id",
        "e_tag",
        "annotation_hash",
        "object_version_hash",
    ] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // Payloads are up to 1 MiB: chunk-level min/max suffices (nobody prunes on them) and page
    // statistics would compare every value.
    // The identity hashes are random 126-bit numbers: a page's min/max of them prunes
    // nothing, so only the chunk's is kept (for Iceberg's column metrics).
    for column in ["text_value", "annotation_hash", "object_version_hash"] {
        builder = builder
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::Chunk);
    }
    // Timestamps are (nearly) unique per row, so a dictionary of them is all cost; as deltas
    // they are small numbers. On the ingest bench's rows, one core: 8% less writer CPU and 8%
    // smaller files than the default dictionary (medians of 3, same process).
    for column in ["last_modified_date", "event_time", "ingested_at"] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    Ok(builder.build())
}

/// Below this many rows a partition is written as one file; above it, a partition may be cut
/// into several files so that every core has work (a 100k-row batch into one partition is
/// written as two files on two cores, not one file on one).
const MIN_ROWS_PER_FILE: usize = 25_000;

/// Why writing the data files failed.
pub(crate) enum WriteFailure {
    Encode(arrow::error::ArrowError),
    Write(iceberg::Error),
}

impl From<iceberg::Error> for WriteFailure {
    fn from(e: iceberg::Error) -> Self {
        WriteFailure::Write(e)
    }
}

fn task_failed(e: tokio::task::JoinError) -> WriteFailure {
    WriteFailure::Write(iceberg::Error::new(
        ErrorKind::Unexpected,
        format!("a Parquet writer task failed: {e}"),
    ))
}

/// Writes the rows as Parquet data files named `<batch id>-NNNNN.parquet`, in parallel.
///
/// Rows are grouped by partition (bucket, day of ingested_at) by index, not moved into
/// per-group vectors (a row is ~400 bytes; the ingest bench showed no measurable gain from this
/// alone, it only saves the copies). Each group is cut, in arrival order, into chunks of about
/// `per_file` rows; every chunk is one file, sorted by the table's sort order and encoded on a
/// blocking thread, then written by its own task. So encoding uses every core even when a
/// batch holds one partition (it was one encoding thread per partition before: 1.54x slower
/// for one-bucket batches in the ingest bench), and one chunk's Parquet encoding overlaps
/// another's sorting. Files of one partition may overlap in key range; each is sorted, which
/// is what the table's sort order promises (compaction merges them). The rows are freed on a
/// blocking thread of their own once every chunk is encoded.
///
/// Returns the files and the time spent sorting and encoding (summed over the chunks).
async fn write_data_files<R: TableRow>(
    table: &Table,
    arrow_schema: &arrow::datatypes::SchemaRef,
    id: &BatchId,
    rows: Arc<Vec<R>>,
) -> Result<(Vec<DataFile>, Duration), WriteFailure> {
    let (builder, splitter) = file_writer(table, id.as_str(), None)?;
    let keys: Arc<[_]> = sort_keys(table.metadata(), arrow_schema).into();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_file = (rows.len() / cores).max(MIN_ROWS_PER_FILE);

    // Few partitions per batch: find each row's group by a linear scan, without allocating.
    // A table whose partition spec was changed by another tool is split by iceberg instead.
    let by_journal_spec = partitioned_by_bucket_and_day(table);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let day = row.ingested_at().date_naive();
        match groups.iter_mut().find(|g| {
            let first = &rows[g[0]];
            !by_journal_spec
                || (first.bucket() == row.bucket() && first.ingested_at().date_naive() == day)
        }) {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }

    let mut tasks = tokio::task::JoinSet::new();
    for group in groups {
        let chunks = group.len().div_ceil(per_file);
        let len = group.len().div_ceil(chunks.max(1)).max(1);
        for chunk in group.chunks(len) {
            let chunk = chunk.to_vec();
            let (builder, splitter, arrow_schema) =
                (builder.clone(), splitter.clone(), arrow_schema.clone());
            let (keys, rows) = (keys.clone(), rows.clone());
            tasks.spawn(async move {
                let (batch, cpu) = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let refs: Vec<&R> = chunk.iter().map(|&i| &rows[i]).collect();
                    R::encode(&arrow_schema, &refs, &keys).map(|b| (b, started.elapsed()))
                })
                .await
                .map_err(task_failed)?
                .map_err(WriteFailure::Encode)?;
                let parts = if by_journal_spec {
                    single_partition(&splitter, batch)?
                } else {
                    splitter.split(&batch)?
                };
                let files = write_partitioned(&builder, parts).await?;
                Ok::<_, WriteFailure>((files, cpu))
            });
        }
    }
    let mut files = Vec::new();
    let mut cpu = Duration::ZERO;
    let mut rows = Some(rows);
    while let Some(done) = tasks.join_next().await {
        let (written, took) = done.map_err(task_failed)??;
        files.extend(written);
        cpu += took;
        // Once every chunk is encoded only this reference is left: free the rows (millions of
        // small strings) off the async runtime, while the remaining files are written.
        if rows.as_ref().is_some_and(|r| Arc::strong_count(r) == 1) {
            let rows = rows.take();
            tokio::task::spawn_blocking(move || drop(rows));
        }
    }
    if let Some(rows) = rows {
        tokio::task::spawn_blocking(move || drop(rows));
    }
    Ok((files, cpu))
}

/// Whether the table is partitioned as the journals' schema files say, by identity(bucket) and
/// day(ingested_at), which is how [`write_data_files`] groups rows.
fn partitioned_by_bucket_and_day(table: &Table) -> bool {
    let schema = table.metadata().current_schema();
    let fields = table.metadata().default_partition_spec().fields();
    let is = |i: usize, name: &str, transform: Transform| {
        fields.get(i).is_some_and(|f| {
            f.transform == transform && schema.name_by_field_id(f.source_id) == Some(name)
        })
    };
    fields.len() == 2
        && is(0, "bucket", Transform::Identity)
        && is(1, "ingested_at", Transform::Day)
}

/// The writer of one table's data files: Parquet with the table's settings, named
/// `<prefix>-NNNNN-…parquet`, rolled at `target_file_size` (iceberg's default when `None`).
pub(crate) type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// A data-file writer builder and the partition splitter for `table`.
pub(crate) fn file_writer(
    table: &Table,
    prefix: &str,
    target_file_size: Option<usize>,
) -> Result<(Arc<FileWriterBuilder>, Arc<RecordBatchPartitionSplitter>), iceberg::Error> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let splitter = Arc::new(RecordBatchPartitionSplitter::try_new_with_computed_values(
        schema.clone(),
        metadata.default_partition_spec().clone(),
    )?);
    let parquet = ParquetWriterBuilder::new(writer_properties(table)?, schema);
    let location = DefaultLocationGenerator::new(metadata)?;
    let names = DefaultFileNameGenerator::new(prefix.to_string(), None, DataFileFormat::Parquet);
    let rolling = match target_file_size {
        Some(size) => {
            RollingFileWriterBuilder::new(parquet, size, table.file_io().clone(), location, names)
        }
        None => RollingFileWriterBuilder::new_with_default_file_size(
            parquet,
            table.file_io().clone(),
            location,
            names,
        ),
    };
    Ok((Arc::new(DataFileWriterBuilder::new(rolling)), splitter))
}

/// The partition key of a batch whose rows all lie in one partition, computed from its first
/// row: the splitter converts every row's partition values and copies the batch per
/// partition, work that is wasted when the rows were grouped by partition already.
pub(crate) fn single_partition(
    splitter: &RecordBatchPartitionSplitter,
    batch: RecordBatch,
) -> Result<Vec<(PartitionKey, RecordBatch)>, iceberg::Error> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let key = splitter
        .split(&batch.slice(0, 1))?
        .into_iter()
        .next()
        .map(|(key, _)| key)
        .ok_or_else(|| {
            iceberg::Error::new(
                ErrorKind::Unexpected,
                "no partition key for a non-empty batch",
            )
        })?;
    Ok(vec![(key, batch)])
}

/// Writes sorted batches, each with its partition key, as data files (one per batch, rolled
/// at the writer's target size), in parallel.
pub(crate) async fn write_partitioned(
    builder: &Arc<FileWriterBuilder>,
    parts: Vec<(PartitionKey, RecordBatch)>,
) -> Result<Vec<DataFile>, WriteFailure> {
    let mut writes = tokio::task::JoinSet::new();
    for (key, part) in parts {
        let builder = builder.clone();
        writes.spawn(async move {
            let mut writer = builder.build(Some(key)).await?;
            writer.write(part).await?;
            writer.close().await
        });
    }
    let mut files = Vec::new();
    while let Some(written) = writes.join_next().await {
        files.extend(written.map_err(task_failed)??);
    }
    Ok(files)
}

fn catalog_error(table: &str, action: &str, source: iceberg::Error) -> TableError {
    TableError::Catalog {
        catalog: table.to_string(),
        action: action.to_string(),
        hint: "is the catalog reachable and the namespace/table name right?",
        source: Box::new(source),
    }
}
