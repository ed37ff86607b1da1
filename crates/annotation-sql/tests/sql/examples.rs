//! Runs every example query of `queries/*.sql` against one hand-built journal and checks
//! what each returns, so the examples users copy keep working (and keep meaning what their
//! comment says).

use super::common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use annotation_table::RecordType::{Delete, ObjectReset, Put};
use chrono::{Duration, Utc};
use common::{Fixture, TestResult, row, strings};

fn examples() -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../queries");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let sql = std::fs::read_to_string(&path)?;
            assert!(
                sql.starts_with("-- "),
                "{} must start with a one-line comment",
                path.display()
            );
            out.insert(name, sql);
        }
    }
    Ok(out)
}

fn column(result: &annotation_sql::QueryResult, name: &str) -> Vec<String> {
    strings(result, name)
        .into_iter()
        .map(|v| v.unwrap_or_else(|| "NULL".into()))
        .collect()
}

#[tokio::test]
async fn every_example_query_runs_and_answers_its_question() -> TestResult {
    let fixture = Fixture::new().await?;
    let now = Utc::now();
    let old = now - Duration::hours(3);
    let approved = r#"{"status":"approved","reviewer":"ana"}"#;
    fixture
        .append(vec![
            // photos/cats/tom.jpg, versioned: reviewed and owned; an old version was reset.
            row(
                "photos",
                "cats/tom.jpg",
                Some("v1"),
                Some("review"),
                Put,
                1,
                Some(r#"{"status":"pending"}"#),
                old,
            ),
            row(
                "photos",
                "cats/tom.jpg",
                Some("v1"),
                None,
                ObjectReset,
                2,
                None,
                old,
            ),
            row(
                "photos",
                "cats/tom.jpg",
                Some("v2"),
                Some("review"),
                Put,
                3,
                Some(approved),
                now,
            ),
            row(
                "photos",
                "cats/tom.jpg",
                Some("v2"),
                Some("owner"),
                Put,
                4,
                Some("team-a"),
                now,
            ),
            // photos/dogs/rex.jpg, unversioned: rejected, no owner (deleted).
            row(
                "photos",
                "dogs/rex.jpg",
                None,
                Some("review"),
                Put,
                5,
                Some(r#"{"status":"rejected"}"#),
                old,
            ),
            row(
                "photos",
                "dogs/rex.jpg",
                None,
                Some("owner"),
                Put,
                6,
                Some("team-b"),
                old,
            ),
            row(
                "photos",
                "dogs/rex.jpg",
                None,
                Some("owner"),
                Delete,
                7,
                None,
                now,
            ),
            // docs/a b+c.txt: approved, owned.
            row(
                "docs",
                "a b+c.txt",
                None,
                Some("review"),
                Put,
                8,
                Some(r#"{"status":"approved","reviewer":"bo"}"#),
                old,
            ),
            row(
                "docs",
                "a b+c.txt",
                None,
                Some("owner"),
                Put,
                9,
                Some("team-c"),
                old,
            ),
        ])
        .await?;
    let examples_rows = strings(
        &fixture
            .session()
            .await?
            .query("SELECT count(*) AS n FROM annotation_journal")
            .await?,
        "n",
    )[0]
    .clone()
    .unwrap_or_default();
    let session = fixture.session().await?;
    let examples = examples()?;
    assert!(examples.len() >= 5, "at least five example queries");

    for (name, sql) in &examples {
        let result = session
            .query(sql)
            .await
            .map_err(|e| format!("queries/{name}.sql: {e}"))?;
        match name.as_str() {
            "objects_by_annotation_value" => {
                assert_eq!(
                    column(&result, "object_key"),
                    ["a b+c.txt", "cats/tom.jpg"],
                    "{name}"
                );
                assert_eq!(column(&result, "reviewer"), ["bo", "ana"], "{name}");
            }
            "changed_last_hour" => {
                let mut got: Vec<String> = column(&result, "record_type");
                got.sort();
                assert_eq!(got, ["DELETE", "PUT", "PUT"], "{name}");
            }
            "objects_lacking_annotation" => {
                assert_eq!(column(&result, "object_key"), ["dogs/rex.jpg"], "{name}");
            }
            "object_history" => {
                assert_eq!(
                    column(&result, "record_type"),
                    ["PUT", "OBJECT_RESET", "PUT", "PUT"],
                    "{name}"
                );
                assert_eq!(
                    column(&result, "object_version_id"),
                    ["v1", "v1", "v2", "v2"],
                    "{name}"
                );
            }
            "counts_and_sizes_by_name" => {
                assert_eq!(column(&result, "name"), ["review", "owner"], "{name}");
                assert_eq!(column(&result, "annotations"), ["3", "2"], "{name}");
                assert_eq!(
                    column(&result, "total_bytes"),
                    [
                        (approved.len()
                            + r#"{"status":"rejected"}"#.len()
                            + r#"{"status":"approved","reviewer":"bo"}"#.len())
                        .to_string(),
                        "12".to_string(),
                    ],
                    "{name}"
                );
            }
            "annotations_per_object" => {
                assert_eq!(
                    column(&result, "object_key"),
                    ["a b+c.txt", "cats/tom.jpg", "dogs/rex.jpg"],
                    "{name}"
                );
                assert_eq!(column(&result, "annotations"), ["2", "2", "1"], "{name}");
            }
            "recent_commits" => {
                // One append of the rows above, by this process, from notifications.
                assert_eq!(column(&result, "operation"), ["append"], "{name}");
                assert_eq!(column(&result, "source"), ["notification"], "{name}");
                assert_eq!(column(&result, "backfill_run"), ["NULL"], "{name}");
                assert_eq!(
                    column(&result, "row_count"),
                    std::slice::from_ref(&examples_rows),
                    "{name}"
                );
                assert!(
                    column(&result, "writer")
                        .iter()
                        .chain(column(&result, "batch_id").iter())
                        .all(|v| v != "NULL"),
                    "{name}"
                );
            }
            other => panic!("queries/{other}.sql has no expectation in this test: add one"),
        }
    }
    Ok(())
}
