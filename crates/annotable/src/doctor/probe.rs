//! Probes that touch the services the way the commands will: the annotation API of a bucket
//! (a listing of a key that does not exist: S3 with the API answers NoSuchKey, a store without
//! it NotImplemented), the version listing object events make `serve` do for the object
//! journal, and the warehouse (a small file written and deleted where the tables' files go).

use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::config::Config;

/// Whether `bucket` answers the annotation API.
pub(super) async fn annotation_api(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    expected_owner: Option<&str>,
) -> Result<String, String> {
    let key = format!("annotable-doctor-probe-{}", fastrand::u64(..));
    let answer = s3
        .list_object_annotations()
        .bucket(bucket)
        .key(&key)
        .set_expected_bucket_owner(expected_owner.map(str::to_string))
        .send()
        .await;
    let error = match answer {
        Ok(_) => return Ok("answers ListObjectAnnotations".into()),
        Err(e) => e,
    };
    let status = error.raw_response().map(|r| r.status().as_u16());
    match (error.code(), status) {
        (Some("NoSuchKey" | "NoSuchVersion"), _) | (None, Some(404)) => {
            Ok("answers ListObjectAnnotations".into())
        }
        (Some("NotImplemented"), _) | (None, Some(501)) => Err(
            "answers NotImplemented to ListObjectAnnotations: this store has no S3 annotation API (directory buckets and many S3-compatible stores lack it), so nothing of it can be indexed; use a general purpose S3 bucket"
                .into(),
        ),
        (Some("AccessDenied"), _) | (None, Some(403)) => Err(format!(
            "ListObjectAnnotations is denied: grant s3:ListObjectAnnotations and s3:GetObjectAnnotation on arn:aws:s3:::{bucket}/* to annotable's role (docs/deploy/iam){}",
            if expected_owner.is_some() {
                ", or check that aws.expected_bucket_owner names the bucket's owner"
            } else {
                ""
            }
        )),
        _ => Err(format!(
            "ListObjectAnnotations failed: {}",
            aws_sdk_s3::error::DisplayErrorContext(&error)
        )),
    }
}

/// Whether `bucket` lets annotable list object versions (one ListObjectVersions of a key that
/// does not exist): every object event makes `serve` list its key's versions when objects
/// are recorded.
pub(super) async fn version_listing(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    expected_owner: Option<&str>,
) -> Result<String, String> {
    let key = format!("annotable-doctor-probe-{}", fastrand::u64(..));
    let answer = s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(&key)
        .max_keys(1)
        .set_expected_bucket_owner(expected_owner.map(str::to_string))
        .send()
        .await;
    let error = match answer {
        Ok(_) => return Ok("answers ListObjectVersions".into()),
        Err(e) => e,
    };
    let status = error.raw_response().map(|r| r.status().as_u16());
    match (error.code(), status) {
        (Some("AccessDenied"), _) | (None, Some(403)) => Err(format!(
            "ListObjectVersions is denied, so serve cannot record object versions: grant s3:ListBucketVersions on arn:aws:s3:::{bucket} (docs/deploy/iam/serve.json), or set objects.enabled = false to keep annotations only"
        )),
        _ => Err(format!(
            "ListObjectVersions failed: {}",
            aws_sdk_s3::error::DisplayErrorContext(&error)
        )),
    }
}

/// Whether the tables' files can be written where the catalog puts them.
pub(super) async fn warehouse(config: &Config, warehouse: Option<&str>) -> Result<String, String> {
    let Some(warehouse) = warehouse else {
        return Ok("kept by the catalog's own storage (not probed)".into());
    };
    let name = format!("_annotable/doctor-probe-{}", fastrand::u64(..));
    if let Some(rest) = warehouse
        .strip_prefix("s3://")
        .or_else(|| warehouse.strip_prefix("s3a://"))
    {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", prefix.trim_end_matches('/'))
        };
        let sdk = crate::aws::sdk_config(config).await;
        let s3 = crate::aws::warehouse_s3_client(config, &sdk);
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"probe"))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot write s3://{bucket}/{key}: {}; grant s3:PutObject, s3:GetObject and s3:DeleteObject on the warehouse, or check [storage]",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })?;
        s3.delete_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "wrote s3://{bucket}/{key} but cannot delete it: {}; grant s3:DeleteObject (maintenance deletes expired files)",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })?;
        return Ok(format!("{warehouse}: writable"));
    }
    let dir = std::path::PathBuf::from(warehouse.strip_prefix("file://").unwrap_or(warehouse));
    let probe = dir.join(&name);
    let write = async {
        if let Some(parent) = probe.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(&probe, b"probe").await?;
        tokio::fs::remove_file(&probe).await
    };
    write
        .await
        .map(|()| format!("{warehouse}: writable"))
        .map_err(|e| {
            format!(
                "cannot write {}: {e}; make the directory writable for this user or set catalog.warehouse",
                probe.display()
            )
        })
}
