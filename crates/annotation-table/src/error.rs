//! Typed errors of the table layer, classified as retryable or permanent.

/// Why a table operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The embedded schema file does not describe a valid Iceberg table (a build defect).
    #[error("a table definition in schemas/ is invalid: {0}")]
    SpecInvalid(String),
    /// The catalog could not be reached or configured.
    #[error("catalog {catalog}: {action} failed: {source}. Check the catalog settings ({hint})")]
    Catalog {
        /// Which catalog (URI or name, credentials removed).
        catalog: String,
        /// What we were doing.
        action: String,
        /// What to check.
        hint: &'static str,
        /// The underlying error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The table exists but is not the table this version of annotable writes.
    #[error(
        "table {table} exists with a different schema ({detail}); annotable never alters a table: \
         point it at another namespace/table, or migrate the table yourself"
    )]
    SchemaMismatch {
        /// Table identifier.
        table: String,
        /// The first difference found.
        detail: String,
    },
    /// Rows could not be encoded to Arrow.
    #[error("encoding {rows} rows for table {table} failed: {source}")]
    Encode {
        /// Table identifier.
        table: String,
        /// Number of rows in the batch.
        rows: usize,
        /// The Arrow error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Data files could not be written to the warehouse.
    #[error("writing data files of batch {batch_id} for table {table} failed: {source}")]
    Write {
        /// Table identifier.
        table: String,
        /// Batch id.
        batch_id: String,
        /// The underlying error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The commit failed, and retrying (if allowed) did not help.
    #[error(
        "committing batch {batch_id} ({rows} rows) to table {table} failed after {attempts} attempt(s): {source}"
    )]
    Commit {
        /// Table identifier.
        table: String,
        /// Batch id.
        batch_id: String,
        /// Number of rows in the batch.
        rows: usize,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The caller's deadline (a shutdown) passed before the commit went through. Whether the
    /// last attempt landed is unknown; its rows are either all committed or not at all.
    #[error(
        "committing batch {batch_id} ({rows} rows) to table {table} was abandoned after {attempts} attempt(s): the shutdown deadline passed; its messages are redelivered and committed again"
    )]
    GaveUp {
        /// Table identifier.
        table: String,
        /// Batch id.
        batch_id: String,
        /// Number of rows in the batch.
        rows: usize,
        /// Attempts made.
        attempts: u32,
    },
    /// A maintenance step (compaction, expiry, orphan cleanup) failed. The table is unchanged
    /// or fully updated, never in between.
    #[error("maintenance of table {table}: {action} failed: {source}")]
    Maintenance {
        /// Table identifier.
        table: String,
        /// What we were doing.
        action: String,
        /// The underlying error.
        #[source]
        source: Box<iceberg::Error>,
    },
}

impl TableError {
    /// Whether the same operation may succeed if tried again later (the catalog or storage was
    /// unreachable, a commit kept conflicting); permanent errors need a configuration or code
    /// change.
    pub fn is_retryable(&self) -> bool {
        match self {
            TableError::SpecInvalid(_)
            | TableError::SchemaMismatch { .. }
            | TableError::Encode { .. } => false,
            TableError::GaveUp { .. } => true,
            TableError::Catalog { source, .. }
            | TableError::Write { source, .. }
            | TableError::Commit { source, .. }
            | TableError::Maintenance { source, .. } => is_transient(source),
        }
    }
}

/// Iceberg errors worth retrying: conflicts, and anything that is not a definite "no".
pub(crate) fn is_transient(error: &iceberg::Error) -> bool {
    use iceberg::ErrorKind as K;
    error.retryable()
        || matches!(
            error.kind(),
            K::CatalogCommitConflicts | K::Unexpected | K::PreconditionFailed
        )
}
