//! The current-state table against the full-journal computation, on a real SQLite catalog and
//! real Parquet files: random histories written by several "writers" whose observations
//! commit out of order, refreshed incrementally between commits, compared row for row in all
//! 12 columns with the portable view over the journal; and read back by pyiceberg and by DuckDB
//! (from pyiceberg's file plan).

use std::collections::BTreeSet;
use std::process::Command;

use annotable_tests::py_tools_python;
use annotation_sql::{AnnotationsSource, QuerySession};
use annotation_table::state::StateTables;
use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, Source, StorageConfig,
};
use chrono::{TimeZone, Utc};

use super::common::TestResult;

const COLUMNS: &str = "bucket, object_key, object_version_id, object_join_key, name, \
    sequence_number, last_modified_date, size, e_tag, checksum_algorithm, replication_status, \
    text_value";

/// One random observation of a small key space, so that rows collide: the same annotation
/// put, deleted and reset many times, sequence numbers from several writers.
fn observation(rng: &mut fastrand::Rng, seq: u64) -> JournalRow {
    let bucket = if rng.bool() { "lake-a" } else { "lake-b" };
    let key = format!("dir {}/obj+{}-ü.jpg", rng.u8(0..2), rng.u8(0..4));
    let version = rng.bool().then(|| "v1".to_string());
    let record_type = match rng.u8(0..10) {
        0..=5 => RecordType::Put,
        6..=8 => RecordType::Delete,
        _ => RecordType::ObjectReset,
    };
    let put = record_type == RecordType::Put;
    let writer = rng.u8(0..3);
    let text = put.then(|| format!(r#"{{"seq":{seq},"w":{writer}}}"#));
    let now = Utc::now();
    JournalRow {
        bucket: bucket.into(),
        object_key: key.clone(),
        object_version_id: version.clone(),
        object_join_key: format!("{bucket}/{key}/{}", version.as_deref().unwrap_or("null")),
        name: (record_type != RecordType::ObjectReset).then(|| format!("name-{}", rng.u8(0..3))),
        record_type,
        sequence_number: format!("{seq:020}-w{writer}"),
        last_modified_date: put
            .then(|| {
                Utc.timestamp_opt(1_700_000_000 + seq as i64, 123_456_000)
                    .single()
                    .map(|t| t.naive_utc())
            })
            .flatten(),
        size: text.as_ref().map(|t| t.len() as i64),
        e_tag: put.then(|| format!("\"etag{seq}\"")),
        checksum_algorithm: put.then(|| "CRC64NVME".to_string()),
        replication_status: None,
        text_value: text,
        event_name: None,
        event_time: None,
        source: Source::Notification,
        requester: None,
        source_ip_address: None,
        request_id: None,
        ingested_at: now,
    }
}

async fn rows(
    session: &QuerySession,
    table: &str,
) -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
    let result = session
        .query(&format!("SELECT {COLUMNS} FROM {table}"))
        .await?;
    let mut out = BTreeSet::new();
    let options = arrow::util::display::FormatOptions::default().with_null("∅");
    for batch in &result.batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            let row: Vec<String> = formatters.iter().map(|f| f.value(i).to_string()).collect();
            assert!(
                out.insert(row.join(" | ")),
                "duplicate row in {table}: {row:?}"
            );
        }
    }
    Ok(out)
}

/// The journal, its maintainer, the state tables and a query session on an embedded catalog.
struct Embedded {
    catalog: std::sync::Arc<dyn iceberg::Catalog>,
    journal: JournalTable,
    maintainer: annotation_table::Maintainer,
    state: StateTables,
    session: QuerySession,
}

impl Embedded {
    async fn open(data: &std::path::Path) -> Result<Self, Box<dyn std::error::Error>> {
        let catalog_config = CatalogConfig::embedded(data);
        let storage = StorageConfig::default();
        let catalog = annotation_table::connect("annotable", &catalog_config, &storage).await?;
        let journal = JournalTable::open(catalog.clone(), "s3_metadata", None).await?;
        Ok(Embedded {
            catalog: catalog.clone(),
            maintainer: annotation_table::Maintainer::new(
                journal.clone(),
                &catalog_config,
                "annotable",
                &storage,
            )
            .await?,
            journal,
            state: StateTables::open(
                catalog.clone(),
                &catalog_config,
                "annotable",
                &storage,
                "s3_metadata",
                "annotations",
            )
            .await?,
            session: QuerySession::new(catalog, "test", "s3_metadata", "annotation_journal")
                .await?,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_table_equals_the_full_journal_computation_under_late_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("annotable-data");
    let Embedded {
        journal,
        state,
        session,
        catalog,
        ..
    } = Embedded::open(&data).await?;

    for seed in [7_u64, 11, 42] {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Observations are numbered in observation order, but each batch commits a random
        // slice of them: a slow writer's older observations land after newer ones.
        let mut pending: Vec<JournalRow> = Vec::new();
        let mut seq = seed * 1_000_000;
        for round in 0..12 {
            for _ in 0..rng.usize(20..60) {
                seq += 1 + rng.u64(0..3);
                pending.push(observation(&mut rng, seq));
            }
            rng.shuffle(&mut pending);
            let keep = rng.usize(0..pending.len() / 3 + 1);
            let batch: Vec<JournalRow> = pending.drain(keep..).collect();
            journal
                .append(Batch::new(Source::Notification, batch))
                .await?;
            if round % 3 != 2 {
                let report = state.refresh(&journal, false).await?;
                assert!(report.snapshot_id.is_some(), "{report:?}");
            }
            // Refreshed or not, `annotations` is the journal's current state.
            let source = session.define_annotations().await?;
            assert!(
                matches!(
                    source,
                    AnnotationsSource::State | AnnotationsSource::Overlay(_)
                ),
                "{source:?}"
            );
            assert_eq!(
                rows(&session, "annotations").await?,
                rows(&session, "annotations_from_journal").await?,
                "seed {seed} round {round}: annotations ({source:?}) differs from the journal view"
            );
        }
        journal
            .append(Batch::new(
                Source::Notification,
                std::mem::take(&mut pending),
            ))
            .await?;
        let report = state.refresh(&journal, false).await?;
        assert!(!report.rebuilt, "{report:?}");
        // 2 buckets x 8 keys: at most 16 of the 128 partitions can hold rows.
        assert!(
            (1..=16).contains(&report.partitions) && report.files_removed <= 2 * 16,
            "an incremental refresh rewrites only the partitions its rows fall in: {report:?}"
        );
        let comparison = session.compare_state(5).await?;
        assert!(comparison.is_equal(), "seed {seed}: {comparison:?}");
        assert!(comparison.state_rows > 0);
        assert_eq!(
            session.define_annotations().await?,
            AnnotationsSource::State
        );

        // A rebuild lands on the same rows.
        let before = rows(&session, "annotations_state").await?;
        let rebuilt = state.refresh(&journal, true).await?;
        assert!(rebuilt.rebuilt);
        assert_eq!(rows(&session, "annotations_state").await?, before);
    }

    // Small changes to big partitions: each refresh writes a delta file and position deletes
    // instead of the partition, and every reader below must apply them. Pages of 4 rows (the
    // tables' own setting is 1,024) make the bases many pages long, so a refresh reads only
    // some of each.
    for table in [state.state(), state.tombstones()] {
        let table = table.table().load().await?;
        let tx = iceberg::transaction::Transaction::new(&table);
        let tx = iceberg::transaction::ApplyTransactionAction::apply(
            tx.update_table_properties()
                .set("write.parquet.page-row-limit".into(), "4".into()),
            tx,
        )?;
        tx.commit(catalog.as_ref()).await?;
    }
    let mut rng = fastrand::Rng::with_seed(5);
    let mut seq = 90_000_000;
    let wide: Vec<JournalRow> = (0..OBJECTS)
        .map(|object| {
            seq += 1;
            wide_observation(&mut rng, seq, object, RecordType::Put)
        })
        .collect();
    journal
        .append(Batch::new(Source::Notification, wide))
        .await?;
    state.refresh(&journal, false).await?;
    let (mut deleted, mut deltas, mut paged_rows, mut paged_rows_read) = (0, 0, 0, 0);
    for round in 0..6 {
        let batch: Vec<JournalRow> = (0..8)
            .map(|_| {
                seq += 1;
                let kind = if rng.u8(0..4) == 0 {
                    RecordType::Delete
                } else {
                    RecordType::Put
                };
                let object = rng.usize(0..OBJECTS);
                wide_observation(&mut rng, seq, object, kind)
            })
            .collect();
        journal
            .append(Batch::new(Source::Notification, batch))
            .await?;
        let report = state.refresh(&journal, false).await?;
        deleted += report.position_deletes;
        paged_rows += report.paged_rows;
        paged_rows_read += report.paged_rows_read;
        // Each share (state, tombstones) of each partition is written whole or as a delta.
        deltas += report.partitions * 2 - report.partitions_merged;
        assert_eq!(
            rows(&session, "annotations").await?,
            rows(&session, "annotations_from_journal").await?,
            "small changes, round {round}: {report:?}"
        );
    }
    assert!(
        deleted > 0 && deltas > 0,
        "small changes to big partitions are written as deltas and position deletes"
    );
    assert!(
        paged_rows_read > 0 && paged_rows_read * 2 < paged_rows,
        "a refresh reads only the pages of its files that can hold a changed key: {paged_rows_read} of {paged_rows} rows read"
    );
    let comparison = session.compare_state(5).await?;
    assert!(comparison.is_equal(), "after deltas: {comparison:?}");
    // The deletes are applied by DataFusion's Parquet reader too (an access plan per file),
    // not only by iceberg's.
    let plan = text_of(
        &session
            .query("EXPLAIN SELECT count(*) FROM annotations_state")
            .await?,
    )?;
    assert!(plan.contains("DataSourceExec"), "{plan}");
    // A lookup by bucket and key is pruned to its partition by the Iceberg plan, with the
    // session's string columns as views (their literals too).
    let one = session
        .query("SELECT bucket, object_key FROM annotations_state ORDER BY object_key LIMIT 1")
        .await?;
    let value = |i: usize| {
        arrow::util::display::array_value_to_string(one.batches[0].column(i), 0)
            .map(|v| v.replace('\'', "''"))
    };
    let lookup_plan = text_of(
        &session
            .query(&format!(
                "EXPLAIN SELECT * FROM annotations_state WHERE bucket = '{}' AND object_key = '{}'",
                value(0)?,
                value(1)?
            ))
            .await?,
    )?;
    let files = session
        .query("SELECT count(*) AS n FROM \"annotations_state$files\" WHERE content = 0")
        .await?;
    let all_files = arrow::util::display::array_value_to_string(files.batches[0].column(0), 0)?
        .parse::<usize>()?;
    let lookup_files = lookup_plan.matches(".parquet").count();
    // A base and at most three deltas (`state::merge::MAX_DELTAS`).
    assert!(
        (1..=4).contains(&lookup_files) && lookup_files < all_files,
        "a lookup reads its partition's files ({lookup_files} of {all_files}): {lookup_plan}"
    );
    // Maintenance keeps the delete files: expiry and the orphan sweep count them as
    // referenced, compaction leaves their partitions to the refresh.
    let eager = annotation_table::MaintainOptions {
        compact: true,
        expire: true,
        orphans: true,
        snapshot_retention: std::time::Duration::ZERO,
        min_snapshots: 1,
        orphan_age: std::time::Duration::ZERO,
        ..annotation_table::MaintainOptions::default()
    };
    for maintainer in [state.state(), state.tombstones()] {
        maintainer.run(&eager).await?;
    }
    assert_eq!(
        rows(&session, "annotations").await?,
        rows(&session, "annotations_from_journal").await?,
        "after maintaining the state tables"
    );

    // pyiceberg reads the state table and gets exactly its rows.
    let out = Command::new(py_tools_python())
        .args(["-c", PYICEBERG_STATE])
        .arg(data.join("catalog.db"))
        .arg(format!("file://{}", data.join("warehouse").display()))
        .output()?;
    assert!(
        out.status.success(),
        "pyiceberg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ours = session
        .query("SELECT count(*) AS n FROM annotations_state")
        .await?;
    let n = ours.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .map(|a| a.value(0))
        .unwrap_or(-1);
    assert_eq!(read["rows"].as_i64(), Some(n), "{read}");
    let keys = session
        .query(
            "SELECT bucket, object_key, object_version_id, name, text_value FROM annotations_state",
        )
        .await?;
    let mut ours = BTreeSet::new();
    for batch in &keys.batches {
        let json = arrow_json(batch)?;
        ours.extend(json);
    }
    let theirs: BTreeSet<String> = read["keys"]
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(theirs, ours);
    let duckdb: Vec<String> = read["duckdb_keys"]
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(
        duckdb.len(),
        ours.len(),
        "DuckDB reads as many rows as annotable"
    );
    assert_eq!(
        duckdb.into_iter().collect::<BTreeSet<_>>(),
        ours,
        "DuckDB on pyiceberg's file plan"
    );
    assert!(
        read["delete_files"].as_i64().unwrap_or(0) > 0,
        "the plan had position deletes to apply: {read}"
    );
    assert!(
        read["lookup_files"].as_i64().unwrap_or(99) <= 4,
        "a lookup by bucket and key plans one partition: its base and at most three deltas: {read}"
    );
    Ok(())
}

/// Every value of a query result, column by column, one per line (an `EXPLAIN`'s plan).
fn text_of(result: &annotation_sql::QueryResult) -> Result<String, arrow::error::ArrowError> {
    let mut text = String::new();
    for batch in &result.batches {
        for column in batch.columns() {
            for i in 0..batch.num_rows() {
                text.push_str(&arrow::util::display::array_value_to_string(column, i)?);
                text.push('\n');
            }
        }
    }
    Ok(text)
}

fn arrow_json(
    batch: &arrow::record_batch::RecordBatch,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    // Query results carry strings as views; read them as plain strings.
    let column = |i: usize| {
        arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8)
            .ok()
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .cloned()
            })
    };
    let cols: Vec<_> = (0..5)
        .map(column)
        .collect::<Option<Vec<_>>>()
        .ok_or("not strings")?;
    for i in 0..batch.num_rows() {
        let value = |c: usize| {
            use arrow::array::Array;
            (!cols[c].is_null(i)).then(|| cols[c].value(i).to_string())
        };
        out.push(serde_json::json!([value(0), value(1), value(2), value(3), value(4)]).to_string());
    }
    Ok(out)
}

/// Objects in the bucket of small changes: about 47 per hash partition, so a change to one
/// is a small share of its partition (a refresh folds whole object versions again).
const OBJECTS: usize = 3000;

/// An observation of one of [`OBJECTS`] objects (two names each).
fn wide_observation(
    rng: &mut fastrand::Rng,
    seq: u64,
    object: usize,
    record_type: RecordType,
) -> JournalRow {
    let mut row = observation(rng, seq);
    let key = format!("wide/{object}");
    row.bucket = "lake-w".into();
    row.object_join_key = format!("lake-w/{key}/null");
    row.object_key = key;
    row.object_version_id = None;
    row.name = Some(format!("n{}", rng.u8(0..2)));
    if record_type == RecordType::Delete {
        for field in [
            &mut row.text_value,
            &mut row.e_tag,
            &mut row.checksum_algorithm,
        ] {
            *field = None;
        }
        row.size = None;
        row.last_modified_date = None;
    } else if row.record_type != RecordType::Put {
        let text = format!(r#"{{"seq":{seq}}}"#);
        row.size = Some(text.len() as i64);
        row.text_value = Some(text);
        row.e_tag = Some(format!("\"etag{seq}\""));
        row.checksum_algorithm = Some("CRC64NVME".into());
        row.last_modified_date = Utc
            .timestamp_opt(1_700_000_000 + seq as i64, 0)
            .single()
            .map(|t| t.naive_utc());
    }
    row.record_type = record_type;
    row
}

/// pyiceberg opens `s3_metadata.annotations`, prints its row count, every row's identity and
/// payload, and how many files a lookup of one object plans. DuckDB reads the data files of
/// pyiceberg's plan and applies its position deletes itself.
const PYICEBERG_STATE: &str = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import And, EqualTo
db, warehouse = sys.argv[1], sys.argv[2]
catalog = SqlCatalog("annotable", uri=f"sqlite:///{db}", warehouse=warehouse)
table = catalog.load_table("s3_metadata.annotations")
rows = table.scan().to_arrow().to_pylist()
first = rows[0]
lookup = table.scan(row_filter=And(EqualTo("bucket", first["bucket"]), EqualTo("object_key", first["object_key"])))
# DuckDB reads the data files of pyiceberg's plan and drops the rows its deletes name.
import duckdb
tasks = list(table.scan().plan_files())
files = [t.file.file_path.removeprefix("file://") for t in tasks]
deletes = sorted({d.file_path.removeprefix("file://") for t in tasks for d in t.delete_files})
query = f"SELECT bucket, object_key, object_version_id, name, text_value FROM read_parquet({files!r}, filename=true, file_row_number=true) AS d"
if deletes:
    query += f" WHERE NOT EXISTS (SELECT 1 FROM read_parquet({deletes!r}) AS x WHERE replace(x.file_path, 'file://', '') = d.filename AND x.pos = d.file_row_number)"
duck = duckdb.sql(query).fetchall()
print(json.dumps({
    "rows": len(rows),
    "keys": [[r["bucket"], r["object_key"], r["object_version_id"], r["name"], r["text_value"]] for r in rows],
    "duckdb_keys": [list(r) for r in duck],
    "lookup_files": len(list(lookup.plan_files())),
    "delete_files": len(deletes),
}))
"#;

/// Two writers append to the journal at once on a PostgreSQL catalog while two refreshers race
/// each other without a lease: the catalog's compare-and-swap alone must keep every refresh
/// either landed whole or not at all, and the state exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_two_writers_and_two_racing_refreshers_keep_the_state_exact() -> TestResult {
    let dir = tempfile::tempdir()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)?
        .as_nanos();
    let namespace = format!("state_{}_{nanos}", std::process::id());
    let catalog_config = CatalogConfig::Sql {
        uri: "postgres://postgres@127.0.0.1:5432/test".into(),
        warehouse: format!("file://{}", dir.path().join("warehouse").display()),
    };
    let storage = StorageConfig::default();
    let catalog = annotation_table::connect("annotable", &catalog_config, &storage).await?;
    let journal = JournalTable::open(catalog.clone(), &namespace, None).await?;
    let open_state = || {
        StateTables::open(
            catalog.clone(),
            &catalog_config,
            "annotable",
            &storage,
            &namespace,
            "annotations",
        )
    };
    let (first, second) = (open_state().await?, open_state().await?);

    let writer = |seed: u64, journal: JournalTable| async move {
        let mut rng = fastrand::Rng::with_seed(seed);
        for round in 0..15_u64 {
            let rows: Vec<JournalRow> = (0..rng.u64(10..40))
                .map(|i| observation(&mut rng, seed * 1_000_000 + round * 1_000 + i))
                .collect();
            journal
                .append(Batch::new(Source::Notification, rows))
                .await?;
        }
        Ok::<(), annotation_table::TableError>(())
    };
    let (a, b, (landed_1, _), (landed_2, _)) = tokio::join!(
        writer(1, journal.clone()),
        writer(2, journal.clone()),
        racing_refresher(&first, &journal),
        racing_refresher(&second, &journal),
    );
    a?;
    b?;
    assert!(landed_1 + landed_2 > 0, "some refresh landed");
    first.refresh(&journal, false).await?;

    let session =
        QuerySession::new(catalog.clone(), "test", &namespace, "annotation_journal").await?;
    let comparison = session.compare_state(5).await?;
    assert!(comparison.is_equal(), "{comparison:?}");
    assert!(comparison.state_rows > 0);
    assert_eq!(
        rows(&session, "annotations").await?,
        rows(&session, "annotations_from_journal").await?
    );
    Ok(())
}

/// Refreshes 12 times, 30 ms apart; counts the refreshes that landed and those refused
/// because another refresher committed first (nothing of those landed).
async fn racing_refresher(state: &StateTables, journal: &JournalTable) -> (usize, usize) {
    let (mut landed, mut refused) = (0, 0);
    for _ in 0..12 {
        match state.refresh(journal, false).await {
            Ok(report) if report.snapshot_id.is_some() => landed += 1,
            Ok(_) => {}
            Err(_) => refused += 1,
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    (landed, refused)
}

/// `n` in `SELECT count(*) AS n ...`.
async fn count(session: &QuerySession, sql: &str) -> Result<i64, Box<dyn std::error::Error>> {
    let result = session.query(sql).await?;
    Ok(result
        .batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(-1))
}

/// `n` random observations ingested at `at`.
fn ingested(
    rng: &mut fastrand::Rng,
    seq: &mut u64,
    n: usize,
    at: chrono::DateTime<Utc>,
) -> Vec<JournalRow> {
    (0..n)
        .map(|_| {
            *seq += 1 + rng.u64(0..3);
            let mut row = observation(rng, *seq);
            row.ingested_at = at;
            row
        })
        .collect()
}

/// `n` random observations ingested `days` days ago.
fn aged(rng: &mut fastrand::Rng, seq: &mut u64, n: usize, days: i64) -> Vec<JournalRow> {
    ingested(rng, seq, n, Utc::now() - chrono::Duration::days(days))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_retention_drops_only_folded_rows_and_the_state_stays_exact() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Embedded {
        journal,
        maintainer,
        state,
        session,
        ..
    } = Embedded::open(&dir.path().join("annotable-data")).await?;
    let mut rng = fastrand::Rng::with_seed(2026);
    let mut seq = 0;

    // A year-old annotation nobody touched since: after retention only the state knows it.
    let mut lone = observation(&mut rng, 1);
    lone.bucket = "lake-c".into();
    lone.object_key = "untouched.txt".into();
    lone.object_join_key = "lake-c/untouched.txt/null".into();
    lone.record_type = RecordType::Put;
    lone.name = Some("owner".into());
    lone.text_value = Some("\"ops\"".into());
    lone.size = Some(5);
    lone.e_tag = Some("\"lone\"".into());
    lone.last_modified_date = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .map(|t| t.naive_utc());
    lone.ingested_at = Utc::now() - chrono::Duration::days(365);
    seq += 10;
    journal
        .append(Batch::new(Source::Backfill, vec![lone]))
        .await?;
    // Old history in several commits (one straddles the cut), all folded in by a refresh.
    for days in [60, 45, 40] {
        let rows = aged(&mut rng, &mut seq, 80, days);
        journal
            .append(Batch::new(Source::Notification, rows))
            .await?;
    }
    // Noon 30 days ago: the journal is partitioned by day, so rows an hour either side of
    // the cut share files, which retention must rewrite rather than drop.
    let cut = (Utc::now() - chrono::Duration::days(30))
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .map(|t| t.and_utc())
        .ok_or("noon")?;
    let hour = chrono::Duration::hours(1);
    let mut straddling = ingested(&mut rng, &mut seq, 40, cut - hour);
    straddling.extend(ingested(&mut rng, &mut seq, 40, cut + hour));
    journal
        .append(Batch::new(Source::Notification, straddling))
        .await?;
    state.refresh(&journal, false).await?;
    // After the refresh: new rows, and a late commit of rows ingested long ago, which the
    // state has not folded in and which must therefore stay.
    journal
        .append(Batch::new(
            Source::Notification,
            aged(&mut rng, &mut seq, 50, 0),
        ))
        .await?;
    let late = aged(&mut rng, &mut seq, 30, 50);
    journal
        .append(Batch::new(Source::Notification, late))
        .await?;

    let cut_sql = format!("TIMESTAMP '{}'", cut.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    let before = rows(&session, "annotations").await?;
    assert_eq!(before, rows(&session, "annotations_from_journal").await?);
    let state_before = rows(&session, "annotations_state").await?;
    let old_rows = count(
        &session,
        &format!("SELECT count(*) AS n FROM annotation_journal WHERE ingested_at < {cut_sql}"),
    )
    .await?;

    // A dry run changes nothing.
    let dry = state
        .trim_journal(&maintainer, cut.timestamp_millis(), true)
        .await?;
    assert_eq!(dry.rows_dropped, 1 + 3 * 80 + 40, "{dry:?}");
    assert!(dry.snapshot_id.is_none());
    let report = state
        .trim_journal(&maintainer, cut.timestamp_millis(), false)
        .await?;
    assert_eq!(report.rows_dropped, 1 + 3 * 80 + 40, "{report:?}");
    assert!(
        report.files_rewritten >= 1 && report.files_waiting >= 1,
        "the straddling commit's files are rewritten, the late one's wait: {report:?}"
    );
    assert!(report.base.is_some() && report.snapshot_id.is_some());
    assert_eq!(
        count(
            &session,
            &format!("SELECT count(*) AS n FROM annotation_journal WHERE ingested_at < {cut_sql}"),
        )
        .await?,
        old_rows - i64::try_from(report.rows_dropped)?,
        "only the late commit's old rows are left"
    );
    assert_eq!(
        session.journal_retained_since().await?,
        Some(cut.timestamp_millis())
    );

    // The journal alone has lost the lone annotation; annotations has not.
    let lone_sql = "SELECT count(*) AS n FROM {} WHERE bucket = 'lake-c'";
    assert_eq!(
        count(
            &session,
            &lone_sql.replace("{}", "annotations_from_journal")
        )
        .await?,
        0
    );
    assert_eq!(rows(&session, "annotations_state").await?, state_before);
    assert_eq!(rows(&session, "annotations").await?, before);

    // Refreshing folds the rows after the watermark; the full computation is now the
    // retention base with the journal folded onto it, and the state equals it.
    let refreshed = state.refresh(&journal, false).await?;
    assert!(!refreshed.rebuilt, "{refreshed:?}");
    let comparison = session.compare_state(5).await?;
    assert!(comparison.is_equal(), "{comparison:?}");
    assert_eq!(comparison.base, report.base);
    assert_eq!(rows(&session, "annotations").await?, before);
    assert_eq!(
        count(&session, &lone_sql.replace("{}", "annotations")).await?,
        1
    );

    // More history, a second retention run (the base moves on), random late commits.
    for round in 0..6 {
        let rows_now = aged(&mut rng, &mut seq, 60, if round % 2 == 0 { 31 } else { 0 });
        journal
            .append(Batch::new(Source::Notification, rows_now))
            .await?;
        if round % 2 == 1 {
            state.refresh(&journal, false).await?;
        }
    }
    let second = state
        .trim_journal(&maintainer, cut.timestamp_millis(), false)
        .await?;
    assert!(second.rows_dropped > 0, "{second:?}");
    assert_ne!(
        second.base, report.base,
        "the base moved with the second run"
    );
    let expected = rows(&session, "annotations").await?;
    state.refresh(&journal, false).await?;
    let comparison = session.compare_state(5).await?;
    assert!(comparison.is_equal(), "{comparison:?}");
    assert_eq!(rows(&session, "annotations_state").await?, expected);

    // A rebuild starts from the base, not from the journal alone, and lands on the same rows.
    let rebuilt = state.refresh(&journal, true).await?;
    assert!(
        rebuilt.rebuilt && rebuilt.base == second.base,
        "{rebuilt:?}"
    );
    assert_eq!(rows(&session, "annotations_state").await?, expected);
    assert!(session.compare_state(5).await?.is_equal());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_bigger_than_its_budget_runs_in_passes_and_lands_on_the_same_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Embedded {
        journal,
        state,
        session,
        ..
    } = Embedded::open(&dir.path().join("annotable-data")).await?;
    let mut rng = fastrand::Rng::with_seed(5);
    let mut seq = 0;
    let mut append = async |commits: usize, rng: &mut fastrand::Rng| -> TestResult {
        for _ in 0..commits {
            let rows = aged(rng, &mut seq, 150, 0);
            journal
                .append(Batch::new(Source::Notification, rows))
                .await?;
        }
        Ok(())
    };
    append(6, &mut rng).await?;

    // A budget smaller than one file: a pass decodes files whole, so nothing is attempted.
    let first = state.refresh_within(&journal, false, Some(512)).await?;
    assert!(
        first.deferred.is_some() && first.snapshot_id.is_none(),
        "{first:?}"
    );

    // 64 KiB: every file fits, all of them together do not: one refresh, in passes.
    let second = state
        .refresh_within(&journal, false, Some(64 * 1024))
        .await?;
    assert!(
        second.passes > 1 && second.journal_snapshots == 6 && second.deferred.is_none(),
        "{second:?}"
    );
    assert!(session.compare_state(5).await?.is_equal());
    append(3, &mut rng).await?;
    let third = state
        .refresh_within(&journal, false, Some(64 * 1024))
        .await?;
    assert!(
        third.deferred.is_none() && third.snapshot_id.is_some(),
        "{third:?}"
    );
    assert!(session.compare_state(5).await?.is_equal());
    let expected = rows(&session, "annotations_state").await?;
    assert_eq!(expected, rows(&session, "annotations_from_journal").await?);

    // A rebuild in passes lands on the same rows; one no split can fit changes nothing.
    let rebuilt = state
        .refresh_within(&journal, true, Some(64 * 1024))
        .await?;
    assert!(rebuilt.rebuilt && rebuilt.passes > 1, "{rebuilt:?}");
    assert_eq!(rows(&session, "annotations_state").await?, expected);
    let tiny = state.refresh_within(&journal, true, Some(1)).await?;
    assert!(
        tiny.deferred.is_some() && tiny.snapshot_id.is_none(),
        "{tiny:?}"
    );
    assert_eq!(rows(&session, "annotations_state").await?, expected);
    assert!(session.compare_state(5).await?.is_equal());
    Ok(())
}
