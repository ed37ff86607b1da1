//! Malformed and unknown input: each case yields the right typed error, and its message says
//! what is wrong and where, since that message is what an operator reads in the DLQ log line.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use s3_events::{ParseError, parse_message};

fn record(patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut r = serde_json::json!({
        "eventVersion": "2.6",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-21T12:00:00.000Z",
        "eventName": "ObjectAnnotation:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "versionId": "v"}},
        "objectAnnotation": [{"name": "label", "size": 3}]
    });
    patch(&mut r);
    serde_json::to_vec(&serde_json::json!({ "Records": [r] })).unwrap()
}

/// Asserts the error kind and that the message mentions each of `words`.
fn fails(body: &[u8], kind: &str, words: &[&str]) -> ParseError {
    let err = parse_message(body).expect_err("must be rejected");
    assert_eq!(
        err.kind(),
        kind,
        "wrong error for {:?}: {err}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    let text = err.to_string();
    for w in words {
        assert!(
            text.contains(w),
            "error message {text:?} should mention {w:?}"
        );
    }
    assert!(!err.is_retryable());
    err
}

#[test]
fn the_baseline_record_is_valid() {
    parse_message(&record(|_| {})).expect("baseline parses");
}

#[test]
fn not_utf8_not_json_not_s3() {
    fails(b"\xff\xfe{}", "not_utf8", &["UTF-8", "offset 0"]);
    fails(b"hello", "not_json", &["message body", "line 1"]);
    fails(b"", "not_json", &["message body"]);
    fails(b"[1,2]", "not_s3_notification", &["array"]);
    fails(
        b"{\"foo\":1}",
        "not_s3_notification",
        &["no Records", "foo"],
    );
    fails(
        b"{\"Records\":{}}",
        "not_s3_notification",
        &["Records is an object"],
    );
    fails(b"{\"Records\":[]}", "empty_records", &["empty"]);
    fails(
        b"{\"Records\":[1]}",
        "invalid_field",
        &["record 0", "Records[]", "a number"],
    );
    fails(
        br#"{"version":"0","detail-type":"Object Created","source":"aws.s3","detail":{}}"#,
        "missing_field",
        &["detail.bucket"],
    );
    fails(
        br#"{"version":"0","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2","detail":{}}"#,
        "not_s3_notification",
        &["EventBridge", "aws.ec2", "aws.s3"],
    );
}

#[test]
fn one_mebibyte_of_garbage() {
    let garbage: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = parse_message(&garbage).expect_err("garbage");
    assert!(matches!(err.kind(), "not_utf8" | "not_json"), "{err}");
    let text = "{\"Records\":[".to_string() + &"x".repeat(1024 * 1024);
    fails(text.as_bytes(), "not_json", &["message body"]);
}

#[test]
fn sns_envelopes() {
    fails(
        br#"{"Type":"Notification","TopicArn":"arn:aws:sns:x","Message":"not json"}"#,
        "not_json",
        &["SNS Message"],
    );
    fails(
        br#"{"Type":"Notification","Message":"{\"hello\":1}"}"#,
        "not_s3_notification",
        &["SNS Message"],
    );
    // Only one level of envelope is unwrapped.
    let inner = serde_json::json!({"Type":"Notification","Message": String::from_utf8(record(|_| {})).unwrap()});
    let outer = serde_json::json!({"Type":"Notification","Message": inner.to_string()});
    fails(
        outer.to_string().as_bytes(),
        "not_s3_notification",
        &["SNS Message"],
    );
    // A test event through SNS is still a test event.
    let test = serde_json::json!({"Type":"Notification","TopicArn":"t","Message":"{\"Event\":\"s3:TestEvent\",\"Bucket\":\"b\"}"});
    assert!(matches!(
        parse_message(test.to_string().as_bytes()),
        Ok(s3_events::Notification::Test(_))
    ));
}

#[test]
fn event_versions() {
    for ok in ["2.0", "2.1", "2.6", "2.10", "02.7"] {
        parse_message(&record(|r| r["eventVersion"] = ok.into()))
            .unwrap_or_else(|e| panic!("eventVersion {ok} should parse: {e}"));
    }
    for unsupported in ["1.0", "3.0", "10.1"] {
        fails(
            &record(|r| r["eventVersion"] = unsupported.into()),
            "unsupported_event_version",
            &[unsupported, "record 0"],
        );
    }
    for invalid in ["", "2", "2.", "two.one", "2.x", "v2.1"] {
        fails(
            &record(|r| r["eventVersion"] = invalid.into()),
            "invalid_field",
            &["eventVersion"],
        );
    }
    fails(
        &record(|r| r["eventVersion"] = 2.1.into()),
        "invalid_field",
        &["eventVersion", "a number"],
    );
    fails(
        &record(|r| {
            r.as_object_mut().unwrap().remove("eventVersion");
        }),
        "missing_field",
        &["eventVersion"],
    );
}

#[test]
fn required_fields() {
    fails(
        &record(|r| {
            r.as_object_mut().unwrap().remove("eventName");
        }),
        "missing_field",
        &["eventName"],
    );
    fails(
        &record(|r| {
            r.as_object_mut().unwrap().remove("s3");
        }),
        "missing_field",
        &["`s3`"],
    );
    fails(
        &record(|r| r["s3"]["bucket"] = serde_json::Value::Null),
        "missing_field",
        &["s3.bucket"],
    );
    fails(
        &record(|r| r["s3"]["bucket"]["name"] = "".into()),
        "invalid_field",
        &["s3.bucket.name", "empty"],
    );
    fails(
        &record(|r| {
            r["s3"]["object"].as_object_mut().unwrap().remove("key");
        }),
        "missing_field",
        &["s3.object.key"],
    );
    fails(
        &record(|r| r["s3"]["object"]["key"] = 5.into()),
        "invalid_field",
        &["s3.object.key", "a number"],
    );
    fails(
        &record(|r| r["s3"]["object"] = "k".into()),
        "invalid_field",
        &["s3.object", "a string"],
    );
}

#[test]
fn invalid_values() {
    fails(
        &record(|r| r["eventSource"] = "aws:sqs".into()),
        "not_s3_source",
        &["aws:sqs"],
    );
    fails(
        &record(|r| r["s3"]["object"]["key"] = "a%FFb".into()),
        "invalid_field",
        &["s3.object.key", "UTF-8"],
    );
    fails(
        &record(|r| r["s3"]["object"]["size"] = (-1).into()),
        "invalid_field",
        &["s3.object.size"],
    );
    fails(
        &record(|r| r["s3"]["object"]["size"] = 1.5.into()),
        "invalid_field",
        &["s3.object.size"],
    );
    fails(
        &record(|r| r["s3"]["object"]["hasObjectAnnotation"] = "yes".into()),
        "invalid_field",
        &["hasObjectAnnotation"],
    );
    fails(
        &record(|r| r["s3"]["object"]["versionId"] = true.into()),
        "invalid_field",
        &["versionId"],
    );
    fails(
        &record(|r| r["objectAnnotation"] = "label".into()),
        "invalid_field",
        &["objectAnnotation", "a string"],
    );
    fails(
        &record(|r| r["objectAnnotation"] = serde_json::json!([1])),
        "invalid_field",
        &["objectAnnotation", "a number"],
    );
    fails(
        &record(|r| r["objectAnnotation"] = serde_json::json!([{"size": 1}])),
        "missing_field",
        &["objectAnnotation"],
    );
    fails(
        &record(|r| r["objectAnnotation"] = serde_json::json!([{"name": ""}])),
        "invalid_field",
        &["empty annotation"],
    );
    fails(
        &record(|r| {
            r.as_object_mut().unwrap().remove("objectAnnotation");
            r["s3"]["annotation"] = 7.into();
        }),
        "invalid_field",
        &["s3.annotation"],
    );
}

#[test]
fn lenient_where_the_spec_allows() {
    use s3_events::{Action, Notification, ResetCause};
    let events = |body: Vec<u8>| match parse_message(&body).unwrap() {
        Notification::Events(e) => e,
        other => panic!("{other:?}"),
    };
    // Missing optional fields, empty strings, quoted numbers, unknown fields.
    let e = events(record(|r| {
        let o = r.as_object_mut().unwrap();
        o.remove("eventSource");
        o.remove("eventTime");
        r["s3"]["object"]["versionId"] = "".into();
        r["s3"]["object"]["size"] = "12".into();
        r["s3"]["object"]["eTag"] = "".into();
        r["s3"]["object"]["sequencer"] = "".into();
        r["s3"]["unknown"] = serde_json::json!({"deep": [1, {"x": null}]});
        r["userIdentity"] = 5.into();
    }));
    assert_eq!(e[0].object.version_id, None);
    assert_eq!(e[0].context.object_size, Some(12));
    assert_eq!(e[0].context.object_e_tag, None);
    assert_eq!(e[0].context.sequencer, None);
    assert_eq!(e[0].context.requester, None);
    // Fields that decide nothing are dropped when odd, never fatal.
    let e = events(record(|r| {
        r["s3"]["object"]["sequencer"] = "xyz".into();
        r["eventTime"] = "yesterday".into();
    }));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].context.sequencer, None);
    assert_eq!(e[0].context.event_time, None);
    let e = events(record(|r| {
        r["s3"]["object"]["sequencer"] = 12.into();
        r["eventTime"] = serde_json::json!({"at": 1});
    }));
    assert_eq!(
        (e[0].context.sequencer.clone(), e[0].context.event_time),
        (None, None)
    );
    // "s3:" prefix on the event name; an empty annotation array means "re-list".
    let e = events(record(|r| {
        r["eventName"] = "s3:ObjectAnnotation:Put".into();
        r["objectAnnotation"] = serde_json::json!([]);
    }));
    assert_eq!(
        e[0].action,
        Action::Reset {
            cause: ResetCause::AnnotationsChanged,
            relist: true
        }
    );
    // An annotation event of an unknown kind also re-lists: never guess at annotation state.
    let e = events(record(|r| {
        r["eventName"] = "ObjectAnnotation:Replicate".into()
    }));
    assert_eq!(
        e[0].action,
        Action::Reset {
            cause: ResetCause::AnnotationsChanged,
            relist: true
        }
    );
    // A copy without the flag may carry annotations (COPY is the default directive).
    let e = events(record(|r| {
        r["eventName"] = "ObjectCreated:Copy".into();
        r.as_object_mut().unwrap().remove("objectAnnotation");
    }));
    assert_eq!(
        e[0].action,
        Action::Reset {
            cause: ResetCause::ObjectCreated,
            relist: true
        }
    );
    // Any object creation that says it carries annotations is re-listed.
    let e = events(record(|r| {
        r["eventName"] = "ObjectCreated:Put".into();
        r["s3"]["object"]["hasObjectAnnotation"] = true.into();
    }));
    assert_eq!(
        e[0].action,
        Action::Reset {
            cause: ResetCause::ObjectCreated,
            relist: true
        }
    );
}

#[test]
fn one_bad_record_does_not_poison_its_siblings() {
    use s3_events::Notification;
    let good: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&record(|_| {})).unwrap()["Records"][0].clone();
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("s3");
    let body = serde_json::json!({ "Records": [good.clone(), bad, good] }).to_string();
    match parse_message(body.as_bytes()).unwrap() {
        Notification::Partial { events, rejected } => {
            assert_eq!(events.len(), 2, "both good records are kept");
            assert_eq!(rejected.len(), 1);
            assert_eq!(rejected[0].kind(), "missing_field");
            assert!(
                rejected[0].to_string().contains("record 1"),
                "{}",
                rejected[0]
            );
        }
        other => panic!("expected Partial, got {other:?}"),
    }
    // Every record bad: the message is rejected as a whole (the dead-letter path).
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("eventName");
    let body = serde_json::json!({ "Records": [bad.clone(), bad] }).to_string();
    let err = parse_message(body.as_bytes()).unwrap_err();
    assert_eq!(err.kind(), "missing_field");
}

#[test]
fn eventbridge_events() {
    let event = |patch: &dyn Fn(&mut serde_json::Value)| {
        let mut v = serde_json::json!({
            "version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3",
            "time": "2026-11-01T09:00:00Z", "region": "us-east-1",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "k", "version-id": "v1"},
                       "reason": "PutObject"}
        });
        patch(&mut v);
        v.to_string().into_bytes()
    };
    let Ok(s3_events::Notification::Events(events)) = parse_message(&event(&|_| {})) else {
        panic!("the baseline EventBridge event parses")
    };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].object.version_id.as_deref(), Some("v1"));
    fails(
        &event(&|v| v["detail"]["object"]["version-id"] = serde_json::json!(7)),
        "invalid_field",
        &["detail.object.version-id", "a number"],
    );
    fails(
        &event(&|v| v["detail"] = serde_json::json!("x")),
        "invalid_field",
        &["detail", "a string"],
    );
    fails(
        &event(&|v| v["detail"]["object"]["key"] = serde_json::json!("")),
        "invalid_field",
        &["detail.object.key", "empty"],
    );
    // EventBridge → SNS → SQS: the envelope is unwrapped like a notification's.
    let wrapped = serde_json::json!({
        "Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": String::from_utf8(event(&|_| {})).unwrap()
    });
    assert!(matches!(
        parse_message(wrapped.to_string().as_bytes()),
        Ok(s3_events::Notification::Events(e)) if e.len() == 1 && e[0].object.key == "k"
    ));
}
