//! [`JournalRow`]s → Arrow [`RecordBatch`] in the table's schema and sort order.

use std::borrow::Borrow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Builder, Int64Builder, Scalar, StringBuilder, UInt32Array};
use arrow::compute::kernels::cmp::not_distinct;
use arrow::compute::{SortOptions, take_record_batch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use chrono::{DateTime, Utc};
use iceberg::spec::{NullOrder, SortDirection, TableMetadata, Transform};

use crate::JournalRow;

/// Encodes rows (owned, or references to rows held elsewhere) into a batch of `schema` (the
/// table's Arrow schema, with Iceberg field ids), columns matched by name, in the order given.
///
/// Row by row: each row is read once and appended to every column, and its two identity
/// hashes are computed while its strings are in cache. Building one column at a time instead
/// read every row (~20 heap strings and a ~400-byte struct, spread over memory) once per
/// column: 1.3x slower on one core for the same batches (ingest bench rows, 50k-row chunks).
pub fn encode_rows<R: Borrow<JournalRow>>(
    schema: &SchemaRef,
    rows: &[R],
) -> Result<RecordBatch, ArrowError> {
    let mut columns = schema
        .fields()
        .iter()
        .map(|field| ColumnBuilder::new(field, rows.len()))
        .collect::<Result<Vec<_>, _>>()?;
    // String buffers sized up front from one pass over the rows (no regrowth, no copying).
    let mut bytes = vec![0usize; columns.len()];
    for row in rows {
        let row = row.borrow();
        for (total, column) in bytes.iter_mut().zip(&columns) {
            if let ColumnBuilder::Str(_, get) = column {
                *total += get(row).map_or(0, str::len);
            }
        }
    }
    for (column, bytes) in columns.iter_mut().zip(bytes) {
        if let ColumnBuilder::Str(builder, _) = column {
            *builder = StringBuilder::with_capacity(rows.len(), bytes);
        }
    }
    let hashing = columns.iter().any(ColumnBuilder::is_hash);
    let mut hasher = IdentityHasher::default();
    for row in rows {
        let row = row.borrow();
        let ids = if hashing {
            hasher.identities(row)
        } else {
            Identities::default()
        };
        for column in &mut columns {
            column.append(row, &ids);
        }
    }
    let columns = columns
        .into_iter()
        .map(ColumnBuilder::finish)
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// [`encode_rows`] in the order of `keys` ([`sort_keys`] of the table): encoded in arrival
/// order (rows are read front to back), then sorted with [`sort_batch`]. Finding the order on
/// the key columns first and encoding the rows in that order instead (no `take` copy) measured
/// 1.4x slower on one core: reading ~400-byte rows and their strings in random order costs
/// more than gathering the encoded columns.
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

/// The identity hash of `annotation_hash` and `object_version_hash` (their derivation is in
/// `schemas/annotation_journal.json`): XXH3-128 of each field's length (u32, little-endian)
/// and UTF-8 bytes, shifted right by 2 so that it fits `decimal(38, 0)` (10^38 > 2^126).
/// A collision would merge two annotations in the `annotations` view; at 126 bits the chance
/// over 10^10 annotations is below 10^-18.
#[derive(Default)]
pub(crate) struct IdentityHasher {
    buf: Vec<u8>,
}

/// A row's two identity hashes, from [`IdentityHasher::identities`].
#[derive(Default)]
struct Identities {
    annotation: Option<i128>,
    object_version: i128,
}

impl IdentityHasher {
    /// The identity of `fields`, in order (what [`IdentityHasher::identities`] computes, field
    /// by field, for the tests).
    #[cfg(test)]
    fn hash(&mut self, fields: &[&str]) -> i128 {
        self.buf.clear();
        for field in fields {
            self.push(field);
        }
        Self::digest(&self.buf)
    }

    /// Both identities of `row`, hashing its object-version fields into the buffer once.
    fn identities(&mut self, row: &JournalRow) -> Identities {
        self.buf.clear();
        for field in [row.bucket.as_str(), &row.object_key, version(row)] {
            self.push(field);
        }
        let object_version = Self::digest(&self.buf);
        let annotation = row.name.as_deref().map(|name| {
            self.push(name);
            Self::digest(&self.buf)
        });
        Identities {
            annotation,
            object_version,
        }
    }

    fn push(&mut self, field: &str) {
        // Fields are S3 names (at most a few KiB), far below u32::MAX.
        self.buf
            .extend_from_slice(&(field.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(field.as_bytes());
    }

    fn digest(buf: &[u8]) -> i128 {
        (twox_hash::XxHash3_128::oneshot(buf) >> 2) as i128
    }
}

/// The row's `annotation_hash`; `None` on object-level rows (no name).
pub(crate) fn annotation_hash(h: &mut IdentityHasher, row: &JournalRow) -> Option<i128> {
    h.identities(row).annotation
}

/// The row's `object_version_hash`.
pub(crate) fn object_version_hash(h: &mut IdentityHasher, row: &JournalRow) -> i128 {
    h.identities(row).object_version
}

/// The version as hashed: a null version (unversioned object, null version) as empty, as the
/// view's `COALESCE(object_version_id, '')` always treated it.
fn version(row: &JournalRow) -> &str {
    row.object_version_id.as_deref().unwrap_or("")
}

type Text = for<'a> fn(&'a JournalRow) -> Option<&'a str>;
type Value = fn(&JournalRow) -> Option<i64>;

/// One column of the batch being built, with what it takes from a row.
enum ColumnBuilder {
    Str(StringBuilder, Text),
    /// Timestamps (micros) and longs; the builder carries the field's exact type.
    Int(Int64Builder, Value, DataType),
    AnnotationHash(Decimal128Builder),
    ObjectVersionHash(Decimal128Builder),
}

fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl ColumnBuilder {
    fn new(field: &Field, rows: usize) -> Result<Self, ArrowError> {
        let text = |get: Text| ColumnBuilder::Str(StringBuilder::new(), get);
        let int = |get: Value| {
            ColumnBuilder::Int(
                Int64Builder::with_capacity(rows),
                get,
                field.data_type().clone(),
            )
        };
        let decimal =
            || Decimal128Builder::with_capacity(rows).with_data_type(field.data_type().clone());
        Ok(match field.name().as_str() {
            "bucket" => text(|r| Some(&r.bucket)),
            "object_key" => text(|r| Some(&r.object_key)),
            "object_version_id" => text(|r| r.object_version_id.as_deref()),
            "object_join_key" => text(|r| Some(&r.object_join_key)),
            "name" => text(|r| r.name.as_deref()),
            "record_type" => text(|r| Some(r.record_type.as_str())),
            "sequence_number" => text(|r| Some(&r.sequence_number)),
            "last_modified_date" => {
                int(|r| r.last_modified_date.map(|t| t.and_utc().timestamp_micros()))
            }
            "size" => int(|r| r.size),
            "e_tag" => text(|r| r.e_tag.as_deref()),
            "checksum_algorithm" => text(|r| r.checksum_algorithm.as_deref()),
            "replication_status" => text(|r| r.replication_status.as_deref()),
            "text_value" => text(|r| r.text_value.as_deref()),
            "event_name" => text(|r| r.event_name.as_deref()),
            "event_time" => int(|r| r.event_time.as_ref().map(micros)),
            "source" => text(|r| Some(r.source.as_str())),
            "requester" => text(|r| r.requester.as_deref()),
            "source_ip_address" => text(|r| r.source_ip_address.as_deref()),
            "request_id" => text(|r| r.request_id.as_deref()),
            "ingested_at" => int(|r| Some(micros(&r.ingested_at))),
            "annotation_hash" => ColumnBuilder::AnnotationHash(decimal()),
            "object_version_hash" => ColumnBuilder::ObjectVersionHash(decimal()),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "the table has a column `{other}` that annotable does not write"
                )));
            }
        })
    }

    fn is_hash(&self) -> bool {
        matches!(
            self,
            ColumnBuilder::AnnotationHash(_) | ColumnBuilder::ObjectVersionHash(_)
        )
    }

    fn append(&mut self, row: &JournalRow, ids: &Identities) {
        match self {
            ColumnBuilder::Str(builder, get) => builder.append_option(get(row)),
            ColumnBuilder::Int(builder, get, _) => builder.append_option(get(row)),
            ColumnBuilder::AnnotationHash(builder) => builder.append_option(ids.annotation),
            ColumnBuilder::ObjectVersionHash(builder) => builder.append_value(ids.object_version),
        }
    }

    fn finish(self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            ColumnBuilder::Str(mut builder, _) => Arc::new(builder.finish()),
            // Int64 and timestamps share their layout: retype the values, no copy.
            ColumnBuilder::Int(mut builder, _, data_type) => {
                arrow::compute::cast(&builder.finish(), &data_type)?
            }
            ColumnBuilder::AnnotationHash(mut builder)
            | ColumnBuilder::ObjectVersionHash(mut builder) => Arc::new(builder.finish()),
        })
    }
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

    /// The same pinned values through `identities`, which is what writes the columns (the
    /// other tests compare the columns with `JournalRow`'s helpers, which call it too).
    #[test]
    fn rows_get_the_pinned_identities() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let row = JournalRow {
            bucket: "photos".into(),
            object_key: "cats/tom.jpg".into(),
            object_version_id: None,
            object_join_key: "photos/cats/tom.jpg/null".into(),
            name: Some("review".into()),
            record_type: crate::RecordType::Put,
            sequence_number: "00000000000000000001-0001".into(),
            last_modified_date: None,
            size: None,
            e_tag: None,
            checksum_algorithm: None,
            replication_status: None,
            text_value: Some("ok".into()),
            event_name: None,
            event_time: None,
            source: crate::Source::Backfill,
            requester: None,
            source_ip_address: None,
            request_id: None,
            ingested_at: at,
        };
        let mut h = IdentityHasher::default();
        // Twice over one hasher: the buffer must not carry the previous row.
        for _ in 0..2 {
            let ids = h.identities(&row);
            assert_eq!(ids.annotation, Some(50709753617739396696238676461331153449));
            assert_eq!(ids.object_version, 30098467500958538404585518675417495127);
        }
        let reset = JournalRow { name: None, ..row };
        let ids = h.identities(&reset);
        assert_eq!(ids.annotation, None);
        assert_eq!(ids.object_version, 30098467500958538404585518675417495127);
    }
}
