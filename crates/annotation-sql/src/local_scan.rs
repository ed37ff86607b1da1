//! A snapshot's local Parquet files read by DataFusion's own Parquet source.
//!
//! iceberg plans the files either way (`scan`: manifests, partition and metrics pruning, delete
//! files). When every planned file is a whole Parquet file on the local file system with at
//! most position deletes to apply (the embedded warehouse, and every table annotable writes
//! there), the files are handed to DataFusion's `DataSourceExec` instead of iceberg's Arrow
//! reader: it decodes string columns without iceberg's extra copies, caches footers across
//! statements, and takes the statement's filters from DataFusion's own filter pushdown, for
//! row-group and page pruning and as row filters. Everything else (object-store warehouses,
//! equality deletes, split files) keeps iceberg's reader, which speaks to every store iceberg's
//! FileIO does.
//!
//! **Position deletes** (the state refresh writes them: see `annotation_table::state`) become
//! a `ParquetAccessPlan` per data file: each row group reads only the rows no delete names.
//! That needs the row count of each row group (the data file's footer) and the deleted
//! positions (the delete files); both files never change once written, so both are cached by
//! path for the life of the process ([`Cache`]).
//!
//! Columns are matched by name, where iceberg matches them by field id. annotable's tables
//! never rename a column, so the two agree; a column a file lacks reads as NULL in both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::config::TableParquetOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetAccessPlan,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::physical_plan::ExecutionPlan;
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataContentType, DataFileFormat};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use crate::scan::{LOCAL_METADATA_HINT, is_local, statistics};

/// The file as DataFusion's local object store names it, or `None` when `task` must be read by
/// iceberg's reader (not local, not Parquet, not the whole file, or with equality deletes or
/// delete files elsewhere).
fn local_file(task: &FileScanTask) -> Option<PartitionedFile> {
    let path = &task.data_file_path;
    let whole = task.start == 0 && task.length == task.file_size_in_bytes;
    if !is_local(path)
        || task.data_file_format != DataFileFormat::Parquet
        || !whole
        || task
            .deletes
            .iter()
            .any(|d| d.file_type != DataContentType::PositionDeletes || !is_local(&d.file_path))
    {
        return None;
    }
    let path = local_path(path);
    // DataFusion's local store names files by normalised paths: a `.` or `..` segment (a
    // warehouse configured as `../data`, made absolute without resolving it) would be taken
    // literally and not found, so such a path is resolved first, or left to iceberg's reader.
    if path.split('/').any(|s| s == "." || s == "..") {
        let resolved = std::fs::canonicalize(path).ok()?;
        return Some(PartitionedFile::new(
            resolved.to_str()?,
            task.file_size_in_bytes,
        ));
    }
    Some(PartitionedFile::new(path, task.file_size_in_bytes))
}

fn local_path(path: &str) -> &str {
    path.strip_prefix("file://").unwrap_or(path)
}

/// Footers' row-group sizes and delete files' positions, by path: both files are immutable.
/// Bounded by dropping everything when full (a long-lived server's tables are refreshed and
/// compacted into new files).
#[derive(Default)]
struct Cache {
    /// Data file → rows of each row group.
    row_groups: HashMap<String, Arc<Vec<u64>>>,
    /// Delete file → data file → deleted positions.
    deletes: HashMap<String, Arc<HashMap<String, Vec<u64>>>>,
}

const CACHE_ENTRIES: usize = 100_000;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn io_error(path: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("reading {path} to apply position deletes: {e}"))
}

/// `load()`'s value for `path`, through the map of the cache `map` picks.
fn cached<T: Clone>(
    path: &str,
    map: fn(&mut Cache) -> &mut HashMap<String, T>,
    load: impl FnOnce() -> DFResult<T>,
) -> DFResult<T> {
    if let Some(found) = cache()
        .lock()
        .ok()
        .and_then(|mut c| map(&mut c).get(path).cloned())
    {
        return Ok(found);
    }
    let value = load()?;
    if let Ok(mut cache) = cache().lock() {
        let entries = map(&mut cache);
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(path.to_string(), value.clone());
    }
    Ok(value)
}

/// The rows of each row group of the local Parquet file `path`, from its footer.
fn row_groups(path: &str) -> DFResult<Arc<Vec<u64>>> {
    cached(
        path,
        |c| &mut c.row_groups,
        || {
            let file = std::fs::File::open(local_path(path)).map_err(|e| io_error(path, e))?;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .map_err(|e| io_error(path, e))?;
            Ok(Arc::new(
                metadata
                    .row_groups()
                    .iter()
                    .map(|g| u64::try_from(g.num_rows()).unwrap_or(0))
                    .collect(),
            ))
        },
    )
}

/// The positions the local position-delete file `path` deletes, by data file path.
fn delete_positions(path: &str) -> DFResult<Arc<HashMap<String, Vec<u64>>>> {
    cached(
        path,
        |c| &mut c.deletes,
        || {
            let bytes = std::fs::read(local_path(path)).map_err(|e| io_error(path, e))?;
            annotation_table::state::parse_positions(bytes.into(), path)
                .map(Arc::new)
                .map_err(|e| io_error(path, e))
        },
    )
}

/// The access plan that leaves out the rows of `task`'s data file its position deletes name,
/// or `None` when they name none.
fn access_plan(task: &FileScanTask) -> DFResult<Option<ParquetAccessPlan>> {
    let mut deleted: Vec<u64> = Vec::new();
    for delete in &task.deletes {
        if let Some(positions) = delete_positions(&delete.file_path)?.get(&task.data_file_path) {
            deleted.extend(positions);
        }
    }
    if deleted.is_empty() {
        return Ok(None);
    }
    deleted.sort_unstable();
    deleted.dedup();
    let groups = row_groups(&task.data_file_path)?;
    Ok(Some(plan_without(&groups, &deleted)))
}

/// Scans every row group of sizes `groups` except the rows at the sorted positions `deleted`.
fn plan_without(groups: &[u64], deleted: &[u64]) -> ParquetAccessPlan {
    let mut plan = ParquetAccessPlan::new_all(groups.len());
    let mut next = deleted.iter().copied().peekable();
    let mut start = 0u64;
    for (index, &rows) in groups.iter().enumerate() {
        let end = start + rows;
        let mut selectors = Vec::new();
        let mut at = start;
        while let Some(pos) = next.next_if(|&p| p < end) {
            if pos < at {
                continue;
            }
            if pos > at {
                selectors.push(RowSelector::select((pos - at) as usize));
            }
            selectors.push(RowSelector::skip(1));
            at = pos + 1;
        }
        if !selectors.is_empty() {
            if at < end {
                selectors.push(RowSelector::select((end - at) as usize));
            }
            if selectors.iter().all(|s| s.skip) {
                plan.skip(index);
            } else {
                plan.scan_selection(index, RowSelection::from(selectors));
            }
        }
        start = end;
    }
    plan
}

/// The scan of `groups` (files already spread over partitions) by DataFusion's Parquet source,
/// or `None` when any file must be read by iceberg's reader (see the module doc).
///
/// `schema` is the table's whole schema, `projection` indexes into it, `filtered` says whether
/// the statement has filters on this table (the row count is then an upper bound).
pub(crate) async fn plan(
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
        files.push(group);
    }
    // The access plans of the files with position deletes, read off the async threads.
    let with_deletes: Vec<(usize, usize, FileScanTask)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.iter().enumerate().map(move |(f, t)| (g, f, t)))
        .filter(|(_, _, t)| !t.deletes.is_empty())
        .map(|(g, f, t)| (g, f, t.clone()))
        .collect();
    if !with_deletes.is_empty() {
        let plans = tokio::task::spawn_blocking(move || {
            with_deletes
                .into_iter()
                .map(|(g, f, task)| Ok((g, f, access_plan(&task)?)))
                .collect::<DFResult<Vec<_>>>()
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))??;
        for (g, f, plan) in plans {
            if let Some(plan) = plan {
                let file = std::mem::replace(&mut files[g][f], PartitionedFile::new("", 0));
                files[g][f] = file.with_extensions(Arc::new(plan));
            }
        }
    }
    let files: Vec<FileGroup> = files.into_iter().map(FileGroup::new).collect();
    let statistics = statistics(groups.iter().flatten(), schema, filtered, limit);

    let mut options = TableParquetOptions {
        global: session.config_options().execution.parquet.clone(),
        ..Default::default()
    };
    // `schema` says which columns to decode as string views (see `schema::presented`).
    options.global.schema_force_view_types = true;
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
    let scan = DataSourceExec::from_data_source(config);
    if !filtered {
        return Ok(Some(scan));
    }
    // A string view read from a page points into that page's buffer, so a few rows a filter
    // kept hold whole pages alive as long as they are held (a sort over them holds every
    // page a kept row came from). DataFusion coalesces, compacting views, in its `FilterExec`;
    // a filter applied in the Parquet scan has none above it. The operator is deprecated for
    // that reason but does exactly this.
    #[expect(deprecated)]
    let compacted = datafusion::physical_plan::coalesce_batches::CoalesceBatchesExec::new(
        scan,
        session.config_options().execution.batch_size,
    );
    Ok(Some(Arc::new(compacted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100-byte file at `path`, planned from byte 0 for `length` bytes, with a delete file
    /// of `deletes` type at `delete_path`.
    fn task(
        path: &str,
        length: u64,
        deletes: Option<(DataContentType, &str)>,
    ) -> Result<FileScanTask, iceberg::Error> {
        let schema = Arc::new(iceberg::spec::Schema::builder().build()?);
        let mut task = crate::scan::test_task(path, 100, &schema);
        task.length = length;
        if let Some((file_type, delete_path)) = deletes {
            task.deletes = vec![iceberg::scan::FileScanTaskDeleteFile {
                file_path: delete_path.into(),
                file_size_in_bytes: 10,
                file_type,
                partition_spec_id: 0,
                equality_ids: None,
            }];
        }
        Ok(task)
    }

    #[test]
    fn whole_local_parquet_files_with_at_most_local_position_deletes_are_read_directly()
    -> Result<(), iceberg::Error> {
        let direct = local_file(&task("file:///w/data/a.parquet", 100, None)?);
        assert_eq!(
            direct.map(|f| f.object_meta.location.to_string()),
            Some("w/data/a.parquet".to_string())
        );
        assert!(local_file(&task("/w/data/a.parquet", 100, None)?).is_some());
        assert!(local_file(&task("s3://b/w/a.parquet", 100, None)?).is_none());
        assert!(local_file(&task("file:///w/data/a.parquet", 40, None)?).is_none());
        let positions = Some((DataContentType::PositionDeletes, "file:///w/d.parquet"));
        assert!(local_file(&task("file:///w/data/a.parquet", 100, positions)?).is_some());
        let remote = Some((DataContentType::PositionDeletes, "s3://b/w/d.parquet"));
        assert!(local_file(&task("file:///w/data/a.parquet", 100, remote)?).is_none());
        let equality = Some((DataContentType::EqualityDeletes, "file:///w/d.parquet"));
        assert!(local_file(&task("file:///w/data/a.parquet", 100, equality)?).is_none());
        Ok(())
    }

    #[test]
    fn a_path_through_dot_dot_names_the_file_it_resolves_to()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("w/data"))?;
        std::fs::write(dir.path().join("w/data/a.parquet"), [0u8; 100])?;
        let real = std::fs::canonicalize(dir.path().join("w/data/a.parquet"))?;
        let through = format!("file://{}/w/data/../data/./a.parquet", dir.path().display());
        let file = local_file(&task(&through, 100, None)?).ok_or("not read directly")?;
        assert_eq!(
            format!("/{}", file.object_meta.location),
            real.to_string_lossy()
        );
        // A file that is not there is left to iceberg's reader, which says so.
        let missing = format!("file://{}/w/../w/data/b.parquet", dir.path().display());
        assert!(local_file(&task(&missing, 100, None)?).is_none());
        Ok(())
    }

    #[test]
    fn an_access_plan_leaves_out_exactly_the_deleted_positions() {
        use datafusion::datasource::physical_plan::parquet::RowGroupAccess;
        // Row groups of 4, 3 and 2 rows: rows 0-3, 4-6, 7-8.
        let plan = plan_without(&[4, 3, 2], &[1, 3, 4, 5, 6]);
        let groups = plan.into_inner();
        match &groups[0] {
            RowGroupAccess::Selection(s) => assert_eq!(
                s.iter().cloned().collect::<Vec<_>>(),
                vec![
                    RowSelector::select(1),
                    RowSelector::skip(1),
                    RowSelector::select(1),
                    RowSelector::skip(1),
                ]
            ),
            other => panic!("row group 0: {other:?}"),
        }
        assert!(matches!(groups[1], RowGroupAccess::Skip), "{:?}", groups[1]);
        assert!(matches!(groups[2], RowGroupAccess::Scan), "{:?}", groups[2]);
    }
}
