//! `annotable query` as a user runs it: the real binary, embedded defaults (no config file, a
//! fresh working directory), SQL from an argument, a file or stdin, every format.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, Source, StorageConfig,
};
use chrono::Utc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) fn annotable(
    dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, Box<dyn std::error::Error>> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_annotable"));
    cmd.current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ANNOTABLE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

pub(crate) fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

pub(crate) fn put(key: &str, name: &str, seq: u64, value: &str) -> JournalRow {
    let now = Utc::now();
    JournalRow {
        bucket: "photos".into(),
        object_key: key.into(),
        object_version_id: None,
        object_join_key: format!("photos/{key}"),
        name: Some(name.into()),
        record_type: RecordType::Put,
        sequence_number: format!("{seq:020}"),
        last_modified_date: Some(now.naive_utc()),
        size: Some(value.len() as i64),
        e_tag: None,
        checksum_algorithm: None,
        replication_status: None,
        text_value: Some(value.into()),
        event_name: Some("ObjectAnnotation:Put".into()),
        event_time: Some(now),
        source: Source::Notification,
        requester: None,
        source_ip_address: None,
        request_id: None,
        ingested_at: now,
    }
}

#[tokio::test]
async fn query_works_on_the_embedded_defaults_with_no_config() -> TestResult {
    let dir = tempfile::tempdir()?;

    // Before anything is ingested: a clear error, exit status 1.
    let out = annotable(
        dir.path(),
        &["query", "--format", "json", "SELECT * FROM annotations"],
        None,
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not exist yet"),
        "{}",
        text(&out.stderr)
    );

    // Ingest into the same embedded catalog the binary uses by default.
    // The SQL catalog scopes tables by catalog name: the binary's default is "annotable".
    let catalog = annotation_table::connect(
        "annotable",
        &CatalogConfig::embedded(&dir.path().join("annotable-data")),
        &StorageConfig::default(),
    )
    .await?;
    JournalTable::open(catalog, "s3_metadata", None)
        .await?
        .append(Batch::new(
            Source::Notification,
            vec![
                put("a.jpg", "review", 1, r#"{"status":"approved"}"#),
                put("b.jpg", "review", 2, r#"{"status":"rejected"}"#),
            ],
        ))
        .await?;

    let sql = "SELECT object_key, json_get_str(text_value, 'status') AS status FROM annotations ORDER BY object_key";
    let out = annotable(dir.path(), &["query", "--format", "json", sql], None)?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        json,
        serde_json::json!([
            {"object_key": "a.jpg", "status": "approved"},
            {"object_key": "b.jpg", "status": "rejected"},
        ])
    );

    // stdin and --file give the same answer; csv and ndjson too.
    let out = annotable(dir.path(), &["query", "--format", "csv"], Some(sql))?;
    assert_eq!(
        text(&out.stdout),
        "object_key,status\na.jpg,approved\nb.jpg,rejected\n",
        "{}",
        text(&out.stderr)
    );
    std::fs::write(dir.path().join("q.sql"), sql)?;
    let out = annotable(
        dir.path(),
        &["query", "--format", "ndjson", "--file", "q.sql"],
        None,
    )?;
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stderr)
    );
    let out = annotable(dir.path(), &["query", sql], None)?;
    assert!(
        text(&out.stdout).contains("| a.jpg"),
        "{}",
        text(&out.stdout)
    );

    // Parquet goes to a file, and says so when there is none.
    let out = annotable(dir.path(), &["query", "--format", "parquet", sql], None)?;
    assert!(
        !out.status.success() && text(&out.stderr).contains("--output"),
        "{}",
        text(&out.stderr)
    );
    let out = annotable(
        dir.path(),
        &["query", "--format", "parquet", "--output", "r.parquet", sql],
        None,
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = std::fs::File::open(dir.path().join("r.parquet"))?;
    let rows: i64 = parquet::file::reader::SerializedFileReader::new(file).map(|r| {
        parquet::file::reader::FileReader::metadata(&r)
            .file_metadata()
            .num_rows()
    })?;
    assert_eq!(rows, 2);

    // Writes are refused; bad SQL says where.
    let out = annotable(
        dir.path(),
        &["query", "DELETE FROM annotation_journal"],
        None,
    )?;
    assert!(
        text(&out.stderr).contains("read-only"),
        "{}",
        text(&out.stderr)
    );
    let out = annotable(
        dir.path(),
        &["query", "SELECT * FROM annotations WHER 1"],
        None,
    )?;
    assert!(
        text(&out.stderr).contains("Line: 1"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
