//! Reading only what a refresh needs of a state file: the rows of the object versions it
//! touches, and of those only the columns it asks for, so its reads follow what changed rather than the size of every partition it touches.
//!
//! State files are sorted by (bucket, `object_key`, …) and written with small pages (the
//! tables' `write.parquet.page-row-limit`), and every page of `object_key` has a min/max in
//! the file's column index. A page whose range holds none of the touched keys holds none of
//! their rows. So the read is two steps: the key columns (bucket, key, version) of the pages
//! that can hold a touched key, to find the rows; then the caller's columns of those rows
//! alone (the reader fetches and decodes only the pages that hold them, through the offset index).
//! A file without a column index for `object_key` has the key columns of all its rows read:
//! the pruning is an optimisation, never a filter the caller relies on.

use std::collections::BTreeSet;
use std::ops::{Bound, Range};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use iceberg::arrow::ArrowFileReader;
use iceberg::io::FileMetadata;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::page_index::column_index::ColumnIndexMetaData;

use super::rows_bytes;
use crate::maintain::compact::conform;

/// The rows of a file that a page read returned.
pub(super) struct PageRows {
    /// The rows asked for, as batches of the caller's schema, each with the file position of
    /// its first row: every batch covers consecutive positions.
    pub batches: Vec<(RecordBatch, u64)>,
    /// What the whole file's rows take uncompressed (its footer says), for the memory budget.
    pub uncompressed: u64,
    /// How many of the file's rows had their key columns decoded (the caller's columns are
    /// decoded only for the rows returned).
    pub decoded: u64,
}

/// Whether the row at a position, of a bucket, key and version, is one the caller wants.
pub(super) type Hit<'a> = dyn Fn(u64, &str, &str, Option<&str>) -> bool + Sync + 'a;

/// The columns that tell which object version a row is of.
const KEY_COLUMNS: [&str; 3] = ["bucket", "object_key", "object_version_id"];

/// Reads the rows of `file` (of `table`) for which `hit(position, bucket, key, version)`
/// holds, as batches of `schema`, in two steps: the key columns of the pages whose
/// `object_key` range holds one of `keys` (UTF-8 bytes) to find the rows, then the columns of
/// `schema` (which must hold the key columns) of those rows only.
pub(super) async fn read_pages(
    table: &Table,
    file: &DataFile,
    schema: &SchemaRef,
    keys: &BTreeSet<Vec<u8>>,
    hit: &Hit<'_>,
) -> Result<PageRows, Error> {
    let path = file.file_path();
    let context = |e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::DataInvalid, format!("reading {path}: {e}"))
    };
    let size = file.file_size_in_bytes();
    let input = table.file_io().new_input(path)?;
    let reader = async || -> Result<ArrowFileReader, Error> {
        Ok(ArrowFileReader::new(
            FileMetadata { size },
            Box::new(input.reader().await?),
        ))
    };
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .load_and_finish(&mut reader().await?, size)
        .await
        .map_err(|e| context(&e))?;
    let metadata = Arc::new(metadata);
    let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0);
    let uncompressed = rows_bytes(&metadata);
    let candidates =
        candidate_rows(&metadata, keys).unwrap_or_else(|| std::iter::once(0..rows).collect());
    let decoded = candidates.iter().map(|r| r.end - r.start).sum();
    let descriptor = metadata.file_metadata().schema_descr_ptr();
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let arrow_metadata =
        ArrowReaderMetadata::try_new(metadata, options).map_err(|e| context(&e))?;
    let read = async |mask: ProjectionMask, ranges: &[Range<u64>], schema: &SchemaRef| {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let to_usize = |r: &Range<u64>| r.start as usize..r.end as usize;
        let selection =
            RowSelection::from_consecutive_ranges(ranges.iter().map(to_usize), rows as usize);
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(
            reader().await?,
            arrow_metadata.clone(),
        )
        .with_projection(mask)
        .with_row_selection(selection)
        .with_batch_size(8 * 1024)
        .build()
        .map_err(|e| context(&e))?;
        // Each row group's pages are fetched here and decoded off the async threads, which
        // `serve`'s receivers share with the refresher.
        let mut batches = Vec::new();
        while let Some(group) = stream.next_row_group().await.map_err(|e| context(&e))? {
            let decoded =
                tokio::task::spawn_blocking(move || group.collect::<Result<Vec<RecordBatch>, _>>())
                    .await
                    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
                    .map_err(|e| context(&e))?;
            batches.extend(decoded);
        }
        cut(batches, ranges, schema, path)
    };

    // 1. The key columns of the candidate pages: which rows are hits.
    let indices: Vec<usize> = KEY_COLUMNS
        .iter()
        .map(|name| schema.index_of(name).map_err(|e| context(&e)))
        .collect::<Result<_, _>>()?;
    let key_schema = Arc::new(schema.project(&indices).map_err(|e| context(&e))?);
    let mask = ProjectionMask::columns(&descriptor, KEY_COLUMNS);
    let mut hits: Vec<Range<u64>> = Vec::new();
    for (batch, first) in read(mask, &candidates, &key_schema).await? {
        let column = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| context(&format!("{} is not a string column", KEY_COLUMNS[i])))
        };
        let (buckets, object_keys, versions) = (column(0)?, column(1)?, column(2)?);
        for i in 0..batch.num_rows() {
            let pos = first + i as u64;
            let version = versions.is_valid(i).then(|| versions.value(i));
            if hit(pos, buckets.value(i), object_keys.value(i), version) {
                match hits.last_mut() {
                    Some(last) if last.end == pos => last.end = pos + 1,
                    _ => hits.push(pos..pos + 1),
                }
            }
        }
    }
    // 2. The caller's columns of those rows alone.
    let columns = schema.fields().iter().map(|f| f.name().as_str());
    let batches = read(ProjectionMask::columns(&descriptor, columns), &hits, schema).await?;
    Ok(PageRows {
        batches,
        uncompressed,
        decoded,
    })
}

/// The rows a selection of `ranges` returned back to back, as batches of `schema` (read from
/// `path`) cut at the ranges' ends, each with the position of its first row.
fn cut(
    read: Vec<RecordBatch>,
    ranges: &[Range<u64>],
    schema: &SchemaRef,
    path: &str,
) -> Result<Vec<(RecordBatch, u64)>, Error> {
    let mut batches = Vec::new();
    let mut ranges = ranges.iter().cloned();
    let mut current = ranges.next();
    for batch in read {
        let batch = conform(batch, schema, path)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let Some(range) = current.as_mut() else {
                return Err(Error::new(
                    ErrorKind::DataInvalid,
                    format!("reading {path}: more rows than the selection"),
                ));
            };
            let take = ((range.end - range.start) as usize).min(batch.num_rows() - offset);
            batches.push((batch.slice(offset, take), range.start));
            offset += take;
            range.start += take as u64;
            if range.start == range.end {
                current = ranges.next();
            }
        }
    }
    Ok(batches)
}

/// The row ranges of the pages whose `object_key` min/max holds one of `keys`, merged and in
/// file order; `None` when the file has no column index for `object_key` to prune by.
fn candidate_rows(metadata: &ParquetMetaData, keys: &BTreeSet<Vec<u8>>) -> Option<Vec<Range<u64>>> {
    let column = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == "object_key")?;
    let (indexes, offsets) = (metadata.column_index()?, metadata.offset_index()?);
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut push = |range: Range<u64>| match out.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => out.push(range),
    };
    let mut first = 0u64;
    for (group, meta) in metadata.row_groups().iter().enumerate() {
        let rows = u64::try_from(meta.num_rows()).unwrap_or(0);
        let pages = offsets.get(group)?.get(column)?.page_locations();
        let ColumnIndexMetaData::BYTE_ARRAY(index) = indexes.get(group)?.get(column)? else {
            return None;
        };
        for (i, page) in pages.iter().enumerate() {
            let start = u64::try_from(page.first_row_index).unwrap_or(0);
            let end = pages
                .get(i + 1)
                .map_or(rows, |p| u64::try_from(p.first_row_index).unwrap_or(rows));
            let holds = match (index.min_value(i), index.max_value(i)) {
                (Some(min), Some(max)) if min <= max => keys
                    .range::<[u8], _>((Bound::Included(min), Bound::Included(max)))
                    .next()
                    .is_some(),
                // No bounds (or bounds that make no sense): the page may hold anything.
                _ => true,
            };
            if holds && start < end {
                push(first + start..first + end);
            }
        }
        first += rows;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    use parquet::file::properties::WriterProperties;

    use super::candidate_rows;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// A file of `rows` sorted keys `k000000`… with pages of 100 rows.
    fn file(rows: usize) -> Result<bytes::Bytes> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "object_key",
            DataType::Utf8,
            false,
        )]));
        let keys: Vec<String> = (0..rows).map(|i| format!("k{i:06}")).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(keys))])?;
        let properties = WriterProperties::builder()
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(100)
            .set_max_row_group_row_count(Some(1000))
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(bytes::Bytes::from(out))
    }

    fn keys(names: &[&str]) -> BTreeSet<Vec<u8>> {
        names.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    #[test]
    fn only_the_pages_that_can_hold_a_key_are_selected() -> Result {
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&file(2500)?)?;
        // One key in the second page, one in the last page of the second row group, one in
        // the third group's first page.
        let ranges = candidate_rows(&metadata, &keys(&["k000150", "k001999", "k002000"]));
        assert_eq!(ranges, Some(vec![100..200, 1900..2100]));
        // Keys between pages or outside the file select nothing.
        let none = candidate_rows(&metadata, &keys(&["a", "k000099x", "z"]));
        assert_eq!(none, Some(vec![]));
        assert_eq!(candidate_rows(&metadata, &keys(&[])), Some(vec![]));
        Ok(())
    }

    #[test]
    fn a_file_without_a_column_index_is_not_pruned() -> Result {
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Skip)
            .parse_and_finish(&file(300)?)?;
        assert_eq!(candidate_rows(&metadata, &keys(&["k000001"])), None);
        Ok(())
    }
}
