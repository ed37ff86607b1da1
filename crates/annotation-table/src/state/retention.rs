//! Journal retention: dropping journal rows ingested before a cut once the state table has
//! folded them in, and the *retention base* that keeps the state checkable and rebuildable
//! after the journal has lost them.
//!
//! **Which rows may go.** A row is known to be folded into the state when its data file was
//! live in the journal snapshot the state records as its watermark: data files never change,
//! and the state reflects everything that snapshot holds. Rows older than the cut in any other
//! file (an append or a compaction after the watermark) wait for a later refresh; the caller
//! refreshes first, so normally none wait. A file entirely older than the cut is dropped from
//! the journal; a file that straddles it is rewritten without its old rows.
//!
//! **The base.** Once rows are gone, the journal alone no longer computes the current state:
//! an annotation put a year ago and never touched since lives only in the state. So before the
//! journal loses anything, the state's and the tombstones' current snapshots (which hold every
//! row about to go) are tagged [`RETENTION_BASE_TAG`]; tagged snapshots survive expiry. The
//! full computation of the state is then fold(base ∪ journal) rather than fold(journal), and
//! `--verify-state` and `--rebuild-state` use exactly that (folding is idempotent, so rows in
//! both count once). Each retention run moves the tag forward; the newer base holds everything
//! the older one did, because refreshes only ever fold more rows in.
//!
//! **What readers see.** The journal's table property [`PROPERTY_RETAINED_SINCE`] says from
//! when the journal reaches; `annotable query` says so when a statement reads the journal. The
//! commit is an `overwrite` (or `delete`) snapshot marked [`RETENTION_KIND`] under
//! `annotable.maintenance`; the refresh skips it, since every row it touches is folded already.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, TimestampMicrosecondArray};
use arrow::compute::{concat_batches, filter_record_batch};
use iceberg::spec::{DataFile, Operation, PrimitiveLiteral, Snapshot};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};
use tracing::info;

use super::{StateTables, table_error, watermark_of};
use crate::maintain::compact::{
    Rewrite, SUMMARY_MAINTENANCE, arrow_error, read_data_file, write_sorted,
};
use crate::maintain::inventory::ManifestCache;
use crate::{Maintainer, TableError};

/// The tag on the state table's and the tombstones table's snapshots that held every journal
/// row the last retention run dropped.
pub const RETENTION_BASE_TAG: &str = "annotable-retention-base";

/// Journal table property: rows ingested before this instant (ms since the epoch) may have
/// been dropped by journal retention. Absent: the journal is complete.
pub const PROPERTY_RETAINED_SINCE: &str = "annotable.journal.retained-since-ms";

/// Snapshot summary key of a retention commit: the cut (ms since the epoch).
pub const SUMMARY_CUT: &str = "annotable.retention.cut-ms";

/// What a retention commit records under `annotable.maintenance`.
pub(crate) const RETENTION_KIND: &str = "journal retention";

/// Files written by a rewrite are rolled at this size.
const TARGET_FILE_BYTES: usize = 128 * 1024 * 1024;

/// Whether `snapshot` is a retention commit (it only removes rows the state has folded in).
pub(crate) fn is_retention(snapshot: &Snapshot) -> bool {
    snapshot
        .summary()
        .additional_properties
        .get(SUMMARY_MAINTENANCE)
        .is_some_and(|k| k == RETENTION_KIND)
}

/// Since when the journal `journal` holds every row (ms since the epoch), if retention has
/// ever dropped rows from it.
pub fn retained_since(journal: &Table) -> Option<i64> {
    journal
        .metadata()
        .properties()
        .get(PROPERTY_RETAINED_SINCE)
        .and_then(|v| v.parse().ok())
}

/// What one retention run did (or, in a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    /// Rows ingested before this instant (ms since the epoch) were to go.
    pub cut_ms: i64,
    /// The journal snapshot the state reflects; only files live in it were considered.
    pub watermark: Option<i64>,
    /// Journal files dropped whole.
    pub files_dropped: usize,
    /// Journal files rewritten without their old rows.
    pub files_rewritten: usize,
    /// Files those rewrites wrote.
    pub files_written: usize,
    /// Journal rows dropped.
    pub rows_dropped: u64,
    /// Bytes of the files removed from the journal.
    pub bytes_removed: u64,
    /// Bytes of the files written.
    pub bytes_written: u64,
    /// Files with rows older than the cut that the state has not folded in yet (kept).
    pub files_waiting: usize,
    /// The state snapshot tagged as the retention base.
    pub base: Option<i64>,
    /// The journal snapshot committed (`None`: nothing to drop, or a dry run).
    pub snapshot_id: Option<i64>,
    /// Why nothing was done, when that is not simply "nothing is old enough".
    pub skipped: Option<String>,
    /// Wall time.
    pub took: Duration,
}

impl StateTables {
    /// Drops the rows of `journal` ingested before `cut_ms` that the state has folded in (see
    /// the module doc), after tagging the state's current snapshots as the retention base. The
    /// caller holds the state table's lease (no refresh meanwhile) and the journal's
    /// maintenance lease (no compaction meanwhile), and normally refreshes first.
    pub async fn trim_journal(
        &self,
        journal: &Maintainer,
        cut_ms: i64,
        dry_run: bool,
    ) -> Result<RetentionReport, TableError> {
        let started = Instant::now();
        let mut report = RetentionReport {
            cut_ms,
            ..RetentionReport::default()
        };
        let state_table = self.state.table().load().await?;
        let tomb_table = self.tombstones.table().load().await?;
        let journal_table = journal.table().load().await?;
        let error = |action: &str, e| table_error(journal.table(), action, e);
        let Some(watermark) = watermark_of(&state_table) else {
            report.skipped = Some(
                "the annotations table has never been refreshed, so it holds nothing the \
                 journal could give up; run `annotable maintain --refresh` first"
                    .into(),
            );
            report.took = started.elapsed();
            return Ok(report);
        };
        report.watermark = Some(watermark.snapshot_id);
        let metadata = journal_table.metadata();
        let (Some(at_watermark), Some(current)) = (
            metadata.snapshot_by_id(watermark.snapshot_id).cloned(),
            metadata.current_snapshot().cloned(),
        ) else {
            report.skipped = Some(format!(
                "journal snapshot {} (the state's watermark) has left the journal's history; \
                 run `annotable maintain --refresh` first",
                watermark.snapshot_id
            ));
            report.took = started.elapsed();
            return Ok(report);
        };
        let mut cache = ManifestCache::default();
        let folded: HashSet<String> = cache
            .snapshot(&journal_table, &at_watermark)
            .await
            .map_err(|e| error("reading the manifests at the state's watermark", e))?
            .live
            .iter()
            .map(|e| e.file_path().to_string())
            .collect();
        let live = cache
            .snapshot(&journal_table, &current)
            .await
            .map_err(|e| error("reading the manifests", e))?;
        let field = metadata
            .current_schema()
            .field_by_name("ingested_at")
            .map(|f| f.id)
            .ok_or_else(|| {
                TableError::SpecInvalid(format!(
                    "{}: no ingested_at column to apply journal retention to",
                    journal.table().ident()
                ))
            })?;
        let cut_micros = cut_ms.saturating_mul(1000);
        let bound = |file: &DataFile, lower: bool| {
            let bounds = if lower {
                file.lower_bounds()
            } else {
                file.upper_bounds()
            };
            match bounds.get(&field).map(|d| d.literal()) {
                Some(PrimitiveLiteral::Long(v)) => Some(*v),
                _ => None,
            }
        };

        let prefix = format!("retention-{}", uuid::Uuid::now_v7());
        let schema = journal.table().arrow_schema().clone();
        let mut removed = HashSet::new();
        let mut added = Vec::new();
        let rewritten = async {
            for entry in &live.live {
                let file = entry.data_file();
                if bound(file, true).is_some_and(|lower| lower >= cut_micros) {
                    continue;
                }
                if !folded.contains(file.file_path()) {
                    report.files_waiting += 1;
                    continue;
                }
                if bound(file, false).is_some_and(|upper| upper < cut_micros) {
                    report.files_dropped += 1;
                    report.rows_dropped += file.record_count();
                    report.bytes_removed += file.file_size_in_bytes();
                    removed.insert(file.file_path().to_string());
                    continue;
                }
                // Straddles the cut, or has no bounds: keep the rows at or after it.
                let batches = read_data_file(&journal_table, file, &schema).await?;
                let mut kept = Vec::with_capacity(batches.len());
                for batch in &batches {
                    let column = batch
                        .column_by_name("ingested_at")
                        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::DataInvalid,
                                format!("{}: no ingested_at timestamps", file.file_path()),
                            )
                        })?;
                    let keep: BooleanArray = (0..column.len())
                        .map(|i| Some(column.is_null(i) || column.value(i) >= cut_micros))
                        .collect();
                    kept.push(filter_record_batch(batch, &keep).map_err(arrow_error)?);
                }
                let rows: usize = kept.iter().map(|b| b.num_rows()).sum();
                let dropped = file.record_count().saturating_sub(rows as u64);
                if dropped == 0 {
                    continue;
                }
                report.rows_dropped += dropped;
                report.bytes_removed += file.file_size_in_bytes();
                removed.insert(file.file_path().to_string());
                if rows == 0 {
                    report.files_dropped += 1;
                    continue;
                }
                report.files_rewritten += 1;
                if !dry_run {
                    // Filtering keeps the file's order, so the rows stay sorted.
                    let batch = concat_batches(&schema, &kept).map_err(arrow_error)?;
                    added.extend(
                        write_sorted(&journal_table, &prefix, TARGET_FILE_BYTES, &batch).await?,
                    );
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        let discard = |files: &[DataFile]| {
            journal.discard(
                &journal_table,
                files
                    .iter()
                    .map(|f| f.file_path().to_string())
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        };
        if let Err(e) = rewritten {
            discard(&added).await;
            return Err(error("rewriting journal files without their old rows", e));
        }
        report.files_written = added.len();
        report.bytes_written = added.iter().map(DataFile::file_size_in_bytes).sum();
        if removed.is_empty() || dry_run {
            report.took = started.elapsed();
            return Ok(report);
        }

        // The base first: if the journal commit then fails, the tag only points at a state
        // that holds more than it needs to.
        let base = state_table
            .metadata()
            .current_snapshot()
            .map(|s| s.snapshot_id());
        if let Some(tombs) = tomb_table.metadata().current_snapshot() {
            self.tombstones
                .tag(RETENTION_BASE_TAG, tombs.snapshot_id())
                .await?;
        }
        if let Some(base) = base {
            self.state.tag(RETENTION_BASE_TAG, base).await?;
        }
        report.base = base;

        let since = retained_since(&journal_table)
            .unwrap_or(i64::MIN)
            .max(cut_ms);
        let rewrite = Rewrite {
            removed,
            operation: if added.is_empty() {
                Operation::Delete
            } else {
                Operation::Overwrite
            },
            added: added.clone(),
            kind: RETENTION_KIND,
            properties: vec![(SUMMARY_CUT.to_string(), cut_ms.to_string())],
            expect_current: None,
            table_properties: vec![(PROPERTY_RETAINED_SINCE.to_string(), since.to_string())],
        };
        match journal.commit(&rewrite).await {
            Ok(id) => report.snapshot_id = Some(id),
            Err(e) => {
                discard(&added).await;
                return Err(e);
            }
        }
        report.took = started.elapsed();
        info!(
            table = %journal.table().ident(), cut_ms, rows_dropped = report.rows_dropped,
            files_dropped = report.files_dropped, files_rewritten = report.files_rewritten,
            base = ?report.base, "journal retention committed"
        );
        Ok(report)
    }
}
