//! The SQL name `annotations` inside annotable: the current-state table with the journal rows
//! committed since its last refresh folded in, so a query sees everything the journal has
//! while reading the small state table rather than re-aggregating the whole journal.
//!
//! Before every statement the session looks at the state table's watermark (the journal
//! snapshot it reflects) and defines `annotations` as one of:
//! - the state table itself (`annotations_state`), when the journal has nothing newer;
//! - the state plus the unfolded rows (`state_overlay.sql`), held in memory as
//!   `annotations_unfolded`, when there are at most [`MAX_UNFOLDED_ROWS`] of them;
//! - the portable view over the journal (`annotations_from_journal`, the file
//!   `queries/views/annotations.sql`), when there is no state table, it was never refreshed,
//!   its watermark has left the journal's history, or too many rows wait;
//! - in those last two cases, once journal retention has dropped rows that only the state
//!   still holds, the state with the whole journal folded onto it by the same overlay.
//!
//! All three give the same rows for the same journal; the first two are what makes lookups and
//! counts independent of the journal's length.

use std::sync::Arc;

use annotation_table::state::{
    RETENTION_BASE_TAG, Unfolded, retained_since, unfolded, watermark_of,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use iceberg::arrow::schema_to_arrow_schema;

use crate::error::SqlError;
use crate::provider::{JOURNAL_ALIAS, NamespaceSchema, STATE_ALIAS, TOMBSTONES_ALIAS};
use crate::schema::{present, presented};
use datafusion::arrow::record_batch::RecordBatch;

/// More unfolded journal rows than this and a statement reads the journal view instead (the
/// refresher is off or far behind; holding them in memory would cost more than it saves).
pub const MAX_UNFOLDED_ROWS: u64 = 1_000_000;

/// The portable view over the journal, under the name it is registered as.
pub(crate) const FROM_JOURNAL: &str = "annotations_from_journal";

/// The in-memory table of unfolded journal rows.
pub(crate) const UNFOLDED: &str = "annotations_unfolded";

/// The name every reader uses.
pub(crate) const ANNOTATIONS: &str = "annotations";

const OVERLAY: &str = include_str!("state_overlay.sql");

const STATE_ONLY: &str = "SELECT bucket, object_key, object_version_id, object_join_key, name, \
    sequence_number, last_modified_date, size, e_tag, checksum_algorithm, replication_status, \
    text_value FROM annotations_state";

/// Which definition `annotations` has for the next statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationsSource {
    /// The journal view (no usable state).
    Journal,
    /// The state table, up to date with the journal.
    State,
    /// The state table plus this many unfolded journal rows.
    Overlay(usize),
    /// The state table with the whole journal folded onto it: journal retention has dropped
    /// rows, and the rows after the watermark are too many to hold or no longer traceable.
    OverlayJournal,
}

/// Defines `annotations` for the next statement (see the module doc).
pub(crate) async fn define(
    ctx: &SessionContext,
    schema: &NamespaceSchema,
    journal: &str,
    catalog_name: &str,
) -> Result<AnnotationsSource, SqlError> {
    let catalog_error = |action: &str, e: iceberg::Error| SqlError::Catalog {
        catalog: catalog_name.to_string(),
        action: action.to_string(),
        source: Box::new(e),
    };
    let source = match schema
        .load(STATE_ALIAS)
        .await
        .map_err(|e| catalog_error("loading the annotations table", e))?
    {
        None => AnnotationsSource::Journal,
        Some(state) => {
            let journal = schema
                .load(journal)
                .await
                .map_err(|e| catalog_error("loading the journal", e))?;
            match journal {
                None => AnnotationsSource::Journal,
                Some(journal) => {
                    let arrow = Arc::new(
                        schema_to_arrow_schema(journal.metadata().current_schema())
                            .map_err(|e| catalog_error("reading the journal's schema", e))?,
                    );
                    match unfolded(&journal, &arrow, &state, MAX_UNFOLDED_ROWS)
                        .await
                        .map_err(|e| catalog_error("reading the journal's newest rows", e))?
                    {
                        Unfolded::UseJournal
                            if retained_since(&journal).is_some()
                                && watermark_of(&state).is_some() =>
                        {
                            // Journal retention dropped rows only the state still holds: the
                            // journal view would lose them, so the whole (short) journal is
                            // folded onto the state instead.
                            let view = ctx
                                .sql(&format!("SELECT * FROM {JOURNAL_ALIAS}"))
                                .await
                                .map_err(|e| SqlError::Execution {
                                    source: Box::new(e),
                                })?
                                .into_view();
                            schema.set_internal(UNFOLDED, view);
                            AnnotationsSource::OverlayJournal
                        }
                        Unfolded::UseJournal => {
                            if retained_since(&journal).is_some() {
                                tracing::warn!(
                                    "journal retention has dropped rows, but the annotations table was never refreshed: `annotations` lacks what only the dropped rows said; rebuild the state from its retention base with `annotable maintain --rebuild-state`"
                                );
                            }
                            AnnotationsSource::Journal
                        }
                        Unfolded::Rows(batches) => {
                            let rows = batches.iter().map(|b| b.num_rows()).sum();
                            if rows == 0 {
                                AnnotationsSource::State
                            } else {
                                let arrow = presented(&arrow);
                                let batches = batches
                                    .iter()
                                    .map(|b| present(b, &arrow))
                                    .collect::<Result<Vec<_>, _>>()
                                    .map_err(|e| SqlError::Execution {
                                        source: Box::new(e.into()),
                                    })?;
                                let table =
                                    MemTable::try_new(arrow, vec![batches]).map_err(|e| {
                                        SqlError::Execution {
                                            source: Box::new(e),
                                        }
                                    })?;
                                schema.set_internal(UNFOLDED, Arc::new(table));
                                AnnotationsSource::Overlay(rows)
                            }
                        }
                    }
                }
            }
        }
    };
    let sql = match source {
        AnnotationsSource::Journal => format!("SELECT * FROM {FROM_JOURNAL}"),
        AnnotationsSource::State => STATE_ONLY.to_string(),
        AnnotationsSource::Overlay(_) | AnnotationsSource::OverlayJournal => OVERLAY.to_string(),
    };
    let view = ctx
        .sql(&sql)
        .await
        .map_err(|e| SqlError::View {
            file: "annotations (the state overlay, crates/annotation-sql/src/state_overlay.sql)"
                .into(),
            source: Box::new(e),
        })?
        .into_view();
    schema.set_internal(ANNOTATIONS, view);
    tracing::debug!(?source, "annotations defined");
    Ok(source)
}

/// How the state table compares with the journal view at the state's watermark.
#[derive(Debug, Clone)]
pub struct StateComparison {
    /// The journal snapshot compared at.
    pub journal_snapshot: i64,
    /// The state table's snapshot compared.
    pub state_snapshot: i64,
    /// The retention base the journal was folded onto (`None`: the journal view alone; no
    /// journal retention has dropped rows).
    pub base: Option<i64>,
    /// Rows in the state table.
    pub state_rows: usize,
    /// Rows the journal view gives.
    pub journal_rows: usize,
    /// Rows only the state table has (up to the sample limit).
    pub only_in_state: Vec<String>,
    /// Rows only the journal view gives (up to the sample limit).
    pub only_in_journal: Vec<String>,
    /// How many rows differ in all (each side).
    pub differing: (usize, usize),
}

impl StateComparison {
    /// Whether the two are equal, row for row, in all 12 columns.
    pub fn is_equal(&self) -> bool {
        self.differing == (0, 0)
    }
}

/// Names the pinned copies are registered under while comparing.
const JOURNAL_AT: &str = "annotation_journal_at_watermark";
const STATE_AT: &str = "annotations_state_at_compare";
const VIEW_AT: &str = "annotations_from_journal_at_watermark";
const BASE_STATE: &str = "retention_base_state";
const BASE_TOMBS: &str = "retention_base_tombstones";

/// Compares the state table, row for row in all 12 columns, with the portable view
/// (`queries/views/annotations.sql`) evaluated on the journal snapshot the state records as
/// its watermark: the full-journal computation of what the state should hold. Once journal
/// retention has dropped rows, the full computation is the retention base (the state as it was
/// when they were dropped) with that journal snapshot folded onto it by the overlay's rule. Both tables are
/// pinned to one snapshot each, so writers may keep committing meanwhile.
pub(crate) async fn compare(
    ctx: &SessionContext,
    schema: &NamespaceSchema,
    journal: &str,
    catalog_name: &str,
    sample: usize,
) -> Result<StateComparison, SqlError> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

    let catalog_error = |action: &str, e: iceberg::Error| SqlError::Catalog {
        catalog: catalog_name.to_string(),
        action: action.to_string(),
        source: Box::new(e),
    };
    let state = schema
        .load(STATE_ALIAS)
        .await
        .map_err(|e| catalog_error("loading the annotations table", e))?
        .ok_or_else(|| SqlError::UnknownTable {
            table: "annotations (the state table)".into(),
            known: "none: run `annotable maintain --refresh` to create it".into(),
            namespace: String::new(),
        })?;
    let journal = schema
        .load(journal)
        .await
        .map_err(|e| catalog_error("loading the journal", e))?
        .ok_or_else(|| SqlError::TableNotCreated {
            table: journal.to_string(),
            catalog: catalog_name.to_string(),
        })?;
    let never = || {
        catalog_error(
            "reading the state's watermark",
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                "the annotations table has never been refreshed: run `annotable maintain --refresh`",
            ),
        )
    };
    let watermark = annotation_table::state::watermark_of(&state).ok_or_else(never)?;
    let state_snapshot = state
        .metadata()
        .current_snapshot()
        .map(|s| s.snapshot_id())
        .ok_or_else(never)?;
    if journal
        .metadata()
        .snapshot_by_id(watermark.snapshot_id)
        .is_none()
    {
        return Err(catalog_error(
            "finding the journal snapshot the state reflects",
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!(
                    "journal snapshot {} has expired; run `annotable maintain --refresh` and verify again",
                    watermark.snapshot_id
                ),
            ),
        ));
    }
    let plan_error = |e| SqlError::Execution {
        source: Box::new(e),
    };
    schema.set_internal(
        JOURNAL_AT,
        schema
            .pinned(journal, watermark.snapshot_id)
            .map_err(plan_error)?,
    );
    schema.set_internal(
        STATE_AT,
        schema
            .pinned(state.clone(), state_snapshot)
            .map_err(plan_error)?,
    );
    // The full computation: the journal view, or after journal retention the retention base
    // with the journal folded onto it (module doc of annotation_table::state::retention).
    let base = state
        .metadata()
        .snapshot_for_ref(RETENTION_BASE_TAG)
        .map(|s| s.snapshot_id());
    let view_sql = match base {
        None => crate::view_definitions()
            .iter()
            .find(|(file, _)| *file == "annotations.sql")
            .map(|(_, sql)| *sql)
            .unwrap_or_default()
            .replacen("CREATE VIEW annotations AS", "", 1)
            .replace("annotation_journal", JOURNAL_AT),
        Some(base) => {
            schema.set_internal(
                BASE_STATE,
                schema.pinned(state.clone(), base).map_err(plan_error)?,
            );
            let tombstones = schema
                .load(TOMBSTONES_ALIAS)
                .await
                .map_err(|e| catalog_error("loading the tombstones table", e))?;
            let tagged = tombstones.as_ref().and_then(|t| {
                t.metadata()
                    .snapshot_for_ref(RETENTION_BASE_TAG)
                    .map(|s| s.snapshot_id())
            });
            let base_tombs = match (tombstones, tagged) {
                (Some(table), Some(id)) => schema.pinned(table, id).map_err(plan_error)?,
                // No tombstones when the base was taken.
                _ => ctx
                    .sql(&format!("SELECT * FROM {TOMBSTONES_ALIAS} WHERE false"))
                    .await
                    .map_err(plan_error)?
                    .into_view(),
            };
            schema.set_internal(BASE_TOMBS, base_tombs);
            OVERLAY
                .replace(UNFOLDED, JOURNAL_AT)
                .replace(TOMBSTONES_ALIAS, BASE_TOMBS)
                .replace(STATE_ALIAS, BASE_STATE)
        }
    };
    let view = ctx.sql(&view_sql).await.map_err(plan_error)?.into_view();
    schema.set_internal(VIEW_AT, view);

    let columns = "bucket, object_key, object_version_id, object_join_key, name, \
        sequence_number, last_modified_date, size, e_tag, checksum_algorithm, \
        replication_status, text_value";
    let count = |table: &'static str| {
        let sql = format!("SELECT count(*) FROM {table}");
        async move {
            let batches = collect(ctx, &sql).await?;
            Ok::<usize, SqlError>(
                batches
                    .first()
                    .and_then(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::Int64Array>()
                            .map(|a| a.value(0) as usize)
                    })
                    .unwrap_or(0),
            )
        }
    };
    let difference = |left: &'static str, right: &'static str| {
        let sql = format!(
            "SELECT {columns} FROM {left} EXCEPT ALL SELECT {columns} FROM {right} \
             ORDER BY bucket, object_key, object_version_id, name"
        );
        async move {
            let batches = collect(ctx, &sql).await?;
            let total = batches.iter().map(|b| b.num_rows()).sum::<usize>();
            let mut rows = Vec::new();
            let options = FormatOptions::default().with_null("NULL");
            'out: for batch in &batches {
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| plan_error(e.into()))?;
                for i in 0..batch.num_rows() {
                    if rows.len() >= sample {
                        break 'out;
                    }
                    rows.push(
                        formatters
                            .iter()
                            .map(|f| f.value(i).to_string())
                            .collect::<Vec<_>>()
                            .join(" | "),
                    );
                }
            }
            Ok::<(usize, Vec<String>), SqlError>((total, rows))
        }
    };
    let (only_state, only_in_state) = difference(STATE_AT, VIEW_AT).await?;
    let (only_journal, only_in_journal) = difference(VIEW_AT, STATE_AT).await?;
    Ok(StateComparison {
        journal_snapshot: watermark.snapshot_id,
        state_snapshot,
        base,
        state_rows: count(STATE_AT).await?,
        journal_rows: count(VIEW_AT).await?,
        only_in_state,
        only_in_journal,
        differing: (only_state, only_journal),
    })
}

/// Runs `sql` on `ctx` and collects the result.
async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let error = |e| SqlError::Execution {
        source: Box::new(e),
    };
    ctx.sql(sql)
        .await
        .map_err(error)?
        .collect()
        .await
        .map_err(error)
}
