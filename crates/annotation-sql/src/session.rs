//! The query session: DataFusion over the Iceberg catalog, with the views and JSON functions.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::SchemaProvider;
use datafusion::common::tree_node::TreeNode;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::TableReference;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use iceberg::{Catalog, NamespaceIdent};
use tokio::sync::Mutex;

use crate::error::SqlError;
use crate::provider::{IcebergCatalog, JOURNAL_ALIAS, NamespaceSchema, OBJECT_JOURNAL_ALIAS};
use crate::state::{self, ANNOTATIONS, AnnotationsSource, FROM_JOURNAL, StateComparison};
use crate::time_travel::{TimeTravel, TravelPoint};

const OBJECTS_VIEW: &str = "objects";
const OBJECTS_FILE: &str = "objects.sql";

/// The name of the DataFusion catalog holding the Iceberg namespaces.
pub const CATALOG_NAME: &str = "annotable";

/// The views of `queries/views/*.sql`, embedded at build time, in file name order.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/views.rs"));
}

/// `(file name, SQL)` of every view annotable defines over the journal.
pub fn view_definitions() -> &'static [(&'static str, &'static str)] {
    embedded::VIEWS
}

/// A read-only SQL session over one namespace of an Iceberg catalog.
///
/// Unqualified names resolve in the namespace (`annotation_journal`, `annotations`, ...);
/// `other_namespace.table` reaches the rest of the catalog. Tables and snapshots created after
/// the session started are visible to the next query.
pub struct QuerySession {
    ctx: SessionContext,
    catalog_name: String,
    namespace: String,
    journal: String,
    schema: Arc<NamespaceSchema>,
    views_loaded: Mutex<bool>,
}

/// How a [`QuerySession`] is opened.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The current-state table's name; `None` for the configured default (`annotations`).
    pub state_table: Option<String>,
    /// The object journal's name (`objects.table`); `None` for `object_journal`. SQL reaches it
    /// as `object_journal` too, which is what the `objects` view reads.
    pub object_journal: Option<String>,
    /// The most memory the session's statements may hold at once, in bytes; a statement that
    /// needs more fails with "resources exhausted" instead of growing the process.
    pub memory_limit: Option<usize>,
}

/// Where a time-travelling session reads the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TravelTarget {
    /// What was asked for.
    pub asked: TimeTravel,
    /// The journal snapshot read (`None`: the journal had no rows yet then).
    pub journal_snapshot: Option<i64>,
    /// When that snapshot was committed (ms since the epoch).
    pub committed_at_ms: Option<i64>,
}

/// A query's complete result.
#[derive(Debug)]
pub struct QueryResult {
    /// The result schema (also for zero rows).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// The number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

impl QuerySession {
    /// Opens a session on `namespace` of `catalog`, whose journal table is `journal`.
    /// `catalog_name` is how errors name the catalog (no secrets).
    pub async fn new(
        catalog: Arc<dyn Catalog>,
        catalog_name: impl Into<String>,
        namespace: &str,
        journal: &str,
    ) -> Result<Self, SqlError> {
        Self::with_options(
            catalog,
            catalog_name,
            namespace,
            journal,
            &SessionOptions::default(),
        )
        .await
    }

    /// [`QuerySession::new`] with the current-state table named `state` (default
    /// `annotations`; its tombstones are `<state>_tombstones`).
    pub async fn with_state_table(
        catalog: Arc<dyn Catalog>,
        catalog_name: impl Into<String>,
        namespace: &str,
        journal: &str,
        state: &str,
    ) -> Result<Self, SqlError> {
        let options = SessionOptions {
            state_table: Some(state.to_string()),
            ..SessionOptions::default()
        };
        Self::with_options(catalog, catalog_name, namespace, journal, &options).await
    }

    /// [`QuerySession::new`] with [`SessionOptions`] (a server connection's memory limit, say).
    pub async fn with_options(
        catalog: Arc<dyn Catalog>,
        catalog_name: impl Into<String>,
        namespace: &str,
        journal: &str,
        options: &SessionOptions,
    ) -> Result<Self, SqlError> {
        let state = match &options.state_table {
            Some(state) => state.clone(),
            None => annotation_table::state_spec()
                .map(|s| s.table.clone())
                .unwrap_or_else(|_| ANNOTATIONS.to_string()),
        };
        let catalog_name = catalog_name.into();
        let listed = catalog
            .list_namespaces(None)
            .await
            .map_err(|e| SqlError::Catalog {
                catalog: catalog_name.clone(),
                action: "listing namespaces".into(),
                source: Box::new(e),
            })?
            .into_iter()
            .map(|ns| ns.to_url_string())
            .collect();
        let schema = Arc::new(
            NamespaceSchema::new(
                catalog.clone(),
                NamespaceIdent::new(namespace.to_string()),
                (journal != JOURNAL_ALIAS).then(|| journal.to_string()),
            )
            .with_state(&state)
            .with_objects(
                options
                    .object_journal
                    .as_deref()
                    .unwrap_or(OBJECT_JOURNAL_ALIAS),
            ),
        );
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, namespace)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(bytes) = options.memory_limit {
            // The whole pool is the statement's: a connection runs one statement at a time.
            runtime = runtime.with_memory_limit(bytes, 1.0);
        }
        let runtime = runtime.build_arc().map_err(|e| SqlError::Execution {
            source: Box::new(e),
        })?;
        let mut ctx = SessionContext::new_with_config_rt(config, runtime);
        // DataFusion 53's leaf-expression pushdown moves `json_get_str(text_value, ..)` towards
        // the scans; under the UNION of the state overlay it leaves a projection indexing past
        // its input's schema, and the optimizer panics (index out of bounds in
        // `optimize_projections`) on `queries/objects_by_annotation_value.sql`. The overlay
        // already reads few columns, so nothing is lost by going without it.
        for rule in ["extract_leaf_expressions", "push_down_leaf_projections"] {
            ctx.remove_optimizer_rule(rule);
        }
        ctx.register_catalog(
            CATALOG_NAME,
            Arc::new(IcebergCatalog::new(
                catalog,
                namespace.to_string(),
                schema.clone(),
                listed,
            )),
        );
        datafusion_functions_json::register_all(&mut ctx).map_err(|e| SqlError::Execution {
            source: Box::new(e),
        })?;
        Ok(QuerySession {
            ctx,
            catalog_name,
            namespace: namespace.to_string(),
            journal: journal.to_string(),
            schema,
            views_loaded: Mutex::new(false),
        })
    }

    /// The DataFusion context (for registering more tables, say, in tests or benchmarks).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans one read-only statement. Refuses DDL, DML, COPY and SET; says which table is
    /// unknown, or that the journal has not been created yet.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame, SqlError> {
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(SqlError::from_planning)?;
        let plan = self.plan(statement).await?;
        self.ctx
            .execute_logical_plan(plan)
            .await
            .map_err(SqlError::from_planning)
    }

    /// Plans one parsed read-only statement against the tables' current snapshots (a front end
    /// with its own parser, such as the PostgreSQL endpoint, comes in here). `annotations` is
    /// defined afresh when the statement names it. Refuses what [`QuerySession::sql`] refuses.
    pub async fn plan(&self, statement: DFStatement) -> Result<LogicalPlan, SqlError> {
        let state = self.ctx.state();
        refuse_writes(&statement)?;
        let views = self.load_views().await?;
        let references = state
            .resolve_table_references(&statement)
            .map_err(SqlError::from_planning)?;
        if views
            && references
                .iter()
                .any(|r| self.in_default(r) && r.table() == ANNOTATIONS)
        {
            self.define_annotations().await?;
        }
        if views
            && !self.schema.has_view(OBJECTS_VIEW)
            && references
                .iter()
                .any(|r| self.in_default(r) && r.table() == OBJECTS_VIEW)
        {
            self.load_objects_view().await?;
        }
        for reference in &references {
            self.check_table(reference).await?;
        }
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(SqlError::from_planning)?;
        refuse_write_plan(&plan)?;
        Ok(plan)
    }

    /// Reads every table as of `travel` from the next statement on (`None`: the present
    /// again): the journal, the state table behind `annotations` and its tombstones, and any
    /// other table of the catalog. Says which journal snapshot that is; refuses an instant
    /// whose history has expired and a snapshot id the journal does not have.
    pub async fn set_time_travel(
        &self,
        travel: Option<TimeTravel>,
    ) -> Result<Option<TravelTarget>, SqlError> {
        let mut loaded = self.views_loaded.lock().await;
        let Some(travel) = travel else {
            self.schema.set_travel(None);
            self.schema.clear_views();
            *loaded = false;
            return Ok(None);
        };
        let journal = self
            .schema
            .load_now(&self.journal)
            .await
            .map_err(|e| self.catalog_error("loading the journal", e))?;
        let point = TravelPoint::resolve(travel, journal.as_ref())?;
        let target = match &journal {
            Some(journal) => {
                let rewound = point.rewind(journal, true)?;
                let snapshot = rewound.metadata().current_snapshot();
                TravelTarget {
                    asked: travel,
                    journal_snapshot: snapshot.map(|s| s.snapshot_id()),
                    committed_at_ms: snapshot.map(|s| s.timestamp_ms()),
                }
            }
            None => TravelTarget {
                asked: travel,
                journal_snapshot: None,
                committed_at_ms: None,
            },
        };
        for table in [
            crate::provider::STATE_ALIAS,
            crate::provider::TOMBSTONES_ALIAS,
        ] {
            if let Some(now) = self
                .schema
                .load_now(table)
                .await
                .map_err(|e| self.catalog_error("loading the annotations table", e))?
            {
                point.rewind(&now, false)?;
            }
        }
        self.schema.set_travel(Some(point));
        // The views are plans over the tables they saw: build them again over the past.
        self.schema.clear_views();
        *loaded = false;
        Ok(Some(target))
    }

    /// Runs one read-only statement, returning its schema and its rows as they are computed.
    pub async fn stream(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, datafusion::execution::SendableRecordBatchStream), SqlError> {
        let frame = self.sql(sql).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let stream = frame
            .execute_stream()
            .await
            .map_err(|e| SqlError::Execution {
                source: Box::new(e),
            })?;
        Ok((schema, stream))
    }

    /// Runs one read-only statement and collects its result.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let frame = self.sql(sql).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(|e| SqlError::Execution {
            source: Box::new(e),
        })?;
        Ok(QueryResult { schema, batches })
    }

    /// Defines the SQL name `annotations` for the next statement: the state table, the state
    /// with the journal's newest rows folded in, or the view over the journal (see `state`).
    /// Returns which. Statements that name `annotations` do this themselves.
    pub async fn define_annotations(&self) -> Result<AnnotationsSource, SqlError> {
        state::define(&self.ctx, &self.schema, &self.journal, &self.catalog_name).await
    }

    /// Since when the journal holds every row (ms since the epoch), when journal retention
    /// has dropped older ones; `None` when the journal is complete or does not exist.
    pub async fn journal_retained_since(&self) -> Result<Option<i64>, SqlError> {
        let journal = self
            .schema
            .load(&self.journal)
            .await
            .map_err(|e| SqlError::Catalog {
                catalog: self.catalog_name.clone(),
                action: "loading the journal".into(),
                source: Box::new(e),
            })?;
        Ok(journal
            .as_ref()
            .and_then(annotation_table::state::retained_since))
    }

    /// Whether `sql` reads the journal's history (the journal table or the view over it).
    pub fn reads_journal(&self, sql: &str) -> bool {
        let sql = sql.to_lowercase();
        [
            self.journal.as_str(),
            crate::provider::JOURNAL_ALIAS,
            "annotations_from_journal",
        ]
        .iter()
        .any(|name| sql.contains(&name.to_lowercase()))
    }

    /// Compares the state table with the journal view at the state's watermark (see
    /// `state::compare`), returning up to `sample` differing rows of each side.
    pub async fn compare_state(&self, sample: usize) -> Result<StateComparison, SqlError> {
        self.load_views().await?;
        state::compare(
            &self.ctx,
            &self.schema,
            &self.journal,
            &self.catalog_name,
            sample,
        )
        .await
    }

    /// Registers the views once the journal exists (they are plans over it); true once they
    /// are. The view of `annotations.sql` is registered as `annotations_from_journal`; the
    /// name `annotations` is defined per statement.
    async fn load_views(&self) -> Result<bool, SqlError> {
        let mut loaded = self.views_loaded.lock().await;
        if *loaded {
            return Ok(true);
        }
        let names = self
            .schema
            .refresh()
            .await
            .map_err(|e| self.catalog_error("listing tables", e))?;
        if !names.iter().any(|n| n == &self.journal) {
            return Ok(false);
        }
        let object_journal = names.iter().any(|n| *n == self.schema.objects_name());
        for (file, sql) in view_definitions() {
            // Over the object journal, which exists only once objects are recorded: defined
            // when a statement names it after that (`plan`).
            if *file == OBJECTS_FILE && !object_journal {
                continue;
            }
            self.create_view(file, sql).await?;
        }
        *loaded = true;
        Ok(true)
    }

    /// Defines `objects` if its journal exists now (the views were loaded before it did).
    async fn load_objects_view(&self) -> Result<(), SqlError> {
        let _loaded = self.views_loaded.lock().await;
        if self.schema.has_view(OBJECTS_VIEW)
            || !self
                .schema
                .table_exists_now(OBJECT_JOURNAL_ALIAS)
                .await
                .map_err(|e| self.catalog_error("looking up the object journal", e))?
        {
            return Ok(());
        }
        match view_definitions().iter().find(|(f, _)| *f == OBJECTS_FILE) {
            Some((file, sql)) => self.create_view(file, sql).await,
            None => Ok(()),
        }
    }

    async fn create_view(&self, file: &str, sql: &str) -> Result<(), SqlError> {
        let view = |source| SqlError::View {
            file: format!("queries/views/{file}"),
            source: Box::new(source),
        };
        let sql = if file == "annotations.sql" {
            sql.replacen(
                "CREATE VIEW annotations AS",
                &format!("CREATE VIEW {FROM_JOURNAL} AS"),
                1,
            )
        } else {
            sql.to_string()
        };
        self.ctx
            .sql(&sql)
            .await
            .map_err(view)?
            .collect()
            .await
            .map_err(view)?;
        Ok(())
    }

    fn in_default(&self, reference: &TableReference) -> bool {
        match (reference.catalog(), reference.schema()) {
            (Some(c), _) if c != CATALOG_NAME => false,
            (_, Some(s)) => s == self.namespace,
            (_, None) => true,
        }
    }

    async fn check_table(&self, reference: &TableReference) -> Result<(), SqlError> {
        if !self.in_default(reference) {
            return Ok(());
        }
        let name = reference.table();
        if self.schema.has_view(name)
            || (reference.schema().is_none()
                && self.ctx.state().table_functions().contains_key(name))
        {
            // A view, or a table function (`generate_series(..)`, `range(..)`).
            return Ok(());
        }
        let exists = self
            .schema
            .table_exists_now(name)
            .await
            .map_err(|e| self.catalog_error("looking up a table", e))?;
        if exists {
            return Ok(());
        }
        let journal_exists = self
            .schema
            .table_exists_now(&self.journal)
            .await
            .map_err(|e| self.catalog_error("looking up the journal", e))?;
        let is_ours = name == self.journal
            || name == JOURNAL_ALIAS
            || view_definitions()
                .iter()
                .any(|(file, _)| file.strip_suffix(".sql") == Some(name));
        if !journal_exists && is_ours {
            return Err(SqlError::TableNotCreated {
                table: format!("{}.{}", self.namespace, self.journal),
                catalog: self.catalog_name.clone(),
            });
        }
        let mut known = self.schema.table_names();
        known.sort();
        known.dedup();
        Err(SqlError::UnknownTable {
            table: reference.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
            namespace: self.namespace.clone(),
        })
    }

    fn catalog_error(&self, action: &str, e: iceberg::Error) -> SqlError {
        SqlError::Catalog {
            catalog: self.catalog_name.clone(),
            action: action.to_string(),
            source: Box::new(e),
        }
    }
}

/// Statement kinds a read-only session accepts before planning.
fn refuse_writes(statement: &DFStatement) -> Result<(), SqlError> {
    let what = match statement {
        DFStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_)
            | Statement::Explain { .. }
            | Statement::ExplainTable { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowVariable { .. } => return Ok(()),
            other => first_words(&other.to_string()),
        },
        DFStatement::Explain(_) => return Ok(()),
        DFStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_string(),
        DFStatement::CopyTo(_) => "COPY".to_string(),
        other => first_words(&other.to_string()),
    };
    Err(SqlError::ReadOnly { what })
}

/// A plan that writes anything (EXPLAIN ANALYZE runs its input) is refused too.
fn refuse_write_plan(plan: &LogicalPlan) -> Result<(), SqlError> {
    let mut what = None;
    let _ = plan.apply(|node| {
        what = match node {
            LogicalPlan::Ddl(ddl) => Some(ddl.name().to_string()),
            LogicalPlan::Dml(dml) => Some(dml.op.to_string()),
            LogicalPlan::Copy(_) => Some("COPY".to_string()),
            LogicalPlan::Statement(s) => Some(s.name().to_string()),
            _ => None,
        };
        Ok(if what.is_some() {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    });
    match what {
        Some(what) => Err(SqlError::ReadOnly { what }),
        None => Ok(()),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}
