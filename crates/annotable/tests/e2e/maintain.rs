//! `annotable maintain` as a user runs it: the real binary on the embedded defaults. A
//! compaction killed with SIGKILL at any moment leaves a readable table with the same rows,
//! and the next run (taking over the dead run's lease) completes.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, Source, StorageConfig,
};
use chrono::Utc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn annotable(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_annotable"));
    cmd.current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ANNOTABLE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn row(commit: usize, i: usize) -> JournalRow {
    let now = Utc::now();
    let value = format!(r#"{{"commit":{commit},"i":{i}}}"#);
    JournalRow {
        bucket: "photos".into(),
        object_key: format!("album {}/img+{i}.jpg", commit % 13),
        object_version_id: None,
        object_join_key: format!("photos/album {}/img+{i}.jpg", commit % 13),
        name: Some(format!("tag-{}", commit % 3)),
        record_type: if i % 5 == 4 {
            RecordType::Delete
        } else {
            RecordType::Put
        },
        sequence_number: format!("{:020}", commit * 10 + i),
        last_modified_date: Some(now.naive_utc()),
        size: Some(value.len() as i64),
        e_tag: Some(format!("\"e{commit}-{i}\"")),
        checksum_algorithm: None,
        replication_status: None,
        text_value: Some(value),
        event_name: Some("ObjectAnnotation:Put".into()),
        event_time: Some(now),
        source: Source::Notification,
        requester: None,
        source_ip_address: None,
        request_id: Some(format!("req-{commit}-{i}")),
        ingested_at: now,
    }
}

/// The journal and the view as JSON, in a fixed order, read by `annotable query`.
fn contents(dir: &Path) -> Result<(String, String), Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for sql in [
        "SELECT * FROM annotation_journal ORDER BY request_id",
        "SELECT * FROM annotations ORDER BY bucket, object_key, name",
    ] {
        let result = annotable(dir, &["query", "--format", "ndjson", sql]).output()?;
        assert!(
            result.status.success(),
            "query failed: {}",
            text(&result.stderr)
        );
        out.push(text(&result.stdout));
    }
    let view = out.pop().unwrap_or_default();
    Ok((out.pop().unwrap_or_default(), view))
}

fn run(dir: &Path, args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
    Ok(annotable(dir, args).output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_compaction_leaves_the_table_readable_and_the_next_run_completes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let catalog = annotation_table::connect(
        "annotable",
        &CatalogConfig::embedded(&dir.path().join("annotable-data")),
        &StorageConfig::default(),
    )
    .await?;
    let table = JournalTable::open(catalog, "s3_metadata", None).await?;
    for commit in 0..200 {
        let rows = (0..5).map(|i| row(commit, i)).collect();
        table.append(Batch::new(Source::Notification, rows)).await?;
    }
    let (journal, view) = contents(dir.path())?;
    assert_eq!(journal.lines().count(), 1000);

    // Kill compactions at different moments: one while it starts up and plans, the others a
    // given time after it logged "compacting" (files being rewritten, then committed). Timed
    // from that line, not from the start, so a loaded machine does not make every kill land
    // before compaction begins.
    let mut killed_compacting = 0;
    for after_ms in [
        None,
        Some(0u64),
        Some(100),
        Some(300),
        Some(700),
        Some(1500),
        Some(3000),
    ] {
        let (killed, compacting) = kill_after(
            dir.path(),
            &["maintain", "--compact"],
            "compacting",
            after_ms,
            150,
        )?;
        if killed && compacting {
            killed_compacting += 1;
        }
        let now = contents(dir.path())?;
        assert!(
            now.0 == journal && now.1 == view,
            "the rows changed after a compaction was killed ({after_ms:?} ms after it began)"
        );
    }
    assert!(
        killed_compacting > 0,
        "no run was killed while compacting: every one finished first"
    );

    // The next run takes the dead holder's lease over and completes.
    let out = run(dir.path(), &["maintain"])?;
    assert!(
        out.status.success(),
        "maintain failed: {}",
        text(&out.stderr)
    );
    let printed = text(&out.stdout);
    println!("{printed}");
    assert!(printed.contains("after"), "{printed}");
    let after = contents(dir.path())?;
    assert!(after.0 == journal && after.1 == view, "the rows changed");
    let dry = run(dir.path(), &["maintain", "--compact", "--dry-run"])?;
    assert!(
        text(&dry.stdout).contains("nothing to do"),
        "{}",
        text(&dry.stdout)
    );
    Ok(())
}

#[test]
fn maintaining_a_table_that_does_not_exist_is_an_error_and_creates_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = annotable(dir.path(), &["maintain"]).output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("s3_metadata.annotation_journal does not exist"),
        "{err}"
    );
    let out = annotable(
        dir.path(),
        &["query", "SELECT count(*) FROM annotation_journal"],
    )
    .output()?;
    assert!(
        text(&out.stderr).contains("does not exist yet"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_retention_below_the_idempotency_lookback_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = annotable(dir.path(), &["maintain", "--expire"])
        .env("ANNOTABLE_MAINTAIN_SNAPSHOT_RETENTION_SECS", "60")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("maintain.snapshot_retention_secs") && err.contains("batch id"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_maintainer_is_refused_while_a_live_one_holds_the_lease() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = CatalogConfig::embedded(&dir.path().join("annotable-data"));
    let catalog =
        annotation_table::connect("annotable", &config, &StorageConfig::default()).await?;
    let table = JournalTable::open(catalog, "s3_metadata", None).await?;
    table
        .append(Batch::new(Source::Notification, vec![row(0, 0)]))
        .await?;
    let maintainer =
        annotation_table::Maintainer::new(table, &config, "annotable", &StorageConfig::default())
            .await?;
    // This test process is alive, so its lease is not taken over.
    let holder = annotable::lease::Holder::this_process("test");
    let held = annotable::lease::Lease::acquire(
        annotable::lease::catalog_row::CatalogRow::new(&maintainer),
        holder.clone(),
        Duration::from_secs(60),
        |_| (),
    )
    .await?
    .lease;
    let out = run(dir.path(), &["maintain"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("being maintained by another process") && err.contains(&holder.to_string()),
        "{err}"
    );
    held.release(|_| ()).await?;
    let out = run(dir.path(), &["maintain"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}

/// The embedded journal of a test directory, written to commit by commit (5 rows each).
struct Commits {
    table: JournalTable,
    next: usize,
}

impl Commits {
    async fn open(dir: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let catalog = annotation_table::connect(
            "annotable",
            &CatalogConfig::embedded(&dir.join("annotable-data")),
            &StorageConfig::default(),
        )
        .await?;
        Ok(Commits {
            table: JournalTable::open(catalog, "s3_metadata", None).await?,
            next: 0,
        })
    }

    async fn append(&mut self, commits: usize) -> TestResult {
        for _ in 0..commits {
            let rows = (0..5).map(|i| row(self.next, i)).collect();
            self.table
                .append(Batch::new(Source::Notification, rows))
                .await?;
            self.next += 1;
        }
        Ok(())
    }

    /// One commit of `objects` objects that later commits never touch: partitions big enough
    /// that a refresh writes deltas and position deletes rather than whole partitions.
    async fn append_archive(&mut self, objects: usize) -> TestResult {
        let rows = (0..objects)
            .map(|k| {
                let mut archived = row(0, 0);
                archived.object_key = format!("archive/{k}.jpg");
                archived.object_join_key = format!("photos/archive/{k}.jpg");
                archived.sequence_number = format!("{k:020}");
                archived
            })
            .collect();
        self.table
            .append(Batch::new(Source::Notification, rows))
            .await?;
        Ok(())
    }
}

/// `annotations` and the journal view, as `annotable query` prints them, in a fixed order.
fn state_and_view(dir: &Path) -> Result<(String, String), Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for table in ["annotations", "annotations_from_journal"] {
        let sql = format!("SELECT * FROM {table} ORDER BY bucket, object_key, name");
        let result = annotable(dir, &["query", "--format", "ndjson", &sql]).output()?;
        assert!(
            result.status.success(),
            "query failed: {}",
            text(&result.stderr)
        );
        out.push(text(&result.stdout));
    }
    let view = out.pop().unwrap_or_default();
    Ok((out.pop().unwrap_or_default(), view))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_killed_at_any_point_leaves_a_correct_state_and_the_next_one_continues()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let mut journal = Commits::open(dir.path()).await?;
    journal.append_archive(3000).await?;
    journal.append(60).await?;
    let first = run(dir.path(), &["maintain", "--refresh"])?;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("folded"),
        "{}",
        text(&first.stdout)
    );

    // Kill refreshes at different moments after they begin; after each, the state is the old
    // one or the new one, and either way equals the journal view at the snapshot it records.
    let mut killed_refreshing = 0;
    for after_ms in [
        None,
        Some(0u64),
        Some(20),
        Some(60),
        Some(150),
        Some(400),
        Some(1000),
    ] {
        journal.append(15).await?;
        let (killed, refreshing) = kill_after(
            dir.path(),
            &["maintain", "--refresh"],
            "refreshing the state",
            after_ms,
            100,
        )?;
        if killed && refreshing {
            killed_refreshing += 1;
        }
        let verify = run(dir.path(), &["maintain", "--verify-state"])?;
        assert!(
            verify.status.success(),
            "after a refresh killed {after_ms:?} ms in: {}\n{}",
            text(&verify.stdout),
            text(&verify.stderr)
        );
        let (state, view) = state_and_view(dir.path())?;
        assert_eq!(state, view, "annotations after a kill {after_ms:?} ms in");
    }
    assert!(
        killed_refreshing > 0,
        "no run was killed while refreshing: every one finished first"
    );

    // The next refresh takes the dead holder's lease over and brings the state up to date.
    journal.append(5).await?;
    let last = run(dir.path(), &["maintain", "--refresh", "--verify-state"])?;
    assert!(
        last.status.success(),
        "{}\n{}",
        text(&last.stdout),
        text(&last.stderr)
    );
    let printed = text(&last.stdout);
    assert!(printed.contains("equal: every row"), "{printed}");
    assert!(
        printed.contains("rows deleted by position") && !printed.contains("; 0 rows deleted"),
        "the refreshes wrote deltas and position deletes: {printed}"
    );
    let up_to_date = run(dir.path(), &["maintain", "--refresh"])?;
    assert!(
        text(&up_to_date.stdout).contains("up to date"),
        "{}",
        text(&up_to_date.stdout)
    );
    let (state, view) = state_and_view(dir.path())?;
    assert_eq!(state, view);
    assert!(state.lines().count() > 100, "{state}");

    // A rebuild from the whole journal lands on the same rows.
    let rebuild = run(
        dir.path(),
        &["maintain", "--rebuild-state", "--verify-state"],
    )?;
    assert!(rebuild.status.success(), "{}", text(&rebuild.stderr));
    assert!(
        text(&rebuild.stdout).contains("rebuilt from"),
        "{}",
        text(&rebuild.stdout)
    );
    assert_eq!(state_and_view(dir.path())?.0, state);
    Ok(())
}

/// Runs `annotable args` and SIGKILLs it `after_ms` after it logs a line containing `marker`
/// (timed from that line, not from the start, so a loaded machine does not make every kill
/// land before the work begins), or `settle_ms` after its start when `after_ms` is `None`.
/// Returns whether it was killed (rather than done first) and whether `marker` was seen.
fn kill_after(
    dir: &std::path::Path,
    args: &[&str],
    marker: &'static str,
    after_ms: Option<u64>,
    settle_ms: u64,
) -> Result<(bool, bool), Box<dyn std::error::Error>> {
    let mut child = annotable(dir, args).spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(marker) {
                let _ = tx.send(());
            }
        }
    });
    let seen = match after_ms {
        None => {
            std::thread::sleep(Duration::from_millis(settle_ms));
            false
        }
        Some(after) => {
            let seen = rx.recv_timeout(Duration::from_secs(120)).is_ok();
            let started = Instant::now();
            while seen
                && started.elapsed() < Duration::from_millis(after)
                && child.try_wait()?.is_none()
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        }
    };
    let killed = child.try_wait()?.is_none();
    if killed {
        child.kill()?; // SIGKILL
    }
    child.wait()?;
    let _ = reader.join();
    Ok((killed, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_retention_through_the_cli_keeps_annotations_exact_even_when_killed() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let mut journal = Commits::open(dir.path()).await?;
    journal.append(40).await?;
    let refreshed = run(dir.path(), &["maintain", "--refresh"])?;
    assert!(refreshed.status.success(), "{}", text(&refreshed.stderr));
    let (expected, view) = state_and_view(dir.path())?;
    assert_eq!(expected, view);

    let refused = run(dir.path(), &["maintain", "--trim-journal"])?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("maintain.journal_retention_days"),
        "{}",
        text(&refused.stderr)
    );
    // 0 days: every row the state holds may go.
    std::fs::write(
        dir.path().join("retain.toml"),
        "[maintain]\njournal_retention_days = 0\n",
    )?;
    let trim = ["--config", "retain.toml", "maintain", "--trim-journal"];

    // Killed after the base is tagged, or at once: annotations and verify-state stay exact.
    for after_ms in [Some(0u64), Some(5), None] {
        kill_after(dir.path(), &trim, "tag committed", after_ms, 300)?;
        let verify = run(dir.path(), &["maintain", "--verify-state"])?;
        assert!(
            verify.status.success(),
            "after a retention run killed {after_ms:?}: {}\n{}",
            text(&verify.stdout),
            text(&verify.stderr)
        );
        assert_eq!(state_and_view(dir.path())?.0, expected);
    }
    let done = run(dir.path(), &trim)?;
    assert!(done.status.success(), "{}", text(&done.stderr));
    let printed = text(&done.stdout);
    assert!(
        printed.contains("dropped") || printed.contains("nothing dropped"),
        "{printed}"
    );
    let history = run(
        dir.path(),
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM annotation_journal",
        ],
    )?;
    assert!(history.status.success(), "{}", text(&history.stderr));
    assert_eq!(
        text(&history.stdout).trim(),
        "n\n0",
        "every folded row is gone"
    );
    assert!(
        text(&history.stderr).contains("note: journal retention"),
        "a history query says what it covers: {}",
        text(&history.stderr)
    );
    let (state, view) = state_and_view(dir.path())?;
    assert_eq!(
        state, expected,
        "annotations keeps every current annotation"
    );
    assert_ne!(view, expected, "the journal alone no longer holds them");

    // New commits; a full maintain run ends with retention; verify and a rebuild agree.
    journal.append(20).await?;
    let full = run(dir.path(), &["--config", "retain.toml", "maintain"])?;
    assert!(full.status.success(), "{}", text(&full.stderr));
    assert!(
        text(&full.stdout).contains("retain"),
        "{}",
        text(&full.stdout)
    );
    let after = state_and_view(dir.path())?.0;
    let rebuilt = run(
        dir.path(),
        &["maintain", "--rebuild-state", "--verify-state"],
    )?;
    assert!(
        rebuilt.status.success(),
        "{}\n{}",
        text(&rebuilt.stdout),
        text(&rebuilt.stderr)
    );
    assert!(
        text(&rebuilt.stdout).contains("retention base"),
        "{}",
        text(&rebuilt.stdout)
    );
    assert_eq!(state_and_view(dir.path())?.0, after);
    assert!(
        after.lines().count() > expected.lines().count() / 2,
        "{after}"
    );
    Ok(())
}
