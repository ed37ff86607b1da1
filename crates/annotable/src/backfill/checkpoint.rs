//! A backfill walk's lease and checkpoint: the walk of one (table, bucket, prefix, versions)
//! holds a [`crate::lease`] document, and its run (id, position, objects done, start and
//! completion) rides in the same document as the lease's job state.
//!
//! The authoritative position is the one committed atomically with the rows (a
//! snapshot-summary property, see `super`); the document only lags it by at most one batch and
//! survives snapshot expiry. A run that stopped before its end (released, killed, or its lease
//! expired) is resumed by the next walk of the scope; a completed one starts over.

use std::time::Duration;

use annotation_source::{ListPosition, ListScope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use super::{BackfillError, LeaseHeld};
use crate::lease::document::{Document, StateStore};
use crate::lease::{Holder, Lease, LeaseError, Record, rfc3339};

/// A listing position as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredPosition {
    /// Last key handled.
    pub key: Option<String>,
    /// Its version id, for version walks.
    pub version_id: Option<String>,
}

impl From<&ListPosition> for StoredPosition {
    fn from(p: &ListPosition) -> Self {
        StoredPosition {
            key: p.key.clone(),
            version_id: p.version_id.clone(),
        }
    }
}

impl From<&StoredPosition> for ListPosition {
    fn from(p: &StoredPosition) -> Self {
        ListPosition {
            key: p.key.clone(),
            version_id: p.version_id.clone(),
        }
    }
}

/// The walk's state kept in its lease document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Walk {
    pub table: String,
    pub bucket: String,
    pub prefix: String,
    pub versions: String,
    /// One backfill from the start of the listing to its end, across restarts.
    pub run_id: String,
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "rfc3339_opt", default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Last object version whose rows are committed (`None`: nothing yet).
    pub position: Option<StoredPosition>,
    /// Object versions committed in this run, across restarts.
    pub objects_done: u64,
}

mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => crate::lease::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

/// Where a run starts.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub run_id: String,
    pub position: Option<StoredPosition>,
    pub objects_done: u64,
    /// The holder of an unfinished run this one resumes, if any.
    pub took_over: Option<Holder>,
}

/// The document name of a scope: readable, and unique per table and walk.
pub(crate) fn doc_name(table: &str, scope: &ListScope) -> String {
    let digest = Sha256::digest(
        format!(
            "{table}\n{}\n{}\n{}",
            scope.bucket,
            scope.prefix,
            scope.versions.as_str()
        )
        .as_bytes(),
    );
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}.json", scope.bucket)
}

fn describe_scope(scope: &ListScope) -> String {
    format!(
        "s3://{}/{} ({} versions)",
        scope.bucket,
        scope.prefix,
        scope.versions.as_str()
    )
}

/// The walk's lease: renewal and checkpoints replace the document only if it is still the one
/// this process wrote; if not, the lease is lost and the run must stop before committing again.
pub(crate) struct WalkLease {
    lease: Lease<Document<Walk>>,
}

impl From<LeaseError> for BackfillError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Lost { location } => BackfillError::LeaseLost { location },
            LeaseError::Store { location, reason } => BackfillError::State { location, reason },
            LeaseError::Held {
                location, holder, ..
            } => BackfillError::State {
                location,
                reason: format!("held by {holder}"),
            },
        }
    }
}

impl WalkLease {
    /// Takes the lease of `scope` on `table`, or says who holds it. Resumes the run the
    /// document describes unless it completed.
    pub(crate) async fn acquire(
        store: StateStore,
        table: &str,
        scope: &ListScope,
        holder: Holder,
        ttl: Duration,
    ) -> Result<(WalkLease, Start), BackfillError> {
        let document = Document::new(store, doc_name(table, scope));
        let now = Utc::now();
        let unfinished = |r: &&Record<Walk>| r.job.completed_at.is_none();
        let acquired = Lease::acquire(document, holder, ttl, |previous| {
            match previous.filter(unfinished) {
                Some(r) => Walk {
                    completed_at: None,
                    ..r.job.clone()
                },
                None => Walk {
                    table: table.to_string(),
                    bucket: scope.bucket.clone(),
                    prefix: scope.prefix.clone(),
                    versions: scope.versions.as_str().to_string(),
                    run_id: uuid::Uuid::now_v7().simple().to_string()[..16].to_string(),
                    started_at: now,
                    completed_at: None,
                    position: None,
                    objects_done: 0,
                },
            }
        })
        .await
        .map_err(|e| match e {
            LeaseError::Held {
                location,
                holder,
                until,
            } => BackfillError::Held(Box::new(LeaseHeld {
                scope: describe_scope(scope),
                table: table.to_string(),
                holder,
                until,
                location,
            })),
            other => other.into(),
        })?;
        let took_over = acquired
            .previous
            .as_ref()
            .filter(unfinished)
            .map(|r| r.holder.clone());
        let walk = acquired.lease.job().await;
        let lease = WalkLease {
            lease: acquired.lease,
        };
        if let Some(previous) = &took_over {
            info!(location = %lease.location(), previous = %previous, "took over an unfinished backfill run; resuming it");
        }
        let start = Start {
            run_id: walk.run_id,
            position: walk.position,
            objects_done: walk.objects_done,
            took_over,
        };
        Ok((lease, start))
    }

    /// Where the document lives.
    pub(crate) fn location(&self) -> String {
        self.lease.location()
    }

    /// Whether this process may still commit (holds the lease with a margin).
    pub(crate) async fn is_valid(&self) -> bool {
        self.lease.is_valid().await
    }

    /// How often to renew.
    pub(crate) fn renew_every(&self) -> Duration {
        self.lease.renew_every()
    }

    /// Extends the lease (and rewrites the latest checkpoint).
    pub(crate) async fn renew(&self) -> Result<(), BackfillError> {
        Ok(self.lease.renew().await?)
    }

    /// Records a committed position.
    pub(crate) async fn checkpoint(
        &self,
        position: &ListPosition,
        objects_done: u64,
    ) -> Result<(), BackfillError> {
        let position = StoredPosition::from(position);
        Ok(self
            .lease
            .update(|walk| {
                walk.position = Some(position);
                walk.objects_done = objects_done;
            })
            .await?)
    }

    /// Releases the lease; `completed` marks the run done (the next backfill starts over).
    pub(crate) async fn release(&self, completed: bool) -> Result<(), BackfillError> {
        let now = Utc::now();
        Ok(self
            .lease
            .release(|walk| {
                if completed {
                    walk.completed_at = Some(now);
                }
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annotation_source::Versions;

    fn scope() -> ListScope {
        ListScope {
            bucket: "photos".into(),
            prefix: "2026/".into(),
            versions: Versions::All,
            delete_markers: false,
        }
    }

    fn holder(pid: u32) -> Holder {
        Holder {
            host: "h".into(),
            pid,
            writer: format!("w{pid}"),
        }
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_until_the_first_lease_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = StateStore::Local {
            dir: dir.path().to_path_buf(),
        };
        let ttl = Duration::from_secs(60);
        let (first, start) = WalkLease::acquire(store.clone(), "t", &scope(), holder(1), ttl)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(start.position.is_none());
        let refused = WalkLease::acquire(store.clone(), "t", &scope(), holder(2), ttl).await;
        assert!(
            matches!(&refused, Err(BackfillError::Held(held)) if held.holder.pid == 1),
            "{:?}",
            refused.err()
        );
        let at = ListPosition {
            key: Some("2026/a".into()),
            version_id: Some("v1".into()),
        };
        first
            .checkpoint(&at, 7)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        first.release(false).await.unwrap_or_else(|e| panic!("{e}"));
        // Released but not completed: the next run resumes where the first stopped.
        let (second, resumed) = WalkLease::acquire(store.clone(), "t", &scope(), holder(2), ttl)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resumed.run_id, start.run_id);
        assert_eq!(resumed.objects_done, 7);
        assert_eq!(resumed.position.as_ref().map(ListPosition::from), Some(at));
        // The first process lost the lease: its writes fail.
        assert!(matches!(
            first.renew().await,
            Err(BackfillError::LeaseLost { .. })
        ));
        second.release(true).await.unwrap_or_else(|e| panic!("{e}"));
        let (_third, fresh) = WalkLease::acquire(store, "t", &scope(), holder(3), ttl)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(fresh.run_id, start.run_id, "a completed run starts over");
        assert!(fresh.position.is_none());
    }
}
