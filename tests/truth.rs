//! S3 read back independently of the code under test: every annotation of a version with
//! every column, the documented join key, and the convergence assertion.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed set-up is a failed test

use std::collections::BTreeSet;

use crate::Env;

/// One annotation as both sides report it: every column of the `annotations` view except
/// `sequence_number` (which S3 has no value for; [`Env::view`] checks its form instead).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub bucket: String,
    pub object_key: String,
    pub object_version_id: Option<String>,
    pub object_join_key: String,
    pub name: String,
    pub last_modified_date: Option<chrono::NaiveDateTime>,
    pub size: Option<i64>,
    pub e_tag: Option<String>,
    pub checksum_algorithm: Option<String>,
    pub replication_status: Option<String>,
    pub text_value: String,
}

/// The documented object_join_key derivation, computed here independently of the code under
/// test: the first 16 bytes of SHA-256 over `bucket \n key \n version-or-null`, in hex.
pub fn join_key(bucket: &str, key: &str, version: Option<&str>) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{bucket}\n{key}\n{}", version.unwrap_or("null")));
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every annotation of one object version as S3 reports it: ListObjectAnnotations for the names,
/// checksum algorithm and replication status, GetObjectAnnotation for the payload, ETag and
/// Last-Modified (the values a user reading an annotation sees).
pub async fn read_version(
    s3: &aws_sdk_s3::Client,
    bucket: String,
    key: String,
    version: Option<String>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut token = None;
    loop {
        let list = s3
            .list_object_annotations()
            .bucket(&bucket)
            .key(&key)
            .set_version_id(version.clone())
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("ListObjectAnnotations");
        for entry in list.annotations() {
            let name = entry.annotation_name().to_string();
            let got = s3
                .get_object_annotation()
                .bucket(&bucket)
                .key(&key)
                .set_version_id(version.clone())
                .annotation_name(&name)
                .send()
                .await
                .expect("GetObjectAnnotation");
            let e_tag = got.e_tag().map(|e| e.trim_matches('"').to_string());
            let last_modified_date = got.last_modified().map(|t| {
                chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
                    .expect("time")
                    .naive_utc()
            });
            let body = got
                .annotation_payload
                .collect()
                .await
                .expect("payload")
                .into_bytes();
            let table_version = version.clone().filter(|v| v != "null");
            rows.push(Row {
                object_join_key: join_key(&bucket, &key, table_version.as_deref()),
                bucket: bucket.clone(),
                object_key: key.clone(),
                object_version_id: table_version,
                name,
                last_modified_date,
                size: Some(body.len() as i64),
                e_tag,
                checksum_algorithm: entry
                    .checksum_algorithm()
                    .first()
                    .map(|a| a.as_str().to_string()),
                replication_status: entry.replication_status().map(|r| r.as_str().to_string()),
                text_value: String::from_utf8(body.to_vec()).expect("utf8"),
            });
        }
        match list.next_continuation_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return rows,
        }
    }
}

/// Asserts the current state equals S3 in every column, printing the difference, three ways:
/// `annotations` as annotable's queries answer it (the state table plus the journal rows after
/// its watermark, or the view), the portable view over the whole journal, and the state table
/// itself as plain readers see it after one more `maintain --refresh`, which
/// `maintain --verify-state` must then find equal to the journal.
pub async fn assert_converged(env: &Env) {
    let truth = env.truth().await;
    assert!(
        !truth.is_empty(),
        "the workload left no annotation: the check would prove nothing"
    );
    for name in ["annotations", "annotations_from_journal"] {
        assert_equal(&truth, &env.view_of(name).await, name);
    }
    let refresh = env.annotable(&["maintain", "--refresh"]);
    if !env.catalog_holds_the_state() {
        // S3 Tables and REST catalogs: no state table; the refusal says why and what answers.
        let said = String::from_utf8_lossy(&refresh.stderr);
        assert!(
            !refresh.status.success() && said.contains("answers `annotations` from the journal"),
            "maintain --refresh on a catalog without the state table: {said}"
        );
        return;
    }
    assert!(
        refresh.status.success(),
        "maintain --refresh: {}",
        String::from_utf8_lossy(&refresh.stderr)
    );
    assert_equal(
        &truth,
        &env.view_of("annotations_state").await,
        "the state table",
    );
    let verify = env.annotable(&["maintain", "--verify-state"]);
    assert!(
        verify.status.success(),
        "maintain --verify-state: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

fn assert_equal(truth: &BTreeSet<Row>, view: &BTreeSet<Row>, name: &str) {
    let missing: Vec<_> = truth.difference(view).take(10).collect();
    let extra: Vec<_> = view.difference(truth).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name} != S3 ({} in S3, {} in {name})\nmissing from {name}: {missing:#?}\nextra in {name}: {extra:#?}",
        truth.len(),
        view.len()
    );
}
