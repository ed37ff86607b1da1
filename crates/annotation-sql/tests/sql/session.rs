//! The query session against a real embedded catalog: freshness without restart, read-only
//! refusals, clear errors, output formats.

use super::common;

use annotation_sql::{OutputFormat, SqlError, write_result};
use annotation_table::RecordType;
use chrono::Utc;
use common::{Fixture, TestResult, row, strings};

fn put(bucket: &str, key: &str, name: &str, seq: u64, text: &str) -> annotation_table::JournalRow {
    row(
        bucket,
        key,
        None,
        Some(name),
        RecordType::Put,
        seq,
        Some(text),
        Utc::now(),
    )
}

#[tokio::test]
async fn tables_and_snapshots_created_after_the_session_started_are_visible() -> TestResult {
    let fixture = Fixture::new().await?;
    let session = fixture.session().await?;

    // Nothing ingested yet: the journal and the views say so.
    for sql in [
        "SELECT * FROM annotations",
        "SELECT count(*) FROM annotation_journal",
    ] {
        match session.query(sql).await {
            Err(e @ SqlError::TableNotCreated { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("s3_metadata.annotation_journal")
                        && text.contains("annotable serve"),
                    "{text}"
                );
            }
            other => panic!("{sql}: expected TableNotCreated, got {other:?}"),
        }
    }

    fixture.append(vec![put("b", "one", "n", 1, "v1")]).await?;
    let count = "SELECT count(*) AS n FROM annotations";
    assert_eq!(
        strings(&session.query(count).await?, "n"),
        vec![Some("1".into())]
    );

    fixture.append(vec![put("b", "two", "n", 2, "v2")]).await?;
    assert_eq!(
        strings(&session.query(count).await?, "n"),
        vec![Some("2".into())]
    );

    // information_schema knows the views and the journal
    let tables = session
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 's3_metadata' ORDER BY table_name")
        .await?;
    assert_eq!(
        strings(&tables, "table_name"),
        vec![
            Some("annotation_journal".into()),
            Some("annotations".into()),
            Some("annotations_from_journal".into())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn writes_are_refused_and_errors_say_what_and_where() -> TestResult {
    let fixture = Fixture::new().await?;
    fixture.append(vec![put("b", "k", "n", 1, "v")]).await?;
    let session = fixture.session().await?;
    for sql in [
        "DROP TABLE annotation_journal",
        "INSERT INTO annotation_journal SELECT * FROM annotation_journal",
        "DELETE FROM annotation_journal",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/annotable-copy-test.csv'",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        match session.query(sql).await {
            Err(e @ SqlError::ReadOnly { .. }) => {
                assert!(e.to_string().contains("read-only"), "{e}")
            }
            other => panic!("{sql}: expected ReadOnly, got {other:?}"),
        }
    }
    assert!(!std::path::Path::new("/tmp/annotable-copy-test.csv").exists());

    for (sql, place) in [
        (
            "SELECT name FROM annotations WHER name = 'x'",
            "Line: 1, Column: 35",
        ),
        (
            "SELECT name\nFROM annotations\nWHERE",
            "at the end of the SQL",
        ),
    ] {
        match session.query(sql).await {
            Err(e @ SqlError::InvalidSql { .. }) => {
                assert!(
                    e.to_string().contains(place),
                    "the parse error should say where: {e}"
                )
            }
            other => panic!("expected InvalidSql, got {other:?}"),
        }
    }
    match session
        .query("SELECT no_such_column FROM annotations")
        .await
    {
        Err(e @ SqlError::InvalidSql { .. }) => {
            assert!(e.to_string().contains("no_such_column"), "{e}")
        }
        other => panic!("expected InvalidSql, got {other:?}"),
    }
    match session.query("SELECT * FROM anotations").await {
        Err(e @ SqlError::UnknownTable { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("anotations") && text.contains("annotations, annotation_journal")
                    || text.contains("annotation_journal, annotations"),
                "{text}"
            );
            assert!(!e.is_retryable());
        }
        other => panic!("expected UnknownTable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn json_functions_filter_on_annotation_content() -> TestResult {
    let fixture = Fixture::new().await?;
    fixture
        .append(vec![
            put(
                "b",
                "a.jpg",
                "meta",
                1,
                r#"{"status":"approved","score":7,"nested":{"ok":true}}"#,
            ),
            put(
                "b",
                "b.jpg",
                "meta",
                2,
                r#"{"status":"rejected","score":2}"#,
            ),
            put("b", "c.jpg", "meta", 3, "not json"),
        ])
        .await?;
    let session = fixture.session().await?;
    let check = |sql: &'static str, want: Vec<&'static str>| {
        let session = &session;
        async move {
            let result = session.query(sql).await?;
            let got: Vec<String> = strings(&result, "object_key")
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(got, want, "{sql}");
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };
    check(
        "SELECT object_key FROM annotations WHERE json_get_str(text_value, 'status') = 'approved'",
        vec!["a.jpg"],
    )
    .await?;
    check("SELECT object_key FROM annotations WHERE json_get_int(text_value, 'score') > 1 ORDER BY object_key", vec!["a.jpg", "b.jpg"]).await?;
    check(
        "SELECT object_key FROM annotations WHERE json_get_bool(text_value, 'nested', 'ok')",
        vec!["a.jpg"],
    )
    .await?;
    check(
        "SELECT object_key FROM annotations WHERE json_contains(text_value, 'nested')",
        vec!["a.jpg"],
    )
    .await?;
    check(
        "SELECT object_key FROM annotations WHERE (text_value->>'status') = 'rejected'",
        vec!["b.jpg"],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn every_output_format_writes_the_result() -> TestResult {
    let fixture = Fixture::new().await?;
    fixture
        .append(vec![
            put("b", "k 1+ü", "n", 1, "hello \"world\""),
            put("b", "k2", "m", 2, "x"),
        ])
        .await?;
    let session = fixture.session().await?;
    let result = session
        .query("SELECT object_key, name, text_value, size FROM annotations ORDER BY object_key")
        .await?;
    let render = |format| -> Result<String, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        write_result(format, &result.schema, &result.batches, &mut out)?;
        Ok(String::from_utf8(out)?)
    };

    let json: serde_json::Value = serde_json::from_str(&render(OutputFormat::Json)?)?;
    assert_eq!(json[0]["object_key"], "k 1+ü");
    assert_eq!(json[0]["text_value"], "hello \"world\"");
    assert_eq!(json[1]["size"], 1);

    let ndjson = render(OutputFormat::Ndjson)?;
    let lines: Vec<serde_json::Value> = ndjson
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["name"], "m");

    let csv = render(OutputFormat::Csv)?;
    assert_eq!(csv.lines().next(), Some("object_key,name,text_value,size"));
    assert!(csv.contains("\"hello \"\"world\"\"\""), "{csv}");

    let table = render(OutputFormat::Table)?;
    assert!(
        table.contains("| object_key") && table.contains("k 1+ü"),
        "{table}"
    );

    let mut parquet = Vec::new();
    write_result(
        OutputFormat::Parquet,
        &result.schema,
        &result.batches,
        &mut parquet,
    )?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(parquet),
    )?
    .build()?;
    let rows: usize = reader
        .map(|b| b.map(|b| b.num_rows()))
        .sum::<Result<_, _>>()?;
    assert_eq!(rows, 2);

    // No rows: still valid JSON and a CSV header.
    let empty = session
        .query("SELECT object_key FROM annotations WHERE name = 'none'")
        .await?;
    let mut out = Vec::new();
    write_result(OutputFormat::Json, &empty.schema, &empty.batches, &mut out)?;
    assert_eq!(String::from_utf8(out)?.trim(), "[]");
    let mut out = Vec::new();
    write_result(OutputFormat::Csv, &empty.schema, &empty.batches, &mut out)?;
    assert_eq!(String::from_utf8(out)?.trim(), "object_key");
    Ok(())
}

#[tokio::test]
async fn scans_spread_the_snapshot_files_over_partitions_and_lose_no_row() -> TestResult {
    let fixture = Fixture::new().await?;
    // Five commits: five data files (one bucket, one day each).
    for commit in 0..5u64 {
        let rows = (0..40u64)
            .map(|i| {
                put(
                    "b",
                    &format!("k{commit}-{i:02}"),
                    "n",
                    commit * 100 + i,
                    "v",
                )
            })
            .collect();
        fixture.append(rows).await?;
    }
    let session = fixture.session().await?;
    let partitions = session
        .context()
        .state()
        .config()
        .target_partitions()
        .min(5);

    let plan = session
        .query("EXPLAIN SELECT object_key FROM annotation_journal WHERE name = 'n'")
        .await?;
    let text = strings(&plan, "plan")
        .into_iter()
        .flatten()
        .collect::<String>();
    // Local files: DataFusion's Parquet source reads all five (`local_scan`), with the filter
    // pushed into it for pruning.
    assert!(
        text.contains(&format!(
            "DataSourceExec: file_groups={{{partitions} groups"
        )) && text.contains("file_type=parquet, predicate=name@")
            && text.matches(".parquet").count() == 5,
        "{text}"
    );

    let one = |sql: &'static str| {
        let session = &session;
        async move { Ok::<_, SqlError>(strings(&session.query(sql).await?, "n")) }
    };
    // Every row once, whichever partition read it; filters and limits still hold.
    assert_eq!(
        one("SELECT count(*) AS n FROM annotation_journal").await?,
        vec![Some("200".into())]
    );
    assert_eq!(
        one("SELECT count(DISTINCT object_key) AS n FROM annotations").await?,
        vec![Some("200".into())]
    );
    assert_eq!(
        one("SELECT count(*) AS n FROM annotation_journal WHERE object_key LIKE 'k3-%'").await?,
        vec![Some("40".into())]
    );
    assert_eq!(
        one("SELECT count(*) AS n FROM (SELECT * FROM annotation_journal LIMIT 7)").await?,
        vec![Some("7".into())]
    );
    Ok(())
}

/// Issue 19, item 5: the `annotations` view scans the journal several times, and a commit
/// landing between two of those scans must not let them see different snapshots (rows would
/// vanish from the join). Every scan of one statement reads the snapshot its first scan
/// loaded; the next statement sees the commit.
#[tokio::test]
async fn every_scan_of_one_statement_reads_one_snapshot() -> TestResult {
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use std::sync::Arc;
    let fixture = Fixture::new().await?;
    fixture.append(vec![put("b", "one", "n", 1, "v1")]).await?;
    let session = fixture.session().await?;
    let ctx = session.context();
    let rows = |plan: Arc<dyn ExecutionPlan>| {
        let task = ctx.task_ctx();
        async move {
            let batches = collect(plan, task).await?;
            Ok::<usize, datafusion::error::DataFusionError>(
                batches.iter().map(|b| b.num_rows()).sum(),
            )
        }
    };
    // The same provider a statement resolves, planned twice for one statement.
    let statement = ctx.state();
    let journal = ctx.table_provider("annotation_journal").await?;
    let first = journal.scan(&statement, None, &[], None).await?;
    fixture.append(vec![put("b", "two", "n", 2, "v2")]).await?;
    // A provider resolved again by name (as each `FROM annotation_journal` of a view is).
    let again = ctx.table_provider("annotation_journal").await?;
    let second = again.scan(&statement, None, &[], None).await?;
    assert_eq!(rows(first).await?, 1);
    assert_eq!(
        rows(second).await?,
        1,
        "a second scan of the same statement read another snapshot"
    );
    // The next statement reads the new snapshot.
    let next = journal.scan(&ctx.state(), None, &[], None).await?;
    assert_eq!(rows(next).await?, 2);
    Ok(())
}
