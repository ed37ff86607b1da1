//! sql-server benchmark: point lookups by (bucket, object_key) on `annotations` (the state
//! table), over 8 connections of one sql-server, against the same lookup through 8 concurrent
//! `annotable query`-like processes (each opens a session, runs the statement, exits), in the
//! same run on the same tables.
//!
//! The server runs in this process: the same library `annotable sql-server` runs, on
//! 127.0.0.1, reached by tokio-postgres over TCP with a prepared statement. Latencies are per
//! statement (server) and per process (baseline); every answer is checked to hold rows.
//!
//! `cargo bench -p annotable-bench --bench sql_server` (`ANNOTABLE_BENCH_ROWS`, 1,000,000;
//! `ANNOTABLE_BENCH_SECS`, 10, how long the clients run; `ANNOTABLE_BENCH_CLIENTS`, 8).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annotable_bench::{bench_dir, build_journal, env_usize, secs};
use annotable_sql_server::{Limits, ServerOptions, SqlServer, Tables};
use annotation_sql::QuerySession;
use annotation_table::state::StateTables;
use annotation_table::{CatalogConfig, JournalTable, StorageConfig, connect};
use iceberg::Catalog;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAMESPACE: &str = "s3_metadata";
const LOOKUP: &str = "SELECT * FROM annotations WHERE bucket = $1 AND object_key = $2";

async fn catalog(dir: &Path) -> Result<Arc<dyn Catalog>> {
    Ok(connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await?)
}

/// Child mode: what `annotable query` does for one lookup: open a session, run, print rows.
async fn child(dir: &Path, bucket: &str, key: &str) -> Result<()> {
    let session = QuerySession::new(
        catalog(dir).await?,
        "bench",
        NAMESPACE,
        "annotation_journal",
    )
    .await?;
    let sql = LOOKUP
        .replace("$1", &format!("'{bucket}'"))
        .replace("$2", &format!("'{key}'"));
    let rows = session.query(&sql).await?.num_rows();
    println!("{rows}");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut latencies: Vec<f64>, elapsed: f64) {
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label:<44} {:>9} {:>10.1} {:>10.2} {:>10.2}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.5) * 1000.0,
        percentile(&latencies, 0.99) * 1000.0
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n = env_usize("ANNOTABLE_BENCH_ROWS", 1_000_000);
    let run_for = Duration::from_secs(env_usize("ANNOTABLE_BENCH_SECS", 10) as u64);
    let clients = env_usize("ANNOTABLE_BENCH_CLIENTS", 8);
    let dir = bench_dir(&format!("sql-server-{n}"));
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let (bucket, key) = (args.get(pos + 1), args.get(pos + 2));
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err("--child needs BUCKET KEY".into());
        };
        return child(&dir, bucket, key).await;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "sql-server benchmark: {n}-row journal and its state table, {clients} clients, {cores} cores"
    );
    build_journal(&dir, n).await?;
    let state = StateTables::open(
        catalog(&dir).await?,
        &CatalogConfig::embedded(&dir),
        "annotable",
        &StorageConfig::default(),
        NAMESPACE,
        "annotations",
    )
    .await?;
    if state.watermark().await?.is_none() {
        let journal = JournalTable::open(catalog(&dir).await?, NAMESPACE, None).await?;
        let report = state.refresh_within(&journal, true, Some(1 << 30)).await?;
        println!(
            "  built the state: {} live annotations in {:.1} s",
            report.live_rows,
            report.took.as_secs_f64()
        );
    }
    drop(state);

    // Objects to look up: ones with live annotations, spread over the key space.
    let session = QuerySession::new(
        catalog(&dir).await?,
        "bench",
        NAMESPACE,
        "annotation_journal",
    )
    .await?;
    let picked = session
        .query(
            "SELECT DISTINCT bucket, object_key FROM annotations_state WHERE object_key LIKE '%5_original.jpeg' ORDER BY object_key LIMIT 256",
        )
        .await?;
    let mut objects = Vec::new();
    for batch in &picked.batches {
        for row in 0..batch.num_rows() {
            let cell = |c: usize| {
                arrow::util::display::array_value_to_string(batch.column(c), row)
                    .unwrap_or_default()
            };
            objects.push((cell(0), cell(1)));
        }
    }
    drop(session);
    if objects.is_empty() {
        return Err("no objects to look up".into());
    }
    let objects = Arc::new(objects);

    let tables = Tables {
        catalog: catalog(&dir).await?,
        catalog_name: "bench".into(),
        namespace: NAMESPACE.into(),
        journal: "annotation_journal".into(),
        state_table: "annotations".into(),
        objects_table: "object_journal".into(),
    };
    let options = ServerOptions {
        listen: "127.0.0.1:0".into(),
        credentials: None,
        tls: None,
        limits: Limits {
            statement_timeout: Duration::from_secs(60),
            statement_memory: 1 << 30,
            max_statements: clients,
            max_connections: clients * 2,
        },
    };
    let server = SqlServer::bind(tables, options).await?;
    let port = server.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    println!(
        "\n{:<44} {:>9} {:>10} {:>10} {:>10}",
        "point lookup (bucket, object_key)", "statements", "per s", "p50 ms", "p99 ms"
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let objects = objects.clone();
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user=annotable dbname=annotable"),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::spawn(connection);
            let lookup = client.prepare(LOOKUP).await?;
            let mut latencies = Vec::new();
            let mut i = c;
            let begun = Instant::now();
            while begun.elapsed() < run_for {
                let (bucket, key) = &objects[i % objects.len()];
                let start = Instant::now();
                let rows = client.query(&lookup, &[bucket, key]).await?;
                latencies.push(secs(start));
                if rows.is_empty() {
                    return Err(format!("no rows for {bucket}/{key}").into());
                }
                i += clients;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    report(
        &format!("sql-server, {clients} connections"),
        latencies,
        secs(started),
    );
    let _ = stop.send(());
    serving.await??;

    // The same lookups as processes, `clients` at a time, for as long.
    let me = std::env::current_exe()?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0;
    while started.elapsed() < run_for {
        let mut wave = Vec::new();
        for _ in 0..clients {
            let (bucket, key) = objects[i % objects.len()].clone();
            i += 1;
            let me = me.clone();
            let dir = dir.clone();
            wave.push(tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                let out = Command::new(&me)
                    .args(["--bench", "--child", &bucket, &key])
                    .env("ANNOTABLE_BENCH_DIR", &dir)
                    .output()?;
                let took = secs(start);
                let rows: usize = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if !out.status.success() || rows == 0 {
                    return Err(format!(
                        "lookup process for {bucket}/{key}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                    .into());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(took)
            }));
        }
        for task in wave {
            latencies.push(task.await??);
        }
    }
    report(
        &format!("annotable query processes, {clients} at a time"),
        latencies,
        secs(started),
    );
    Ok(())
}
