//! Table maintenance against a real SQLite catalog and real Parquet files: compaction keeps
//! every row (journal and view compared row for row, and pyiceberg reads the result), stays
//! correct while another writer commits, and expiry and the orphan sweep delete only what no
//! snapshot references.

use super::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use annotation_sql::{OutputFormat, QuerySession, write_result};
use annotation_table::{
    Batch, Catalog, CatalogConfig, JournalRow, JournalTable, MaintainOptions, Maintainer, Source,
    StorageConfig, connect,
};
use chrono::Utc;
use common::{TestResult, as_pyiceberg_rows, pyiceberg_rows, read_with_pyiceberg, rows_from};

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    warehouse: String,
    namespace: String,
    config: CatalogConfig,
    catalog: Arc<dyn Catalog>,
    table: JournalTable,
}

/// The PostgreSQL every machine of this kind runs (trust auth, database `test`).
const PG_URI: &str = "postgres://postgres@127.0.0.1:5432/test";

impl Fixture {
    /// A SQLite catalog in a temporary folder.
    async fn new() -> Result<Fixture, Box<dyn std::error::Error>> {
        Self::with(None).await
    }

    /// A PostgreSQL catalog (`pg_uri`), in a namespace of its own.
    async fn with(pg_uri: Option<&str>) -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("catalog.db");
        let warehouse = format!("file://{}", dir.path().join("warehouse").display());
        let (uri, namespace) = match pg_uri {
            Some(uri) => {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)?
                    .as_nanos();
                (
                    uri.to_string(),
                    format!("maintain_{}_{nanos}", std::process::id()),
                )
            }
            None => (
                format!("sqlite:{}", db.display()),
                "s3_metadata".to_string(),
            ),
        };
        let config = CatalogConfig::Sql {
            uri,
            warehouse: warehouse.clone(),
        };
        let catalog = connect("annotable", &config, &StorageConfig::default()).await?;
        let table = JournalTable::open(catalog.clone(), &namespace, None).await?;
        Ok(Fixture {
            _dir: dir,
            db,
            warehouse,
            namespace,
            config,
            catalog,
            table,
        })
    }

    async fn session(&self) -> Result<QuerySession, Box<dyn std::error::Error>> {
        Ok(QuerySession::new(
            self.catalog.clone(),
            "annotable",
            &self.namespace,
            "annotation_journal",
        )
        .await?)
    }

    async fn maintainer(&self) -> Result<Maintainer, Box<dyn std::error::Error>> {
        Ok(Maintainer::new(
            self.table.clone(),
            &self.config,
            "annotable",
            &StorageConfig::default(),
        )
        .await?)
    }

    /// `commits` commits of `per_commit` rows each; returns every row written.
    async fn commits(
        &self,
        start: usize,
        commits: usize,
        per_commit: usize,
    ) -> Result<Vec<JournalRow>, Box<dyn std::error::Error>> {
        let at = Utc::now();
        let mut all = Vec::new();
        for c in 0..commits {
            let rows = rows_from(start + c * per_commit, per_commit, at);
            all.extend(rows.iter().cloned());
            self.table
                .append(Batch::new(Source::Notification, rows))
                .await?;
        }
        Ok(all)
    }

    /// The journal and the `annotations` view, every row as NDJSON in a fixed order.
    async fn contents(&self) -> Result<(String, String), Box<dyn std::error::Error>> {
        let session = self.session().await?;
        let mut out = Vec::new();
        for sql in [
            "SELECT * FROM annotation_journal ORDER BY request_id",
            "SELECT * FROM annotations ORDER BY bucket, object_key, object_version_id, name",
        ] {
            let result = session.query(sql).await?;
            let mut text = Vec::new();
            write_result(
                OutputFormat::Ndjson,
                &result.schema,
                &result.batches,
                &mut text,
            )?;
            out.push(String::from_utf8(text)?);
        }
        let view = out.pop().unwrap_or_default();
        let journal = out.pop().unwrap_or_default();
        Ok((journal, view))
    }

    fn table_dir(&self) -> PathBuf {
        PathBuf::from(self.warehouse.trim_start_matches("file://"))
            .join("s3_metadata")
            .join("annotation_journal")
    }
}

/// Retention 0 and one kept snapshot: every step has something to do right away.
fn eager() -> MaintainOptions {
    MaintainOptions {
        snapshot_retention: Duration::ZERO,
        min_snapshots: 1,
        orphan_age: Duration::from_secs(3600),
        ..MaintainOptions::default()
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_commits_compact_to_one_file_per_partition_with_the_same_rows() -> TestResult {
    let f = Fixture::new().await?;
    let written = f.commits(0, 500, 4).await?;
    let (journal_before, view_before) = f.contents().await?;
    let maintainer = f.maintainer().await?;
    let before = maintainer.stats().await?;
    assert_eq!(
        before.data_files,
        500 * 2,
        "two buckets, so two files a commit"
    );
    assert_eq!(before.manifests, 500);

    let report = maintainer.run(&eager()).await?;
    let compaction = report.compaction.clone().ok_or("no compaction report")?;
    assert_eq!(compaction.files_rewritten, 1000);
    assert_eq!(compaction.attempts, 1);
    let after = maintainer.stats().await?;
    // One partition per bucket (all rows were ingested the same day), well under the target.
    assert!(after.data_files <= 2, "{after:?}");
    assert_eq!(after.manifests, 1);
    assert_eq!(after.rows, 2000);
    assert_eq!(
        after.snapshots, 1,
        "retention 0 keeps only the current snapshot"
    );
    let expiry = report.expiry.clone().ok_or("no expiry report")?;
    // The 500 appends, then the compaction snapshot once its DELETED entries were dropped.
    assert_eq!(expiry.snapshots_expired, 501);
    assert!(expiry.files_deleted >= 1000, "{expiry:?}");

    let (journal_after, view_after) = f.contents().await?;
    assert_eq!(journal_after.lines().count(), 2000);
    assert!(journal_after == journal_before, "the journal changed");
    assert!(view_after == view_before, "the annotations view changed");

    // Only the live files are left in data/.
    let data_files = files_under(&f.table_dir().join("data"));
    assert_eq!(data_files.len(), after.data_files, "{data_files:?}");

    // Another engine reads the compacted table and sees the same rows.
    let read = read_with_pyiceberg(&f.db, &f.warehouse)?;
    assert_eq!(pyiceberg_rows(&read), as_pyiceberg_rows(&written));
    assert_eq!(read["snapshots"], 1);

    // Nothing left to do the second time.
    let again = maintainer.run(&eager()).await?;
    let c = again.compaction.ok_or("no compaction report")?;
    assert_eq!((c.files_rewritten, c.manifests_merged), (0, 0));
    assert_eq!(c.snapshot_id, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_a_committing_writer_loses_and_doubles_nothing() -> TestResult {
    compaction_beside_a_writer(Fixture::new().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_compaction_beside_a_writer_and_the_lease_work_too() -> TestResult {
    let f = Fixture::with(Some(PG_URI)).await?;
    // The lease row is a compare-and-swap register: of two writers of the same version, one
    // wins; a write naming a version that is gone fails.
    let (a, b) = (f.maintainer().await?, f.maintainer().await?);
    assert_eq!(a.lease().await?, None);
    assert!(a.swap_lease("a", 1_000, None).await?);
    assert!(!b.swap_lease("b", 2_000, None).await?, "the row exists");
    assert_eq!(b.lease().await?, Some(("a".to_string(), 1_000)));
    assert!(
        !b.swap_lease("b", 2_000, Some(("a", 999))).await?,
        "stale expiry"
    );
    assert!(b.swap_lease("b", 2_000, Some(("a", 1_000))).await?);
    assert!(
        !a.swap_lease("a", 3_000, Some(("a", 1_000))).await?,
        "a lost it"
    );
    assert_eq!(a.lease().await?, Some(("b".to_string(), 2_000)));
    assert!(b.swap_lease("b", 0, Some(("b", 2_000))).await?);
    compaction_beside_a_writer(f).await
}

async fn compaction_beside_a_writer(f: Fixture) -> TestResult {
    let mut expected = f.commits(0, 40, 5).await?.len();
    // The writer commits until three compactions have landed beside it (or 600 commits).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (table, stop) = (f.table.clone(), stop.clone());
        tokio::spawn(async move {
            let at = Utc::now();
            let mut commits = 0;
            while commits < 600 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = rows_from(10_000 + commits * 5, 5, at);
                table.append(Batch::new(Source::Notification, rows)).await?;
                commits += 1;
            }
            Ok::<_, annotation_table::TableError>(commits)
        })
    };
    let maintainer = f.maintainer().await?;
    let options = MaintainOptions {
        expire: false,
        orphans: false,
        ..eager()
    };
    let mut committed = 0;
    let mut rebuilt = 0;
    while !writer.is_finished() {
        let report = maintainer.run(&options).await?;
        if let Some(c) = report.compaction
            && c.snapshot_id.is_some()
        {
            committed += 1;
            rebuilt += c.attempts - 1;
        }
        if committed >= 3 {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expected += writer.await?? * 5;
    assert!(committed >= 3, "only {committed} compactions committed");
    // One more, now that the writer is done.
    maintainer.run(&options).await?;
    let session = f.session().await?;
    let result = session
        .query("SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM annotation_journal")
        .await?;
    let mut text = Vec::new();
    write_result(
        OutputFormat::Json,
        &result.schema,
        &result.batches,
        &mut text,
    )?;
    let counts: serde_json::Value = serde_json::from_slice(&text)?;
    assert_eq!(
        counts,
        serde_json::json!([{"n": expected, "d": expected}]),
        "compactions: {committed}, rebuilt after a conflict: {rebuilt}"
    );
    let after = maintainer.stats().await?;
    assert!(after.data_files <= 2, "{after:?}");
    Ok(())
}

fn plant(path: &Path, age: Duration) -> TestResult {
    std::fs::write(path, b"not referenced by any snapshot")?;
    let file = std::fs::File::options().write(true).open(path)?;
    file.set_modified(SystemTime::now() - age)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_the_orphan_sweep_delete_only_unreferenced_files() -> TestResult {
    let f = Fixture::new().await?;
    f.commits(0, 30, 10).await?;
    let (journal_before, view_before) = f.contents().await?;
    let data = f.table_dir().join("data");
    let metadata = f.table_dir().join("metadata");
    let old_data = data.join("orphan-old.parquet");
    let young_data = data.join("orphan-young.parquet");
    let old_meta = metadata.join("orphan-old-m0.avro");
    plant(&old_data, Duration::from_secs(2 * 86_400))?;
    plant(&young_data, Duration::from_secs(60))?;
    plant(&old_meta, Duration::from_secs(2 * 86_400))?;

    let maintainer = f.maintainer().await?;
    // A dry run changes nothing but says what it would do.
    let dry = maintainer
        .run(&MaintainOptions {
            dry_run: true,
            ..eager()
        })
        .await?;
    assert_eq!(dry.orphans.as_ref().map(|o| o.deleted), Some(2));
    assert!(old_data.exists() && old_meta.exists());
    assert_eq!(maintainer.stats().await?.snapshots, 30);

    let report = maintainer.run(&eager()).await?;
    let orphans = report.orphans.ok_or("no orphan report")?;
    assert_eq!(orphans.deleted, 2, "{orphans:?}");
    assert_eq!(orphans.kept_young, 1, "{orphans:?}");
    assert!(!old_data.exists() && !old_meta.exists());
    assert!(
        young_data.exists(),
        "a young unreferenced file must be kept"
    );

    // The table reads the same, by us and by pyiceberg (which opens every live file).
    let (journal_after, view_after) = f.contents().await?;
    assert!(journal_after == journal_before && view_after == view_before);
    let read = read_with_pyiceberg(&f.db, &f.warehouse)?;
    assert_eq!(pyiceberg_rows(&read).len(), 300);

    // Every data file left is live, except the young orphan.
    let stats = maintainer.stats().await?;
    assert_eq!(files_under(&data).len(), stats.data_files + 1);
    // Metadata files: the current one and its log, one manifest list and one manifest.
    let metadata_files = files_under(&metadata);
    let avro = metadata_files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "avro"))
        .count();
    assert_eq!(avro, 2, "{metadata_files:?}");

    // With a safety age of zero, the young orphan goes too; the table is untouched.
    maintainer
        .run(&MaintainOptions {
            orphan_age: Duration::ZERO,
            ..eager()
        })
        .await?;
    assert!(!young_data.exists());
    assert_eq!(maintainer.stats().await?, stats);
    Ok(())
}

/// Issue 19, item 10: a table whose location lies inside the journal's would have its live
/// files swept as the journal's orphans; the sweep refuses, and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_refuses_a_location_another_table_shares() -> TestResult {
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
    use iceberg::{NamespaceIdent, TableCreation};
    let f = Fixture::new().await?;
    f.commits(0, 3, 10).await?;
    let nested = f.table_dir().join("data").join("intruder");
    let schema = Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
        ])
        .build()?;
    f.catalog
        .create_table(
            &NamespaceIdent::new(f.namespace.clone()),
            TableCreation::builder()
                .name("intruder".into())
                .location(format!("file://{}", nested.display()))
                .schema(schema)
                .build(),
        )
        .await?;
    let old = f.table_dir().join("data").join("orphan-old.parquet");
    plant(&old, Duration::from_secs(2 * 86_400))?;
    let before = files_under(&nested);
    assert!(
        !before.is_empty(),
        "the intruder's metadata is under the journal's location"
    );
    let Err(err) = f.maintainer().await?.run(&eager()).await else {
        return Err("the sweep ran over another table's location".into());
    };
    let text = err.to_string();
    assert!(
        text.contains("intruder") && text.contains("overlaps"),
        "{text}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        files_under(&nested),
        before,
        "the other table's files are untouched"
    );
    assert!(old.exists(), "nothing is swept when the location is shared");
    Ok(())
}
