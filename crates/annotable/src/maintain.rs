//! `annotable maintain`: one maintenance run under the table's lease, as the CLI and `serve`'s
//! periodic maintenance (`serve/maintenance.rs`) start it.
//!
//! The work itself (compaction, expiry, orphan cleanup) lives in `annotation-table`'s
//! [`Maintainer`]; this module turns configuration into options, holds the table's
//! maintenance lease while a run lasts (one maintainer per table, whether a CLI run or any
//! number of `serve` processes), and reports what happened.

use std::fmt;
use std::time::Duration;

use annotation_table::{
    JournalTable, MaintainOptions, MaintainReport, Maintainer, TableError, TableStats,
};
use tracing::{info, warn};

use crate::config::{Config, ConfigError, defaults};
use crate::lease::catalog_row::CatalogRow;
use crate::lease::{Holder, Lease, LeaseError};

/// Which steps to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaintainRequest {
    /// Rewrite small files and merge manifests.
    pub compact: bool,
    /// Expire old snapshots and delete what only they referenced.
    pub expire: bool,
    /// Delete unreferenced files older than the safety age.
    pub orphans: bool,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
}

/// Why `maintain` failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The catalog, the table, or a maintenance step.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The catalog is not one annotable can commit a state refresh to.
    #[error(
        "cannot refresh table {table} on {catalog}: the refresh commits through the SQL \
         catalog's compare-and-swap (SQLite or PostgreSQL); on this catalog `annotable query` \
         answers `annotations` from the journal"
    )]
    StateUnsupported {
        /// The state table.
        table: String,
        /// The catalog.
        catalog: String,
    },
    /// Comparing the state table with the journal failed.
    #[error(transparent)]
    Sql(annotation_sql::SqlError),
    /// The maintenance lease could not be read or written.
    #[error("table maintenance: {0}")]
    Lease(LeaseError),
    /// There is no table to maintain.
    #[error(
        "table {table} does not exist in {catalog}: nothing to maintain; check --namespace, \
         the table name and the catalog settings (serve or backfill create it)"
    )]
    NoTable {
        /// Table.
        table: String,
        /// Catalog.
        catalog: String,
    },
    /// Another process is maintaining the table.
    #[error(
        "table {table} is being maintained by another process ({holder}, lease until {until}); \
         try again when it is done (a lease lapses 5 minutes after its holder stops renewing it)"
    )]
    Held {
        /// Table.
        table: String,
        /// Who holds the lease.
        holder: String,
        /// Until when.
        until: String,
    },
}

/// The shortest snapshot retention accepted: commit retries settle in well under a minute and
/// redelivered messages are re-resolved, but a retention below this leaves no margin.
pub const MIN_SNAPSHOT_RETENTION: Duration = Duration::from_secs(600);

/// The youngest unreferenced file the orphan sweep may delete: a writer's files are
/// unreferenced from the moment they are written until its commit lands, which a catalog
/// outage or a long backfill batch can delay by many minutes.
pub const MIN_ORPHAN_AGE: Duration = Duration::from_secs(3_600);

/// How long the maintenance lease lasts without renewal (renewed every third of it).
pub const LEASE_TTL: Duration = Duration::from_secs(300);

/// Options from `[maintain]` and the request.
pub fn options(config: &Config, request: MaintainRequest) -> Result<MaintainOptions, ConfigError> {
    let m = &config.maintain;
    let retention = at_least(
        "maintain.snapshot_retention_secs",
        m.snapshot_retention_secs,
        Duration::from_secs(defaults::MAINTAIN_SNAPSHOT_RETENTION_SECS),
        MIN_SNAPSHOT_RETENTION,
        "a commit whose outcome is unknown is settled by finding its batch id in the snapshots",
    )?;
    let orphan_age = at_least(
        "maintain.orphan_age_secs",
        m.orphan_age_secs,
        Duration::from_secs(defaults::MAINTAIN_ORPHAN_AGE_SECS),
        MIN_ORPHAN_AGE,
        "files a writer has written but not yet committed are unreferenced until the commit lands",
    )?;
    Ok(MaintainOptions {
        compact: request.compact,
        expire: request.expire,
        orphans: request.orphans,
        dry_run: request.dry_run,
        target_file_bytes: m
            .target_file_mb
            .unwrap_or(defaults::MAINTAIN_TARGET_FILE_MB)
            .max(1)
            * 1024
            * 1024,
        snapshot_retention: retention,
        min_snapshots: m
            .min_snapshots
            .unwrap_or(defaults::MAINTAIN_MIN_SNAPSHOTS)
            .max(1),
        orphan_age,
    })
}

/// A duration setting in seconds (`default` when unset) that may not go below `min`, because
/// `why`.
fn at_least(
    key: &str,
    secs: Option<u64>,
    default: Duration,
    min: Duration,
    why: &str,
) -> Result<Duration, ConfigError> {
    let value = secs.map(Duration::from_secs).unwrap_or(default);
    if value < min {
        return Err(ConfigError::Invalid {
            key: key.into(),
            env: crate::config::env_name(key),
            message: format!(
                "{} s is too short: {why}, so keep at least {} s",
                value.as_secs(),
                min.as_secs()
            ),
        });
    }
    Ok(value)
}

/// Opens the table and a maintainer for it; a table that does not exist is an error (not
/// created: maintaining nothing is a wrong configuration).
pub async fn maintainer(config: &Config) -> Result<Maintainer, MaintainError> {
    let (catalog_config, catalog) = config.connect_catalog::<MaintainError>().await?;
    let exists = match annotation_table::table_ident(config.namespace(), config.table()) {
        Some(ident) => catalog.table_exists(&ident).await.unwrap_or(true),
        None => true,
    };
    if !exists {
        return Err(MaintainError::NoTable {
            table: format!("{}.{}", config.namespace(), config.table()),
            catalog: catalog_config.describe(),
        });
    }
    let table = JournalTable::open(catalog, config.namespace(), Some(config.table())).await?;
    Ok(Maintainer::new(
        table,
        &catalog_config,
        config.catalog_name(),
        &config.storage_config(),
    )
    .await?)
}

/// `annotable maintain` on the object journal, when it exists: compaction, snapshot expiry and
/// orphan cleanup as for the annotation journal, under the object journal's own lease. Its
/// name and report; `None` when there is no object journal.
pub async fn object_journal(
    config: &Config,
    request: MaintainRequest,
) -> Result<Option<(String, MaintainReport)>, MaintainError> {
    let options = options(config, request)?;
    let (catalog_config, catalog) = config.connect_catalog::<MaintainError>().await?;
    let exists = match annotation_table::table_ident(config.namespace(), config.objects_table()) {
        Some(ident) => catalog.table_exists(&ident).await.unwrap_or(false),
        None => false,
    };
    if !exists {
        return Ok(None);
    }
    let table =
        JournalTable::open_objects(catalog, config.namespace(), Some(config.objects_table()))
            .await?;
    let maintainer = Maintainer::new(
        table,
        &catalog_config,
        config.catalog_name(),
        &config.storage_config(),
    )
    .await?;
    let me = Holder::this_process("maintain");
    let report = run_leased(&maintainer, &options, &me)
        .await?
        .map_err(|busy| busy.into_error(&maintainer))?;
    Ok(Some((maintainer.table().ident().to_string(), report)))
}

/// `annotable maintain`: one run under the table's maintenance lease.
pub async fn run(
    config: &Config,
    request: MaintainRequest,
) -> Result<MaintainReport, MaintainError> {
    let options = options(config, request)?;
    let maintainer = maintainer(config).await?;
    let me = Holder::this_process("maintain");
    run_leased(&maintainer, &options, &me)
        .await?
        .map_err(|busy| busy.into_error(&maintainer))
}

impl Busy {
    /// The error for `maintainer`'s table, whose lease this holder has.
    pub fn into_error(self, maintainer: &Maintainer) -> MaintainError {
        MaintainError::Held {
            table: maintainer.table().ident().to_string(),
            holder: self.holder,
            until: chrono::DateTime::from_timestamp_millis(self.until_ms)
                .map_or_else(|| self.until_ms.to_string(), |t| t.to_rfc3339()),
        }
    }
}

/// The lease is held by someone else.
#[derive(Debug)]
pub struct Busy {
    /// Who.
    pub holder: String,
    /// Until when (ms since the epoch).
    pub until_ms: i64,
}

/// Runs maintenance if the table's lease can be had (see [`crate::lease`]: taken over at once
/// from a process of this host that is gone), renewing it while the run lasts and giving it up
/// afterwards. `Err(Busy)` when a live process holds it.
pub async fn run_leased(
    maintainer: &Maintainer,
    options: &MaintainOptions,
    me: &Holder,
) -> Result<Result<MaintainReport, Busy>, MaintainError> {
    leased(maintainer, me, maintainer.run(options)).await
}

/// Runs `work` if the lease of `maintainer`'s table can be had, renewing it while `work`
/// lasts and giving it up afterwards. `Err(Busy)` when a live process holds it.
pub async fn leased<T, E: Into<MaintainError>>(
    maintainer: &Maintainer,
    me: &Holder,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<Result<T, Busy>, MaintainError> {
    let table = maintainer.table().ident().to_string();
    let acquired =
        match Lease::acquire(CatalogRow::new(maintainer), me.clone(), LEASE_TTL, |_| ()).await {
            Ok(acquired) => acquired,
            Err(LeaseError::Held { holder, until, .. }) => {
                return Ok(Err(Busy {
                    holder: holder.to_string(),
                    until_ms: until.timestamp_millis(),
                }));
            }
            Err(e) => return Err(MaintainError::Lease(e)),
        };
    if let Some(previous) = &acquired.took_over {
        info!(table = %table, previous = %previous, "took the maintenance lease over from a process that is gone");
    }
    let lease = acquired.lease;
    let renewing = async {
        loop {
            tokio::time::sleep(lease.renew_every()).await;
            match lease.renew().await {
                Ok(()) => {}
                Err(LeaseError::Lost { .. }) => {
                    warn!(table = %table, "the maintenance lease was taken over; finishing this step")
                }
                Err(e) => {
                    warn!(table = %table, error = %e, "could not renew the maintenance lease")
                }
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = renewing => unreachable!("the lease renewal loop never ends"),
    };
    if let Err(e) = lease.release(|_| ()).await {
        warn!(table = %table, error = %e, "could not release the maintenance lease; it lapses by itself");
    }
    result.map(Ok).map_err(Into::into)
}

/// The report as `maintain` prints it.
pub struct Printed<'a> {
    /// The report.
    pub report: &'a MaintainReport,
    /// Whether it was a dry run.
    pub dry_run: bool,
}

fn stats_line(f: &mut fmt::Formatter<'_>, label: &str, s: &TableStats) -> fmt::Result {
    writeln!(
        f,
        "{label:<8} {} data files ({}), {} rows, {} manifests, {} snapshots",
        s.data_files,
        bytes(s.data_bytes),
        s.rows,
        s.manifests,
        s.snapshots
    )
}

pub(crate) fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

impl fmt::Display for Printed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        let would = if self.dry_run { "would " } else { "" };
        if self.dry_run {
            writeln!(f, "dry run: nothing was changed")?;
        }
        stats_line(f, "before", &r.before)?;
        if let Some(c) = &r.compaction {
            if c.files_rewritten == 0 && c.manifests_merged == 0 {
                writeln!(f, "compact  nothing to do (no small files, one manifest)")?;
            } else if self.dry_run {
                writeln!(
                    f,
                    "compact  would rewrite {} small files ({}) and merge {} manifests",
                    c.files_rewritten,
                    bytes(c.bytes_rewritten),
                    c.manifests_merged
                )?;
            } else {
                writeln!(
                    f,
                    "compact  rewrote {} files ({}) into {} ({}), merged {} manifests into 1, snapshot {} ({} attempt{})",
                    c.files_rewritten,
                    bytes(c.bytes_rewritten),
                    c.files_written,
                    bytes(c.bytes_written),
                    c.manifests_merged,
                    c.snapshot_id.map_or_else(|| "-".into(), |s| s.to_string()),
                    c.attempts,
                    if c.attempts == 1 { "" } else { "s" }
                )?;
            }
        }
        if let Some(e) = &r.expiry {
            writeln!(
                f,
                "expire   {would}expire {} snapshots; deleted {} files no snapshot references ({})",
                e.snapshots_expired,
                e.files_deleted,
                bytes(e.bytes_deleted)
            )?;
        }
        if let Some(o) = &r.orphans {
            writeln!(
                f,
                "orphans  {would}delete {} unreferenced files ({}); kept {} younger than the safety age",
                o.deleted,
                bytes(o.bytes_deleted),
                o.kept_young
            )?;
        }
        for note in &r.notes {
            writeln!(f, "note     {note}")?;
        }
        stats_line(f, "after", &r.after)?;
        write!(f, "took     {:.2} s", r.took.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> MaintainRequest {
        MaintainRequest {
            compact: false,
            expire: false,
            orphans: true,
            dry_run: false,
        }
    }

    #[test]
    fn the_orphan_age_has_a_safe_minimum() {
        let config = |age: u64| {
            Config::load(
                None,
                [(
                    "ANNOTABLE_MAINTAIN_ORPHAN_AGE_SECS".to_string(),
                    age.to_string(),
                )],
            )
        };
        let too_young = config(60).map(|c| options(&c, request()));
        match too_young {
            Ok(Err(ConfigError::Invalid { key, message, .. })) => {
                assert_eq!(key, "maintain.orphan_age_secs");
                assert!(message.contains("3600"), "{message}");
            }
            other => panic!("60 s accepted: {other:?}"),
        }
        let ok = config(3_600).map(|c| options(&c, request()));
        assert!(matches!(ok, Ok(Ok(o)) if o.orphan_age == MIN_ORPHAN_AGE));
    }
}
