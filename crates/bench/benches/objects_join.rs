//! Objects joined with annotations: `ANNOTABLE_BENCH_OBJECTS` (5,000,000) object versions in
//! `object_journal` beside the `ANNOTABLE_BENCH_ROWS` (5,000,000) rows of the realistic
//! annotation journal (1,000,000 annotated object versions, every one of them among the
//! objects), and the example joins of `queries/objects/` answered by annotable (the `objects`
//! and `annotations` views over the journals, in process) and by DuckDB over the same Parquet
//! files with the same view definitions (`queries/views/*.sql`), in the same run. Each
//! engine's answer is checked first, digit for digit; then the first run and the best of 3
//! warm runs of each statement (DuckDB's import and file opening left out, annotable's session
//! opening too).
//!
//! `cargo bench -p annotable-bench --bench objects_join`; the journals are kept under the
//! target dir and reused.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use annotable_bench::{
    Rng, bench_dir, buckets, build_journal, env_usize, peak_rss_mib, py_tools_python, secs,
};
use annotation_sql::QuerySession;
use annotation_table::{
    Batch, CatalogConfig, JournalTable, ObjectRecordType, ObjectRow, Source, StorageConfig,
    connect, table_ident,
};
use chrono::{Duration, Utc};
use futures::TryStreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WARM_RUNS: usize = 3;
const STORAGE_CLASSES: [&str; 3] = ["STANDARD", "STANDARD_IA", "GLACIER_IR"];

/// `(label, SQL)`: the same text for both engines.
const QUERIES: [(&str, &str); 3] = [
    (
        "largest_unannotated_objects",
        include_str!("../../../queries/objects/largest_unannotated_objects.sql"),
    ),
    (
        "annotation_coverage_by_prefix",
        include_str!("../../../queries/objects/annotation_coverage_by_prefix.sql"),
    ),
    (
        "bytes by annotation name",
        "SELECT a.name, count(*) AS versions, sum(o.size) AS bytes FROM annotations a \
         JOIN objects o ON o.object_join_key = a.object_join_key GROUP BY a.name ORDER BY a.name",
    ),
];

const DUCKDB: &str = r#"
import json, sys, time
import duckdb
annotation_files, object_files = json.loads(sys.argv[1]), json.loads(sys.argv[2])
views, query, warm_runs = json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute(f"CREATE VIEW annotation_journal AS SELECT * FROM read_parquet({annotation_files!r})")
con.execute(f"CREATE VIEW object_journal AS SELECT * FROM read_parquet({object_files!r})")
for view in views:
    con.execute(view)
start = time.perf_counter()
rows = con.execute(query).fetchall()
first = time.perf_counter() - start
warm = []
for _ in range(warm_runs):
    start = time.perf_counter()
    con.execute(query).fetchall()
    warm.append(time.perf_counter() - start)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"first": first, "warm": min(warm), "rows": [[None if v is None else str(v) for v in r] for r in rows], "peak_mib": peak}))
"#;

/// The object versions: ids below `annotated` are the objects of the realistic annotation rows
/// (same bucket, key and version, so the same join key); the rest carry no annotation. One in
/// fifty is a delete marker.
fn object_rows(range: std::ops::Range<usize>, annotated: u64) -> Vec<ObjectRow> {
    let buckets = buckets();
    let at = Utc::now() - Duration::hours(3);
    range
        .map(|i| {
            let object = i as u64;
            let mut rng = Rng::new(object.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let bucket = format!("media-archive-{}", object % buckets);
            let key = format!(
                "tenant-{:04}/uploads/2026/{:02}/{:02}/images/IMG_{:012}_original.jpeg",
                object % 1000,
                1 + object % 12,
                1 + object % 28,
                object
            );
            let version = object
                .is_multiple_of(2)
                .then(|| format!("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIb{:06}", object % 1_000_000));
            let marker = object >= annotated && rng.below(50) == 0;
            let size = (!marker).then(|| rng.below(5 << 30) as i64);
            ObjectRow {
                object_join_key: format!("{bucket}/{key}/{}", version.as_deref().unwrap_or("null")),
                bucket,
                key,
                version_id: version,
                record_type: ObjectRecordType::Put,
                sequence_number: format!("{:020}-{:04}", 1_700_000_000_000_000_000u64 + object, 2),
                is_delete_marker: Some(marker),
                size,
                last_modified_date: Some((at + Duration::milliseconds(i as i64)).naive_utc()),
                e_tag: size.map(|s| format!("{:032x}", s as u128 * 0x9e37_79b9_7f4a_7c15)),
                storage_class: size.map(|_| STORAGE_CLASSES[rng.below(3) as usize].to_string()),
                checksum_algorithm: size.map(|_| "CRC64NVME".to_string()),
                event_name: None,
                event_time: None,
                source: Source::Backfill,
                requester: None,
                source_ip_address: None,
                request_id: None,
                ingested_at: at,
            }
        })
        .collect()
}

async fn build_objects(dir: &Path, n: usize, annotated: u64) -> Result<()> {
    let marker = dir.join(".objects-complete");
    let stamp = format!("{n} objects over {annotated} annotated");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await?;
    let ident = table_ident("s3_metadata", "object_journal").ok_or("ident")?;
    if catalog.table_exists(&ident).await? {
        catalog.drop_table(&ident).await?;
    }
    let journal = JournalTable::open_objects(catalog, "s3_metadata", None).await?;
    let start = Instant::now();
    let mut offset = 0;
    while offset < n {
        let end = (offset + 500_000).min(n);
        journal
            .append(Batch::new(
                Source::Backfill,
                object_rows(offset..end, annotated),
            ))
            .await?;
        offset = end;
    }
    println!(
        "  built the {n}-version object journal in {:.1} s",
        secs(start)
    );
    std::fs::write(marker, stamp)?;
    Ok(())
}

/// Every data file of `table`'s current snapshot.
async fn files(session_dir: &Path, table: &str) -> Result<Vec<String>> {
    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(session_dir),
        &StorageConfig::default(),
    )
    .await?;
    let ident = table_ident("s3_metadata", table).ok_or("ident")?;
    let loaded = catalog.load_table(&ident).await?;
    let tasks: Vec<_> = loaded
        .scan()
        .build()?
        .plan_files()
        .await?
        .try_collect()
        .await?;
    Ok(tasks
        .iter()
        .map(|t| t.data_file_path.trim_start_matches("file://").to_string())
        .collect())
}

fn canonical(value: &str) -> String {
    // Both engines print timestamps, decimals and floats their own way: `2026-12-06T20:55:16`
    // against `2026-12-06 20:55:16`, numbers compared as numbers.
    let bytes = value.as_bytes();
    if bytes.len() >= 19 && bytes[4] == b'-' && bytes[10] == b'T' {
        return value.replacen('T', " ", 1);
    }
    match value.parse::<f64>() {
        Ok(n) if value.contains('.') => format!("{n:.1}"),
        _ => value.to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rows = env_usize("ANNOTABLE_BENCH_ROWS", 5_000_000);
    let objects = env_usize("ANNOTABLE_BENCH_OBJECTS", 5_000_000);
    let dir = bench_dir(&format!("objects-join-{rows}-{objects}"));
    println!("objects_join: {objects} object versions x {rows} annotation journal rows");
    build_journal(&dir, rows).await?;
    // realistic_rows: n / 5 objects.
    let annotated = (rows / 5).max(1) as u64;
    assert!(
        objects as u64 >= annotated,
        "fewer objects than annotated objects"
    );
    build_objects(&dir, objects, annotated).await?;

    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(&dir),
        &StorageConfig::default(),
    )
    .await?;
    let session =
        QuerySession::new(catalog, "annotable", "s3_metadata", "annotation_journal").await?;
    let annotation_files = serde_json::to_string(&files(&dir, "annotation_journal").await?)?;
    let object_files = serde_json::to_string(&files(&dir, "object_journal").await?)?;
    let views: Vec<&str> = annotation_sql::view_definitions()
        .iter()
        .map(|(_, sql)| *sql)
        .collect();
    let views = serde_json::to_string(&views)?;
    let python = py_tools_python()?;

    for (label, sql) in QUERIES {
        // annotable: first run, then the best of the warm runs.
        let started = Instant::now();
        let ours = session.query(sql).await?;
        let first = secs(started);
        let mut warm = f64::MAX;
        for _ in 0..WARM_RUNS {
            let started = Instant::now();
            session.query(sql).await?;
            warm = warm.min(secs(started));
        }
        let mut ours_rows = Vec::new();
        for batch in &ours.batches {
            let columns: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8))
                .collect::<std::result::Result<_, _>>()?;
            for i in 0..batch.num_rows() {
                ours_rows.push(
                    columns
                        .iter()
                        .map(|c| {
                            use arrow::array::{Array, AsArray};
                            let c = c.as_string::<i32>();
                            (!c.is_null(i)).then(|| canonical(c.value(i)))
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        let out = Command::new(&python)
            .args(["-c", DUCKDB])
            .args([&annotation_files, &object_files, &views, &sql.to_string()])
            .arg(WARM_RUNS.to_string())
            .output()?;
        if !out.status.success() {
            return Err(format!("duckdb: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let duck: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let duck_rows: Vec<Vec<Option<String>>> = duck["rows"]
            .as_array()
            .ok_or("rows")?
            .iter()
            .map(|r| {
                r.as_array()
                    .map(|cells| cells.iter().map(|c| c.as_str().map(canonical)).collect())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            ours_rows, duck_rows,
            "{label}: annotable and DuckDB disagree"
        );
        assert!(!ours_rows.is_empty(), "{label}: no rows");
        let (duck_first, duck_warm) = (
            duck["first"].as_f64().ok_or("first")?,
            duck["warm"].as_f64().ok_or("warm")?,
        );
        println!(
            "{label}: {} rows, same answer. annotable first {first:.2} s, warm {warm:.2} s; DuckDB first {duck_first:.2} s, warm {duck_warm:.2} s (peak {:.0} MiB); annotable/DuckDB warm {:.2}",
            ours_rows.len(),
            duck["peak_mib"].as_f64().unwrap_or_default(),
            warm / duck_warm
        );
    }
    println!("annotable peak RSS {:.0} MiB", peak_rss_mib());
    Ok(())
}
