//! The `annotations` view over hand-built journals: PUT / DELETE / OBJECT_RESET in every
//! order, equal sequence numbers, versioned and null versions. Each case lives in its own
//! bucket of one real table; rows are committed in an order unrelated to their sequence
//! numbers, over several snapshots, so nothing may depend on commit order.

use super::common;

use std::collections::{BTreeMap, BTreeSet};

use annotation_table::{JournalRow, RecordType};
use chrono::Utc;
use common::{Fixture, TestResult, row, strings};

/// One journal operation on an object of a case: `(version, op)`.
#[derive(Clone, Copy, Debug)]
enum Op {
    Put(&'static str, u64, &'static str),
    Delete(&'static str, u64),
    Reset(u64),
}

use Op::{Delete, Put, Reset};

const V1: Option<&str> = Some("v1");
const V2: Option<&str> = Some("v2");
const NULL: Option<&str> = None;

/// `(case name, operations on key "k", expected (version, name, text) present)`.
type Case = (
    &'static str,
    Vec<(Option<&'static str>, Op)>,
    Vec<(Option<&'static str>, &'static str, &'static str)>,
);

fn cases() -> Vec<Case> {
    vec![
        ("put", vec![(V1, Put("a", 1, "x"))], vec![(V1, "a", "x")]),
        (
            "put-delete",
            vec![(V1, Put("a", 1, "x")), (V1, Delete("a", 2))],
            vec![],
        ),
        (
            "delete-put",
            vec![(V1, Delete("a", 1)), (V1, Put("a", 2, "y"))],
            vec![(V1, "a", "y")],
        ),
        (
            "delete-seen-first-but-newer",
            vec![(V1, Delete("a", 9)), (V1, Put("a", 3, "x"))],
            vec![],
        ),
        (
            "overwrite",
            vec![(V1, Put("a", 1, "x")), (V1, Put("a", 2, "y"))],
            vec![(V1, "a", "y")],
        ),
        (
            "overwrite-seen-out-of-order",
            vec![(V1, Put("a", 7, "new")), (V1, Put("a", 3, "old"))],
            vec![(V1, "a", "new")],
        ),
        ("delete-never-put", vec![(V1, Delete("a", 1))], vec![]),
        ("reset-only", vec![(V1, Reset(1))], vec![]),
        (
            "put-reset",
            vec![(V1, Put("a", 1, "x")), (V1, Reset(2))],
            vec![],
        ),
        (
            "reset-put",
            vec![(V1, Reset(1)), (V1, Put("a", 2, "x"))],
            vec![(V1, "a", "x")],
        ),
        (
            "reset-and-put-equal-seq",
            vec![
                (V1, Put("a", 1, "old")),
                (V1, Reset(5)),
                (V1, Put("a", 5, "relisted")),
            ],
            vec![(V1, "a", "relisted")],
        ),
        (
            "relist-drops-unlisted",
            vec![
                (V1, Put("a", 1, "x")),
                (V1, Put("b", 2, "y")),
                (V1, Reset(5)),
                (V1, Put("b", 5, "y")),
            ],
            vec![(V1, "b", "y")],
        ),
        (
            "reset-newer-than-put-seen-first",
            vec![(V1, Reset(8)), (V1, Put("a", 4, "x"))],
            vec![],
        ),
        (
            "put-delete-reset-put",
            vec![
                (V1, Put("a", 1, "x")),
                (V1, Delete("a", 2)),
                (V1, Reset(3)),
                (V1, Put("a", 4, "z")),
            ],
            vec![(V1, "a", "z")],
        ),
        (
            "two-resets-latest-counts",
            vec![(V1, Reset(1)), (V1, Put("a", 3, "x")), (V1, Reset(5))],
            vec![],
        ),
        (
            "two-names-one-deleted",
            vec![
                (V1, Put("a", 1, "x")),
                (V1, Put("b", 2, "y")),
                (V1, Delete("a", 3)),
            ],
            vec![(V1, "b", "y")],
        ),
        (
            "versions-are-independent",
            vec![
                (V1, Put("a", 1, "one")),
                (V2, Put("a", 2, "two")),
                (V2, Reset(3)),
            ],
            vec![(V1, "a", "one")],
        ),
        (
            "delete-on-other-version",
            vec![
                (V1, Put("a", 1, "one")),
                (V2, Put("a", 2, "two")),
                (V1, Delete("a", 3)),
            ],
            vec![(V2, "a", "two")],
        ),
        (
            "null-version-reset-leaves-real-versions",
            vec![
                (NULL, Put("a", 1, "n")),
                (V1, Put("a", 2, "v")),
                (NULL, Reset(3)),
            ],
            vec![(V1, "a", "v")],
        ),
        (
            "real-version-reset-leaves-null-version",
            vec![
                (NULL, Put("a", 1, "n")),
                (V1, Put("a", 2, "v")),
                (V1, Reset(3)),
            ],
            vec![(NULL, "a", "n")],
        ),
        (
            "null-version-overwrite",
            vec![
                (NULL, Put("a", 1, "x")),
                (NULL, Reset(2)),
                (NULL, Put("a", 3, "y")),
            ],
            vec![(NULL, "a", "y")],
        ),
    ]
}

fn to_row(bucket: &str, version: Option<&str>, op: Op) -> JournalRow {
    let now = Utc::now();
    match op {
        Put(name, seq, text) => row(
            bucket,
            "k",
            version,
            Some(name),
            RecordType::Put,
            seq,
            Some(text),
            now,
        ),
        Delete(name, seq) => row(
            bucket,
            "k",
            version,
            Some(name),
            RecordType::Delete,
            seq,
            None,
            now,
        ),
        Reset(seq) => row(
            bucket,
            "k",
            version,
            None,
            RecordType::ObjectReset,
            seq,
            None,
            now,
        ),
    }
}

type State = BTreeSet<(String, Option<String>, String, String)>;

/// Reads the view: `(bucket, version, name, text)`.
async fn view_state(fixture: &Fixture) -> Result<State, Box<dyn std::error::Error>> {
    let session = fixture.session().await?;
    let result = session
        .query("SELECT bucket, object_version_id, name, text_value FROM annotations")
        .await?;
    let (b, v, n, t) = (
        strings(&result, "bucket"),
        strings(&result, "object_version_id"),
        strings(&result, "name"),
        strings(&result, "text_value"),
    );
    let mut state = State::new();
    for i in 0..b.len() {
        let fresh = state.insert((
            b[i].clone().unwrap_or_default(),
            v[i].clone(),
            n[i].clone().unwrap_or_default(),
            t[i].clone().unwrap_or_default(),
        ));
        assert!(fresh, "the view returned row {i} twice");
    }
    Ok(state)
}

/// Commits `rows` in three snapshots, in an order unrelated to their sequence numbers.
async fn commit_scrambled(fixture: &Fixture, mut rows: Vec<JournalRow>) -> TestResult {
    rows.reverse();
    let mut parts: [Vec<JournalRow>; 3] = Default::default();
    for (i, r) in rows.into_iter().enumerate() {
        parts[i % 3].push(r);
    }
    for part in parts.into_iter().rev() {
        fixture.append(part).await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_view_follows_the_rule_case_by_case() -> TestResult {
    let fixture = Fixture::new().await?;
    let mut rows = Vec::new();
    let mut expected = State::new();
    for (name, ops, present) in cases() {
        for (version, op) in ops {
            rows.push(to_row(name, version, op));
        }
        for (version, ann, text) in present {
            expected.insert((
                name.into(),
                version.map(Into::into),
                ann.into(),
                text.into(),
            ));
        }
    }
    commit_scrambled(&fixture, rows).await?;
    let actual = view_state(&fixture).await?;
    for (case, _, _) in cases() {
        let want: Vec<_> = expected.iter().filter(|e| e.0 == case).collect();
        let got: Vec<_> = actual.iter().filter(|e| e.0 == case).collect();
        assert_eq!(got, want, "case {case}");
    }
    assert_eq!(actual, expected);
    Ok(())
}

/// A tiny deterministic generator (no rand dependency for one test).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `(sequence number, 0 for a reset / 1 otherwise, version, type, name, text)`.
type Event<'a> = (
    u64,
    u8,
    Option<&'a str>,
    RecordType,
    Option<&'a str>,
    String,
);

/// Random journals against a replay model: apply every row in sequence order (at one
/// sequence number, the OBJECT_RESET before the PUTs of the re-list): PUT sets, DELETE
/// removes, OBJECT_RESET clears its object version.
#[tokio::test]
async fn random_journals_match_a_replay_model() -> TestResult {
    let fixture = Fixture::new().await?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let versions = [None, Some("v1"), Some("v2")];
    let names = ["a", "b", "c"];
    let mut rows = Vec::new();
    let mut expected = State::new();
    for case in 0..150 {
        let bucket = format!("random-{case}");
        let mut seqs: Vec<u64> = (1..=40).collect();
        // shuffle the sequence numbers so the generation order is not the sequence order
        for i in (1..seqs.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            seqs.swap(i, j);
        }
        let mut events: Vec<Event> = Vec::new();
        let ops = 2 + rng.below(10) as usize;
        for seq in seqs.into_iter().take(ops) {
            let version = versions[rng.below(3) as usize];
            let name = names[rng.below(3) as usize];
            let text = format!("t{seq}");
            match rng.below(10) {
                0..=4 => events.push((seq, 1, version, RecordType::Put, Some(name), text)),
                5..=6 => events.push((seq, 1, version, RecordType::Delete, Some(name), text)),
                7 => events.push((seq, 0, version, RecordType::ObjectReset, None, text)),
                _ => {
                    // a re-list: a reset and the PUTs it found, at one sequence number
                    events.push((seq, 0, version, RecordType::ObjectReset, None, text.clone()));
                    for name in names.iter().take(1 + rng.below(3) as usize) {
                        events.push((
                            seq,
                            1,
                            version,
                            RecordType::Put,
                            Some(name),
                            format!("{text}{name}"),
                        ));
                    }
                }
            }
        }
        for (seq, _, version, rt, name, text) in &events {
            let text = (*rt == RecordType::Put).then_some(text.as_str());
            rows.push(row(
                &bucket,
                "k",
                *version,
                *name,
                *rt,
                *seq,
                text,
                Utc::now(),
            ));
        }
        events.sort_by_key(|e| (e.0, e.1));
        let mut state: BTreeMap<(Option<&str>, &str), String> = BTreeMap::new();
        for (_, _, version, rt, name, text) in events {
            match (rt, name) {
                (RecordType::Put, Some(n)) => {
                    state.insert((version, n), text);
                }
                (RecordType::Delete, Some(n)) => {
                    state.remove(&(version, n));
                }
                _ => state.retain(|(v, _), _| *v != version),
            }
        }
        for ((version, name), text) in state {
            expected.insert((bucket.clone(), version.map(Into::into), name.into(), text));
        }
    }
    commit_scrambled(&fixture, rows).await?;
    assert_eq!(view_state(&fixture).await?, expected);
    Ok(())
}
