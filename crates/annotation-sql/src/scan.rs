//! A parallel scan of one Iceberg snapshot. iceberg plans the files (manifests, partition and
//! metrics pruning, delete files), the files are spread over DataFusion's target partitions
//! (largest first, each onto the least-loaded partition), and every partition reads its own
//! files with iceberg's Arrow reader, in batches of DataFusion's batch size.
//!
//! iceberg-datafusion's `IcebergTableScan` (0.10.1) reads every file through one stream, so all
//! Parquet decoding ran on the one thread polling it while the rest of the plan waited, in
//! batches of 1,024 rows, and it reports no row count, so DataFusion could not tell a join's
//! small side from its large one. This scan keeps its planning (projection, pushed-down
//! predicate, limit) and changes only how the files are read.
//!
//! Whole local Parquet files without deletes are read by DataFusion's own Parquet source
//! instead (`local_scan`, from the files planned here); this scan reads the rest.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use iceberg_datafusion::physical_plan::IcebergTableScan;

fn df_error(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Files each partition keeps open at once: one decoding, one being opened (its footer read),
/// so a remote warehouse's latency overlaps the decoding.
const FILES_IN_FLIGHT: usize = 2;

/// The footer read of a local file. iceberg's default (512 KiB, tuned for object stores, where
/// a round trip costs more than bytes) reads the whole of a typical state file to find a
/// footer of a few KiB; locally a second read when the footer is larger costs one syscall.
pub(crate) const LOCAL_METADATA_HINT: usize = 16 * 1024;

/// Whether a data file is read from the local file system, where reads are cheap and bytes
/// copied are the cost: such files are read column chunk by column chunk, no footer prefetch
/// beyond [`LOCAL_METADATA_HINT`] and no coalescing of the chunks a query skips.
pub(crate) fn is_local(path: &str) -> bool {
    path.starts_with("file:") || path.starts_with('/')
}

/// One snapshot's files, read by `groups.len()` partitions in parallel.
#[derive(Debug)]
pub(crate) struct PartitionedScan {
    table: Table,
    groups: Vec<Vec<FileScanTask>>,
    batch_size: usize,
    limit: Option<usize>,
    projection: Option<Vec<String>>,
    predicate: Option<Predicate>,
    statistics: Statistics,
    properties: Arc<PlanProperties>,
}

impl PartitionedScan {
    /// Plans the files of `scan` (an `IcebergTableScan` as iceberg-datafusion built it) over
    /// `partitions` partitions.
    pub(crate) async fn plan(
        scan: &IcebergTableScan,
        partitions: usize,
        batch_size: usize,
    ) -> DFResult<Self> {
        let table = scan.table().clone();
        let mut builder = table.scan();
        if let Some(id) = scan.snapshot_id() {
            builder = builder.snapshot_id(id);
        }
        builder = match scan.projection() {
            Some(columns) => builder.select(columns.iter().cloned()),
            None => builder.select_all(),
        };
        if let Some(predicate) = scan.predicates() {
            builder = builder.with_filter(predicate.clone());
        }
        let tasks: Vec<FileScanTask> = builder
            .build()
            .map_err(df_error)?
            .plan_files()
            .await
            .map_err(df_error)?
            .try_collect()
            .await
            .map_err(df_error)?;

        let schema = crate::schema::presented(&scan.schema());
        let statistics = statistics(
            tasks.iter(),
            &schema,
            scan.predicates().is_some(),
            scan.limit(),
        );
        let groups = spread(tasks, partitions.max(1));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(PartitionedScan {
            table,
            groups,
            batch_size,
            limit: scan.limit(),
            projection: scan.projection().map(<[String]>::to_vec),
            predicate: scan.predicates().cloned(),
            statistics,
            properties,
        })
    }

    /// The files each partition reads.
    pub(crate) fn groups(&self) -> &[Vec<FileScanTask>] {
        &self.groups
    }
}

/// The row count the files hold: exact when every row of every file is returned (no
/// predicate, no delete files, no limit), an upper bound otherwise.
pub(crate) fn statistics<'a>(
    tasks: impl Iterator<Item = &'a FileScanTask> + Clone,
    schema: &SchemaRef,
    filtered: bool,
    limit: Option<usize>,
) -> Statistics {
    let rows: Option<usize> = tasks
        .clone()
        .map(|t| t.record_count.and_then(|n| usize::try_from(n).ok()))
        .sum();
    let exact = !filtered && limit.is_none() && tasks.clone().all(|t| t.deletes.is_empty());
    let num_rows = match (rows, limit) {
        (None, _) => Precision::Absent,
        (Some(n), Some(limit)) => Precision::Inexact(n.min(limit)),
        (Some(n), None) if exact => Precision::Exact(n),
        (Some(n), None) => Precision::Inexact(n),
    };
    Statistics {
        num_rows,
        total_byte_size: Precision::Absent,
        column_statistics: vec![ColumnStatistics::new_unknown(); schema.fields().len()],
    }
}

/// Spreads the files over `partitions` groups, largest first, each onto the group with the
/// fewest bytes so far (no more groups than files, and at least one).
fn spread(mut tasks: Vec<FileScanTask>, partitions: usize) -> Vec<Vec<FileScanTask>> {
    tasks.sort_by_key(|t| std::cmp::Reverse(t.length));
    let n = partitions.min(tasks.len()).max(1);
    let mut groups: Vec<(u64, Vec<FileScanTask>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for task in tasks {
        if let Some(group) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            group.0 += task.length;
            group.1.push(task);
        }
    }
    groups.into_iter().map(|(_, files)| files).collect()
}

impl DisplayAs for PartitionedScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "PartitionedScan: {} files in {} partitions, projection:[{}] predicate:[{}]",
            files,
            self.groups.len(),
            self.projection
                .as_deref()
                .map_or(String::new(), |p| p.join(",")),
            self.predicate
                .as_ref()
                .map_or(String::new(), ToString::to_string)
        )?;
        if let Some(limit) = self.limit {
            write!(f, " limit:[{limit}]")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for PartitionedScan {
    fn name(&self) -> &str {
        "PartitionedScan"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        Ok(match partition {
            None => self.statistics.clone(),
            Some(_) => self.statistics.clone().to_inexact(),
        })
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let tasks = self.groups.get(partition).cloned().unwrap_or_default();
        let mut reader = self
            .table
            .reader_builder()
            .with_batch_size(self.batch_size)
            .with_data_file_concurrency_limit(FILES_IN_FLIGHT);
        if tasks.iter().all(|t| is_local(&t.data_file_path)) {
            reader = reader
                .with_metadata_size_hint(LOCAL_METADATA_HINT)
                .with_range_coalesce_bytes(0);
        }
        let reader = reader.build();
        let files = futures::stream::iter(tasks.into_iter().map(Ok)).boxed();
        let schema = self.schema();
        let batches = reader
            .read(files)
            .map_err(df_error)?
            .stream()
            .map_err(df_error)
            .and_then(move |batch| {
                // The same columns as the session presents them (strings as views).
                futures::future::ready(
                    crate::schema::present(&batch, &schema).map_err(DataFusionError::from),
                )
            });
        let stream = match self.limit {
            None => batches.boxed(),
            Some(limit) => {
                let mut remaining = limit;
                batches
                    .try_filter_map(move |batch| {
                        let keep = match remaining {
                            0 => None,
                            n if batch.num_rows() <= n => Some(batch),
                            n => Some(batch.slice(0, n)),
                        };
                        remaining -= keep.as_ref().map_or(0, |b| b.num_rows());
                        futures::future::ready(Ok(keep))
                    })
                    .boxed()
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// A whole Parquet file of `length` bytes and `length * 10` rows at `path`, without deletes.
#[cfg(test)]
pub(crate) fn test_task(
    path: &str,
    length: u64,
    schema: &iceberg::spec::SchemaRef,
) -> FileScanTask {
    FileScanTask {
        file_size_in_bytes: length,
        start: 0,
        length,
        record_count: Some(length * 10),
        data_file_path: path.to_string(),
        data_file_format: iceberg::spec::DataFileFormat::Parquet,
        schema: schema.clone(),
        project_field_ids: Vec::new(),
        predicate: None,
        deletes: Vec::new(),
        partition: None,
        partition_spec: None,
        name_mapping: None,
        case_sensitive: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(lengths: &[u64]) -> Result<Vec<FileScanTask>, iceberg::Error> {
        let schema = Arc::new(iceberg::spec::Schema::builder().build()?);
        Ok(lengths
            .iter()
            .map(|&length| task(length, &schema))
            .collect())
    }

    fn task(length: u64, schema: &iceberg::spec::SchemaRef) -> FileScanTask {
        test_task(&format!("file:///f{length}.parquet"), length, schema)
    }

    #[test]
    fn only_file_system_paths_are_local() {
        assert!(is_local("file:///tmp/w/data/a.parquet"));
        assert!(is_local("/tmp/w/data/a.parquet"));
        assert!(!is_local("s3://bucket/w/data/a.parquet"));
        assert!(!is_local("gs://bucket/a.parquet"));
    }

    #[test]
    fn spread_balances_bytes_and_never_makes_an_empty_group() -> Result<(), iceberg::Error> {
        let groups = spread(tasks(&[9, 1, 5, 4, 3, 2])?, 2);
        let bytes: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|t| t.length).sum())
            .collect();
        assert_eq!(bytes, vec![12, 12]);
        assert_eq!(spread(tasks(&[7])?, 4).len(), 1);
        assert_eq!(spread(Vec::new(), 4).len(), 1);
        Ok(())
    }

    #[test]
    fn row_count_is_exact_only_when_every_row_is_returned() -> Result<(), iceberg::Error> {
        let tasks = tasks(&[1, 2])?;
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        assert_eq!(
            statistics(tasks.iter(), &schema, false, None).num_rows,
            Precision::Exact(30)
        );
        assert_eq!(
            statistics(tasks.iter(), &schema, true, None).num_rows,
            Precision::Inexact(30)
        );
        assert_eq!(
            statistics(tasks.iter(), &schema, false, Some(5)).num_rows,
            Precision::Inexact(5)
        );
        Ok(())
    }
}
