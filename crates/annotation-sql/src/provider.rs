//! Read-only DataFusion providers over an Iceberg catalog that always show the catalog's
//! current state: a table is looked up in the catalog when a query names it, and every scan
//! loads the table's current snapshot, so tables created and snapshots committed after the
//! session started are visible without a restart. (iceberg-datafusion's own
//! `IcebergCatalogProvider` lists tables once at start-up and accepts writes; neither fits
//! `annotable query`.) Views live in memory, next to the tables of their namespace.
//!
//! **One snapshot per statement.** A statement may scan a table several times (the
//! `annotations` view reads the journal three times). Every scan of one statement reads the
//! snapshot the first of them loaded — a commit landing while the statement is planned cannot
//! make one scan see rows another does not. A statement is recognised by DataFusion's
//! per-statement start time, which all its scans share.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::table::Table;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use iceberg_datafusion::physical_plan::IcebergTableScan;

use crate::local_scan;
use crate::metadata_tables::{MetadataKind, MetadataTable};
use crate::scan::PartitionedScan;
use crate::schema::presented;
use crate::time_travel::TravelPoint;

/// The name the views use for the journal, whatever the configured table is called.
pub(crate) const JOURNAL_ALIAS: &str = "annotation_journal";

/// The name of the current-state table as plain readers see it (the SQL name `annotations`
/// is the state with the journal's newest rows folded in; see `state`).
pub(crate) const STATE_ALIAS: &str = "annotations_state";
/// The object journal's default name, and the name SQL (and the `objects` view) reaches it by
/// whatever it is called (`objects.table`).
pub(crate) const OBJECT_JOURNAL_ALIAS: &str = "object_journal";

/// The name the state overlay uses for the state's tombstones table.
pub(crate) const TOMBSTONES_ALIAS: &str = "annotations_tombstones";

fn df_error(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The table each statement in planning has loaded, by table: (statement start time, table).
type Pins = Arc<tokio::sync::Mutex<HashMap<TableIdent, (i64, Table)>>>;

/// One Iceberg table, read at its current snapshot by each statement (see the module doc).
#[derive(Debug)]
pub(crate) struct LiveTable {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    schema: SchemaRef,
    pins: Pins,
    /// A table read at one fixed snapshot (`None`: the given table's current one, which time
    /// travel has rewound) instead of the catalog's current one.
    fixed: Option<(Table, Option<i64>)>,
}

impl LiveTable {
    /// `table` as of `snapshot_id`, whatever is committed later.
    pub(crate) fn at_snapshot(
        catalog: Arc<dyn Catalog>,
        table: Table,
        snapshot_id: i64,
    ) -> DFResult<Self> {
        let snapshot = table
            .metadata()
            .snapshot_by_id(snapshot_id)
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "snapshot {snapshot_id} of table {} does not exist (expired?)",
                    table.identifier()
                ))
            })?;
        let schema = presented(
            &schema_to_arrow_schema(
                &snapshot
                    .schema(table.metadata())
                    .map_err(df_error)?
                    .as_ref()
                    .clone(),
            )
            .map_err(df_error)?,
        );
        Ok(LiveTable {
            catalog,
            ident: table.identifier().clone(),
            schema,
            pins: Pins::default(),
            fixed: Some((table, Some(snapshot_id))),
        })
    }

    /// The table as the statement planned in `state` sees it: the one its first scan loaded.
    async fn for_statement(&self, state: &dyn Session) -> DFResult<Table> {
        let Some(started) = state
            .execution_props()
            .query_execution_start_time
            .and_then(|t| t.timestamp_nanos_opt())
        else {
            return self.catalog.load_table(&self.ident).await.map_err(df_error);
        };
        // Held across the load, so concurrent scans of one statement wait for the first.
        let mut pins = self.pins.lock().await;
        if let Some((at, table)) = pins.get(&self.ident)
            && *at == started
        {
            return Ok(table.clone());
        }
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(df_error)?;
        pins.insert(self.ident.clone(), (started, table.clone()));
        Ok(table)
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let current = match &self.fixed {
            Some((table, Some(id))) => {
                IcebergStaticTableProvider::try_new_from_table_snapshot(table.clone(), *id).await
            }
            Some((table, None)) => {
                IcebergStaticTableProvider::try_new_from_table(table.clone()).await
            }
            None => {
                IcebergStaticTableProvider::try_new_from_table(self.for_statement(state).await?)
                    .await
            }
        }
        .map_err(df_error)?;
        if presented(&current.schema()) != self.schema {
            return Err(DataFusionError::Plan(format!(
                "the schema of table {} changed while this query was planned; run it again",
                self.ident
            )));
        }
        let plan = current
            .scan(state, projection, &for_iceberg(filters)?, limit)
            .await?;
        match plan.as_any().downcast_ref::<IcebergTableScan>() {
            Some(scan) => {
                let config = state.config();
                let scan =
                    PartitionedScan::plan(scan, config.target_partitions(), config.batch_size())
                        .await?;
                let local = local_scan::plan(
                    state,
                    scan.groups(),
                    &self.schema,
                    projection,
                    !filters.is_empty(),
                    limit,
                )
                .await?;
                Ok(local.unwrap_or_else(|| Arc::new(scan)))
            }
            // iceberg-datafusion 0.10's provider always plans an `IcebergTableScan`; any other
            // plan would return batches in iceberg's types, not the session's.
            None => Err(DataFusionError::Internal(format!(
                "iceberg-datafusion planned table {} as {}, not the IcebergTableScan annotable \
                 reads; this build of annotable does not support that iceberg-datafusion version",
                self.ident,
                plan.name()
            ))),
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // iceberg prunes files and row groups with the predicates; rows are filtered again.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// `filters` as iceberg-datafusion can turn them into an Iceberg predicate (for partition and
/// metrics pruning): it knows string literals as `Utf8` only, and the session compares string
/// columns, which it presents as views, with `Utf8View` literals.
fn for_iceberg(filters: &[Expr]) -> DFResult<Vec<Expr>> {
    filters
        .iter()
        .map(|filter| {
            filter
                .clone()
                .transform(|expr| {
                    Ok(match expr {
                        Expr::Literal(ScalarValue::Utf8View(value), metadata) => {
                            Transformed::yes(Expr::Literal(ScalarValue::Utf8(value), metadata))
                        }
                        other => Transformed::no(other),
                    })
                })
                .map(|t| t.data)
        })
        .collect()
}

/// One namespace: its Iceberg tables (looked up on demand) and the views registered in it.
#[derive(Debug)]
pub(crate) struct NamespaceSchema {
    catalog: Arc<dyn Catalog>,
    namespace: NamespaceIdent,
    /// The configured journal table name, reachable as [`JOURNAL_ALIAS`] too.
    journal: Option<String>,
    /// The state table's name, reachable as [`STATE_ALIAS`] (its tombstones as
    /// [`TOMBSTONES_ALIAS`]).
    state: String,
    /// The object journal's name, reachable as `object_journal` too.
    objects: String,
    views: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
    /// Table names seen at the last [`NamespaceSchema::refresh`], for `SHOW TABLES`.
    listed: RwLock<Vec<String>>,
    /// Shared by every table provider of the namespace, whichever scan asked for it.
    pins: Pins,
    /// When set, every table is read as it was at this point (see `time_travel`).
    travel: RwLock<Option<TravelPoint>>,
}

impl NamespaceSchema {
    pub(crate) fn new(
        catalog: Arc<dyn Catalog>,
        namespace: NamespaceIdent,
        journal: Option<String>,
    ) -> Self {
        NamespaceSchema {
            catalog,
            namespace,
            journal,
            state: annotation_table::state_spec()
                .map(|s| s.table.clone())
                .unwrap_or_else(|_| "annotations".into()),
            objects: OBJECT_JOURNAL_ALIAS.to_string(),
            views: RwLock::default(),
            listed: RwLock::default(),
            pins: Pins::default(),
            travel: RwLock::default(),
        }
    }

    /// Names the object journal (default `object_journal`).
    pub(crate) fn with_objects(mut self, objects: &str) -> Self {
        self.objects = objects.to_string();
        self
    }

    /// The object journal's name.
    pub(crate) fn objects_name(&self) -> &str {
        &self.objects
    }

    /// Names the state table (default `annotations`).
    pub(crate) fn with_state(mut self, state: &str) -> Self {
        self.state = state.to_string();
        self
    }

    fn table_name(&self, name: &str) -> String {
        match &self.journal {
            Some(journal) if name == JOURNAL_ALIAS => journal.clone(),
            _ if name == STATE_ALIAS => self.state.clone(),
            _ if name == TOMBSTONES_ALIAS => annotation_table::state::tombstones_name(&self.state),
            _ if name == OBJECT_JOURNAL_ALIAS => self.objects.clone(),
            _ => name.to_string(),
        }
    }

    /// Reads every table as of `point` from the next statement on (`None`: the present).
    pub(crate) fn set_travel(&self, point: Option<TravelPoint>) {
        if let Ok(mut travel) = self.travel.write() {
            *travel = point;
        }
    }

    fn travel(&self) -> Option<TravelPoint> {
        self.travel.read().ok().and_then(|t| t.clone())
    }

    /// Whether `name` (a name or alias) is the journal.
    fn is_journal(&self, name: &str) -> bool {
        self.table_name(name) == self.journal.as_deref().unwrap_or(JOURNAL_ALIAS)
    }

    /// Loads a table of the namespace by name or alias, as of the session's time-travel point
    /// if it has one; `None` if it does not exist.
    pub(crate) async fn load(&self, name: &str) -> Result<Option<Table>, iceberg::Error> {
        let table = self.load_now(name).await?;
        match (table, self.travel()) {
            (Some(table), Some(point)) => point
                .rewind(&table, self.is_journal(name))
                .map(Some)
                .map_err(|e| iceberg::Error::new(ErrorKind::DataInvalid, e.to_string())),
            (table, _) => Ok(table),
        }
    }

    /// Loads a table of the namespace by name or alias as it is now; `None` if it does not
    /// exist.
    pub(crate) async fn load_now(&self, name: &str) -> Result<Option<Table>, iceberg::Error> {
        let ident = TableIdent::new(self.namespace.clone(), self.table_name(name));
        match self.catalog.load_table(&ident).await {
            Ok(table) => Ok(Some(table)),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `table` as of `snapshot_id`, as a provider.
    pub(crate) fn pinned(
        &self,
        table: Table,
        snapshot_id: i64,
    ) -> DFResult<Arc<dyn TableProvider>> {
        Ok(Arc::new(LiveTable::at_snapshot(
            self.catalog.clone(),
            table,
            snapshot_id,
        )?))
    }

    /// Registers a provider of the session's own (a view, or the in-memory rows the state
    /// overlay reads), replacing any of that name.
    pub(crate) fn set_internal(&self, name: &str, provider: Arc<dyn TableProvider>) {
        if let Ok(mut views) = self.views.write() {
            views.insert(name.to_string(), provider);
        }
    }

    /// Forgets every view (they are registered again over the tables as they now read).
    pub(crate) fn clear_views(&self) {
        if let Ok(mut views) = self.views.write() {
            views.clear();
        }
    }

    pub(crate) fn has_view(&self, name: &str) -> bool {
        self.views.read().is_ok_and(|v| v.contains_key(name))
    }

    pub(crate) fn view_names(&self) -> Vec<String> {
        self.views
            .read()
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Re-lists the namespace's tables; a namespace that does not exist has none.
    pub(crate) async fn refresh(&self) -> Result<Vec<String>, iceberg::Error> {
        let names: Vec<String> = match self.catalog.list_tables(&self.namespace).await {
            Ok(idents) => idents.into_iter().map(|t| t.name).collect(),
            Err(e) if e.kind() == ErrorKind::NamespaceNotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        if let Ok(mut listed) = self.listed.write() {
            listed.clone_from(&names);
        }
        Ok(names)
    }

    /// Whether the Iceberg table (or the table of a metadata table) exists now, views aside.
    pub(crate) async fn table_exists_now(&self, name: &str) -> Result<bool, iceberg::Error> {
        let name = MetadataKind::split(name).map_or(name, |(table, _)| table);
        let ident = TableIdent::new(self.namespace.clone(), self.table_name(name));
        match self.catalog.table_exists(&ident).await {
            Ok(exists) => Ok(exists),
            Err(e) if e.kind() == ErrorKind::NamespaceNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl SchemaProvider for NamespaceSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names = self.view_names();
        if let Ok(listed) = self.listed.read() {
            names.extend(listed.iter().cloned());
        }
        names
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if let Some(view) = self.views.read().ok().and_then(|v| v.get(name).cloned()) {
            return Ok(Some(view));
        }
        if let Some((table, kind)) = MetadataKind::split(name) {
            return match self.load_now(table).await.map_err(df_error)? {
                Some(table) => Ok(Some(Arc::new(MetadataTable::new(table, kind)?))),
                None => Ok(None),
            };
        }
        let Some(table) = self.load_now(name).await.map_err(df_error)? else {
            return Ok(None);
        };
        let schema = presented(
            &schema_to_arrow_schema(table.metadata().current_schema()).map_err(df_error)?,
        );
        let fixed = match self.travel() {
            Some(point) => Some((
                point
                    .rewind(&table, self.is_journal(name))
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
                None,
            )),
            None => None,
        };
        Ok(Some(Arc::new(LiveTable {
            catalog: self.catalog.clone(),
            ident: table.identifier().clone(),
            schema,
            pins: self.pins.clone(),
            fixed,
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        let name = MetadataKind::split(name).map_or(name, |(table, _)| table);
        self.has_view(name)
            || self
                .listed
                .read()
                .is_ok_and(|l| l.iter().any(|t| *t == self.table_name(name)))
    }

    /// Only views can be registered (the views of `queries/views`, at session start); the
    /// catalog itself is never written through a query session.
    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if table.table_type() != TableType::View {
            return Err(DataFusionError::Plan(format!(
                "cannot create table {name}: query sessions are read-only"
            )));
        }
        let mut views = self
            .views
            .write()
            .map_err(|_| DataFusionError::Internal("view registry poisoned".into()))?;
        Ok(views.insert(name, table))
    }
}

/// The catalog as DataFusion sees it: one schema per namespace.
#[derive(Debug)]
pub(crate) struct IcebergCatalog {
    catalog: Arc<dyn Catalog>,
    /// The default namespace, which holds the journal and the views.
    default_name: String,
    default: Arc<NamespaceSchema>,
    /// Namespaces listed at session start.
    listed: Vec<String>,
    /// Schemas a front end registers beside the namespaces (the PostgreSQL endpoint's
    /// `pg_catalog`); never written to the catalog.
    registered: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl IcebergCatalog {
    pub(crate) fn new(
        catalog: Arc<dyn Catalog>,
        default_name: String,
        default: Arc<NamespaceSchema>,
        listed: Vec<String>,
    ) -> Self {
        IcebergCatalog {
            catalog,
            default_name,
            default,
            listed,
            registered: Default::default(),
        }
    }
}

impl CatalogProvider for IcebergCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names = self.listed.clone();
        if !names.contains(&self.default_name) {
            names.push(self.default_name.clone());
        }
        if let Ok(registered) = self.registered.read() {
            names.extend(registered.keys().cloned());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == self.default_name {
            return Some(self.default.clone());
        }
        if let Some(schema) = self
            .registered
            .read()
            .ok()
            .and_then(|registered| registered.get(name).cloned())
        {
            return Some(schema);
        }
        Some(Arc::new(NamespaceSchema::new(
            self.catalog.clone(),
            NamespaceIdent::new(name.to_string()),
            None,
        )))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        if name == self.default_name || self.listed.iter().any(|n| n == name) {
            return Err(DataFusionError::Plan(format!(
                "schema {name} is a namespace of the Iceberg catalog; annotable does not replace it"
            )));
        }
        let mut registered = self
            .registered
            .write()
            .map_err(|_| DataFusionError::Internal("schema registry poisoned".into()))?;
        Ok(registered.insert(name.to_string(), schema))
    }
}
