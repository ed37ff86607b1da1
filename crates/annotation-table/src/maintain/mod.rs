//! Table maintenance: compaction, snapshot expiry and orphan-file cleanup.
//!
//! A table that takes a commit every few seconds gains a snapshot, a manifest and a few small
//! data files each time; reads and commits slow down with every one. [`Maintainer::run`] undoes
//! that in three steps, each optional:
//!
//! 1. **Compaction** (`compact`): small data files are rewritten, sorted, into files of a
//!    target size, and all manifests are merged into one, in one `replace` snapshot built and
//!    swapped in by hand (see `compact`). Needs the SQL catalog (SQLite or PostgreSQL): it is
//!    the only one whose pointer swap annotable can perform itself. On Glue and S3 Tables,
//!    AWS's managed compaction does this job; on a REST catalog, the server's.
//! 2. **Expiry** (`expire`): snapshots older than the retention are dropped from the metadata
//!    (always keeping the newest few and the current one), then the files only they
//!    referenced (manifest lists, manifests, data files) and metadata files older than the
//!    table's metadata log are deleted. The retention must cover the commit-idempotency
//!    lookback (a commit whose outcome was unknown is settled by finding its batch id in the
//!    snapshot summaries) and redeliveries; the default, an hour, covers both many times over.
//! 3. **Orphans** (`orphans`): files under the table location that no snapshot or metadata
//!    references, older than a safety age (files of failed or abandoned commits). Younger
//!    files are never touched: they may belong to a commit in flight.
//!
//! Every step leaves a readable table at every instant: nothing is deleted before the
//! metadata that stopped referencing it is committed, and a rewrite becomes visible only
//! through the final compare-and-swap. A crash leaves, at worst, unreferenced files for a
//! later orphan sweep.

pub(crate) mod compact;
mod files;
pub(crate) mod inventory;
mod sql;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use iceberg::spec::SnapshotRef;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Error, ErrorKind};
use tracing::{info, warn};

pub use compact::{SUMMARY_MAINTENANCE, changes_rows};

use crate::catalog::CatalogConfig;
use crate::error::is_transient;
use crate::{JournalTable, StorageConfig, TableError};
use compact::{BuildFailure, Rewrite};
use inventory::{ManifestCache, referenced_by};
use sql::CatalogDb;

/// What a maintenance run does.
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// Rewrite small files and merge manifests.
    pub compact: bool,
    /// Expire old snapshots and delete the files only they referenced.
    pub expire: bool,
    /// Delete unreferenced files older than `orphan_age`.
    pub orphans: bool,
    /// Plan and report only; change nothing.
    pub dry_run: bool,
    /// Size compaction aims for; files under 3/4 of it count as small.
    pub target_file_bytes: u64,
    /// Snapshots younger than this are kept.
    pub snapshot_retention: Duration,
    /// The newest this many snapshots are kept whatever their age.
    pub min_snapshots: usize,
    /// Unreferenced files younger than this are kept.
    pub orphan_age: Duration,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        MaintainOptions {
            compact: true,
            expire: true,
            orphans: true,
            dry_run: false,
            target_file_bytes: 128 * 1024 * 1024,
            snapshot_retention: Duration::from_secs(3600),
            min_snapshots: 10,
            orphan_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// A table's size in files and snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Snapshots in the metadata.
    pub snapshots: usize,
    /// Live data files of the current snapshot.
    pub data_files: usize,
    /// Their bytes.
    pub data_bytes: u64,
    /// Manifests of the current snapshot.
    pub manifests: usize,
    /// Rows of the current snapshot.
    pub rows: u64,
}

/// What compaction did (or, in a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct CompactionReport {
    /// Data files replaced.
    pub files_rewritten: usize,
    /// Their bytes.
    pub bytes_rewritten: u64,
    /// Data files written.
    pub files_written: usize,
    /// Their bytes.
    pub bytes_written: u64,
    /// Manifests merged into one.
    pub manifests_merged: usize,
    /// Commit attempts (more than one when other writers committed meanwhile).
    pub attempts: u32,
    /// The `replace` snapshot, when one was committed.
    pub snapshot_id: Option<i64>,
}

/// What expiry did.
#[derive(Debug, Clone, Default)]
pub struct ExpiryReport {
    /// Snapshots removed from the metadata.
    pub snapshots_expired: usize,
    /// Files deleted (data, manifests, manifest lists, old metadata).
    pub files_deleted: usize,
    /// Their bytes, where known.
    pub bytes_deleted: u64,
}

/// What the orphan sweep did.
#[derive(Debug, Clone, Default)]
pub struct OrphanReport {
    /// Unreferenced files older than the safety age, deleted (or to delete, in a dry run).
    pub deleted: usize,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Unreferenced files kept because they are younger than the safety age.
    pub kept_young: usize,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct MaintainReport {
    /// The table before.
    pub before: TableStats,
    /// The table after.
    pub after: TableStats,
    /// Compaction, if asked for and possible.
    pub compaction: Option<CompactionReport>,
    /// Expiry, if asked for.
    pub expiry: Option<ExpiryReport>,
    /// Orphan sweep, if asked for.
    pub orphans: Option<OrphanReport>,
    /// Steps handed off or skipped, and why.
    pub notes: Vec<String>,
    /// Wall time.
    pub took: Duration,
}

/// Maintains one journal table.
pub struct Maintainer {
    table: JournalTable,
    db: Option<CatalogDb>,
    catalog: CatalogConfig,
    storage: StorageConfig,
}

impl std::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintainer")
            .field("table", &self.table.ident())
            .field("catalog", &self.catalog.describe())
            .finish()
    }
}

impl Maintainer {
    /// A maintainer for `table`, in the catalog `catalog` was connected from (named
    /// `catalog_name`), with the warehouse reached through `storage`.
    pub async fn new(
        table: JournalTable,
        catalog: &CatalogConfig,
        catalog_name: &str,
        storage: &StorageConfig,
    ) -> Result<Self, TableError> {
        let db = match catalog {
            CatalogConfig::Sql { uri, .. } => Some(CatalogDb::connect(uri, catalog_name).await?),
            _ => None,
        };
        Ok(Maintainer {
            table,
            db,
            catalog: catalog.clone(),
            storage: storage.clone(),
        })
    }

    /// The table maintained.
    pub fn table(&self) -> &JournalTable {
        &self.table
    }

    /// Why compaction is handed off for this catalog, if it is.
    pub fn compaction_handed_off(&self) -> Option<String> {
        let why = match &self.catalog {
            CatalogConfig::Sql { .. } => return None,
            CatalogConfig::Glue { .. } => {
                "compaction on AWS Glue is left to Glue's managed table optimizer \
                 (enable compaction on the table in Lake Formation / the Glue console)"
            }
            CatalogConfig::S3Tables { .. } => {
                "compaction on S3 Tables is done by S3 Tables' managed maintenance \
                 (on by default; see put-table-maintenance-configuration)"
            }
            CatalogConfig::Rest { .. } => {
                "compaction on a REST catalog is left to the catalog server's own maintenance \
                 (annotable cannot swap a rewritten snapshot in through the REST API of iceberg 0.10.1)"
            }
        };
        Some(why.to_string())
    }

    /// Why the orphan sweep is handed off for this catalog, if it is.
    fn orphans_handed_off(&self) -> Option<String> {
        matches!(self.catalog, CatalogConfig::S3Tables { .. }).then(|| {
            "orphan cleanup on S3 Tables is done by S3 Tables' unreferenced-file removal".into()
        })
    }

    /// The current snapshot's files and the number of snapshots.
    pub async fn stats(&self) -> Result<TableStats, TableError> {
        self.stats_with(&mut ManifestCache::default()).await
    }

    async fn stats_with(&self, cache: &mut ManifestCache) -> Result<TableStats, TableError> {
        let table = self.table.load().await?;
        stats(&table, cache)
            .await
            .map_err(|e| self.error("reading the manifests", e))
    }

    /// Runs the steps `options` asks for, in order: compaction, expiry, orphans.
    pub async fn run(&self, options: &MaintainOptions) -> Result<MaintainReport, TableError> {
        let started = Instant::now();
        // Manifests never change once written: one cache serves every step of the run.
        let mut cache = ManifestCache::default();
        let mut report = MaintainReport {
            before: self.stats_with(&mut cache).await?,
            ..MaintainReport::default()
        };
        if options.compact {
            match self.compaction_handed_off() {
                Some(note) => report.notes.push(note),
                None => report.compaction = Some(self.compact(options, &mut cache).await?),
            }
        }
        if options.expire {
            let mut expiry = self.expire(options, &mut cache).await?;
            if options.compact
                && !options.dry_run
                && self.compaction_handed_off().is_none()
                && self.drop_stale_deletes(&mut cache).await?
            {
                // The compaction snapshot may now be old enough to go as well.
                let again = self.expire(options, &mut cache).await?;
                expiry.snapshots_expired += again.snapshots_expired;
                expiry.files_deleted += again.files_deleted;
                expiry.bytes_deleted += again.bytes_deleted;
            }
            report.expiry = Some(expiry);
        }
        if options.orphans {
            match self.orphans_handed_off() {
                Some(note) => report.notes.push(note),
                None => report.orphans = Some(self.sweep_orphans(options, &mut cache).await?),
            }
        }
        report.after = self.stats_with(&mut cache).await?;
        report.took = started.elapsed();
        Ok(report)
    }

    fn error(&self, action: &str, source: Error) -> TableError {
        TableError::Maintenance {
            table: self.table.ident().to_string(),
            action: action.to_string(),
            source: Box::new(source),
        }
    }

    async fn compact(
        &self,
        options: &MaintainOptions,
        cache: &mut ManifestCache,
    ) -> Result<CompactionReport, TableError> {
        let Some(db) = &self.db else {
            return Ok(CompactionReport::default());
        };
        let table = self.table.load().await?;
        let Some(current) = table.metadata().current_snapshot().cloned() else {
            return Ok(CompactionReport::default());
        };
        let files = cache
            .snapshot(&table, &current)
            .await
            .map_err(|e| self.error("reading the manifests", e))?;
        let bins = compact::plan(&files.live, &files.deletes, options.target_file_bytes);
        let mut report = CompactionReport {
            files_rewritten: bins.iter().map(|b| b.files.len()).sum(),
            bytes_rewritten: bins
                .iter()
                .flat_map(|b| &b.files)
                .map(|f| f.file_size_in_bytes())
                .sum(),
            manifests_merged: files.manifests.len(),
            ..CompactionReport::default()
        };
        // Merged means one manifest of data files and at most one of deletes.
        let merged = 1 + usize::from(!files.deletes.is_empty());
        if bins.is_empty() && files.manifests.len() <= merged {
            report.manifests_merged = 0;
            return Ok(report);
        }
        if options.dry_run {
            return Ok(report);
        }
        info!(table = %self.table.ident(), files = report.files_rewritten, bytes = report.bytes_rewritten,
            groups = bins.len(), manifests = files.manifests.len(), "compacting");

        let prefix = format!("compact-{}", uuid::Uuid::now_v7());
        let mut added = Vec::new();
        for bin in &bins {
            match compact::rewrite(
                &table,
                self.table.arrow_schema(),
                bin,
                &prefix,
                options.target_file_bytes,
            )
            .await
            {
                Ok(files) => added.extend(files),
                Err(e) => {
                    self.discard(&table, added.iter().map(|f| f.file_path().to_string()))
                        .await;
                    return Err(self.error("rewriting data files", e));
                }
            }
        }
        report.files_written = added.len();
        report.bytes_written = added.iter().map(|f| f.file_size_in_bytes()).sum();
        let added_paths: Vec<String> = added.iter().map(|f| f.file_path().to_string()).collect();
        let rewrite = Rewrite {
            removed: bins
                .iter()
                .flat_map(|b| &b.files)
                .map(|f| f.file_path().to_string())
                .collect(),
            added,
            kind: "compaction",
            operation: iceberg::spec::Operation::Replace,
            properties: Vec::new(),
            expect_current: None,
            table_properties: Vec::new(),
        };
        match self.commit_rewrite(db, &rewrite, cache).await {
            Ok((snapshot_id, attempts)) => {
                report.snapshot_id = Some(snapshot_id);
                report.attempts = attempts;
                Ok(report)
            }
            Err(e) => {
                self.discard(&table, added_paths.into_iter()).await;
                Err(e)
            }
        }
    }

    /// A compaction snapshot lists the files it replaced as DELETED entries, and every read of
    /// it loads them. Once its parent has expired nobody can need them, so the manifest is
    /// written again without them (a `replace` snapshot with no data change).
    async fn drop_stale_deletes(&self, cache: &mut ManifestCache) -> Result<bool, TableError> {
        let Some(db) = &self.db else {
            return Ok(false);
        };
        let table = self.table.load().await?;
        let metadata = table.metadata();
        let Some(current) = metadata.current_snapshot() else {
            return Ok(false);
        };
        let parent_gone = current
            .parent_snapshot_id()
            .is_some_and(|p| metadata.snapshot_by_id(p).is_none());
        if changes_rows(current) || !parent_gone {
            return Ok(false);
        }
        let files = cache
            .snapshot(&table, current)
            .await
            .map_err(|e| self.error("reading the manifests", e))?;
        if !files
            .manifests
            .iter()
            .any(|m| m.deleted_files_count.unwrap_or(0) > 0)
        {
            return Ok(false);
        }
        let rewrite = Rewrite {
            removed: HashSet::new(),
            added: Vec::new(),
            kind: "manifest-rewrite",
            operation: iceberg::spec::Operation::Replace,
            properties: Vec::new(),
            expect_current: None,
            table_properties: Vec::new(),
        };
        self.commit_rewrite(db, &rewrite, cache).await?;
        Ok(true)
    }

    /// Stages and swaps in the rewrite, rebuilding it on the newest snapshot after each
    /// conflict. Returns the snapshot id and the attempts made.
    async fn commit_rewrite(
        &self,
        db: &CatalogDb,
        rewrite: &Rewrite,
        cache: &mut ManifestCache,
    ) -> Result<(i64, u32), TableError> {
        const ATTEMPTS: u32 = 20;
        let ident = self.table.ident();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Optimistic first; once other commits have won twice, lock them out for the
            // short time it takes to stage this one, so a busy writer cannot starve it.
            let lock = if attempt > 2 {
                Some(db.lock(ident).await?)
            } else {
                None
            };
            let table = self.table.load().await?;
            let from = table.metadata_location().unwrap_or_default().to_string();
            let staged = match compact::stage(&table, rewrite, cache).await {
                Ok(staged) => staged,
                Err(BuildFailure::Gone(path)) => {
                    return Err(self.error(
                        &format!("committing the {}", rewrite.kind),
                        Error::new(
                            ErrorKind::DataInvalid,
                            format!(
                                "{path} is no longer in the table (another process rewrote or \
                                 removed it meanwhile); nothing was changed: run it again"
                            ),
                        ),
                    ));
                }
                Err(BuildFailure::Iceberg(e)) => {
                    return Err(self.error(&format!("building the {} snapshot", rewrite.kind), e));
                }
            };
            let outcome = match lock {
                Some(lock) => lock.swap(&from, &staged.location).await,
                None => db.swap(ident, &from, &staged.location).await,
            };
            match outcome {
                Ok(true) => {
                    info!(table = %ident, snapshot_id = staged.snapshot_id, attempt, kind = rewrite.kind, "rewrite committed");
                    return Ok((staged.snapshot_id, attempt));
                }
                Ok(false) => {}
                Err(e) => {
                    // The answer was lost: did the swap land?
                    let now = self.table.load().await?;
                    if now.metadata().snapshot_by_id(staged.snapshot_id).is_some() {
                        return Ok((staged.snapshot_id, attempt));
                    }
                    if attempt >= ATTEMPTS || !e.is_retryable() {
                        self.discard(&table, staged.written.into_iter()).await;
                        return Err(e);
                    }
                }
            }
            // Another commit came first: this attempt's files are garbage.
            self.discard(&table, staged.written.into_iter()).await;
            if attempt >= ATTEMPTS {
                return Err(self.error(
                    &format!("committing the {}", rewrite.kind),
                    Error::new(
                        ErrorKind::CatalogCommitConflicts,
                        format!("other commits kept winning ({attempt} attempts); run it again"),
                    ),
                ));
            }
            warn!(table = %ident, attempt, kind = rewrite.kind, "another commit landed first; rebuilding the rewrite on it");
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)))).await;
        }
    }

    /// Commits `rewrite` (files replaced by files, with its summary properties) through the
    /// catalog's compare-and-swap, as compaction does; the SQL catalog only.
    pub(crate) async fn commit(&self, rewrite: &Rewrite) -> Result<i64, TableError> {
        let Some(db) = &self.db else {
            return Err(self.error(
                &format!("committing the {}", rewrite.kind),
                Error::new(
                    ErrorKind::FeatureUnsupported,
                    format!(
                        "{} needs the SQL catalog (SQLite or PostgreSQL), the only one whose \
                         pointer swap annotable can perform",
                        rewrite.kind
                    ),
                ),
            ));
        };
        let (id, _) = self
            .commit_rewrite(db, rewrite, &mut ManifestCache::default())
            .await?;
        Ok(id)
    }

    /// Points the tag `name` at `snapshot_id` through the catalog's compare-and-swap (the SQL
    /// catalog only). A tagged snapshot survives expiry, and with it every file it references.
    pub(crate) async fn tag(&self, name: &str, snapshot_id: i64) -> Result<(), TableError> {
        const ATTEMPTS: u32 = 20;
        let action = format!("tagging snapshot {snapshot_id} as {name}");
        let Some(db) = &self.db else {
            return Err(self.error(
                &action,
                Error::new(
                    ErrorKind::FeatureUnsupported,
                    "tags are committed through the SQL catalog (SQLite or PostgreSQL) only",
                ),
            ));
        };
        let ident = self.table.ident();
        for attempt in 1..=ATTEMPTS {
            let table = self.table.load().await?;
            if table
                .metadata()
                .snapshot_for_ref(name)
                .is_some_and(|s| s.snapshot_id() == snapshot_id)
            {
                return Ok(());
            }
            let from = table.metadata_location().unwrap_or_default().to_string();
            let staged = compact::stage_tag(&table, name, snapshot_id)
                .await
                .map_err(|e| self.error(&action, e))?;
            match db.swap(ident, &from, &staged.location).await {
                Ok(true) => {
                    info!(table = %ident, snapshot_id, tag = name, "tag committed");
                    return Ok(());
                }
                Ok(false) => self.discard(&table, staged.written.into_iter()).await,
                // The answer was lost: the next attempt finds out whether the swap landed, so
                // the file is left for the orphan sweep rather than deleted while perhaps current.
                Err(e) if e.is_retryable() && attempt < ATTEMPTS => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)))).await;
        }
        Err(self.error(
            &action,
            Error::new(
                ErrorKind::CatalogCommitConflicts,
                format!("other commits kept winning ({ATTEMPTS} attempts); run it again"),
            ),
        ))
    }

    /// Whether rewrites (compaction, the current-state refresh) can be committed on this
    /// catalog.
    pub fn can_rewrite(&self) -> bool {
        self.db.is_some()
    }

    /// Deletes files this run wrote but did not commit (best effort: the orphan sweep gets any
    /// left over).
    pub(crate) async fn discard(&self, table: &Table, paths: impl Iterator<Item = String>) {
        let paths: Vec<String> = paths.collect();
        if paths.is_empty() {
            return;
        }
        let (_, failed) = files::delete_all(table.file_io(), paths).await;
        if let Some(e) = failed {
            warn!(table = %self.table.ident(), error = %e, "could not delete an uncommitted file; the orphan sweep will");
        }
    }

    async fn expire(
        &self,
        options: &MaintainOptions,
        cache: &mut ManifestCache,
    ) -> Result<ExpiryReport, TableError> {
        let mut report = ExpiryReport::default();
        let mut attempt: u32 = 0;
        let (before, after) = loop {
            attempt += 1;
            let table = self.table.load().await?;
            let ids = expirable(&table, options);
            if ids.is_empty() {
                break (table.clone(), table);
            }
            if options.dry_run {
                report.snapshots_expired = ids.len();
                return Ok(report);
            }
            let tx = Transaction::new(&table);
            let result = async {
                let tx = tx
                    .expire_snapshots()
                    .expire_snapshot_ids(ids.iter().copied())
                    // By id alone: no age-based selection of its own.
                    .expire_older_than_ms(0)
                    .apply(tx)?;
                tx.commit(self.table.catalog().as_ref()).await
            }
            .await;
            match result {
                Ok(after) => break (table, after),
                Err(e) if attempt < 10 && is_transient(&e) => {
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.error("expiring snapshots", e)),
            }
        };
        let remaining: HashSet<i64> = after
            .metadata()
            .snapshots()
            .map(|s| s.snapshot_id())
            .collect();
        let expired: Vec<SnapshotRef> = before
            .metadata()
            .snapshots()
            .filter(|s| !remaining.contains(&s.snapshot_id()))
            .cloned()
            .collect();
        report.snapshots_expired = expired.len();
        let mut doomed = HashSet::new();
        if !expired.is_empty() {
            let kept: Vec<SnapshotRef> = after.metadata().snapshots().cloned().collect();
            let live = referenced_by(&after, &kept, cache)
                .await
                .map_err(|e| self.error("reading the manifests of the kept snapshots", e))?;
            let old = referenced_by(&before, &expired, cache)
                .await
                .map_err(|e| self.error("reading the manifests of the expired snapshots", e))?;
            doomed.extend(old.into_iter().filter(|p| !live.contains(p)));
        }
        // Metadata files older than the oldest one the metadata log still names.
        let oldest_logged = after
            .metadata()
            .metadata_log()
            .iter()
            .filter_map(|l| metadata_version(&l.metadata_file))
            .min()
            .or_else(|| after.metadata_location().and_then(metadata_version));
        let mut sizes = std::collections::HashMap::new();
        if let Some(oldest) = oldest_logged {
            let dir = format!(
                "{}/metadata",
                after.metadata().location().trim_end_matches('/')
            );
            match files::list(&dir, &self.storage).await {
                Ok(listed) => {
                    for file in listed {
                        if metadata_version(&file.path).is_some_and(|v| v < oldest)
                            && Some(file.path.as_str()) != after.metadata_location()
                        {
                            sizes.insert(file.path.clone(), file.size);
                            doomed.insert(file.path);
                        }
                    }
                }
                Err(e) => warn!(table = %self.table.ident(), error = %e,
                    "could not list the metadata folder; old metadata files are left for the orphan sweep"),
            }
        }
        let doomed: Vec<String> = doomed.into_iter().collect();
        report.bytes_deleted = doomed.iter().filter_map(|p| sizes.get(p)).sum();
        let (deleted, failed) = files::delete_all(after.file_io(), doomed).await;
        report.files_deleted = deleted;
        if let Some(e) = failed {
            warn!(table = %self.table.ident(), error = %e, "some expired files could not be deleted; the orphan sweep will retry");
        }
        Ok(report)
    }

    async fn sweep_orphans(
        &self,
        options: &MaintainOptions,
        cache: &mut ManifestCache,
    ) -> Result<OrphanReport, TableError> {
        let table = self.table.load().await?;
        let metadata = table.metadata();
        self.check_location_is_exclusive(metadata.location())
            .await?;
        let listed = files::list(metadata.location(), &self.storage)
            .await
            .map_err(|e| self.error("listing the table's files", e))?;
        let snapshots: Vec<SnapshotRef> = metadata.snapshots().cloned().collect();
        let mut referenced = referenced_by(&table, &snapshots, cache)
            .await
            .map_err(|e| self.error("reading the manifests", e))?;
        referenced.extend(table.metadata_location().map(str::to_string));
        referenced.extend(
            metadata
                .metadata_log()
                .iter()
                .map(|l| l.metadata_file.clone()),
        );
        referenced.extend(
            metadata
                .statistics_iter()
                .map(|s| s.statistics_path.clone()),
        );
        referenced.extend(
            metadata
                .partition_statistics_iter()
                .map(|s| s.statistics_path.clone()),
        );
        // Entries that name a data file deleted by a kept snapshot still make it referenced
        // (an older kept snapshot may have it live), which `referenced_by` covers.
        let cutoff = SystemTime::now()
            .checked_sub(options.orphan_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = OrphanReport::default();
        let mut doomed = Vec::new();
        for file in listed {
            if referenced.contains(&file.path) {
                continue;
            }
            match file.modified {
                Some(modified) if modified < cutoff => {
                    report.bytes_deleted += file.size;
                    doomed.push(file.path);
                }
                _ => report.kept_young += 1,
            }
        }
        report.deleted = doomed.len();
        if options.dry_run || doomed.is_empty() {
            return Ok(report);
        }
        let (deleted, failed) = files::delete_all(table.file_io(), doomed).await;
        report.deleted = deleted;
        if let Some(e) = failed {
            return Err(self.error("deleting orphan files", e));
        }
        Ok(report)
    }

    /// Refuses a table location that another table of the catalog shares, contains or lies
    /// in: every file under it that this table does not reference would look like an orphan,
    /// and the other table's live files would be deleted.
    async fn check_location_is_exclusive(&self, location: &str) -> Result<(), TableError> {
        let ours = location.trim_end_matches('/');
        let catalog = self.table.catalog();
        let namespaces = catalog
            .list_namespaces(None)
            .await
            .map_err(|e| self.error("listing the catalog's namespaces", e))?;
        for namespace in namespaces {
            let tables = catalog
                .list_tables(&namespace)
                .await
                .map_err(|e| self.error("listing the catalog's tables", e))?;
            for ident in tables {
                if &ident == self.table.ident() {
                    continue;
                }
                let Ok(other) = catalog.load_table(&ident).await else {
                    continue;
                };
                let theirs = other.metadata().location().trim_end_matches('/');
                let overlaps = theirs == ours
                    || theirs.starts_with(&format!("{ours}/"))
                    || ours.starts_with(&format!("{theirs}/"));
                if overlaps {
                    return Err(self.error(
                        "checking that the orphan sweep owns the table location",
                        Error::new(
                            ErrorKind::DataInvalid,
                            format!(
                                "table {ident} lives at {theirs}, which overlaps this table's location {ours}: the orphan sweep would delete its files, so it is refused; give each table a location of its own (or run maintain without --orphans)"
                            ),
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The table's maintenance lease as the catalog's database holds it: the holder (as it
    /// described itself) and until when (ms since the epoch). `None` when nobody ever took it,
    /// and always on catalogs without a database of ours (their compaction is handed off and
    /// expiry is a plain optimistic commit, so they need no lease).
    pub async fn lease(&self) -> Result<Option<(String, i64)>, TableError> {
        match &self.db {
            Some(db) => db.lease_holder(&self.lease_name()).await,
            None => Ok(None),
        }
    }

    /// Compare-and-swap of the maintenance lease: sets (`holder`, `until_ms`) if it is still
    /// `expect` (`None`: never taken). False when another process changed it first; always
    /// true on catalogs without a lease (see [`Maintainer::lease`]).
    pub async fn swap_lease(
        &self,
        holder: &str,
        until_ms: i64,
        expect: Option<(&str, i64)>,
    ) -> Result<bool, TableError> {
        match &self.db {
            Some(db) => {
                db.swap_lease(&self.lease_name(), holder, until_ms, expect)
                    .await
            }
            None => Ok(true),
        }
    }

    /// Where the lease is kept, for messages.
    pub fn lease_location(&self) -> String {
        match &self.db {
            Some(_) => format!("annotable_leases row {}", self.lease_name()),
            None => format!("(no lease needed on this catalog) {}", self.lease_name()),
        }
    }

    fn lease_name(&self) -> String {
        format!("maintain:{}", self.table.ident())
    }
}

/// The snapshots expiry removes: older than the retention, not the head of any branch or tag,
/// and not among the newest `min_snapshots`.
fn expirable(table: &Table, options: &MaintainOptions) -> Vec<i64> {
    let metadata = table.metadata();
    let cutoff = chrono::Utc::now().timestamp_millis()
        - i64::try_from(options.snapshot_retention.as_millis()).unwrap_or(i64::MAX);
    let heads: HashSet<i64> = ref_heads(metadata)
        .into_iter()
        .chain(metadata.current_snapshot_id())
        .collect();
    let mut snapshots: Vec<&SnapshotRef> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| std::cmp::Reverse(s.sequence_number()));
    snapshots
        .into_iter()
        .skip(options.min_snapshots.max(1))
        .filter(|s| s.timestamp_ms() < cutoff && !heads.contains(&s.snapshot_id()))
        .map(|s| s.snapshot_id())
        .collect()
}

/// The snapshots branches and tags point at. iceberg 0.10.1 has no public accessor for the
/// refs, so they are read from the metadata's JSON form (the spec's `refs` object).
fn ref_heads(metadata: &iceberg::spec::TableMetadata) -> Vec<i64> {
    let Ok(json) = serde_json::to_value(metadata) else {
        return Vec::new();
    };
    json.get("refs")
        .and_then(|r| r.as_object())
        .map(|refs| {
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(serde_json::Value::as_i64))
                .collect()
        })
        .unwrap_or_default()
}

/// The version of a metadata file (`…/metadata/00012-<uuid>.metadata.json` → 12).
fn metadata_version(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    if !name.ends_with(".metadata.json") {
        return None;
    }
    name.split('-').next()?.parse().ok()
}

async fn stats(table: &Table, cache: &mut ManifestCache) -> Result<TableStats, Error> {
    let metadata = table.metadata();
    let mut stats = TableStats {
        snapshots: metadata.snapshots().len(),
        ..TableStats::default()
    };
    if let Some(current) = metadata.current_snapshot() {
        let files = cache.snapshot(table, current).await?;
        stats.manifests = files.manifests.len();
        stats.data_files = files.live.len();
        stats.data_bytes = files.live.iter().map(|e| e.file_size_in_bytes()).sum();
        stats.rows = files.live.iter().map(|e| e.record_count()).sum();
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::metadata_version;

    #[test]
    fn metadata_versions_are_read_from_file_names() {
        assert_eq!(
            metadata_version("file:///w/t/metadata/00012-0b9c.metadata.json"),
            Some(12)
        );
        assert_eq!(
            metadata_version("s3://b/t/metadata/00000-x.gz.metadata.json"),
            Some(0)
        );
        assert_eq!(metadata_version("s3://b/t/metadata/snap-1-0-x.avro"), None);
        assert_eq!(metadata_version("s3://b/t/metadata/x-m0.avro"), None);
    }
}
