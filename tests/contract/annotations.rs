//! Contract tests: the S3 annotation API behaviour annotable relies on, pinned against the local
//! emulator. If the emulator (or its pinned version) changes any of this, a test here fails and
//! its message names the operation.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use annotable_tests::Stack;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::AnnotationDirective;

/// Asserts that `result` failed with S3 error `code` and HTTP `status`.
fn expect_error<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    operation: &str,
    result: Result<T, SdkError<E, HttpResponse>>,
    code: &str,
    status: u16,
) {
    match result {
        Ok(ok) => panic!("{operation}: expected error {code} ({status}), got success: {ok:?}"),
        Err(err) => {
            let got_status = err.raw_response().map(|r| r.status().as_u16());
            let got_code = err.code().map(str::to_string);
            assert_eq!(
                (got_code.as_deref(), got_status),
                (Some(code), Some(status)),
                "{operation}: wrong error (full error: {err:?})"
            );
        }
    }
}

async fn get_payload(
    s: &Stack,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    name: &str,
) -> String {
    let out =
        s.s3.get_object_annotation()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .annotation_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetObjectAnnotation {bucket}/{key} {name}: {e:?}"));
    let bytes = out
        .annotation_payload
        .collect()
        .await
        .expect("read GetObjectAnnotation body")
        .into_bytes();
    String::from_utf8(bytes.to_vec()).expect("payload is UTF-8")
}

async fn list_names(s: &Stack, bucket: &str, key: &str, version: Option<&str>) -> Vec<String> {
    let out =
        s.s3.list_object_annotations()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListObjectAnnotations {bucket}/{key}: {e:?}"));
    out.annotations()
        .iter()
        .map(|a| a.annotation_name().to_string())
        .collect()
}

#[tokio::test]
async fn put_get_list_delete_round_trip() {
    let s = Stack::start();
    s.bucket("plain", false).await;
    let key = "dir/a b+c ü.json";
    s.put_object("plain", key, "{}").await;

    let payload = r#"{"label":"cat","score":0.98,"note":"ünïcødé ✓"}"#;
    let put =
        s.s3.put_object_annotation()
            .bucket("plain")
            .key(key)
            .annotation_name("label")
            .annotation_payload(ByteStream::from(payload.as_bytes().to_vec()))
            .send()
            .await
            .expect("PutObjectAnnotation");
    let put_etag = put
        .e_tag()
        .expect("PutObjectAnnotation returns an ETag")
        .to_string();

    // Get: payload, ETag, Last-Modified and Content-Length.
    let got =
        s.s3.get_object_annotation()
            .bucket("plain")
            .key(key)
            .annotation_name("label")
            .send()
            .await
            .expect("GetObjectAnnotation");
    assert_eq!(
        got.e_tag(),
        Some(put_etag.as_str()),
        "GetObjectAnnotation ETag differs from Put's"
    );
    assert!(
        got.last_modified().is_some(),
        "GetObjectAnnotation: no Last-Modified"
    );
    assert_eq!(
        got.content_length(),
        Some(payload.len() as i64),
        "GetObjectAnnotation: Content-Length is not the payload's byte length"
    );
    assert_eq!(get_payload(&s, "plain", key, None, "label").await, payload);

    // List: one entry with name, size, ETag and LastModified.
    let listed =
        s.s3.list_object_annotations()
            .bucket("plain")
            .key(key)
            .send()
            .await
            .expect("ListObjectAnnotations");
    let entries = listed.annotations();
    assert_eq!(entries.len(), 1, "ListObjectAnnotations: {entries:?}");
    assert_eq!(entries[0].annotation_name(), "label");
    assert_eq!(
        entries[0].size(),
        payload.len() as i64,
        "ListObjectAnnotations: Size"
    );
    assert_eq!(
        entries[0].e_tag(),
        Some(put_etag.as_str()),
        "ListObjectAnnotations: ETag"
    );
    assert!(
        entries[0].last_modified().secs() > 0,
        "ListObjectAnnotations: LastModified"
    );
    assert!(
        listed.next_continuation_token().is_none(),
        "ListObjectAnnotations: unexpected continuation token on a single page"
    );

    // Overwrite replaces (no annotation versions).
    s.put_annotation("plain", key, None, "label", "dog").await;
    assert_eq!(
        get_payload(&s, "plain", key, None, "label").await,
        "dog",
        "overwrite"
    );
    assert_eq!(
        list_names(&s, "plain", key, None).await,
        ["label"],
        "overwrite keeps one entry"
    );

    // Delete, then Get answers NoSuchAnnotation (404) and List is empty.
    s.s3.delete_object_annotation()
        .bucket("plain")
        .key(key)
        .annotation_name("label")
        .send()
        .await
        .expect("DeleteObjectAnnotation");
    expect_error(
        "GetObjectAnnotation after DeleteObjectAnnotation",
        s.s3.get_object_annotation()
            .bucket("plain")
            .key(key)
            .annotation_name("label")
            .send()
            .await,
        "NoSuchAnnotation",
        404,
    );
    assert!(
        list_names(&s, "plain", key, None).await.is_empty(),
        "List after delete"
    );
}

#[tokio::test]
async fn list_pages_with_continuation_tokens_and_filters_by_prefix() {
    let s = Stack::start();
    s.bucket("paged", false).await;
    s.put_object("paged", "obj", "x").await;
    let mut expected: Vec<String> = (0..23).map(|i| format!("p.{i:02}")).collect();
    expected.extend((0..4).map(|i| format!("q-{i}")));
    for name in &expected {
        s.put_annotation("paged", "obj", None, name, name).await;
    }

    // Pages of 10: 10 + 10 + 7, each page after the first carries the token it was asked with.
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let out =
            s.s3.list_object_annotations()
                .bucket("paged")
                .key("obj")
                .max_annotation_results(10)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("ListObjectAnnotations page {pages}: {e:?}"));
        pages += 1;
        assert!(
            out.annotations().len() <= 10,
            "page {pages} exceeds MaxAnnotationResults"
        );
        assert_eq!(
            out.continuation_token(),
            token.as_deref(),
            "page {pages}: echoed token"
        );
        names.extend(
            out.annotations()
                .iter()
                .map(|a| a.annotation_name().to_string()),
        );
        match out.next_continuation_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
        assert!(
            pages < 10,
            "ListObjectAnnotations paging does not terminate"
        );
    }
    assert_eq!(pages, 3, "27 annotations in pages of 10");
    assert_eq!(
        names, expected,
        "paged listing returns every name once, in order"
    );

    let out =
        s.s3.list_object_annotations()
            .bucket("paged")
            .key("obj")
            .annotation_prefix("q-")
            .send()
            .await
            .expect("ListObjectAnnotations with prefix");
    let filtered: Vec<&str> = out
        .annotations()
        .iter()
        .map(|a| a.annotation_name())
        .collect();
    assert_eq!(
        filtered,
        ["q-0", "q-1", "q-2", "q-3"],
        "AnnotationPrefix filter"
    );
}

#[tokio::test]
async fn annotations_belong_to_one_object_version() {
    let s = Stack::start();
    s.bucket("versioned", true).await;
    let v1 = s
        .put_object("versioned", "k", "one")
        .await
        .expect("versioned PutObject returns a VersionId");
    s.put_annotation("versioned", "k", None, "label", "first")
        .await;

    // A new version does not inherit annotations; the old version keeps its own.
    let v2 = s
        .put_object("versioned", "k", "two")
        .await
        .expect("VersionId");
    assert_ne!(v1, v2);
    assert!(
        list_names(&s, "versioned", "k", None).await.is_empty(),
        "new version inherited annotations"
    );
    assert_eq!(
        list_names(&s, "versioned", "k", Some(&v1)).await,
        ["label"],
        "old version lost its annotation"
    );
    assert_eq!(
        get_payload(&s, "versioned", "k", Some(&v1), "label").await,
        "first"
    );

    // Annotating a specific older version.
    s.put_annotation("versioned", "k", Some(&v1), "extra", "e")
        .await;
    assert_eq!(
        list_names(&s, "versioned", "k", Some(&v1)).await,
        ["extra", "label"]
    );
    assert!(list_names(&s, "versioned", "k", Some(&v2)).await.is_empty());

    // A plain DELETE adds a delete marker: the versions keep their annotations.
    s.s3.delete_object()
        .bucket("versioned")
        .key("k")
        .send()
        .await
        .expect("DeleteObject");
    assert_eq!(
        list_names(&s, "versioned", "k", Some(&v1)).await,
        ["extra", "label"],
        "delete marker removed annotations"
    );
    expect_error(
        "ListObjectAnnotations on a key whose current version is a delete marker",
        s.s3.list_object_annotations()
            .bucket("versioned")
            .key("k")
            .send()
            .await,
        "NoSuchKey",
        404,
    );

    // Deleting a specific version deletes its annotations with it.
    s.s3.delete_object()
        .bucket("versioned")
        .key("k")
        .version_id(&v1)
        .send()
        .await
        .expect("DeleteObject version");
    expect_error(
        "ListObjectAnnotations on a permanently deleted version",
        s.s3.list_object_annotations()
            .bucket("versioned")
            .key("k")
            .version_id(&v1)
            .send()
            .await,
        "NoSuchVersion",
        404,
    );

    // Unversioned bucket: overwriting the object deletes its annotations.
    s.bucket("plain", false).await;
    s.put_object("plain", "k", "one").await;
    s.put_annotation("plain", "k", None, "label", "x").await;
    s.put_object("plain", "k", "two").await;
    assert!(
        list_names(&s, "plain", "k", None).await.is_empty(),
        "overwrite kept annotations in an unversioned bucket"
    );
    s.put_annotation("plain", "k", None, "label", "y").await;
    s.s3.delete_object()
        .bucket("plain")
        .key("k")
        .send()
        .await
        .expect("DeleteObject");
    expect_error(
        "ListObjectAnnotations on a deleted object",
        s.s3.list_object_annotations()
            .bucket("plain")
            .key("k")
            .send()
            .await,
        "NoSuchKey",
        404,
    );
}

#[tokio::test]
async fn error_codes() {
    let s = Stack::start();
    s.bucket("errs", false).await;
    s.put_object("errs", "k", "x").await;
    let put = |name: &str, payload: Vec<u8>| {
        s.s3.put_object_annotation()
            .bucket("errs")
            .key("k")
            .annotation_name(name)
            .annotation_payload(ByteStream::from(payload))
            .send()
    };

    expect_error(
        "GetObjectAnnotation of a missing name",
        s.s3.get_object_annotation()
            .bucket("errs")
            .key("k")
            .annotation_name("missing")
            .send()
            .await,
        "NoSuchAnnotation",
        404,
    );
    expect_error(
        "GetObjectAnnotation on a missing object",
        s.s3.get_object_annotation()
            .bucket("errs")
            .key("nope")
            .annotation_name("a")
            .send()
            .await,
        "NoSuchKey",
        404,
    );
    expect_error(
        "ListObjectAnnotations in a missing bucket",
        s.s3.list_object_annotations()
            .bucket("no-such-bucket")
            .key("k")
            .send()
            .await,
        "NoSuchBucket",
        404,
    );
    expect_error(
        "PutObjectAnnotation name starting with aws",
        put("awsLabel", b"x".to_vec()).await,
        "InvalidAnnotationName",
        400,
    );
    expect_error(
        "PutObjectAnnotation name starting with S3",
        put("S3thing", b"x".to_vec()).await,
        "InvalidAnnotationName",
        400,
    );
    expect_error(
        "PutObjectAnnotation name with a space",
        put("bad name", b"x".to_vec()).await,
        "InvalidAnnotationName",
        400,
    );
    expect_error(
        "PutObjectAnnotation 513-byte name",
        put(&"n".repeat(513), b"x".to_vec()).await,
        "AnnotationNameTooLong",
        400,
    );
    expect_error(
        "PutObjectAnnotation non-UTF-8 payload",
        put("binary", vec![0xff, 0xfe, 0x00, 0x80]).await,
        "UnsupportedMediaType",
        415,
    );
    expect_error(
        "PutObjectAnnotation payload over 1 MiB",
        put("big", vec![b'a'; 1024 * 1024 + 1]).await,
        "InvalidRequest",
        400,
    );
    // Letters in any language, digits, '_', '.', '-' are fine; exactly 1 MiB and 512 bytes too.
    put("étiquette_1.v-2", b"ok".to_vec())
        .await
        .expect("PutObjectAnnotation unicode name");
    put(&"n".repeat(512), b"ok".to_vec())
        .await
        .expect("PutObjectAnnotation 512-byte name");
    put("max", vec![b'a'; 1024 * 1024])
        .await
        .expect("PutObjectAnnotation 1 MiB payload");
    assert_eq!(
        get_payload(&s, "errs", "k", None, "max").await.len(),
        1024 * 1024
    );
}

#[tokio::test]
async fn at_most_1000_annotations_per_object_version() {
    let s = Stack::start();
    s.bucket("limit", false).await;
    s.put_object("limit", "k", "x").await;
    for i in 0..1000 {
        s.put_annotation("limit", "k", None, &format!("a{i:04}"), "v")
            .await;
    }
    expect_error(
        "PutObjectAnnotation #1001",
        s.s3.put_object_annotation()
            .bucket("limit")
            .key("k")
            .annotation_name("one-too-many")
            .annotation_payload(ByteStream::from_static(b"v"))
            .send()
            .await,
        "AnnotationLimitExceeded",
        400,
    );
    // Replacing an existing name at the limit is still allowed.
    s.put_annotation("limit", "k", None, "a0000", "w").await;
    let out =
        s.s3.list_object_annotations()
            .bucket("limit")
            .key("k")
            .send()
            .await
            .expect("ListObjectAnnotations");
    assert_eq!(
        out.annotations().len(),
        1000,
        "a full page holds all 1000 annotations"
    );
    assert!(out.next_continuation_token().is_none());
}

#[tokio::test]
async fn copy_object_carries_annotations_unless_excluded() {
    let s = Stack::start();
    s.bucket("src", false).await;
    s.bucket("dst", true).await;
    s.put_object("src", "orig", "body").await;
    s.put_annotation("src", "orig", None, "label", "cat").await;
    s.put_annotation("src", "orig", None, "score", "0.9").await;

    // Default directive is COPY.
    s.s3.copy_object()
        .bucket("dst")
        .key("copied")
        .copy_source("src/orig")
        .send()
        .await
        .expect("CopyObject (default directive)");
    assert_eq!(
        list_names(&s, "dst", "copied", None).await,
        ["label", "score"],
        "CopyObject default directive"
    );
    assert_eq!(get_payload(&s, "dst", "copied", None, "label").await, "cat");

    s.s3.copy_object()
        .bucket("dst")
        .key("copied-explicit")
        .copy_source("src/orig")
        .annotation_directive(AnnotationDirective::Copy)
        .send()
        .await
        .expect("CopyObject COPY");
    assert_eq!(
        list_names(&s, "dst", "copied-explicit", None).await,
        ["label", "score"],
        "CopyObject COPY"
    );

    s.s3.copy_object()
        .bucket("dst")
        .key("excluded")
        .copy_source("src/orig")
        .annotation_directive(AnnotationDirective::Exclude)
        .send()
        .await
        .expect("CopyObject EXCLUDE");
    assert!(
        list_names(&s, "dst", "excluded", None).await.is_empty(),
        "CopyObject EXCLUDE copied annotations"
    );
}
