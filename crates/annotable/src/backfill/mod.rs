//! `annotable backfill`: walk a bucket (current or all object versions under a prefix), read
//! every version's annotations, and append the same rows `serve` would (`source = backfill`).
//!
//! **Pipeline.** A lister task pages through the bucket into a bounded channel; the reads run
//! `concurrency` object versions at a time but come out *in listing order* (an ordered buffered
//! stream), so the rows handed to the committer always cover a contiguous stretch of the
//! listing; the committer runs beside the reads (a channel of one batch), so listing, fetching
//! and writing overlap and memory is bounded by the channel sizes, never by the bucket.
//!
//! **Checkpoint.** Each commit carries, in its snapshot summary, the run id and the listing
//! position of its last object version. The summary is committed atomically with the rows, so
//! a run killed at any point resumes exactly after the last committed object version: nothing
//! committed is fetched or written again. The position is also copied into the lease document
//! ([`checkpoint`]) after each commit, which survives snapshot expiry.
//!
//! **Beside `serve`.** Every version read is an `OBJECT_RESET` plus a `PUT` per annotation,
//! stamped with the time the listing of that version was sent (the same sequence-number rule
//! as `serve`): a notification row observed later wins, one observed earlier loses, so the
//! table converges whatever the interleaving.
//!
//! **Where annotations cannot exist** (a directory bucket, or a store answering NotImplemented)
//! the run stops before creating the table, taking a lease or writing anything.

mod checkpoint;
mod commit;
mod outbox;
mod progress;
mod read;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use annotation_source::{
    ListPosition, ListScope, Listed, Op, ReadBudget, Reservation, SourceError, is_directory_bucket,
};
use annotation_table::{JournalTable, TableError};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use progress::{Counters, ProgressMode};

use crate::batcher::{Batcher, FlushPolicy};
use crate::config::{Config, ConfigError, defaults};
use crate::lease::Holder;
use crate::lease::document::StateStore;
use crate::object_rows::{KeyObservation, ObjectScope};
use crate::rows::{Observed, sequence_number};
use crate::set_reader::SetReader;
use checkpoint::{StoredPosition, WalkLease};
use commit::commit_loop;
use outbox::{Outbox, Pending};
use read::{Read, ReadResult, list_all, read_one, skip_log, skippable};

/// Snapshot-summary key: the backfill run a commit belongs to.
pub const SUMMARY_RUN: &str = "annotable.backfill.run";
/// Snapshot-summary key: the listing position after the commit's last object version (JSON).
pub const SUMMARY_POSITION: &str = "annotable.backfill.position";
/// Snapshot-summary key: object versions committed by the run so far.
pub const SUMMARY_OBJECTS: &str = "annotable.backfill.objects";

/// A backfill that could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The table.
    #[error(transparent)]
    Table(#[from] TableError),
    /// S3 (listing or reading annotations).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Another backfill of the same scope is running.
    #[error("{0}")]
    Held(Box<LeaseHeld>),
    /// The lease was taken over (this process stalled longer than the lease lasts).
    #[error(
        "lost the backfill lease at {location}: another backfill took it over (this process stalled longer than backfill.lease_ttl_secs). Stopped before committing more; the other run continues the work"
    )]
    LeaseLost {
        /// The lease document.
        location: String,
    },
    /// The lease/checkpoint document cannot be read or written.
    #[error(
        "backfill state {location}: {reason}. Check backfill.state_url (ANNOTABLE_BACKFILL_STATE_URL) and s3:GetObject/s3:PutObject there"
    )]
    State {
        /// The document.
        location: String,
        /// What failed.
        reason: String,
    },
}

/// Who holds the lease a backfill wanted.
#[derive(Debug)]
pub struct LeaseHeld {
    /// Bucket, prefix and versions.
    pub scope: String,
    /// The table.
    pub table: String,
    /// Who holds it.
    pub holder: Holder,
    /// Until when.
    pub until: chrono::DateTime<Utc>,
    /// The lease document.
    pub location: String,
}

impl std::fmt::Display for LeaseHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let LeaseHeld {
            scope,
            table,
            holder,
            until,
            location,
        } = self;
        write!(
            f,
            "a backfill of {scope} into {table} is already running: {holder} holds the lease until {until} (it renews it while it runs). Wait for it to finish; if that process is gone, run again after {until} and this run will resume its work. Lease: {location}"
        )
    }
}

impl BackfillError {
    /// Whether running again later may succeed (and resume).
    pub fn is_retryable(&self) -> bool {
        match self {
            BackfillError::Table(e) => e.is_retryable(),
            BackfillError::Source(e) => e.is_retryable(),
            BackfillError::Held(_) | BackfillError::State { .. } => true,
            BackfillError::LeaseLost { .. } | BackfillError::Config(_) => false,
        }
    }
}

/// What to backfill and how.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The walk.
    pub scope: ListScope,
    /// Object versions read at once.
    pub concurrency: usize,
    /// List and read, count what would be written, write nothing (no lease, no table).
    pub dry_run: bool,
    /// Commit when this many rows are pending.
    pub flush_rows: usize,
    /// Commit when this many bytes are pending.
    pub flush_bytes: usize,
    /// Commit at least this often.
    pub flush_age: Duration,
    /// Payload bytes read and not yet committed, at most: versions whose set exceeds this
    /// divided among the `concurrency` reads are read part by part, in listing order.
    pub read_buffer_bytes: u64,
    /// Lease duration without renewal.
    pub lease_ttl: Duration,
    /// Progress display.
    pub progress: ProgressMode,
    /// Interval of progress log lines.
    pub progress_interval: Duration,
}

impl BackfillOptions {
    /// Options from the configuration for `scope`.
    pub fn from_config(config: &Config, scope: ListScope) -> Self {
        let b = &config.backfill;
        let read_buffer_bytes = b
            .read_buffer_bytes
            .unwrap_or(defaults::READ_BUFFER_BYTES)
            .max(crate::serve::MIN_READ_BUFFER_BYTES);
        BackfillOptions {
            scope,
            concurrency: b
                .concurrency
                .unwrap_or(defaults::BACKFILL_CONCURRENCY)
                .max(1),
            dry_run: false,
            flush_rows: b.flush_rows.unwrap_or(defaults::BACKFILL_FLUSH_ROWS).max(1),
            flush_bytes: b.flush_bytes.unwrap_or(defaults::FLUSH_BYTES).max(1),
            flush_age: Duration::from_millis(
                b.flush_age_ms
                    .unwrap_or(defaults::BACKFILL_FLUSH_AGE_MS)
                    .max(1),
            ),
            read_buffer_bytes,
            lease_ttl: Duration::from_secs(
                b.lease_ttl_secs
                    .unwrap_or(defaults::BACKFILL_LEASE_TTL_SECS)
                    .max(3),
            ),
            progress: ProgressMode::Auto,
            progress_interval: Duration::from_secs(10),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    /// The table written (empty for a dry run).
    pub table: String,
    /// `s3://bucket/prefix`.
    pub target: String,
    /// The run id (across restarts).
    pub run_id: String,
    /// Object versions committed by earlier attempts of this run (skipped, not re-read).
    pub resumed_after: u64,
    /// Object versions listed by this process.
    pub objects_listed: u64,
    /// Object versions read by this process.
    pub objects_read: u64,
    /// Versions that vanished between the listing and the read.
    pub objects_gone: u64,
    /// Versions S3 refused to read (AccessDenied, a non-UTF-8 payload, …): logged, no row.
    pub objects_skipped: u64,
    /// Annotations fetched.
    pub annotations: u64,
    /// Rows committed (or, in a dry run, that would have been).
    pub rows: u64,
    /// Commits.
    pub commits: u64,
    /// Object journal rows committed (or, in a dry run, that would be).
    pub object_rows: u64,
    /// S3 calls by operation (every attempt).
    pub s3_calls: BTreeMap<&'static str, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// The listing reached its end and everything is committed.
    pub completed: bool,
    /// Nothing was written.
    pub dry_run: bool,
}

impl BackfillReport {
    /// Every S3 call made.
    pub fn total_s3_calls(&self) -> u64 {
        self.s3_calls.values().sum()
    }
}

impl std::fmt::Display for BackfillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        let state = match (self.dry_run, self.completed) {
            (true, _) => "dry run complete (nothing written)",
            (false, true) => "backfill complete",
            (false, false) => "backfill stopped before the end (run again to resume)",
        };
        writeln!(f, "{state}: {} → {}", self.target, self.table)?;
        if self.resumed_after > 0 {
            writeln!(
                f,
                "  resumed run {} after {} object versions committed earlier",
                self.run_id, self.resumed_after
            )?;
        }
        writeln!(
            f,
            "  object versions: {} listed, {} read, {} gone before they could be read",
            self.objects_listed, self.objects_read, self.objects_gone
        )?;
        if self.objects_skipped > 0 {
            writeln!(
                f,
                "  skipped:         {} object versions S3 refused to read (see the errors logged above)",
                self.objects_skipped
            )?;
        }
        writeln!(f, "  annotations:     {}", self.annotations)?;
        if self.object_rows > 0 {
            writeln!(f, "  object rows:     {}", self.object_rows)?;
        }
        let verb = if self.dry_run {
            "would write"
        } else {
            "committed"
        };
        writeln!(
            f,
            "  rows:            {} {verb} in {} commit{}",
            self.rows,
            self.commits,
            if self.commits == 1 { "" } else { "s" }
        )?;
        let calls: Vec<String> = self
            .s3_calls
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        writeln!(
            f,
            "  S3 calls:        {} ({})",
            self.total_s3_calls(),
            calls.join(", ")
        )?;
        write!(
            f,
            "  time:            {:.1} s ({:.0} objects/s, {:.0} annotations/s)",
            secs,
            self.objects_read as f64 / secs,
            self.annotations as f64 / secs
        )
    }
}

/// Runs a backfill until the listing ends, `shutdown` fires (commits what is read, then
/// returns an incomplete report), or an error stops it.
pub async fn run(
    config: &Config,
    options: BackfillOptions,
    shutdown: CancellationToken,
) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    let objects = config.object_prefixes().map(ObjectScope::new);
    let scope = ListScope {
        delete_markers: objects.is_some(),
        ..options.scope.clone()
    };
    let target = format!("s3://{}/{}", scope.bucket, scope.prefix);
    if is_directory_bucket(&scope.bucket) {
        return Err(SourceError::DirectoryBucket {
            bucket: scope.bucket.clone(),
        }
        .into());
    }
    let sdk = crate::aws::sdk_config(config).await;
    let source = crate::aws::annotation_source(config, &sdk);
    // Listings are stamped like notifications: against S3's clock (see annotation_source).
    source
        .calibrate_clock(std::time::Duration::from_millis(1_200))
        .await;
    let versioned = source.bucket_is_versioned(&scope.bucket).await?;

    // Prove the annotation API exists before creating or writing anything.
    let first = source
        .list_page(&scope, versioned, &ListPosition::default())
        .await?;
    let probe = first
        .objects
        .first()
        .map(|l| l.object.clone())
        .unwrap_or_else(|| s3_events::ObjectRef {
            bucket: scope.bucket.clone(),
            key: format!("{}annotable-probe", scope.prefix),
            version_id: None,
        });
    source.list_version(&probe).await?;

    let counters = Arc::new(Counters::default());
    let mut report = BackfillReport {
        target: target.clone(),
        dry_run: options.dry_run,
        ..BackfillReport::default()
    };

    let (table, object_table, lease, start) = if options.dry_run {
        (None, None, None, None)
    } else {
        let (_, catalog) = config.connect_catalog::<BackfillError>().await?;
        let object_table = match objects {
            Some(_) => Some(
                JournalTable::open_objects(
                    catalog.clone(),
                    config.namespace(),
                    Some(config.objects_table()),
                )
                .await?,
            ),
            None => None,
        };
        let table = JournalTable::open(catalog, config.namespace(), Some(config.table())).await?;
        report.table = table.ident().to_string();
        let state_url = config.backfill_state_url()?;
        // Documents on the warehouse's bucket are reached as the tables are; elsewhere, as
        // the annotated buckets are.
        let on_warehouse = config.catalog.warehouse.as_deref().is_some_and(|w| {
            warehouse_bucket(w).is_some() && warehouse_bucket(w) == warehouse_bucket(&state_url)
        });
        let client = if on_warehouse {
            crate::aws::warehouse_s3_client(config, &sdk)
        } else {
            crate::aws::s3_client(config, &sdk)
        };
        let store = StateStore::from_url(&state_url, client);
        let holder = Holder::this_process(table.writer_id());
        let (lease, mut start) = WalkLease::acquire(
            store,
            &table.ident().to_string(),
            &scope,
            holder,
            options.lease_ttl,
        )
        .await?;
        // The position committed with the rows is authoritative; the lease document may lag it
        // by one batch (a crash between the commit and the document update).
        if let Some(summary) = table
            .latest_summary_with(SUMMARY_RUN, &start.run_id)
            .await?
        {
            let objects = summary
                .get(SUMMARY_OBJECTS)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            let position = summary
                .get(SUMMARY_POSITION)
                .and_then(|p| serde_json::from_str::<StoredPosition>(p).ok());
            if objects > start.objects_done
                && let Some(position) = position
            {
                start.objects_done = objects;
                start.position = Some(position);
            }
        }
        (
            Some(table),
            object_table,
            Some(Arc::new(lease)),
            Some(start),
        )
    };
    let resume_from = start
        .as_ref()
        .and_then(|s| s.position.as_ref())
        .map(ListPosition::from);
    let objects_before = start.as_ref().map_or(0, |s| s.objects_done);
    report.resumed_after = objects_before;
    report.run_id = start.as_ref().map(|s| s.run_id.clone()).unwrap_or_default();
    if let Some(lease) = &lease {
        let took_over = start
            .as_ref()
            .and_then(|s| s.took_over.as_ref())
            .map(Holder::to_string);
        info!(target_scope = %target, table = %report.table, run_id = %report.run_id, lease = %lease.location(),
            resumed_after = objects_before, took_over_from = took_over, versioned, versions = scope.versions.as_str(), "backfill starting");
    }

    let stop_progress = CancellationToken::new();
    let progress_task = tokio::spawn(progress::report(
        counters.clone(),
        options.progress,
        options.progress_interval,
        target.clone(),
        stop_progress.clone(),
    ));
    let stop_all = shutdown.child_token();
    let renewer = lease.clone().map(|lease| {
        let stop = stop_all.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(lease.renew_every()) => {}
                }
                if let Err(e) = lease.renew().await {
                    match e {
                        BackfillError::LeaseLost { .. } => {
                            stop.cancel();
                            return Err(e);
                        }
                        other => {
                            warn!(error = %other, "could not renew the backfill lease; retrying")
                        }
                    }
                }
            }
        })
    });

    // Lister → ordered reads → batches → committer.
    let (list_tx, list_rx) = mpsc::channel::<Result<Listed, SourceError>>(2_000);
    let first_page = resume_from.is_none().then_some(first);
    let lister = tokio::spawn(list_all(
        source.clone(),
        scope.clone(),
        versioned,
        first_page,
        resume_from.unwrap_or_default(),
        list_tx,
        counters.clone(),
        stop_all.clone(),
    ));
    let (commit_tx, commit_rx) = mpsc::channel::<Pending>(1);
    let committer = tokio::spawn(commit_loop(
        table.clone(),
        object_table,
        lease.clone(),
        report.run_id.clone(),
        objects_before,
        commit_rx,
        counters.clone(),
    ));

    let writer = table
        .as_ref()
        .map_or_else(|| "dryrun00".to_string(), |t| t.writer_id().to_string());
    // The read buffer: a quarter for the versions read concurrently (each read whole only if
    // it fits its share), the rest for the parts of larger sets and the batches holding them.
    let flush_bytes = options
        .flush_bytes
        .min(usize::try_from(options.read_buffer_bytes / 8).unwrap_or(usize::MAX))
        .max(1);
    let whole_limit = options.read_buffer_bytes / 4 / options.concurrency.max(1) as u64;
    let prefetch = SetReader::new(source.clone(), writer.clone(), u64::MAX, None);
    let in_parts = SetReader::new(
        source.clone(),
        writer.clone(),
        flush_bytes as u64,
        Some(ReadBudget::new(options.read_buffer_bytes * 3 / 4)),
    );
    let mut reads = Box::pin(
        futures::stream::unfold(list_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .map(|item| {
            let prefetch = prefetch.clone();
            async move {
                let listed = item?;
                read_one(&prefetch, listed, whole_limit).await
            }
        })
        .buffered(options.concurrency),
    );

    let mut outbox = Outbox {
        batch: Batcher::new(FlushPolicy {
            rows: options.flush_rows,
            bytes: flush_bytes,
            age: options.flush_age,
        }),
        dry_run: options.dry_run,
        dry_rows: 0,
        dry_object_rows: 0,
        tx: commit_tx,
        closed: false,
    };
    let mut failure: Option<BackfillError> = None;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop_all.cancelled() => break,
            _ = outbox.batch.aged() => {
                outbox.flush().await;
                if outbox.closed { break; }
                continue;
            }
            next = reads.next() => next,
        };
        let Some(result) = next else { break };
        let ReadResult { listed, read } = match result {
            Ok(read) => read,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        // The version's object row goes before its annotation rows, in the same batch.
        if let Some(objects) = &objects
            && objects.covers(&listed.object.key)
        {
            outbox.add_object(&KeyObservation {
                bucket: listed.object.bucket.clone(),
                key: listed.object.key.clone(),
                sequence_number: sequence_number(listed.listed_at, &writer),
                versions: vec![(listed.object.clone(), listed.facts.clone())],
                whole_key: false,
                context: None,
            });
        }
        let (observation, held) = match read {
            Read::Whole(observation) => (Some(*observation), Reservation::none()),
            Read::Skipped => (None, Reservation::none()),
            Read::Marker => {
                counters.read.fetch_add(1, Ordering::Relaxed);
                outbox.complete(listed.position);
                outbox.flush_if_full().await;
                if outbox.closed {
                    break;
                }
                continue;
            }
            Read::Deferred(set) => {
                let mut parts = in_parts.read(set, None);
                let mut last = None;
                let mut error = None;
                loop {
                    match parts.next().await {
                        Ok(Some(part)) if part.last => {
                            last = Some(part);
                            break;
                        }
                        Ok(Some(part)) => {
                            let n = part.observation.observed.max_rows() as u64 - 1;
                            report.annotations += n;
                            counters.annotations.fetch_add(n, Ordering::Relaxed);
                            outbox.add(&part.observation, part.held);
                            outbox.flush_if_full().await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                match (last, error) {
                    (Some(last), _) => (Some(last.observation), last.held),
                    (None, Some(e)) if skippable(&e) => {
                        skip_log(&listed, &e);
                        (None, Reservation::none())
                    }
                    (None, Some(e)) => {
                        failure = Some(e.into());
                        break;
                    }
                    (None, None) => (None, Reservation::none()),
                }
            }
        };
        counters.read.fetch_add(1, Ordering::Relaxed);
        report.objects_read += 1;
        match &observation {
            Some(o) => {
                let annotations = match &o.observed {
                    Observed::Version(None) => {
                        report.objects_gone += 1;
                        0
                    }
                    other => other.max_rows() as u64 - 1,
                };
                report.annotations += annotations;
                counters
                    .annotations
                    .fetch_add(annotations, Ordering::Relaxed);
                outbox.add(o, held);
            }
            None => report.objects_skipped += 1,
        }
        outbox.complete(listed.position);
        outbox.flush_if_full().await;
        if outbox.closed {
            break;
        }
    }
    let (dry_rows, dry_object_rows) = (outbox.dry_rows, outbox.dry_object_rows);
    // Commit what was read in order (on a stop too: it is a contiguous stretch of the listing).
    if failure.is_none() {
        outbox.flush().await;
    }
    drop(outbox);
    drop(reads);
    stop_all.cancel();
    let listing = lister.await.unwrap_or(Ok(()));
    let committed = committer.await.unwrap_or_else(|e| {
        Err(BackfillError::State {
            location: "committer".into(),
            reason: e.to_string(),
        })
    });
    let renewed = match renewer {
        Some(task) => task.await.unwrap_or(Ok(())),
        None => Ok(()),
    };
    stop_progress.cancel();
    let _ = progress_task.await;

    let listing_done = counters.listing_done.load(Ordering::Relaxed);
    let everything_read =
        counters.read.load(Ordering::Relaxed) == counters.listed.load(Ordering::Relaxed);
    report.objects_listed = counters.listed.load(Ordering::Relaxed);
    report.rows = if options.dry_run {
        dry_rows
    } else {
        counters.rows.load(Ordering::Relaxed)
    };
    report.commits = counters.commits.load(Ordering::Relaxed);
    report.object_rows = if options.dry_run {
        dry_object_rows
    } else {
        counters.object_rows.load(Ordering::Relaxed)
    };
    report.s3_calls = Op::ALL
        .iter()
        .map(|op| (op.name(), source.stats().snapshot(*op).calls))
        .collect();
    report.elapsed = started.elapsed();
    let error = failure
        .or_else(|| committed.err())
        .or_else(|| renewed.err())
        .or_else(|| listing.err().map(BackfillError::from));
    report.completed =
        error.is_none() && listing_done && everything_read && !shutdown.is_cancelled();
    if let Some(lease) = &lease {
        let lost = matches!(error, Some(BackfillError::LeaseLost { .. }));
        if !lost && let Err(e) = lease.release(report.completed).await {
            warn!(error = %e, "could not release the backfill lease; it expires by itself");
        }
    }
    match error {
        Some(e) => {
            warn!(target_scope = %target, objects_read = report.objects_read, rows = report.rows, "backfill stopped: {e}");
            Err(e)
        }
        None => Ok(report),
    }
}

/// The bucket of an `s3://bucket/...` URL.
fn warehouse_bucket(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))?;
    Some(rest.split('/').next().unwrap_or(rest))
}

#[cfg(test)]
mod state_location_tests {
    use super::warehouse_bucket;

    #[test]
    fn the_bucket_of_a_state_url() {
        assert_eq!(warehouse_bucket("s3://lake/tables"), Some("lake"));
        assert_eq!(warehouse_bucket("s3a://lake"), Some("lake"));
        assert_eq!(warehouse_bucket("/var/lib/annotable"), None);
    }
}
