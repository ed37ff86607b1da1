//! [`JournalRow`]s → Arrow [`RecordBatch`] in the table's schema and sort order.

use std::borrow::Borrow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int64Array, Scalar, StringBuilder, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::compute::kernels::cmp::not_distinct;
use arrow::compute::{SortOptions, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use chrono::{DateTime, Utc};
use iceberg::spec::{NullOrder, SortDirection, TableMetadata, Transform};

use crate::JournalRow;

/// Encodes rows (owned, or references to rows held elsewhere) into a batch of `schema` (the
/// table's Arrow schema, with Iceberg field ids), columns matched by name, in the order given.
pub fn encode_rows<R: Borrow<JournalRow>>(
    schema: &SchemaRef,
    rows: &[R],
) -> Result<RecordBatch, ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| column(field.name(), rows))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// [`encode_rows`] in the order of `keys` ([`sort_keys`] of the table): encoded in arrival
/// order (rows are read front to back), then sorted with [`sort_batch`].
pub fn encode_sorted<R: Borrow<JournalRow>>(
    schema: &SchemaRef,
    rows: &[R],
    keys: &[(usize, SortOptions)],
) -> Result<RecordBatch, ArrowError> {
    sort_batch(&encode_rows(schema, rows)?, keys)
}

/// The sort keys of the table's default sort order: column index and direction per field
/// (identity transforms; others are skipped).
pub(crate) fn sort_keys(metadata: &TableMetadata, schema: &SchemaRef) -> Vec<(usize, SortOptions)> {
    let table_schema = metadata.current_schema();
    metadata
        .default_sort_order()
        .fields
        .iter()
        .filter(|f| f.transform == Transform::Identity)
        .filter_map(|f| {
            let name = table_schema.name_by_field_id(f.source_id)?;
            let index = schema.index_of(name).ok()?;
            Some((
                index,
                SortOptions {
                    descending: f.direction == SortDirection::Descending,
                    nulls_first: f.null_order == NullOrder::First,
                },
            ))
        })
        .collect()
}

/// The batch's rows in the order of `keys` (appends, and compaction's rows read back from
/// data files). The key columns are converted to arrow's comparable row format and row indices
/// sorted on those bytes. Sorting references to `JournalRow`s and encoding from them instead
/// chased pointers into ~20 heap strings per row in random order: the ingest bench measured
/// that 1.7x slower on one core than encoding first and sorting indices (443k against 768k
/// rows/s, same run). The row format sorts within noise of a hand-written comparator on the
/// same columns (0.41-0.62 of unsorted encoding's rate over three runs, against 0.45-0.46).
pub(crate) fn sort_batch(
    batch: &RecordBatch,
    keys: &[(usize, SortOptions)],
) -> Result<RecordBatch, ArrowError> {
    // A key that is the same on every row orders nothing: the bucket, in every batch of one
    // partition (all appends and compactions are cut by partition). Leaving it out makes the
    // row format shorter and every comparison start at the object key.
    let keys: Vec<(usize, SortOptions)> = keys
        .iter()
        .copied()
        .filter(|(i, _)| !is_constant(batch.column(*i)))
        .collect();
    if keys.is_empty() || batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let fields = keys
        .iter()
        .map(|(i, options)| {
            SortField::new_with_options(batch.column(*i).data_type().clone(), *options)
        })
        .collect();
    let columns: Vec<ArrayRef> = keys.iter().map(|(i, _)| batch.column(*i).clone()).collect();
    let rows = RowConverter::new(fields)?.convert_columns(&columns)?;
    let n = u32::try_from(batch.num_rows())
        .map_err(|_| ArrowError::ComputeError("a batch of over 4G rows cannot be sorted".into()))?;
    let mut order: Vec<u32> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    take_record_batch(batch, &UInt32Array::from(order))
}

/// Whether every value of `column` equals the first (nulls equal to nulls).
fn is_constant(column: &ArrayRef) -> bool {
    if column.len() < 2 {
        return true;
    }
    let first = Scalar::new(column.slice(0, 1));
    not_distinct(column, &first).is_ok_and(|same| same.true_count() == column.len())
}

/// A string column, its buffers sized up front (one allocation each, no regrowth).
fn strings<'a, R: Borrow<JournalRow>>(
    rows: &'a [R],
    f: impl Fn(&'a JournalRow) -> Option<&'a str>,
) -> ArrayRef {
    let bytes = rows.iter().map(|r| f(r.borrow()).map_or(0, str::len)).sum();
    let mut builder = StringBuilder::with_capacity(rows.len(), bytes);
    for row in rows {
        builder.append_option(f(row.borrow()));
    }
    Arc::new(builder.finish())
}

/// The identity hash of `annotation_hash` and `object_version_hash` (their derivation is in
/// `schemas/annotation_journal.json`): XXH3-128 of each field's length (u32, little-endian)
/// and UTF-8 bytes, shifted right by 2 so that it fits `decimal(38, 0)` (10^38 > 2^126).
/// A collision would merge two annotations in the `annotations` view; at 126 bits the chance
/// over 10^10 annotations is below 10^-18.
#[derive(Default)]
pub(crate) struct IdentityHasher {
    buf: Vec<u8>,
}

impl IdentityHasher {
    /// The identity of `fields`, in order.
    pub(crate) fn hash(&mut self, fields: &[&str]) -> i128 {
        self.buf.clear();
        for field in fields {
            // Fields are S3 names (at most a few KiB), far below u32::MAX.
            self.buf
                .extend_from_slice(&(field.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(field.as_bytes());
        }
        (twox_hash::XxHash3_128::oneshot(&self.buf) >> 2) as i128
    }
}

/// The row's `annotation_hash`; `None` on object-level rows (no name).
pub(crate) fn annotation_hash(h: &mut IdentityHasher, row: &JournalRow) -> Option<i128> {
    let name = row.name.as_deref()?;
    Some(h.hash(&[&row.bucket, &row.object_key, version(row), name]))
}

/// The row's `object_version_hash`.
pub(crate) fn object_version_hash(h: &mut IdentityHasher, row: &JournalRow) -> i128 {
    h.hash(&[&row.bucket, &row.object_key, version(row)])
}

/// The version as hashed: a null version (unversioned object, null version) as empty, as the
/// view's `COALESCE(object_version_id, '')` always treated it.
fn version(row: &JournalRow) -> &str {
    row.object_version_id.as_deref().unwrap_or("")
}

/// A `decimal(38, 0)` column of identity hashes.
fn hashes<R: Borrow<JournalRow>>(
    rows: &[R],
    f: impl Fn(&mut IdentityHasher, &JournalRow) -> Option<i128>,
) -> Result<ArrayRef, ArrowError> {
    let mut hasher = IdentityHasher::default();
    let array = rows
        .iter()
        .map(|r| f(&mut hasher, r.borrow()))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(38, 0)?;
    Ok(Arc::new(array))
}

fn micros_utc(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn column<R: Borrow<JournalRow>>(name: &str, rows: &[R]) -> Result<ArrayRef, ArrowError> {
    let utc = |f: fn(&JournalRow) -> Option<i64>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| f(r.borrow()))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("+00:00"),
        )
    };
    Ok(match name {
        "bucket" => strings(rows, |r| Some(&r.bucket)),
        "object_key" => strings(rows, |r| Some(&r.object_key)),
        "object_version_id" => strings(rows, |r| r.object_version_id.as_deref()),
        "object_join_key" => strings(rows, |r| Some(&r.object_join_key)),
        "name" => strings(rows, |r| r.name.as_deref()),
        "record_type" => strings(rows, |r| Some(r.record_type.as_str())),
        "sequence_number" => strings(rows, |r| Some(&r.sequence_number)),
        "last_modified_date" => Arc::new(
            rows.iter()
                .map(|r| {
                    r.borrow()
                        .last_modified_date
                        .map(|t| t.and_utc().timestamp_micros())
                })
                .collect::<TimestampMicrosecondArray>(),
        ),
        "size" => Arc::new(rows.iter().map(|r| r.borrow().size).collect::<Int64Array>()),
        "e_tag" => strings(rows, |r| r.e_tag.as_deref()),
        "checksum_algorithm" => strings(rows, |r| r.checksum_algorithm.as_deref()),
        "replication_status" => strings(rows, |r| r.replication_status.as_deref()),
        "text_value" => strings(rows, |r| r.text_value.as_deref()),
        "event_name" => strings(rows, |r| r.event_name.as_deref()),
        "event_time" => utc(|r| r.event_time.as_ref().map(micros_utc)),
        "source" => strings(rows, |r| Some(r.source.as_str())),
        "requester" => strings(rows, |r| r.requester.as_deref()),
        "source_ip_address" => strings(rows, |r| r.source_ip_address.as_deref()),
        "request_id" => strings(rows, |r| r.request_id.as_deref()),
        "ingested_at" => utc(|r| Some(micros_utc(&r.ingested_at))),
        "annotation_hash" => hashes(rows, annotation_hash)?,
        "object_version_hash" => hashes(rows, |h, r| Some(object_version_hash(h, r)))?,
        other => {
            return Err(ArrowError::SchemaError(format!(
                "the table has a column `{other}` that annotable does not write"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn constant_columns_are_found_nulls_included() {
        let c = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        assert!(is_constant(&c(vec![Some("b"), Some("b"), Some("b")])));
        assert!(is_constant(&c(vec![None, None])));
        assert!(is_constant(&c(vec![Some("b")])));
        assert!(!is_constant(&c(vec![Some("b"), Some("b"), Some("c")])));
        assert!(!is_constant(&c(vec![Some("b"), None])));
        assert!(!is_constant(&c(vec![None, Some("b")])));
    }

    const MAX: i128 = 10i128.pow(38) - 1;

    #[test]
    fn identity_hashes_keep_fields_apart_and_fit_decimal_38() {
        let mut h = IdentityHasher::default();
        let a = h.hash(&["photos", "cats/tom.jpg", "", "review"]);
        assert_eq!(a, h.hash(&["photos", "cats/tom.jpg", "", "review"]));
        // field boundaries are part of the identity
        assert_ne!(a, h.hash(&["photos", "cats/tom.jpgreview", "", ""]));
        assert_ne!(a, h.hash(&["photoscats/tom.jpg", "", "", "review"]));
        // an object version's identity is not one of its annotations'
        assert_ne!(h.hash(&["photos", "cats/tom.jpg", ""]), a);
        for key in ["", "a", "ü/+ key", &"x".repeat(1024)] {
            let v = h.hash(&["b", key, "v1", "n"]);
            assert!((0..=MAX).contains(&v), "{v} does not fit decimal(38, 0)");
        }
        // The derivation is part of the table format (rows of older releases must keep
        // grouping with new ones, and other writers may compute it). The values were computed
        // independently, with python-xxhash:
        //   xxh3_128_intdigest(b"".join(pack("<I", len(f)) + f for f in fields)) >> 2
        assert_eq!(a, 50709753617739396696238676461331153449);
        assert_eq!(
            h.hash(&["photos", "cats/tom.jpg", ""]),
            30098467500958538404585518675417495127
        );
    }
}
