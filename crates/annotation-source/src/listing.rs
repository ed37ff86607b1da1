//! Walking a bucket: the object versions a backfill reads, one page at a time, from an exact
//! resumable position.
//!
//! - Current versions of an unversioned bucket: ListObjectsV2 (`start-after` = the last key
//!   handled).
//! - Current versions of a versioned (or suspended) bucket: ListObjectVersions, keeping the
//!   latest version of each key that is not a delete marker. ListObjectsV2 would not give the
//!   version ids, and rows must name the same version the notifications name.
//! - Every version: ListObjectVersions; delete markers only when the scope asks for them (they
//!   carry no annotations, but the object journal records them). A page's delete markers come
//!   first, positioned where the page starts: the SDK hands versions and markers over as two
//!   lists, so their order within the page is lost, and a marker committed at the page's start
//!   can only be listed again on a resume, never skipped.
//!
//! Every listed version carries what the listing says about it ([`VersionFacts`]), and a page
//! the time its request was sent, so object journal rows can be stamped like any observation.
//!
//! A [`ListPosition`] names the last object version handled, so a page can end anywhere and a
//! resumed walk starts exactly after it (`key-marker` + `version-id-marker`, or `start-after`).

use aws_sdk_s3::error::ProvideErrorMetadata;
use s3_events::ObjectRef;

use chrono::NaiveDateTime;

use crate::{AnnotationSource, Attempt, Class, Op, SourceError, classify, strip_quotes, to_naive};

/// Which versions of each object to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// The current version of each key.
    Current,
    /// Every version of each key.
    All,
}

impl Versions {
    /// `current` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Versions::Current => "current",
            Versions::All => "all",
        }
    }
}

/// What to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListScope {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (empty: the whole bucket).
    pub prefix: String,
    /// Which versions.
    pub versions: Versions,
    /// With [`Versions::All`], list delete markers too.
    pub delete_markers: bool,
}

/// The last object version handled; the walk continues after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPosition {
    /// Key of the last object handled (`None`: the start).
    pub key: Option<String>,
    /// Its version id as ListObjectVersions gave it (`None` for ListObjectsV2 walks).
    pub version_id: Option<String>,
}

/// What a listing says about one object version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionFacts {
    /// A delete marker (then size, ETag and storage class are `None`).
    pub is_delete_marker: bool,
    /// Object size in bytes.
    pub size: Option<i64>,
    /// The object's ETag, quotes stripped.
    pub e_tag: Option<String>,
    /// Last-Modified (UTC).
    pub last_modified: Option<NaiveDateTime>,
    /// Storage class as listed.
    pub storage_class: Option<String>,
    /// The additional checksum algorithms listed, comma-separated.
    pub checksum_algorithm: Option<String>,
}

/// One object version found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The object version (`version_id` is `None` in unversioned buckets).
    pub object: ObjectRef,
    /// What the listing says about it.
    pub facts: VersionFacts,
    /// When the page listing it was requested (ns, corrected towards S3's clock).
    pub listed_at: u64,
    /// Where the walk stands once this object is handled.
    pub position: ListPosition,
}

/// One page of the walk.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// When the page's request was sent (ns, corrected towards S3's clock).
    pub at_nanos: u64,
    /// The object versions, in listing order (a page's delete markers first).
    pub objects: Vec<Listed>,
    /// Where the next page starts; `None` when the walk is complete.
    pub next: Option<ListPosition>,
}

/// Whether `bucket` is an S3 Express One Zone directory bucket (`name--azid--x-s3`), where
/// annotations (and notifications) do not exist.
pub fn is_directory_bucket(bucket: &str) -> bool {
    bucket.ends_with("--x-s3")
}

impl AnnotationSource {
    /// Whether the bucket keeps versions (versioning Enabled or Suspended): then listings must
    /// come from ListObjectVersions to name version ids.
    pub async fn bucket_is_versioned(&self, bucket: &str) -> Result<bool, SourceError> {
        let target = bucket_ref(bucket, "");
        self.check_bucket(&target)?;
        let answer = self
            .with_retries(Op::ListObjects, &target, || async {
                let response = self
                    .s3
                    .get_bucket_versioning()
                    .bucket(bucket)
                    .set_expected_bucket_owner(self.options.expected_bucket_owner.clone())
                    .send()
                    .await;
                match response {
                    Ok(out) => Ok(Attempt::Done(out.status().is_some())),
                    Err(e) => listing_failure(&e, Op::ListObjects, &target),
                }
            })
            .await?;
        Ok(answer.value)
    }

    /// One page (up to 1,000 keys) of the walk, starting after `from`.
    pub async fn list_page(
        &self,
        scope: &ListScope,
        versioned: bool,
        from: &ListPosition,
    ) -> Result<ListPage, SourceError> {
        let target = bucket_ref(&scope.bucket, &scope.prefix);
        self.check_bucket(&target)?;
        if is_directory_bucket(&scope.bucket) {
            return Err(SourceError::DirectoryBucket {
                bucket: scope.bucket.clone(),
            });
        }
        let page = if versioned || scope.versions == Versions::All {
            self.list_versions_page(scope, versioned, from, &target)
                .await?
        } else {
            self.list_objects_page(scope, from, &target).await?
        };
        let mut listed = page.value;
        for object in &mut listed.objects {
            object.listed_at = page.at_nanos;
        }
        Ok(ListPage {
            at_nanos: page.at_nanos,
            ..listed
        })
    }

    async fn list_objects_page(
        &self,
        scope: &ListScope,
        from: &ListPosition,
        target: &ObjectRef,
    ) -> Result<crate::Observed<ListPage>, SourceError> {
        self.with_retries(Op::ListObjects, target, || async {
            let response = self
                .s3
                .list_objects_v2()
                .bucket(&scope.bucket)
                .prefix(&scope.prefix)
                .set_start_after(from.key.clone())
                .set_expected_bucket_owner(self.options.expected_bucket_owner.clone())
                .send()
                .await;
            let out = match response {
                Ok(out) => out,
                Err(e) => return listing_failure(&e, Op::ListObjects, target),
            };
            let objects: Vec<Listed> = out
                .contents()
                .iter()
                .filter_map(|o| {
                    let key = o.key()?.to_string();
                    Some(Listed {
                        object: ObjectRef {
                            bucket: scope.bucket.clone(),
                            key: key.clone(),
                            version_id: None,
                        },
                        facts: VersionFacts {
                            is_delete_marker: false,
                            size: o.size(),
                            e_tag: o.e_tag().map(strip_quotes),
                            last_modified: o.last_modified().and_then(to_naive),
                            storage_class: o.storage_class().map(|c| c.as_str().to_string()),
                            checksum_algorithm: checksums(o.checksum_algorithm()),
                        },
                        listed_at: 0,
                        position: ListPosition {
                            key: Some(key),
                            version_id: None,
                        },
                    })
                })
                .collect();
            let next = match (out.is_truncated(), objects.last()) {
                (Some(true), Some(last)) => Some(last.position.clone()),
                _ => None,
            };
            Ok(Attempt::Done(ListPage {
                at_nanos: 0,
                objects,
                next,
            }))
        })
        .await
    }

    async fn list_versions_page(
        &self,
        scope: &ListScope,
        versioned: bool,
        from: &ListPosition,
        target: &ObjectRef,
    ) -> Result<crate::Observed<ListPage>, SourceError> {
        self.with_retries(Op::ListObjects, target, || async {
            let response = self
                .s3
                .list_object_versions()
                .bucket(&scope.bucket)
                .prefix(&scope.prefix)
                .set_key_marker(from.key.clone())
                .set_version_id_marker(from.key.as_ref().and(from.version_id.clone()))
                .set_expected_bucket_owner(self.options.expected_bucket_owner.clone())
                .send()
                .await;
            let out = match response {
                Ok(out) => out,
                Err(e) => return listing_failure(&e, Op::ListObjects, target),
            };
            // Delete markers first, at the page's start (see the module doc).
            let markers = out
                .delete_markers()
                .iter()
                .filter(|_| scope.versions == Versions::All && scope.delete_markers)
                .filter_map(|m| {
                    let key = m.key()?.to_string();
                    Some(Listed {
                        object: ObjectRef {
                            bucket: scope.bucket.clone(),
                            key,
                            version_id: m.version_id().map(str::to_string),
                        },
                        facts: VersionFacts {
                            is_delete_marker: true,
                            last_modified: m.last_modified().and_then(to_naive),
                            ..VersionFacts::default()
                        },
                        listed_at: 0,
                        position: from.clone(),
                    })
                });
            let versions = out
                .versions()
                .iter()
                .filter(|v| scope.versions == Versions::All || v.is_latest() == Some(true))
                .filter_map(|v| {
                    let key = v.key()?.to_string();
                    let listed_version = v.version_id().map(str::to_string);
                    Some(Listed {
                        object: ObjectRef {
                            bucket: scope.bucket.clone(),
                            key: key.clone(),
                            // An unversioned bucket lists every object as version "null";
                            // its notifications name no version, and neither do its rows.
                            version_id: if versioned {
                                listed_version.clone()
                            } else {
                                None
                            },
                        },
                        facts: version_facts(v),
                        listed_at: 0,
                        position: ListPosition {
                            key: Some(key),
                            version_id: listed_version,
                        },
                    })
                });
            let objects: Vec<Listed> = markers.chain(versions).collect();
            let next = if out.is_truncated() == Some(true) {
                match out.next_key_marker() {
                    Some(key) if !key.is_empty() => Some(ListPosition {
                        key: Some(key.to_string()),
                        version_id: out.next_version_id_marker().map(str::to_string),
                    }),
                    _ => objects.last().map(|l| l.position.clone()),
                }
            } else {
                None
            };
            Ok(Attempt::Done(ListPage {
                at_nanos: 0,
                objects,
                next,
            }))
        })
        .await
    }

    /// Every version of one key, delete markers included, as one observation stamped when its
    /// first request was sent: what the object journal records for an object event. Listed
    /// under the key as prefix, page after page while the pages still hold the key (its
    /// versions come before any longer key's). Version ids are as listed (`null` kept).
    pub async fn list_key_versions(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<crate::Observed<Vec<(ObjectRef, VersionFacts)>>, SourceError> {
        let target = bucket_ref(bucket, key);
        self.check_bucket(&target)?;
        let mut found = Vec::new();
        let mut from: Option<(String, Option<String>)> = None;
        let mut at_nanos = None;
        loop {
            let page = match self
                .with_retries(Op::ListObjects, &target, || async {
                    let response = self
                        .s3
                        .list_object_versions()
                        .bucket(bucket)
                        .prefix(key)
                        .set_key_marker(from.as_ref().map(|(k, _)| k.clone()))
                        .set_version_id_marker(from.as_ref().and_then(|(_, v)| v.clone()))
                        .set_expected_bucket_owner(self.options.expected_bucket_owner.clone())
                        .send()
                        .await;
                    match response {
                        Ok(out) => Ok(Attempt::Done(out)),
                        Err(e) => listing_failure(&e, Op::ListObjects, &target),
                    }
                })
                .await
            {
                Ok(page) => page,
                // A bucket that is gone holds no version of any key. Stamped after the answer:
                // the versions were gone by then, and no version of them can come back.
                Err(SourceError::NoSuchBucket { .. }) if found.is_empty() => {
                    return Ok(crate::Observed {
                        at_nanos: self.stamp(),
                        value: Vec::new(),
                        version_id: None,
                    });
                }
                Err(e) => return Err(e),
            };
            at_nanos.get_or_insert(page.at_nanos);
            let out = page.value;
            let of_key = |k: Option<&str>| k == Some(key);
            let object = |version_id: Option<&str>| ObjectRef {
                bucket: bucket.to_string(),
                key: key.to_string(),
                version_id: version_id.map(str::to_string),
            };
            for v in out.versions().iter().filter(|v| of_key(v.key())) {
                found.push((object(v.version_id()), version_facts(v)));
            }
            for m in out.delete_markers().iter().filter(|m| of_key(m.key())) {
                let facts = VersionFacts {
                    is_delete_marker: true,
                    last_modified: m.last_modified().and_then(to_naive),
                    ..VersionFacts::default()
                };
                found.push((object(m.version_id()), facts));
            }
            // Another key listed, or the listing ended: every version of this key was seen.
            let other_key = out.versions().iter().any(|v| !of_key(v.key()))
                || out.delete_markers().iter().any(|m| !of_key(m.key()));
            match out.next_key_marker() {
                Some(next) if out.is_truncated() == Some(true) && !other_key && next == key => {
                    from = Some((
                        next.to_string(),
                        out.next_version_id_marker().map(str::to_string),
                    ));
                }
                _ => break,
            }
        }
        Ok(crate::Observed {
            at_nanos: at_nanos.unwrap_or_default(),
            value: found,
            version_id: None,
        })
    }
}

fn version_facts(v: &aws_sdk_s3::types::ObjectVersion) -> VersionFacts {
    VersionFacts {
        is_delete_marker: false,
        size: v.size(),
        e_tag: v.e_tag().map(strip_quotes),
        last_modified: v.last_modified().and_then(to_naive),
        storage_class: v.storage_class().map(|c| c.as_str().to_string()),
        checksum_algorithm: checksums(v.checksum_algorithm()),
    }
}

/// The listed checksum algorithms, comma-separated; `None` if there are none.
fn checksums<T: AsRef<str>>(algorithms: &[T]) -> Option<String> {
    (!algorithms.is_empty()).then(|| {
        algorithms
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn bucket_ref(bucket: &str, prefix: &str) -> ObjectRef {
    ObjectRef {
        bucket: bucket.to_string(),
        key: prefix.to_string(),
        version_id: None,
    }
}

fn listing_failure<T, E: ProvideErrorMetadata + std::fmt::Debug>(
    error: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    op: Op,
    target: &ObjectRef,
) -> Result<Attempt<T>, SourceError> {
    match classify(error) {
        Class::Transient(reason) => Ok(Attempt::Retry(reason)),
        Class::Gone | Class::NoSuchAnnotation => Err(SourceError::NoSuchBucket {
            bucket: target.bucket.clone(),
        }),
        Class::Permanent { code, message } => {
            Err(SourceError::from_service(op, target, None, code, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_buckets_are_recognised_by_name() {
        assert!(is_directory_bucket("logs--use1-az4--x-s3"));
        assert!(!is_directory_bucket("logs"));
        assert!(!is_directory_bucket("x-s3-logs"));
    }
}
