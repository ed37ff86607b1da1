//! Compaction: small data files rewritten into sorted files of a target size, and every
//! manifest merged into one, committed as an Iceberg `replace` snapshot.
//!
//! The commit is built from iceberg's public pieces (iceberg 0.10.1 can only commit appends):
//! one new manifest holds the new files as ADDED, every other live file as EXISTING (with its
//! original snapshot id and sequence numbers) and the rewritten files as DELETED; a manifest
//! list and a snapshot (operation `replace`, parent = the current snapshot) point at it; new
//! metadata comes from `TableMetadataBuilder` and is swapped in with a compare-and-swap on the
//! catalog row. On a conflict (someone committed in between) the commit is rebuilt on the
//! newer snapshot (after checking that every rewritten file is still live there, so appends
//! made meanwhile are carried over as EXISTING and nothing is lost or doubled) and tried again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use iceberg::spec::{
    DataContentType, DataFile, MAIN_BRANCH, ManifestEntryRef, ManifestListWriter,
    ManifestWriterBuilder, Operation, Snapshot, SnapshotReference, SnapshotRetention,
    SnapshotSummaryCollector, Summary, TableMetadata,
};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind, MetadataLocation};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::inventory::ManifestCache;
use crate::encode::{sort_batch, sort_keys};
use crate::journal::{WriteFailure, file_writer, write_partitioned};

/// Summary key marking a snapshot as annotable's maintenance (its value says which).
pub const SUMMARY_MAINTENANCE: &str = "annotable.maintenance";

/// A group of files of one partition to rewrite together.
#[derive(Debug, Clone)]
pub(crate) struct Bin {
    pub files: Vec<DataFile>,
}

impl Bin {
    fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.record_count()).sum()
    }
}

/// The bins worth rewriting: per partition, files under 3/4 of the target size, packed
/// greedily (smallest first) into groups of at most `target` bytes; a group of one file is
/// left alone, and so is a partition with position deletes (`deletes`), which only the state
/// refresh that wrote them rewrites.
pub(crate) fn plan(
    live: &[ManifestEntryRef],
    deletes: &[ManifestEntryRef],
    target: u64,
) -> Vec<Bin> {
    let small = target.saturating_mul(3) / 4;
    let deleted: HashSet<String> = deletes
        .iter()
        .map(|e| partition_key(e.data_file()))
        .collect();
    let mut by_partition: BTreeMap<String, Vec<DataFile>> = BTreeMap::new();
    for entry in live {
        let file = entry.data_file();
        let partition = partition_key(file);
        if file.file_size_in_bytes() < small && !deleted.contains(&partition) {
            by_partition
                .entry(partition)
                .or_default()
                .push(file.clone());
        }
    }
    let mut bins = Vec::new();
    for (_, mut files) in by_partition {
        files.sort_by_key(|f| f.file_size_in_bytes());
        let mut bin = Bin { files: Vec::new() };
        let mut bytes = 0;
        for file in files {
            if !bin.files.is_empty() && bytes + file.file_size_in_bytes() > target {
                bins.push(std::mem::replace(&mut bin, Bin { files: Vec::new() }));
                bytes = 0;
            }
            bytes += file.file_size_in_bytes();
            bin.files.push(file);
        }
        bins.push(bin);
    }
    bins.retain(|b| b.files.len() > 1);
    bins
}

/// Reads a bin's files, sorts the rows by the table's sort order and writes them as new data
/// files named `<prefix>-…`. Checks that the row count is unchanged.
pub(crate) async fn rewrite(
    table: &Table,
    arrow_schema: &SchemaRef,
    bin: &Bin,
    prefix: &str,
    target: u64,
) -> Result<Vec<DataFile>, Error> {
    let mut batches = Vec::new();
    for file in &bin.files {
        batches.extend(read_data_file(table, file, arrow_schema).await?);
    }
    let schema = arrow_schema.clone();
    let keys = sort_keys(table.metadata(), arrow_schema);
    let sorted = tokio::task::spawn_blocking(move || -> Result<RecordBatch, Error> {
        let all = concat_batches(&schema, &batches).map_err(arrow_error)?;
        drop(batches);
        sort_batch(&all, &keys).map_err(arrow_error)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))??;
    if sorted.num_rows() as u64 != bin.rows() {
        return Err(Error::new(
            ErrorKind::DataInvalid,
            format!(
                "rewriting {} files read {} rows, their manifests say {}; nothing was committed",
                bin.files.len(),
                sorted.num_rows(),
                bin.rows()
            ),
        ));
    }
    write_sorted(
        table,
        prefix,
        usize::try_from(target).unwrap_or(usize::MAX),
        &sorted,
    )
    .await
}

/// Writes rows already in the table's sort order as new data files of `table`, split by
/// partition and rolled at `target` bytes.
pub(crate) async fn write_sorted(
    table: &Table,
    prefix: &str,
    target: usize,
    sorted: &RecordBatch,
) -> Result<Vec<DataFile>, Error> {
    let (builder, splitter) = file_writer(table, prefix, Some(target))?;
    write_partitioned(&builder, splitter.split(sorted)?)
        .await
        .map_err(|e| match e {
            WriteFailure::Write(e) => e,
            WriteFailure::Encode(e) => arrow_error(e),
        })
}

/// Reads one data file of `table` as batches of `schema` (decoded off the async threads).
pub(crate) async fn read_data_file(
    table: &Table,
    file: &DataFile,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, Error> {
    let bytes = table.file_io().new_input(file.file_path())?.read().await?;
    let schema = schema.clone();
    let path = file.file_path().to_string();
    tokio::task::spawn_blocking(move || read_parquet(bytes, &schema, &path))
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
}

pub(crate) fn arrow_error(e: arrow::error::ArrowError) -> Error {
    Error::new(ErrorKind::Unexpected, format!("arrow: {e}"))
}

/// Reads one Parquet file as batches of `schema`, matching columns by name and casting where
/// another writer chose a different physical type (e.g. large strings).
pub(crate) fn read_parquet(
    bytes: bytes::Bytes,
    schema: &SchemaRef,
    path: &str,
) -> Result<Vec<RecordBatch>, Error> {
    let context = |e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::DataInvalid, format!("reading {path}: {e}"))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| context(&e))?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| context(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        out.push(conform(batch.map_err(|e| context(&e))?, schema, path)?);
    }
    Ok(out)
}

/// `batch` (read from `path`) as a batch of `schema`: columns matched by name, cast where
/// another writer chose a different physical type, null where the file has none.
pub(crate) fn conform(
    batch: RecordBatch,
    schema: &SchemaRef,
    path: &str,
) -> Result<RecordBatch, Error> {
    let context = |e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::DataInvalid, format!("reading {path}: {e}"))
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => column.clone(),
            Some(column) => {
                arrow::compute::cast(column, field.data_type()).map_err(|e| context(&e))?
            }
            None => arrow::array::new_null_array(field.data_type(), batch.num_rows()),
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| context(&e))
}

/// A rewrite ready to commit: the files it replaces and the files that replace them.
pub(crate) struct Rewrite {
    pub removed: HashSet<String>,
    pub added: Vec<DataFile>,
    /// What the snapshot summary records under [`SUMMARY_MAINTENANCE`].
    pub kind: &'static str,
    /// `Replace` for maintenance (same rows), `Overwrite` for a rewrite that changes rows
    /// (the current-state refresh).
    pub operation: Operation,
    /// More snapshot summary properties (the state's journal watermark).
    pub properties: Vec<(String, String)>,
    /// When set, the table's current snapshot must still be this one (`None`: no snapshot):
    /// the rewrite was computed from it and would be wrong on any other.
    pub expect_current: Option<Option<i64>>,
    /// Table properties set in the same commit (journal retention records how far back the
    /// journal reaches).
    pub table_properties: Vec<(String, String)>,
}

/// Files written for one commit attempt (deleted again if the attempt loses).
pub(crate) struct Staged {
    pub location: String,
    pub snapshot_id: i64,
    pub written: Vec<String>,
}

/// Why a commit attempt could not be built.
pub(crate) enum BuildFailure {
    /// A file to be replaced is no longer live: someone else rewrote or removed it.
    Gone(String),
    Iceberg(Error),
}

impl From<Error> for BuildFailure {
    fn from(e: Error) -> Self {
        BuildFailure::Iceberg(e)
    }
}

/// Writes the manifest, manifest list and metadata of `rewrite` on top of `table`'s current
/// snapshot; nothing is visible until the caller swaps the catalog pointer to
/// `Staged::location`.
pub(crate) async fn stage(
    table: &Table,
    rewrite: &Rewrite,
    cache: &mut ManifestCache,
) -> Result<Staged, BuildFailure> {
    let metadata = table.metadata();
    let current_location = table
        .metadata_location()
        .ok_or_else(|| Error::new(ErrorKind::DataInvalid, "the table has no metadata location"))?
        .to_string();
    let parent = metadata.current_snapshot().cloned();
    if let Some(expected) = rewrite.expect_current
        && parent.as_ref().map(|p| p.snapshot_id()) != expected
    {
        return Err(BuildFailure::Gone(format!(
            "the current snapshot (expected {expected:?}, found {:?})",
            parent.as_ref().map(|p| p.snapshot_id())
        )));
    }
    let files = match &parent {
        Some(parent) => cache.snapshot(table, parent).await?,
        None if rewrite.removed.is_empty() => super::inventory::SnapshotFiles::default(),
        None => {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                "the table has no snapshot to rewrite",
            )
            .into());
        }
    };
    let parent_id = parent.as_ref().map(|p| p.snapshot_id());
    let live: HashMap<&str, &ManifestEntryRef> = files
        .live
        .iter()
        .chain(&files.deletes)
        .map(|e| (e.file_path(), e))
        .collect();
    if let Some(gone) = rewrite
        .removed
        .iter()
        .find(|p| !live.contains_key(p.as_str()))
    {
        return Err(BuildFailure::Gone(gone.clone()));
    }
    // A data file replaced while a position-delete file of its partition stays would drop
    // those deletes on the floor (they name the old file): the rows would come back. Only
    // the state refresh replaces such files, and it replaces the partition's deletes with them.
    let deleted_partitions: HashSet<String> = files
        .deletes
        .iter()
        .filter(|e| !rewrite.removed.contains(e.file_path()))
        .map(|e| partition_key(e.data_file()))
        .collect();
    if let Some(entry) = files.live.iter().find(|e| {
        rewrite.removed.contains(e.file_path())
            && deleted_partitions.contains(&partition_key(e.data_file()))
    }) {
        return Err(BuildFailure::Gone(format!(
            "{} (rows of it were deleted meanwhile)",
            entry.file_path()
        )));
    }

    let snapshot_id = unique_snapshot_id(metadata);
    let sequence_number = metadata.next_sequence_number();
    let commit_id = uuid::Uuid::now_v7();
    let meta_dir = format!("{}/metadata", metadata.location().trim_end_matches('/'));
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().clone();
    let mut written = Vec::new();
    let mut summary = SnapshotSummaryCollector::default();
    let mut totals = Totals::default();
    let mut manifests = Vec::new();

    // One manifest of data files and, when there are any, one of position deletes.
    for deletes in [false, true] {
        let entries = if deletes { &files.deletes } else { &files.live };
        let added: Vec<&DataFile> = rewrite
            .added
            .iter()
            .filter(|f| (f.content_type() == DataContentType::PositionDeletes) == deletes)
            .collect();
        if deletes && entries.is_empty() && added.is_empty() {
            continue;
        }
        let manifest_path = format!("{meta_dir}/{commit_id}-m{}.avro", u8::from(deletes));
        let builder = ManifestWriterBuilder::new(
            table.file_io().new_output(&manifest_path)?,
            Some(snapshot_id),
            schema.clone(),
            spec.as_ref().clone(),
        );
        let mut writer = if deletes {
            builder.build_v2_deletes()
        } else {
            builder.build_v2_data()
        };
        for file in added {
            writer.add_file(file.clone(), sequence_number)?;
            summary.add_file(file, schema.clone(), spec.clone());
            totals.count(file);
        }
        for entry in entries {
            let file = entry.data_file().clone();
            let data_seq = entry.sequence_number().unwrap_or(sequence_number);
            let file_seq = entry.file_sequence_number.or(Some(data_seq));
            if rewrite.removed.contains(entry.file_path()) {
                summary.remove_file(&file, schema.clone(), spec.clone());
                writer.add_delete_file(file, data_seq, file_seq)?;
            } else {
                totals.count(&file);
                let added_by = entry.snapshot_id().or(parent_id).unwrap_or(snapshot_id);
                writer.add_existing_file(file, added_by, data_seq, file_seq)?;
            }
        }
        written.push(manifest_path);
        manifests.push(writer.write_manifest_file().await?);
    }

    let list_path = format!("{meta_dir}/snap-{snapshot_id}-0-{commit_id}.avro");
    let mut list = ManifestListWriter::v2(
        table.file_io().new_output(&list_path)?.writer().await?,
        snapshot_id,
        parent_id,
        sequence_number,
    );
    list.add_manifests(manifests.into_iter())?;
    list.close().await?;
    written.push(list_path.clone());

    let mut properties = summary.build();
    properties.insert(SUMMARY_MAINTENANCE.to_string(), rewrite.kind.to_string());
    properties.extend(rewrite.properties.iter().cloned());
    for (key, value) in [
        ("total-records", totals.records),
        ("total-data-files", totals.data_files),
        ("total-files-size", totals.bytes),
        ("total-delete-files", totals.delete_files),
        ("total-position-deletes", totals.position_deletes),
        ("total-equality-deletes", 0),
    ] {
        properties.insert(key.into(), value.to_string());
    }
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent_id)
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_schema_id(metadata.current_schema_id())
        .with_summary(Summary {
            operation: rewrite.operation.clone(),
            additional_properties: properties,
        })
        .build();
    let new_metadata = metadata
        .clone()
        .into_builder(Some(current_location.clone()))
        .add_snapshot(snapshot)?
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        )?
        .set_properties(rewrite.table_properties.iter().cloned().collect())?
        .build()?
        .metadata;
    let location = write_next_metadata(table, &current_location, &new_metadata).await?;
    written.push(location.clone());
    Ok(Staged {
        location,
        snapshot_id,
        written,
    })
}

/// What a snapshot's summary says it holds in all.
#[derive(Default)]
struct Totals {
    records: u64,
    data_files: u64,
    bytes: u64,
    delete_files: u64,
    position_deletes: u64,
}

impl Totals {
    fn count(&mut self, file: &DataFile) {
        self.bytes += file.file_size_in_bytes();
        if file.content_type() == DataContentType::PositionDeletes {
            self.delete_files += 1;
            self.position_deletes += file.record_count();
        } else {
            self.data_files += 1;
            self.records += file.record_count();
        }
    }
}

/// A file's partition as a map key (specs are never evolved, so the values suffice).
pub(crate) fn partition_key(file: &DataFile) -> String {
    format!("{:?}", file.partition())
}

/// Writes metadata in which the tag `name` points at `snapshot_id` (no new snapshot); nothing
/// is visible until the caller swaps the catalog pointer to `Staged::location`.
pub(crate) async fn stage_tag(
    table: &Table,
    name: &str,
    snapshot_id: i64,
) -> Result<Staged, Error> {
    let current_location = table
        .metadata_location()
        .ok_or_else(|| Error::new(ErrorKind::DataInvalid, "the table has no metadata location"))?
        .to_string();
    let new_metadata = table
        .metadata()
        .clone()
        .into_builder(Some(current_location.clone()))
        .set_ref(
            name,
            SnapshotReference::new(
                snapshot_id,
                SnapshotRetention::Tag {
                    max_ref_age_ms: None,
                },
            ),
        )?
        .build()?
        .metadata;
    let location = write_next_metadata(table, &current_location, &new_metadata).await?;
    Ok(Staged {
        location: location.clone(),
        snapshot_id,
        written: vec![location],
    })
}

/// Writes `metadata` as the version after `current_location`; returns where.
async fn write_next_metadata(
    table: &Table,
    current_location: &str,
    metadata: &TableMetadata,
) -> Result<String, Error> {
    let location = MetadataLocation::from_str(current_location)?
        .with_next_version()
        .with_new_metadata(metadata);
    metadata.write_to(table.file_io(), &location).await?;
    Ok(location.to_string())
}

fn unique_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) >> 1) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Whether the snapshot's rows differ from its parent's: appends and the state's overwrites
/// do, maintenance does not.
pub fn changes_rows(snapshot: &Snapshot) -> bool {
    snapshot.summary().operation != Operation::Replace
}
