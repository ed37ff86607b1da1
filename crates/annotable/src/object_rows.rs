//! Where an object row is born: what a listing said about a key's versions becomes
//! `object_journal` rows (`schemas/object_journal.json`), beside the annotation rows of
//! [`crate::rows`].
//!
//! An object event (created, removed, delete marker, lifecycle expiry) makes `serve` list every
//! version of its key ([`KeyObservation::whole_key`]): a `KEY_RESET` and a `PUT` per version
//! listed, all under the listing's sequence number, so a version the listing no longer shows
//! is gone whatever order the events arrived in, exactly as an annotation set re-read is
//! (`OBJECT_RESET` + `PUT`s). `backfill` records each version it walks with a `PUT` alone:
//! a page of the walk says nothing about versions listed on other pages.
//!
//! The `objects` view keeps, per version, the latest `PUT` unless a later `KEY_RESET` of its
//! key did not re-state it (docs/objects.md).

use annotation_source::VersionFacts;
use annotation_table::{ObjectRecordType, ObjectRow, Source};
use chrono::{DateTime, Utc};
use s3_events::{EventContext, ObjectRef};

use crate::rows::object_join_key;

/// One observation of object versions, ready to become rows.
#[derive(Debug, Clone)]
pub struct KeyObservation {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The sequence number (the format of [`crate::rows::sequence_number`]).
    pub sequence_number: String,
    /// The versions seen, as listed (a version id of `null` is the null version).
    pub versions: Vec<(ObjectRef, VersionFacts)>,
    /// Whether these are all of the key's versions (a `KEY_RESET` is written).
    pub whole_key: bool,
    /// The notification behind it (`None` for backfill).
    pub context: Option<EventContext>,
}

impl KeyObservation {
    /// Rows it produces.
    pub fn rows(&self) -> usize {
        self.versions.len() + usize::from(self.whole_key)
    }
}

/// Which keys get object rows: those under one of the prefixes (every key when there are none).
#[derive(Debug, Clone, Default)]
pub struct ObjectScope {
    prefixes: Vec<String>,
}

impl ObjectScope {
    /// Keys under `prefixes` (all keys if empty).
    pub fn new(prefixes: Vec<String>) -> Self {
        ObjectScope { prefixes }
    }

    /// Whether `key` gets object rows.
    pub fn covers(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }
}

/// Every row `obs` states: the `KEY_RESET` first, then a `PUT` per version.
pub fn object_rows_of(
    obs: &KeyObservation,
    source: Source,
    ingested_at: DateTime<Utc>,
) -> Vec<ObjectRow> {
    let ctx = obs.context.as_ref();
    let row = |object: &ObjectRef, record_type| ObjectRow {
        bucket: obs.bucket.clone(),
        key: obs.key.clone(),
        version_id: object.table_version_id().map(str::to_string),
        object_join_key: object_join_key(object),
        record_type,
        sequence_number: obs.sequence_number.clone(),
        is_delete_marker: None,
        size: None,
        last_modified_date: None,
        e_tag: None,
        storage_class: None,
        checksum_algorithm: None,
        event_name: ctx.map(|c| c.event_name.clone()),
        event_time: ctx.and_then(|c| c.event_time),
        source,
        requester: ctx.and_then(|c| c.requester.clone()),
        source_ip_address: ctx.and_then(|c| c.source_ip_address.clone()),
        request_id: ctx.and_then(|c| c.request_id.clone()),
        ingested_at,
    };
    let key_ref = ObjectRef {
        bucket: obs.bucket.clone(),
        key: obs.key.clone(),
        version_id: None,
    };
    obs.whole_key
        .then(|| row(&key_ref, ObjectRecordType::KeyReset))
        .into_iter()
        .chain(obs.versions.iter().map(|(object, facts)| ObjectRow {
            is_delete_marker: Some(facts.is_delete_marker),
            size: facts.size,
            last_modified_date: facts.last_modified,
            e_tag: facts.e_tag.clone(),
            storage_class: facts.storage_class.clone(),
            checksum_algorithm: facts.checksum_algorithm.clone(),
            ..row(object, ObjectRecordType::Put)
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, marker: bool) -> (ObjectRef, VersionFacts) {
        (
            ObjectRef {
                bucket: "b".into(),
                key: "k".into(),
                version_id: Some(id.into()),
            },
            VersionFacts {
                is_delete_marker: marker,
                size: (!marker).then_some(3),
                e_tag: (!marker).then(|| "e".to_string()),
                ..VersionFacts::default()
            },
        )
    }

    #[test]
    fn a_key_listing_resets_the_key_and_restates_every_version() {
        let obs = KeyObservation {
            bucket: "b".into(),
            key: "k".into(),
            sequence_number: "00000000000000000001-w".into(),
            versions: vec![version("v2", true), version("null", false)],
            whole_key: true,
            context: None,
        };
        let rows = object_rows_of(&obs, Source::Notification, Utc::now());
        let kinds: Vec<_> = rows
            .iter()
            .map(|r| (r.record_type, r.version_id.as_deref(), r.is_delete_marker))
            .collect();
        assert_eq!(
            kinds,
            [
                (ObjectRecordType::KeyReset, None, None),
                (ObjectRecordType::Put, Some("v2"), Some(true)),
                // The null version is stored without a version id, as annotations are.
                (ObjectRecordType::Put, None, Some(false)),
            ]
        );
        assert!(
            rows.iter()
                .all(|r| r.sequence_number == obs.sequence_number)
        );
        assert_eq!(rows[2].object_join_key, object_join_key(&obs.versions[1].0));
        assert_eq!(obs.rows(), 3);
    }

    #[test]
    fn a_backfilled_version_is_a_put_alone() {
        let obs = KeyObservation {
            bucket: "b".into(),
            key: "k".into(),
            sequence_number: "1".into(),
            versions: vec![version("v1", false)],
            whole_key: false,
            context: None,
        };
        let rows = object_rows_of(&obs, Source::Backfill, Utc::now());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].record_type, ObjectRecordType::Put);
        assert_eq!(rows[0].size, Some(3));
    }

    #[test]
    fn the_scope_is_every_key_or_the_prefixes() {
        assert!(ObjectScope::default().covers("any"));
        let scope = ObjectScope::new(vec!["a/".into(), "b/".into()]);
        assert!(scope.covers("a/x") && scope.covers("b/"));
        assert!(!scope.covers("c/x") && !scope.covers("a"));
    }
}
