//! Reading only the pages of a base file that can hold the object keys a refresh touches, so
//! an incremental refresh reads what changed rather than every partition it touches in full.
//!
//! State files are sorted by (bucket, `object_key`, …) and written with small pages (the
//! tables' `write.parquet.page-row-limit`), and every page of `object_key` has a min/max in
//! the file's column index. A page whose range holds none of the touched keys holds none of
//! their rows, so only the row ranges of the other pages are fetched (by range reads, through
//! the offset index) and decoded. A file without a column index for `object_key` is read
//! whole: the pruning is an optimisation, never a filter the caller relies on (the caller
//! still matches every row it gets against the touched versions).

use std::collections::BTreeSet;
use std::ops::{Bound, Range};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use iceberg::arrow::ArrowFileReader;
use iceberg::io::FileMetadata;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::page_index::column_index::ColumnIndexMetaData;

use super::rows_bytes;
use crate::maintain::compact::conform;

/// The rows of a file that a page read returned.
pub(super) struct PageRows {
    /// Batches of the caller's schema, each with the file position of its first row: every
    /// batch covers consecutive positions.
    pub batches: Vec<(RecordBatch, u64)>,
    /// What the whole file's rows take uncompressed (its footer says), for the memory budget.
    pub uncompressed: u64,
    /// How many of the file's rows were decoded.
    pub decoded: u64,
}

/// Reads the rows of `file` (of `table`) that lie in pages whose `object_key` range holds one
/// of `keys` (UTF-8 bytes), as batches of `schema`.
pub(super) async fn read_pages(
    table: &Table,
    file: &DataFile,
    schema: &SchemaRef,
    keys: &BTreeSet<Vec<u8>>,
) -> Result<PageRows, Error> {
    let path = file.file_path();
    let context = |e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::DataInvalid, format!("reading {path}: {e}"))
    };
    let size = file.file_size_in_bytes();
    let input = table.file_io().new_input(path)?;
    let mut reader = ArrowFileReader::new(FileMetadata { size }, Box::new(input.reader().await?));
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .load_and_finish(&mut reader, size)
        .await
        .map_err(|e| context(&e))?;
    let metadata = Arc::new(metadata);
    let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0);
    let ranges =
        candidate_rows(&metadata, keys).unwrap_or_else(|| std::iter::once(0..rows).collect());
    let decoded = ranges.iter().map(|r| r.end - r.start).sum();
    let uncompressed = rows_bytes(&metadata);
    if ranges.is_empty() {
        return Ok(PageRows {
            batches: Vec::new(),
            uncompressed,
            decoded,
        });
    }
    let to_usize = |r: &Range<u64>| r.start as usize..r.end as usize;
    let selection =
        RowSelection::from_consecutive_ranges(ranges.iter().map(to_usize), rows as usize);
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let arrow_metadata =
        ArrowReaderMetadata::try_new(metadata, options).map_err(|e| context(&e))?;
    let read: Vec<RecordBatch> =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_metadata)
            .with_row_selection(selection)
            .with_batch_size(8 * 1024)
            .build()
            .map_err(|e| context(&e))?
            .try_collect()
            .await
            .map_err(|e| context(&e))?;
    // The reader returns the selected rows back to back; cut them at the ranges' ends so each
    // batch knows its positions.
    let mut batches = Vec::new();
    let mut ranges = ranges.into_iter();
    let mut current = ranges.next();
    for batch in read {
        let batch = conform(batch, schema, path)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let Some(range) = current.as_mut() else {
                return Err(context(&"more rows than the selection"));
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
    Ok(PageRows {
        batches,
        uncompressed,
        decoded,
    })
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
