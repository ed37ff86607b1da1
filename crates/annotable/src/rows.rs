//! Where a row is born: an [`Observation`] of S3 becomes the journal rows it states
//! (docs/correctness.md §1), with nothing left out — `suppression` decides afterwards which of
//! them the journal already holds.
//!
//! **sequence_number** is `<observation time in ns, 20 digits>-<writer id>`: fixed width, so
//! lexicographic order is time order, and the writer id breaks ties between processes. The
//! observation time is when the S3 request that saw the state was sent, corrected towards S3's
//! clock (see `annotation_source`), which is what makes "larger = newer" sound across
//! processes (docs/correctness.md §1 states the remaining assumption).
//!
//! **object_join_key** is the first 16 bytes of SHA-256 over `bucket \n key \n version` in
//! hex, `version` being the version id or `null`. It depends on nothing an event may leave empty
//! (a removal's ETag) or carry stale (an overwrite's), so every row of one object version has
//! the same key. The writes of an unversioned key (its null version) share one key; each write
//! resets the version's annotations (`OBJECT_RESET`), so the current state never holds two.
//!
//! | observed | rows |
//! |---|---|
//! | one annotation, present / absent | `PUT` / `DELETE` |
//! | a whole set (or a version gone) | `OBJECT_RESET` + a `PUT` per annotation |
//! | an early part of a large set | a `PUT` per annotation |
//! | the last part of a large set | `OBJECT_RESET` + a `PUT` per annotation |

use annotation_source::Annotation;
use annotation_table::{JournalRow, RecordType, Source};
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
    /// One part of a set too large to hold at once (docs/correctness.md §8): its PUTs, and with
    /// the last part the OBJECT_RESET, all under the listing's sequence number. The parts are
    /// committed in order and the message is acknowledged after the last.
    SetPart {
        /// This part's annotations.
        annotations: Vec<Annotation>,
        /// Whether this is the last part (it writes the OBJECT_RESET).
        last: bool,
    },
}

impl Observed {
    /// Payload bytes held.
    pub fn payload_bytes(&self) -> usize {
        let sum = |set: &[Annotation]| set.iter().map(|a| a.text_value.len()).sum();
        match self {
            Observed::Annotation { state, .. } => state.as_ref().map_or(0, |a| a.text_value.len()),
            Observed::Version(set) => sum(set.as_deref().unwrap_or_default()),
            Observed::SetPart { annotations, .. } => sum(annotations),
        }
    }

    /// What its rows weigh in memory, estimated: the payloads and a fixed allowance per row
    /// for its names, ids and times. The one estimate batches are flushed by.
    pub fn estimated_bytes(&self) -> usize {
        self.payload_bytes() + ROW_OVERHEAD_BYTES * self.max_rows()
    }

    /// Rows it can produce at most.
    pub fn max_rows(&self) -> usize {
        match self {
            Observed::Annotation { .. } => 1,
            Observed::Version(set) => 1 + set.as_deref().map_or(0, <[Annotation]>::len),
            Observed::SetPart { annotations, .. } => 1 + annotations.len(),
        }
    }
}

/// The memory a row takes besides its payload (names, ids, times), for [`Observed::estimated_bytes`].
const ROW_OVERHEAD_BYTES: usize = 300;

/// One observation of one object version, ready to become rows.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The object version.
    pub object: ObjectRef,
    /// The sequence number (see the module doc).
    pub sequence_number: String,
    /// What was seen.
    pub observed: Observed,
    /// The notification record behind it (`None` for backfill).
    pub context: Option<EventContext>,
}

/// Every row `obs` states, in order (an `OBJECT_RESET` before the `PUT`s that share its
/// sequence number).
pub fn rows_of(obs: &Observation, source: Source, ingested_at: DateTime<Utc>) -> Vec<JournalRow> {
    let base = RowBase::new(obs, source, ingested_at);
    match &obs.observed {
        Observed::Annotation { name, state } => vec![match state {
            Some(a) => base.put(a),
            None => base.delete(name),
        }],
        Observed::Version(set) => std::iter::once(base.reset())
            .chain(set.iter().flatten().map(|a| base.put(a)))
            .collect(),
        Observed::SetPart { annotations, last } => last
            .then(|| base.reset())
            .into_iter()
            .chain(annotations.iter().map(|a| base.put(a)))
            .collect(),
    }
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
pub fn object_join_key(object: &ObjectRef) -> String {
    let mut h = Sha256::new();
    h.update(object.bucket.as_bytes());
    h.update(b"\n");
    h.update(object.key.as_bytes());
    h.update(b"\n");
    h.update(object.table_version_id().unwrap_or("null").as_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
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
            join_key: object_join_key(&obs.object),
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

/// Observations for tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn obj(version: Option<&str>) -> ObjectRef {
        ObjectRef {
            bucket: "b".into(),
            key: "k".into(),
            version_id: version.map(str::to_string),
        }
    }

    pub(crate) fn ann(name: &str, text: &str) -> Annotation {
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

    pub(crate) fn obs(seq: u64, observed: Observed) -> Observation {
        Observation {
            object: obj(Some("v1")),
            sequence_number: sequence_number(seq, "w"),
            observed,
            context: None,
        }
    }

    pub(crate) fn one(name: &str, text: Option<&str>) -> Observed {
        Observed::Annotation {
            name: name.into(),
            state: text.map(|t| ann(name, t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{obj, obs, one};
    use super::*;

    #[test]
    fn sequence_numbers_sort_by_time_and_have_one_width() {
        let a = sequence_number(999, "0000abcd");
        let b = sequence_number(1_000, "0000abcd");
        assert!(a < b);
        assert_eq!(a.len(), b.len());
        assert_eq!(sequence_number(u64::MAX, "ffffffff").len(), a.len());
    }

    #[test]
    fn join_key_is_one_per_object_version_whatever_the_event_says() {
        let k1 = object_join_key(&obj(Some("v1")));
        assert_eq!(k1.len(), 32);
        assert_ne!(k1, object_join_key(&obj(Some("v2"))));
        assert_eq!(
            object_join_key(&obj(None)),
            object_join_key(&obj(Some("null")))
        );
        // Pinned: the derivation is documented, and other engines may recompute it.
        assert_eq!(
            object_join_key(&ObjectRef {
                bucket: "b".into(),
                key: "k".into(),
                version_id: None
            }),
            sha256_prefix("b\nk\nnull")
        );
        // Rows of one version carry one key whatever their events said of the object's ETag
        // (empty on removals, stale on overwrites): the ETag is not an input.
        let with_context = |etag: &str| {
            let mut o = obs(1, one("a", Some("x")));
            o.context = Some(EventContext {
                object_e_tag: Some(etag.into()),
                ..EventContext::default()
            });
            rows_of(&o, Source::Notification, Utc::now())[0]
                .object_join_key
                .clone()
        };
        assert_eq!(with_context(""), with_context("etag-1"));
    }

    fn sha256_prefix(s: &str) -> String {
        Sha256::digest(s.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
