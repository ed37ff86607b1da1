//! The current-state rule as a fold: journal rows in, live annotations and tombstones out.
//!
//! The rule (docs/correctness.md §1, `queries/views/annotations.sql`): for each annotation
//! (bucket, object_key, object_version_id, name) the row with the largest sequence_number
//! wins; the annotation exists if that row is a `PUT` and no `OBJECT_RESET` of its object
//! version has a strictly larger sequence_number. A missing version counts as `""`, as in the
//! view.
//!
//! Folding keeps, per annotation, only its latest row and, per object version, only its latest
//! reset: both are maxima, so folding is order-free and folding a row twice changes nothing.
//! That is what makes an incremental refresh exact: the state table's rows (as `PUT`s) and its
//! tombstones, folded with the journal rows committed since, give the same answer as folding
//! the whole journal, and a refresh that crashed after committing one of its two tables can
//! simply be run again.
//!
//! [`Fold::finish`] drops what no later row can need: a `PUT` or `DELETE` a reset of its
//! version already outranks (any row that could beat it later is decided by the reset
//! anyway), and a `DELETE` some `PUT` outranks. What remains besides the live `PUT`s is the
//! tombstones: deletes still in force, and every version's latest reset, so that a row a slow
//! writer commits late, with an older sequence_number, cannot bring an annotation back.
//!
//! A row already in the state can be folded in with its [`Origin`]: if it survives, the fold
//! says so ([`Folded::stay`]) instead of returning it, and the refresh leaves it where it is.
//! Such a row needs only the columns the rule reads (version, name, record type, sequence
//! number), since it is never written again: that is what lets a refresh read only those
//! columns of the rows it touches, and write only what changed.

use std::collections::HashMap;

use crate::{JournalRow, RecordType};

/// (bucket, object_key, object_version_id or "").
type VersionKey = (String, String, String);

/// A version and an annotation name.
type AnnotationKey = (VersionKey, String);

fn version_key(row: &JournalRow) -> VersionKey {
    (
        row.bucket.clone(),
        row.object_key.clone(),
        row.object_version_id.clone().unwrap_or_default(),
    )
}

/// Where a row already in the state was read: the index of its file among those the caller
/// read, and its position in that file.
pub(crate) type Origin = (usize, u64);

/// The latest row of every annotation and the latest reset of every object version seen,
/// with where it was read when it is already in the state.
#[derive(Debug, Default)]
pub(crate) struct Fold {
    annotations: HashMap<AnnotationKey, (JournalRow, Option<Origin>)>,
    resets: HashMap<VersionKey, (JournalRow, Option<Origin>)>,
}

/// What a fold leaves: the current state and what must be remembered about the rest.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Folded {
    /// Live annotations (`PUT` rows).
    pub live: Vec<JournalRow>,
    /// `DELETE` rows still in force and every version's latest `OBJECT_RESET`.
    pub tombstones: Vec<JournalRow>,
    /// The rows folded in with an origin that survive: they stay where they are, and are in
    /// neither list above.
    pub stay: Vec<Origin>,
}

impl Fold {
    /// Folds one row in. A row of a kind the rule does not know (a `PUT` without a name) is
    /// ignored, as the view ignores it.
    pub(crate) fn add(&mut self, row: JournalRow) {
        self.add_from(row, None);
    }

    /// Folds in a row, read at `origin` when it is already in the state. Of rows with equal
    /// sequence numbers (the same observation folded twice) the first folded in is kept.
    pub(crate) fn add_from(&mut self, row: JournalRow, origin: Option<Origin>) {
        match row.record_type {
            RecordType::ObjectReset => {
                let key = version_key(&row);
                match self.resets.get(&key) {
                    Some((have, _)) if have.sequence_number >= row.sequence_number => {}
                    _ => {
                        self.resets.insert(key, (row, origin));
                    }
                }
            }
            RecordType::Put | RecordType::Delete => {
                let Some(name) = row.name.clone() else {
                    return;
                };
                let key = (version_key(&row), name);
                match self.annotations.get(&key) {
                    Some((have, _)) if have.sequence_number >= row.sequence_number => {}
                    _ => {
                        self.annotations.insert(key, (row, origin));
                    }
                }
            }
        }
    }

    /// Applies the rule.
    pub(crate) fn finish(self) -> Folded {
        let Fold {
            annotations,
            resets,
        } = self;
        let mut out = Folded::default();
        for ((version, _), (row, origin)) in annotations {
            let reset = resets
                .get(&version)
                .map(|(r, _)| r.sequence_number.as_str());
            let list = match row.record_type {
                RecordType::Put if reset.is_none_or(|r| r <= row.sequence_number.as_str()) => {
                    &mut out.live
                }
                RecordType::Delete if reset.is_none_or(|r| r < row.sequence_number.as_str()) => {
                    &mut out.tombstones
                }
                _ => continue,
            };
            match origin {
                Some(origin) => out.stay.push(origin),
                None => list.push(row),
            }
        }
        for (row, origin) in resets.into_values() {
            match origin {
                Some(origin) => out.stay.push(origin),
                None => out.tombstones.push(row),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn row(version: Option<&str>, name: Option<&str>, kind: RecordType, seq: u32) -> JournalRow {
        JournalRow {
            bucket: "b".into(),
            object_key: "k".into(),
            object_version_id: version.map(str::to_string),
            object_join_key: "j".into(),
            name: name.map(str::to_string),
            record_type: kind,
            sequence_number: format!("{seq:020}-w"),
            last_modified_date: None,
            size: Some(i64::from(seq)),
            e_tag: None,
            checksum_algorithm: None,
            replication_status: None,
            text_value: Some(format!("v{seq}")),
            event_name: None,
            event_time: None,
            source: crate::Source::Notification,
            requester: None,
            source_ip_address: None,
            request_id: None,
            ingested_at: DateTime::default(),
        }
    }

    fn put(name: &str, seq: u32) -> JournalRow {
        row(None, Some(name), RecordType::Put, seq)
    }
    fn delete(name: &str, seq: u32) -> JournalRow {
        row(None, Some(name), RecordType::Delete, seq)
    }
    fn reset(seq: u32) -> JournalRow {
        row(None, None, RecordType::ObjectReset, seq)
    }

    fn fold(rows: impl IntoIterator<Item = JournalRow>) -> Folded {
        let mut f = Fold::default();
        for r in rows {
            f.add(r);
        }
        let mut out = f.finish();
        out.live.sort_by(|a, b| a.name.cmp(&b.name));
        out.tombstones
            .sort_by(|a, b| (&a.name, &a.sequence_number).cmp(&(&b.name, &b.sequence_number)));
        out
    }

    fn live(f: &Folded) -> Vec<(String, u32)> {
        f.live
            .iter()
            .map(|r| {
                (
                    r.name.clone().unwrap_or_default(),
                    r.size.unwrap_or(0) as u32,
                )
            })
            .collect()
    }

    #[test]
    fn the_latest_row_wins_whatever_the_order() {
        let rows = [
            put("a", 1),
            put("a", 3),
            delete("a", 2),
            put("b", 1),
            delete("b", 2),
        ];
        let forward = fold(rows.clone());
        let backward = fold(rows.into_iter().rev());
        assert_eq!(live(&forward), [("a".to_string(), 3)]);
        assert_eq!(forward, backward);
        assert_eq!(forward.tombstones.len(), 1, "b's delete stays in force");
    }

    #[test]
    fn a_reset_removes_older_annotations_but_not_those_restated_with_it() {
        let f = fold([put("a", 1), put("b", 5), reset(5), put("c", 6), put("d", 4)]);
        assert_eq!(
            live(&f),
            [("b".to_string(), 5), ("c".to_string(), 6)],
            "a and d are older than the reset; b was re-listed with it"
        );
        assert_eq!(f.tombstones.len(), 1, "only the reset is remembered");
    }

    #[test]
    fn folding_the_state_with_late_rows_equals_folding_everything() {
        // A slow writer commits old observations after the state was refreshed.
        let early = [
            put("a", 10),
            delete("b", 10),
            put("b", 5),
            reset(8),
            put("c", 9),
        ];
        let late = [
            put("a", 4),
            put("b", 7),
            put("c", 7),
            put("e", 3),
            delete("c", 11),
        ];
        let all = fold(early.iter().chain(late.iter()).cloned());
        let state = fold(early.iter().cloned());
        let incremental = fold(
            state
                .live
                .into_iter()
                .chain(state.tombstones)
                .chain(late.iter().cloned()),
        );
        assert_eq!(live(&incremental), live(&all));
        assert_eq!(live(&all), [("a".to_string(), 10)]);
        // And once more: folding a result again changes nothing.
        let again = fold(
            incremental
                .live
                .iter()
                .chain(&incremental.tombstones)
                .cloned(),
        );
        assert_eq!(again, incremental);
    }

    #[test]
    fn rows_already_in_the_state_that_survive_stay_where_they_are() {
        let mut f = Fold::default();
        // The journal's new rows first, as a refresh folds them.
        f.add(put("a", 7));
        f.add(delete("b", 7));
        f.add(put("e", 3));
        // The state's rows of the same version: a outranked, b deleted, c and the reset kept,
        // e the same observation as the journal's (the journal's row is kept).
        f.add_from(put("a", 5), Some((0, 10)));
        f.add_from(put("b", 5), Some((0, 11)));
        f.add_from(put("c", 5), Some((0, 12)));
        f.add_from(put("e", 3), Some((0, 13)));
        f.add_from(reset(2), Some((1, 0)));
        let mut out = f.finish();
        out.stay.sort_unstable();
        assert_eq!(out.stay, [(0, 12), (1, 0)]);
        let mut live: Vec<_> = out.live.iter().filter_map(|r| r.name.clone()).collect();
        live.sort();
        assert_eq!(live, ["a", "e"], "only the journal's survivors are written");
        assert_eq!(out.tombstones.len(), 1, "b's delete");
    }

    #[test]
    fn versions_are_separate_and_a_missing_version_is_the_empty_one() {
        let v1 = |kind, seq| row(Some("v1"), Some("a"), kind, seq);
        let f = fold([
            v1(RecordType::Put, 1),
            row(None, Some("a"), RecordType::Put, 2),
            row(Some(""), None, RecordType::ObjectReset, 3),
        ]);
        assert_eq!(f.live.len(), 1);
        assert_eq!(f.live[0].object_version_id.as_deref(), Some("v1"));
    }
}
