//! Position-delete files of the state tables: reading which rows of a data file are deleted,
//! and writing one partition's deletes as an Iceberg position-delete file (`file_path`, `pos`,
//! sorted by both, with the spec's reserved field ids) that every engine applies.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use iceberg::spec::{DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::maintain::compact::arrow_error;

/// The reserved field ids of a position-delete file's columns (Iceberg spec, "Position
/// Delete Files").
const FIELD_FILE_PATH: i32 = 2_147_483_546;
const FIELD_POS: i32 = 2_147_483_545;

/// Rows deleted by position, by data file path.
pub(super) type Positions = HashMap<String, HashSet<u64>>;

/// The positions one position-delete file (its bytes; `path` names it in errors) deletes, by
/// data file path, in file order. Shared with the SQL reader, which applies them itself.
pub fn parse_positions(
    bytes: bytes::Bytes,
    path: &str,
) -> Result<HashMap<String, Vec<u64>>, Error> {
    let invalid = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("reading {path} as a position-delete file (file_path, pos): {e}"),
        )
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| invalid(&e))?;
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| invalid(&e))?;
        let paths = batch
            .column_by_name("file_path")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let positions = batch
            .column_by_name("pos")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
        let (Some(paths), Some(positions)) = (paths, positions) else {
            return Err(invalid(&"no string file_path or long pos column"));
        };
        for i in 0..batch.num_rows() {
            if paths.is_null(i) || positions.is_null(i) {
                return Err(invalid(&"a null file_path or pos"));
            }
            let pos = u64::try_from(positions.value(i)).map_err(|_| invalid(&"a negative pos"))?;
            out.entry(paths.value(i).to_string()).or_default().push(pos);
        }
    }
    Ok(out)
}

/// Reads position-delete files into the positions they delete.
pub(super) async fn read(table: &Table, files: &[DataFile]) -> Result<Positions, Error> {
    let mut out = Positions::new();
    for file in files {
        let bytes = table.file_io().new_input(file.file_path())?.read().await?;
        let path = file.file_path().to_string();
        let parsed = tokio::task::spawn_blocking(move || parse_positions(bytes, &path))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))??;
        for (data_file, positions) in parsed {
            out.entry(data_file).or_default().extend(positions);
        }
    }
    Ok(out)
}

/// Writes `positions` (data file path → deleted rows) as one position-delete file in the
/// partition of `like` (a data file of that partition), next to it. `None` when there is
/// nothing to delete.
pub(super) async fn write(
    table: &Table,
    like: &DataFile,
    positions: &BTreeMap<String, BTreeSet<u64>>,
    prefix: &str,
) -> Result<Option<DataFile>, Error> {
    let rows: usize = positions.values().map(BTreeSet::len).sum();
    if rows == 0 {
        return Ok(None);
    }
    let field = |name: &str, data_type: DataType, id: i32| {
        Field::new(name, data_type, false).with_metadata(
            [(
                parquet::arrow::PARQUET_FIELD_ID_META_KEY.to_string(),
                id.to_string(),
            )]
            .into(),
        )
    };
    let schema = Arc::new(Schema::new(vec![
        field("file_path", DataType::Utf8, FIELD_FILE_PATH),
        field("pos", DataType::Int64, FIELD_POS),
    ]));
    // BTree order is the order the spec asks for: by file path, then position.
    let (mut paths, mut offsets) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for (path, set) in positions {
        for &pos in set {
            paths.push(path.as_str());
            offsets.push(i64::try_from(pos).unwrap_or(i64::MAX));
        }
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(paths)),
            Arc::new(Int64Array::from(offsets)),
        ],
    )
    .map_err(arrow_error)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Error> {
        let mut buffer = Vec::new();
        let parquet = |e: parquet::errors::ParquetError| {
            Error::new(
                ErrorKind::Unexpected,
                format!("writing a position-delete file: {e}"),
            )
        };
        let mut writer =
            ArrowWriter::try_new(&mut buffer, schema, Some(properties)).map_err(parquet)?;
        writer.write(&batch).map_err(parquet)?;
        writer.close().map_err(parquet)?;
        Ok(buffer)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))??;

    let dir = like.file_path().rsplit_once('/').map_or("", |(dir, _)| dir);
    let path = format!("{dir}/{prefix}-deletes-{}.parquet", uuid::Uuid::now_v7());
    let size = bytes.len() as u64;
    table
        .file_io()
        .new_output(&path)?
        .write(bytes::Bytes::from(bytes))
        .await?;
    let (first, last) = match (positions.keys().next(), positions.keys().next_back()) {
        (Some(first), Some(last)) => (first.clone(), last.clone()),
        _ => return Ok(None),
    };
    let single = (positions.len() == 1).then(|| first.clone());
    let file = DataFileBuilder::default()
        .content(DataContentType::PositionDeletes)
        .file_path(path)
        .file_format(DataFileFormat::Parquet)
        .partition(like.partition().clone())
        .partition_spec_id(table.metadata().default_partition_spec_id())
        .record_count(rows as u64)
        .file_size_in_bytes(size)
        // Bounds on file_path let readers match the deletes to the files they name.
        .lower_bounds([(FIELD_FILE_PATH, Datum::string(first))].into())
        .upper_bounds([(FIELD_FILE_PATH, Datum::string(last))].into())
        .referenced_data_file(single)
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("describing a position-delete file: {e}"),
            )
        })?;
    Ok(Some(file))
}
