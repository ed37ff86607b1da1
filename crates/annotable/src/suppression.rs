//! Suppression: which of an observation's rows the journal already holds
//! (docs/correctness.md §4). It only filters the rows `rows` built; it never makes one.
//!
//! [`StateCache`] remembers, per object version, the last *committed* row of each annotation
//! (a digest of its content fields, its sequence number and the event behind it) and the last
//! full observation (`OBJECT_RESET`). An observation is left out only when the rows already
//! committed make it redundant *whatever any other writer commits later* — the cache may not
//! know another writer's rows, and another writer may commit a row observed before ours after
//! we acknowledged our message. The argument: the view ends equal to S3 if, for the last event
//! that changed an annotation, some committed row observed the annotation *after* that event
//! (every later observation sees the same final state, and rows observed earlier sort below
//! it). So an observation of event `E` is suppressed only when
//! - a committed row with a larger sequence number covers it (it would lose anyway); or
//! - it sees the annotation present with exactly the content, ETag and Last-Modified of the
//!   latest committed row: the same S3 write, so that row was observed after the write, and any
//!   event about the annotation after that write would have changed its Last-Modified; or
//! - it sees an absence (a delete, a gone version, a listing) that the latest committed row
//!   already states, and that row was observed after `E` — it was written for the same event
//!   (a redelivery), or its observation time is later than `E`'s `eventTime` by more than
//!   `serve.max_clock_skew_ms` (host and S3 clocks may disagree by that much).
//!
//! Nothing else is suppressed, so no acknowledgement depends on rows that are not yet committed
//! or on what the cache does not know: a process killed at any point loses nothing.
//! The residual assumption (beyond the ordering's): S3 does not rewrite an annotation to
//! another value and back to the same payload within one tick of its Last-Modified clock.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;

use annotation_table::{JournalRow, RecordType};
use chrono::{DateTime, Utc};
use s3_events::ObjectRef;

use crate::rows::{Observation, Observed};

/// The identity of the notification behind a row or an observation: equal for a message's
/// redeliveries, different for two S3 requests. `None` when the event says too little to tell
/// (no time and no request id), and for backfill.
fn event_identity(
    event_name: Option<&str>,
    event_time: Option<DateTime<Utc>>,
    request_id: Option<&str>,
) -> Option<u64> {
    if event_time.is_none() && request_id.is_none() {
        return None;
    }
    let mut h = DefaultHasher::new();
    (
        event_name,
        event_time.map(|t| t.timestamp_micros()),
        request_id,
    )
        .hash(&mut h);
    Some(h.finish())
}

/// The observation time (ns) a sequence number starts with.
fn seq_nanos(seq: &str) -> Option<i64> {
    seq.get(..20)?.parse().ok()
}

/// What the suppression rule knows of the event behind an observation.
struct EventMark {
    id: Option<u64>,
    time_nanos: Option<i64>,
}

impl EventMark {
    fn of(obs: &Observation) -> Self {
        let ctx = obs.context.as_ref();
        EventMark {
            id: ctx.and_then(|c| {
                event_identity(Some(&c.event_name), c.event_time, c.request_id.as_deref())
            }),
            time_nanos: ctx
                .and_then(|c| c.event_time)
                .and_then(|t| t.timestamp_nanos_opt()),
        }
    }
}

/// Identifies an object version in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VersionKey {
    bucket: String,
    key: String,
    version: Option<String>,
}

impl VersionKey {
    fn of(object: &ObjectRef) -> Self {
        VersionKey {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            version: object.table_version_id().map(str::to_string),
        }
    }

    fn of_row(row: &JournalRow) -> Self {
        VersionKey {
            bucket: row.bucket.clone(),
            key: row.object_key.clone(),
            version: row.object_version_id.clone(),
        }
    }
}

/// A committed row as the cache keeps it: when it was observed and for which event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowMark {
    seq: String,
    event: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NameState {
    mark: RowMark,
    /// `None`: absent.
    digest: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct VersionEntry {
    /// The last full observation (OBJECT_RESET): every name not in `names` is known absent.
    full: Option<RowMark>,
    names: HashMap<String, NameState>,
}

impl VersionEntry {
    fn full_seq(&self) -> Option<&str> {
        self.full.as_ref().map(|m| m.seq.as_str())
    }

    fn apply_reset(&mut self, mark: &RowMark) {
        let seq = mark.seq.as_str();
        if self.full_seq().is_some_and(|f| f > seq) {
            return;
        }
        self.full = Some(mark.clone());
        self.names.retain(|_, n| n.mark.seq.as_str() >= seq);
    }

    fn apply_name(&mut self, name: &str, mark: &RowMark, digest: Option<u64>) {
        let seq = mark.seq.as_str();
        if self.full_seq().is_some_and(|f| f > seq) {
            return;
        }
        match self.names.get(name) {
            Some(n) if n.mark.seq.as_str() > seq => {}
            _ => {
                self.names.insert(
                    name.to_string(),
                    NameState {
                        mark: mark.clone(),
                        digest,
                    },
                );
            }
        }
    }

    /// The latest committed statement about `name`: its digest (`None`: absent) and the row
    /// that made it; `None` when nothing is known.
    fn known(&self, name: &str) -> Option<(Option<u64>, &RowMark)> {
        match (self.names.get(name), &self.full) {
            (Some(n), _) => Some((n.digest, &n.mark)),
            (None, Some(full)) => Some((None, full)),
            (None, None) => None,
        }
    }

    /// Whether an observation at `seq` of `name` is older than what is known.
    fn is_stale(&self, name: Option<&str>, seq: &str) -> bool {
        if self.full_seq().is_some_and(|f| f > seq) {
            return true;
        }
        name.and_then(|n| self.names.get(n))
            .is_some_and(|n| n.mark.seq.as_str() > seq)
    }

    fn present(&self) -> HashMap<&str, u64> {
        self.names
            .iter()
            .filter_map(|(k, v)| v.digest.map(|d| (k.as_str(), d)))
            .collect()
    }
}

/// A digest of an annotation's content fields: two rows with the same digest describe the same
/// state.
pub fn state_digest(
    text_value: Option<&str>,
    size: Option<i64>,
    e_tag: Option<&str>,
    last_modified: Option<chrono::NaiveDateTime>,
    checksum_algorithm: Option<&str>,
    replication_status: Option<&str>,
) -> u64 {
    let mut h = DefaultHasher::new();
    (
        text_value,
        size,
        e_tag,
        last_modified,
        checksum_algorithm,
        replication_status,
    )
        .hash(&mut h);
    h.finish()
}

/// The payload enters the digest only when S3 gave no ETag: an ETag and a Last-Modified
/// already identify one S3 write, and leaving the payload out lets the start-up warm-up skip
/// reading an hour of payloads.
fn row_digest(r: &JournalRow) -> u64 {
    state_digest(
        r.text_value.as_deref().filter(|_| r.e_tag.is_none()),
        r.size,
        r.e_tag.as_deref(),
        r.last_modified_date,
        r.checksum_algorithm.as_deref(),
        r.replication_status.as_deref(),
    )
}

/// The last committed state per object version, bounded (least recently used versions are
/// forgotten; forgetting only costs a possible restating row).
#[derive(Debug)]
pub struct StateCache {
    map: lru::LruCache<VersionKey, VersionEntry>,
    /// How far a host's clock may be from S3's (see the module doc).
    max_skew_nanos: i64,
}

/// The changes of one batch, applied to the cache only once the batch is committed.
#[derive(Debug, Default)]
pub struct Overlay {
    map: HashMap<VersionKey, VersionEntry>,
    suppressed: usize,
}

impl Overlay {
    /// Observations that produced no row because they restated the known state.
    pub fn suppressed(&self) -> usize {
        self.suppressed
    }
}

impl StateCache {
    /// A cache of at most `versions` object versions; `max_clock_skew` is how far any
    /// writer's clock may be from S3's.
    pub fn new(versions: usize, max_clock_skew: std::time::Duration) -> Self {
        let cap = NonZeroUsize::new(versions.max(1)).unwrap_or(NonZeroUsize::MIN);
        StateCache {
            map: lru::LruCache::new(cap),
            max_skew_nanos: i64::try_from(max_clock_skew.as_nanos()).unwrap_or(i64::MAX),
        }
    }

    /// Whether the committed row `mark` was observed after the event behind an observation: it
    /// was written for the same event, or its observation time is past the event's time by
    /// more than the clock skew allowed.
    fn settles(&self, mark: &RowMark, event: &EventMark) -> bool {
        if mark.event.is_some() && mark.event == event.id {
            return true;
        }
        match (seq_nanos(&mark.seq), event.time_nanos) {
            (Some(observed), Some(happened)) => {
                observed > happened.saturating_add(self.max_skew_nanos)
            }
            _ => false,
        }
    }

    /// Versions remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records committed rows (the start-up warm-up); rows must come in sequence_number order
    /// per version, an OBJECT_RESET before the PUTs that share its sequence number.
    pub fn apply_row(&mut self, row: &JournalRow) {
        let key = VersionKey::of_row(row);
        let entry = self.map.get_or_insert_mut(key, VersionEntry::default);
        apply_row_to(entry, row);
    }

    /// Applies a committed batch's overlay.
    pub fn commit(&mut self, overlay: Overlay) {
        for (key, entry) in overlay.map {
            self.map.put(key, entry);
        }
    }

    /// The rows of `obs` (from `rows::rows_of`) the journal does not already hold, given
    /// what is known; records the kept ones in `overlay`. Only filters: every row it returns
    /// is one it was given.
    pub fn keep(
        &mut self,
        overlay: &mut Overlay,
        obs: &Observation,
        rows: Vec<JournalRow>,
    ) -> Vec<JournalRow> {
        let key = VersionKey::of(&obs.object);
        let event = EventMark::of(obs);
        let entry = match overlay.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let known = self.map.get(v.key()).cloned().unwrap_or_default();
                v.insert(known)
            }
        };
        let seq = obs.sequence_number.as_str();
        let mark = RowMark {
            seq: seq.to_string(),
            event: event.id,
        };
        let digest = |r: &JournalRow| (r.record_type == RecordType::Put).then(|| row_digest(r));
        let redundant = match &obs.observed {
            Observed::Annotation { name, .. } => {
                let seen = rows.first().and_then(digest);
                entry.is_stale(Some(name), seq)
                    || match entry.known(name) {
                        // The same S3 write as the committed row (see the module doc).
                        Some((Some(known), _)) => seen == Some(known),
                        // An absence: only if the committed absence was observed after the event.
                        Some((None, row)) => seen.is_none() && self.settles(row, &event),
                        None => false,
                    }
            }
            // A listing also states every unlisted name's absence: the committed full
            // observation must have been made after the event.
            Observed::Version(_) => {
                let listed: HashMap<&str, u64> = rows
                    .iter()
                    .filter_map(|r| Some((r.name.as_deref()?, digest(r)?)))
                    .collect();
                entry.is_stale(None, seq)
                    || entry
                        .full
                        .as_ref()
                        .is_some_and(|full| self.settles(full, &event))
                        && entry.present() == listed
            }
            // Only what is older than a committed row: a part's PUT left out as a restatement
            // would be hidden by the last part's OBJECT_RESET, which shares its sequence number
            // only with rows this listing wrote.
            Observed::SetPart { .. } => entry.is_stale(None, seq),
        };
        if redundant {
            overlay.suppressed += 1;
            return Vec::new();
        }
        let single = matches!(obs.observed, Observed::Annotation { .. });
        rows.into_iter()
            .filter(|r| match (r.record_type, r.name.as_deref()) {
                (RecordType::ObjectReset, _) => {
                    entry.apply_reset(&mark);
                    true
                }
                // A name observed after this listing already has a newer row: restating it
                // here would add nothing (the view takes its newer row either way).
                (_, Some(name)) if !single && entry.is_stale(Some(name), seq) => false,
                (_, Some(name)) => {
                    entry.apply_name(name, &mark, digest(r));
                    true
                }
                (_, None) => true,
            })
            .collect()
    }
}

fn apply_row_to(entry: &mut VersionEntry, row: &JournalRow) {
    let mark = RowMark {
        seq: row.sequence_number.clone(),
        event: event_identity(
            row.event_name.as_deref(),
            row.event_time,
            row.request_id.as_deref(),
        ),
    };
    match (row.record_type, row.name.as_deref()) {
        (RecordType::ObjectReset, _) => entry.apply_reset(&mark),
        (RecordType::Put, Some(name)) => entry.apply_name(name, &mark, Some(row_digest(row))),
        (RecordType::Delete, Some(name)) => entry.apply_name(name, &mark, None),
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::fixtures::{ann, obs, one};
    use crate::rows::rows_of;
    use annotation_table::Source;
    use s3_events::EventContext;
    use std::time::Duration;

    fn rows_for(cache: &mut StateCache, overlay: &mut Overlay, o: &Observation) -> Vec<JournalRow> {
        cache.keep(overlay, o, rows_of(o, Source::Notification, Utc::now()))
    }

    fn write(cache: &mut StateCache, o: &Observation) -> Vec<(RecordType, Option<String>)> {
        let mut overlay = Overlay::default();
        let rows = rows_for(cache, &mut overlay, o);
        cache.commit(overlay);
        rows.into_iter().map(|r| (r.record_type, r.name)).collect()
    }

    /// An observation made for the event `request` that happened at `event_at` (ns).
    fn for_event(seq: u64, observed: Observed, event_at: u64, request: &str) -> Observation {
        Observation {
            context: Some(EventContext {
                event_name: "ObjectAnnotation:Put".into(),
                event_time: DateTime::from_timestamp_nanos(event_at as i64).into(),
                request_id: Some(request.into()),
                ..EventContext::default()
            }),
            ..obs(seq, observed)
        }
    }

    fn set(xs: &[(&str, &str)]) -> Observed {
        Observed::Version(Some(xs.iter().map(|(n, t)| ann(n, t)).collect()))
    }

    #[test]
    fn the_same_s3_write_observed_again_writes_nothing() {
        let mut c = StateCache::new(10, Duration::ZERO);
        assert_eq!(write(&mut c, &obs(1, one("a", Some("x")))).len(), 1);
        // No event information needed: equal content, ETag and Last-Modified is one write.
        assert!(write(&mut c, &obs(2, one("a", Some("x")))).is_empty());
        assert_eq!(write(&mut c, &obs(3, one("a", Some("y")))).len(), 1);
        let mut later = ann("a", "y");
        later.last_modified = chrono::DateTime::from_timestamp(9, 0).map(|d| d.naive_utc());
        let rewritten = Observed::Annotation {
            name: "a".into(),
            state: Some(later),
        };
        assert_eq!(
            write(&mut c, &obs(4, rewritten)).len(),
            1,
            "the same payload written again is another write"
        );
    }

    #[test]
    fn a_redelivered_absence_writes_nothing() {
        let mut c = StateCache::new(10, Duration::from_secs(1));
        let delete = |seq| for_event(seq, one("a", None), 1_000, "req-1");
        assert_eq!(write(&mut c, &delete(2_000)).len(), 1);
        assert!(write(&mut c, &delete(9_000)).is_empty(), "redelivery");
        let gone = |seq| for_event(seq, Observed::Version(None), 10_000, "req-2");
        assert_eq!(write(&mut c, &gone(11_000)).len(), 1);
        assert!(write(&mut c, &gone(12_000)).is_empty(), "redelivery");
    }

    #[test]
    fn an_absence_is_suppressed_only_when_the_committed_one_was_observed_after_the_event() {
        let skew = Duration::from_millis(100);
        let ms = 1_000_000;
        let mut c = StateCache::new(10, skew);
        write(
            &mut c,
            &for_event(1_000 * ms, one("a", None), 500 * ms, "req-1"),
        );
        // Another delete event, older than that observation by more than the skew: the
        // committed row already reflects it.
        assert!(
            write(
                &mut c,
                &for_event(2_000 * ms, one("a", None), 800 * ms, "req-2")
            )
            .is_empty()
        );
        // Within the skew, or after the observation: written.
        assert_eq!(
            write(
                &mut c,
                &for_event(3_000 * ms, one("a", None), 950 * ms, "req-3")
            )
            .len(),
            1
        );
        assert_eq!(
            write(
                &mut c,
                &for_event(5_000 * ms, one("a", None), 4_000 * ms, "req-4")
            )
            .len(),
            1
        );
        // No event time and another event: nothing proves it, so it is written.
        assert_eq!(write(&mut c, &obs(6_000 * ms, one("a", None))).len(), 1);
    }

    /// The two-writer loss of issue 19: this process's cache knows the version's listing
    /// (no `a`); another writer committed `PUT a` that this process never saw; `a` is then
    /// deleted and the delete event reaches this process. Its observation (absent) restates
    /// what the cache knows, but it must be written: the other writer's PUT outranks every
    /// committed row this process has, and nothing else would ever say `a` is gone.
    #[test]
    fn an_absence_after_an_unseen_foreign_put_is_written() {
        let mut c = StateCache::new(10, Duration::ZERO);
        write(&mut c, &for_event(10, set(&[("b", "1")]), 5, "req-create"));
        // (other writer: PUT a observed at 20, committed; unknown to this cache)
        let rows = write(&mut c, &for_event(40, one("a", None), 30, "req-delete-a"));
        assert_eq!(rows, vec![(RecordType::Delete, Some("a".into()))]);
    }

    #[test]
    fn a_stale_observation_writes_nothing() {
        let mut c = StateCache::new(10, Duration::ZERO);
        write(&mut c, &obs(5, one("a", Some("new"))));
        assert!(write(&mut c, &obs(3, one("a", Some("old")))).is_empty());
        assert!(write(&mut c, &obs(4, one("a", None))).is_empty());
    }

    #[test]
    fn a_listing_is_suppressed_only_for_the_same_set_observed_after_its_event() {
        let mut c = StateCache::new(10, Duration::ZERO);
        let listing = |seq, xs: &[(&str, &str)], req| for_event(seq, set(xs), seq - 1, req);
        assert_eq!(
            write(&mut c, &listing(10, &[("a", "1"), ("b", "2")], "r1")).len(),
            3
        );
        // Redelivered: nothing.
        assert!(
            write(
                &mut c,
                &for_event(20, set(&[("a", "1"), ("b", "2")]), 9, "r1")
            )
            .is_empty()
        );
        // An older event whose listing the committed one already covers: nothing.
        assert!(
            write(
                &mut c,
                &for_event(21, set(&[("a", "1"), ("b", "2")]), 8, "r0")
            )
            .is_empty()
        );
        // A later event, same set: written (the committed listing predates the event).
        assert_eq!(
            write(&mut c, &listing(30, &[("a", "1"), ("b", "2")], "r2")).len(),
            3
        );
        // A name the cache learns about, then the same full set again: written.
        write(&mut c, &obs(31, one("c", Some("3"))));
        assert_eq!(
            write(
                &mut c,
                &for_event(40, set(&[("a", "1"), ("b", "2")]), 5, "r0")
            )
            .len(),
            3
        );
        // Gone, redelivered.
        let gone = |seq| for_event(seq, Observed::Version(None), 45, "r3");
        assert_eq!(write(&mut c, &gone(50)).len(), 1);
        assert!(write(&mut c, &gone(60)).is_empty());
    }

    #[test]
    fn a_listing_older_than_a_name_observation_does_not_restate_that_name() {
        let mut c = StateCache::new(10, Duration::ZERO);
        write(&mut c, &obs(5, one("a", Some("x"))));
        let listing = Observed::Version(Some(vec![ann("a", "x"), ann("b", "y")]));
        let rows = write(&mut c, &obs(3, listing));
        assert_eq!(
            rows,
            vec![
                (RecordType::ObjectReset, None),
                (RecordType::Put, Some("b".into()))
            ]
        );
    }

    #[test]
    fn an_uncommitted_overlay_changes_nothing() {
        let mut c = StateCache::new(10, Duration::ZERO);
        let mut overlay = Overlay::default();
        let rows = rows_for(&mut c, &mut overlay, &obs(1, one("a", Some("x"))));
        assert_eq!(rows.len(), 1);
        drop(overlay);
        assert_eq!(write(&mut c, &obs(2, one("a", Some("x")))).len(), 1);
    }

    #[test]
    fn warm_up_from_rows_matches_writing_them() {
        let mut written = StateCache::new(10, Duration::ZERO);
        let mut rows = Vec::new();
        for o in [
            for_event(10, one("a", Some("x")), 5, "r1"),
            for_event(20, one("b", Some("y")), 15, "r2"),
            for_event(30, one("a", None), 25, "r3"),
        ] {
            let mut overlay = Overlay::default();
            rows.extend(rows_for(&mut written, &mut overlay, &o));
            written.commit(overlay);
        }
        let mut warmed = StateCache::new(10, Duration::ZERO);
        for r in &rows {
            warmed.apply_row(r);
        }
        assert!(write(&mut warmed, &obs(40, one("b", Some("y")))).is_empty());
        // The redelivered delete is recognised from the row's own event fields.
        assert!(write(&mut warmed, &for_event(50, one("a", None), 25, "r3")).is_empty());
        assert_eq!(
            write(&mut warmed, &for_event(60, one("a", None), 55, "r4")).len(),
            1
        );
        assert_eq!(write(&mut warmed, &obs(70, one("a", Some("x")))).len(), 1);
    }

    fn part(xs: &[(&str, &str)], last: bool) -> Observed {
        Observed::SetPart {
            annotations: xs.iter().map(|(n, t)| ann(n, t)).collect(),
            last,
        }
    }

    #[test]
    fn a_set_read_in_parts_restates_every_put_and_resets_with_the_last_part() {
        use RecordType::{ObjectReset, Put};
        let mut c = StateCache::new(10, Duration::ZERO);
        write(&mut c, &obs(1, set(&[("a", "x"), ("b", "y")])));
        // `a` is the same S3 write as its committed row, but that row sorts below this
        // listing's reset: leaving the PUT out would hide `a`.
        assert_eq!(
            write(&mut c, &obs(5, part(&[("a", "x")], false))),
            vec![(Put, Some("a".into()))]
        );
        assert_eq!(
            write(&mut c, &obs(5, part(&[("b", "y"), ("c", "z")], true))),
            vec![
                (ObjectReset, None),
                (Put, Some("b".into())),
                (Put, Some("c".into()))
            ]
        );
        // The whole set is now known: the same listing read whole restates nothing.
        let again = for_event(9, set(&[("a", "x"), ("b", "y"), ("c", "z")]), 0, "r");
        assert!(write(&mut c, &again).is_empty());
    }

    #[test]
    fn a_part_leaves_out_only_what_a_committed_newer_row_covers() {
        let mut c = StateCache::new(10, Duration::ZERO);
        write(&mut c, &obs(9, one("a", Some("new"))));
        assert_eq!(
            write(&mut c, &obs(5, part(&[("a", "old"), ("b", "y")], false))),
            vec![(RecordType::Put, Some("b".into()))]
        );
        write(&mut c, &obs(20, set(&[])));
        assert!(
            write(&mut c, &obs(15, part(&[("b", "y")], true))).is_empty(),
            "a newer listing hides every part of an older one"
        );
    }
}
