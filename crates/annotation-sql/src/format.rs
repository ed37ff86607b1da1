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
    out: W,
) -> Result<(), SqlError> {
    let mut writer = ResultWriter::new(format, schema.clone(), out, None)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish().map(|_| ())
}

/// Writes a result as its batches arrive, so a large export holds one batch at a time rather
/// than the whole result. Only the text table waits for its rows (column widths depend on all
/// of them), and it keeps at most `max_rows`.
pub struct ResultWriter<W: Write + Send> {
    format: OutputFormat,
    schema: SchemaRef,
    sink: Sink<W>,
    rows: usize,
}

enum Sink<W: Write + Send> {
    Table {
        out: W,
        kept: Vec<RecordBatch>,
        kept_rows: usize,
        max_rows: Option<usize>,
    },
    Csv(Box<arrow::csv::Writer<W>>),
    Json(arrow::json::Writer<W, arrow::json::writer::JsonArray>),
    Ndjson(arrow::json::Writer<W, arrow::json::writer::LineDelimited>),
    Parquet(Box<parquet::arrow::ArrowWriter<W>>),
}

/// What a [`ResultWriter`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Rows in the result.
    pub rows: usize,
    /// Rows shown, when the table was cut at `max_rows`.
    pub shown: Option<usize>,
}

impl<W: Write + Send> ResultWriter<W> {
    /// A writer of `format` to `out`; `max_rows` limits the rows a text table shows.
    pub fn new(
        format: OutputFormat,
        schema: SchemaRef,
        out: W,
        max_rows: Option<usize>,
    ) -> Result<Self, SqlError> {
        let sink = match format {
            OutputFormat::Table => Sink::Table {
                out,
                kept: Vec::new(),
                kept_rows: 0,
                max_rows,
            },
            OutputFormat::Csv => Sink::Csv(Box::new(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            )),
            OutputFormat::Json => Sink::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::JsonArray>(out),
            ),
            OutputFormat::Ndjson => Sink::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(out),
            ),
            OutputFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(
                        parquet::basic::ZstdLevel::default(),
                    ))
                    .build();
                Sink::Parquet(Box::new(
                    parquet::arrow::ArrowWriter::try_new(out, schema.clone(), Some(props))
                        .map_err(|e| fail(format, e.to_string()))?,
                ))
            }
        };
        Ok(ResultWriter {
            format,
            schema,
            sink,
            rows: 0,
        })
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SqlError> {
        let format = self.format;
        let error = |e: &dyn std::fmt::Display| fail(format, e.to_string());
        self.rows += batch.num_rows();
        match &mut self.sink {
            Sink::Table {
                kept,
                kept_rows,
                max_rows,
                ..
            } => {
                let room = max_rows.map_or(usize::MAX, |m| m.saturating_sub(*kept_rows));
                if room > 0 && batch.num_rows() > 0 {
                    let take = room.min(batch.num_rows());
                    kept.push(batch.slice(0, take));
                    *kept_rows += take;
                }
            }
            Sink::Csv(w) => w.write(batch).map_err(|e| error(&e))?,
            Sink::Json(w) => w.write(batch).map_err(|e| error(&e))?,
            Sink::Ndjson(w) => {
                w.write(batch).map_err(|e| error(&e))?;
                // Each batch reaches a pipe as it is read, not at the end.
                w.get_mut().flush().map_err(|e| error(&e))?;
            }
            Sink::Parquet(w) => w.write(batch).map_err(|e| error(&e))?,
        }
        Ok(())
    }

    /// Ends the output (the table is printed now) and says how many rows there were.
    pub fn finish(self) -> Result<Written, SqlError> {
        let format = self.format;
        let error = |e: &dyn std::fmt::Display| fail(format, e.to_string());
        let rows = self.rows;
        let mut shown = None;
        match self.sink {
            Sink::Table {
                mut out,
                kept,
                kept_rows,
                ..
            } => {
                let options = FormatOptions::default().with_null("NULL");
                let table = if kept.is_empty() {
                    arrow::util::pretty::pretty_format_batches_with_schema(self.schema, &kept)
                        .map(|t| t.to_string())
                } else {
                    arrow::util::pretty::pretty_format_batches_with_options(&kept, &options)
                        .map(|t| t.to_string())
                }
                .map_err(|e| error(&e))?;
                writeln!(out, "{table}").map_err(|e| error(&e))?;
                if kept_rows < rows {
                    shown = Some(kept_rows);
                }
                out.flush().map_err(|e| error(&e))?;
            }
            Sink::Csv(w) => {
                let mut w = *w;
                if rows == 0 {
                    w.write(&RecordBatch::new_empty(self.schema))
                        .map_err(|e| error(&e))?;
                }
                w.into_inner().flush().map_err(|e| error(&e))?;
            }
            Sink::Json(mut w) => {
                w.finish().map_err(|e| error(&e))?;
                let mut out = w.into_inner();
                writeln!(out).map_err(|e| error(&e))?;
                out.flush().map_err(|e| error(&e))?;
            }
            Sink::Ndjson(mut w) => {
                w.finish().map_err(|e| error(&e))?;
                w.into_inner().flush().map_err(|e| error(&e))?;
            }
            Sink::Parquet(w) => {
                let mut out = w.into_inner().map_err(|e| error(&e))?;
                out.flush().map_err(|e| error(&e))?;
            }
        }
        Ok(Written { rows, shown })
    }
}

fn fail(format: OutputFormat, message: String) -> SqlError {
    SqlError::Output {
        format: format.name(),
        message,
    }
}
