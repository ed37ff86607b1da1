//! `annotable serve`: bucket notifications from SQS → journal rows, for months, losing and
//! duplicating nothing (docs/correctness.md).
//!
//! Stages, joined by bounded channels so memory stays flat whatever the backlog, one file each:
//!
//! ```text
//! intake (N long polls) ─► resolve (S3 reads) ─► batch ─► commit ─► ack
//!    └─ visibility: in-flight registry ◄── heartbeat (ChangeMessageVisibility) ─┘
//!                                 batch ─► dead_letter (poison messages)
//! ```
//!
//! - `intake.rs` receives and parses; `resolve.rs` reads what each event points at, up to
//!   `messages_in_flight` messages at once and within the read budget; `batch.rs` gathers
//!   observations and flushes on rows, bytes or age; `commit.rs` turns them into rows (the
//!   `suppression`), commits once, and only then hands the messages to `ack.rs`,
//!   which deletes them (§3). The receive loop never waits for a commit.
//! - Unparseable messages and permanent S3 refusals take the `dead_letter.rs` path (§3):
//!   left to the queue's redrive policy, or moved to the configured dead-letter queue; never
//!   deleted silently. Transient failures hold the message and retry in place.
//! - `visibility.rs` extends every message still held near its timeout; `warm_up.rs` fills the
//!   suppression memory from the journal at start; `metrics.rs`, `health.rs` and `http.rs` serve
//!   `/metrics`, `/healthz` and `/readyz`.
//! - `maintenance.rs` runs table maintenance and journal retention every
//!   `maintain.serve_interval_secs` when set (off by default).
//! - On shutdown: stop receiving, resolve and commit what is held, delete those messages,
//!   return, all within the deadline; whatever is not deleted by then comes back by itself.

mod ack;
mod batch;
mod commit;
mod dead_letter;
mod health;
mod http;
mod intake;
mod maintenance;
mod metrics;
mod resolve;
mod visibility;
mod warm_up;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use annotation_source::{AnnotationSource, ReadBudget};
use annotation_table::{JournalTable, RetryPolicy, TableError};
use aws_sdk_sqs::types::QueueAttributeName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::defaults;
use crate::config::{Config, ConfigError};
use crate::object_rows::ObjectScope;
use crate::rows;
use crate::set_reader::SetReader;
use crate::suppression::StateCache;

pub use metrics::Metrics;

/// How `serve` runs (defaults in [`ServeOptions::from_config`]).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The queue.
    pub queue_url: String,
    /// Concurrent long-poll receivers.
    pub receivers: usize,
    /// Messages resolved at once.
    pub messages_in_flight: usize,
    /// Flush at this many observations.
    pub flush_rows: usize,
    /// Flush at this many payload bytes (at most a quarter of `read_buffer_bytes`).
    pub flush_bytes: usize,
    /// Payload bytes read and not yet committed, at most; an annotation set larger than a
    /// quarter of it is read and committed in parts.
    pub read_buffer_bytes: u64,
    /// Flush when the oldest held message is this old.
    pub flush_age: Duration,
    /// Visibility timeout to extend held messages to (`None`: the queue's).
    pub visibility_timeout: Option<Duration>,
    /// Deadline of a graceful stop.
    pub shutdown_timeout: Duration,
    /// Stop after this long with no message received and none held.
    pub exit_when_idle: Option<Duration>,
    /// Address of the health and metrics endpoint.
    pub http_addr: Option<SocketAddr>,
    /// Explicit dead-letter queue, for queues without a redrive policy.
    pub dead_letter_queue_url: Option<String>,
    /// Object versions remembered for suppression.
    pub dedup_versions: usize,
    /// Warm-up lookback.
    pub dedup_lookback: Duration,
    /// How far a host's clock may be from S3's (suppression of absences).
    pub max_clock_skew: Duration,
    /// `/healthz` fails when held messages have not moved for this long (outside an outage).
    pub wedged_after: Duration,
}

/// The smallest read buffer: four of the largest annotation.
pub const MIN_READ_BUFFER_BYTES: u64 = 4 * annotation_source::MAX_ANNOTATION_BYTES;

impl ServeOptions {
    /// Options from the configuration; `queue_url` is required.
    pub fn from_config(config: &Config) -> Result<ServeOptions, ConfigError> {
        let s = &config.serve;
        let queue_url = s.queue_url.clone().ok_or_else(|| ConfigError::Invalid {
            key: "serve.queue_url".into(),
            env: crate::config::env_name("serve.queue_url"),
            message: "required: the URL of the SQS queue that receives the bucket notifications (--queue-url)".into(),
        })?;
        let http = s
            .http_addr
            .clone()
            .unwrap_or_else(|| defaults::SERVE_HTTP_ADDR.into());
        let http_addr = if http == "off" {
            None
        } else {
            Some(http.parse().map_err(|_| ConfigError::Invalid {
                key: "serve.http_addr".into(),
                env: crate::config::env_name("serve.http_addr"),
                message: format!("{http:?} is not HOST:PORT (or `off`)"),
            })?)
        };
        let read_buffer_bytes = s
            .read_buffer_bytes
            .unwrap_or(defaults::READ_BUFFER_BYTES)
            .max(MIN_READ_BUFFER_BYTES);
        Ok(ServeOptions {
            queue_url,
            receivers: s.receivers.unwrap_or(defaults::SERVE_RECEIVERS).max(1),
            messages_in_flight: s
                .messages_in_flight
                .unwrap_or(defaults::SERVE_MESSAGES_IN_FLIGHT)
                .max(1),
            flush_rows: s.flush_rows.unwrap_or(defaults::SERVE_FLUSH_ROWS).max(1),
            flush_bytes: s.flush_bytes.unwrap_or(defaults::FLUSH_BYTES).clamp(
                1,
                usize::try_from(read_buffer_bytes / 4).unwrap_or(usize::MAX),
            ),
            read_buffer_bytes,
            flush_age: Duration::from_millis(
                s.flush_age_ms.unwrap_or(defaults::SERVE_FLUSH_AGE_MS),
            ),
            visibility_timeout: s.visibility_timeout_secs.map(Duration::from_secs),
            shutdown_timeout: Duration::from_secs(
                s.shutdown_timeout_secs
                    .unwrap_or(defaults::SERVE_SHUTDOWN_TIMEOUT_SECS),
            ),
            exit_when_idle: None,
            http_addr,
            dead_letter_queue_url: s.dead_letter_queue_url.clone(),
            dedup_versions: s.dedup_versions.unwrap_or(defaults::SERVE_DEDUP_VERSIONS),
            dedup_lookback: Duration::from_secs(
                s.dedup_lookback_secs
                    .unwrap_or(defaults::SERVE_DEDUP_LOOKBACK_SECS),
            ),
            max_clock_skew: Duration::from_millis(
                s.max_clock_skew_ms
                    .unwrap_or(defaults::SERVE_MAX_CLOCK_SKEW_MS),
            ),
            wedged_after: Duration::from_secs(
                s.wedged_after_secs
                    .unwrap_or(defaults::SERVE_WEDGED_AFTER_SECS)
                    .max(1),
            ),
        })
    }
}

/// Why `serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The table could not be opened.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The queue cannot be used.
    #[error("queue {queue_url}: {message}")]
    Queue {
        /// The queue.
        queue_url: String,
        /// What failed and what to do.
        message: String,
    },
    /// The health/metrics endpoint cannot listen.
    #[error(
        "cannot listen on {addr} for /metrics and /healthz: {source}; set serve.http_addr (ANNOTABLE_SERVE_HTTP_ADDR) to a free address or `off`"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// Whether starting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServeError::Table(e) => e.is_retryable(),
            ServeError::Queue { .. } => true,
            _ => false,
        }
    }
}

/// What a run did, for the final log line and tests.
#[derive(Debug, Clone, Default)]
pub struct ServeReport {
    /// Messages received.
    pub received: u64,
    /// Messages deleted after their rows were committed.
    pub acked: u64,
    /// Rows written.
    pub rows: u64,
    /// Commits made.
    pub commits: u64,
    /// Messages sent to the dead-letter path.
    pub poisoned: u64,
    /// Visibility extensions made by the heartbeat.
    pub extended: u64,
    /// Whether the shutdown deadline cut the drain short.
    pub deadline_hit: bool,
    /// Where the time went, stage by stage.
    pub stages: StageTimes,
}

/// Where a run's time went. Stages overlap (many messages resolve at once, receives go on
/// during commits), so each figure is that stage's busy time, not a share of the wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// `ReceiveMessage` calls that returned messages.
    pub receive: StageTime,
    /// Messages resolved (the S3 reads of all their events).
    pub resolve: StageTime,
    /// Batches written and committed.
    pub commit: StageTime,
    /// `DeleteMessageBatch` calls.
    pub delete: StageTime,
    /// From the first message received to the last `DeleteMessageBatch` call's end: the
    /// window a backlog drained in, without start-up and the idle wait before stopping.
    pub drain: Duration,
}

/// A stage's count and summed seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTime {
    /// Calls, messages or batches.
    pub count: u64,
    /// Their summed duration.
    pub seconds: f64,
}

/// What the queue says about itself.
#[derive(Debug, Clone)]
pub(crate) struct QueueInfo {
    pub url: String,
    pub visibility_timeout: Duration,
    pub has_redrive: bool,
}

/// Everything the stages share.
pub(crate) struct Shared {
    pub sqs: aws_sdk_sqs::Client,
    pub source: AnnotationSource,
    pub queue: QueueInfo,
    pub options: ServeOptions,
    pub metrics: Arc<Metrics>,
    pub registry: visibility::Registry,
    pub writer_id: String,
    pub health: Arc<health::Health>,
    /// Payload bytes read and not yet committed.
    pub budget: ReadBudget,
    /// Reads object versions' whole sets under `budget`.
    pub sets: SetReader,
    /// Which keys' versions object events list for the object journal (`None`: objects off).
    pub objects: Option<ObjectScope>,
    /// Cancelled when the process stops receiving: work retried through an outage gives up
    /// then (its messages come back later).
    pub stopping: CancellationToken,
}

/// Runs the service until `shutdown` is cancelled (or it has been idle for
/// `options.exit_when_idle`), then drains within `options.shutdown_timeout`.
pub async fn run(
    config: &Config,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<ServeReport, ServeError> {
    let sdk = crate::aws::sdk_config(config).await;
    let sqs = crate::aws::sqs_client(&sdk);
    let source = crate::aws::annotation_source(config, &sdk);
    let queue = queue_info(&sqs, &options).await?;
    if !queue.has_redrive && options.dead_letter_queue_url.is_none() {
        warn!(queue_url = %queue.url, "the queue has no redrive policy and no serve.dead_letter_queue_url is set: poison messages stay on the queue until its retention expires; configure a dead-letter queue");
    }

    let (catalog_config, catalog) = config.connect_catalog::<ServeError>().await?;
    // A batch is retried through an outage for as long as it lasts (its messages stay held);
    // only the shutdown deadline ends the retries.
    let table = JournalTable::open(catalog.clone(), config.namespace(), Some(config.table()))
        .await?
        .with_retry(RetryPolicy {
            max_backoff: Duration::from_secs(10),
            max_elapsed: None,
            ..RetryPolicy::default()
        });
    let object_table = match config.object_prefixes() {
        Some(_) => Some(
            JournalTable::open_objects(
                catalog.clone(),
                config.namespace(),
                Some(config.objects_table()),
            )
            .await?
            .with_retry(RetryPolicy {
                max_backoff: Duration::from_secs(10),
                max_elapsed: None,
                ..RetryPolicy::default()
            }),
        ),
        None => None,
    };
    let mut cache = StateCache::new(options.dedup_versions, options.max_clock_skew);
    match warm_up::warm_up(
        &table,
        &catalog_config,
        config,
        options.dedup_lookback,
        &mut cache,
    )
    .await
    {
        Ok(rows) => info!(
            rows,
            versions = cache.len(),
            "suppression memory warmed from the journal"
        ),
        Err(e) => {
            warn!(error = %e, "could not warm the suppression memory from the journal; restating rows may be written after a restart")
        }
    }

    // Before the first observation, learn how far this host's clock is from S3's.
    source.calibrate_clock(CLOCK_CALIBRATION).await;
    report_clock(&source, options.max_clock_skew, None);
    let metrics = Arc::new(Metrics::new(source.stats().clone()));
    let health = Arc::new(health::Health::new(options.wedged_after));
    // The stop signal for the receivers: the caller's shutdown, or idleness.
    let stop_receiving = shutdown.child_token();
    let writer_id = rows::new_writer_id();
    let budget = ReadBudget::new(options.read_buffer_bytes);
    let sets = SetReader::new(
        source.clone(),
        writer_id.clone(),
        options.flush_bytes as u64,
        Some(budget.clone()),
    );
    let shared = Arc::new(Shared {
        sqs,
        source,
        budget,
        sets,
        objects: config.object_prefixes().map(ObjectScope::new),
        queue,
        options: options.clone(),
        metrics: metrics.clone(),
        registry: visibility::Registry::default(),
        writer_id,
        health: health.clone(),
        stopping: stop_receiving.clone(),
    });

    let http_stop = CancellationToken::new();
    let http_task = match options.http_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            info!(addr = %local, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(http::serve(
                listener,
                shared.clone(),
                http_stop.clone(),
            )))
        }
        None => None,
    };
    let maintenance_stop = CancellationToken::new();
    let maintenance = match config.maintain.serve_interval_secs {
        Some(secs) if secs > 0 => {
            let request = crate::maintain::MaintainRequest {
                compact: true,
                expire: true,
                orphans: true,
                dry_run: false,
            };
            let maintain_options = crate::maintain::options(config, request)?;
            let maintainer = annotation_table::Maintainer::new(
                table.clone(),
                &catalog_config,
                config.catalog_name(),
                &config.storage_config(),
            )
            .await?;
            if let Some(note) = maintainer.compaction_handed_off() {
                info!(note, "maintenance in serve: compaction is handed off");
            }
            info!(every_secs = secs, "maintenance in serve is on");
            let retention = match config.maintain.journal_retention_days {
                Some(days) => match crate::state::open(config).await {
                    Ok((_, state)) => Some(maintenance::Retention {
                        days,
                        state,
                        budget: crate::state::fold_budget(config, options.read_buffer_bytes / 4),
                    }),
                    Err(e) => {
                        warn!(error = %e, "journal retention in serve is off: it needs the annotations table");
                        None
                    }
                },
                None => None,
            };
            let holder = crate::lease::Holder::this_process(format!("serve {}", shared.writer_id));
            Some(tokio::spawn(maintenance::periodic(
                maintainer,
                maintain_options,
                Duration::from_secs(secs),
                retention,
                holder,
                maintenance_stop.clone(),
            )))
        }
        _ => None,
    };
    let refresher_stop = CancellationToken::new();
    let refresher = match crate::state::refresh_interval(config) {
        Some(every) => match crate::state::open(config).await {
            Ok((journal, state)) => {
                info!(every_secs = every.as_secs(), table = %state.state().table().ident(), "the state refresher is on");
                let holder =
                    crate::lease::Holder::this_process(format!("serve {}", shared.writer_id));
                let upkeep = crate::maintain::options(
                    config,
                    crate::maintain::MaintainRequest {
                        compact: false,
                        expire: true,
                        orphans: true,
                        dry_run: false,
                    },
                )?;
                Some(tokio::spawn(crate::state::periodic(
                    journal,
                    state,
                    crate::state::Schedule {
                        interval: every,
                        // A quarter, like a batch's: the refresher holds journal rows, one
                        // partition and their copies while sets are read beside it.
                        budget: crate::state::fold_budget(config, options.read_buffer_bytes / 4),
                        upkeep,
                    },
                    holder,
                    Box::new(RefreshMetrics(metrics.clone())),
                    refresher_stop.clone(),
                )))
            }
            Err(e) => {
                warn!(error = %e, "the state refresher is off: annotable's queries answer `annotations` from the journal");
                None
            }
        },
        None => None,
    };
    info!(queue_url = %shared.queue.url, table = %table.ident(), visibility_timeout = ?shared.queue.visibility_timeout, "serve started");

    let (inbound_tx, inbound_rx) = mpsc::channel(options.messages_in_flight);
    let (resolved_tx, resolved_rx) = mpsc::channel(options.messages_in_flight);
    let (batch_tx, batch_rx) = mpsc::channel(1);
    let (ack_tx, ack_rx) = mpsc::channel(16);

    let clock_watch = tokio::spawn(watch_clock(shared.clone()));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(visibility::heartbeat(
        shared.clone(),
        heartbeat_stop.clone(),
    ));
    let mut receivers = Vec::new();
    for i in 0..options.receivers {
        receivers.push(tokio::spawn(intake::receive_loop(
            shared.clone(),
            i,
            inbound_tx.clone(),
            stop_receiving.clone(),
        )));
    }
    drop(inbound_tx);
    let idle = options.exit_when_idle.map(|idle| {
        tokio::spawn(intake::idle_watch(
            shared.clone(),
            idle,
            stop_receiving.clone(),
        ))
    });
    let resolver = tokio::spawn(resolve::resolve_loop(
        shared.clone(),
        inbound_rx,
        resolved_tx,
    ));
    let batcher = tokio::spawn(batch::batch_loop(shared.clone(), resolved_rx, batch_tx));
    let committer = tokio::spawn(commit::commit_loop(
        shared.clone(),
        table,
        object_table,
        cache,
        batch_rx,
        ack_tx,
    ));
    let acker = tokio::spawn(ack::ack_loop(shared.clone(), ack_rx));

    stop_receiving.cancelled().await;
    health.stopping();
    // A maintenance run cut short leaves the table as it was (plus files the orphan sweep
    // removes later); its lease lapses.
    maintenance_stop.cancel();
    // Likewise a refresh cut short: nothing of it is visible until its commit.
    refresher_stop.cancel();
    if let Some(task) = refresher {
        let _ = task.await;
    }
    if let Some(task) = maintenance {
        let _ = task.await;
    }
    info!(deadline = ?options.shutdown_timeout, "stopping: draining held messages");
    let drain = async {
        for r in receivers {
            let _ = r.await;
        }
        let _ = resolver.await;
        let _ = batcher.await;
        let _ = committer.await;
        let _ = acker.await;
    };
    let deadline_hit = tokio::time::timeout(options.shutdown_timeout, drain)
        .await
        .is_err();
    if deadline_hit {
        warn!(
            held = shared.registry.len(),
            "shutdown deadline reached; messages not yet deleted will be redelivered after their visibility timeout"
        );
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    clock_watch.abort();
    if let Some(idle) = idle {
        idle.abort();
    }
    http_stop.cancel();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    let report = ServeReport {
        deadline_hit,
        ..metrics.report()
    };
    info!(
        received = report.received,
        acked = report.acked,
        rows = report.rows,
        commits = report.commits,
        poisoned = report.poisoned,
        extended = report.extended,
        deadline_hit,
        "serve stopped"
    );
    Ok(report)
}

/// How long `serve` reads S3's clock before it starts (a little over the `Date` header's
/// one-second resolution).
const CLOCK_CALIBRATION: Duration = Duration::from_millis(1_200);

/// Logs the clock estimate; warns when the correction exceeds what the suppression rule
/// assumes (`serve.max_clock_skew_ms`). Returns the correction logged.
fn report_clock(source: &AnnotationSource, max_skew: Duration, last: Option<i64>) -> Option<i64> {
    let estimate = source.clock().estimate()?;
    let correction = estimate.correction_nanos;
    if last == Some(correction) {
        return last;
    }
    let ms = |n: i64| n as f64 / 1e6;
    let too_far =
        correction.unsigned_abs() > u64::try_from(max_skew.as_nanos()).unwrap_or(u64::MAX);
    if too_far {
        warn!(
            correction_ms = ms(correction),
            offset_low_ms = ms(estimate.low_nanos),
            offset_high_ms = ms(estimate.high_nanos),
            "this host's clock disagrees with S3's Date headers; observation stamps are corrected by that much, but fix the host's time synchronisation (NTP, Amazon Time Sync)"
        );
    } else {
        info!(
            correction_ms = ms(correction),
            offset_low_ms = ms(estimate.low_nanos),
            offset_high_ms = ms(estimate.high_nanos),
            "clock checked against S3's Date headers"
        );
    }
    Some(correction)
}

/// Keeps the clock gauges current and reports a changed correction.
async fn watch_clock(shared: Arc<Shared>) {
    let mut last = shared.source.clock().estimate().map(|e| e.correction_nanos);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Some(e) = shared.source.clock().estimate() {
            shared
                .metrics
                .clock_correction_seconds
                .set(e.correction_nanos as f64 / 1e9);
            let width = e.high_nanos.saturating_sub(e.low_nanos).max(0);
            shared
                .metrics
                .clock_uncertainty_seconds
                .set(width as f64 / 1e9);
        }
        last = report_clock(&shared.source, shared.options.max_clock_skew, last).or(last);
    }
}

async fn queue_info(
    sqs: &aws_sdk_sqs::Client,
    options: &ServeOptions,
) -> Result<QueueInfo, ServeError> {
    let url = options.queue_url.clone();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| ServeError::Queue {
            queue_url: url.clone(),
            message: format!(
                "GetQueueAttributes failed: {}; check the URL, the region/endpoint and sqs:GetQueueAttributes permission",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            ),
        })?;
    let attributes = attrs.attributes();
    let queue_timeout = attributes
        .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    let has_redrive = attributes
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        .is_some_and(|v| !v.is_empty());
    Ok(QueueInfo {
        url,
        visibility_timeout: options
            .visibility_timeout
            .unwrap_or(Duration::from_secs(queue_timeout))
            .max(Duration::from_secs(1)),
        has_redrive,
    })
}

/// The refresher's reports, as metrics.
struct RefreshMetrics(Arc<Metrics>);

impl crate::state::RefreshObserver for RefreshMetrics {
    fn refreshed(&self, report: &annotation_table::state::RefreshReport, lag: Duration) {
        self.0.observe_refresh(report, lag);
    }

    fn failed(&self) {
        self.0.state_refresh_failures.inc();
    }
}
