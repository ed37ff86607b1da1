//! Prometheus metrics of the service (`/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use annotation_source::{CallStats, LATENCY_BUCKETS_SECONDS, Op, OpSnapshot};
use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{ServeReport, StageTime, StageTimes};

/// Every counter and histogram `serve` exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) received: Counter,
    pub(crate) acked: Counter,
    pub(crate) failed: Counter,
    pub(crate) poisoned: Counter,
    pub(crate) delete_failed: Counter,
    pub(crate) receive_errors: Counter,
    pub(crate) events_ignored: Counter,
    pub(crate) visibility_extended: Counter,
    pub(crate) rows_written: Counter,
    pub(crate) rows_suppressed: Counter,
    pub(crate) commits: Counter,
    pub(crate) batch_rows: Histogram,
    pub(crate) batch_bytes: Histogram,
    pub(crate) commit_seconds: StageClock,
    pub(crate) receive_seconds: StageClock,
    pub(crate) resolve_seconds: StageClock,
    pub(crate) delete_seconds: StageClock,
    pub(crate) lag_seconds: Histogram,
    /// When the first message was received and the last one deleted (nanoseconds after
    /// `started`, 0: not yet): the window a backlog drained in.
    first_received_nanos: AtomicU64,
    last_acked_nanos: AtomicU64,
    started: Instant,
    pub(crate) clock_correction_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) clock_uncertainty_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) state_refreshes: Counter,
    pub(crate) state_refresh_failures: Counter,
    pub(crate) state_refresh_seconds: Histogram,
    pub(crate) state_bytes_rewritten: Counter,
    pub(crate) state_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    /// Registers every metric; S3 call statistics are read from `s3` at scrape time.
    pub fn new(s3: Arc<CallStats>) -> Metrics {
        let mut registry = Registry::with_prefix("annotable");
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let received = counter(&mut registry, "messages_received", "SQS messages received");
        let acked = counter(
            &mut registry,
            "messages_acked",
            "Messages deleted after their rows were committed",
        );
        let failed = counter(
            &mut registry,
            "messages_failed",
            "Messages released for a retry (transient S3 or commit failures)",
        );
        let poisoned = counter(
            &mut registry,
            "messages_poisoned",
            "Messages sent to the dead-letter path",
        );
        let delete_failed = counter(
            &mut registry,
            "messages_delete_failed",
            "Deletes that failed after commit (the message will be redelivered)",
        );
        let receive_errors = counter(
            &mut registry,
            "receive_errors",
            "Failed ReceiveMessage calls",
        );
        let events_ignored = counter(
            &mut registry,
            "events_ignored",
            "Events that need no row (test events, delete markers, unrelated types)",
        );
        let visibility_extended = counter(
            &mut registry,
            "visibility_extended",
            "Visibility extensions by the heartbeat",
        );
        let rows_written = counter(&mut registry, "rows_written", "Journal rows committed");
        let rows_suppressed = counter(
            &mut registry,
            "observations_suppressed",
            "Observations that restated the last written state and wrote nothing",
        );
        let commits = counter(&mut registry, "commits", "Iceberg commits");
        let hist = |registry: &mut Registry, name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::new(buckets);
            registry.register(name, help, h.clone());
            h
        };
        let batch_rows = hist(
            &mut registry,
            "batch_rows",
            "Rows per commit",
            vec![1.0, 10.0, 100.0, 1e3, 1e4, 1e5],
        );
        let batch_bytes = hist(
            &mut registry,
            "batch_bytes",
            "Approximate bytes per commit",
            vec![1e3, 1e4, 1e5, 1e6, 1e7, 1e8],
        );
        let stage = |registry: &mut Registry, name: &str, help: &str, buckets: Vec<f64>| {
            StageClock::new(hist(registry, name, help, buckets))
        };
        let commit_seconds = stage(
            &mut registry,
            "commit_seconds",
            "Time to write and commit a batch (retries included)",
            vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        );
        let stage_buckets = || vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
        let receive_seconds = stage(
            &mut registry,
            "receive_seconds",
            "Time of ReceiveMessage calls that returned messages",
            stage_buckets(),
        );
        let resolve_seconds = stage(
            &mut registry,
            "resolve_seconds",
            "Time to resolve a message: the S3 reads of all its events",
            stage_buckets(),
        );
        let delete_seconds = stage(
            &mut registry,
            "delete_seconds",
            "Time of DeleteMessageBatch calls",
            stage_buckets(),
        );
        let lag_seconds = hist(
            &mut registry,
            "lag_seconds",
            "Commit time minus event time, per event",
            vec![0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0],
        );
        let clock_correction_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "clock_correction_seconds",
            "Correction applied to this host's clock to agree with S3's Date headers (0: none needed)",
            clock_correction_seconds.clone(),
        );
        let clock_uncertainty_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "clock_uncertainty_seconds",
            "Width of the range S3's Date headers allow for this host's clock offset",
            clock_uncertainty_seconds.clone(),
        );
        let state_refreshes = counter(
            &mut registry,
            "state_refreshes",
            "Refreshes of the annotations table that committed",
        );
        let state_refresh_failures = counter(
            &mut registry,
            "state_refresh_failures",
            "Refreshes of the annotations table that failed (tried again next round)",
        );
        let state_refresh_seconds = hist(
            &mut registry,
            "state_refresh_seconds",
            "Time to refresh the annotations table",
            vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0],
        );
        let state_bytes_rewritten = counter(
            &mut registry,
            "state_bytes_written",
            "Bytes of annotations and tombstone files written by refreshes",
        );
        let state_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "state_lag_seconds",
            "How far the annotations table (as plain Iceberg readers see it) is behind the journal: the age of the oldest journal commit it has not folded in, after the last refresh",
            state_lag_seconds.clone(),
        );
        registry.register_collector(Box::new(S3Calls(s3)));
        Metrics {
            registry,
            state_refreshes,
            state_refresh_failures,
            state_refresh_seconds,
            state_bytes_rewritten,
            state_lag_seconds,
            clock_correction_seconds,
            clock_uncertainty_seconds,
            received,
            acked,
            failed,
            poisoned,
            delete_failed,
            receive_errors,
            events_ignored,
            visibility_extended,
            rows_written,
            rows_suppressed,
            commits,
            batch_rows,
            batch_bytes,
            commit_seconds,
            receive_seconds,
            resolve_seconds,
            delete_seconds,
            lag_seconds,
            first_received_nanos: AtomicU64::new(0),
            last_acked_nanos: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub(crate) fn observe_refresh(
        &self,
        report: &annotation_table::state::RefreshReport,
        lag: std::time::Duration,
    ) {
        if report.snapshot_id.is_some() {
            self.state_refreshes.inc();
            self.state_refresh_seconds
                .observe(report.took.as_secs_f64());
            self.state_bytes_rewritten.inc_by(report.bytes_written);
        }
        self.state_lag_seconds.set(lag.as_secs_f64());
    }

    pub(crate) fn observe_commit(
        &self,
        rows: usize,
        bytes: usize,
        event_times: &[Option<DateTime<Utc>>],
        committed_at: DateTime<Utc>,
    ) {
        self.commits.inc();
        self.rows_written.inc_by(rows as u64);
        self.batch_rows.observe(rows as f64);
        self.batch_bytes.observe(bytes as f64);
        for t in event_times.iter().flatten() {
            let lag = (committed_at - *t).num_milliseconds().max(0) as f64 / 1000.0;
            self.lag_seconds.observe(lag);
        }
    }

    /// Notes that messages arrived (the drain window opens at the first).
    pub(crate) fn observe_received(&self, messages: usize, took: Duration) {
        self.received.inc_by(messages as u64);
        self.receive_seconds.observe(took);
        let at = self.since_start();
        let _ =
            self.first_received_nanos
                .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Notes a DeleteMessageBatch call (the drain window closes at the last).
    pub(crate) fn observe_delete(&self, took: Duration) {
        self.delete_seconds.observe(took);
        self.last_acked_nanos
            .fetch_max(self.since_start(), Ordering::Relaxed);
    }

    fn since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The counters as a report.
    pub fn report(&self) -> ServeReport {
        let first = self.first_received_nanos.load(Ordering::Relaxed);
        let last = self.last_acked_nanos.load(Ordering::Relaxed);
        ServeReport {
            stages: StageTimes {
                receive: self.receive_seconds.total(),
                resolve: self.resolve_seconds.total(),
                commit: self.commit_seconds.total(),
                delete: self.delete_seconds.total(),
                drain: Duration::from_nanos(if first > 0 {
                    last.saturating_sub(first)
                } else {
                    0
                }),
            },
            received: self.received.get(),
            acked: self.acked.get(),
            rows: self.rows_written.get(),
            commits: self.commits.get(),
            poisoned: self.poisoned.get(),
            extended: self.visibility_extended.get(),
            deadline_hit: false,
        }
    }

    /// The Prometheus (OpenMetrics) text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Which counter of an operation's snapshot a family shows.
type CounterOf = fn(&OpSnapshot) -> u64;

/// The S3 call statistics of the source, read at scrape time: calls, errors and latency per
/// operation.
#[derive(Debug)]
struct S3Calls(Arc<CallStats>);

impl Collector for S3Calls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snaps: Vec<_> = Op::ALL
            .iter()
            .map(|op| (op.name(), self.0.snapshot(*op)))
            .collect();
        let counters: [(&str, &str, CounterOf); 2] = [
            ("s3_calls", "S3 calls made (every attempt)", |s| s.calls),
            (
                "s3_errors",
                "S3 attempts that failed (throttling, 5xx, refusals)",
                |s| s.errors,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (op, s) in &snaps {
                ConstCounter::new(value(s)).encode(family.encode_family(&[("op", *op)])?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "s3_call_seconds",
            "S3 call latency",
            None,
            MetricType::Histogram,
        )?;
        for (op, s) in &snaps {
            // The snapshot's buckets are cumulative; the encoder wants each bucket's own count.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(&s.cumulative_buckets)
                .map(|(le, &cumulative)| {
                    let own = cumulative.saturating_sub(below);
                    below = cumulative;
                    (le, own)
                })
                .collect();
            let count = s.cumulative_buckets.last().copied().unwrap_or(0);
            latency
                .encode_family(&[("op", *op)])?
                .encode_histogram::<NoLabelSet>(s.latency_sum_seconds, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// A stage's latency histogram plus its running count and total, which the histogram exports but
/// does not let the process read back (the bench reports per-stage time from them).
#[derive(Debug)]
pub(crate) struct StageClock {
    histogram: Histogram,
    count: AtomicU64,
    nanos: AtomicU64,
}

impl StageClock {
    fn new(histogram: Histogram) -> Self {
        Self {
            histogram,
            count: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, took: Duration) {
        self.histogram.observe(took.as_secs_f64());
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn total(&self) -> StageTime {
        StageTime {
            count: self.count.load(Ordering::Relaxed),
            seconds: Duration::from_nanos(self.nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}
