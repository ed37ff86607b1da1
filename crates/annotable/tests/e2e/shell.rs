//! `annotable query` as a shell on a real pseudo-terminal (driven by `support/pty_shell.py`),
//! and the one-shot command's time travel, row limit and summary line.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, Source, StorageConfig,
};
use chrono::Utc;

use super::query::{annotable, put, text};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn delete(key: &str, name: &str, seq: u64) -> JournalRow {
    JournalRow {
        record_type: RecordType::Delete,
        text_value: None,
        size: None,
        event_name: Some("ObjectAnnotation:Delete".into()),
        ..put(key, name, seq, "")
    }
}

/// The journal of the binary's embedded default catalog in `dir`.
async fn journal(dir: &Path) -> Result<JournalTable, Box<dyn std::error::Error>> {
    let catalog = annotation_table::connect(
        "annotable",
        &CatalogConfig::embedded(&dir.join("annotable-data")),
        &StorageConfig::default(),
    )
    .await?;
    Ok(JournalTable::open(catalog, "s3_metadata", None).await?)
}

/// Types `lines` into the shell on a pty; returns the screen and the exit status line.
fn drive_shell(
    dir: &Path,
    history: &Path,
    lines: &[&str],
) -> Result<String, Box<dyn std::error::Error>> {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/support/pty_shell.py");
    let mut child = Command::new("python3")
        .arg(driver)
        .arg(env!("CARGO_BIN_EXE_annotable"))
        .arg(dir)
        .arg(history)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(serde_json::to_string(lines)?.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "the pty driver failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

#[tokio::test]
async fn the_shell_runs_statements_meta_commands_and_time_travel_on_a_terminal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = journal(dir.path()).await?;
    journal
        .append(Batch::new(
            Source::Notification,
            vec![
                put("a.jpg", "review", 1, "ok"),
                put("b.jpg", "review", 2, "no"),
            ],
        ))
        .await?;
    let history = dir.path().join("state/history");

    let screen = drive_shell(
        dir.path(),
        &history,
        &[
            "\\dt",
            "SELECT object_key, text_value",
            "  FROM annotations",
            "  ORDER BY object_key;",
            "\\timing",
            "SELECT count(*) AS n FROM annotations;",
            "\\d annotations",
            "\\maxrows 1",
            "SELECT object_key FROM annotations ORDER BY object_key;",
            "\\as-of 2000-01-01",
            "SELECT count(*) AS empty_then FROM annotations;",
            "\\as-of off",
            "SELECT count(*) FROM generate_series(1, 5000000000) t(v) WHERE v % 7 = 3;",
            "<ctrl-c>",
            "SELECT nonsense FROM nowhere;",
            "\\q",
        ],
    )?;
    let expect = |what: &str, why: &str| {
        assert!(
            screen.contains(what),
            "{why}: no {what:?} on the screen:\n{screen}"
        );
    };
    expect(
        "annotable-> ",
        "a statement over three lines prompts for more",
    );
    expect("annotation_journal", "\\dt lists the journal");
    expect("| annotations ", "\\dt lists annotations");
    expect(
        "| a.jpg      | ok  ",
        "the multi-line statement's first row",
    );
    expect(
        "| b.jpg      | no  ",
        "the multi-line statement's second row",
    );
    expect("(2 rows)", "the row count");
    expect("Timing is on.", "\\timing");
    assert!(
        regex_like_timing(&screen),
        "\\timing shows the time of a statement:\n{screen}"
    );
    expect("text_value", "\\d lists the columns");
    expect("(2 rows, the first 1 shown (", "\\maxrows cuts the table");
    expect(
        "the journal had no rows yet",
        "\\as-of before the first commit",
    );
    expect("| 0          |", "annotations as of 2000 is empty");
    expect("cancelled", "Ctrl-C cancels a running statement");
    expect(
        "error: unknown table nowhere",
        "an error leaves the shell running",
    );
    assert!(screen.trim_end().ends_with("exit: 0"), "{screen}");

    // The history survives the session, statements as typed (multi-line ones joined).
    let saved = std::fs::read_to_string(&history)?;
    assert!(
        saved.contains("SELECT count(*) AS n FROM annotations;"),
        "{saved}"
    );
    assert!(saved.contains("\\timing"), "{saved}");
    Ok(())
}

/// Whether the screen shows `(1 row (0.012 s))`-style timing.
fn regex_like_timing(screen: &str) -> bool {
    screen.lines().any(|line| {
        line.trim()
            .strip_prefix("(1 row (")
            .and_then(|rest| rest.strip_suffix(" s))"))
            .is_some_and(|secs| secs.parse::<f64>().is_ok())
    })
}

#[tokio::test]
async fn query_travels_in_time_and_streams_with_a_summary_on_stderr() -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = journal(dir.path()).await?;
    journal
        .append(Batch::new(
            Source::Notification,
            vec![put("a.jpg", "review", 1, "ok")],
        ))
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = Utc::now().to_rfc3339();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    journal
        .append(Batch::new(
            Source::Notification,
            vec![
                delete("a.jpg", "review", 2),
                put("c.jpg", "review", 3, "new"),
            ],
        ))
        .await?;
    let sql = "SELECT object_key, text_value FROM annotations ORDER BY object_key";

    let now = annotable(dir.path(), &["query", "--format", "csv", sql], None)?;
    assert!(now.status.success(), "{}", text(&now.stderr));
    assert_eq!(text(&now.stdout), "object_key,text_value\nc.jpg,new\n");
    assert!(
        text(&now.stderr).contains("1 row ("),
        "{}",
        text(&now.stderr)
    );

    let then = annotable(
        dir.path(),
        &["query", "--format", "csv", "--as-of", &between, sql],
        None,
    )?;
    assert!(then.status.success(), "{}", text(&then.stderr));
    assert_eq!(text(&then.stdout), "object_key,text_value\na.jpg,ok\n");
    assert!(
        text(&then.stderr).contains("as of ") && text(&then.stderr).contains("journal snapshot"),
        "{}",
        text(&then.stderr)
    );

    // The first snapshot by id, found through the metadata table.
    let first = annotable(
        dir.path(),
        &[
            "query",
            "--format",
            "csv",
            "-q",
            "SELECT snapshot_id FROM annotation_journal$snapshots ORDER BY committed_at LIMIT 1",
        ],
        None,
    )?;
    let id = text(&first.stdout)
        .lines()
        .nth(1)
        .ok_or("no snapshot id")?
        .to_string();
    assert!(
        first.stderr.is_empty(),
        "-q prints nothing: {}",
        text(&first.stderr)
    );
    let at = annotable(
        dir.path(),
        &["query", "--format", "csv", "--snapshot", &id, sql],
        None,
    )?;
    assert!(at.status.success(), "{}", text(&at.stderr));
    assert_eq!(text(&at.stdout), "object_key,text_value\na.jpg,ok\n");

    // Bad points are refused with what to give instead.
    let bad = annotable(dir.path(), &["query", "--as-of", "yesterday", sql], None)?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("RFC 3339"),
        "{}",
        text(&bad.stderr)
    );
    let bad = annotable(dir.path(), &["query", "--snapshot", "42", sql], None)?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("snapshot 42") && text(&bad.stderr).contains("$snapshots"),
        "{}",
        text(&bad.stderr)
    );

    // --maxrows cuts a table and says so.
    let cut = annotable(
        dir.path(),
        &[
            "query",
            "--maxrows",
            "1",
            "SELECT * FROM annotation_journal",
        ],
        None,
    )?;
    assert!(cut.status.success(), "{}", text(&cut.stderr));
    assert!(
        text(&cut.stderr).contains("3 rows, the first 1 shown"),
        "{}",
        text(&cut.stderr)
    );
    Ok(())
}
