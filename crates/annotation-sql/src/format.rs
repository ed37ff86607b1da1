//! Writing query results: a table for people, CSV, JSON, NDJSON and Parquet for programs.

use std::io::Write;
use std::str::FromStr;

use arrow::util::display::FormatOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::SqlError;

/// An output format of `annotable query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A Parquet file (zstd); needs a file, not a terminal.
    Parquet,
}

impl OutputFormat {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet => "parquet",
        }
    }

    /// Every format, for help texts.
    pub const ALL: [OutputFormat; 5] = [
        OutputFormat::Table,
        OutputFormat::Csv,
        OutputFormat::Json,
        OutputFormat::Ndjson,
        OutputFormat::Parquet,
    ];
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown format {s:?}: use table, csv, json, ndjson or parquet"))
    }
}

/// Writes `batches` (with `schema`, so an empty result still has its columns) to `out`.
pub fn write_result<W: Write + Send>(
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    mut out: W,
) -> Result<(), SqlError> {
    let fail = |message: String| SqlError::Output {
        format: format.name(),
        message,
    };
    match format {
        OutputFormat::Table => {
            let options = FormatOptions::default().with_null("NULL");
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), batches)
                    .map(|t| t.to_string())
            } else {
                arrow::util::pretty::pretty_format_batches_with_options(batches, &options)
                    .map(|t| t.to_string())
            }
            .map_err(|e| fail(e.to_string()))?;
            writeln!(out, "{table}").map_err(|e| fail(e.to_string()))?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                writer
                    .write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(|e| fail(e.to_string()))?;
            }
            for batch in batches {
                writer.write(batch).map_err(|e| fail(e.to_string()))?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut out);
            for batch in batches {
                writer.write(batch).map_err(|e| fail(e.to_string()))?;
            }
            writer.finish().map_err(|e| fail(e.to_string()))?;
            writeln!(out).map_err(|e| fail(e.to_string()))?;
        }
        OutputFormat::Ndjson => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut out);
            for batch in batches {
                writer.write(batch).map_err(|e| fail(e.to_string()))?;
            }
            writer.finish().map_err(|e| fail(e.to_string()))?;
        }
        OutputFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(
                    parquet::basic::ZstdLevel::default(),
                ))
                .build();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
                    .map_err(|e| fail(e.to_string()))?;
            for batch in batches {
                writer.write(batch).map_err(|e| fail(e.to_string()))?;
            }
            writer.close().map_err(|e| fail(e.to_string()))?;
        }
    }
    out.flush().map_err(|e| fail(e.to_string()))
}
