//! [`ObjectRow`]s → Arrow [`RecordBatch`] in the object journal's schema and sort order.
//!
//! Column by column, unlike the annotation journal's row-by-row encoder: object rows are small
//! (no payload, no identity hashes) and few beside annotation rows.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::ObjectRow;
use crate::encode::sort_batch;

/// Encodes `rows` into a batch of `schema` (the table's Arrow schema), columns matched by name,
/// sorted by `keys`.
pub(crate) fn encode_object_rows(
    schema: &SchemaRef,
    rows: &[&ObjectRow],
    keys: &[(usize, SortOptions)],
) -> Result<RecordBatch, ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| column(field.name(), field.data_type(), rows))
        .collect::<Result<Vec<_>, _>>()?;
    sort_batch(&RecordBatch::try_new(schema.clone(), columns)?, keys)
}

fn column(name: &str, data_type: &DataType, rows: &[&ObjectRow]) -> Result<ArrayRef, ArrowError> {
    let text = |get: fn(&ObjectRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| get(r)).collect::<StringArray>())
    };
    let flag = |get: fn(&ObjectRow) -> Option<bool>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| get(r)).collect::<BooleanArray>())
    };
    // Timestamps (micros) share Int64's layout: built as longs, then retyped.
    let int = |get: fn(&ObjectRow) -> Option<i64>| {
        let longs: ArrayRef = Arc::new(rows.iter().map(|r| get(r)).collect::<Int64Array>());
        arrow::compute::cast(&longs, data_type)
    };
    Ok(match name {
        "bucket" => text(|r| Some(&r.bucket)),
        "key" => text(|r| Some(&r.key)),
        "version_id" => text(|r| r.version_id.as_deref()),
        "object_join_key" => text(|r| Some(&r.object_join_key)),
        "record_type" => text(|r| Some(r.record_type.as_str())),
        "sequence_number" => text(|r| Some(&r.sequence_number)),
        "is_delete_marker" => flag(|r| r.is_delete_marker),
        "size" => int(|r| r.size)?,
        "last_modified_date" => {
            int(|r| r.last_modified_date.map(|t| t.and_utc().timestamp_micros()))?
        }
        "e_tag" => text(|r| r.e_tag.as_deref()),
        "storage_class" => text(|r| r.storage_class.as_deref()),
        "is_multipart" => flag(ObjectRow::is_multipart),
        "encryption_status" | "kms_key_arn" => text(|_| None),
        "is_bucket_key_enabled" => flag(|_| None),
        "checksum_algorithm" => text(|r| r.checksum_algorithm.as_deref()),
        "event_name" => text(|r| r.event_name.as_deref()),
        "event_time" => int(|r| r.event_time.map(|t| t.timestamp_micros()))?,
        "source" => text(|r| Some(r.source.as_str())),
        "requester" => text(|r| r.requester.as_deref()),
        "source_ip_address" => text(|r| r.source_ip_address.as_deref()),
        "request_id" => text(|r| r.request_id.as_deref()),
        "ingested_at" => int(|r| Some(r.ingested_at.timestamp_micros()))?,
        other => {
            return Err(ArrowError::SchemaError(format!(
                "the object journal has a column `{other}` that annotable does not write"
            )));
        }
    })
}
