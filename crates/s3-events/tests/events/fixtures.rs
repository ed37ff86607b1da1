//! The parser against every notification fixture: the messages captured from the emulator by
//! the contract tests (`ministack-*`) and the shapes documented by AWS (`aws-*`). Every file in
//! the fixture directory must have an entry in `expectations()`, so a newly captured shape cannot
//! slip in untested.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use s3_events::{
    Action, AnnotationRef, IgnoreReason, Notification, ResetCause, Sequencer, parse_message,
};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/notifications")
}

/// What one event of a fixture must parse to.
#[derive(Debug)]
struct Expect {
    event_name: &'static str,
    bucket: &'static str,
    key: &'static str,
    version: Option<&'static str>,
    action: Action,
}

enum Expected {
    Test(&'static str),
    Events(Vec<Expect>),
}

fn ev(
    event_name: &'static str,
    bucket: &'static str,
    key: &'static str,
    version: Option<&'static str>,
    action: Action,
) -> Expect {
    Expect {
        event_name,
        bucket,
        key,
        version,
        action,
    }
}

fn fetch(name: &str, size: u64, e_tag: &str) -> Action {
    Action::FetchAnnotation(AnnotationRef {
        name: name.into(),
        size: Some(size),
        e_tag: Some(e_tag.into()),
    })
}

fn delete(name: &str) -> Action {
    Action::DeleteAnnotation(AnnotationRef {
        name: name.into(),
        size: None,
        e_tag: None,
    })
}

fn reset(cause: ResetCause, relist: bool) -> Action {
    Action::Reset { cause, relist }
}

const MS_KEY: &str = "dir/a b+c ü.txt";

fn expectations() -> BTreeMap<&'static str, Expected> {
    use Expected::{Events, Test};
    use ResetCause::{AnnotationsChanged, NullVersionReplaced, ObjectCreated, ObjectRemoved};
    let mut m = BTreeMap::new();
    // --- AWS-documented shapes -------------------------------------------------------------
    m.insert("aws-doc-test-event", Test("amzn-s3-demo-bucket"));
    // EventBridge (docs: "EventBridge event message structure"): every change re-reads the
    // version, because EventBridge names no annotation and has no hasObjectAnnotation flag;
    // the key is taken as sent (`+` stays a plus).
    m.insert(
        "aws-eventbridge-object-created-copy",
        Events(vec![ev(
            "ObjectCreated:Copy",
            "media",
            "dir/a b+c.txt",
            Some("IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"),
            reset(ObjectCreated, true),
        )]),
    );
    m.insert(
        "aws-eventbridge-object-deleted-marker",
        Events(vec![ev(
            "ObjectRemoved:DeleteMarkerCreated",
            "media",
            "report.csv",
            Some("null"),
            reset(NullVersionReplaced, true),
        )]),
    );
    m.insert(
        "aws-eventbridge-lifecycle-expiration",
        Events(vec![ev(
            "LifecycleExpiration:Delete",
            "media",
            "old/log.txt",
            Some("mtB0cV.jejK63XkRNceanNMC.qXPWLeK"),
            reset(ObjectRemoved, false),
        )]),
    );
    m.insert(
        "aws-eventbridge-object-tags-added",
        Events(vec![ev(
            "Object Tags Added",
            "media",
            "report.csv",
            Some("v1"),
            Action::Ignore(IgnoreReason::Unrelated("Object Tags Added".into())),
        )]),
    );
    m.insert(
        "aws-doc-object-created-put-2.1",
        Events(vec![ev(
            "ObjectCreated:Put",
            "amzn-s3-demo-bucket",
            "HappyFace.jpg",
            Some("096fKKXTRTtl3on89fVO.nfljtsv6qko"),
            reset(ObjectCreated, false),
        )]),
    );
    m.insert(
        "aws-two-records-form-encoded-keys-2.5",
        Events(vec![
            ev(
                "ObjectCreated:Post",
                "photos",
                "red flower.jpg",
                None,
                reset(ObjectCreated, false),
            ),
            ev(
                "ObjectRemoved:Delete",
                "photos",
                "albums/2026/café.jpg",
                None,
                reset(ObjectRemoved, false),
            ),
        ]),
    );
    m.insert(
        "aws-annotation-put-s3-annotation-object-2.6",
        Events(vec![ev(
            "ObjectAnnotation:Put",
            "media",
            "videos/clip 1.mp4",
            Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
            fetch("transcript", 2048, "5d41402abc4b2a76b9719d911017c592"),
        )]),
    );
    m.insert(
        "aws-annotation-delete-no-details-2.7",
        Events(vec![ev(
            "ObjectAnnotation:Delete",
            "media",
            "videos/clip 1.mp4",
            Some("null"),
            reset(AnnotationsChanged, true),
        )]),
    );
    m.insert(
        "aws-lifecycle-expiration-2.3",
        Events(vec![
            ev(
                "LifecycleExpiration:Delete",
                "logs",
                "2025/12/31/app.log",
                Some("v-expired"),
                reset(ObjectRemoved, false),
            ),
            ev(
                "LifecycleExpiration:DeleteMarkerCreated",
                "logs",
                "2025/12/31/app.log",
                // The marker's id (dm-1) is not what is re-read: the null version is.
                Some("null"),
                reset(NullVersionReplaced, true),
            ),
            ev(
                "ObjectTagging:Put",
                "logs",
                "2025/12/31/app.log",
                Some("v2"),
                Action::Ignore(IgnoreReason::Unrelated("ObjectTagging:Put".into())),
            ),
        ]),
    );
    m.insert(
        "aws-sns-wrapped-annotation-put-two-names",
        Events(vec![
            ev(
                "ObjectAnnotation:Put",
                "media",
                "a+b c.txt",
                Some("v9"),
                fetch("label", 11, "e1"),
            ),
            ev(
                "ObjectAnnotation:Put",
                "media",
                "a+b c.txt",
                Some("v9"),
                fetch("score", 4, "e2"),
            ),
        ]),
    );
    // --- captured from the emulator by tests/contract/notifications.rs ---------------------
    for (kind, bucket, version) in [
        ("versioned", "conf-versioned", Some("version-1")),
        ("unversioned", "conf-plain", None),
    ] {
        let name = |suffix: &str| -> &'static str {
            Box::leak(format!("ministack-{kind}-{suffix}").into_boxed_str())
        };
        m.insert(name("test-event"), Test(bucket));
        m.insert(
            name("object-created-put"),
            Events(vec![ev(
                "ObjectCreated:Put",
                bucket,
                MS_KEY,
                version,
                reset(ObjectCreated, false),
            )]),
        );
        m.insert(
            name("annotation-delete"),
            Events(vec![ev(
                "ObjectAnnotation:Delete",
                bucket,
                MS_KEY,
                version,
                delete("label"),
            )]),
        );
        // The copy and multipart fixtures make new versions: their version ids are checked for
        // presence below rather than by value.
        let new_version = version.map(|_| "*");
        m.insert(
            name("object-created-copy"),
            Events(vec![ev(
                "ObjectCreated:Copy",
                bucket,
                MS_KEY,
                new_version,
                reset(ObjectCreated, true),
            )]),
        );
        m.insert(
            name("object-created-copy-exclude"),
            Events(vec![ev(
                "ObjectCreated:Copy",
                bucket,
                MS_KEY,
                new_version,
                reset(ObjectCreated, false),
            )]),
        );
        m.insert(
            name("object-created-multipart"),
            Events(vec![ev(
                "ObjectCreated:CompleteMultipartUpload",
                bucket,
                MS_KEY,
                new_version,
                reset(ObjectCreated, false),
            )]),
        );
    }
    m.insert(
        "ministack-versioned-annotation-put",
        Events(vec![ev(
            "ObjectAnnotation:Put",
            "conf-versioned",
            MS_KEY,
            Some("version-1"),
            fetch("label", 7, "ec198ec9b537283ea0302ef0e066a1f9"),
        )]),
    );
    m.insert(
        "ministack-unversioned-annotation-put",
        Events(vec![ev(
            "ObjectAnnotation:Put",
            "conf-plain",
            MS_KEY,
            None,
            fetch("label", 7, "ec198ec9b537283ea0302ef0e066a1f9"),
        )]),
    );
    m.insert(
        "ministack-versioned-annotation-put-null-version",
        Events(vec![ev(
            "ObjectAnnotation:Put",
            "nullv",
            MS_KEY,
            Some("null"),
            fetch("label", 1, "9dd4e461268c8034f5c8564e155c67a6"),
        )]),
    );
    m.insert(
        "ministack-versioned-object-removed-delete-marker",
        Events(vec![ev(
            "ObjectRemoved:DeleteMarkerCreated",
            "conf-versioned",
            MS_KEY,
            Some("null"),
            reset(NullVersionReplaced, true),
        )]),
    );
    m.insert(
        "ministack-versioned-object-removed-delete-version",
        Events(vec![ev(
            "ObjectRemoved:Delete",
            "conf-versioned",
            MS_KEY,
            Some("*"),
            reset(ObjectRemoved, false),
        )]),
    );
    m.insert(
        "ministack-unversioned-object-removed-delete",
        Events(vec![ev(
            "ObjectRemoved:Delete",
            "conf-plain",
            MS_KEY,
            None,
            reset(ObjectRemoved, false),
        )]),
    );
    m
}

#[test]
fn every_fixture_parses_as_expected() {
    let mut expectations = expectations();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixture directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "expected the captured fixtures, found {}",
        files.len()
    );

    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let expected = expectations
            .remove(stem.as_str())
            .unwrap_or_else(|| panic!("fixture {stem}.json has no entry in expectations()"));
        let body = std::fs::read(&path).unwrap();
        let parsed = parse_message(&body).unwrap_or_else(|e| panic!("{stem}: {e}"));
        match (expected, parsed) {
            (Expected::Test(bucket), Notification::Test(t)) => {
                assert_eq!(
                    t.bucket.as_deref(),
                    Some(bucket),
                    "{stem}: test event bucket"
                )
            }
            (Expected::Events(want), Notification::Events(got)) => {
                assert_eq!(got.len(), want.len(), "{stem}: number of events: {got:#?}");
                for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                    let at = format!("{stem} event {i}");
                    assert_eq!(
                        g.context.event_name,
                        w.event_name.trim_start_matches("s3:"),
                        "{at}: event name"
                    );
                    assert_eq!(g.object.bucket, w.bucket, "{at}: bucket");
                    assert_eq!(g.object.key, w.key, "{at}: key");
                    match w.version {
                        Some("*") => {
                            assert!(g.object.version_id.is_some(), "{at}: versionId missing")
                        }
                        v => assert_eq!(g.object.version_id.as_deref(), v, "{at}: versionId"),
                    }
                    assert_eq!(g.action, w.action, "{at}: action");
                    assert!(g.context.event_time.is_some(), "{at}: eventTime");
                    // EventBridge events carry their own schema version (`0`, `1.x`).
                    assert!(
                        g.context.event_version.starts_with("2.") || stem.contains("eventbridge"),
                        "{at}: eventVersion"
                    );
                }
            }
            (_, other) => panic!("{stem}: parsed to the wrong kind of notification: {other:#?}"),
        }
    }
    let missing: Vec<_> = expectations.keys().collect();
    assert!(
        missing.is_empty(),
        "expectations without a fixture file: {missing:?}"
    );
}

#[test]
fn context_fields_are_kept() {
    let body = std::fs::read(fixtures_dir().join("aws-doc-object-created-put-2.1.json")).unwrap();
    let Notification::Events(events) = parse_message(&body).unwrap() else {
        panic!("events expected")
    };
    let c = &events[0].context;
    assert_eq!(c.event_version, "2.1");
    assert_eq!(c.region.as_deref(), Some("us-west-2"));
    assert_eq!(c.sequencer, Sequencer::parse("0055AED6DCD90281E5"));
    assert_eq!(c.object_size, Some(1024));
    assert_eq!(
        c.object_e_tag.as_deref(),
        Some("d41d8cd98f00b204e9800998ecf8427e")
    );
    assert_eq!(c.requester.as_deref(), Some("AIDAJDPLRKLG7UEXAMPLE"));
    assert_eq!(c.source_ip_address.as_deref(), Some("172.16.0.1"));
    assert_eq!(c.request_id.as_deref(), Some("C3D13FE58DE4C810"));
    assert_eq!(c.configuration_id.as_deref(), Some("testConfigRule"));
    assert_eq!(c.event_time.map(|t| t.timestamp()), Some(0));

    // Sequencers of the two records of one message order them (AWS rule: left-pad, compare).
    let body =
        std::fs::read(fixtures_dir().join("aws-two-records-form-encoded-keys-2.5.json")).unwrap();
    let Notification::Events(events) = parse_message(&body).unwrap() else {
        panic!("events expected")
    };
    assert!(
        events[1].context.sequencer > events[0].context.sequencer,
        "000B > 0A"
    );
    assert_eq!(
        events[0].context.object_e_tag.as_deref(),
        Some("abc"),
        "ETag quotes stripped"
    );
}
