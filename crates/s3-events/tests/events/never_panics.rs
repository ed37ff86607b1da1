//! Property tests: no input makes the parser panic, and whatever it accepts is well-formed.
//!
//! Three generators, from blind to structure-aware: arbitrary bytes; byte-level mutations
//! (flip, insert, delete, truncate) of the real fixtures; and JSON-level mutations that replace a
//! random node of a fixture with an arbitrary JSON value, which reaches the deep field checks.
//!
//! The default case count keeps CI quick; the 100k-input run is
//! `PROPTEST_CASES=100000 cargo test --release -p s3-events --test never_panics`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use s3_events::{Notification, parse_message};
use serde_json::Value;

fn fixtures() -> &'static [Vec<u8>] {
    static FIXTURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/notifications");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    })
}

/// Parses and checks the invariants of an accepted message.
fn check(body: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse_message(body);
    if let Ok(Notification::Partial { events, rejected }) = &parsed {
        prop_assert!(
            !events.is_empty() && !rejected.is_empty(),
            "a partial message with no events or nothing rejected"
        );
    }
    match parsed {
        Ok(Notification::Events(events) | Notification::Partial { events, .. }) => {
            prop_assert!(!events.is_empty(), "accepted a message with no events");
            // EventBridge events carry their own schema version (`0`, `1.x`); only
            // notification records are held to 2.x.
            let eventbridge = String::from_utf8_lossy(body).contains("detail-type");
            for e in events {
                prop_assert!(!e.object.bucket.is_empty(), "event with an empty bucket");
                prop_assert!(!e.object.key.is_empty(), "event with an empty key");
                if eventbridge {
                    continue;
                }
                let major = e
                    .context
                    .event_version
                    .split('.')
                    .next()
                    .unwrap_or_default();
                prop_assert_eq!(
                    major.trim_start_matches('0'),
                    "2",
                    "accepted eventVersion {}",
                    e.context.event_version
                );
            }
        }
        Ok(Notification::Test(_)) => {}
        Err(err) => prop_assert!(!err.to_string().is_empty()),
    }
    Ok(())
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2.6"),
            Just("3.0"),
            Just("ObjectAnnotation:Put"),
            Just("ObjectCreated:Copy"),
            Just("%FF"),
            Just("+"),
            Just("null"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{1,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Replaces the `n`-th node (pre-order, wrapping) of `value` with `replacement`.
fn replace_nth(value: &mut Value, n: &mut usize, replacement: &Value) -> bool {
    if *n == 0 {
        *value = replacement.clone();
        return true;
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|v| replace_nth(v, n, replacement)),
        Value::Object(map) => map.values_mut().any(|v| replace_nth(v, n, replacement)),
        _ => false,
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn mutated_fixture_bytes(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut body = fixtures()[which.index(fixtures().len())].clone();
        for (at, byte, op) in edits {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                2 => { body.remove(i); }
                _ => body[i] = b"{}[]\",:0\\n"[byte as usize % 10],
            }
        }
        if truncate && !body.is_empty() {
            body.truncate(cut.index(body.len()));
        }
        check(&body)?;
    }

    #[test]
    fn mutated_fixture_json(
        which in any::<prop::sample::Index>(),
        mutations in prop::collection::vec((any::<usize>(), arb_json()), 1..4),
        wrap_in_sns in any::<bool>(),
    ) {
        let original = &fixtures()[which.index(fixtures().len())];
        let mut value: Value = serde_json::from_slice(original).unwrap();
        for (node, replacement) in mutations {
            let mut n = node % 64;
            replace_nth(&mut value, &mut n, &replacement);
        }
        let body = if wrap_in_sns {
            serde_json::json!({"Type": "Notification", "TopicArn": "t", "Message": value.to_string()}).to_string()
        } else {
            value.to_string()
        };
        check(body.as_bytes())?;
    }
}
