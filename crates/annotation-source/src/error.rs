//! Typed S3 failures.

use s3_events::ObjectRef;

use crate::Op;

/// An S3 call that did not give an answer the journal can record.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Throttling, 5xx or connection failures outlasted every attempt.
    #[error(
        "{op} on s3://{bucket}/{key} still failing after {attempts} attempts (last: {last}); S3 is throttling or unavailable, the message will be retried"
    )]
    Exhausted {
        /// The operation.
        op: &'static str,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// S3 refused the call (AccessDenied, InvalidRequest, …): retrying will not help.
    #[error("{op} on {target} was refused: {code}: {message}; {hint}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// `s3://bucket/key`, with ` (annotation NAME)` when one was named.
        target: String,
        /// S3's error code.
        code: String,
        /// S3's message.
        message: String,
        /// What to do.
        hint: &'static str,
    },
    /// The store does not implement the annotation API (HTTP 501 / NotImplemented).
    #[error(
        "{op} on bucket {bucket} answered NotImplemented: this store has no S3 annotation API (directory buckets and many S3-compatible stores do not), so there is nothing to index"
    )]
    NotImplemented {
        /// The operation.
        op: &'static str,
        /// Bucket.
        bucket: String,
    },
    /// A payload that is not UTF-8 (S3 should have refused it with 415).
    #[error(
        "annotation {name} on s3://{bucket}/{key} is not valid UTF-8 (byte {offset}); it cannot be stored as text_value"
    )]
    NotUtf8 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Annotation name.
        name: String,
        /// First invalid byte.
        offset: usize,
    },
    /// The bucket is not in the configured allow-list.
    #[error(
        "bucket {bucket} is not in the allowed_buckets list; add it to the list or remove its notifications from this queue"
    )]
    BucketNotAllowed {
        /// Bucket.
        bucket: String,
    },
    /// An S3 Express One Zone directory bucket: annotations do not exist there.
    #[error(
        "bucket {bucket} is an S3 Express One Zone directory bucket (its name ends in --x-s3); directory buckets do not support object annotations, so there is nothing to index. Nothing was written"
    )]
    DirectoryBucket {
        /// Bucket.
        bucket: String,
    },
    /// The bucket does not exist.
    #[error(
        "bucket {bucket} does not exist (NoSuchBucket); check the name and the region/endpoint"
    )]
    NoSuchBucket {
        /// Bucket.
        bucket: String,
    },
    /// The source was shut down.
    #[error("the S3 source is shutting down")]
    Closed,
}

impl SourceError {
    pub(crate) fn from_service(
        op: Op,
        object: &ObjectRef,
        name: Option<&str>,
        code: String,
        message: String,
    ) -> SourceError {
        if code == "NotImplemented" {
            return SourceError::NotImplemented {
                op: op.name(),
                bucket: object.bucket.clone(),
            };
        }
        let hint = match code.as_str() {
            "AccessDenied" | "AllAccessDisabled" if op == Op::ListObjects => {
                "grant s3:ListBucket and s3:ListBucketVersions (and s3:GetBucketVersioning) on this bucket to annotable's role (see docs/deploy/iam)"
            }
            "AccessDenied" | "AllAccessDisabled" => {
                "grant s3:GetObjectAnnotation and s3:ListObjectAnnotations on this bucket to annotable's role (see docs/deploy/iam)"
            }
            "InvalidBucketOwner" | "ExpectedBucketOwnerMismatch" => {
                "the bucket belongs to another account than expected_bucket_owner"
            }
            _ => "check the bucket and key; the message goes to the dead-letter path",
        };
        SourceError::Refused {
            op: op.name(),
            target: format!(
                "s3://{}/{}{}",
                object.bucket,
                object.key,
                name.map(|n| format!(" (annotation {n})"))
                    .unwrap_or_default()
            ),
            code,
            message,
            hint,
        }
    }

    /// With an expected owner configured, S3 answers a bucket owned by another account with
    /// AccessDenied, like a missing permission: the hint names both causes.
    pub(crate) fn with_owner_configured(self, expected_owner: Option<&str>) -> SourceError {
        match (self, expected_owner) {
            (
                SourceError::Refused {
                    op,
                    target,
                    code,
                    message,
                    ..
                },
                Some(_),
            ) if code == "AccessDenied" => SourceError::Refused {
                op,
                target,
                code,
                message,
                hint: "either the bucket belongs to another account than aws.expected_bucket_owner (nothing of it is indexed: check the setting), or annotable's role lacks s3:GetObjectAnnotation / s3:ListObjectAnnotations / s3:ListBucket on it (see docs/deploy/iam)",
            },
            (other, _) => other,
        }
    }

    /// Whether a later attempt (a redelivery of the message) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Exhausted { .. } | SourceError::Closed)
    }
}
