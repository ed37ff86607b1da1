//! Current-state table benchmark (the materialized `annotations`): over a journal of realistic
//! rows (5M by default), in one run,
//!
//! 1. **rebuild**: the state folded from the whole journal (`maintain --rebuild-state`), once
//!    per journal;
//! 2. **refresh**: `ANNOTABLE_BENCH_CHANGES` (10,000) changed annotations appended to the
//!    journal, then one incremental refresh: time, partitions and bytes written; that
//!    `ANNOTABLE_BENCH_REFRESHES` (5) times in a row, so the figures show refreshes over the
//!    deltas earlier ones left, not only the first after a rebuild (0 changes: no refresh, so
//!    the queries read the state as the last run left it);
//! 3. **queries**: `count(*)`, a point lookup by (bucket, object_key), a JSON filter and
//!    `counts_and_sizes_by_name` on `annotations` answered by the state table, by the view over
//!    the journal it replaces (`annotations_from_journal`), by the same session reading the
//!    state table's data files (the current snapshot's file plan) through DataFusion's own
//!    ListingTable (no Iceberg metadata, so no partition pruning; string views; left out when
//!    the refresh left position deletes, which it cannot apply), and by DuckDB reading those
//!    files and applying the snapshot's position deletes itself, in the same run. Each is measured from a fresh process (wall time
//!    of the whole process, start-up and catalog included, the warm runs it makes afterwards
//!    left out) and warm (the best of 4 more runs of the same statement in that process).
//!    Every engine's answer is checked first, digit for digit.
//!
//! `cargo bench -p annotable-bench --bench state_table` (`ANNOTABLE_BENCH_ROWS` to change
//! 5,000,000, `ANNOTABLE_BENCH_FOLD_BUDGET_MB` the rebuild's fold budget, 1024;
//! `ANNOTABLE_BENCH_QUERIES=0` stops after the refresh, `ANNOTABLE_BENCH_VIEW=0` leaves the
//! journal view out (at 50M rows it takes minutes per statement and no goal compares with it),
//! `ANNOTABLE_BENCH_EXPLAIN=1` prints annotable's `EXPLAIN ANALYZE` of each query on the state,
//! `ANNOTABLE_BENCH_VIEW_TYPES=0` makes the DataFusion column read strings as Utf8;
//! the journal and its state are kept under the target dir and grow by the changes of each
//! run).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use annotable_bench::{
    bench_dir, build_journal, env_usize, peak_rss_mib, py_tools_python, realistic_rows_range, secs,
};
use annotation_sql::QuerySession;
use annotation_table::state::StateTables;
use annotation_table::{
    Batch, CatalogConfig, JournalTable, Source, StorageConfig, connect, table_ident,
};
use futures::TryStreamExt;
use iceberg::Catalog;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Makes the command that runs one statement on one engine.
type Engine<'a> = Box<dyn Fn(&str) -> Command + 'a>;

const RUNS: usize = 3;
const WARM_RUNS: usize = 4;
const NAMESPACE: &str = "s3_metadata";

/// `(label, SQL for annotable, SQL for DuckDB, check)`; `{lookup}` stands for the point lookup's
/// predicate and `{q}` in a check for the query. Both engines name the current state
/// `annotations`; for annotable's view the name is rewritten to `annotations_from_journal`.
const QUERIES: [(&str, &str, &str, &str); 4] = [
    (
        "count(*)",
        "SELECT count(*) FROM annotations",
        "SELECT count(*) FROM annotations",
        "{q}",
    ),
    (
        "point lookup (bucket, object_key)",
        "SELECT * FROM annotations WHERE {lookup}",
        "SELECT * FROM annotations WHERE {lookup}",
        "SELECT count(*), sum(length(text_value)), sum(size), min(sequence_number), \
         max(sequence_number), count(DISTINCT name) FROM ({q}) q",
    ),
    (
        "JSON filter (objects_by_annotation_value)",
        include_str!("../../../queries/objects_by_annotation_value.sql"),
        "SELECT bucket, object_key, object_version_id, json_extract_string(text_value, '$.reviewer') AS reviewer FROM annotations WHERE name = 'review' AND json_extract_string(text_value, '$.status') = 'approved' ORDER BY bucket, object_key",
        "SELECT count(*), count(object_key), count(DISTINCT object_key), count(object_version_id), \
         count(reviewer), sum(length(reviewer)) FROM ({q}\n) q",
    ),
    (
        "counts_and_sizes_by_name",
        include_str!("../../../queries/counts_and_sizes_by_name.sql"),
        include_str!("../../../queries/counts_and_sizes_by_name.sql"),
        "SELECT count(*), sum(annotations), sum(total_bytes), max(largest_bytes) FROM ({q}\n) q",
    ),
];

const DUCKDB: &str = r#"
import json, sys, time
t0 = time.perf_counter()
import duckdb
files, query, warm_runs = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
deletes = json.loads(sys.argv[4])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
if deletes:
    # The position deletes of the plan, applied by DuckDB itself: rows of a data file whose
    # (file_path, pos) a delete file names are not in the table.
    con.execute(f"CREATE VIEW annotations AS SELECT * EXCLUDE (filename, file_row_number) FROM read_parquet({files!r}, filename=true, file_row_number=true) d WHERE NOT EXISTS (SELECT 1 FROM read_parquet({deletes!r}) x WHERE x.file_path = 'file://' || d.filename AND x.pos = d.file_row_number)")
else:
    con.execute(f"CREATE VIEW annotations AS SELECT * FROM read_parquet({files!r})")
start = time.perf_counter()
rows = con.execute(query).fetchall()
first = time.perf_counter() - start
warm = []
for _ in range(warm_runs):
    start = time.perf_counter()
    con.execute(query).fetchall()
    warm.append(time.perf_counter() - start)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"first": first, "warm": min(warm) if warm else first, "warm_total": sum(warm), "rows": len(rows), "answer": ", ".join(str(v) for v in rows[0]) if rows else None, "peak_mib": peak}))
"#;

#[derive(Debug, Clone, Copy)]
struct Figures {
    /// The whole process, start to exit, less the warm runs it made after the first statement.
    fresh: f64,
    /// The best warm run inside it.
    warm: f64,
    peak_mib: f64,
}

fn median(mut runs: Vec<Figures>) -> Figures {
    let mid = runs.len() / 2;
    runs.sort_by(|a, b| a.fresh.total_cmp(&b.fresh));
    let fresh = runs[mid].fresh;
    runs.sort_by(|a, b| a.warm.total_cmp(&b.warm));
    let warm = runs[mid].warm;
    runs.sort_by(|a, b| a.peak_mib.total_cmp(&b.peak_mib));
    Figures {
        fresh,
        warm,
        peak_mib: runs[mid].peak_mib,
    }
}

async fn catalog(dir: &Path) -> Result<Arc<dyn Catalog>> {
    Ok(connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await?)
}

async fn state_tables(dir: &Path, catalog: Arc<dyn Catalog>) -> Result<StateTables> {
    Ok(StateTables::open(
        catalog,
        &CatalogConfig::embedded(dir),
        "annotable",
        &StorageConfig::default(),
        NAMESPACE,
        "annotations",
    )
    .await?)
}

async fn session(dir: &Path) -> Result<QuerySession> {
    Ok(QuerySession::new(
        catalog(dir).await?,
        "bench",
        NAMESPACE,
        "annotation_journal",
    )
    .await?)
}

/// Explain mode: one warm-up run of the statement, then its `EXPLAIN ANALYZE`, printed as text.
async fn explain(dir: &Path, sql: &str) -> Result<()> {
    let session = session(dir).await?;
    session.query(sql).await?;
    let plan = session.query(&format!("EXPLAIN ANALYZE {sql}")).await?;
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&plan.batches)?
    );
    Ok(())
}

/// The name under which the DataFusion engine reads the state's files directly.
const FILES_TABLE: &str = "direct.files.annotations";

/// Registers the state's data files (the current snapshot's file plan) as [`FILES_TABLE`], read
/// by DataFusion's own Parquet source (string views, its pruning) rather than iceberg's reader:
/// what the same session would take without iceberg's Arrow reader in between.
async fn register_files(session: &QuerySession, files: &[String]) -> Result<()> {
    use datafusion::catalog::{CatalogProvider, SchemaProvider};
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    let ctx = session.context();
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // `ANNOTABLE_BENCH_VIEW_TYPES=0`: strings as Utf8, as iceberg's reader gives them.
    let views = !std::env::var("ANNOTABLE_BENCH_VIEW_TYPES").is_ok_and(|v| v == "0");
    let format = ParquetFormat::default().with_force_view_types(views);
    let options = ListingOptions::new(Arc::new(format))
        .with_file_extension(".parquet")
        .with_target_partitions(ctx.state().config().target_partitions());
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await?;
    // The session's own schema is read-only: the files get a catalog of their own.
    let catalog = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
    let schema = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
    schema.register_table(
        "annotations".to_string(),
        Arc::new(ListingTable::try_new(config)?),
    )?;
    catalog.register_schema("files", schema)?;
    ctx.register_catalog("direct", catalog);
    Ok(())
}

/// Child mode: one statement through annotable's session, then `WARM_RUNS` more; prints JSON.
/// With `files`, `annotations` is first replaced by those files read by DataFusion directly.
async fn child(dir: &Path, sql: &str, files: Option<&str>) -> Result<()> {
    let session = session(dir).await?;
    let sql = match files {
        None => sql.to_string(),
        Some(files) => {
            let files: Vec<String> = serde_json::from_str(files)?;
            register_files(&session, &files).await?;
            sql.replace("FROM annotations", &format!("FROM {FILES_TABLE}"))
        }
    };
    let sql = sql.as_str();
    let start = Instant::now();
    let result = session.query(sql).await?;
    let first = secs(start);
    let mut warm = f64::INFINITY;
    let mut warm_total = 0.0;
    for _ in 0..WARM_RUNS {
        let start = Instant::now();
        session.query(sql).await?;
        warm = warm.min(secs(start));
        warm_total += secs(start);
    }
    let answer = result.batches.iter().find(|b| b.num_rows() > 0).map(|b| {
        b.columns()
            .iter()
            .map(|c| arrow::util::display::array_value_to_string(c, 0).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    });
    println!(
        "{}",
        serde_json::json!({"first": first, "warm": warm, "warm_total": warm_total, "rows": result.num_rows(), "answer": answer, "peak_mib": peak_rss_mib()})
    );
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(Figures, serde_json::Value)> {
    let start = Instant::now();
    let out = cmd.output()?;
    let fresh = secs(start);
    if !out.status.success() {
        // The program and the statement (not the file list a direct read passes after them).
        let args: Vec<_> = cmd.get_args().take(3).collect();
        return Err(format!(
            "{:?} {args:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let figures = Figures {
        // The process as if it had exited after its first statement: the warm runs it made
        // afterwards are not part of a fresh process's time.
        fresh: fresh - v["warm_total"].as_f64().unwrap_or(0.0),
        warm: v["warm"].as_f64().unwrap_or(f64::NAN),
        peak_mib: v["peak_mib"].as_f64().unwrap_or(f64::NAN),
    };
    Ok((figures, v))
}

fn digits(v: &serde_json::Value) -> String {
    v.to_string().chars().filter(char::is_ascii_digit).collect()
}

/// Appends this run's changes: the rows after everything appended so far (each run continues
/// the journal's sequence, over the same objects).
async fn append_changes(dir: &Path, n: usize, changes: usize) -> Result<()> {
    let count_file = dir.join(".changes-appended");
    let done: usize = std::fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let journal = JournalTable::open(catalog(dir).await?, NAMESPACE, None).await?;
    let from = n + done;
    journal
        .append(Batch::new(
            Source::Notification,
            realistic_rows_range(from..from + changes, n, 7),
        ))
        .await?;
    std::fs::write(count_file, (done + changes).to_string())?;
    Ok(())
}

/// The state table's data files in its current snapshot and the position-delete files to apply
/// to them, as DuckDB reads them.
async fn state_files(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let catalog = catalog(dir).await?;
    let ident = table_ident(NAMESPACE, "annotations").ok_or("state table name")?;
    let table = catalog.load_table(&ident).await?;
    let tasks: Vec<_> = table
        .scan()
        .select_all()
        .build()?
        .plan_files()
        .await?
        .try_collect()
        .await?;
    let local = |path: &str| path.strip_prefix("file://").unwrap_or(path).to_string();
    let files = tasks.iter().map(|t| local(&t.data_file_path)).collect();
    let mut deletes: Vec<String> = tasks
        .iter()
        .flat_map(|t| &t.deletes)
        .map(|d| local(&d.file_path))
        .collect();
    deletes.sort();
    deletes.dedup();
    Ok((files, deletes))
}

/// One incremental refresh, printed.
async fn refresh(state: &StateTables, journal: &JournalTable) -> Result<()> {
    let before = peak_rss_mib();
    let report = state.refresh(journal, false).await?;
    println!(
        "refresh   {} journal rows ({} append) folded into {} partitions ({} shares written whole, {} rows deleted by position, {} of {} base rows read): {} files ({:.1} MiB) replaced by {} ({:.1} MiB) in {:.2} s; peak RSS {:.0} MiB (was {:.0})",
        report.journal_rows,
        report.journal_snapshots,
        report.partitions,
        report.partitions_merged,
        report.position_deletes,
        report.paged_rows_read,
        report.paged_rows,
        report.files_removed,
        report.bytes_removed as f64 / 1048576.0,
        report.files_written,
        report.bytes_written as f64 / 1048576.0,
        report.took.as_secs_f64(),
        peak_rss_mib(),
        before
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n: usize = std::env::var("ANNOTABLE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let changes: usize = std::env::var("ANNOTABLE_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = bench_dir(&format!("state-table-{n}"));
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let sql = args.get(pos + 1).ok_or("--child needs SQL")?;
        let files = args
            .iter()
            .position(|a| a == "--files")
            .and_then(|p| args.get(p + 1));
        return child(&dir, sql, files.map(String::as_str)).await;
    }
    if let Some(pos) = args.iter().position(|a| a == "--explain") {
        let sql = args.get(pos + 1).ok_or("--explain needs SQL")?;
        return explain(&dir, sql).await;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "state-table benchmark: {n}-row journal, {changes} changes per refresh, {cores} cores; queries: median of {RUNS} processes"
    );
    build_journal(&dir, n).await?;

    // 1. The state, folded from the whole journal once.
    let state = state_tables(&dir, catalog(&dir).await?).await?;
    let journal = JournalTable::open(catalog(&dir).await?, NAMESPACE, None).await?;
    let budget_mb: u64 = std::env::var("ANNOTABLE_BENCH_FOLD_BUDGET_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    if state.watermark().await?.is_none() {
        let report = state
            .refresh_within(&journal, true, Some(budget_mb * 1024 * 1024))
            .await?;
        println!(
            "rebuild   {} journal rows in {} passes (fold budget {budget_mb} MiB) → {} live annotations, {} tombstones in {} files ({:.1} MiB) in {:.1} s, peak RSS {:.0} MiB",
            report.journal_rows,
            report.passes,
            report.live_rows,
            report.tombstones,
            report.files_written,
            report.bytes_written as f64 / 1048576.0,
            report.took.as_secs_f64(),
            peak_rss_mib()
        );
    }

    // 2. Incremental refreshes of `changes` changed annotations each (none: the queries read
    // the state as it is, e.g. as rebuilt, without deltas and position deletes).
    let refreshes = env_usize("ANNOTABLE_BENCH_REFRESHES", 5);
    if changes > 0 {
        for _ in 0..refreshes {
            append_changes(&dir, n, changes).await?;
            refresh(&state, &journal).await?;
        }
    }
    drop(state);
    drop(journal);

    // 3. Queries.
    if std::env::var("ANNOTABLE_BENCH_QUERIES").is_ok_and(|v| v == "0") {
        return Ok(());
    }
    let (files, deletes) = state_files(&dir).await?;
    let files_json = serde_json::to_string(&files)?;
    let deletes_json = serde_json::to_string(&deletes)?;
    let python = py_tools_python()?;
    let me = std::env::current_exe()?;
    // The object the lookup asks for: one with live annotations, picked by the state itself.
    let pick = Command::new(&me)
        .args(["--bench", "--child"])
        .arg("SELECT bucket, object_key FROM annotations WHERE object_key LIKE '%IMG_00000000%5_original.jpeg' ORDER BY object_key LIMIT 1")
        .env("ANNOTABLE_BENCH_DIR", &dir)
        .output()?;
    let picked: serde_json::Value = serde_json::from_slice(&pick.stdout).map_err(|e| {
        format!(
            "picking the lookup's object: {e}: {}",
            String::from_utf8_lossy(&pick.stderr)
        )
    })?;
    let answer = picked["answer"].as_str().ok_or("no object to look up")?;
    let (bucket, key) = answer.split_once(", ").ok_or("lookup object")?;
    let lookup = format!("bucket = '{bucket}' AND object_key = '{key}'");
    println!(
        "lookup    {bucket}/{key}; DuckDB reads the {} data files of the state's current snapshot and applies its {} position-delete files",
        files.len(),
        deletes.len()
    );

    let ours = |sql: &str| {
        let mut cmd = Command::new(&me);
        cmd.args(["--bench", "--child"])
            .arg(sql)
            .env("ANNOTABLE_BENCH_DIR", &dir);
        cmd
    };
    let duck = |sql: &str| {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", DUCKDB])
            .arg(&files_json)
            .arg(sql)
            .arg(WARM_RUNS.to_string())
            .arg(&deletes_json);
        cmd
    };
    let direct = |sql: &str| {
        let mut cmd = ours(sql);
        cmd.arg("--files").arg(&files_json);
        cmd
    };
    let view = |sql: &str| sql.replace("FROM annotations", "FROM annotations_from_journal");
    let with_view = !std::env::var("ANNOTABLE_BENCH_VIEW").is_ok_and(|v| v == "0");
    let explain = std::env::var("ANNOTABLE_BENCH_EXPLAIN").is_ok_and(|v| v == "1");

    println!(
        "\n{:<42} {:<30} {:>10} {:>10} {:>9} {:>7}",
        "query", "engine", "fresh s", "warm s", "peak MiB", "rows"
    );
    for (label, ours_sql, duck_sql, check) in QUERIES {
        let ours_sql = ours_sql.replace("{lookup}", &lookup);
        let duck_sql = duck_sql.replace("{lookup}", &lookup);
        if explain {
            let out = Command::new(&me)
                .args(["--bench", "--explain"])
                .arg(&ours_sql)
                .env("ANNOTABLE_BENCH_DIR", &dir)
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "{label}: EXPLAIN ANALYZE failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            println!(
                "{label}: EXPLAIN ANALYZE (annotable, state table, warm)\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let mut engines: Vec<(&str, Engine, String)> = vec![
            ("annotable, state table", Box::new(ours), ours_sql.clone()),
            ("DuckDB, state files", Box::new(duck), duck_sql.clone()),
        ];
        // DataFusion's ListingTable cannot apply position deletes.
        if deletes.is_empty() {
            engines.insert(
                1,
                (
                    "DataFusion Parquet, state files",
                    Box::new(direct),
                    ours_sql.clone(),
                ),
            );
        }
        if with_view {
            engines.insert(
                1,
                (
                    "annotable, view (journal)",
                    Box::new(|s: &str| ours(&view(s))),
                    ours_sql.clone(),
                ),
            );
        }
        // Same answer from every engine first.
        let mut expected: Option<(String, &str)> = None;
        for (engine, cmd, sql) in &engines {
            let (_, v) = run(&mut cmd(&check.replace("{q}", sql)))?;
            let got = digits(&v["answer"]);
            match &expected {
                None => expected = Some((got, engine)),
                Some((want, first)) if *want != got => {
                    return Err(format!(
                        "{label}: {first} answers {want} but {engine} answers {got}"
                    )
                    .into());
                }
                Some(_) => {}
            }
        }
        let mut results = Vec::new();
        for (engine, cmd, sql) in &engines {
            let mut runs = Vec::new();
            let mut rows = serde_json::Value::Null;
            for _ in 0..RUNS {
                let (figures, v) = run(&mut cmd(sql))?;
                runs.push(figures);
                rows = v["rows"].clone();
            }
            let m = median(runs);
            println!(
                "{label:<42} {engine:<30} {:>10.3} {:>10.3} {:>9.0} {:>7}",
                m.fresh, m.warm, m.peak_mib, rows
            );
            results.push(m);
        }
        let (state, duckdb) = (results[0], results[results.len() - 1]);
        let against_view = if with_view {
            let view = results[1];
            format!(
                "state / view: fresh {:.3}x, warm {:.3}x; ",
                state.fresh / view.fresh,
                state.warm / view.warm
            )
        } else {
            String::new()
        };
        let against_direct = engines
            .iter()
            .position(|(engine, ..)| engine.starts_with("DataFusion"))
            .map(|i| {
                format!(
                    "state / DataFusion Parquet: warm {:.2}x; ",
                    state.warm / results[i].warm
                )
            })
            .unwrap_or_default();
        println!(
            "{:<42} {against_view}{against_direct}state / DuckDB: fresh {:.2}x, warm {:.2}x\n",
            "",
            state.fresh / duckdb.fresh,
            state.warm / duckdb.warm
        );
    }
    Ok(())
}
