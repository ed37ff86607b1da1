//! S3 access for annotable: what annotations an object version has, read with bounded
//! concurrency, exponential backoff with full jitter, and typed outcomes.
//!
//! This crate owns every S3 call the indexing pipeline makes (docs/correctness.md §2) and turns S3's
//! answers into facts the journal can record:
//! - [`AnnotationSource::get`]: one annotation → [`AnnotationState::Present`], `Absent`
//!   (`NoSuchAnnotation`) or `VersionGone` (`NoSuchKey`/`NoSuchVersion`/`NoSuchBucket`: the object
//!   version, and so every annotation on it, no longer exists);
//! - [`AnnotationSource::list_version`]: every annotation of a version with its size
//!   (ListObjectAnnotations, all pages) → a [`VersionListing`], or `None` when the version is
//!   gone; [`AnnotationSource::read_part`] then reads a part of the payloads, so a caller holds
//!   no more of a large set at once than its [`ReadBudget`] allows.
//!
//! Every answer is stamped with its **observation time**: the wall-clock time at which the
//! successful attempt was *sent*, corrected towards S3's own clock when S3's `Date` headers
//! prove this host's clock off (see [`Clock`]). S3 reads are strongly consistent and every fetch starts after
//! the event that caused it, so for the last write to an annotation, every fetch started later
//! sees that write or a newer one: the observation with the largest stamp describes the final
//! state (docs/correctness.md §1). Stamping at send time (not at response time) is what
//! makes that hold; it is also why the SDK's own retries must be off (see [`s3_client`]): a
//! retried call is a new observation with a new stamp.
//!
//! Throttling, 5xx, timeouts and connection failures are retried here; everything else is a
//! [`SourceError`] classified by [`SourceError::is_retryable`].

mod budget;
mod clock;
mod error;
mod listing;
mod stats;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use chrono::NaiveDateTime;
use s3_events::ObjectRef;
use tokio::sync::Semaphore;
use tracing::debug;

pub use budget::{MAX_ANNOTATION_BYTES, ReadBudget, Reservation};
pub use clock::{Clock, ClockEstimate, DateHeaderInterceptor};
pub use error::SourceError;
pub use listing::{
    ListPage, ListPosition, ListScope, Listed, VersionFacts, Versions, is_directory_bucket,
};
pub use stats::{CallStats, LATENCY_BUCKETS_SECONDS, Op, OpSnapshot};

/// One annotation as S3 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Annotation name.
    pub name: String,
    /// The payload (UTF-8).
    pub text_value: String,
    /// Payload bytes.
    pub size: i64,
    /// Annotation ETag, quotes stripped.
    pub e_tag: Option<String>,
    /// Last-Modified (UTC, no zone, as the AWS table stores it).
    pub last_modified: Option<NaiveDateTime>,
    /// Checksum algorithm whose value S3 returned, when it returned one.
    pub checksum_algorithm: Option<String>,
    /// `x-amz-replication-status`.
    pub replication_status: Option<String>,
}

/// What S3 says about one named annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotationState {
    /// It exists with this content.
    Present(Annotation),
    /// The object version exists, the annotation does not.
    Absent,
    /// The object version (or its bucket) does not exist: none of its annotations do.
    VersionGone,
}

/// An answer and when it was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed<T> {
    /// Nanoseconds since the Unix epoch at which the successful request was sent.
    pub at_nanos: u64,
    /// The answer.
    pub value: T,
    /// The object version S3 said it answered for (`x-amz-object-version-id`), when it said:
    /// a read that named no version addressed the current one, and this is its id.
    pub version_id: Option<String>,
}

impl<T> Observed<T> {
    fn new(at_nanos: u64, value: T) -> Self {
        Observed {
            at_nanos,
            value,
            version_id: None,
        }
    }
}

/// How the source calls S3.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Sent as `x-amz-expected-bucket-owner` on every call, when set.
    pub expected_bucket_owner: Option<String>,
    /// When set, only these buckets are read; others are a permanent error.
    pub allowed_buckets: Option<BTreeSet<String>>,
    /// S3 calls in flight at most.
    pub concurrency: usize,
    /// Attempts per call, including the first.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt, full jitter.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            expected_bucket_owner: None,
            allowed_buckets: None,
            concurrency: 64,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// An S3 client with the SDK's retries off, so that [`AnnotationSource`] retries (and stamps)
/// every attempt itself, and every response's `Date` feeding `clock`.
pub fn s3_client(sdk: &aws_sdk_s3::config::Builder, clock: &Arc<Clock>) -> aws_sdk_s3::Client {
    let config = sdk
        .clone()
        .retry_config(RetryConfig::disabled())
        .interceptor(clock.interceptor())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Reads annotations from S3. Cheap to clone; clones share the concurrency limit and stats.
#[derive(Debug, Clone)]
pub struct AnnotationSource {
    s3: aws_sdk_s3::Client,
    options: Arc<SourceOptions>,
    permits: Arc<Semaphore>,
    stats: Arc<CallStats>,
    clock: Arc<Clock>,
}

/// The result of one attempt, before classification.
enum Attempt<T> {
    Done(T),
    Retry(String),
}

impl AnnotationSource {
    /// A source over `s3`, stamping with `clock` (build the client with [`s3_client`] and the
    /// same clock, so that S3's answers keep the clock in step).
    pub fn new(s3: aws_sdk_s3::Client, options: SourceOptions, clock: Arc<Clock>) -> Self {
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        AnnotationSource {
            s3,
            options: Arc::new(options),
            permits,
            stats: Arc::new(CallStats::default()),
            clock,
        }
    }

    /// The clock observations are stamped with.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Learns this host's offset to S3's clock before the first observation: `Date` has whole
    /// seconds, so responses spread over a little more than a second bound it to a round trip.
    /// Any answer counts (an access denial carries a `Date` too).
    pub async fn calibrate_clock(&self, over: Duration) {
        let started = Instant::now();
        while started.elapsed() < over {
            let _ = self.s3.list_buckets().max_buckets(1).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counters and latencies of the calls made so far.
    pub fn stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    /// The S3 client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    /// A strictly increasing stamp in nanoseconds, corrected towards S3's clock (see
    /// [`Clock`]).
    fn stamp(&self) -> u64 {
        self.clock.stamp()
    }

    fn check_bucket(&self, object: &ObjectRef) -> Result<(), SourceError> {
        match &self.options.allowed_buckets {
            Some(allowed) if !allowed.contains(&object.bucket) => {
                Err(SourceError::BucketNotAllowed {
                    bucket: object.bucket.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Runs `call` with a permit, retrying transient failures with backoff; returns the answer
    /// of the successful attempt and the time it was sent.
    async fn with_retries<T, F, Fut>(
        &self,
        op: Op,
        object: &ObjectRef,
        mut call: F,
    ) -> Result<Observed<T>, SourceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>, SourceError>>,
    {
        let mut attempt = 1u32;
        loop {
            let outcome = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| SourceError::Closed)?;
                let at_nanos = self.stamp();
                let started = Instant::now();
                let outcome = call().await;
                self.stats.record(op, started.elapsed(), outcome.is_err());
                outcome.map(|a| (at_nanos, a))
            };
            let reason = match outcome {
                Ok((at_nanos, Attempt::Done(value))) => return Ok(Observed::new(at_nanos, value)),
                Ok((_, Attempt::Retry(reason))) => reason,
                Err(e) => {
                    return Err(
                        e.with_owner_configured(self.options.expected_bucket_owner.as_deref())
                    );
                }
            };
            self.stats.record_retry(op);
            if attempt >= self.options.max_attempts {
                return Err(SourceError::Exhausted {
                    op: op.name(),
                    bucket: object.bucket.clone(),
                    key: object.key.clone(),
                    attempts: attempt,
                    last: reason,
                });
            }
            let ceiling = self
                .options
                .initial_backoff
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(self.options.max_backoff);
            let wait = ceiling.mul_f64(fastrand::f64());
            debug!(op = op.name(), bucket = %object.bucket, key = %object.key, attempt, ?wait, %reason, "retrying S3 call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// GetObjectAnnotation for one name of one object version.
    pub async fn get(
        &self,
        object: &ObjectRef,
        name: &str,
    ) -> Result<Observed<AnnotationState>, SourceError> {
        self.check_bucket(object)?;
        let read = self
            .with_retries(Op::GetAnnotation, object, || async {
                let response = self
                    .s3
                    .get_object_annotation()
                    .bucket(&object.bucket)
                    .key(&object.key)
                    .annotation_name(name)
                    .set_version_id(object.api_version_id().map(str::to_string))
                    .set_expected_bucket_owner(self.options.expected_bucket_owner.clone())
                    .send()
                    .await;
                let output = match response {
                    Ok(output) => output,
                    Err(e) => {
                        return match classify(&e) {
                            Class::Gone => Ok(Attempt::Done((AnnotationState::VersionGone, None))),
                            Class::NoSuchAnnotation => {
                                Ok(Attempt::Done((AnnotationState::Absent, None)))
                            }
                            Class::Transient(reason) => Ok(Attempt::Retry(reason)),
                            Class::Permanent { code, message } => Err(SourceError::from_service(
                                Op::GetAnnotation,
                                object,
                                Some(name),
                                code,
                                message,
                            )),
                        };
                    }
                };
                let version_id = output.object_version_id().map(str::to_string);
                let e_tag = output.e_tag().map(strip_quotes);
                let last_modified = output.last_modified().and_then(to_naive);
                let replication_status =
                    output.replication_status().map(|s| s.as_str().to_string());
                let checksum_algorithm = checksum_algorithm(&output);
                let body = match output.annotation_payload.collect().await {
                    Ok(body) => body.into_bytes(),
                    Err(e) => return Ok(Attempt::Retry(format!("reading the payload: {e}"))),
                };
                let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
                let text_value =
                    String::from_utf8(body.to_vec()).map_err(|e| SourceError::NotUtf8 {
                        bucket: object.bucket.clone(),
                        key: object.key.clone(),
                        name: name.to_string(),
                        offset: e.utf8_error().valid_up_to(),
                    })?;
                Ok(Attempt::Done((
                    AnnotationState::Present(Annotation {
                        name: name.to_string(),
                        text_value,
                        size,
                        e_tag,
                        last_modified,
                        checksum_algorithm,
                        replication_status,
                    }),
                    version_id,
                )))
            })
            .await?;
        let (value, version_id) = read.value;
        Ok(Observed {
            at_nanos: read.at_nanos,
            value,
            version_id,
        })
    }

    /// Every annotation of an object version as ListObjectAnnotations reports it (all pages:
    /// names and payload sizes), or `None` if the version does not exist. Observed when the
    /// first page was requested; the payloads are read afterwards, part by part, with
    /// [`AnnotationSource::read_part`].
    pub async fn list_version(
        &self,
        object: &ObjectRef,
    ) -> Result<Observed<Option<VersionListing>>, SourceError> {
        self.check_bucket(object)?;
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        let mut first_at = None;
        let mut version_id = None;
        loop {
            let page = self
                .with_retries(Op::ListAnnotations, object, || async {
                    let response = self
                        .s3
                        .list_object_annotations()
                        .bucket(&object.bucket)
                        .key(&object.key)
                        .set_version_id(object.api_version_id().map(str::to_string))
                        .set_continuation_token(token.clone())
                        .set_expected_bucket_owner(self.options.expected_bucket_owner.clone())
                        .send()
                        .await;
                    match response {
                        Ok(output) => Ok(Attempt::Done(Some(output))),
                        Err(e) => match classify(&e) {
                            Class::Gone => Ok(Attempt::Done(None)),
                            Class::Transient(reason) => Ok(Attempt::Retry(reason)),
                            Class::NoSuchAnnotation => Ok(Attempt::Done(None)),
                            Class::Permanent { code, message } => Err(SourceError::from_service(
                                Op::ListAnnotations,
                                object,
                                None,
                                code,
                                message,
                            )),
                        },
                    }
                })
                .await?;
            let at = *first_at.get_or_insert(page.at_nanos);
            let Some(output) = page.value else {
                return Ok(Observed::new(at, None));
            };
            if version_id.is_none() {
                version_id = output.object_version_id().map(str::to_string);
            }
            entries.extend(output.annotations().iter().map(|entry| ListedAnnotation {
                name: entry.annotation_name().to_string(),
                size: u64::try_from(entry.size()).unwrap_or(0),
            }));
            match output.next_continuation_token() {
                Some(next) if !next.is_empty() && token.as_deref() != Some(next) => {
                    token = Some(next.to_string());
                }
                _ => break,
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        // Every name is read from the version the listing answered for: a read naming no
        // version could otherwise land on a newer current version.
        let read_from = match (&object.version_id, &version_id) {
            (None, Some(v)) if v != "null" => ObjectRef {
                version_id: Some(v.clone()),
                ..object.clone()
            },
            _ => object.clone(),
        };
        Ok(Observed {
            at_nanos: first_at.unwrap_or_default(),
            value: Some(VersionListing { entries, read_from }),
            version_id,
        })
    }

    /// Reads the payloads of `names` (a part of `listing`) concurrently. A name deleted since
    /// the listing is left out (its delete event is observed later, with a larger stamp); a
    /// version gone since the listing is [`SetPart::Gone`], stamped when that read was sent.
    pub async fn read_part(
        &self,
        listing: &VersionListing,
        names: &[String],
    ) -> Result<SetPart, SourceError> {
        let reads = names.iter().map(|name| self.get(&listing.read_from, name));
        let mut annotations = Vec::with_capacity(names.len());
        let mut gone_at: Option<u64> = None;
        for read in futures::future::join_all(reads).await {
            let read = read?;
            match read.value {
                AnnotationState::Present(a) => annotations.push(a),
                AnnotationState::Absent => {}
                AnnotationState::VersionGone => {
                    gone_at = Some(gone_at.map_or(read.at_nanos, |g| g.min(read.at_nanos)));
                }
            }
        }
        if let Some(at_nanos) = gone_at {
            return Ok(SetPart::Gone { at_nanos });
        }
        annotations.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(SetPart::Present(annotations))
    }
}

/// One annotation as ListObjectAnnotations reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAnnotation {
    /// The name.
    pub name: String,
    /// Payload bytes, as listed (a write after the listing may change it).
    pub size: u64,
}

/// The annotations an object version had when it was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionListing {
    /// Every listed annotation, sorted by name.
    pub entries: Vec<ListedAnnotation>,
    /// The version the payloads are read from: the one the listing answered for.
    pub read_from: ObjectRef,
}

impl VersionListing {
    /// Payload bytes listed in all.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// The names in listing order, cut into parts of at most `max_bytes` listed bytes each (a
    /// single larger annotation is a part of its own). Never empty: a version without
    /// annotations is one empty part.
    pub fn parts(&self, max_bytes: u64) -> Vec<(Vec<String>, u64)> {
        let mut parts: Vec<(Vec<String>, u64)> = vec![(Vec::new(), 0)];
        for entry in &self.entries {
            let size = entry.size.max(1);
            let fits = parts
                .last()
                .is_some_and(|(names, bytes)| names.is_empty() || bytes + size <= max_bytes);
            if !fits {
                parts.push((Vec::new(), 0));
            }
            if let Some((names, bytes)) = parts.last_mut() {
                names.push(entry.name.clone());
                *bytes += size;
            }
        }
        parts
    }
}

/// The payloads of one part of a version's annotation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetPart {
    /// These annotations, sorted by name (names deleted since the listing left out).
    Present(Vec<Annotation>),
    /// The version was gone when this read was sent.
    Gone {
        /// Nanoseconds since the Unix epoch at which the read that found it gone was sent.
        at_nanos: u64,
    },
}

enum Class {
    Gone,
    NoSuchAnnotation,
    Transient(String),
    Permanent { code: String, message: String },
}

/// Sorts an SDK error into what the caller does with it.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    error: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Class {
    match error {
        SdkError::TimeoutError(_) => Class::Transient("timed out".into()),
        SdkError::DispatchFailure(e) => Class::Transient(format!("connection failed: {e:?}")),
        SdkError::ResponseError(e) => Class::Transient(format!("unreadable response: {e:?}")),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let err = service.err();
            let code = err.code().unwrap_or("").to_string();
            let message = err.message().unwrap_or("").to_string();
            classify_code(&code, status, message)
        }
        other => Class::Permanent {
            code: "ClientError".into(),
            message: format!("{other:?}"),
        },
    }
}

fn classify_code(code: &str, status: u16, message: String) -> Class {
    match code {
        "NoSuchKey" | "NoSuchVersion" | "NoSuchBucket" => Class::Gone,
        // Reading a version that is a delete marker: a marker carries no annotations (a
        // versioning-suspended DELETE puts one in the null version's place).
        "MethodNotAllowed" if status == 405 => Class::Gone,
        "NoSuchAnnotation" => Class::NoSuchAnnotation,
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestTimeout"
        | "RequestTimeTooSkewed"
        | "InternalError"
        | "ServiceUnavailable"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => Class::Transient(format!("{code} (HTTP {status}): {message}")),
        // The credentials, not the message: a refreshed token or a fixed key makes the same
        // read succeed, so it must not count towards the message's dead-letter limit.
        "ExpiredToken"
        | "ExpiredTokenException"
        | "TokenRefreshRequired"
        | "RequestExpired"
        | "InvalidAccessKeyId"
        | "InvalidToken"
        | "SignatureDoesNotMatch" => Class::Transient(format!(
            "credentials refused: {code} (HTTP {status}): {message}"
        )),
        _ if status == 429 || (500..600).contains(&status) && status != 501 => {
            Class::Transient(format!("{code} (HTTP {status}): {message}"))
        }
        "" if status == 404 => Class::Gone,
        "" if status == 501 => Class::Permanent {
            code: "NotImplemented".into(),
            message,
        },
        _ => Class::Permanent {
            code: if code.is_empty() {
                format!("HTTP {status}")
            } else {
                code.to_string()
            },
            message,
        },
    }
}

fn strip_quotes(s: &str) -> String {
    s.trim_matches('"').to_string()
}

fn to_naive(t: &aws_sdk_s3::primitives::DateTime) -> Option<NaiveDateTime> {
    let nanos = t.subsec_nanos();
    chrono::DateTime::from_timestamp(t.secs(), nanos).map(|d| d.naive_utc())
}

fn checksum_algorithm(
    o: &aws_sdk_s3::operation::get_object_annotation::GetObjectAnnotationOutput,
) -> Option<String> {
    let present = [
        ("CRC64NVME", o.checksum_crc64_nvme()),
        ("CRC32", o.checksum_crc32()),
        ("CRC32C", o.checksum_crc32_c()),
        ("SHA1", o.checksum_sha1()),
        ("SHA256", o.checksum_sha256()),
        ("SHA512", o.checksum_sha512()),
        ("MD5", o.checksum_md5()),
        ("XXHASH64", o.checksum_xxhash64()),
        ("XXHASH3", o.checksum_xxhash3()),
        ("XXHASH128", o.checksum_xxhash128()),
    ];
    present
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| !v.is_empty()))
        .map(|(name, _)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_codes_are_classified() {
        assert!(matches!(
            classify_code("NoSuchKey", 404, String::new()),
            Class::Gone
        ));
        assert!(matches!(
            classify_code("NoSuchBucket", 404, String::new()),
            Class::Gone
        ));
        assert!(matches!(
            classify_code("MethodNotAllowed", 405, String::new()),
            Class::Gone
        ));
        assert!(matches!(
            classify_code("NoSuchAnnotation", 404, String::new()),
            Class::NoSuchAnnotation
        ));
        assert!(matches!(
            classify_code("SlowDown", 503, String::new()),
            Class::Transient(_)
        ));
        assert!(matches!(
            classify_code("Whatever", 500, String::new()),
            Class::Transient(_)
        ));
        assert!(matches!(
            classify_code("", 429, String::new()),
            Class::Transient(_)
        ));
        assert!(matches!(
            classify_code("AccessDenied", 403, String::new()),
            Class::Permanent { .. }
        ));
        for code in [
            "ExpiredToken",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ] {
            assert!(
                matches!(classify_code(code, 400, String::new()), Class::Transient(_)),
                "{code}"
            );
        }
        assert!(matches!(
            classify_code("NotImplemented", 501, String::new()),
            Class::Permanent { .. }
        ));
        assert!(
            matches!(classify_code("", 501, String::new()), Class::Permanent { code, .. } if code == "NotImplemented")
        );
    }
}
