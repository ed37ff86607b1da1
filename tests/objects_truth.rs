//! The object versions S3 holds, read back independently of the code under test
//! (ListObjectVersions, every page, delete markers included), and the assertion that the
//! `objects` view equals them and that every annotation joins exactly one object version.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed set-up is a failed test

use std::collections::BTreeSet;

use crate::truth::join_key;
use crate::{Env, PLAIN, VERSIONED};

/// One object version as both sides report it: every column of `objects` that a listing
/// fills (the always-null encryption columns are checked to be null instead, and
/// `sequence_number` only for its form).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRow {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub object_join_key: String,
    pub is_delete_marker: bool,
    pub size: Option<i64>,
    pub last_modified_date: Option<chrono::NaiveDateTime>,
    pub e_tag: Option<String>,
    pub storage_class: Option<String>,
    pub is_multipart: Option<bool>,
    pub checksum_algorithm: Option<String>,
}

fn micros(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<chrono::NaiveDateTime> {
    let t = t?;
    let micros = t.secs() * 1_000_000 + i64::from(t.subsec_nanos() / 1_000);
    chrono::DateTime::from_timestamp_micros(micros).map(|d| d.naive_utc())
}

/// Every version of every key of `bucket` as ListObjectVersions gives it. A version id of
/// `null` (the null version, every object of an unversioned bucket) is stored as no version.
pub async fn list_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeSet<ObjectRow> {
    let mut rows = BTreeSet::new();
    let (mut key_marker, mut version_marker) = (None, None);
    loop {
        let listed = s3
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .expect("ListObjectVersions");
        let version = |v: Option<&str>| v.filter(|v| *v != "null").map(str::to_string);
        for v in listed.versions() {
            let key = v.key().unwrap_or_default().to_string();
            let version_id = version(v.version_id());
            let e_tag = v.e_tag().map(|e| e.trim_matches('"').to_string());
            rows.insert(ObjectRow {
                bucket: bucket.into(),
                object_join_key: join_key(bucket, &key, version_id.as_deref()),
                key,
                version_id,
                is_delete_marker: false,
                size: v.size(),
                last_modified_date: micros(v.last_modified()),
                is_multipart: e_tag.as_deref().map(|e| e.contains('-')),
                e_tag,
                storage_class: v.storage_class().map(|c| c.as_str().to_string()),
                checksum_algorithm: (!v.checksum_algorithm().is_empty()).then(|| {
                    v.checksum_algorithm()
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            });
        }
        for m in listed.delete_markers() {
            let key = m.key().unwrap_or_default().to_string();
            let version_id = version(m.version_id());
            rows.insert(ObjectRow {
                bucket: bucket.into(),
                object_join_key: join_key(bucket, &key, version_id.as_deref()),
                key,
                version_id,
                is_delete_marker: true,
                size: None,
                last_modified_date: micros(m.last_modified()),
                e_tag: None,
                storage_class: None,
                is_multipart: None,
                checksum_algorithm: None,
            });
        }
        if !listed.is_truncated().unwrap_or(false) {
            return rows;
        }
        key_marker = listed.next_key_marker().map(str::to_string);
        version_marker = listed.next_version_id_marker().map(str::to_string);
    }
}

impl Env {
    /// S3's object versions in both buckets.
    pub async fn objects_truth(&self) -> BTreeSet<ObjectRow> {
        let mut rows = list_bucket(&self.stack.s3, VERSIONED).await;
        rows.extend(list_bucket(&self.stack.s3, PLAIN).await);
        rows
    }

    /// The `objects` view, every column; panics on a malformed `sequence_number` or an
    /// encryption column that is not null.
    pub async fn objects_view(&self) -> BTreeSet<ObjectRow> {
        self.sql(
            "SELECT bucket, key, version_id, object_join_key, is_delete_marker, size, \
             last_modified_date, e_tag, storage_class, is_multipart, sequence_number, \
             encryption_status, is_bucket_key_enabled, kms_key_arn, checksum_algorithm FROM objects",
        )
        .await
        .into_iter()
        .map(|r| {
            let seq = r[10].clone().unwrap_or_default();
            assert!(
                seq.len() > 21 && seq[..20].bytes().all(|b| b.is_ascii_digit()),
                "malformed sequence_number {seq:?} in {r:?}"
            );
            assert!(
                r[11..14].iter().all(Option::is_none),
                "encryption columns: {r:?}"
            );
            ObjectRow {
                bucket: r[0].clone().unwrap_or_default(),
                key: r[1].clone().unwrap_or_default(),
                version_id: r[2].clone(),
                object_join_key: r[3].clone().unwrap_or_default(),
                is_delete_marker: r[4].as_deref() == Some("true"),
                size: r[5].as_deref().map(|n| n.parse().expect("size")),
                last_modified_date: r[6].as_deref().map(|t| {
                    t.replace(' ', "T")
                        .parse()
                        .unwrap_or_else(|e| panic!("last_modified_date {t:?}: {e}"))
                }),
                e_tag: r[7].clone(),
                storage_class: r[8].clone(),
                is_multipart: r[9].as_deref().map(|b| b == "true"),
                checksum_algorithm: r[14].clone(),
            }
        })
        .collect()
    }
}

/// Asserts `objects` equals ListObjectVersions of both buckets in every column, and that every
/// row of `annotations` joins exactly one row of `objects` on `object_join_key`.
pub async fn assert_objects_converged(env: &Env) {
    let truth = env.objects_truth().await;
    assert!(
        !truth.is_empty(),
        "the workload left no object: the check would prove nothing"
    );
    let view = env.objects_view().await;
    let missing: Vec<_> = truth.difference(&view).take(10).collect();
    let extra: Vec<_> = view.difference(&truth).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "objects != S3 ({} in S3, {} in objects)\nmissing from objects: {missing:#?}\nextra in objects: {extra:#?}",
        truth.len(),
        view.len()
    );
    let unjoined = env
        .sql(
            "SELECT a.bucket, a.object_key, a.object_version_id, a.name, count(o.key) \
             FROM annotations a LEFT JOIN objects o ON o.object_join_key = a.object_join_key \
             GROUP BY a.bucket, a.object_key, a.object_version_id, a.name \
             HAVING count(o.key) <> 1",
        )
        .await;
    assert!(
        unjoined.is_empty(),
        "annotations joining other than one object: {unjoined:#?}"
    );
    let annotated = env.sql("SELECT count(*) FROM annotations").await;
    assert_ne!(
        annotated[0][0].as_deref(),
        Some("0"),
        "no annotation joined: the check proves nothing"
    );
}

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../queries/objects")
        .join(format!("{name}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the example joins of `queries/objects/` and checks each answer against S3 read back
/// independently (objects from ListObjectVersions, annotations from Get/ListObjectAnnotations).
pub async fn assert_object_examples_answer(env: &Env) {
    use std::collections::{BTreeMap, BTreeSet as Set};
    let objects = env.objects_truth().await;
    let annotations = env.truth().await;
    let annotated: Set<&str> = annotations
        .iter()
        .map(|a| a.object_join_key.as_str())
        .collect();
    let versions: Vec<&ObjectRow> = objects.iter().filter(|o| !o.is_delete_marker).collect();

    // Largest un-annotated: the 20 largest sizes of versions without annotations.
    let largest = env.sql(&example("largest_unannotated_objects")).await;
    let mut sizes: Vec<i64> = versions
        .iter()
        .filter(|o| !annotated.contains(o.object_join_key.as_str()))
        .filter_map(|o| o.size)
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.truncate(20);
    let got: Vec<i64> = largest
        .iter()
        .map(|r| r[3].as_deref().unwrap_or("0").parse().expect("size"))
        .collect();
    assert_eq!(got, sizes, "largest_unannotated_objects: {largest:#?}");
    assert!(
        !got.is_empty(),
        "no un-annotated version: the check proves nothing"
    );

    // Coverage by prefix: versions and annotated versions per (bucket, top-level prefix).
    let mut coverage: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for o in &versions {
        let prefix = o.key.split('/').next().unwrap_or_default().to_string();
        let entry = coverage.entry((o.bucket.clone(), prefix)).or_default();
        entry.0 += 1;
        entry.1 += u64::from(annotated.contains(o.object_join_key.as_str()));
    }
    let got: BTreeMap<(String, String), (u64, u64)> = env
        .sql(&example("annotation_coverage_by_prefix"))
        .await
        .into_iter()
        .map(|r| {
            let n = |i: usize| {
                r[i].as_deref()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .expect("count")
            };
            let key = (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            );
            (key, (n(2), n(3)))
        })
        .collect();
    assert_eq!(got, coverage, "annotation_coverage_by_prefix");

    // Size by the value of `color`: versions and bytes per value.
    let size_of: BTreeMap<&str, i64> = versions
        .iter()
        .map(|o| (o.object_join_key.as_str(), o.size.unwrap_or(0)))
        .collect();
    let mut by_value: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for a in annotations.iter().filter(|a| a.name == "color") {
        let entry = by_value.entry(a.text_value.clone()).or_default();
        entry.0 += 1;
        entry.1 += size_of
            .get(a.object_join_key.as_str())
            .copied()
            .unwrap_or(0);
    }
    let got: BTreeMap<String, (u64, i64)> = env
        .sql(&example("size_by_annotation_value"))
        .await
        .into_iter()
        .map(|r| {
            let value = r[0].clone().unwrap_or_default();
            let versions = r[1].as_deref().unwrap_or("0").parse().expect("versions");
            let bytes = r[2].as_deref().unwrap_or("0").parse().expect("bytes");
            (value, (versions, bytes))
        })
        .collect();
    assert!(
        !by_value.is_empty(),
        "no color annotation: the check proves nothing"
    );
    assert_eq!(got, by_value, "size_by_annotation_value");
}

/// An object version as pyiceberg's fold reports it: (bucket, key, version id,
/// is_delete_marker, size, e_tag).
pub type VersionFacts = (
    String,
    String,
    Option<String>,
    bool,
    Option<i64>,
    Option<String>,
);

/// pyiceberg (another Iceberg implementation) reads `object_journal` from the SQLite catalog
/// and folds it by the `objects` rule itself; returns the object versions it finds, as
/// (bucket, key, version id, is_delete_marker, size, e_tag).
pub fn objects_by_pyiceberg(env: &Env) -> BTreeSet<VersionFacts> {
    const READER: &str = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
data = sys.argv[1]
catalog = SqlCatalog("annotable", uri=f"sqlite:///{data}/catalog.db", warehouse=f"file://{data}/warehouse")
rows = catalog.load_table("s3_metadata.object_journal").scan().to_arrow().to_pylist()
latest, reset = {}, {}
for r in rows:
    if r["record_type"] == "KEY_RESET":
        k = (r["bucket"], r["key"])
        reset[k] = max(reset.get(k, ""), r["sequence_number"])
    elif r["object_join_key"] not in latest or latest[r["object_join_key"]]["sequence_number"] < r["sequence_number"]:
        latest[r["object_join_key"]] = r
out = [[r["bucket"], r["key"], r["version_id"], r["is_delete_marker"], r["size"], r["e_tag"]]
       for r in latest.values() if reset.get((r["bucket"], r["key"]), "") <= r["sequence_number"]]
print(json.dumps(out))
"#;
    let out = std::process::Command::new(crate::py_tools_python())
        .args(["-c", READER])
        .arg(env.data_dir())
        .output()
        .expect("pyiceberg");
    assert!(
        out.status.success(),
        "pyiceberg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<VersionFacts> = serde_json::from_slice(&out.stdout).expect("pyiceberg output");
    rows.into_iter().collect()
}
