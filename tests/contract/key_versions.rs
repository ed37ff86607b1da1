//! `AnnotationSource::list_key_versions` against the emulator: every version of one key
//! (delete markers included), none of the keys it is a prefix of, and a bucket that is gone
//! holding no version.

use annotable_tests::Stack;
use annotation_source::{AnnotationSource, Clock, SourceOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn a_key_listing_holds_every_version_of_the_key_and_nothing_else() -> TestResult {
    let stack = Stack::start();
    stack.bucket("kv-versions", true).await;
    stack.bucket("kv-plain", false).await;
    let mut versions = Vec::new();
    for body in ["one", "two!", "three"] {
        versions.push(
            stack
                .put_object("kv-versions", "a", body)
                .await
                .ok_or("no version id")?,
        );
    }
    let marker = stack
        .s3
        .delete_object()
        .bucket("kv-versions")
        .key("a")
        .send()
        .await?
        .version_id()
        .map(str::to_string)
        .ok_or("no marker version")?;
    // Keys that sort around it and share its prefix.
    for key in ["0a", "a/b", "a0", "ab"] {
        stack.put_object("kv-versions", key, "other").await;
    }
    stack.put_object("kv-plain", "x", "first").await;
    stack.put_object("kv-plain", "x", "second!").await;

    let source = AnnotationSource::new(
        stack.s3.clone(),
        SourceOptions::default(),
        Clock::with_shift(0),
    );
    let listed = source.list_key_versions("kv-versions", "a").await?;
    assert!(listed.at_nanos > 0);
    let mut got: Vec<(String, Option<String>, bool, Option<i64>)> = listed
        .value
        .iter()
        .map(|(o, f)| {
            assert_eq!((o.bucket.as_str(), o.key.as_str()), ("kv-versions", "a"));
            (
                o.version_id.clone().unwrap_or_default(),
                f.e_tag.clone(),
                f.is_delete_marker,
                f.size,
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, Option<String>, bool, Option<i64>)> = Vec::new();
    let all = stack
        .s3
        .list_object_versions()
        .bucket("kv-versions")
        .prefix("a")
        .send()
        .await?;
    for v in all.versions().iter().filter(|v| v.key() == Some("a")) {
        want.push((
            v.version_id().unwrap_or_default().to_string(),
            v.e_tag().map(|e| e.trim_matches('"').to_string()),
            false,
            v.size(),
        ));
    }
    want.push((marker.clone(), None, true, None));
    want.sort();
    assert_eq!(got, want);
    assert_eq!(want.len(), versions.len() + 1);
    let sizes: Vec<_> = got.iter().filter_map(|g| g.3).collect();
    assert_eq!(sizes.len(), 3, "{got:?}");
    assert!(
        listed
            .value
            .iter()
            .all(|(_, f)| f.is_delete_marker || f.storage_class.is_some()),
        "a version without a storage class: {:?}",
        listed.value
    );

    // An unversioned key: its one (null) version, the last write's.
    let plain = source.list_key_versions("kv-plain", "x").await?;
    assert_eq!(plain.value.len(), 1, "{:?}", plain.value);
    assert_eq!(plain.value[0].1.size, Some("second!".len() as i64));
    assert_eq!(plain.value[0].0.table_version_id(), None);

    // A key with no version, and a bucket that is gone: nothing, not an error.
    assert!(
        source
            .list_key_versions("kv-versions", "zzz")
            .await?
            .value
            .is_empty()
    );
    assert!(
        source
            .list_key_versions("kv-gone", "a")
            .await?
            .value
            .is_empty()
    );
    Ok(())
}
