//! Arrow [`RecordBatch`]es read back from the journal → [`JournalRow`]s: the inverse of
//! [`crate::encode`], columns matched by name, so a query may select any subset of the
//! schema's columns (a column left out decodes as empty) in any order.

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};

use crate::{JournalRow, RecordType, Source};

/// A row that cannot be a [`JournalRow`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A value annotable never writes.
    #[error("row {row}: `{column}` is {value:?}, which annotable does not write")]
    Unknown {
        /// Index in the batch.
        row: usize,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// A column every row has is missing or empty.
    #[error("row {row}: `{column}` is missing")]
    Missing {
        /// Index in the batch.
        row: usize,
        /// The column.
        column: &'static str,
    },
}

impl std::str::FromStr for RecordType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PUT" => Ok(RecordType::Put),
            "DELETE" => Ok(RecordType::Delete),
            "OBJECT_RESET" => Ok(RecordType::ObjectReset),
            other => Err(other.to_string()),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "notification" => Ok(Source::Notification),
            "backfill" => Ok(Source::Backfill),
            other => Err(other.to_string()),
        }
    }
}

/// Decodes every row of `batch`; a row that is not one annotable writes (an unknown
/// `record_type`, say) is an error of its own and does not stop the others.
pub fn decode_rows(
    batch: &RecordBatch,
) -> Result<Vec<Result<JournalRow, DecodeError>>, ArrowError> {
    let columns = Columns::of(batch)?;
    Ok((0..batch.num_rows()).map(|i| columns.row(i)).collect())
}

struct Columns {
    text: Vec<(&'static str, Option<ArrayRef>)>,
    last_modified_date: Option<ArrayRef>,
    event_time: Option<ArrayRef>,
    ingested_at: Option<ArrayRef>,
    size: Option<ArrayRef>,
}

const TEXT: [&str; 16] = [
    "bucket",
    "object_key",
    "object_version_id",
    "object_join_key",
    "name",
    "record_type",
    "sequence_number",
    "e_tag",
    "checksum_algorithm",
    "replication_status",
    "text_value",
    "event_name",
    "source",
    "requester",
    "source_ip_address",
    "request_id",
];

impl Columns {
    fn of(batch: &RecordBatch) -> Result<Columns, ArrowError> {
        let column = |name: &str, to: &DataType| -> Result<Option<ArrayRef>, ArrowError> {
            batch
                .schema()
                .index_of(name)
                .ok()
                .map(|i| cast(batch.column(i), to))
                .transpose()
        };
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        let mut text = Vec::with_capacity(TEXT.len() + 1);
        for name in TEXT {
            text.push((name, column(name, &DataType::Utf8)?));
        }
        Ok(Columns {
            text,
            last_modified_date: column("last_modified_date", &micros)?,
            event_time: column("event_time", &micros)?,
            ingested_at: column("ingested_at", &micros)?,
            size: column("size", &DataType::Int64)?,
        })
    }

    fn text(&self, name: &str, i: usize) -> Option<String> {
        let (_, array) = self.text.iter().find(|(n, _)| *n == name)?;
        let array: &StringArray = array.as_ref()?.as_string::<i32>();
        (!array.is_null(i)).then(|| array.value(i).to_string())
    }

    fn required(&self, name: &'static str, i: usize) -> Result<String, DecodeError> {
        self.text(name, i).ok_or(DecodeError::Missing {
            row: i,
            column: name,
        })
    }

    fn time(array: &Option<ArrayRef>, i: usize) -> Option<DateTime<Utc>> {
        let array = array.as_ref()?.as_primitive::<TimestampMicrosecondType>();
        (!array.is_null(i))
            .then(|| DateTime::from_timestamp_micros(array.value(i)))
            .flatten()
    }

    fn row(&self, i: usize) -> Result<JournalRow, DecodeError> {
        let parsed = |column: &'static str, value: String| DecodeError::Unknown {
            row: i,
            column,
            value,
        };
        let record_type = self
            .required("record_type", i)?
            .parse::<RecordType>()
            .map_err(|v| parsed("record_type", v))?;
        let source = match self.text("source", i) {
            Some(s) => s.parse::<Source>().map_err(|v| parsed("source", v))?,
            None => Source::Notification,
        };
        Ok(JournalRow {
            bucket: self.required("bucket", i)?,
            object_key: self.required("object_key", i)?,
            object_version_id: self.text("object_version_id", i),
            object_join_key: self.text("object_join_key", i).unwrap_or_default(),
            name: self.text("name", i),
            record_type,
            sequence_number: self.required("sequence_number", i)?,
            last_modified_date: Self::time(&self.last_modified_date, i).map(|t| t.naive_utc()),
            size: self
                .size
                .as_ref()
                .map(|a| a.as_primitive::<Int64Type>())
                .and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
            e_tag: self.text("e_tag", i),
            checksum_algorithm: self.text("checksum_algorithm", i),
            replication_status: self.text("replication_status", i),
            text_value: self.text("text_value", i),
            event_name: self.text("event_name", i),
            event_time: Self::time(&self.event_time, i),
            source,
            requester: self.text("requester", i),
            source_ip_address: self.text("source_ip_address", i),
            request_id: self.text("request_id", i),
            ingested_at: Self::time(&self.ingested_at, i).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal_spec;

    fn row(name: &str, text: Option<&str>) -> JournalRow {
        JournalRow {
            bucket: "b".into(),
            object_key: "k".into(),
            object_version_id: Some("v1".into()),
            object_join_key: "jk".into(),
            name: Some(name.into()),
            record_type: RecordType::Put,
            sequence_number: "00000000000000000001-w".into(),
            last_modified_date: DateTime::from_timestamp(1_700_000_000, 123_000)
                .map(|t| t.naive_utc()),
            size: text.map(|t| t.len() as i64),
            e_tag: Some("etag".into()),
            checksum_algorithm: Some("CRC32".into()),
            replication_status: None,
            text_value: text.map(str::to_string),
            event_name: Some("ObjectAnnotation:Put".into()),
            event_time: DateTime::from_timestamp(1_700_000_001, 456_000),
            source: Source::Backfill,
            requester: Some("me".into()),
            source_ip_address: Some("10.0.0.1".into()),
            request_id: Some("req".into()),
            ingested_at: DateTime::from_timestamp(1_700_000_002, 0).unwrap_or_default(),
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn decoding_what_was_encoded_gives_the_rows_back() -> TestResult {
        let spec = journal_spec()?;
        let schema = std::sync::Arc::new(iceberg::arrow::schema_to_arrow_schema(&spec.schema)?);
        let rows = vec![row("a", Some("x")), row("b", None)];
        let batch = crate::encode_rows(&schema, &rows)?;
        let back: Vec<JournalRow> = decode_rows(&batch)?.into_iter().collect::<Result<_, _>>()?;
        assert_eq!(back, rows);
        Ok(())
    }

    #[test]
    fn an_unknown_record_type_is_an_error_of_its_row_only() -> TestResult {
        use arrow::array::StringArray;
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let text = |v: Vec<&str>| Arc::new(StringArray::from(v)) as ArrayRef;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("bucket", DataType::Utf8, false),
                Field::new("object_key", DataType::Utf8, false),
                Field::new("record_type", DataType::Utf8, false),
                Field::new("sequence_number", DataType::Utf8, false),
            ])),
            vec![
                text(vec!["b", "b"]),
                text(vec!["k", "k"]),
                text(vec!["TOMBSTONE", "DELETE"]),
                text(vec!["1", "2"]),
            ],
        )?;
        let decoded = decode_rows(&batch)?;
        assert_eq!(
            decoded[0],
            Err(DecodeError::Unknown {
                row: 0,
                column: "record_type",
                value: "TOMBSTONE".into()
            })
        );
        let second = decoded[1].clone()?;
        assert_eq!(second.record_type, RecordType::Delete);
        assert_eq!(second.text_value, None);
        Ok(())
    }
}
