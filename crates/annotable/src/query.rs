//! `annotable query`: one read-only SQL statement over the table, streamed to the output in a
//! chosen format, optionally as of a past instant or journal snapshot. (With no SQL on a
//! terminal it is a shell instead: see `shell`.)

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use annotation_sql::{
    OutputFormat, QuerySession, ResultWriter, SqlError, TimeTravel, TravelTarget, Written,
};
use annotation_table::TableError;
use futures::StreamExt;

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
    /// Read the tables as of this point instead of now.
    pub travel: Option<TimeTravel>,
    /// Show at most this many rows in a text table (the rest are counted).
    pub max_rows: Option<usize>,
}

/// What a statement returned, for the summary line on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Rows written (and shown).
    pub written: Written,
    /// From opening the session to the last row written.
    pub took: Duration,
}

impl Outcome {
    /// `3 rows (0.012 s)`, saying when a table showed only the first rows.
    pub fn summary(&self) -> String {
        let rows = match self.written.rows {
            1 => "1 row".to_string(),
            n => format!("{n} rows"),
        };
        let shown = self
            .written
            .shown
            .map(|m| format!(", the first {m} shown"))
            .unwrap_or_default();
        format!("{rows}{shown} ({:.3} s)", self.took.as_secs_f64())
    }
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
    let options = annotation_sql::SessionOptions {
        state_table: Some(config.state_table().to_string()),
        object_journal: Some(config.objects_table().to_string()),
        ..annotation_sql::SessionOptions::default()
    };
    Ok(QuerySession::with_options(
        catalog,
        catalog_config.describe(),
        config.namespace(),
        config.table(),
        &options,
    )
    .await?)
}

/// How a time-travel target reads on stderr.
pub fn describe_travel(target: &TravelTarget) -> String {
    match (target.journal_snapshot, target.committed_at_ms) {
        (Some(id), Some(ms)) => {
            let at = chrono::DateTime::from_timestamp_millis(ms)
                .map_or_else(|| ms.to_string(), |t| t.to_rfc3339());
            format!(
                "as of {}: journal snapshot {id}, committed {at}",
                target.asked
            )
        }
        _ => format!(
            "as of {}: the journal had no rows yet, so every table reads empty",
            target.asked
        ),
    }
}

/// Runs the request and streams its result to the output file or `stdout`.
pub async fn run(
    config: &Config,
    request: &QueryRequest,
    stdout: impl Write + Send,
) -> Result<Outcome, QueryError> {
    if request.format == OutputFormat::Parquet && request.output.is_none() {
        return Err(QueryError::ParquetNeedsFile);
    }
    let started = Instant::now();
    let session = open_session(config).await?;
    if let Some(target) = session.set_time_travel(request.travel).await? {
        eprintln!("note: {}", describe_travel(&target));
    }
    warn_if_retained(&session, &request.sql).await?;
    let written = match &request.output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|source| QueryError::OutputFile {
                path: path.clone(),
                source,
            })?;
            run_to(
                &session,
                &request.sql,
                request.format,
                request.max_rows,
                std::io::BufWriter::new(file),
            )
            .await?
        }
        None => {
            run_to(
                &session,
                &request.sql,
                request.format,
                request.max_rows,
                stdout,
            )
            .await?
        }
    };
    Ok(Outcome {
        written,
        took: started.elapsed(),
    })
}

/// Says on stderr when the statement reads journal history that retention has dropped.
pub async fn warn_if_retained(session: &QuerySession, sql: &str) -> Result<(), QueryError> {
    if session.reads_journal(sql)
        && let Some(since) = session.journal_retained_since().await?
    {
        let since = chrono::DateTime::from_timestamp_millis(since)
            .map_or_else(|| since.to_string(), |t| t.to_rfc3339());
        eprintln!(
            "note: journal retention (maintain.journal_retention_days) has dropped journal rows ingested before {since}: history before then is gone; the annotations table still holds every current annotation"
        );
    }
    Ok(())
}

/// Runs `sql` on `session`, writing each batch to `out` as it arrives.
pub async fn run_to(
    session: &QuerySession,
    sql: &str,
    format: OutputFormat,
    max_rows: Option<usize>,
    out: impl Write + Send,
) -> Result<Written, QueryError> {
    let (schema, mut batches) = session.stream(sql).await?;
    let mut writer = ResultWriter::new(format, schema, out, max_rows)?;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| SqlError::Execution {
            source: Box::new(e),
        })?;
        writer.write(&batch)?;
    }
    Ok(writer.finish()?)
}
