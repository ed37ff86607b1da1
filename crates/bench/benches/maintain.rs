//! Maintenance benchmark, two parts (`ANNOTABLE_BENCH_ONLY=reads|commits` runs one):
//!
//! - **reads**: `SELECT count(*)` over the journal and over the `annotations` view on a table
//!   built from 500 commits, before and after `Maintainer::run`, next to the same rows written
//!   as one commit, all in the same run (median of 5 after a warm-up, fresh session each).
//! - **commits**: commit latency as commits accumulate (median and max of each window of 100
//!   commits, up to 2,000), on a table left alone and on one maintained every 100 commits
//!   (compaction, expiry keeping the newest 100 snapshots, orphan sweep).
//!
//! `cargo bench -p annotable-bench --bench maintain` (ANNOTABLE_BENCH_COMMITS to change
//! 2,000; ANNOTABLE_BENCH_ROWS_PER_COMMIT, 200 by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use annotable_bench::{env_usize, realistic_rows_range};
use annotation_sql::QuerySession;
use annotation_table::{
    Batch, Catalog, CatalogConfig, JournalTable, MaintainOptions, Maintainer, Source,
    StorageConfig, connect,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Table {
    config: CatalogConfig,
    catalog: Arc<dyn Catalog>,
    journal: JournalTable,
}

async fn table(dir: &std::path::Path, name: &str) -> Result<Table> {
    let config = CatalogConfig::Sql {
        uri: format!("sqlite:{}", dir.join(format!("{name}.db")).display()),
        warehouse: format!("file://{}", dir.join(name).display()),
    };
    let catalog = connect("annotable", &config, &StorageConfig::default()).await?;
    let journal = JournalTable::open(catalog.clone(), "s3_metadata", None).await?;
    Ok(Table {
        config,
        catalog,
        journal,
    })
}

impl Table {
    async fn maintainer(&self) -> Result<Maintainer> {
        Ok(Maintainer::new(
            self.journal.clone(),
            &self.config,
            "annotable",
            &StorageConfig::default(),
        )
        .await?)
    }
}

/// Median seconds of `sql` over 5 runs after one warm-up, each in a fresh session (so
/// planning and metadata loading count, as for a CLI query).
async fn time_query(t: &Table, sql: &str) -> Result<(f64, usize)> {
    let mut times = Vec::new();
    let mut rows = 0;
    for run in 0..6 {
        let started = Instant::now();
        let session = QuerySession::new(
            t.catalog.clone(),
            "annotable",
            "s3_metadata",
            "annotation_journal",
        )
        .await?;
        let result = session.query(sql).await?;
        rows = result.num_rows();
        if run > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], rows))
}

async fn reads(dir: &std::path::Path) -> Result<()> {
    const COMMITS: usize = 500;
    let per_commit = env_usize("ANNOTABLE_BENCH_ROWS_PER_COMMIT", 200);
    let total = COMMITS * per_commit;
    println!("== reads: {total} rows as {COMMITS} commits vs one commit");
    let many = table(dir, "many").await?;
    let one = table(dir, "one").await?;
    let mut all = Vec::with_capacity(total);
    for c in 0..COMMITS {
        let rows = realistic_rows_range(c * per_commit..(c + 1) * per_commit, total, 7);
        all.extend(rows.iter().cloned());
        many.journal
            .append(Batch::new(Source::Notification, rows))
            .await?;
    }
    one.journal
        .append(Batch::new(Source::Backfill, all))
        .await?;
    let queries = [
        (
            "count(*) journal",
            "SELECT count(*) FROM annotation_journal",
        ),
        ("count(*) annotations", "SELECT count(*) FROM annotations"),
    ];
    let maintainer = many.maintainer().await?;
    let before = maintainer.stats().await?;
    let mut baseline = Vec::new();
    for (label, sql) in queries {
        baseline.push((
            label,
            time_query(&one, sql).await?.0,
            time_query(&many, sql).await?.0,
        ));
    }
    let started = Instant::now();
    let report = maintainer
        .run(&MaintainOptions {
            snapshot_retention: Duration::ZERO,
            min_snapshots: 1,
            ..MaintainOptions::default()
        })
        .await?;
    let took = started.elapsed().as_secs_f64();
    let after = maintainer.stats().await?;
    println!(
        "maintain took {took:.2} s: {} files / {} manifests / {} snapshots -> {} / {} / {}",
        before.data_files,
        before.manifests,
        before.snapshots,
        after.data_files,
        after.manifests,
        after.snapshots
    );
    if let Some(c) = report.compaction {
        println!(
            "  rewrote {} files ({:.1} MiB) into {} ({:.1} MiB)",
            c.files_rewritten,
            c.bytes_rewritten as f64 / 1048576.0,
            c.files_written,
            c.bytes_written as f64 / 1048576.0
        );
    }
    let one_stats = one.maintainer().await?.stats().await?;
    println!(
        "one commit: {} files ({:.1} MiB); after maintain: {} files ({:.1} MiB)",
        one_stats.data_files,
        one_stats.data_bytes as f64 / 1048576.0,
        after.data_files,
        after.data_bytes as f64 / 1048576.0
    );
    println!(
        "{:<22} {:>12} {:>16} {:>16} {:>10} {:>10}",
        "query", "one commit", "500 commits", "after maintain", "before/1", "after/1"
    );
    for (label, first_one_s, many_s) in baseline {
        let sql = queries.iter().find(|q| q.0 == label).map_or("", |q| q.1);
        let (after_s, _) = time_query(&many, sql).await?;
        // The one-commit table again, right after, so both sides of the last ratio meet the
        // same machine state.
        let one_s = first_one_s.min(time_query(&one, sql).await?.0);
        println!(
            "{label:<22} {:>10.3} s {:>14.3} s {:>14.3} s {:>9.1}x {:>9.2}x",
            one_s,
            many_s,
            after_s,
            many_s / one_s,
            after_s / one_s
        );
    }
    Ok(())
}

async fn commits(dir: &std::path::Path) -> Result<()> {
    let commits = env_usize("ANNOTABLE_BENCH_COMMITS", 2000);
    let per_commit = env_usize("ANNOTABLE_BENCH_ROWS_PER_COMMIT", 200);
    println!("== commit latency: {commits} commits of {per_commit} rows");
    let plain = table(dir, "plain").await?;
    let kept = table(dir, "maintained").await?;
    let maintainer = kept.maintainer().await?;
    let options = MaintainOptions {
        snapshot_retention: Duration::ZERO,
        min_snapshots: 100,
        orphan_age: Duration::from_secs(3600),
        ..MaintainOptions::default()
    };
    println!(
        "{:>8} {:>14} {:>12} {:>16} {:>14} {:>14}",
        "commits", "plain p50 ms", "plain max", "maintained p50", "maintained max", "maintain s"
    );
    let mut windows: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut maintain_secs = 0.0;
    for c in 0..commits {
        // Alternate which table commits first, so neither always meets a warm cache.
        for (i, t) in [&plain, &kept].into_iter().enumerate() {
            let rows = realistic_rows_range(
                c * per_commit..(c + 1) * per_commit,
                commits * per_commit,
                11,
            );
            let started = Instant::now();
            t.journal
                .append(Batch::new(Source::Notification, rows))
                .await?;
            windows[i].push(started.elapsed().as_secs_f64() * 1000.0);
        }
        if (c + 1) % 100 == 0 {
            let started = Instant::now();
            maintainer.run(&options).await?;
            maintain_secs = started.elapsed().as_secs_f64();
            let stat = |w: &mut Vec<f64>| {
                w.sort_by(f64::total_cmp);
                let s = (w[w.len() / 2], w[w.len() - 1]);
                w.clear();
                s
            };
            let (p50, max) = stat(&mut windows[0]);
            let (mp50, mmax) = stat(&mut windows[1]);
            println!(
                "{:>8} {:>14.1} {:>12.1} {:>16.1} {:>14.1} {:>14.2}",
                c + 1,
                p50,
                max,
                mp50,
                mmax,
                maintain_secs
            );
        }
    }
    let ps = plain.journal.load().await?;
    let ks = kept.journal.load().await?;
    let size = |t: &iceberg::table::Table| {
        t.metadata_location()
            .and_then(|l| std::fs::metadata(l.trim_start_matches("file://")).ok())
            .map_or(0, |m| m.len())
    };
    println!(
        "metadata file: plain {:.1} MiB ({} snapshots), maintained {:.1} MiB ({} snapshots); last maintain {maintain_secs:.2} s",
        size(&ps) as f64 / 1048576.0,
        ps.metadata().snapshots().len(),
        size(&ks) as f64 / 1048576.0,
        ks.metadata().snapshots().len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let only = std::env::var("ANNOTABLE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "reads" {
        reads(&dir.path().join("reads")).await?;
    }
    if only.is_empty() || only == "commits" {
        commits(&dir.path().join("commits")).await?;
    }
    Ok(())
}
