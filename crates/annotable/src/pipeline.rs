//! What `serve` and `backfill` share: an [`Observation`] of S3 becomes journal rows, minus the
//! rows that would restate the last written state (design.md §3.3).
//!
//! **sequence_number** is `<observation time in ns, 20 digits>-<writer id>`: fixed width, so
//! lexicographic order is time order, and the writer id breaks ties between processes. The
//! observation time is when the S3 request that saw the state was sent (see
//! `annotation_source`), which is what makes "larger = newer" sound across processes as long as
//! their clocks agree to within the time between two writes of one annotation (ECS hosts run
//! NTP; skew is in milliseconds).
//!
//! **object_join_key** is the first 16 bytes of SHA-256 over `bucket \n key \n version \n etag`
//! in hex, `version` being the version id or `null`, and `etag` the object's ETag as the event
//! gave it (empty when unknown). Versioned objects get one key per version; the null version gets
//! one per write of the object (its ETag changes with its content).
//!
//! **Suppression.** [`StateCache`] remembers, per object version, the last written state of
//! each annotation (a digest of its content fields) and whether the whole annotation set is
//! known (after an `OBJECT_RESET`). A redelivered message, or two events observed after the same
//! final write, would otherwise add rows that restate it. The cache only changes when a commit
//! succeeds ([`Overlay`] holds a batch's changes until then), is warmed at start from the recent
//! journal, and is cleared when another writer commits to the table (it could be stale then);
//! suppression is an optimisation of the journal, never a condition of the view's correctness.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;

use annotation_source::Annotation;
use annotation_table::{
    Batch, CommitReport, JournalRow, JournalTable, RecordType, Source, TableError,
};
use chrono::{DateTime, Utc};
use s3_events::{EventContext, ObjectRef};
use sha2::{Digest, Sha256};

/// What one S3 read established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// One annotation: present with this content, or absent.
    Annotation {
        /// The name.
        name: String,
        /// `None` when S3 answered NoSuchAnnotation.
        state: Option<Annotation>,
    },
    /// The whole annotation set of the version; `None` when the version does not exist.
    Version(Option<Vec<Annotation>>),
}

/// One observation of one object version, ready to become rows.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The object version.
    pub object: ObjectRef,
    /// The object's ETag when known (from the event).
    pub object_e_tag: Option<String>,
    /// The sequence number (see the module doc).
    pub sequence_number: String,
    /// What was seen.
    pub observed: Observed,
    /// The notification record behind it (`None` for backfill).
    pub context: Option<EventContext>,
}

/// Commits `batch` exactly once: [`JournalTable::append`] retries conflicts itself; when a
/// retryable failure outlasts those retries the batch is written again under the same id, after
/// checking that no earlier attempt landed (design.md §3.3).
pub async fn commit_batch(table: &JournalTable, batch: Batch) -> Result<CommitReport, TableError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if attempt > 1
            && let Some(snapshot) = table.committed_batch(&batch.id).await?
        {
            return Ok(CommitReport::already_committed(
                batch.id.clone(),
                batch.rows.len(),
                snapshot,
                attempt,
            ));
        }
        match table.append(batch.clone()).await {
            Ok(report) => return Ok(report),
            Err(e) if e.is_retryable() && attempt < 6 => {
                let wait = std::time::Duration::from_millis(500u64 << attempt);
                tracing::warn!(table = %table.ident(), batch_id = %batch.id, attempt, ?wait, error = %e, "commit failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every row `obs` states, with nothing suppressed (what a writer with no memory writes).
pub fn all_rows(obs: &Observation, source: Source, ingested_at: DateTime<Utc>) -> Vec<JournalRow> {
    StateCache::new(1).rows_for(&mut Overlay::default(), obs, source, ingested_at)
}

/// Formats a sequence number: observation time (ns) and writer id.
pub fn sequence_number(at_nanos: u64, writer_id: &str) -> String {
    format!("{at_nanos:020}-{writer_id}")
}

/// A short random writer id for this process.
pub fn new_writer_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// The documented object_join_key derivation (see the module doc).
pub fn object_join_key(object: &ObjectRef, object_e_tag: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(object.bucket.as_bytes());
    h.update(b"\n");
    h.update(object.key.as_bytes());
    h.update(b"\n");
    h.update(object.table_version_id().unwrap_or("null").as_bytes());
    h.update(b"\n");
    h.update(object_e_tag.unwrap_or("").as_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
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

#[derive(Debug, Clone, PartialEq, Eq)]
struct NameState {
    seq: String,
    /// `None`: absent.
    digest: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct VersionEntry {
    /// Sequence number of the last full observation (OBJECT_RESET): every name not in `names`
    /// is known absent.
    full_seq: Option<String>,
    names: HashMap<String, NameState>,
}

impl VersionEntry {
    fn apply_reset(&mut self, seq: &str) {
        if self.full_seq.as_deref().is_some_and(|f| f > seq) {
            return;
        }
        self.full_seq = Some(seq.to_string());
        self.names.retain(|_, n| n.seq.as_str() >= seq);
    }

    fn apply_name(&mut self, name: &str, seq: &str, digest: Option<u64>) {
        if self.full_seq.as_deref().is_some_and(|f| f > seq) {
            return;
        }
        match self.names.get(name) {
            Some(n) if n.seq.as_str() > seq => {}
            _ => {
                self.names.insert(
                    name.to_string(),
                    NameState {
                        seq: seq.to_string(),
                        digest,
                    },
                );
            }
        }
    }

    /// `Some(state)` when the name's state is known, `None` when not.
    fn known(&self, name: &str) -> Option<Option<u64>> {
        match self.names.get(name) {
            Some(n) => Some(n.digest),
            None if self.full_seq.is_some() => Some(None),
            None => None,
        }
    }

    /// Whether an observation at `seq` of `name` is older than what is known.
    fn is_stale(&self, name: Option<&str>, seq: &str) -> bool {
        if self.full_seq.as_deref().is_some_and(|f| f > seq) {
            return true;
        }
        name.and_then(|n| self.names.get(n))
            .is_some_and(|n| n.seq.as_str() > seq)
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

fn annotation_digest(a: &Annotation) -> u64 {
    state_digest(
        Some(&a.text_value),
        Some(a.size),
        a.e_tag.as_deref(),
        a.last_modified,
        a.checksum_algorithm.as_deref(),
        a.replication_status.as_deref(),
    )
}

fn row_digest(r: &JournalRow) -> u64 {
    state_digest(
        r.text_value.as_deref(),
        r.size,
        r.e_tag.as_deref(),
        r.last_modified_date,
        r.checksum_algorithm.as_deref(),
        r.replication_status.as_deref(),
    )
}

/// The last written state per object version, bounded (least recently used versions are
/// forgotten; forgetting only costs a possible restating row).
#[derive(Debug)]
pub struct StateCache {
    map: lru::LruCache<VersionKey, VersionEntry>,
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
    /// A cache of at most `versions` object versions.
    pub fn new(versions: usize) -> Self {
        let cap = NonZeroUsize::new(versions.max(1)).unwrap_or(NonZeroUsize::MIN);
        StateCache {
            map: lru::LruCache::new(cap),
        }
    }

    /// Forgets everything (another writer changed the table).
    pub fn clear(&mut self) {
        self.map.clear();
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

    /// The rows `obs` adds to the journal, given what is known; records them in `overlay`.
    pub fn rows_for(
        &mut self,
        overlay: &mut Overlay,
        obs: &Observation,
        source: Source,
        ingested_at: DateTime<Utc>,
    ) -> Vec<JournalRow> {
        let key = VersionKey::of(&obs.object);
        let entry = match overlay.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let known = self.map.get(v.key()).cloned().unwrap_or_default();
                v.insert(known)
            }
        };
        let seq = obs.sequence_number.as_str();
        let base = RowBase::new(obs, source, ingested_at);
        match &obs.observed {
            Observed::Annotation { name, state } => {
                let digest = state.as_ref().map(annotation_digest);
                if entry.is_stale(Some(name), seq) || entry.known(name) == Some(digest) {
                    overlay.suppressed += 1;
                    return Vec::new();
                }
                entry.apply_name(name, seq, digest);
                vec![match state {
                    Some(a) => base.put(a),
                    None => base.delete(name),
                }]
            }
            Observed::Version(set) => {
                let listed: HashMap<&str, u64> = set
                    .iter()
                    .flatten()
                    .map(|a| (a.name.as_str(), annotation_digest(a)))
                    .collect();
                if entry.is_stale(None, seq)
                    || (entry.full_seq.is_some() && entry.present() == listed)
                {
                    overlay.suppressed += 1;
                    return Vec::new();
                }
                // A name observed after this listing already has a newer row: restating it
                // here would add nothing (the view takes its newer row either way).
                let newer: Vec<&str> = set
                    .iter()
                    .flatten()
                    .filter(|a| entry.is_stale(Some(&a.name), seq))
                    .map(|a| a.name.as_str())
                    .collect();
                entry.apply_reset(seq);
                let mut rows = vec![base.reset()];
                for a in set.iter().flatten() {
                    if newer.contains(&a.name.as_str()) {
                        continue;
                    }
                    entry.apply_name(&a.name, seq, Some(annotation_digest(a)));
                    rows.push(base.put(a));
                }
                rows
            }
        }
    }
}

fn apply_row_to(entry: &mut VersionEntry, row: &JournalRow) {
    let seq = row.sequence_number.as_str();
    match (row.record_type, row.name.as_deref()) {
        (RecordType::ObjectReset, _) => entry.apply_reset(seq),
        (RecordType::Put, Some(name)) => entry.apply_name(name, seq, Some(row_digest(row))),
        (RecordType::Delete, Some(name)) => entry.apply_name(name, seq, None),
        (_, None) => {}
    }
}

/// The fields every row of one observation shares.
struct RowBase<'a> {
    obs: &'a Observation,
    join_key: String,
    source: Source,
    ingested_at: DateTime<Utc>,
}

impl<'a> RowBase<'a> {
    fn new(obs: &'a Observation, source: Source, ingested_at: DateTime<Utc>) -> Self {
        RowBase {
            obs,
            join_key: object_join_key(&obs.object, obs.object_e_tag.as_deref()),
            source,
            ingested_at,
        }
    }

    fn row(&self, name: Option<&str>, record_type: RecordType) -> JournalRow {
        let ctx = self.obs.context.as_ref();
        JournalRow {
            bucket: self.obs.object.bucket.clone(),
            object_key: self.obs.object.key.clone(),
            object_version_id: self.obs.object.table_version_id().map(str::to_string),
            object_join_key: self.join_key.clone(),
            name: name.map(str::to_string),
            record_type,
            sequence_number: self.obs.sequence_number.clone(),
            last_modified_date: None,
            size: None,
            e_tag: None,
            checksum_algorithm: None,
            replication_status: None,
            text_value: None,
            event_name: ctx.map(|c| c.event_name.clone()),
            event_time: ctx.and_then(|c| c.event_time),
            source: self.source,
            requester: ctx.and_then(|c| c.requester.clone()),
            source_ip_address: ctx.and_then(|c| c.source_ip_address.clone()),
            request_id: ctx.and_then(|c| c.request_id.clone()),
            ingested_at: self.ingested_at,
        }
    }

    fn put(&self, a: &Annotation) -> JournalRow {
        JournalRow {
            last_modified_date: a.last_modified,
            size: Some(a.size),
            e_tag: a.e_tag.clone(),
            checksum_algorithm: a.checksum_algorithm.clone(),
            replication_status: a.replication_status.clone(),
            text_value: Some(a.text_value.clone()),
            ..self.row(Some(&a.name), RecordType::Put)
        }
    }

    fn delete(&self, name: &str) -> JournalRow {
        self.row(Some(name), RecordType::Delete)
    }

    fn reset(&self) -> JournalRow {
        self.row(None, RecordType::ObjectReset)
    }
}

/// Approximate bytes a row holds in memory (for flushing a batch on size).
pub fn approx_row_bytes(row: &JournalRow) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    200 + row.bucket.len()
        + row.object_key.len()
        + opt(&row.object_version_id)
        + row.object_join_key.len()
        + opt(&row.name)
        + row.sequence_number.len()
        + opt(&row.e_tag)
        + opt(&row.text_value)
        + opt(&row.event_name)
        + opt(&row.requester)
        + opt(&row.source_ip_address)
        + opt(&row.request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(version: Option<&str>) -> ObjectRef {
        ObjectRef {
            bucket: "b".into(),
            key: "k".into(),
            version_id: version.map(str::to_string),
        }
    }

    fn ann(name: &str, text: &str) -> Annotation {
        Annotation {
            name: name.into(),
            text_value: text.into(),
            size: text.len() as i64,
            e_tag: Some(format!("etag-{text}")),
            last_modified: None,
            checksum_algorithm: None,
            replication_status: None,
        }
    }

    fn obs(seq: u64, observed: Observed) -> Observation {
        Observation {
            object: obj(Some("v1")),
            object_e_tag: None,
            sequence_number: sequence_number(seq, "w"),
            observed,
            context: None,
        }
    }

    fn one(name: &str, text: Option<&str>) -> Observed {
        Observed::Annotation {
            name: name.into(),
            state: text.map(|t| ann(name, t)),
        }
    }

    fn write(cache: &mut StateCache, o: &Observation) -> Vec<(RecordType, Option<String>)> {
        let mut overlay = Overlay::default();
        let rows = cache.rows_for(&mut overlay, o, Source::Notification, Utc::now());
        cache.commit(overlay);
        rows.into_iter().map(|r| (r.record_type, r.name)).collect()
    }

    #[test]
    fn sequence_numbers_sort_by_time_and_have_one_width() {
        let a = sequence_number(999, "0000abcd");
        let b = sequence_number(1_000, "0000abcd");
        assert!(a < b);
        assert_eq!(a.len(), b.len());
        assert_eq!(sequence_number(u64::MAX, "ffffffff").len(), a.len());
    }

    #[test]
    fn join_key_is_stable_and_distinguishes_versions_and_null_version_writes() {
        let k1 = object_join_key(&obj(Some("v1")), None);
        assert_eq!(k1, object_join_key(&obj(Some("v1")), None));
        assert_eq!(k1.len(), 32);
        assert_ne!(k1, object_join_key(&obj(Some("v2")), None));
        assert_eq!(
            object_join_key(&obj(None), Some("e")),
            object_join_key(&obj(Some("null")), Some("e"))
        );
        assert_ne!(
            object_join_key(&obj(None), Some("e1")),
            object_join_key(&obj(None), Some("e2"))
        );
    }

    #[test]
    fn restating_the_last_state_writes_nothing() {
        let mut c = StateCache::new(10);
        assert_eq!(write(&mut c, &obs(1, one("a", Some("x")))).len(), 1);
        assert!(write(&mut c, &obs(2, one("a", Some("x")))).is_empty());
        assert_eq!(write(&mut c, &obs(3, one("a", Some("y")))).len(), 1);
        assert_eq!(write(&mut c, &obs(4, one("a", None))).len(), 1);
        assert!(write(&mut c, &obs(5, one("a", None))).is_empty());
    }

    #[test]
    fn a_stale_observation_writes_nothing() {
        let mut c = StateCache::new(10);
        write(&mut c, &obs(5, one("a", Some("new"))));
        assert!(write(&mut c, &obs(3, one("a", Some("old")))).is_empty());
    }

    #[test]
    fn a_full_observation_is_suppressed_only_when_the_set_is_the_same() {
        let mut c = StateCache::new(10);
        let set = |xs: &[(&str, &str)]| {
            Observed::Version(Some(xs.iter().map(|(n, t)| ann(n, t)).collect()))
        };
        assert_eq!(
            write(&mut c, &obs(1, set(&[("a", "1"), ("b", "2")]))).len(),
            3
        );
        assert!(write(&mut c, &obs(2, set(&[("a", "1"), ("b", "2")]))).is_empty());
        // A single put that the cache learns about, then the same full set again.
        write(&mut c, &obs(3, one("c", Some("3"))));
        assert_eq!(
            write(&mut c, &obs(4, set(&[("a", "1"), ("b", "2")]))).len(),
            3
        );
        // Known absent after a full observation: a delete of an unlisted name restates it.
        assert!(write(&mut c, &obs(5, one("zzz", None))).is_empty());
        assert_eq!(write(&mut c, &obs(6, Observed::Version(None))).len(), 1);
        assert!(write(&mut c, &obs(7, Observed::Version(None))).is_empty());
        assert!(write(&mut c, &obs(8, Observed::Version(Some(vec![])))).is_empty());
    }

    #[test]
    fn a_listing_older_than_a_name_observation_does_not_restate_that_name() {
        let mut c = StateCache::new(10);
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
        let mut c = StateCache::new(10);
        let mut overlay = Overlay::default();
        let rows = c.rows_for(
            &mut overlay,
            &obs(1, one("a", Some("x"))),
            Source::Notification,
            Utc::now(),
        );
        assert_eq!(rows.len(), 1);
        drop(overlay);
        assert_eq!(write(&mut c, &obs(2, one("a", Some("x")))).len(), 1);
    }

    #[test]
    fn warm_up_from_rows_matches_writing_them() {
        let mut written = StateCache::new(10);
        let mut rows = Vec::new();
        for (seq, o) in [
            (1, one("a", Some("x"))),
            (2, one("b", Some("y"))),
            (3, one("a", None)),
        ] {
            let mut overlay = Overlay::default();
            rows.extend(written.rows_for(
                &mut overlay,
                &obs(seq, o),
                Source::Notification,
                Utc::now(),
            ));
            written.commit(overlay);
        }
        let mut warmed = StateCache::new(10);
        for r in &rows {
            warmed.apply_row(r);
        }
        assert!(write(&mut warmed, &obs(4, one("b", Some("y")))).is_empty());
        assert!(write(&mut warmed, &obs(5, one("a", None))).is_empty());
        assert_eq!(write(&mut warmed, &obs(6, one("a", Some("x")))).len(), 1);
    }
}
