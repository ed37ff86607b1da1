//! The backfill lease and checkpoint: one small JSON document per (table, bucket, prefix,
//! versions), replaced only by compare-and-swap.
//!
//! **Why S3 conditional writes and not the catalog.** The lease must work with every catalog
//! (SQL, REST, Glue, S3 Tables), and a lease kept in table properties would turn every renewal
//! into an Iceberg metadata commit: a new metadata file every few seconds, competing with
//! `serve`'s appends for the same optimistic lock, and iceberg's transaction retry re-applies a
//! property update blindly, which is not a compare-and-swap. S3's `If-None-Match: *` (create
//! only if absent) and `If-Match: <etag>` (replace only if unchanged) are a real CAS on an
//! object next to the warehouse, need only `s3:GetObject`/`s3:PutObject` there, and leave the
//! table's history alone. With a local warehouse (the embedded default) the same CAS is done
//! on a file under an exclusive lock.
//!
//! The checkpoint rides in the same document, but the authoritative position is the one
//! committed atomically with the rows (a snapshot-summary property, see `super`); the document
//! only lags it by at most one batch and survives snapshot expiry.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use annotation_source::{ListPosition, ListScope};
use aws_sdk_s3::error::ProvideErrorMetadata;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::BackfillError;
use crate::lease::Holder;

/// Where the documents live.
#[derive(Debug, Clone)]
pub(crate) enum StateStore {
    /// `s3://bucket/prefix`: conditional writes.
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
    /// A local folder: compare-and-swap under an exclusive file lock.
    Local { dir: PathBuf },
}

/// A document and the tag a conditional replace must name.
struct Versioned {
    body: Vec<u8>,
    tag: String,
}

impl StateStore {
    /// `s3://bucket/prefix` or a local folder.
    pub(crate) fn from_url(url: &str, s3: aws_sdk_s3::Client) -> StateStore {
        match url.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                StateStore::S3 {
                    client: s3,
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                }
            }
            None => StateStore::Local {
                dir: PathBuf::from(url.strip_prefix("file://").unwrap_or(url)),
            },
        }
    }

    fn describe(&self, name: &str) -> String {
        match self {
            StateStore::S3 { bucket, prefix, .. } if prefix.is_empty() => {
                format!("s3://{bucket}/{name}")
            }
            StateStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}/{name}"),
            StateStore::Local { dir } => dir.join(name).display().to_string(),
        }
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned>, BackfillError> {
        let failed = |reason: String| BackfillError::State {
            location: self.describe(name),
            reason,
        };
        match self {
            StateStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = object_key(prefix, name);
                match client.get_object().bucket(bucket).key(&key).send().await {
                    Ok(out) => {
                        let tag = out.e_tag().unwrap_or_default().to_string();
                        let body = out
                            .body
                            .collect()
                            .await
                            .map_err(|e| failed(format!("reading it: {e}")))?;
                        Ok(Some(Versioned {
                            body: body.into_bytes().to_vec(),
                            tag,
                        }))
                    }
                    Err(e) if e.code() == Some("NoSuchKey") => Ok(None),
                    Err(e) => Err(failed(format!(
                        "GetObject: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ))),
                }
            }
            StateStore::Local { dir } => {
                let path = dir.join(name);
                match tokio::fs::read(&path).await {
                    Ok(body) => {
                        let tag = content_tag(&body);
                        Ok(Some(Versioned { body, tag }))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(failed(e.to_string())),
                }
            }
        }
    }

    /// Writes `body` if the document is still at `expect` (`None`: absent). `Ok(None)` when
    /// someone else changed it first.
    async fn swap(
        &self,
        name: &str,
        body: Vec<u8>,
        expect: Option<&str>,
    ) -> Result<Option<String>, BackfillError> {
        let failed = |reason: String| BackfillError::State {
            location: self.describe(name),
            reason,
        };
        match self {
            StateStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = object_key(prefix, name);
                for attempt in 1..=5u32 {
                    let mut put = client
                        .put_object()
                        .bucket(bucket)
                        .key(&key)
                        .content_type("application/json")
                        .body(body.clone().into());
                    put = match expect {
                        None => put.if_none_match("*"),
                        Some(tag) => put.if_match(tag),
                    };
                    match put.send().await {
                        Ok(out) => return Ok(Some(out.e_tag().unwrap_or_default().to_string())),
                        Err(e) => {
                            let status = e.raw_response().map(|r| r.status().as_u16());
                            match (e.code(), status) {
                                (Some("PreconditionFailed"), _)
                                | (_, Some(412))
                                | (Some("NoSuchKey"), _)
                                | (_, Some(404)) => return Ok(None),
                                // ConditionalRequestConflict: a concurrent conditional write;
                                // the answer is decided by reading again.
                                (Some("ConditionalRequestConflict"), _) | (_, Some(409))
                                    if attempt < 5 =>
                                {
                                    tokio::time::sleep(Duration::from_millis(100 * attempt as u64))
                                        .await;
                                }
                                _ => {
                                    return Err(failed(format!(
                                        "conditional PutObject: {}",
                                        aws_sdk_s3::error::DisplayErrorContext(&e)
                                    )));
                                }
                            }
                        }
                    }
                }
                Ok(None)
            }
            StateStore::Local { dir } => {
                let dir = dir.clone();
                let name = name.to_string();
                let expect = expect.map(str::to_string);
                tokio::task::spawn_blocking(move || local_swap(&dir, &name, &body, expect))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(e.to_string()))
            }
        }
    }
}

fn object_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn content_tag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare-and-swap of a local file: under an exclusive lock on a sidecar file, compare the
/// current content's tag, write a temporary file, rename it over the document.
fn local_swap(
    dir: &std::path::Path,
    name: &str,
    body: &[u8],
    expect: Option<String>,
) -> std::io::Result<Option<String>> {
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}.lock")))?;
    lock.lock()?;
    let path = dir.join(name);
    let current = match std::fs::read(&path) {
        Ok(b) => Some(content_tag(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if current != expect {
        return Ok(None);
    }
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, body)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(content_tag(body)))
}

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

/// The lease-and-checkpoint document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StateDoc {
    pub table: String,
    pub bucket: String,
    pub prefix: String,
    pub versions: String,
    /// One backfill from the start of the listing to its end, across restarts.
    pub run_id: String,
    pub holder: Holder,
    #[serde(with = "rfc3339")]
    pub lease_expires_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "rfc3339_opt", default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Last object version whose rows are committed (`None`: nothing yet).
    pub position: Option<StoredPosition>,
    /// Object versions committed in this run, across restarts.
    pub objects_done: u64,
}

/// Timestamps as RFC 3339 text, readable by people and any JSON tool.
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
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
    /// The holder of an expired lease taken over, if any.
    pub took_over: Option<Holder>,
}

/// A held lease. Renewal and checkpoints replace the document only if it is still the one this
/// process wrote; if not, the lease is lost and the run must stop before committing again.
pub(crate) struct Lease {
    store: StateStore,
    name: String,
    ttl: Duration,
    inner: Mutex<Held>,
}

struct Held {
    doc: StateDoc,
    tag: String,
    /// Until when this process may commit: the send time of the last successful write + ttl.
    valid_until: Instant,
    lost: bool,
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

impl Lease {
    /// Takes the lease of `scope` on `table`, or says who holds it. Resumes the run the
    /// document describes unless it completed.
    pub(crate) async fn acquire(
        store: StateStore,
        table: &str,
        scope: &ListScope,
        holder: Holder,
        ttl: Duration,
    ) -> Result<(Lease, Start), BackfillError> {
        let name = doc_name(table, scope);
        for _ in 0..8 {
            let now = Utc::now();
            let current = store.read(&name).await?;
            let previous = match &current {
                None => None,
                Some(v) => Some(serde_json::from_slice::<StateDoc>(&v.body).map_err(|e| {
                    BackfillError::State {
                        location: store.describe(&name),
                        reason: format!(
                            "it is not a backfill state document ({e}); remove it if nothing else wrote it"
                        ),
                    }
                })?),
            };
            let mut took_over = None;
            let start = match &previous {
                Some(doc)
                    if doc.completed_at.is_none()
                        && doc.lease_expires_at > now
                        && !doc.holder.is_gone(&holder) =>
                {
                    return Err(BackfillError::Held(Box::new(super::LeaseHeld {
                        scope: describe_scope(scope),
                        table: table.to_string(),
                        holder: doc.holder.clone(),
                        until: doc.lease_expires_at,
                        location: store.describe(&name),
                    })));
                }
                Some(doc) if doc.completed_at.is_none() => {
                    took_over = Some(doc.holder.clone());
                    Start {
                        run_id: doc.run_id.clone(),
                        position: doc.position.clone(),
                        objects_done: doc.objects_done,
                        took_over: took_over.clone(),
                    }
                }
                _ => Start {
                    run_id: uuid::Uuid::now_v7().simple().to_string()[..16].to_string(),
                    position: None,
                    objects_done: 0,
                    took_over: None,
                },
            };
            let doc = StateDoc {
                table: table.to_string(),
                bucket: scope.bucket.clone(),
                prefix: scope.prefix.clone(),
                versions: scope.versions.as_str().to_string(),
                run_id: start.run_id.clone(),
                holder: holder.clone(),
                lease_expires_at: now + ttl,
                started_at: previous
                    .as_ref()
                    .filter(|_| took_over.is_some())
                    .map_or(now, |d| d.started_at),
                updated_at: now,
                completed_at: None,
                position: start.position.clone(),
                objects_done: start.objects_done,
            };
            let sent = Instant::now();
            let body = serde_json::to_vec_pretty(&doc).map_err(|e| BackfillError::State {
                location: store.describe(&name),
                reason: e.to_string(),
            })?;
            let expect = current.as_ref().map(|v| v.tag.as_str());
            if let Some(tag) = store.swap(&name, body, expect).await? {
                if let Some(previous) = &took_over {
                    info!(location = %store.describe(&name), previous = %previous, "took over an expired backfill lease; resuming its run");
                }
                let lease = Lease {
                    store,
                    name,
                    ttl,
                    inner: Mutex::new(Held {
                        doc,
                        tag,
                        valid_until: sent + ttl,
                        lost: false,
                    }),
                };
                return Ok((lease, start));
            }
            // Someone else wrote in between: look again.
        }
        Err(BackfillError::State {
            location: store.describe(&name),
            reason: "the lease document kept changing under us; is another backfill starting?"
                .into(),
        })
    }

    /// Where the document lives.
    pub(crate) fn location(&self) -> String {
        self.store.describe(&self.name)
    }

    /// Whether this process may still commit (holds the lease with a margin).
    pub(crate) async fn is_valid(&self) -> bool {
        let held = self.inner.lock().await;
        !held.lost && Instant::now() + self.ttl / 6 < held.valid_until
    }

    /// How often to renew.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Extends the lease (and rewrites the latest checkpoint).
    pub(crate) async fn renew(&self) -> Result<(), BackfillError> {
        self.write(|_| {}).await
    }

    /// Records a committed position.
    pub(crate) async fn checkpoint(
        &self,
        position: &ListPosition,
        objects_done: u64,
    ) -> Result<(), BackfillError> {
        let position = StoredPosition::from(position);
        self.write(|doc| {
            doc.position = Some(position);
            doc.objects_done = objects_done;
        })
        .await
    }

    /// Releases the lease; `completed` marks the run done (the next backfill starts over).
    pub(crate) async fn release(&self, completed: bool) -> Result<(), BackfillError> {
        let now = Utc::now();
        self.write(|doc| {
            doc.lease_expires_at = now;
            if completed {
                doc.completed_at = Some(now);
            }
        })
        .await
    }

    async fn write(&self, change: impl FnOnce(&mut StateDoc)) -> Result<(), BackfillError> {
        let mut held = self.inner.lock().await;
        if held.lost {
            return Err(self.lost());
        }
        let mut doc = held.doc.clone();
        change(&mut doc);
        let now = Utc::now();
        doc.updated_at = now;
        if doc.lease_expires_at > now {
            doc.lease_expires_at = now + self.ttl;
        }
        let body = serde_json::to_vec_pretty(&doc).map_err(|e| BackfillError::State {
            location: self.location(),
            reason: e.to_string(),
        })?;
        let sent = Instant::now();
        match self.store.swap(&self.name, body, Some(&held.tag)).await? {
            Some(tag) => {
                held.tag = tag;
                held.doc = doc;
                held.valid_until = sent + self.ttl;
                Ok(())
            }
            None => {
                held.lost = true;
                warn!(location = %self.location(), "the backfill lease was taken by another process");
                Err(self.lost())
            }
        }
    }

    fn lost(&self) -> BackfillError {
        BackfillError::LeaseLost {
            location: self.location(),
        }
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
        let (first, start) = Lease::acquire(store.clone(), "t", &scope(), holder(1), ttl)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(start.position.is_none());
        let refused = Lease::acquire(store.clone(), "t", &scope(), holder(2), ttl).await;
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
        let (second, resumed) = Lease::acquire(store.clone(), "t", &scope(), holder(2), ttl)
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
        let (_third, fresh) = Lease::acquire(store, "t", &scope(), holder(3), ttl)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(fresh.run_id, start.run_id, "a completed run starts over");
        assert!(fresh.position.is_none());
    }
}
