//! The warehouse on S3: the table written to an S3-compatible store (the emulator: custom
//! endpoint, path style, static keys) and read back through SQL.

#[path = "common.rs"]
mod common;

use annotable_tests::Stack;
use annotation_sql::QuerySession;
use annotation_table::{Batch, CatalogConfig, JournalTable, Source, StorageConfig, connect};
use chrono::Utc;
use common::{TestResult, rows};

#[tokio::test]
async fn the_warehouse_lives_on_an_s3_compatible_store() -> TestResult {
    let stack = Stack::start();
    stack.bucket("lake", false).await;
    let dir = tempfile::tempdir()?;
    let catalog_config = CatalogConfig::Sql {
        uri: format!("sqlite:{}", dir.path().join("catalog.db").display()),
        warehouse: "s3://lake/warehouse".into(),
    };
    let storage = StorageConfig {
        s3_endpoint: Some(stack.stack.endpoint()),
        s3_region: Some(local_stack::REGION.into()),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        s3_path_style: true,
    };
    let catalog = connect("annotable", &catalog_config, &storage).await?;
    let journal = JournalTable::open(catalog.clone(), "s3_metadata", None).await?;
    let all = rows(300, Utc::now());
    let (first, second) = all.split_at(120);
    let a = journal
        .append(Batch::new(Source::Backfill, first.to_vec()))
        .await?;
    let b = journal
        .append(Batch::new(Source::Notification, second.to_vec()))
        .await?;
    assert_eq!((a.rows, b.rows), (120, 180));

    // The files are on S3, under the warehouse prefix.
    let listed = stack
        .s3
        .list_objects_v2()
        .bucket("lake")
        .prefix("warehouse/")
        .send()
        .await?;
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    let parquet = keys.iter().filter(|k| k.ends_with(".parquet")).count();
    assert_eq!(parquet, a.data_files + b.data_files, "{keys:#?}");
    assert!(
        keys.iter().any(|k| k.ends_with(".metadata.json")),
        "{keys:#?}"
    );
    assert!(
        keys.iter()
            .all(|k| k.starts_with("warehouse/s3_metadata/annotation_journal/")),
        "{keys:#?}"
    );

    // And SQL reads them back from S3.
    let session = QuerySession::new(catalog, "test", "s3_metadata", "annotation_journal").await?;
    let result = session
        .query("SELECT count(*) AS n, count(DISTINCT bucket) AS buckets, sum(size) AS bytes FROM annotation_journal")
        .await?;
    let batch = &result.batches[0];
    let n = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(batch.column(0))
        .value(0);
    let buckets =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(batch.column(1))
            .value(0);
    let bytes = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(batch.column(2))
        .value(0);
    assert_eq!((n, buckets), (300, 2));
    assert_eq!(bytes, all.iter().filter_map(|r| r.size).sum::<i64>());
    Ok(())
}
