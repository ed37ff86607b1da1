//! Time travel and metadata tables on a real catalog: a journal with three commits and a
//! state table refreshed between them; every past point read back equals a copy of the view
//! taken at that point, in every column, whichever way `annotations` is made up then (state
//! alone, state plus unfolded rows, or the journal).

use super::common;

use annotation_sql::{OutputFormat, QuerySession, SqlError, TimeTravel, write_result};
use annotation_table::state::StateTables;
use annotation_table::{CatalogConfig, RecordType, StorageConfig};
use chrono::Utc;
use common::{Fixture, NAMESPACE, TestResult, row, strings};

fn put(key: &str, name: &str, seq: u64, text: &str) -> annotation_table::JournalRow {
    row(
        "b",
        key,
        None,
        Some(name),
        RecordType::Put,
        seq,
        Some(text),
        Utc::now(),
    )
}

fn delete(key: &str, name: &str, seq: u64) -> annotation_table::JournalRow {
    row(
        "b",
        key,
        None,
        Some(name),
        RecordType::Delete,
        seq,
        None,
        Utc::now(),
    )
}

/// Every column of `sql`'s rows, as CSV.
async fn copy(session: &QuerySession, sql: &str) -> Result<String, Box<dyn std::error::Error>> {
    let result = session.query(sql).await?;
    let mut out = Vec::new();
    write_result(OutputFormat::Csv, &result.schema, &result.batches, &mut out)?;
    Ok(String::from_utf8(out)?)
}

const ANNOTATIONS: &str = "SELECT * FROM annotations ORDER BY bucket, object_key, name";
const JOURNAL: &str =
    "SELECT * FROM annotation_journal ORDER BY object_key, name, sequence_number, record_type";

async fn pause() {
    // Snapshot times are milliseconds: keep the points apart.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

#[tokio::test]
async fn every_past_point_reads_as_the_view_did_then() -> TestResult {
    let fixture = Fixture::new().await?;
    let state = StateTables::open(
        fixture.catalog.clone(),
        &CatalogConfig::embedded(fixture.dir.path()),
        "test",
        &StorageConfig::default(),
        NAMESPACE,
        "annotations",
    )
    .await?;
    let session = fixture.session().await?;
    let before_anything = Utc::now();
    pause().await;

    // Commit 1, folded into the state.
    fixture
        .append(vec![
            put("k1", "a", 1, "x"),
            put("k1", "b", 2, "y"),
            put("k2", "a", 3, "z"),
        ])
        .await?;
    state.refresh(&fixture.journal().await?, false).await?;
    let first = (
        copy(&session, ANNOTATIONS).await?,
        copy(&session, JOURNAL).await?,
    );
    pause().await;
    let after_first = Utc::now();
    pause().await;

    // Commit 2, not folded yet: `annotations` is the state plus the unfolded rows.
    fixture
        .append(vec![
            delete("k1", "a", 4),
            put("k2", "a", 5, "z2"),
            put("k3", "c", 6, "w"),
        ])
        .await?;
    let second = (
        copy(&session, ANNOTATIONS).await?,
        copy(&session, JOURNAL).await?,
    );
    let second_snapshot = strings(
        &session
            .query("SELECT snapshot_id FROM annotation_journal$snapshots ORDER BY committed_at DESC LIMIT 1")
            .await?,
        "snapshot_id",
    )[0]
    .clone()
    .ok_or("no snapshot")?
    .parse::<i64>()?;
    pause().await;
    state.refresh(&fixture.journal().await?, false).await?;
    pause().await;

    // Commit 3, and the present.
    fixture.append(vec![put("k4", "d", 7, "v")]).await?;
    let now = (
        copy(&session, ANNOTATIONS).await?,
        copy(&session, JOURNAL).await?,
    );
    assert_ne!(first, second);
    assert_ne!(second, now);

    // As of an instant: the journal and the state both as they were.
    let target = session
        .set_time_travel(Some(TimeTravel::AsOf(after_first)))
        .await?
        .ok_or("no target")?;
    assert!(target.journal_snapshot.is_some());
    assert_eq!(
        (
            copy(&session, ANNOTATIONS).await?,
            copy(&session, JOURNAL).await?
        ),
        first,
        "as of {after_first}"
    );
    assert_eq!(
        strings(
            &session
                .query("SELECT count(*) AS n FROM annotations_state")
                .await?,
            "n"
        ),
        vec![Some("3".into())],
        "the state table as of then"
    );

    // At a journal snapshot: the state as of its commit had not folded it in.
    let target = session
        .set_time_travel(Some(TimeTravel::Snapshot(second_snapshot)))
        .await?
        .ok_or("no target")?;
    assert_eq!(target.journal_snapshot, Some(second_snapshot));
    assert_eq!(
        (
            copy(&session, ANNOTATIONS).await?,
            copy(&session, JOURNAL).await?
        ),
        second,
        "at snapshot {second_snapshot}"
    );

    // Before the first commit: nothing.
    session
        .set_time_travel(Some(TimeTravel::AsOf(before_anything)))
        .await?;
    for sql in [
        "SELECT count(*) AS n FROM annotations",
        "SELECT count(*) AS n FROM annotation_journal",
    ] {
        assert_eq!(
            strings(&session.query(sql).await?, "n"),
            vec![Some("0".into())],
            "{sql}"
        );
    }

    // A snapshot the journal never had is refused, and the setting is kept.
    match session
        .set_time_travel(Some(TimeTravel::Snapshot(42)))
        .await
    {
        Err(e @ SqlError::TimeTravel { .. }) => {
            assert!(e.to_string().contains("snapshot 42"), "{e}")
        }
        other => panic!("expected a time-travel error, got {other:?}"),
    }

    // Back to the present.
    assert!(session.set_time_travel(None).await?.is_none());
    assert_eq!(
        (
            copy(&session, ANNOTATIONS).await?,
            copy(&session, JOURNAL).await?
        ),
        now
    );
    Ok(())
}

#[tokio::test]
async fn metadata_tables_describe_snapshots_history_refs_manifests_and_files() -> TestResult {
    let fixture = Fixture::new().await?;
    fixture.append(vec![put("k1", "a", 1, "x")]).await?;
    fixture
        .append(vec![put("k2", "a", 2, "y"), put("k3", "a", 3, "z")])
        .await?;
    let session = fixture.session().await?;
    let one = |sql: &'static str, column: &'static str| {
        let session = &session;
        async move { Ok::<_, Box<dyn std::error::Error>>(strings(&session.query(sql).await?, column)) }
    };

    // Every append's batch id and writer are in its summary.
    assert_eq!(
        one(
            "SELECT count(*) AS n FROM annotation_journal$snapshots \
             WHERE summary['annotable.batch-id'] IS NOT NULL \
               AND summary['annotable.writer'] IS NOT NULL AND operation = 'append'",
            "n"
        )
        .await?,
        vec![Some("2".into())]
    );
    assert_eq!(
        one(
            "SELECT count(*) AS n FROM annotation_journal$history WHERE is_current_ancestor",
            "n"
        )
        .await?,
        vec![Some("2".into())]
    );
    assert_eq!(
        one(
            "SELECT r.name AS n FROM annotation_journal$refs r \
             JOIN annotation_journal$snapshots s ON r.snapshot_id = s.snapshot_id \
             WHERE s.parent_id IS NOT NULL",
            "n"
        )
        .await?,
        vec![Some("main".into())]
    );
    // The files hold exactly the journal's rows.
    assert_eq!(
        one(
            "SELECT CAST(sum(record_count) AS BIGINT) AS n FROM annotation_journal$files WHERE content = 0",
            "n"
        )
        .await?,
        vec![Some("3".into())]
    );
    assert_eq!(
        one(
            "SELECT count(*) AS n FROM annotation_journal$files f \
             WHERE f.file_format = 'PARQUET' AND f.record_count > 0",
            "n"
        )
        .await?,
        one("SELECT count(*) AS n FROM annotation_journal$files", "n").await?
    );
    let manifests = one(
        "SELECT count(*) AS n FROM annotation_journal$manifests",
        "n",
    )
    .await?;
    assert!(
        manifests[0].as_deref().is_some_and(|n| n != "0"),
        "{manifests:?}"
    );
    // A metadata table of a table that does not exist is an unknown table.
    assert!(matches!(
        session.query("SELECT * FROM nothing$snapshots").await,
        Err(SqlError::UnknownTable { .. })
    ));
    Ok(())
}
