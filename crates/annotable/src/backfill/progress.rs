//! Backfill progress: shared counters, shown as a progress bar on a terminal and as periodic
//! log lines otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on stderr when it is a terminal, else log lines.
    Auto,
    /// Log lines every `interval`.
    Log,
    /// Nothing until the summary.
    Off,
}

/// Counters of one run (this process only; a resumed run's earlier work is in `resumed_at`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Object versions listed.
    pub listed: AtomicU64,
    /// Object versions read (their annotation set fetched).
    pub read: AtomicU64,
    /// Annotations fetched.
    pub annotations: AtomicU64,
    /// Rows committed.
    pub rows: AtomicU64,
    /// Object versions whose rows are committed.
    pub committed_objects: AtomicU64,
    /// Commits.
    pub commits: AtomicU64,
    /// Object journal rows committed.
    pub object_rows: AtomicU64,
    /// The listing reached its end (the total is known).
    pub listing_done: AtomicBool,
}

impl Counters {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// Draws or logs the counters until `stop` is cancelled.
pub(crate) async fn report(
    counters: Arc<Counters>,
    mode: ProgressMode,
    interval: Duration,
    target: String,
    stop: CancellationToken,
) {
    use std::io::IsTerminal;
    let started = Instant::now();
    let bar = (mode == ProgressMode::Auto && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} objects {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(target.clone());
        bar
    });
    if mode == ProgressMode::Off {
        stop.cancelled().await;
        return;
    }
    let tick = if bar.is_some() {
        Duration::from_millis(200)
    } else {
        interval
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        let c = &counters;
        let (listed, read, annotations, rows, done) = (
            Counters::get(&c.listed),
            Counters::get(&c.read),
            Counters::get(&c.annotations),
            Counters::get(&c.rows),
            Counters::get(&c.committed_objects),
        );
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = read as f64 / secs;
        let total_known = c.listing_done.load(Ordering::Relaxed);
        let eta = (total_known && rate > 0.0)
            .then(|| Duration::from_secs_f64(listed.saturating_sub(read) as f64 / rate));
        match &bar {
            Some(bar) => {
                bar.set_length(listed);
                bar.set_position(read);
                bar.set_message(format!(
                    "· {annotations} annotations · {rows} rows committed · {rate:.0} objects/s{}",
                    eta.map(|e| format!(" · ETA {}s", e.as_secs()))
                        .unwrap_or_default()
                ));
                if !total_known {
                    bar.tick();
                }
            }
            None => {
                info!(
                    target_scope = %target,
                    objects_listed = listed,
                    objects_read = read,
                    objects_committed = done,
                    annotations,
                    rows_committed = rows,
                    objects_per_second = format!("{rate:.1}"),
                    eta_seconds = eta.map(|e| e.as_secs()),
                    "backfill progress"
                );
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
