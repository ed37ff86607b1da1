//! The journal table against real components: a SQLite catalog file, a local warehouse with real
//! Parquet files, and PostgreSQL on 127.0.0.1:5432 for several writer processes.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, SUMMARY_BATCH_ID, Source,
    StorageConfig, TableError, connect,
};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use iceberg::table::Table;
use iceberg::{Catalog, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent};

fn row(i: usize) -> JournalRow {
    JournalRow {
        bucket: if i.is_multiple_of(2) {
            "bucket-a"
        } else {
            "bucket-b"
        }
        .into(),
        object_key: format!("dir/obj {i}+plus/ünï ✓.json"),
        object_version_id: (!i.is_multiple_of(3)).then(|| format!("v{i}")),
        object_join_key: format!("join-{i}"),
        name: (!i.is_multiple_of(5)).then(|| format!("label.{i}")),
        record_type: match i % 5 {
            0 => RecordType::ObjectReset,
            1 => RecordType::Delete,
            _ => RecordType::Put,
        },
        sequence_number: format!("{:020}-w1", 1_763_725_000_000_000_000u64 + i as u64),
        last_modified_date: (!i.is_multiple_of(4)).then(|| {
            Utc.timestamp_opt(1_763_700_000 + i as i64, 123_456_000)
                .unwrap()
                .naive_utc()
        }),
        size: (!i.is_multiple_of(4)).then_some(i as i64 * 10),
        e_tag: (!i.is_multiple_of(4)).then(|| format!("\"etag{i}\"")),
        checksum_algorithm: (i.is_multiple_of(2)).then(|| "CRC64NVME".into()),
        replication_status: (i.is_multiple_of(7)).then(|| "COMPLETED".into()),
        text_value: (i % 5 >= 2).then(|| format!(r#"{{"n":{i},"s":"ü ✓ \"q\""}}"#)),
        event_name: Some("ObjectAnnotation:Put".into()),
        event_time: Some(Utc.timestamp_opt(1_763_700_000 + i as i64, 1_000).unwrap()),
        source: if i.is_multiple_of(2) {
            Source::Notification
        } else {
            Source::Backfill
        },
        requester: (i.is_multiple_of(3)).then(|| "AIDAEXAMPLE".into()),
        source_ip_address: Some("127.0.0.1".into()),
        request_id: None,
        ingested_at: Utc
            .timestamp_opt(1_763_725_000 + ((i / 2) as i64 % 2) * 86_400, 0)
            .unwrap(),
    }
}

async fn sqlite(dir: &std::path::Path) -> Arc<dyn Catalog> {
    connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The journal table in the SQLite catalog under `dir` (created on first open).
async fn journal(dir: &std::path::Path) -> JournalTable {
    JournalTable::open(sqlite(dir).await, "s3_metadata", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every Parquet file under `dir`.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

async fn read_all(table: &Table) -> Vec<RecordBatch> {
    table
        .scan()
        .select_all()
        .build()
        .expect("scan")
        .to_arrow()
        .await
        .expect("to_arrow")
        .try_collect()
        .await
        .expect("read batches")
}

/// Decodes batches back into rows.
fn decode(batches: &[RecordBatch]) -> Vec<JournalRow> {
    let mut out = Vec::new();
    for b in batches {
        let s = |name: &str| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}"))
                .as_string::<i32>()
                .clone()
        };
        let t = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let (bucket, key, ver, join, name, rt, seq) = (
            s("bucket"),
            s("object_key"),
            s("object_version_id"),
            s("object_join_key"),
            s("name"),
            s("record_type"),
            s("sequence_number"),
        );
        let (etag, ck, rs, text, ev, src, req, ip, rid) = (
            s("e_tag"),
            s("checksum_algorithm"),
            s("replication_status"),
            s("text_value"),
            s("event_name"),
            s("source"),
            s("requester"),
            s("source_ip_address"),
            s("request_id"),
        );
        let (lm, et, ing) = (t("last_modified_date"), t("event_time"), t("ingested_at"));
        let hash = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_primitive::<Decimal128Type>()
                .clone()
        };
        let (annotation_hash, object_version_hash) =
            (hash("annotation_hash"), hash("object_version_hash"));
        let size = b
            .column_by_name("size")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let opt =
            |a: &arrow::array::StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
        let utc = |micros: i64| DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
        for i in 0..b.num_rows() {
            let row = JournalRow {
                bucket: bucket.value(i).into(),
                object_key: key.value(i).into(),
                object_version_id: opt(&ver, i),
                object_join_key: join.value(i).into(),
                name: opt(&name, i),
                record_type: match rt.value(i) {
                    "PUT" => RecordType::Put,
                    "DELETE" => RecordType::Delete,
                    "OBJECT_RESET" => RecordType::ObjectReset,
                    other => panic!("record_type {other}"),
                },
                sequence_number: seq.value(i).into(),
                last_modified_date: lm.is_valid(i).then(|| utc(lm.value(i)).naive_utc()),
                size: size.is_valid(i).then(|| size.value(i)),
                e_tag: opt(&etag, i),
                checksum_algorithm: opt(&ck, i),
                replication_status: opt(&rs, i),
                text_value: opt(&text, i),
                event_name: opt(&ev, i),
                event_time: et.is_valid(i).then(|| utc(et.value(i))),
                source: match src.value(i) {
                    "notification" => Source::Notification,
                    "backfill" => Source::Backfill,
                    other => panic!("source {other}"),
                },
                requester: opt(&req, i),
                source_ip_address: opt(&ip, i),
                request_id: opt(&rid, i),
                ingested_at: utc(ing.value(i)),
            };
            // The identity columns are derived from the row, so they round-trip as the
            // row's own hashes.
            assert_eq!(
                annotation_hash
                    .is_valid(i)
                    .then(|| annotation_hash.value(i)),
                row.annotation_hash(),
                "annotation_hash of {row:?}"
            );
            assert_eq!(
                object_version_hash.value(i),
                row.object_version_hash(),
                "object_version_hash of {row:?}"
            );
            out.push(row);
        }
    }
    out
}

fn sorted(mut rows: Vec<JournalRow>) -> Vec<JournalRow> {
    rows.sort_by(|a, b| a.sequence_number.cmp(&b.sequence_number));
    rows
}

#[tokio::test]
async fn every_column_round_trips_through_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path()).await;
    let mut rows: Vec<JournalRow> = (0..200).map(row).collect();
    // A 1 MiB payload (the S3 maximum), with multi-byte characters.
    rows[2].text_value = Some("é".repeat(512 * 1024));
    let report = journal
        .append(Batch::new(Source::Notification, rows.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.rows, 200);
    assert_eq!(report.attempts, 1);
    assert!(!report.already_committed);
    // Two buckets × two ingestion days → four partitions, one file each.
    assert_eq!(
        report.data_files, 4,
        "one data file per (bucket, day) partition"
    );

    let table = journal.load().await.unwrap();
    let snapshot = table.metadata().current_snapshot().expect("a snapshot");
    assert_eq!(
        snapshot
            .summary()
            .additional_properties
            .get(SUMMARY_BATCH_ID)
            .map(String::as_str),
        Some(report.batch_id.as_str())
    );
    assert_eq!(
        snapshot
            .summary()
            .additional_properties
            .get("annotable.rows")
            .map(String::as_str),
        Some("200")
    );
    assert_eq!(
        sorted(decode(&read_all(&table).await)),
        sorted(rows),
        "rows read back differ"
    );

    // The files are real zstd Parquet under the local warehouse.
    let parquet_files = parquet_files(dir.path());
    assert_eq!(parquet_files.len(), 4);
    let reader = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(&parquet_files[0]).unwrap(),
    )
    .unwrap();
    use parquet::file::reader::FileReader;
    let codec = reader.metadata().row_group(0).column(0).compression();
    assert!(
        matches!(codec, parquet::basic::Compression::ZSTD(_)),
        "compression {codec:?}"
    );
}

/// A batch of one partition large enough to be cut into several files (one per core): every
/// file is sorted by the table's sort order (bucket, object_key, name; nulls first), and every
/// row is read back exactly once.
#[tokio::test]
async fn a_large_batch_is_written_as_sorted_files() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path()).await;
    // One (bucket, day) partition, object keys arriving in descending order.
    let n = 60_000;
    let rows: Vec<JournalRow> = (0..n)
        .map(|i| {
            let mut r = row(n - i);
            r.bucket = "bucket-a".into();
            r.ingested_at = Utc.timestamp_opt(1_763_725_000, 0).unwrap();
            r
        })
        .collect();
    let report = journal
        .append(Batch::new(Source::Notification, rows.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let per_file = (n / cores).max(25_000);
    assert_eq!(
        report.data_files,
        n.div_ceil(per_file),
        "one file per core, of 25k rows at least"
    );

    let files = parquet_files(dir.path());
    assert_eq!(files.len(), report.data_files);
    for file in &files {
        let batches: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                std::fs::File::open(file).unwrap(),
                8192,
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let keys: Vec<(String, String, Option<String>)> = decode(&batches)
            .into_iter()
            .map(|r| (r.bucket, r.object_key, r.name))
            .collect();
        assert!(
            keys.is_sorted(),
            "{} is not sorted by bucket, object_key, name",
            file.display()
        );
    }
    let table = journal.load().await.unwrap();
    assert_eq!(sorted(decode(&read_all(&table).await)), sorted(rows));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn reopening_finds_the_same_table_and_an_empty_batch_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = journal(dir.path()).await;
    first
        .append(Batch::new(Source::Backfill, vec![row(1)]))
        .await
        .unwrap();
    let again = journal(dir.path()).await;
    let report = again
        .append(Batch::<annotation_table::JournalRow>::new(
            Source::Backfill,
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!((report.rows, report.snapshot_id), (0, None));
    assert_eq!(
        decode(&read_all(&again.load().await.unwrap()).await).len(),
        1
    );
}

#[tokio::test]
async fn a_table_with_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = sqlite(dir.path()).await;
    let ns = NamespaceIdent::new("s3_metadata".into());
    catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
    let schema = iceberg::spec::Schema::builder()
        .with_fields(vec![
            iceberg::spec::NestedField::required(
                1,
                "bucket",
                iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Long),
            )
            .into(),
        ])
        .build()
        .unwrap();
    catalog
        .create_table(
            &ns,
            TableCreation::builder()
                .name("annotation_journal".into())
                .schema(schema)
                .build(),
        )
        .await
        .unwrap();
    match JournalTable::open(catalog, "s3_metadata", None).await {
        Err(TableError::SchemaMismatch { table, detail }) => {
            assert_eq!(table, "s3_metadata.annotation_journal");
            assert!(
                detail.contains("bucket") && detail.contains("long"),
                "{detail}"
            );
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
}

/// A catalog whose next `update_table` succeeds but reports failure, as when the response to a
/// successful commit is lost (timeout, 5xx, connection reset).
#[derive(Debug)]
struct LoseNextCommitAnswer {
    inner: Arc<dyn Catalog>,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl Catalog for LoseNextCommitAnswer {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        ns: &NamespaceIdent,
        props: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(ns, props).await
    }
    async fn get_namespace(&self, ns: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(ns).await
    }
    async fn namespace_exists(&self, ns: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(ns).await
    }
    async fn update_namespace(
        &self,
        ns: &NamespaceIdent,
        props: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(ns, props).await
    }
    async fn drop_namespace(&self, ns: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(ns).await
    }
    async fn list_tables(&self, ns: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(ns).await
    }
    async fn create_table(
        &self,
        ns: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(ns, creation).await
    }
    async fn load_table(&self, t: &TableIdent) -> iceberg::Result<Table> {
        self.inner.load_table(t).await
    }
    async fn drop_table(&self, t: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(t).await
    }
    async fn purge_table(&self, t: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(t).await
    }
    async fn table_exists(&self, t: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(t).await
    }
    async fn rename_table(&self, a: &TableIdent, b: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(a, b).await
    }
    async fn register_table(&self, t: &TableIdent, loc: String) -> iceberg::Result<Table> {
        self.inner.register_table(t, loc).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let result = self.inner.update_table(commit).await;
        if result.is_ok() && self.armed.swap(false, Ordering::SeqCst) {
            return Err(iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                "injected: the commit landed but its answer was lost",
            )
            .with_retryable(true));
        }
        result
    }
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(LoseNextCommitAnswer {
        inner: sqlite(dir.path()).await,
        armed: AtomicBool::new(false),
    });
    let journal = JournalTable::open(faulty.clone(), "s3_metadata", None)
        .await
        .unwrap();
    journal
        .append(Batch::new(Source::Notification, (0..10).map(row).collect()))
        .await
        .unwrap();

    faulty.armed.store(true, Ordering::SeqCst);
    let batch = Batch::new(Source::Notification, (10..30).map(row).collect());
    let id = batch.id.clone();
    let report = journal
        .append(batch)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !faulty.armed.load(Ordering::SeqCst),
        "the fault was not triggered"
    );
    assert!(
        report.already_committed,
        "the retry should have found the batch: {report:?}"
    );
    assert_eq!(report.attempts, 2);

    let table = journal.load().await.unwrap();
    let with_id = table
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary().additional_properties.get(SUMMARY_BATCH_ID) == Some(&id.to_string())
        })
        .count();
    assert_eq!(with_id, 1, "exactly one snapshot carries the batch id");
    assert_eq!(table.metadata().snapshots().count(), 2);
    assert_eq!(
        decode(&read_all(&table).await).len(),
        30,
        "no duplicate rows"
    );
}

// ---- several writer processes on PostgreSQL -------------------------------------------------

const CHILD_ENV: &str = "ANNOTABLE_TEST_WRITER_CHILD";
const PG_URI: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pg_config(warehouse: &str) -> CatalogConfig {
    CatalogConfig::Sql {
        uri: PG_URI.into(),
        warehouse: format!("file://{warehouse}"),
    }
}

/// Not a test on its own: the body of one writer process, run by
/// `three_processes_commit_concurrently_on_postgres` through this same test binary.
#[tokio::test]
async fn writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (warehouse, namespace, writer, batches, per_batch) = (
        parts[0],
        parts[1],
        parts[2].parse::<usize>().unwrap(),
        parts[3].parse::<usize>().unwrap(),
        parts[4].parse::<usize>().unwrap(),
    );
    let catalog = connect(
        "annotable",
        &pg_config(warehouse),
        &StorageConfig::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let journal = JournalTable::open(catalog, namespace, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for b in 0..batches {
        let rows = (0..per_batch)
            .map(|i| {
                let mut r = row(i);
                r.sequence_number = format!("w{writer}-b{b:03}-r{i:04}");
                r
            })
            .collect();
        journal
            .append(Batch::new(Source::Notification, rows))
            .await
            .unwrap_or_else(|e| panic!("writer {writer}: {e}"));
    }
}

#[tokio::test]
async fn three_processes_commit_concurrently_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().to_str().unwrap();
    let namespace = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (writers, batches, per_batch) = (3, 8, 50);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..writers)
        .map(|w| {
            std::process::Command::new(&exe)
                .args(["--exact", "writer_child", "--nocapture"])
                .env(
                    CHILD_ENV,
                    format!("{warehouse}|{namespace}|{w}|{batches}|{per_batch}"),
                )
                .spawn()
                .expect("spawn writer process")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a writer process failed");
    }

    let catalog = connect(
        "annotable",
        &pg_config(warehouse),
        &StorageConfig::default(),
    )
    .await
    .unwrap();
    let journal = JournalTable::open(catalog.clone(), &namespace, None)
        .await
        .unwrap();
    let table = journal.load().await.unwrap();
    assert_eq!(
        table.metadata().snapshots().count(),
        writers * batches,
        "one snapshot per batch"
    );
    let rows = decode(&read_all(&table).await);
    assert_eq!(rows.len(), writers * batches * per_batch, "every row once");
    let mut seqs: Vec<&str> = rows.iter().map(|r| r.sequence_number.as_str()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), writers * batches * per_batch, "no row twice");

    // Leave the shared database clean.
    catalog.drop_table(journal.ident()).await.unwrap();
    catalog
        .drop_namespace(journal.ident().namespace())
        .await
        .unwrap();
}
