//! The current state as Iceberg tables: `annotations` (exactly the AWS annotation-table
//! columns, one row per live annotation) and its bookkeeping table `annotations_tombstones`,
//! refreshed incrementally from the journal.
//!
//! **What a refresh does.** It reads the journal rows committed since the watermark (the
//! journal snapshot the state's current snapshot records under [`SUMMARY_WATERMARK`]; see
//! `delta`), finds the partitions of the state those rows fall in, reads those partitions of
//! both tables (their position deletes applied), folds the object versions the rows touch with
//! the view's rule (`fold`) and writes what changed: a row already in the state that survives
//! the fold stays where it is, so of those rows only the columns the rule reads are decoded,
//! and only the rows the journal replaced are deleted; the files replaced and the files written
//! are committed as one `overwrite` snapshot per table through the catalog's compare-and-swap,
//! the same commit compaction uses. The tombstones table is committed first, the state table
//! (and with it the new watermark) second: a crash in between leaves tombstones ahead of the
//! state, and since folding is idempotent the next refresh folds the same rows again and lands
//! on the same answer.
//!
//! **Why deltas and position deletes (merge-on-read).** Copy-on-write of every touched
//! partition made a refresh cost the partitions touched, and random changes touch all of them
//! (10k changes to a 5M-row state rewrote all of it). So a partition's share of each table is
//! a base (its biggest file), at most three deltas (the rows changed since), and one
//! position-delete file naming the rows of those files that later deltas or deletions replaced
//! (`merge`); a refresh writes a new delta (folding in only the smaller earlier deltas, so the
//! rows changed since the base are not all written again each time) and a new delete file, and
//! reads the pages of the other files that can hold its keys without writing them. Once churn
//! passes a quarter of the partition's live rows the partition is written whole again, so
//! readers never skip more than that share. Position deletes, not equality deletes, because
//! every engine that reads Iceberg v2 applies them (pyiceberg, DuckDB through a plan, Spark,
//! Trino) and they cost a reader a row selection, not a join. iceberg 0.10.1 writes neither
//! the files nor their manifests: `deletes` writes the files, the commit (`maintain::compact`)
//! their manifest. Partitions are `bucket` × a 64-way hash of `object_key`: a hash rather than
//! key ranges because iceberg truncates string bounds, so ranges of long keys with a common
//! prefix could not be told apart; the hash also prunes a lookup by (bucket, object_key) to
//! one partition in every engine that reads the spec.
//!
//! **Safety beside other writers.** Appends to the journal never conflict with a refresh (it
//! reads a snapshot and records which). Each commit requires the table's current snapshot to
//! be the one the refresh read; another refresher or a compaction of the state in between
//! makes it fail cleanly (nothing changed; run again). One refresher at a time is the
//! caller's lease. The full rebuild folds the whole journal (and, once journal retention has
//! dropped rows, the retention base that holds them: `retention`) and replaces every file.

mod deletes;
mod delta;
mod fold;
mod merge;
mod pages;
mod retention;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::{StreamExt, TryFutureExt};
use iceberg::spec::{DataContentType, DataFile, Datum, Literal, Operation, PrimitiveLiteral};
use iceberg::table::Table;
use iceberg::{Catalog, Error, ErrorKind};
use tracing::info;

use crate::encode::{encode_rows, sort_batch, sort_keys};
use crate::maintain::compact::{Rewrite, arrow_error, read_data_file, read_parquet, write_sorted};
use crate::maintain::inventory::ManifestCache;
use crate::{
    CatalogConfig, JournalRow, JournalTable, Maintainer, StorageConfig, TableError, decode_rows,
    state_spec, tombstones_spec,
};
pub use deletes::parse_positions;
use fold::Fold;
use merge::{FileShape, Merge, merge_plan};
pub use retention::{
    PROPERTY_RETAINED_SINCE, RETENTION_BASE_TAG, RetentionReport, SUMMARY_CUT, retained_since,
};

/// Snapshot summary key of the state table: the journal snapshot id the state reflects.
pub const SUMMARY_WATERMARK: &str = "annotable.state.journal-snapshot-id";
/// Snapshot summary key of the state table: when that journal snapshot was committed (ms).
pub const SUMMARY_WATERMARK_MS: &str = "annotable.state.journal-committed-at-ms";
/// Snapshot summary key of the state table: `incremental` or `rebuild`.
pub const SUMMARY_REFRESH: &str = "annotable.state.refresh";

/// The hash partitions of `object_key` per bucket (`bucket[64]` in schemas/annotations.json):
/// a fold split into passes can take at most this many.
const HASH_PARTITIONS: u64 = 64;

/// Data files of the state are rolled at this size (a partition is normally one file).
const TARGET_FILE_BYTES: usize = 128 * 1024 * 1024;

/// The journal snapshot the state reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The journal snapshot id.
    pub snapshot_id: i64,
    /// When it was committed (ms since the epoch).
    pub committed_at_ms: i64,
}

/// What one refresh did.
#[derive(Debug, Clone, Default)]
pub struct RefreshReport {
    /// The watermark before (`None`: never refreshed).
    pub from: Option<i64>,
    /// The watermark after.
    pub to: Option<i64>,
    /// True when the whole journal was folded (no usable watermark, or asked to).
    pub rebuilt: bool,
    /// The state snapshot a whole-journal fold started from: the retention base, when journal
    /// retention has dropped rows (see [`RETENTION_BASE_TAG`]).
    pub base: Option<i64>,
    /// Journal appends folded in.
    pub journal_snapshots: usize,
    /// Passes over the journal files (more than one when their rows exceed the budget).
    pub passes: u64,
    /// Journal data files read.
    pub journal_files: usize,
    /// Journal rows read.
    pub journal_rows: usize,
    /// State partitions refreshed.
    pub partitions: usize,
    /// Of the partitions' shares in the state and tombstones tables, those written again whole
    /// (copy-on-write); the others got a delta file and position deletes.
    pub partitions_merged: usize,
    /// Rows deleted by position in the delete files written (earlier deletes they carry over
    /// included).
    pub position_deletes: usize,
    /// Rows in the data files (bases and deltas) an incremental refresh read by pages
    /// (`pages`).
    pub paged_rows: u64,
    /// Of those, the rows whose key columns were decoded (those in pages that can hold a
    /// touched key); the fold rule's columns are decoded only for the touched rows among them.
    pub paged_rows_read: u64,
    /// State and tombstone files replaced.
    pub files_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// State and tombstone files written.
    pub files_written: usize,
    /// Their bytes.
    pub bytes_written: u64,
    /// Live annotations in the partitions written.
    pub live_rows: usize,
    /// Tombstones in the partitions written.
    pub tombstones: usize,
    /// The state snapshot committed (`None`: already up to date, or deferred).
    pub snapshot_id: Option<i64>,
    /// Set when nothing was committed because the oldest journal append not folded in, or a
    /// partition of the state to rewrite, needs at least this many bytes, more than the budget.
    pub deferred: Option<u64>,
    /// Wall time.
    pub took: Duration,
}

/// The state table and its tombstones, in the journal's namespace.
pub struct StateTables {
    state: Maintainer,
    tombstones: Maintainer,
}

impl std::fmt::Debug for StateTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTables")
            .field("state", &self.state.table().ident())
            .finish()
    }
}

/// The tombstones table's name for a state table named `state`.
pub fn tombstones_name(state: &str) -> String {
    format!("{state}_tombstones")
}

impl StateTables {
    /// Opens `namespace.name` and `namespace.name_tombstones`, creating them if missing.
    pub async fn open(
        catalog: Arc<dyn Catalog>,
        catalog_config: &CatalogConfig,
        catalog_name: &str,
        storage: &StorageConfig,
        namespace: &str,
        name: &str,
    ) -> Result<Self, TableError> {
        let state =
            JournalTable::open_spec(catalog.clone(), namespace, name, state_spec()?).await?;
        let tombstones = JournalTable::open_spec(
            catalog,
            namespace,
            &tombstones_name(name),
            tombstones_spec()?,
        )
        .await?;
        Ok(StateTables {
            state: Maintainer::new(state, catalog_config, catalog_name, storage).await?,
            tombstones: Maintainer::new(tombstones, catalog_config, catalog_name, storage).await?,
        })
    }

    /// The state table's maintainer (its lease is the refresher's lease).
    pub fn state(&self) -> &Maintainer {
        &self.state
    }

    /// The tombstones table's maintainer.
    pub fn tombstones(&self) -> &Maintainer {
        &self.tombstones
    }

    /// Whether this catalog lets annotable commit refreshes (the SQL catalog).
    pub fn can_refresh(&self) -> bool {
        self.state.can_rewrite()
    }

    /// The journal snapshot the state reflects (`None`: never refreshed).
    pub async fn watermark(&self) -> Result<Option<Watermark>, TableError> {
        Ok(watermark_of(&self.state.table().load().await?))
    }

    /// Folds the journal rows committed since the watermark into the state (all of the
    /// journal when `rebuild`, or when the watermark's snapshot is gone), and commits.
    pub async fn refresh(
        &self,
        journal: &JournalTable,
        rebuild: bool,
    ) -> Result<RefreshReport, TableError> {
        self.refresh_within(journal, rebuild, None).await
    }

    /// [`refresh`](Self::refresh), holding at most about `budget` bytes of journal rows
    /// (uncompressed, as the Parquet footers say before anything is decoded) in memory. When
    /// the rows to fold are more, the fold runs in passes: pass *g* of *n* takes the rows of the
    /// state's hash partitions ≡ *g* (mod *n*) from every file, folds and writes those
    /// partitions; everything is committed once at the end. A partition is the finest split and
    /// each pass decodes a file whole, so beyond 64 passes, or for a file bigger than the
    /// budget, an incremental refresh folds the oldest appends that fit (the watermark advances
    /// to the last one) and a whole-journal fold is not attempted:
    /// [`RefreshReport::deferred`] says how much one pass would need. Partitions of the state
    /// are loaded four at a time, each within a quarter of the budget, or the refresh is
    /// deferred the same way.
    pub async fn refresh_within(
        &self,
        journal: &JournalTable,
        rebuild: bool,
        budget: Option<u64>,
    ) -> Result<RefreshReport, TableError> {
        let started = Instant::now();
        let journal_table = journal.load().await?;
        let state_table = self.state.table().load().await?;
        let tomb_table = self.tombstones.table().load().await?;
        let from = watermark_of(&state_table).map(|w| w.snapshot_id);
        let mut report = RefreshReport {
            from,
            to: from,
            ..RefreshReport::default()
        };
        let current = journal_table
            .metadata()
            .current_snapshot()
            .map(|s| s.snapshot_id());
        if !rebuild && from.is_some() && from == current {
            report.took = started.elapsed();
            return Ok(report);
        }
        let journal_error = |e| journal_error(journal, "reading the rows to fold", e);
        let since = match (rebuild, from) {
            (true, _) => delta::From::Everything,
            (false, Some(watermark)) => delta::From::Watermark(watermark),
            (false, None) => delta::From::Beginning,
        };
        let delta = delta::since(&journal_table, since)
            .await
            .map_err(journal_error)?;
        let Some(mut to) = delta.to.clone() else {
            report.took = started.elapsed();
            return Ok(report);
        };
        info!(
            table = %self.state.table().ident(), from = ?from, rebuild = delta.full,
            journal_files = delta.files.len(), "refreshing the state"
        );
        report.rebuilt = delta.full;

        // The journal files to fold, sized from their footers before anything is decoded.
        // When they hold more than the budget, they are folded in passes, each taking the
        // rows of every `groups`-th hash partition of the state and reading the files again,
        // so memory holds about a budget of rows whatever the journal's size. Beyond
        // `HASH_PARTITIONS` passes a partition cannot be split further: an incremental refresh
        // then folds the oldest appends that fit, a whole-journal fold is deferred.
        let mut files: Vec<DataFile> = Vec::new();
        let mut total = 0u64;
        let max_total = budget.map(|b| b.saturating_mul(HASH_PARTITIONS));
        // Every pass decodes each file whole, so one file over the budget cannot be split.
        let over = |largest: u64, total: u64| match (budget, max_total) {
            (Some(budget), _) if largest > budget => Some(largest),
            (_, Some(max)) if total > max => Some(total.div_ceil(HASH_PARTITIONS)),
            _ => None,
        };
        if delta.full {
            let mut largest = 0;
            for file in &delta.files {
                let size = footer_size(&journal_table, file)
                    .await
                    .map_err(journal_error)?;
                largest = largest.max(size);
                total += size;
                files.push(file.clone());
            }
            if let Some(needs) = over(largest, total) {
                report.deferred = Some(needs);
                report.took = started.elapsed();
                return Ok(report);
            }
        } else {
            for (snapshot, append) in &delta.appends {
                let (mut bytes, mut largest) = (0, 0);
                for file in append {
                    let size = footer_size(&journal_table, file)
                        .await
                        .map_err(journal_error)?;
                    largest = largest.max(size);
                    bytes += size;
                }
                if let Some(needs) = over(largest, total + bytes) {
                    if report.journal_snapshots == 0 {
                        report.deferred = Some(needs);
                        report.took = started.elapsed();
                        return Ok(report);
                    }
                    break;
                }
                total += bytes;
                report.journal_snapshots += 1;
                files.extend(append.iter().cloned());
                to = snapshot.clone();
            }
        }
        report.journal_files = files.len();
        let groups: u64 = match budget {
            Some(budget) if total > budget => total.div_ceil(budget.max(1)),
            _ => 1,
        };
        report.passes = groups;
        let partitioner = Partitioner::new()?;
        let in_group = |partition: &PartitionId, group: u64| {
            u64::try_from(partition.1).unwrap_or(0) % groups == group
        };
        // The journal rows of one pass, by partition of the state.
        let rows_of = async |group: u64| -> Result<BTreeMap<PartitionId, Vec<JournalRow>>, Error> {
            let mut rows: BTreeMap<PartitionId, Vec<JournalRow>> = BTreeMap::new();
            for file in &files {
                let raw = fetch(&journal_table, file).await?;
                for row in decode(raw, journal.arrow_schema(), file, None).await? {
                    let partition = partitioner.of(&row);
                    if in_group(&partition, group) {
                        rows.entry(partition).or_default().push(row);
                    }
                }
            }
            Ok(rows)
        };

        let state_schema = self.state.table().arrow_schema().clone();
        let tomb_schema = self.tombstones.table().arrow_schema().clone();
        let by_partition =
            |files: Vec<DataFile>| -> Result<BTreeMap<PartitionId, PartFiles>, Error> {
                let mut out: BTreeMap<PartitionId, PartFiles> = BTreeMap::new();
                for file in files {
                    let part = out.entry(partition_of(&file)?).or_default();
                    if file.content_type() == DataContentType::PositionDeletes {
                        part.deletes.push(file);
                    } else {
                        part.data.push(file);
                    }
                }
                Ok(out)
            };
        let mut state_files = live_files(&state_table)
            .and_then(|f| async { by_partition(f) })
            .await
            .map_err(|e| self.state_error("reading the manifests", e))?;
        let mut tomb_files = live_files(&tomb_table)
            .and_then(|f| async { by_partition(f) })
            .await
            .map_err(|e| self.tomb_error("reading the manifests", e))?;

        // After journal retention the journal alone no longer computes the state: a
        // whole-journal fold starts from the retention base (see `retention`).
        let (mut base_state, mut base_tombs) = if delta.full {
            report.base = state_table
                .metadata()
                .snapshot_for_ref(RETENTION_BASE_TAG)
                .map(|s| s.snapshot_id());
            (
                tagged_files(&state_table)
                    .and_then(|f| async { by_partition(f) })
                    .await
                    .map_err(|e| self.state_error("reading the retention base", e))?,
                tagged_files(&tomb_table)
                    .and_then(|f| async { by_partition(f) })
                    .await
                    .map_err(|e| self.tomb_error("reading the retention base", e))?,
            )
        } else {
            (BTreeMap::new(), BTreeMap::new())
        };

        // One partition at a time: its rows, its old files, its new files.
        let prefix = format!("state-{}", uuid::Uuid::now_v7());
        let pass = Pass {
            state_table: &state_table,
            tomb_table: &tomb_table,
            state_schema: &state_schema,
            tomb_schema: &tomb_schema,
            budget: budget.map(|b| (b / PARTITIONS_AT_ONCE as u64).max(1)),
            incremental: !delta.full,
            prefix: &prefix,
        };
        let mut out = Written::default();
        let written = async {
            for group in 0..groups {
                let mut rows = rows_of(group).await.map_err(journal_error)?;
                report.journal_rows += rows.values().map(Vec::len).sum::<usize>();
                let mut partitions: Vec<PartitionId> = rows.keys().cloned().collect();
                if delta.full {
                    // A rebuild replaces every file, also those of partitions the journal no
                    // longer has.
                    partitions.extend(
                        state_files
                            .keys()
                            .chain(tomb_files.keys())
                            .chain(base_state.keys())
                            .chain(base_tombs.keys())
                            .filter(|p| in_group(p, group))
                            .cloned(),
                    );
                    partitions.sort();
                    partitions.dedup();
                }
                report.partitions += partitions.len();
                let mut jobs = Vec::with_capacity(partitions.len());
                for partition in partitions {
                    let old_state = state_files.remove(&partition).unwrap_or_default();
                    let old_tombs = tomb_files.remove(&partition).unwrap_or_default();
                    // An incremental refresh folds into the partition as it is; a whole-journal
                    // fold starts from the retention base's (nothing, when retention never ran).
                    let (load_state, load_tombs) = if delta.full {
                        (
                            base_state.remove(&partition).unwrap_or_default(),
                            base_tombs.remove(&partition).unwrap_or_default(),
                        )
                    } else {
                        (old_state.clone(), old_tombs.clone())
                    };
                    let rows = rows.remove(&partition).unwrap_or_default();
                    jobs.push((rows, (load_state, load_tombs), (old_state, old_tombs)));
                }
                // A partition is small files, read and written one after the other: several
                // at a time keep the cores busy while some wait on storage.
                let pass = &pass;
                let mut parts = futures::stream::iter(jobs.into_iter().map(
                    |(rows, (load_state, load_tombs), (old_state, old_tombs))| async move {
                        let mut part = Written::default();
                        let load = (&load_state, &load_tombs);
                        let old = (&old_state, &old_tombs);
                        let result = self
                            .rewrite_partition(pass, rows, load, old, &mut part)
                            .await;
                        (result, part)
                    },
                ))
                .buffer_unordered(PARTITIONS_AT_ONCE);
                while let Some((result, part)) = parts.next().await {
                    // What a partition wrote is kept even when another failed, so that it is
                    // discarded with the rest.
                    out.absorb(part);
                    if let Some(needs) = result? {
                        return Ok(Some(needs));
                    }
                }
            }
            Ok::<Option<u64>, TableError>(None)
        }
        .await;
        report.live_rows += out.live_rows;
        report.tombstones += out.tombstones;
        report.position_deletes += out.position_deletes;
        report.partitions_merged += out.partitions_merged;
        report.paged_rows += out.paged_rows;
        report.paged_rows_read += out.paged_rows_read;
        let Written {
            state: new_state,
            tombs: new_tombs,
            removed_state: replaced_state,
            removed_tombs: replaced_tombs,
            ..
        } = out;
        match written {
            Ok(None) => {}
            Ok(Some(needs)) => {
                // A partition bigger than the budget: nothing is committed this time.
                self.discard(&state_table, &tomb_table, &new_state, &new_tombs)
                    .await;
                report.deferred = Some(needs);
                report.took = started.elapsed();
                return Ok(report);
            }
            Err(e) => {
                self.discard(&state_table, &tomb_table, &new_state, &new_tombs)
                    .await;
                return Err(e);
            }
        }
        report.files_removed = replaced_state.len() + replaced_tombs.len();
        report.bytes_removed = replaced_state
            .iter()
            .chain(&replaced_tombs)
            .map(DataFile::file_size_in_bytes)
            .sum();
        report.files_written = new_state.len() + new_tombs.len();
        report.bytes_written = new_state
            .iter()
            .chain(&new_tombs)
            .map(DataFile::file_size_in_bytes)
            .sum();

        let properties = vec![
            (SUMMARY_WATERMARK.to_string(), to.snapshot_id().to_string()),
            (
                SUMMARY_WATERMARK_MS.to_string(),
                to.timestamp_ms().to_string(),
            ),
            (
                SUMMARY_REFRESH.to_string(),
                if delta.full { "rebuild" } else { "incremental" }.to_string(),
            ),
        ];
        let replaced = (replaced_state.as_slice(), replaced_tombs.as_slice());
        let id = self
            .commit_refresh(&pass, replaced, new_state, new_tombs, properties)
            .await?;
        report.snapshot_id = Some(id);
        report.to = Some(to.snapshot_id());
        report.took = started.elapsed();
        info!(
            table = %self.state.table().ident(),
            from = ?report.from, to = ?report.to, rebuilt = report.rebuilt,
            journal_rows = report.journal_rows, partitions = report.partitions,
            bytes_written = report.bytes_written, took_ms = report.took.as_millis() as u64,
            "state refreshed"
        );
        Ok(report)
    }

    /// Rewrites one partition: folds its journal `rows` onto the files it is loaded from (its
    /// own for an incremental refresh, the retention base's for a rebuild), writes the result
    /// and adds what it wrote, and which of the partition's `old` files that replaces, to
    /// `out`. `Ok(Some(bytes))`: loading the partition needs more than the budget, and nothing
    /// of it was written.
    async fn rewrite_partition(
        &self,
        pass: &Pass<'_>,
        rows: Vec<JournalRow>,
        (load_state, load_tombs): (&PartFiles, &PartFiles),
        (old_state, old_tombs): (&PartFiles, &PartFiles),
        out: &mut Written,
    ) -> Result<Option<u64>, TableError> {
        let mut fold = Fold::default();
        // An incremental refresh decodes and folds only the object versions its journal rows
        // touch; every other row of the partition is already folded and is carried over as
        // Arrow, untouched.
        let mut touched: Option<Touched> = pass.incremental.then(Touched::default);
        for row in rows {
            if let Some(touched) = &mut touched {
                touched.insert(
                    &row.bucket,
                    &row.object_key,
                    row.object_version_id.as_deref(),
                );
            }
            fold.add(row);
        }
        let touched = touched.map(Arc::new);
        // Compressed sizes first, so an oversized partition is not even fetched.
        let mut loaded: u64 = [load_state, load_tombs]
            .iter()
            .flat_map(|p| p.data.iter().chain(&p.deletes))
            .map(DataFile::file_size_in_bytes)
            .sum();
        if let Some(budget) = pass.budget
            && loaded > budget
        {
            return Ok(Some(loaded));
        }
        loaded = 0;
        let mut files: [Vec<Loaded>; 2] = [Vec::new(), Vec::new()];
        for (load, of_state) in [(load_state, true), (load_tombs, false)] {
            let (table, schema, record_type) = if of_state {
                (pass.state_table, pass.state_schema, Some("PUT"))
            } else {
                (pass.tomb_table, pass.tomb_schema, None)
            };
            let error = |e| {
                let action = "reading a partition to rewrite";
                if of_state {
                    self.state_error(action, e)
                } else {
                    self.tomb_error(action, e)
                }
            };
            let mut deleted = deletes::read(table, &load.deletes).await.map_err(error)?;
            // An incremental refresh reads only the pages of each file that can hold touched
            // rows (`pages`), and of those rows only the columns the fold rule reads: a row
            // that survives stays where it is (`fold`). A file stays unless it is folded into
            // the new delta or the partition is written whole again, and is read in full only
            // then.
            let rule_schema = rule_columns(schema).map_err(error)?;
            for file in &load.data {
                let dead = Arc::new(deleted.remove(file.file_path()).unwrap_or_default());
                let (batches, size) = match touched.as_ref() {
                    Some(touched) => {
                        let hit = |pos: u64, bucket: &str, key: &str, version: Option<&str>| {
                            !dead.contains(&pos) && touched.contains(bucket, key, version)
                        };
                        let pages =
                            pages::read_pages(table, file, &rule_schema, &touched.keys, &hit)
                                .await
                                .map_err(error)?;
                        out.paged_rows += file.record_count();
                        out.paged_rows_read += pages.decoded;
                        (Batches::Pages(pages.batches), pages.uncompressed)
                    }
                    None => {
                        let raw = fetch(table, file).await.map_err(error)?;
                        let size = uncompressed_size(&raw, file).map_err(error)?;
                        (Batches::Raw(raw), size)
                    }
                };
                loaded += size;
                if let Some(budget) = pass.budget
                    && loaded > budget
                {
                    return Ok(Some(loaded));
                }
                // A row read by pages is already in the state, and only its rule columns are
                // at hand: it is folded with where it is, so that it stays there if it survives.
                let index = files[0].len() + files[1].len();
                let paged = matches!(batches, Batches::Pages(_));
                let part = split(
                    batches,
                    schema,
                    file,
                    record_type,
                    touched.clone(),
                    dead.clone(),
                )
                .await
                .map_err(error)?;
                for (row, &pos) in part.rows.into_iter().zip(&part.hits) {
                    fold.add_from(row, paged.then_some((index, pos)));
                }
                files[usize::from(!of_state)].push(Loaded {
                    file: file.clone(),
                    kept: part.kept,
                    hits: part.hits,
                    dead,
                });
            }
        }
        let folded = fold.finish();
        // Rows that survive in place are neither replaced nor written again.
        let mut stay: HashMap<usize, HashSet<u64>> = HashMap::new();
        for &(index, pos) in &folded.stay {
            stay.entry(index).or_default().insert(pos);
        }
        let [state_files, tomb_files] = &mut files;
        for (index, loaded) in state_files.iter_mut().chain(tomb_files).enumerate() {
            if let Some(stays) = stay.get(&index) {
                loaded.hits.retain(|pos| !stays.contains(pos));
                loaded.kept.rows += stays.len();
            }
        }
        let [state_files, tomb_files] = files;
        let rows_in = |files: &[Loaded]| files.iter().map(|f| f.kept.rows).sum::<usize>();
        out.live_rows += folded.live.len() + rows_in(&state_files);
        out.tombstones += folded.tombstones.len() + rows_in(&tomb_files);
        let tombs = self
            .write_part(pass, false, tomb_files, &folded.tombstones, old_tombs)
            .await
            .map_err(|e| self.tomb_error("writing tombstones", e))?;
        let state = self
            .write_part(pass, true, state_files, &folded.live, old_state)
            .await
            .map_err(|e| self.state_error("writing the state", e))?;
        for (part, of_state) in [(tombs, false), (state, true)] {
            out.position_deletes += part.position_deletes;
            out.partitions_merged += usize::from(part.merged);
            let (written, removed) = if of_state {
                (&mut out.state, &mut out.removed_state)
            } else {
                (&mut out.tombs, &mut out.removed_tombs)
            };
            written.extend(part.written);
            removed.extend(part.removed);
        }
        Ok(None)
    }

    /// Writes one table's share of a partition: its folded `rows` and the rows it keeps of
    /// the `loaded` files, either as the whole partition again (copy-on-write, every one of
    /// its `old` files replaced) or, when little of it changed, as a small delta file beside
    /// the base, whose replaced rows a position-delete file deletes (see `merge`).
    async fn write_part(
        &self,
        pass: &Pass<'_>,
        of_state: bool,
        loaded: Vec<Loaded>,
        rows: &[JournalRow],
        old: &PartFiles,
    ) -> Result<PartWritten, Error> {
        let (table, schema) = if of_state {
            (pass.state_table, pass.state_schema)
        } else {
            (pass.tomb_table, pass.tomb_schema)
        };
        let shapes: Vec<FileShape> = loaded
            .iter()
            .map(|f| FileShape {
                rows: f.file.record_count(),
                dead: (f.dead.len() + f.hits.len()) as u64,
                kept: f.kept.rows as u64,
                hits: f.hits.len() as u64,
            })
            .collect();
        let mut part = PartWritten::default();
        match merge_plan(pass.incremental, &shapes, rows.len()) {
            Merge::Unchanged => {}
            Merge::Rewrite => {
                let mut kept = Vec::new();
                for file in loaded {
                    kept.extend(file.kept_rows(table, schema).await?);
                }
                part.written = write(table, schema, kept, rows, pass.prefix).await?;
                part.removed = old.data.iter().chain(&old.deletes).cloned().collect();
                part.merged = !part.removed.is_empty();
            }
            Merge::Delta { rewrite } => {
                let mut kept = Vec::new();
                let mut positions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
                let mut like = None;
                for (i, file) in loaded.into_iter().enumerate() {
                    if rewrite.contains(&i) {
                        part.removed.push(file.file.clone());
                        kept.extend(file.kept_rows(table, schema).await?);
                        continue;
                    }
                    let dead: BTreeSet<u64> = file.dead.iter().chain(&file.hits).copied().collect();
                    if !dead.is_empty() {
                        positions.insert(file.file.file_path().to_string(), dead);
                    }
                    like.get_or_insert(file.file);
                }
                part.written = write(table, schema, kept, rows, pass.prefix).await?;
                if let Some(like) = &like
                    && let Some(file) = deletes::write(table, like, &positions, pass.prefix).await?
                {
                    part.position_deletes = file.record_count() as usize;
                    part.written.push(file);
                }
                part.removed.extend(old.deletes.iter().cloned());
            }
        }
        Ok(part)
    }

    /// Commits a refresh: the tombstones first, then the state with its new watermark (in
    /// `properties`), each over the snapshot the refresh read. When a commit fails, the files
    /// the refresh wrote are deleted again. Returns the state's new snapshot.
    async fn commit_refresh(
        &self,
        pass: &Pass<'_>,
        (replaced_state, replaced_tombs): (&[DataFile], &[DataFile]),
        new_state: Vec<DataFile>,
        new_tombs: Vec<DataFile>,
        properties: Vec<(String, String)>,
    ) -> Result<i64, TableError> {
        let (state_table, tomb_table) = (pass.state_table, pass.tomb_table);
        let rewrite = |table: &Table, removed: &[DataFile], added: Vec<DataFile>| Rewrite {
            removed: removed.iter().map(|f| f.file_path().to_string()).collect(),
            added,
            kind: "state refresh",
            operation: Operation::Overwrite,
            properties: properties.clone(),
            expect_current: Some(table.metadata().current_snapshot().map(|s| s.snapshot_id())),
            table_properties: Vec::new(),
        };
        if (!replaced_tombs.is_empty() || !new_tombs.is_empty())
            && let Err(e) = self
                .tombstones
                .commit(&rewrite(tomb_table, replaced_tombs, new_tombs.clone()))
                .await
        {
            self.discard(state_table, tomb_table, &new_state, &new_tombs)
                .await;
            return Err(e);
        }
        match self
            .state
            .commit(&rewrite(state_table, replaced_state, new_state.clone()))
            .await
        {
            Ok(id) => Ok(id),
            Err(e) => {
                // The tombstones may have landed: harmless, the next refresh folds them again.
                self.discard(state_table, tomb_table, &new_state, &[]).await;
                Err(e)
            }
        }
    }

    /// Deletes files written for a refresh that did not commit (the orphan sweep gets any
    /// left over).
    async fn discard(
        &self,
        state_table: &Table,
        tomb_table: &Table,
        state_files: &[DataFile],
        tomb_files: &[DataFile],
    ) {
        self.state
            .discard(
                state_table,
                state_files.iter().map(|f| f.file_path().to_string()),
            )
            .await;
        self.tombstones
            .discard(
                tomb_table,
                tomb_files.iter().map(|f| f.file_path().to_string()),
            )
            .await;
    }

    fn state_error(&self, action: &str, source: Error) -> TableError {
        table_error(self.state.table(), action, source)
    }

    fn tomb_error(&self, action: &str, source: Error) -> TableError {
        table_error(self.tombstones.table(), action, source)
    }
}

/// What every partition of one refresh shares: the tables as read, their schemas, the memory
/// budget and the name prefix of the files it writes.
struct Pass<'a> {
    state_table: &'a Table,
    tomb_table: &'a Table,
    state_schema: &'a SchemaRef,
    tomb_schema: &'a SchemaRef,
    /// What one partition may hold: the budget shared by the partitions folded at once.
    budget: Option<u64>,
    /// Folding onto the partitions as they are (not a whole-journal rebuild).
    incremental: bool,
    prefix: &'a str,
}

/// How many partitions a refresh folds at once; each holds its files' rows, so a refresh holds
/// up to this many partitions beside the pass's journal rows.
const PARTITIONS_AT_ONCE: usize = 4;

/// The files a refresh wrote so far, the files they replace, and the rows they hold.
#[derive(Default)]
struct Written {
    state: Vec<DataFile>,
    tombs: Vec<DataFile>,
    removed_state: Vec<DataFile>,
    removed_tombs: Vec<DataFile>,
    live_rows: usize,
    tombstones: usize,
    position_deletes: usize,
    partitions_merged: usize,
    paged_rows: u64,
    paged_rows_read: u64,
}

impl Written {
    fn absorb(&mut self, other: Written) {
        self.state.extend(other.state);
        self.tombs.extend(other.tombs);
        self.removed_state.extend(other.removed_state);
        self.removed_tombs.extend(other.removed_tombs);
        self.live_rows += other.live_rows;
        self.tombstones += other.tombstones;
        self.position_deletes += other.position_deletes;
        self.partitions_merged += other.partitions_merged;
        self.paged_rows += other.paged_rows;
        self.paged_rows_read += other.paged_rows_read;
    }
}

/// A partition's files in one table: data files and the position deletes against them.
#[derive(Debug, Clone, Default)]
struct PartFiles {
    data: Vec<DataFile>,
    deletes: Vec<DataFile>,
}

/// A data file of a partition being refreshed, as read.
struct Loaded {
    file: DataFile,
    /// Its rows the refresh does not touch (and that no delete file deletes).
    kept: Kept,
    /// Positions of its rows the refresh folded again (they are replaced).
    hits: Vec<u64>,
    /// Positions its delete files deleted before.
    dead: Arc<HashSet<u64>>,
}

/// What one table's share of a partition wrote and replaced.
#[derive(Default)]
struct PartWritten {
    written: Vec<DataFile>,
    removed: Vec<DataFile>,
    position_deletes: usize,
    /// The whole partition was written again.
    merged: bool,
}

/// The watermark a state table's current snapshot records.
pub fn watermark_of(state: &Table) -> Option<Watermark> {
    let summary = &state
        .metadata()
        .current_snapshot()?
        .summary()
        .additional_properties;
    Some(Watermark {
        snapshot_id: summary.get(SUMMARY_WATERMARK)?.parse().ok()?,
        committed_at_ms: summary
            .get(SUMMARY_WATERMARK_MS)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
    })
}

fn table_error(table: &JournalTable, action: &str, source: Error) -> TableError {
    TableError::Maintenance {
        table: table.ident().to_string(),
        action: action.to_string(),
        source: Box::new(source),
    }
}

fn journal_error(journal: &JournalTable, action: &str, source: Error) -> TableError {
    table_error(journal, action, source)
}

/// A partition of the state (and of the tombstones, same spec): the bucket and the hash of
/// the object key.
type PartitionId = (String, i32);

/// A data file's partition, read from its manifest entry.
fn partition_of(file: &DataFile) -> Result<PartitionId, Error> {
    let fields = file.partition().fields();
    let bucket = match fields.first() {
        Some(Some(Literal::Primitive(PrimitiveLiteral::String(b)))) => b.clone(),
        _ => String::new(),
    };
    let hash = match fields.get(1) {
        Some(Some(Literal::Primitive(PrimitiveLiteral::Int(h)))) => *h,
        _ => {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "{} is not partitioned as schemas/annotations.json says (bucket, bucket[64](object_key)); rebuild the state with `annotable maintain --rebuild-state`",
                    file.file_path()
                ),
            ));
        }
    };
    Ok((bucket, hash))
}

/// The partition a row falls in, by the state spec's transform of `object_key`.
struct Partitioner {
    hash: iceberg::transform::BoxedTransformFunction,
}

impl Partitioner {
    fn new() -> Result<Self, TableError> {
        let spec = state_spec()?;
        let transform = spec
            .partition_spec
            .fields()
            .get(1)
            .map(|f| f.transform)
            .ok_or_else(|| {
                TableError::SpecInvalid("schemas/annotations.json: no object_key partition".into())
            })?;
        Ok(Partitioner {
            hash: iceberg::transform::create_transform_function(&transform)
                .map_err(|e| TableError::SpecInvalid(e.to_string()))?,
        })
    }

    fn of(&self, row: &JournalRow) -> PartitionId {
        let hash = match self.hash.transform_literal(&Datum::string(&row.object_key)) {
            Ok(Some(datum)) => match datum.literal() {
                PrimitiveLiteral::Int(h) => *h,
                _ => 0,
            },
            _ => 0,
        };
        (row.bucket.clone(), hash)
    }
}

/// The data and delete files of the snapshot tagged [`RETENTION_BASE_TAG`] (none when
/// untagged).
async fn tagged_files(table: &Table) -> Result<Vec<DataFile>, Error> {
    let base = table
        .metadata()
        .snapshot_for_ref(RETENTION_BASE_TAG)
        .cloned();
    files_of(table, base).await
}

/// The data and delete files of the current snapshot.
async fn live_files(table: &Table) -> Result<Vec<DataFile>, Error> {
    files_of(table, table.metadata().current_snapshot().cloned()).await
}

async fn files_of(
    table: &Table,
    snapshot: Option<iceberg::spec::SnapshotRef>,
) -> Result<Vec<DataFile>, Error> {
    let Some(snapshot) = snapshot else {
        return Ok(Vec::new());
    };
    let files = ManifestCache::default().snapshot(table, &snapshot).await?;
    Ok(files
        .live
        .iter()
        .chain(&files.deletes)
        .map(|e| e.data_file().clone())
        .collect())
}

/// A data file's bytes.
async fn fetch(table: &Table, file: &DataFile) -> Result<bytes::Bytes, Error> {
    table.file_io().new_input(file.file_path())?.read().await
}

/// What a Parquet file's rows take uncompressed, from its footer alone (two range reads).
async fn footer_size(table: &Table, file: &DataFile) -> Result<u64, Error> {
    use iceberg::io::FileRead;
    let invalid = |what: &str| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("reading the footer of {}: {what}", file.file_path()),
        )
    };
    let size = file.file_size_in_bytes();
    if size < 8 {
        return Err(invalid("shorter than a Parquet footer"));
    }
    let reader = table
        .file_io()
        .new_input(file.file_path())?
        .reader()
        .await?;
    let tail = reader.read(size - 8..size).await?;
    let length = parquet::file::metadata::FooterTail::try_from(tail.as_ref())
        .map_err(|e| invalid(&e.to_string()))?
        .metadata_length() as u64;
    if length + 8 > size {
        return Err(invalid("footer longer than the file"));
    }
    let footer = reader.read(size - 8 - length..size - 8).await?;
    let metadata = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| invalid(&e.to_string()))?;
    Ok(rows_bytes(&metadata))
}

/// The uncompressed size of a Parquet file's rows, as its footer states it.
fn rows_bytes(metadata: &parquet::file::metadata::ParquetMetaData) -> u64 {
    metadata
        .row_groups()
        .iter()
        .map(|g| u64::try_from(g.total_byte_size()).unwrap_or(0))
        .sum()
}

/// What a Parquet file's rows take uncompressed, from its footer (before decoding them).
fn uncompressed_size(bytes: &bytes::Bytes, file: &DataFile) -> Result<u64, Error> {
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(bytes)
        .map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("reading the footer of {}: {e}", file.file_path()),
            )
        })?;
    Ok(rows_bytes(&metadata))
}

async fn decode(
    bytes: bytes::Bytes,
    schema: &SchemaRef,
    file: &DataFile,
    record_type: Option<&'static str>,
) -> Result<Vec<JournalRow>, Error> {
    let schema = schema.clone();
    let path = file.file_path().to_string();
    tokio::task::spawn_blocking(move || -> Result<Vec<JournalRow>, Error> {
        let mut rows = Vec::new();
        for batch in read_parquet(bytes, &schema, &path)? {
            rows_of_batch(batch, record_type, &path, &mut rows)?;
        }
        Ok(rows)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
}

/// An object version: bucket, key and version id ("" for none).
type VersionKey = (String, String, String);

fn version_key(bucket: &str, key: &str, version: Option<&str>) -> VersionKey {
    (
        bucket.to_string(),
        key.to_string(),
        version.unwrap_or_default().to_string(),
    )
}

/// The object versions an incremental refresh folds again.
#[derive(Debug, Default)]
struct Touched {
    versions: HashSet<VersionKey>,
    /// Their object keys, sorted as bytes: what a page's `object_key` min/max is compared with,
    /// and a check that costs no allocation for the many rows whose key is not touched.
    keys: BTreeSet<Vec<u8>>,
}

impl Touched {
    fn insert(&mut self, bucket: &str, key: &str, version: Option<&str>) {
        self.keys.insert(key.as_bytes().to_vec());
        self.versions.insert(version_key(bucket, key, version));
    }

    fn contains(&self, bucket: &str, key: &str, version: Option<&str>) -> bool {
        self.keys.contains(key.as_bytes())
            && self.versions.contains(&version_key(bucket, key, version))
    }
}

/// A state or tombstones file as a refresh reads it.
struct Split {
    /// The rows of the touched object versions (every row for a rebuild), decoded: only the
    /// fold rule's columns of a file read by pages.
    rows: Vec<JournalRow>,
    /// Every other row.
    kept: Kept,
    /// The positions of the decoded rows.
    hits: Vec<u64>,
}

/// The rows of a file a refresh keeps as they are: how many, and, for a file read whole, its
/// batches and which rows of each. They are copied out only when the file is written again,
/// not when it stays as a base.
#[derive(Default)]
struct Kept {
    /// `None` for a file read by pages: its kept rows were never decoded.
    batches: Option<Vec<(RecordBatch, arrow::array::BooleanArray)>>,
    rows: usize,
}

impl Loaded {
    /// The rows of the file that stay, as batches of `schema` (of `table`): those set aside
    /// while reading it, or, for a base read by pages, the file read again without the rows
    /// deleted before and the rows this refresh replaces.
    async fn kept_rows(self, table: &Table, schema: &SchemaRef) -> Result<Vec<RecordBatch>, Error> {
        let filter = |batch: &RecordBatch, keep: &arrow::array::BooleanArray| {
            arrow::compute::filter_record_batch(batch, keep).map_err(arrow_error)
        };
        if let Some(batches) = self.kept.batches {
            return batches
                .iter()
                .map(|(batch, keep)| filter(batch, keep))
                .collect();
        }
        let gone: HashSet<u64> = self.dead.iter().chain(&self.hits).copied().collect();
        let mut out = Vec::new();
        let mut offset = 0u64;
        for batch in read_data_file(table, &self.file, schema).await? {
            let keep: arrow::array::BooleanArray = (0..batch.num_rows() as u64)
                .map(|i| Some(!gone.contains(&(offset + i))))
                .collect();
            offset += batch.num_rows() as u64;
            out.push(filter(&batch, &keep)?);
        }
        if offset != self.file.record_count() {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "{} has {offset} rows, its manifest says {}",
                    self.file.file_path(),
                    self.file.record_count()
                ),
            ));
        }
        Ok(out)
    }
}

/// A file's rows as a refresh reads them.
enum Batches {
    /// The whole file's bytes.
    Raw(bytes::Bytes),
    /// Only some pages' rows, already decoded, each batch with the position of its first row.
    Pages(Vec<(RecordBatch, u64)>),
}

/// Reads a state or tombstones file, leaving out the positions its delete files delete
/// (`dead`): the rows of the `touched` object versions decoded (all rows when `None`), every
/// other row kept as Arrow batches of `schema` when the whole file was read, and counted when
/// only some of its pages were.
async fn split(
    batches: Batches,
    schema: &SchemaRef,
    file: &DataFile,
    record_type: Option<&'static str>,
    touched: Option<Arc<Touched>>,
    dead: Arc<HashSet<u64>>,
) -> Result<Split, Error> {
    let schema = schema.clone();
    let path = file.file_path().to_string();
    let rows_in_file = file.record_count();
    tokio::task::spawn_blocking(move || {
        let (batches, whole) = match batches {
            Batches::Raw(bytes) => {
                let mut offset = 0u64;
                let mut out = Vec::new();
                for batch in read_parquet(bytes, &schema, &path)? {
                    let rows = batch.num_rows() as u64;
                    out.push((batch, offset));
                    offset += rows;
                }
                (out, true)
            }
            Batches::Pages(batches) => (batches, false),
        };
        let mut out = Split {
            rows: Vec::new(),
            kept: Kept {
                batches: whole.then(Vec::new),
                rows: 0,
            },
            hits: Vec::new(),
        };
        for (batch, offset) in batches {
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::DataInvalid,
                            format!("reading {path}: no string column {name}"),
                        )
                    })
            };
            let (buckets, keys, versions) = (
                column("bucket")?,
                column("object_key")?,
                column("object_version_id")?,
            );
            let (mut hit, mut miss) = (
                Vec::with_capacity(batch.num_rows()),
                Vec::with_capacity(batch.num_rows()),
            );
            for i in 0..batch.num_rows() {
                let pos = offset + i as u64;
                if dead.contains(&pos) {
                    hit.push(false);
                    miss.push(false);
                    continue;
                }
                let is_hit = touched.as_ref().is_none_or(|touched| {
                    let version = versions.is_valid(i).then(|| versions.value(i));
                    touched.contains(buckets.value(i), keys.value(i), version)
                });
                if is_hit {
                    out.hits.push(pos);
                }
                hit.push(is_hit);
                miss.push(!is_hit);
            }
            let (hit, miss) = (
                arrow::array::BooleanArray::from(hit),
                arrow::array::BooleanArray::from(miss),
            );
            let hits = arrow::compute::filter_record_batch(&batch, &hit).map_err(arrow_error)?;
            rows_of_batch(hits, record_type, &path, &mut out.rows)?;
            if touched.is_some()
                && let Some(kept) = &mut out.kept.batches
            {
                out.kept.rows += miss.true_count();
                kept.push((batch, miss));
            }
        }
        if !whole {
            // Every row the pages left out stays, as do the rows they hold that no touched
            // version has.
            out.kept.rows = (rows_in_file
                .saturating_sub(dead.len() as u64)
                .saturating_sub(out.hits.len() as u64)) as usize;
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
}

/// The columns of `schema` the fold rule reads (`fold`): the object version, the name, the
/// record type (the tombstones have one) and the sequence number.
fn rule_columns(schema: &SchemaRef) -> Result<SchemaRef, Error> {
    const RULE: [&str; 6] = [
        "bucket",
        "object_key",
        "object_version_id",
        "name",
        "record_type",
        "sequence_number",
    ];
    let indices: Vec<usize> = RULE
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .collect();
    Ok(Arc::new(schema.project(&indices).map_err(arrow_error)?))
}

/// Decodes `batch` (of `path`) into `rows`, with `record_type` as a constant column when the
/// table has none (the state: every row is a PUT).
fn rows_of_batch(
    batch: RecordBatch,
    record_type: Option<&'static str>,
    path: &str,
    rows: &mut Vec<JournalRow>,
) -> Result<(), Error> {
    let batch = match record_type {
        Some(value) => with_constant(&batch, "record_type", value).map_err(arrow_error)?,
        None => batch,
    };
    for row in decode_rows(&batch).map_err(arrow_error)? {
        rows.push(
            row.map_err(|e| Error::new(ErrorKind::DataInvalid, format!("reading {path}: {e}")))?,
        );
    }
    Ok(())
}

fn with_constant(
    batch: &RecordBatch,
    name: &str,
    value: &str,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, DataType::Utf8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec![value; batch.num_rows()])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Writes the `kept` rows and `rows`, sorted and split by partition, as new data files of
/// `table`.
async fn write(
    table: &Table,
    schema: &SchemaRef,
    mut kept: Vec<RecordBatch>,
    rows: &[JournalRow],
    prefix: &str,
) -> Result<Vec<DataFile>, Error> {
    if !rows.is_empty() {
        kept.push(encode_rows(schema, rows).map_err(arrow_error)?);
    }
    kept.retain(|b| b.num_rows() > 0);
    if kept.is_empty() {
        return Ok(Vec::new());
    }
    let keys = sort_keys(table.metadata(), schema);
    let schema = schema.clone();
    let sorted = tokio::task::spawn_blocking(move || {
        let batch = arrow::compute::concat_batches(&schema, &kept)?;
        sort_batch(&batch, &keys)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
    .map_err(arrow_error)?;
    write_sorted(table, prefix, TARGET_FILE_BYTES, &sorted).await
}

/// What a reader must add to the state to see everything the journal has.
#[derive(Debug)]
pub enum Unfolded {
    /// The journal rows committed after the watermark, in the journal's schema (possibly none).
    Rows(Vec<RecordBatch>),
    /// The state has never been refreshed, its watermark is no longer in the journal's history,
    /// or more than the reader's limit of rows wait: read the journal itself.
    UseJournal,
}

/// The journal rows of `journal` (whose Arrow schema is `schema`) the state `state` has not
/// folded in: at most `max_rows`.
pub async fn unfolded(
    journal: &Table,
    schema: &SchemaRef,
    state: &Table,
    max_rows: u64,
) -> Result<Unfolded, Error> {
    let Some(watermark) = watermark_of(state) else {
        return Ok(Unfolded::UseJournal);
    };
    if journal
        .metadata()
        .current_snapshot()
        .map(|s| s.snapshot_id())
        == Some(watermark.snapshot_id)
    {
        return Ok(Unfolded::Rows(Vec::new()));
    }
    let delta = delta::since(journal, delta::From::Watermark(watermark.snapshot_id)).await?;
    let rows: u64 = delta.files.iter().map(DataFile::record_count).sum();
    if delta.full || rows > max_rows {
        return Ok(Unfolded::UseJournal);
    }
    let mut batches = Vec::new();
    for file in &delta.files {
        batches.extend(read_data_file(journal, file, schema).await?);
    }
    Ok(Unfolded::Rows(batches))
}
