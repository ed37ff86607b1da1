//! Metadata tables: a table's snapshots, history, refs, manifests and files as SQL tables,
//! named `<table>$<kind>` as in Trino (`SELECT * FROM annotation_journal$snapshots`).
//!
//! `snapshots.summary` carries every snapshot-summary property, annotable's own included
//! (`annotable.batch-id`, `annotable.writer`, `annotable.source`, `annotable.backfill.run`,
//! the state's watermark), so "which batch wrote this, and which process" is a query.
//! Metadata tables always describe the table as it is now, time travel or not: they are how
//! one finds the snapshot to travel to.

use std::any::Any;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::DataContentType;
use iceberg::table::Table;

/// The kinds of metadata table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetadataKind {
    /// Every snapshot the table keeps, with its summary.
    Snapshots,
    /// When each snapshot became current.
    History,
    /// Branches and tags.
    Refs,
    /// The current snapshot's manifests.
    Manifests,
    /// The current snapshot's data and delete files.
    Files,
}

impl MetadataKind {
    /// Every kind, by its SQL suffix.
    pub(crate) const ALL: [(&'static str, MetadataKind); 5] = [
        ("snapshots", MetadataKind::Snapshots),
        ("history", MetadataKind::History),
        ("refs", MetadataKind::Refs),
        ("manifests", MetadataKind::Manifests),
        ("files", MetadataKind::Files),
    ];

    /// Splits `table$kind` into the table's name and the kind.
    pub(crate) fn split(name: &str) -> Option<(&str, MetadataKind)> {
        let (table, kind) = name.rsplit_once('$')?;
        Some((table, kind.parse().ok()?))
    }
}

impl FromStr for MetadataKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        MetadataKind::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, kind)| *kind)
            .ok_or(())
    }
}

/// One metadata table of one Iceberg table, computed when scanned.
#[derive(Debug)]
pub(crate) struct MetadataTable {
    table: Table,
    kind: MetadataKind,
    schema: SchemaRef,
}

impl MetadataTable {
    pub(crate) fn new(table: Table, kind: MetadataKind) -> DFResult<Self> {
        let inspect = table.inspect();
        let schema = match kind {
            MetadataKind::Snapshots => {
                Arc::new(schema_to_arrow_schema(&inspect.snapshots().schema()).map_err(external)?)
            }
            MetadataKind::Manifests => {
                Arc::new(schema_to_arrow_schema(&inspect.manifests().schema()).map_err(external)?)
            }
            MetadataKind::History => Arc::new(Schema::new(vec![
                Field::new("made_current_at", timestamp(), false),
                Field::new("snapshot_id", DataType::Int64, false),
                Field::new("parent_id", DataType::Int64, true),
                Field::new("is_current_ancestor", DataType::Boolean, false),
            ])),
            MetadataKind::Refs => Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("type", DataType::Utf8, false),
                Field::new("snapshot_id", DataType::Int64, false),
                Field::new("committed_at", timestamp(), true),
            ])),
            MetadataKind::Files => Arc::new(Schema::new(vec![
                Field::new("content", DataType::Int32, false),
                Field::new("file_path", DataType::Utf8, false),
                Field::new("file_format", DataType::Utf8, false),
                Field::new("spec_id", DataType::Int32, false),
                Field::new("record_count", DataType::Int64, false),
                Field::new("file_size_in_bytes", DataType::Int64, false),
                Field::new("added_snapshot_id", DataType::Int64, true),
                Field::new("sequence_number", DataType::Int64, true),
            ])),
        };
        Ok(MetadataTable {
            table,
            kind,
            schema,
        })
    }

    async fn batches(&self) -> DFResult<Vec<RecordBatch>> {
        let inspect = self.table.inspect();
        let columns: Vec<ArrayRef> = match self.kind {
            MetadataKind::Snapshots => {
                let stream = inspect.snapshots().scan().await.map_err(external)?;
                return stream.try_collect().await.map_err(external);
            }
            MetadataKind::Manifests => {
                if self.table.metadata().current_snapshot().is_none() {
                    return Ok(Vec::new());
                }
                let stream = inspect.manifests().scan().await.map_err(external)?;
                return stream.try_collect().await.map_err(external);
            }
            MetadataKind::History => self.history(),
            MetadataKind::Refs => self.refs()?,
            MetadataKind::Files => self.files().await?,
        };
        Ok(vec![RecordBatch::try_new(self.schema.clone(), columns)?])
    }

    fn history(&self) -> Vec<ArrayRef> {
        let metadata = self.table.metadata();
        let mut ancestors = std::collections::HashSet::new();
        let mut next = metadata.current_snapshot().cloned();
        while let Some(snapshot) = next {
            ancestors.insert(snapshot.snapshot_id());
            next = snapshot
                .parent_snapshot_id()
                .and_then(|p| metadata.snapshot_by_id(p).cloned());
        }
        let mut at = timestamps();
        let mut id = Int64Builder::new();
        let mut parent = Int64Builder::new();
        let mut current = BooleanBuilder::new();
        for entry in metadata.history() {
            at.append_value(entry.timestamp_ms * 1000);
            id.append_value(entry.snapshot_id);
            parent.append_option(
                metadata
                    .snapshot_by_id(entry.snapshot_id)
                    .and_then(|s| s.parent_snapshot_id()),
            );
            current.append_value(ancestors.contains(&entry.snapshot_id));
        }
        vec![
            Arc::new(at.finish()),
            Arc::new(id.finish()),
            Arc::new(parent.finish()),
            Arc::new(current.finish()),
        ]
    }

    fn refs(&self) -> DFResult<Vec<ArrayRef>> {
        // iceberg keeps the refs map private; its serialized form is the spec's.
        let metadata = self.table.metadata();
        let json = serde_json::to_value(metadata).map_err(external)?;
        let mut refs: Vec<(String, String, i64)> = json
            .get("refs")
            .and_then(|r| r.as_object())
            .map(|refs| {
                refs.iter()
                    .filter_map(|(name, r)| {
                        Some((
                            name.clone(),
                            r.get("type")?.as_str()?.to_uppercase(),
                            r.get("snapshot-id")?.as_i64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        refs.sort();
        let mut name = StringBuilder::new();
        let mut kind = StringBuilder::new();
        let mut id = Int64Builder::new();
        let mut at = timestamps();
        for (ref_name, ref_kind, snapshot) in refs {
            name.append_value(ref_name);
            kind.append_value(ref_kind);
            id.append_value(snapshot);
            at.append_option(
                metadata
                    .snapshot_by_id(snapshot)
                    .map(|s| s.timestamp_ms() * 1000),
            );
        }
        Ok(vec![
            Arc::new(name.finish()),
            Arc::new(kind.finish()),
            Arc::new(id.finish()),
            Arc::new(at.finish()),
        ])
    }

    async fn files(&self) -> DFResult<Vec<ArrayRef>> {
        let mut content = Int32Builder::new();
        let mut path = StringBuilder::new();
        let mut format = StringBuilder::new();
        let mut spec = Int32Builder::new();
        let mut records = Int64Builder::new();
        let mut bytes = Int64Builder::new();
        let mut added = Int64Builder::new();
        let mut sequence = Int64Builder::new();
        if let Some(snapshot) = self.table.metadata().current_snapshot() {
            let list = self
                .table
                .manifest_list_reader(snapshot)
                .load()
                .await
                .map_err(external)?;
            for manifest in list.entries() {
                let loaded = manifest
                    .load_manifest(self.table.file_io())
                    .await
                    .map_err(external)?;
                for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
                    let file = entry.data_file();
                    content.append_value(match file.content_type() {
                        DataContentType::Data => 0,
                        DataContentType::PositionDeletes => 1,
                        DataContentType::EqualityDeletes => 2,
                    });
                    path.append_value(file.file_path());
                    format.append_value(file.file_format().to_string().to_uppercase());
                    spec.append_value(manifest.partition_spec_id);
                    records.append_value(file.record_count() as i64);
                    bytes.append_value(file.file_size_in_bytes() as i64);
                    added.append_option(entry.snapshot_id());
                    sequence.append_option(entry.sequence_number());
                }
            }
        }
        Ok(vec![
            Arc::new(content.finish()),
            Arc::new(path.finish()),
            Arc::new(format.finish()),
            Arc::new(spec.finish()),
            Arc::new(records.finish()),
            Arc::new(bytes.finish()),
            Arc::new(added.finish()),
            Arc::new(sequence.finish()),
        ])
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
}

fn timestamps() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("+00:00")
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for MetadataTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        // Small (one row per snapshot or file): computed whole, then read like any table.
        let batches = self.batches().await?;
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}
