//! The document store of leases: one small JSON document per lease, next to the warehouse,
//! replaced only by compare-and-swap.
//!
//! **Why S3 conditional writes and not the catalog.** A backfill lease must work with every
//! catalog (SQL, REST, Glue, S3 Tables), and a lease kept in table properties would turn every
//! renewal into an Iceberg metadata commit: a new metadata file every few seconds, competing
//! with `serve`'s appends for the same optimistic lock, and iceberg's transaction retry
//! re-applies a property update blindly, which is not a compare-and-swap. S3's
//! `If-None-Match: *` (create only if absent) and `If-Match: <etag>` (replace only if
//! unchanged) are a real compare-and-swap on an object next to the warehouse, need only
//! `s3:GetObject`/`s3:PutObject` there, and leave the table's history alone. With a local
//! warehouse (the embedded default) the same compare-and-swap is done on a file under an
//! exclusive lock.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{LeaseError, LeaseStore, Record, Stored, Tag};

/// One lease document `name` in a [`StateStore`], holding a [`Record`] whose job state is `J`.
#[derive(Debug, Clone)]
pub struct Document<J> {
    store: StateStore,
    name: String,
    job: PhantomData<fn() -> J>,
}

impl<J> Document<J> {
    /// The document `name` in `store`.
    pub fn new(store: StateStore, name: String) -> Self {
        Document {
            store,
            name,
            job: PhantomData,
        }
    }
}

impl<J> LeaseStore for Document<J>
where
    J: Serialize + DeserializeOwned + Clone + Send + Sync,
{
    type Job = J;

    fn location(&self) -> String {
        self.store.describe(&self.name)
    }

    async fn read(&self) -> Result<Stored<J>, LeaseError> {
        let Some(v) = self.store.read(&self.name).await? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&v.body).map_err(|e| LeaseError::Store {
            location: self.location(),
            reason: format!(
                "it is not an annotable lease document ({e}); remove it if nothing else wrote it"
            ),
        })?;
        Ok(Some((record, v.tag)))
    }

    async fn swap(
        &self,
        record: &Record<J>,
        expect: Option<&Tag>,
    ) -> Result<Option<Tag>, LeaseError> {
        let body = serde_json::to_vec_pretty(record).map_err(|e| LeaseError::Store {
            location: self.location(),
            reason: e.to_string(),
        })?;
        self.store
            .swap(&self.name, body, expect.map(String::as_str))
            .await
    }
}

/// Where the documents live.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// `s3://bucket/prefix`: conditional writes.
    S3 {
        /// The client that reaches the bucket.
        client: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
        /// The key prefix, without slashes at either end.
        prefix: String,
    },
    /// A local folder: compare-and-swap under an exclusive file lock.
    Local {
        /// The folder.
        dir: PathBuf,
    },
}

/// A document and the tag a conditional replace must name.
struct Versioned {
    body: Vec<u8>,
    tag: String,
}

impl StateStore {
    /// `s3://bucket/prefix` or a local folder.
    pub fn from_url(url: &str, s3: aws_sdk_s3::Client) -> StateStore {
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

    async fn read(&self, name: &str) -> Result<Option<Versioned>, LeaseError> {
        let failed = |reason: String| LeaseError::Store {
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
    ) -> Result<Option<String>, LeaseError> {
        let failed = |reason: String| LeaseError::Store {
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
