//! The Arrow schema annotable presents for an Iceberg table: its columns without iceberg's field
//! metadata.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};

/// `schema` without field metadata. iceberg puts each column's field id (and doc) there, and
/// the journal, the state table and its tombstones number their columns differently: a UNION
/// of them (the `annotations` overlay) would otherwise carry conflicting metadata, which
/// DataFusion 53 merges differently in the logical and the physical plan and then refuses.
pub(crate) fn without_metadata(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(HashMap::new()))
            .collect::<Vec<_>>(),
    ))
}
