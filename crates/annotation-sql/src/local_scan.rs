//! A snapshot's local Parquet files read by DataFusion's own Parquet source.
//!
//! iceberg plans the files either way (`scan`: manifests, partition and metrics pruning, delete
//! files). When every planned file is a whole Parquet file on the local file system with no
//! delete file to apply (the embedded warehouse, and every table annotable writes there), the
//! files are handed to DataFusion's `DataSourceExec` instead of iceberg's Arrow reader: it
//! decodes string columns without iceberg's extra copies, caches footers across statements,
//! and takes the statement's filters from DataFusion's own filter pushdown, for row-group and
//! page pruning and as row filters. Everything else (object-store warehouses, delete files,
//! split files) keeps iceberg's reader, which applies deletes and speaks to every store
//! iceberg's FileIO does.
//!
//! Columns are matched by name, where iceberg matches them by field id. annotable's tables
//! never rename a column, so the two agree; a column a file lacks reads as NULL in both.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::config::TableParquetOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DFResult;
use datafusion::physical_plan::ExecutionPlan;
use iceberg::scan::FileScanTask;
use iceberg::spec::DataFileFormat;

use crate::scan::{LOCAL_METADATA_HINT, is_local, statistics};

/// The file as DataFusion's local object store names it, or `None` when `task` must be read by
/// iceberg's reader (not local, not Parquet, not the whole file, or with deletes to apply).
fn local_file(task: &FileScanTask) -> Option<PartitionedFile> {
    let path = &task.data_file_path;
    let whole = task.start == 0 && task.length == task.file_size_in_bytes;
    if !is_local(path)
        || task.data_file_format != DataFileFormat::Parquet
        || !whole
        || !task.deletes.is_empty()
    {
        return None;
    }
    let path = path.strip_prefix("file://").unwrap_or(path);
    Some(PartitionedFile::new(path, task.file_size_in_bytes))
}

/// The scan of `groups` (files already spread over partitions) by DataFusion's Parquet source,
/// or `None` when any file must be read by iceberg's reader (see the module doc).
///
/// `schema` is the table's whole schema, `projection` indexes into it, `filtered` says whether
/// the statement has filters on this table (the row count is then an upper bound).
pub(crate) fn plan(
    session: &dyn Session,
    groups: &[Vec<FileScanTask>],
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    filtered: bool,
    limit: Option<usize>,
) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
    let mut files = Vec::with_capacity(groups.len());
    for group in groups {
        let Some(group) = group.iter().map(local_file).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        files.push(FileGroup::new(group));
    }
    let statistics = statistics(groups.iter().flatten(), schema, filtered, limit);

    let mut options = TableParquetOptions {
        global: session.config_options().execution.parquet.clone(),
        ..Default::default()
    };
    // The table's string columns are Utf8, as iceberg's reader gives them.
    options.global.schema_force_view_types = false;
    // Filters are applied while decoding, as iceberg's reader applies them: the columns only
    // the output needs are decoded for the rows that pass, not for every row.
    options.global.pushdown_filters = true;
    let store = session
        .runtime_env()
        .object_store(ObjectStoreUrl::local_filesystem())?;
    // Data files never change once written, so their footers are cached by path.
    let footers = session
        .runtime_env()
        .cache_manager
        .get_file_metadata_cache();
    let source = ParquetSource::new(schema.clone())
        .with_table_parquet_options(options)
        .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
            store, footers,
        )))
        .with_metadata_size_hint(LOCAL_METADATA_HINT);
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
        .with_file_groups(files)
        .with_statistics(statistics)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    Ok(Some(DataSourceExec::from_data_source(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100-byte file at `path`, planned from byte 0 for `length` bytes.
    fn task(path: &str, length: u64, deletes: bool) -> Result<FileScanTask, iceberg::Error> {
        let schema = Arc::new(iceberg::spec::Schema::builder().build()?);
        let mut task = crate::scan::test_task(path, 100, &schema);
        task.length = length;
        if deletes {
            task.deletes = vec![iceberg::scan::FileScanTaskDeleteFile {
                file_path: "file:///w/d.parquet".into(),
                file_size_in_bytes: 10,
                file_type: iceberg::spec::DataContentType::PositionDeletes,
                partition_spec_id: 0,
                equality_ids: None,
            }];
        }
        Ok(task)
    }

    #[test]
    fn only_whole_local_parquet_files_without_deletes_are_read_directly()
    -> Result<(), iceberg::Error> {
        let direct = local_file(&task("file:///w/data/a.parquet", 100, false)?);
        assert_eq!(
            direct.map(|f| f.object_meta.location.to_string()),
            Some("w/data/a.parquet".to_string())
        );
        assert!(local_file(&task("/w/data/a.parquet", 100, false)?).is_some());
        assert!(local_file(&task("s3://b/w/a.parquet", 100, false)?).is_none());
        assert!(local_file(&task("file:///w/data/a.parquet", 40, false)?).is_none());
        assert!(local_file(&task("file:///w/data/a.parquet", 100, true)?).is_none());
        Ok(())
    }
}
