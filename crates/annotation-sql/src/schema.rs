//! The Arrow schema annotable presents for an Iceberg table: its columns without iceberg's field
//! metadata, strings as string views.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// How a query session presents an Iceberg table's schema: without field metadata and with its
/// string columns as `Utf8View`.
///
/// iceberg puts each column's field id (and doc) in the field metadata, and the journal, the
/// state table and its tombstones number their columns differently: a UNION of them (the
/// `annotations` overlay) would otherwise carry conflicting metadata, which DataFusion 53
/// merges differently in the logical and the physical plan and then refuses.
///
/// As string views, DataFusion's Parquet reader decodes a string column as views into the
/// page it came from (short strings inline) instead of copying every value into one
/// contiguous buffer, and its group-by, join and filter kernels work on the views; iceberg's
/// own reader's batches are cast to it ([`present`]).
pub(crate) fn presented(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let field: Field = f.as_ref().clone().with_metadata(HashMap::new());
                match field.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 => {
                        field.with_data_type(DataType::Utf8View)
                    }
                    _ => field,
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// `batch`'s columns under `schema` (its [`presented`] form), cast where the types differ.
pub(crate) fn present(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_become_views_and_field_metadata_goes() {
        let id = HashMap::from([("PARQUET:field_id".to_string(), "1".to_string())]);
        let schema = Schema::new(vec![
            Field::new("bucket", DataType::Utf8, false).with_metadata(id.clone()),
            Field::new("note", DataType::LargeUtf8, true),
            Field::new("size", DataType::Int64, true).with_metadata(id),
        ]);
        let presented = presented(&schema);
        let types: Vec<_> = presented
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("bucket", DataType::Utf8View, false),
                ("note", DataType::Utf8View, true),
                ("size", DataType::Int64, true),
            ]
        );
        assert!(presented.fields().iter().all(|f| f.metadata().is_empty()));
    }

    #[test]
    fn a_batch_is_presented_with_the_same_values() -> Result<(), ArrowError> {
        use datafusion::arrow::array::{Array, AsArray, Int64Array, StringArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("size", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a/very/long/key/past/twelve"),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
            ],
        )?;
        let shown = present(&batch, &presented(&schema))?;
        assert_eq!(shown.column(0).data_type(), &DataType::Utf8View);
        let keys = shown.column(0).as_string_view();
        assert_eq!(keys.value(0), "a/very/long/key/past/twelve");
        assert!(keys.is_null(1));
        assert_eq!(shown.column(1).as_ref(), batch.column(1).as_ref());
        Ok(())
    }
}
