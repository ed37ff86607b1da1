//! The current-state table from the command side: `maintain --refresh`, `--rebuild-state` and
//! `--verify-state`, and the refresher `serve` runs every `state.refresh_interval_secs`.
//!
//! The refresh itself (what is read, folded, rewritten and committed) lives in
//! `annotation-table`'s `state` module; this one opens the tables from configuration, holds
//! the state table's lease while a refresh runs (one refresher per table, whether a CLI run or
//! any number of `serve` processes: the maintenance lease of the state table), and reports.

use std::fmt;
use std::time::Duration;

use annotation_sql::{QuerySession, StateComparison};
use annotation_table::state::{RefreshReport, RetentionReport, StateTables};
use annotation_table::{JournalTable, MaintainOptions, MaintainReport, Maintainer, TableError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, defaults};
use crate::lease::Holder;
use crate::maintain::{Busy, MaintainError, leased};

/// The journal and the state tables, opened from configuration (the state tables are created
/// if missing; the journal must exist).
pub async fn open(config: &Config) -> Result<(JournalTable, StateTables), MaintainError> {
    let journal = crate::maintain::maintainer(config).await?.table().clone();
    let (catalog_config, catalog) = config.connect_catalog::<MaintainError>().await?;
    if !matches!(catalog_config, annotation_table::CatalogConfig::Sql { .. }) {
        return Err(MaintainError::StateUnsupported {
            table: format!("{}.{}", config.namespace(), config.state_table()),
            catalog: catalog_config.describe(),
        });
    }
    let state = StateTables::open(
        catalog,
        &catalog_config,
        config.catalog_name(),
        &config.storage_config(),
        config.namespace(),
        config.state_table(),
    )
    .await?;
    Ok((journal, state))
}

/// `maintain --refresh` (or `--rebuild-state`): one refresh under the state table's lease.
pub async fn refresh(config: &Config, rebuild: bool) -> Result<RefreshReport, MaintainError> {
    let (journal, state) = open(config).await?;
    let me = Holder::this_process("refresh");
    let budget = fold_budget(config, defaults::STATE_FOLD_BUDGET_MB * 1024 * 1024);
    let work = async {
        let mut report = state
            .refresh_within(&journal, rebuild, Some(budget))
            .await?;
        // Folding the oldest appends that fit leaves the rest for another round.
        while !rebuild && report.deferred.is_none() && report.snapshot_id.is_some() {
            let next = state.refresh_within(&journal, false, Some(budget)).await?;
            if next.snapshot_id.is_none() {
                break;
            }
            report = merged(report, next);
        }
        Ok::<_, TableError>(report)
    };
    match leased(state.state(), &me, work).await? {
        Ok(report) => Ok(report),
        Err(busy) => Err(held(&state, busy)),
    }
}

/// `state.fold_budget_mb` in bytes, or `default`.
pub(crate) fn fold_budget(config: &Config, default: u64) -> u64 {
    config
        .state
        .fold_budget_mb
        .map_or(default, |mb| mb.max(1).saturating_mul(1024 * 1024))
}

/// Two consecutive refreshes as one report.
fn merged(first: RefreshReport, next: RefreshReport) -> RefreshReport {
    RefreshReport {
        from: first.from,
        journal_snapshots: first.journal_snapshots + next.journal_snapshots,
        journal_files: first.journal_files + next.journal_files,
        journal_rows: first.journal_rows + next.journal_rows,
        passes: first.passes + next.passes,
        partitions: first.partitions + next.partitions,
        partitions_merged: first.partitions_merged + next.partitions_merged,
        position_deletes: first.position_deletes + next.position_deletes,
        paged_rows: first.paged_rows + next.paged_rows,
        paged_rows_read: first.paged_rows_read + next.paged_rows_read,
        files_removed: first.files_removed + next.files_removed,
        bytes_removed: first.bytes_removed + next.bytes_removed,
        files_written: first.files_written + next.files_written,
        bytes_written: first.bytes_written + next.bytes_written,
        took: first.took + next.took,
        ..next
    }
}

/// The cut `maintain.journal_retention_days` asks for (ms since the epoch), if any.
pub fn retention_cut(config: &Config) -> Option<i64> {
    config.maintain.journal_retention_days.map(cut_for_days)
}

/// Now minus `days` days, in ms since the epoch.
pub(crate) fn cut_for_days(days: u64) -> i64 {
    let days = i64::try_from(days).unwrap_or(i64::MAX / 86_400_000);
    chrono::Utc::now()
        .timestamp_millis()
        .saturating_sub(days.saturating_mul(86_400_000))
}

/// Journal retention (`maintain.journal_retention_days`): folds the journal into the state,
/// then drops the journal rows ingested before `cut_ms` that the state holds. Runs under the
/// journal's maintenance lease (no compaction meanwhile) and the state table's lease (no
/// refresh meanwhile). A dry run refreshes nothing and reports what would be dropped.
pub async fn trim_journal(
    config: &Config,
    cut_ms: i64,
    dry_run: bool,
) -> Result<(Option<RefreshReport>, RetentionReport), MaintainError> {
    let journal = crate::maintain::maintainer(config).await?;
    let (_, state) = open(config).await?;
    let me = Holder::this_process("journal retention");
    let budget = fold_budget(config, defaults::STATE_FOLD_BUDGET_MB * 1024 * 1024);
    trim_opened(&journal, &state, cut_ms, dry_run, budget, &me).await
}

/// [`trim_journal`] on tables already open, as `me`, its refresh folding at most `budget`
/// bytes of journal rows at once (also `serve`'s periodic maintenance).
pub(crate) async fn trim_opened(
    journal: &Maintainer,
    state: &StateTables,
    cut_ms: i64,
    dry_run: bool,
    budget: u64,
    me: &Holder,
) -> Result<(Option<RefreshReport>, RetentionReport), MaintainError> {
    let work = async {
        let refreshed = if dry_run {
            None
        } else {
            Some(
                state
                    .refresh_within(journal.table(), false, Some(budget))
                    .await?,
            )
        };
        let report = state.trim_journal(journal, cut_ms, dry_run).await?;
        Ok::<_, TableError>((refreshed, report))
    };
    let under_state_lease = async {
        match leased(state.state(), me, work).await? {
            Ok(done) => Ok(done),
            Err(busy) => Err(held(state, busy)),
        }
    };
    leased(journal, me, under_state_lease)
        .await?
        .map_err(|busy| busy.into_error(journal))
}

/// The error for a state table whose lease another process holds.
fn held(state: &StateTables, busy: Busy) -> MaintainError {
    busy.into_error(state.state())
}

/// `maintain`'s steps on the state tables, when they exist: expiry and the orphan sweep (a
/// refresh lays the files out itself, so no compaction), each under the state table's lease so
/// no refresh runs meanwhile. Returns (table, report) per table.
pub async fn maintain(
    config: &Config,
    options: &MaintainOptions,
) -> Result<Vec<(String, MaintainReport)>, MaintainError> {
    let (_, catalog) = config.connect_catalog::<MaintainError>().await?;
    let exists = match annotation_table::table_ident(config.namespace(), config.state_table()) {
        Some(ident) => catalog.table_exists(&ident).await.unwrap_or(false),
        None => false,
    };
    if !exists {
        return Ok(Vec::new());
    }
    let (_, state) = open(config).await?;
    let options = MaintainOptions {
        compact: false,
        ..options.clone()
    };
    let me = Holder::this_process("maintain");
    let work = async {
        let mut reports = Vec::new();
        for table in [state.state(), state.tombstones()] {
            reports.push((
                table.table().ident().to_string(),
                table.run(&options).await?,
            ));
        }
        Ok::<_, TableError>(reports)
    };
    match leased(state.state(), &me, work).await? {
        Ok(reports) => Ok(reports),
        Err(busy) => Err(held(&state, busy)),
    }
}

/// `maintain --verify-state`: the state table against the journal view at its watermark.
pub async fn verify(config: &Config) -> Result<StateComparison, MaintainError> {
    let (_, catalog) = config.connect_catalog::<MaintainError>().await?;
    let session = QuerySession::with_state_table(
        catalog,
        config.catalog_name(),
        config.namespace(),
        config.table(),
        config.state_table(),
    )
    .await
    .map_err(MaintainError::Sql)?;
    session.compare_state(20).await.map_err(MaintainError::Sql)
}

/// The refresh interval `serve` uses (`None`: off).
pub fn refresh_interval(config: &Config) -> Option<Duration> {
    match config
        .state
        .refresh_interval_secs
        .unwrap_or(defaults::STATE_REFRESH_INTERVAL_SECS)
    {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    }
}

/// What the refresher reports after each round.
pub trait RefreshObserver: Send + Sync {
    /// A refresh finished; `lag` is how far the state's watermark is behind the journal's
    /// newest commit (zero when it has everything).
    fn refreshed(&self, report: &RefreshReport, lag: Duration);
    /// A refresh failed (it is tried again next round).
    fn failed(&self);
}

/// Every this many refreshes, `serve`'s refresher also expires the state tables' old
/// snapshots and sweeps their orphans (a refresh every 5 s adds 720 snapshots an hour).
const EXPIRE_EVERY: u32 = 60;

/// How `serve`'s refresher runs.
pub(crate) struct Schedule {
    /// Time between refreshes.
    pub interval: Duration,
    /// Journal bytes (uncompressed) one refresh may fold.
    pub budget: u64,
    /// What the periodic expiry of the state tables does.
    pub upkeep: MaintainOptions,
}

/// `serve`'s refresher: every `interval`, one refresh if this process gets the lease, folding
/// at most `budget` bytes of journal rows and of any partition of the state (a quarter of
/// serve's `read_buffer_bytes`). Errors
/// are logged; the next round tries again (a failed refresh changed nothing, or left the
/// tombstones ahead of the state, which the next one folds again). Every [`EXPIRE_EVERY`]
/// rounds it also expires the state tables' snapshots (`maintain` options, no compaction).
pub(crate) async fn periodic(
    journal: JournalTable,
    state: StateTables,
    schedule: Schedule,
    me: Holder,
    observer: Box<dyn RefreshObserver>,
    shutdown: CancellationToken,
) {
    let Schedule {
        interval,
        budget,
        upkeep,
    } = schedule;
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        round = round.wrapping_add(1);
        let expire = round.is_multiple_of(EXPIRE_EVERY);
        let work = async {
            let report = state.refresh_within(&journal, false, Some(budget)).await?;
            if expire {
                for table in [state.state(), state.tombstones()] {
                    if let Err(e) = table.run(&upkeep).await {
                        warn!(table = %table.table().ident(), error = %e, "expiring the state's snapshots failed; trying again later");
                    }
                }
            }
            Ok::<_, TableError>(report)
        };
        let run = leased(state.state(), &me, work);
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = run => result,
        };
        match result {
            Ok(Ok(report)) => {
                if let Some(needs) = report.deferred {
                    warn!(
                        table = %state.state().table().ident(), needs_bytes = needs, budget_bytes = budget,
                        "the next refresh needs more memory (a journal commit or a partition of the state) than a quarter of serve.read_buffer_bytes allows; the state stays behind (queries still see the journal) until `annotable maintain --refresh` folds it"
                    );
                }
                let lag = lag(&journal, &report).await;
                observer.refreshed(&report, lag);
            }
            Ok(Err(busy)) => {
                info!(table = %state.state().table().ident(), holder = %busy.holder, "another process is refreshing the state; skipped this round")
            }
            Err(e) => {
                observer.failed();
                warn!(table = %state.state().table().ident(), error = %e, "refreshing the state failed; trying again next round")
            }
        }
    }
}

/// How far the journal has moved past what the report folded in: the age of the first commit
/// after it (zero when there is none).
async fn lag(journal: &JournalTable, report: &RefreshReport) -> Duration {
    let Ok(table) = journal.load().await else {
        return Duration::ZERO;
    };
    let metadata = table.metadata();
    let mut oldest_unfolded = None;
    let mut at = metadata.current_snapshot().cloned();
    while let Some(snapshot) = at {
        if Some(snapshot.snapshot_id()) == report.to {
            break;
        }
        oldest_unfolded = Some(snapshot.timestamp_ms());
        at = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p).cloned());
    }
    oldest_unfolded
        .map(|ms| {
            let age = chrono::Utc::now().timestamp_millis() - ms;
            Duration::from_millis(u64::try_from(age).unwrap_or(0))
        })
        .unwrap_or_default()
}

/// A refresh report as `maintain` prints it.
pub struct PrintedRefresh<'a>(pub &'a RefreshReport);

impl fmt::Display for PrintedRefresh<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if let Some(needs) = r.deferred {
            return write!(
                f,
                "refresh  deferred: it needs {} (a journal commit or a partition of the state), more than the budget",
                crate::maintain::bytes(needs)
            );
        }
        if r.snapshot_id.is_none() {
            return write!(
                f,
                "refresh  up to date with journal snapshot {}",
                r.to.map_or_else(|| "-".into(), |s| s.to_string())
            );
        }
        writeln!(
            f,
            "refresh  {} journal snapshot {} → {}: {} rows from {} files ({} appends)",
            match (r.rebuilt, r.base) {
                (true, Some(_)) => "rebuilt from the retention base and",
                (true, None) => "rebuilt from",
                (false, _) => "folded",
            },
            r.from.map_or_else(|| "-".into(), |s| s.to_string()),
            r.to.map_or_else(|| "-".into(), |s| s.to_string()),
            r.journal_rows,
            r.journal_files,
            r.journal_snapshots,
        )?;
        writeln!(
            f,
            "rewrite  {} partitions: {} files ({}) replaced by {} files ({}); {} live annotations, {} tombstones in them",
            if r.rebuilt {
                "all".to_string()
            } else {
                r.partitions.to_string()
            },
            r.files_removed,
            crate::maintain::bytes(r.bytes_removed),
            r.files_written,
            crate::maintain::bytes(r.bytes_written),
            r.live_rows,
            r.tombstones,
        )?;
        if !r.rebuilt {
            writeln!(
                f,
                "merge    {} partition shares written whole, the others as delta files; {} rows deleted by position; key columns of {} of the {} rows beside the changes read (the pages that can hold a changed key)",
                r.partitions_merged, r.position_deletes, r.paged_rows_read, r.paged_rows
            )?;
        }
        write!(
            f,
            "took     {:.2} s, state snapshot {}",
            r.took.as_secs_f64(),
            r.snapshot_id.map_or_else(|| "-".into(), |s| s.to_string())
        )
    }
}

/// Runs journal retention (see [`trim_journal`]) and prints what it did.
pub async fn trim_and_print(
    config: &Config,
    cut_ms: i64,
    dry_run: bool,
) -> Result<(), MaintainError> {
    let (refreshed, report) = trim_journal(config, cut_ms, dry_run).await?;
    if let Some(refreshed) = &refreshed {
        println!("{}", PrintedRefresh(refreshed));
    }
    println!(
        "{}",
        PrintedRetention {
            report: &report,
            dry_run
        }
    );
    Ok(())
}

/// A retention run as `maintain` prints it.
pub struct PrintedRetention<'a> {
    /// The report.
    pub report: &'a RetentionReport,
    /// Whether it was a dry run.
    pub dry_run: bool,
}

impl fmt::Display for PrintedRetention<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        let cut = chrono::DateTime::from_timestamp_millis(r.cut_ms)
            .map_or_else(|| r.cut_ms.to_string(), |t| t.to_rfc3339());
        if let Some(why) = &r.skipped {
            return write!(f, "retain   nothing dropped: {why}");
        }
        let would = if self.dry_run {
            "would drop"
        } else {
            "dropped"
        };
        write!(
            f,
            "retain   {would} {} journal rows ingested before {cut}: {} files whole, {} rewritten",
            r.rows_dropped, r.files_dropped, r.files_rewritten
        )?;
        if !self.dry_run && r.rows_dropped > 0 {
            write!(
                f,
                " ({} removed, {} written); journal snapshot {}, retention base: state snapshot {}",
                crate::maintain::bytes(r.bytes_removed),
                crate::maintain::bytes(r.bytes_written),
                r.snapshot_id.map_or_else(|| "-".into(), |s| s.to_string()),
                r.base.map_or_else(|| "-".into(), |s| s.to_string()),
            )?;
        }
        if r.files_waiting > 0 {
            write!(
                f,
                "\nretain   {} files with older rows wait: the annotations table has not folded them in yet",
                r.files_waiting
            )?;
        }
        Ok(())
    }
}

/// A comparison as `maintain --verify-state` prints it.
pub struct PrintedComparison<'a>(pub &'a StateComparison);

impl fmt::Display for PrintedComparison<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        match c.base {
            None => writeln!(
                f,
                "verify   state snapshot {} ({} rows) against the journal view at journal snapshot {} ({} rows)",
                c.state_snapshot, c.state_rows, c.journal_snapshot, c.journal_rows
            )?,
            Some(base) => writeln!(
                f,
                "verify   state snapshot {} ({} rows) against the retention base (state snapshot {base}) with journal snapshot {} folded in ({} rows)",
                c.state_snapshot, c.state_rows, c.journal_snapshot, c.journal_rows
            )?,
        }
        if c.is_equal() {
            return write!(f, "verify   equal: every row, all 12 columns");
        }
        writeln!(
            f,
            "verify   DIFFERENT: {} rows only in the state table, {} only in the journal view",
            c.differing.0, c.differing.1
        )?;
        for row in &c.only_in_state {
            writeln!(f, "  state only:   {row}")?;
        }
        for row in &c.only_in_journal {
            writeln!(f, "  journal only: {row}")?;
        }
        write!(
            f,
            "fix      `annotable maintain --rebuild-state` rebuilds the table from the journal"
        )
    }
}
