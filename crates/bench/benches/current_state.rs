//! Current-state benchmark: latency and peak memory of `SELECT count(*) FROM annotations`
//! and of two example queries over a journal of realistic rows (5M by default), answered by
//! annotable's DataFusion session, next to DuckDB answering the same questions on the same
//! Parquet files in the same run. DuckDB gets several formulations of the view (the same
//! portable SQL, a row_number() window, and its own arg_max, all keyed, like the view, on the
//! journal's identity columns) and is credited with its fastest.
//!
//! Every measurement is a separate process (so peak RSS, VmHWM, is that query's alone); each
//! is run 3 times and the median reported.
//!
//! `cargo bench -p annotable-bench --bench current_state` (ANNOTABLE_BENCH_ROWS to change
//! 5,000,000; the journal is built once and kept under the target dir). To look into a plan:
//! `ANNOTABLE_BENCH_PRINT=1 <bench binary> --bench --child 'EXPLAIN ANALYZE SELECT ...'`, and
//! to try a DataFusion setting, `ANNOTABLE_BENCH_SET='datafusion.optimizer.x=false'` with it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use annotable_bench::{bench_dir, build_journal, peak_rss_mib, py_tools_python, secs};
use annotation_sql::QuerySession;
use annotation_table::{CatalogConfig, StorageConfig, connect};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const RUNS: usize = 3;

/// `(label, annotable SQL, DuckDB SQL over the view `annotations`, check)`. The check is one
/// row that pins down the query's answer, `{q}` standing for the query: it runs untimed, once
/// per engine and formulation, and must agree digit for digit (a wrong join order or a
/// mis-pushed filter changes which rows come back long before it changes how many).
const QUERIES: [(&str, &str, &str, &str); 3] = [
    (
        "count(*) FROM annotations",
        "SELECT count(*) FROM annotations",
        "SELECT count(*) FROM annotations",
        "SELECT count(*), count(object_key), count(object_version_id), count(DISTINCT object_key), \
         count(DISTINCT name), sum(size), sum(length(text_value)), sum(length(e_tag)), \
         min(sequence_number), max(sequence_number) FROM annotations",
    ),
    (
        "counts_and_sizes_by_name",
        include_str!("../../../queries/counts_and_sizes_by_name.sql"),
        include_str!("../../../queries/counts_and_sizes_by_name.sql"),
        "SELECT count(*), sum(annotations), sum(total_bytes), max(largest_bytes) FROM ({q}\n) q",
    ),
    (
        "objects_by_annotation_value",
        include_str!("../../../queries/objects_by_annotation_value.sql"),
        "SELECT bucket, object_key, object_version_id, json_extract_string(text_value, '$.reviewer') AS reviewer FROM annotations WHERE name = 'review' AND json_extract_string(text_value, '$.status') = 'approved' ORDER BY bucket, object_key",
        "SELECT count(*), count(object_key), count(DISTINCT object_key), count(object_version_id), \
         count(reviewer), sum(length(reviewer)) FROM ({q}\n) q",
    ),
];

const DUCKDB: &str = r#"
import json, sys, time, duckdb
files, formulation, view_sql, query = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute(f"CREATE VIEW annotation_journal AS SELECT * FROM read_parquet('{files}')")
cols = "bucket, object_key, object_version_id, object_join_key, name, sequence_number, last_modified_date, size, e_tag, checksum_algorithm, replication_status, text_value"
if formulation == "portable view (same SQL)":
    con.execute(view_sql)
elif formulation == "row_number() window":
    con.execute(f"""CREATE VIEW annotations AS
      SELECT {cols} FROM (
        SELECT *, row_number() OVER (PARTITION BY bucket, annotation_hash ORDER BY sequence_number DESC) AS rn,
               max(CASE WHEN record_type = 'OBJECT_RESET' THEN sequence_number END) OVER (PARTITION BY bucket, object_version_hash) AS reset_seq
        FROM annotation_journal) t
      WHERE rn = 1 AND name IS NOT NULL AND record_type = 'PUT' AND (reset_seq IS NULL OR reset_seq <= sequence_number)""")
elif formulation == "arg_max":
    con.execute(f"""CREATE VIEW annotations AS
      WITH latest AS (
        SELECT arg_max(j, sequence_number) AS r FROM annotation_journal j WHERE name IS NOT NULL
        GROUP BY bucket, annotation_hash),
      resets AS (
        SELECT bucket, object_version_hash, max(sequence_number) AS seq FROM annotation_journal
        WHERE record_type = 'OBJECT_RESET' GROUP BY ALL)
      SELECT {', '.join('r.' + c + ' AS ' + c for c in cols.split(', '))} FROM latest
      LEFT JOIN resets x ON x.bucket = r.bucket AND x.object_version_hash = r.object_version_hash
      WHERE r.record_type = 'PUT' AND (x.seq IS NULL OR x.seq <= r.sequence_number)""")
start = time.perf_counter()
rows = con.execute(query).fetchall()
elapsed = time.perf_counter() - start
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": elapsed, "rows": len(rows), "first": ", ".join(str(v) for v in rows[0]) if rows else None, "peak_mib": peak}))
"#;

const FORMULATIONS: [&str; 3] = ["portable view (same SQL)", "row_number() window", "arg_max"];

#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    peak_mib: f64,
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mid = runs[runs.len() / 2];
    let mut peaks: Vec<f64> = runs.iter().map(|r| r.peak_mib).collect();
    peaks.sort_by(f64::total_cmp);
    Run {
        seconds: mid.seconds,
        peak_mib: peaks[peaks.len() / 2],
    }
}

/// Child mode: one query through annotable's session; prints seconds, rows, peak MiB.
async fn child(dir: &Path, sql: &str) -> Result<()> {
    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await?;
    let session = QuerySession::new(catalog, "bench", "s3_metadata", "annotation_journal").await?;
    // For trying DataFusion settings: ANNOTABLE_BENCH_SET='datafusion.x.y=v;datafusion.z=w'.
    if let Ok(settings) = std::env::var("ANNOTABLE_BENCH_SET") {
        let state = session.context().state_ref();
        let mut state = state.write();
        for setting in settings.split(';').filter(|s| !s.is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or("ANNOTABLE_BENCH_SET: key=value")?;
            state
                .config_mut()
                .options_mut()
                .set(key.trim(), value.trim())?;
        }
    }
    let start = Instant::now();
    let result = session.query(sql).await?;
    let seconds = secs(start);
    if std::env::var_os("ANNOTABLE_BENCH_PRINT").is_some() {
        // For looking into a plan: `--child 'EXPLAIN ANALYZE ...'`.
        eprintln!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&result.batches)?
        );
    }
    // The first row, every column (the count, or a check's figures).
    let first = result.batches.iter().find(|b| b.num_rows() > 0).map(|b| {
        b.columns()
            .iter()
            .map(|c| arrow::util::display::array_value_to_string(c, 0).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    });
    println!(
        "{}",
        serde_json::json!({"seconds": seconds, "rows": result.num_rows(), "first": first, "peak_mib": peak_rss_mib()})
    );
    Ok(())
}

fn run_json(cmd: &mut Command) -> Result<(Run, serde_json::Value)> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let run = Run {
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        peak_mib: v["peak_mib"].as_f64().unwrap_or(f64::NAN),
    };
    Ok((run, v))
}

/// The digits of a JSON value's text (a count, however each engine prints it).
fn digits(v: &serde_json::Value) -> String {
    v.to_string().chars().filter(char::is_ascii_digit).collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n: usize = std::env::var("ANNOTABLE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let dir = bench_dir(&format!("current-state-{n}"));
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let sql = args.get(pos + 1).ok_or("--child needs SQL")?;
        return child(&dir, sql).await;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "current-state benchmark: {n}-row journal, {cores} cores, median of {RUNS} runs, each run its own process"
    );
    build_journal(&dir, n).await?;
    let files = format!("{}/warehouse/**/*.parquet", dir.display());
    let python = py_tools_python()?;
    let view_sql = annotation_sql::view_definitions()
        .iter()
        .find(|(f, _)| *f == "annotations.sql")
        .map(|(_, sql)| *sql)
        .ok_or("no annotations view")?;
    let me = std::env::current_exe()?;

    println!(
        "\n{:<30} {:<34} {:>9} {:>10} {:>8}",
        "query", "engine", "seconds", "peak MiB", "rows"
    );
    let ours_cmd = |sql: &str| {
        let mut cmd = Command::new(&me);
        cmd.arg("--bench")
            .arg("--child")
            .arg(sql)
            .env("ANNOTABLE_BENCH_DIR", &dir);
        cmd
    };
    let duckdb_cmd = |formulation: &str, sql: &str| {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", DUCKDB])
            .arg(&files)
            .arg(formulation)
            .arg(view_sql)
            .arg(sql);
        cmd
    };
    for (label, ours, theirs, check) in QUERIES {
        // Same answer first: annotable against every DuckDB formulation.
        let (_, v) = run_json(&mut ours_cmd(&check.replace("{q}", ours)))?;
        let answer = digits(&v["first"]);
        for formulation in FORMULATIONS {
            let (_, d) = run_json(&mut duckdb_cmd(formulation, &check.replace("{q}", theirs)))?;
            if digits(&d["first"]) != answer {
                return Err(format!(
                    "{label}: annotable answers {} but DuckDB ({formulation}) answers {}",
                    v["first"], d["first"]
                )
                .into());
            }
        }
        let mut runs = Vec::new();
        let mut rows = serde_json::Value::Null;
        for _ in 0..RUNS {
            let (run, v) = run_json(&mut ours_cmd(ours))?;
            runs.push(run);
            rows = v["rows"].clone();
        }
        let ours_run = median(runs);
        println!(
            "{label:<30} {:<34} {:>9.3} {:>10.0} {:>8}",
            "annotable (DataFusion)", ours_run.seconds, ours_run.peak_mib, rows
        );
        let mut best: Option<(Run, &str)> = None;
        for formulation in FORMULATIONS {
            let mut runs = Vec::new();
            let mut rows = serde_json::Value::Null;
            for _ in 0..RUNS {
                let (run, v) = run_json(&mut duckdb_cmd(formulation, theirs))?;
                runs.push(run);
                rows = v["rows"].clone();
            }
            let run = median(runs);
            println!(
                "{:<30} {:<34} {:>9.3} {:>10.0} {:>8}",
                "",
                format!("DuckDB, {formulation}"),
                run.seconds,
                run.peak_mib,
                rows
            );
            if best.is_none_or(|(b, _)| run.seconds < b.seconds) {
                best = Some((run, formulation));
            }
        }
        if let Some((b, f)) = best {
            println!(
                "{:<30} annotable / DuckDB fastest ({f}): time {:.2}x, peak memory {:.2}x\n",
                "",
                ours_run.seconds / b.seconds,
                ours_run.peak_mib / b.peak_mib
            );
        }
    }
    Ok(())
}
