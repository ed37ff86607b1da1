//! Ingest benchmark: rows/s of annotable's encode + write + commit (one Iceberg snapshot per
//! batch, embedded SQLite catalog, local warehouse) at 10k- and 100k-row commits, next to two
//! baselines measured in the same run on the same rows:
//!   (a) parquet's `ArrowWriter` (zstd 3) writing the same RecordBatches, one writer and two
//!       writers in parallel (no Iceberg, no sorting, no partitioning, no commit);
//!   (b) pyiceberg `table.append` of the same rows into a SQLite-catalog table with the same
//!       partition spec, in 100k-row appends.
//!
//! `cargo bench -p annotable-bench --bench ingest` (ANNOTABLE_BENCH_ROWS to change 1,000,000;
//! annotable and pyiceberg run in fresh processes, alternating, 3 times each; medians reported.
//! For profiling one annotable run: `<bench binary> --bench --child 100000`.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use annotable_bench::{process_cpu_secs, py_tools_python, realistic_rows, secs};
use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, Source, StorageConfig, connect, encode_rows,
    encode_sorted, journal_spec,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs of each annotable commit size and of pyiceberg (each its own process).
const RUNS: usize = 3;

const PYICEBERG: &str = r#"
import json, sys, time
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionSpec, PartitionField
from pyiceberg.transforms import IdentityTransform, DayTransform
from pyiceberg.io.pyarrow import pyarrow_to_schema
from pyiceberg.table.name_mapping import MappedField, NameMapping
data, root, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = pq.read_table(data)
catalog = SqlCatalog("bench", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse")
catalog.create_namespace("bench")
schema = pyarrow_to_schema(rows.schema)
spec = PartitionSpec(
    PartitionField(source_id=schema.find_field("bucket").field_id, field_id=1000, transform=IdentityTransform(), name="bucket"),
    PartitionField(source_id=schema.find_field("ingested_at").field_id, field_id=1001, transform=DayTransform(), name="ingested_day"),
)
table = catalog.create_table("bench.journal", schema=schema, partition_spec=spec,
    properties={"write.parquet.compression-codec": "zstd", "write.parquet.compression-level": "3"})
start = time.perf_counter()
for offset in range(0, rows.num_rows, chunk):
    table.append(rows.slice(offset, chunk))
elapsed = time.perf_counter() - start
print(json.dumps({"rows": rows.num_rows, "seconds": elapsed}))
"#;

/// Runs a child (annotable's `--child` or the pyiceberg script) and parses the JSON line it
/// prints last (annotable's child prints its phase times before it).
fn child_json(cmd: &mut Command, what: &str) -> Result<serde_json::Value> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(
        stdout.lines().last().unwrap_or_default(),
    )?)
}

fn props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build()
}

fn arrow_writer(batches: &[RecordBatch], path: &std::path::Path) -> Result<()> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path)?, first.schema(), Some(props()))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(())
}

#[derive(Clone, Copy)]
enum HashColumns {
    Dropped,
    Int64Pairs,
}

/// `batch` with its decimal(38, 0) identity columns left out or split into int64 halves.
fn hash_columns(batch: &RecordBatch, variant: HashColumns) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
    use arrow::datatypes::{DataType, Decimal128Type, Field, Schema};
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !matches!(field.data_type(), DataType::Decimal128(..)) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        if let HashColumns::Int64Pairs = variant {
            let values = column.as_primitive::<Decimal128Type>();
            let half = |shift: u32| -> ArrayRef {
                Arc::new(
                    values
                        .iter()
                        .map(|v| v.map(|v| (v >> shift) as i64))
                        .collect::<Int64Array>(),
                )
            };
            for (suffix, shift) in [("hi", 64), ("lo", 0)] {
                fields.push(Field::new(
                    format!("{}_{suffix}", field.name()),
                    DataType::Int64,
                    values.is_nullable(),
                ));
                columns.push(half(shift));
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

async fn annotable_ingest(rows: &[JournalRow], commit_rows: usize) -> Result<(f64, usize, usize)> {
    let dir = tempfile::tempdir()?;
    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(dir.path()),
        &StorageConfig::default(),
    )
    .await?;
    let journal = JournalTable::open(catalog, "s3_metadata", None).await?;
    let batches: Vec<Vec<JournalRow>> = rows
        .chunks(commit_rows)
        .map(<[JournalRow]>::to_vec)
        .collect();
    let start = Instant::now();
    let cpu = process_cpu_secs();
    let (mut commits, mut files) = (0, 0);
    let (mut encode, mut write, mut commit) = (0.0, 0.0, 0.0);
    for chunk in batches {
        let report = journal
            .append(Batch::new(Source::Notification, chunk))
            .await?;
        commits += 1;
        files += report.data_files;
        encode += report.encode_time.as_secs_f64();
        write += report.write_time.as_secs_f64();
        commit += report.commit_time.as_secs_f64();
    }
    let elapsed = secs(start);
    let (user, system) = process_cpu_secs();
    println!(
        "  {commit_rows}-row commits: sort+encode {encode:.2} s, write {write:.2} s, commit {commit:.2} s; CPU user {:.2} s, system {:.2} s",
        user - cpu.0,
        system - cpu.1
    );
    Ok((elapsed, commits, files))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n: usize = std::env::var("ANNOTABLE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        // One annotable measurement in a process of its own: `--child <commit rows>`.
        let commit_rows: usize = args
            .get(pos + 1)
            .and_then(|v| v.parse().ok())
            .ok_or("--child needs a commit size")?;
        let rows = realistic_rows(n, 42);
        let (seconds, commits, files) = annotable_ingest(&rows, commit_rows).await?;
        println!(
            "{}",
            serde_json::json!({"rows": n, "seconds": seconds, "commits": commits, "files": files})
        );
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("ingest benchmark: {n} realistic journal rows, {cores} cores");
    let rows = realistic_rows(n, 42);
    let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(
        &journal_spec()?.schema,
    )?);
    let start = Instant::now();
    let batches: Vec<RecordBatch> = rows
        .chunks(100_000)
        .map(|c| encode_rows(&schema, c))
        .collect::<std::result::Result<_, _>>()?;
    println!("  encode_rows alone: {:.0} rows/s", n as f64 / secs(start));
    // What the table's sort order (bucket, object_key, name; nulls first) costs: encode_sorted
    // is what appends run, per partition.
    let nulls_first = arrow::compute::SortOptions::default();
    let keys = ["bucket", "object_key", "name"]
        .into_iter()
        .map(|c| schema.index_of(c).map(|i| (i, nulls_first)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (what, sorted) in [
        ("unsorted (encode_rows)", false),
        ("sorted (encode_sorted)", true),
    ] {
        let start = Instant::now();
        for chunk in rows.chunks(25_000) {
            std::hint::black_box(if sorted {
                encode_sorted(&schema, chunk, &keys)?
            } else {
                encode_rows(&schema, chunk)?
            });
        }
        println!(
            "  encode {what}, 25k-row chunks, one core: {:.0} rows/s",
            n as f64 / secs(start)
        );
    }

    let raw: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    println!("  {:.0} MiB in Arrow", raw as f64 / 1048576.0);

    let dir = tempfile::tempdir()?;
    let mut report = Vec::new();

    // (a) ArrowWriter, one writer and two in parallel
    let start = Instant::now();
    arrow_writer(&batches, &dir.path().join("one.parquet"))?;
    let one = n as f64 / secs(start);
    report.push(("ArrowWriter zstd(3), 1 writer".to_string(), one));
    let (left, right) = batches.split_at(batches.len() / 2);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let a = s
            .spawn(|| arrow_writer(left, &dir.path().join("a.parquet")).map_err(|e| e.to_string()));
        let b = s.spawn(|| {
            arrow_writer(right, &dir.path().join("b.parquet")).map_err(|e| e.to_string())
        });
        for h in [a, b] {
            h.join().map_err(|_| "writer thread panicked")??;
        }
        Ok(())
    })?;
    report.push((
        "ArrowWriter zstd(3), 2 writers".to_string(),
        n as f64 / secs(start),
    ));
    // What the identity columns cost the writer, in the schema's representation and in the
    // alternatives: without them, and each as two int64 halves.
    for (what, variant) in [
        (
            "ArrowWriter zstd(3), 1 writer, no identity columns",
            HashColumns::Dropped,
        ),
        (
            "ArrowWriter zstd(3), 1 writer, identities as int64 pairs",
            HashColumns::Int64Pairs,
        ),
    ] {
        let variant: Vec<RecordBatch> = batches
            .iter()
            .map(|b| hash_columns(b, variant))
            .collect::<Result<_>>()?;
        let start = Instant::now();
        arrow_writer(&variant, &dir.path().join("variant.parquet"))?;
        report.push((what.to_string(), n as f64 / secs(start)));
    }

    drop(rows);
    // pyiceberg's input: the same rows as one Parquet file.
    let input = dir.path().join("input.parquet");
    arrow_writer(&batches, &input)?;
    drop(batches);

    // annotable and pyiceberg, each run in a fresh process, alternating, RUNS times; the
    // median of each is reported (a process that ran other phases first writes slower, and
    // these machines drift from minute to minute).
    let me = std::env::current_exe()?;
    let python = py_tools_python();
    if let Err(e) = &python {
        eprintln!("pyiceberg baseline skipped: {e}");
    }
    let mut rates: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |what: String, rate: f64| match rates.iter_mut().find(|(w, _)| *w == what) {
        Some((_, r)) => r.push(rate),
        None => rates.push((what, vec![rate])),
    };
    for round in 0..RUNS {
        for commit_rows in [10_000, 100_000] {
            let v = child_json(
                Command::new(&me)
                    .args(["--bench", "--child", &commit_rows.to_string()])
                    .env("ANNOTABLE_BENCH_ROWS", n.to_string()),
                "annotable child",
            )?;
            record(
                format!(
                    "annotable append, {commit_rows}-row commits ({} commits, {} files)",
                    v["commits"], v["files"]
                ),
                n as f64 / v["seconds"].as_f64().unwrap_or(f64::NAN),
            );
        }
        if let Ok(python) = &python {
            let py_root = dir.path().join(format!("pyiceberg-{round}"));
            std::fs::create_dir_all(&py_root)?;
            let v = child_json(
                Command::new(python)
                    .args(["-c", PYICEBERG])
                    .arg(&input)
                    .arg(&py_root)
                    .arg("100000"),
                "pyiceberg baseline",
            )?;
            record(
                "pyiceberg 0.12 append, 100000-row appends".to_string(),
                v["rows"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    let mut at_100k = 0.0;
    let mut pyiceberg = None;
    for (what, mut r) in rates {
        r.sort_by(f64::total_cmp);
        let median = r[r.len() / 2];
        if what.starts_with("annotable append, 100000") {
            at_100k = median;
        } else if what.starts_with("pyiceberg") {
            pyiceberg = Some(median);
        }
        report.push((format!("{what}, median of {}", r.len()), median));
    }

    println!("\n{:<80} {:>12} {:>10}", "", "rows/s", "vs 1 ArrowWriter");
    for (what, rate) in &report {
        println!("{what:<80} {rate:>12.0} {:>10.2}", rate / one);
    }
    if let Some(py) = pyiceberg {
        println!(
            "\nannotable at 100k-row commits / pyiceberg append: {:.2}x",
            at_100k / py
        );
    }
    Ok(())
}
