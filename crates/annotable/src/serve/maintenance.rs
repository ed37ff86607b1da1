//! `serve`'s periodic table maintenance (`maintain.serve_interval_secs`): every interval, one
//! full `maintain` run and then journal retention when configured, each only if this process
//! gets the lease. It composes the maintenance run (`crate::maintain`) with journal retention
//! (`crate::state`), which is why it lives with its one caller rather than in either.

use std::time::Duration;

use annotation_table::{MaintainOptions, Maintainer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lease::Holder;
use crate::maintain::{MaintainError, run_leased};

/// Journal retention as part of `serve`'s periodic maintenance.
pub(crate) struct Retention {
    /// `maintain.journal_retention_days`.
    pub days: u64,
    /// The state tables whose fold makes dropping rows safe.
    pub state: annotation_table::state::StateTables,
    /// What the refresh before it may hold (as the refresher's).
    pub budget: u64,
}

/// `serve`'s periodic maintenance: every `interval`, one full run (compaction, expiry,
/// orphans, then journal retention when configured) if this process gets the lease. Errors
/// are logged; the next round tries again.
pub(crate) async fn periodic(
    maintainer: Maintainer,
    options: MaintainOptions,
    interval: Duration,
    retention: Option<Retention>,
    me: Holder,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let run = run_leased(&maintainer, &options, &me);
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = run => result,
        };
        match result {
            Ok(Ok(report)) => info!(
                table = %maintainer.table().ident(),
                files_before = report.before.data_files,
                files_after = report.after.data_files,
                manifests_after = report.after.manifests,
                snapshots_after = report.after.snapshots,
                took_ms = report.took.as_millis() as u64,
                "maintained the table"
            ),
            Ok(Err(busy)) => {
                info!(table = %maintainer.table().ident(), holder = %busy.holder, "another process is maintaining the table; skipped this round")
            }
            Err(e) => {
                warn!(table = %maintainer.table().ident(), error = %e, "table maintenance failed; trying again next round")
            }
        }
        let Some(retention) = &retention else {
            continue;
        };
        let cut = crate::state::cut_for_days(retention.days);
        let trim = crate::state::trim_opened(
            &maintainer,
            &retention.state,
            cut,
            false,
            retention.budget,
            &me,
        );
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = trim => result,
        };
        match result {
            Ok((_, report)) => info!(
                table = %maintainer.table().ident(), rows_dropped = report.rows_dropped,
                files_waiting = report.files_waiting, skipped = ?report.skipped,
                "journal retention"
            ),
            Err(MaintainError::Held { holder, .. }) => {
                info!(table = %maintainer.table().ident(), holder = %holder, "another process holds a lease journal retention needs; skipped this round")
            }
            Err(e) => {
                warn!(table = %maintainer.table().ident(), error = %e, "journal retention failed; trying again next round")
            }
        }
    }
}
