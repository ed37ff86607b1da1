use datafusion::error::DataFusionError;

/// What went wrong answering a query. Every message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The SQL does not parse or does not plan (unknown column, wrong types, ...).
    #[error("invalid SQL: {message}")]
    InvalidSql {
        /// DataFusion's description, with the line and column where it has one.
        message: String,
    },
    /// The query names a table or view that does not exist.
    #[error("unknown table {table}: the tables and views here are {known} (namespace {namespace})")]
    UnknownTable {
        /// The name as written.
        table: String,
        /// The tables and views the session knows, comma separated.
        known: String,
        /// The default namespace.
        namespace: String,
    },
    /// The journal table has not been created yet, so neither it nor the views exist.
    #[error(
        "table {table} does not exist yet in {catalog}: nothing has been ingested; run `annotable serve` or `annotable backfill` first (or check --namespace/--catalog-uri)"
    )]
    TableNotCreated {
        /// The journal table's name.
        table: String,
        /// The catalog it was looked for in.
        catalog: String,
    },
    /// The statement would change something; annotable's SQL (`query`, `sql-server`) only reads.
    #[error(
        "annotable SQL is read-only: {what} statements are not allowed (use SELECT, WITH, EXPLAIN, SHOW or DESCRIBE)"
    )]
    ReadOnly {
        /// The kind of statement refused.
        what: String,
    },
    /// A view (a file of `queries/views`, or the state overlay) does not load.
    #[error("view {file} does not load: {source}")]
    View {
        /// The file name.
        file: String,
        /// Why.
        #[source]
        source: Box<DataFusionError>,
    },
    /// The catalog could not be read.
    #[error("catalog {catalog}: {action} failed: {source}")]
    Catalog {
        /// The catalog.
        catalog: String,
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The query failed while running (reading files, out of memory, ...).
    #[error("query failed: {source}")]
    Execution {
        /// The cause.
        #[source]
        source: Box<DataFusionError>,
    },
    /// A time-travel point that cannot be read (bad instant, unknown or expired snapshot).
    #[error("time travel: {message}")]
    TimeTravel {
        /// What is wrong and what to give instead.
        message: String,
    },
    /// The result could not be written out.
    #[error("writing the result as {format} failed: {message}")]
    Output {
        /// The output format.
        format: &'static str,
        /// The cause.
        message: String,
    },
}

impl SqlError {
    /// Whether trying the same query again may succeed: catalog and I/O failures may be
    /// transient; bad SQL, unknown tables and refused statements are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            SqlError::Catalog { source, .. } => matches!(
                source.kind(),
                iceberg::ErrorKind::Unexpected | iceberg::ErrorKind::CatalogCommitConflicts
            ),
            SqlError::Execution { source } => {
                matches!(
                    source.find_root(),
                    DataFusionError::IoError(_)
                        | DataFusionError::ObjectStore(_)
                        | DataFusionError::External(_)
                )
            }
            SqlError::Output { .. } => true,
            SqlError::InvalidSql { .. }
            | SqlError::UnknownTable { .. }
            | SqlError::TableNotCreated { .. }
            | SqlError::ReadOnly { .. }
            | SqlError::TimeTravel { .. }
            | SqlError::View { .. } => false,
        }
    }

    /// Classifies a DataFusion error raised while parsing or planning.
    pub fn from_planning(e: DataFusionError) -> SqlError {
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(..)
            | DataFusionError::SchemaError(..) => {
                let mut message = e.strip_backtrace();
                if message.contains("found: EOF") {
                    message.push_str(" (at the end of the SQL: is it cut short?)");
                }
                SqlError::InvalidSql { message }
            }
            DataFusionError::NotImplemented(m) => SqlError::InvalidSql {
                message: format!("not supported: {m}"),
            },
            _ => SqlError::Execution {
                source: Box::new(e),
            },
        }
    }
}
