//! Export benchmark: peak resident memory and time of `annotable query --format ndjson` over
//! the whole journal, streaming (each batch written as it is computed: `query::run_to`, what
//! the command does now) against collect-all (every batch collected, then written: what the
//! command did before), in the same run on the same table.
//!
//! Each measurement is a fresh child process of this bench (so peak RSS is the statement's
//! own), writing to /dev/null; the two modes alternate, and the medians are reported.
//!
//! `cargo bench -p annotable-bench --bench export` (`ANNOTABLE_BENCH_ROWS`, 5,000,000;
//! `ANNOTABLE_BENCH_RUNS`, 3 pairs).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use annotable_bench::{bench_dir, build_journal, env_usize, peak_rss_mib, secs};
use annotation_sql::{OutputFormat, QuerySession, write_result};
use annotation_table::{CatalogConfig, StorageConfig, connect};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const EXPORT: &str = "SELECT * FROM annotation_journal";

/// Child mode: one export, then `rows seconds peak_mib` on stdout.
async fn child(dir: &Path, mode: &str) -> Result<()> {
    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await?;
    let session = QuerySession::new(catalog, "bench", "s3_metadata", "annotation_journal").await?;
    let out = std::io::BufWriter::new(std::fs::File::create("/dev/null")?);
    let start = Instant::now();
    let rows = match mode {
        "stream" => {
            annotable::query::run_to(&session, EXPORT, OutputFormat::Ndjson, None, out)
                .await?
                .rows
        }
        "collect" => {
            let result = session.query(EXPORT).await?;
            write_result(OutputFormat::Ndjson, &result.schema, &result.batches, out)?;
            result.num_rows()
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    println!("{rows} {:.3} {:.1}", secs(start), peak_rss_mib());
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let n = env_usize("ANNOTABLE_BENCH_ROWS", 5_000_000);
    let runs = env_usize("ANNOTABLE_BENCH_RUNS", 3);
    let dir = bench_dir(&format!("export-{n}"));
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let mode = args.get(pos + 1).ok_or("--child needs a mode")?;
        return child(&dir, mode).await;
    }
    println!("export benchmark: {EXPORT} as ndjson, {n}-row journal, {runs} runs of each");
    build_journal(&dir, n).await?;

    let exe = std::env::current_exe()?;
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("collect-all (before)", vec![], vec![]),
        ("streaming (now)", vec![], vec![]),
    ];
    for _ in 0..runs {
        for (i, mode) in ["collect", "stream"].into_iter().enumerate() {
            let out = Command::new(&exe)
                .args(["--child", mode])
                .env("ANNOTABLE_BENCH_DIR", &dir)
                .output()?;
            if !out.status.success() {
                return Err(
                    format!("{mode} failed: {}", String::from_utf8_lossy(&out.stderr)).into(),
                );
            }
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [rows, took, peak] = fields.as_slice() else {
                return Err(format!("unexpected child output {line:?}").into());
            };
            if rows.parse::<usize>()? != n {
                return Err(format!("{mode} exported {rows} rows, not {n}").into());
            }
            results[i].1.push(took.parse()?);
            results[i].2.push(peak.parse()?);
        }
    }
    println!("\n{:<24} {:>12} {:>14}", "mode", "median s", "peak RSS MiB");
    for (label, took, peak) in &results {
        println!(
            "{label:<24} {:>12.2} {:>14.0}",
            median(took.clone()),
            median(peak.clone())
        );
    }
    let (before, now) = (median(results[0].2.clone()), median(results[1].2.clone()));
    println!(
        "\npeak RSS streaming / collect-all: {:.3} ({:.0} MiB less); time ratio {:.2}",
        now / before,
        before - now,
        median(results[1].1.clone()) / median(results[0].1.clone())
    );
    Ok(())
}
