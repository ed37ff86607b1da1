//! Counters and latency histograms of the S3 calls, for the service's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The S3 operations the source makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GetObjectAnnotation.
    GetAnnotation,
    /// ListObjectAnnotations.
    ListAnnotations,
    /// ListObjectsV2, ListObjectVersions and GetBucketVersioning (backfill's walk).
    ListObjects,
}

impl Op {
    /// Every operation, in label order.
    pub const ALL: [Op; 3] = [Op::GetAnnotation, Op::ListAnnotations, Op::ListObjects];

    /// The S3 API name.
    pub fn name(self) -> &'static str {
        match self {
            Op::GetAnnotation => "GetObjectAnnotation",
            Op::ListAnnotations => "ListObjectAnnotations",
            Op::ListObjects => "ListObjects",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the latency histogram buckets; a last `+Inf` bucket is implied.
pub const LATENCY_BUCKETS_SECONDS: [f64; 10] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Per-operation counters; lock-free, shared by every clone of the source.
#[derive(Debug, Default)]
pub struct CallStats {
    ops: [OpStats; Op::ALL.len()],
}

#[derive(Debug, Default)]
struct OpStats {
    calls: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    latency_sum_micros: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
}

/// A copy of one operation's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpSnapshot {
    /// Calls made (every attempt).
    pub calls: u64,
    /// Attempts that failed (throttling and 5xx included; not-found answers are not errors).
    pub errors: u64,
    /// Attempts that were retried.
    pub retries: u64,
    /// Summed latency in seconds.
    pub latency_sum_seconds: f64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_SECONDS`], then `+Inf`.
    pub cumulative_buckets: Vec<u64>,
}

impl CallStats {
    pub(crate) fn record(&self, op: Op, latency: Duration, failed: bool) {
        let s = &self.ops[op.index()];
        s.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        s.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self, op: Op) {
        let s = &self.ops[op.index()];
        s.retries.fetch_add(1, Ordering::Relaxed);
        s.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `op` now.
    pub fn snapshot(&self, op: Op) -> OpSnapshot {
        let s = &self.ops[op.index()];
        let mut running = 0;
        let cumulative_buckets = s
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        OpSnapshot {
            calls: s.calls.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            latency_sum_seconds: s.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            cumulative_buckets,
        }
    }

    /// Calls made in all (every operation, every attempt).
    pub fn total_calls(&self) -> u64 {
        self.ops
            .iter()
            .map(|s| s.calls.load(Ordering::Relaxed))
            .sum()
    }
}
