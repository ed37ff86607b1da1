//! `annotable query`: one read-only SQL statement over the table, printed in a chosen format.

use std::io::Write;
use std::path::PathBuf;

use annotation_sql::{OutputFormat, QuerySession, SqlError, write_result};
use annotation_table::TableError;

use crate::config::{Config, ConfigError};

/// What `query` runs and where its result goes.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    /// The SQL text.
    pub sql: String,
    /// The output format.
    pub format: OutputFormat,
    /// Write here instead of stdout (required for parquet).
    pub output: Option<PathBuf>,
}

/// Why `query` failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The catalog could not be opened.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The query itself.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// Parquet needs a file.
    #[error("--format parquet writes a file: add --output FILE")]
    ParquetNeedsFile,
    /// The output file cannot be written.
    #[error("cannot write {path}: {source}")]
    OutputFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Opens a query session on the configured catalog and namespace.
pub async fn open_session(config: &Config) -> Result<QuerySession, QueryError> {
    let (catalog_config, catalog) = config.connect_catalog::<QueryError>().await?;
    Ok(QuerySession::new(
        catalog,
        catalog_config.describe(),
        config.namespace(),
        config.table(),
    )
    .await?)
}

/// Runs the request and writes its result to the output file or `stdout`.
pub async fn run(
    config: &Config,
    request: &QueryRequest,
    stdout: impl Write + Send,
) -> Result<usize, QueryError> {
    if request.format == OutputFormat::Parquet && request.output.is_none() {
        return Err(QueryError::ParquetNeedsFile);
    }
    let session = open_session(config).await?;
    if session.reads_journal(&request.sql)
        && let Some(since) = session.journal_retained_since().await?
    {
        let since = chrono::DateTime::from_timestamp_millis(since)
            .map_or_else(|| since.to_string(), |t| t.to_rfc3339());
        eprintln!(
            "note: journal retention (maintain.journal_retention_days) has dropped journal rows ingested before {since}: history before then is gone; the annotations table still holds every current annotation"
        );
    }
    let result = session.query(&request.sql).await?;
    let rows = result.num_rows();
    match &request.output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|source| QueryError::OutputFile {
                path: path.clone(),
                source,
            })?;
            write_result(
                request.format,
                &result.schema,
                &result.batches,
                std::io::BufWriter::new(file),
            )?;
        }
        None => write_result(request.format, &result.schema, &result.batches, stdout)?,
    }
    Ok(rows)
}
