//! Listing and deleting the files under a table's location. iceberg's `FileIO` reads, writes
//! and deletes but cannot list, so listing goes to the local file system for `file://`
//! warehouses and to OpenDAL's S3 service (the same library iceberg's storage uses, with the
//! same endpoint and credentials) for `s3://` ones.

use std::time::SystemTime;

use futures::StreamExt;
use iceberg::io::FileIO;
use iceberg::{Error, ErrorKind};

use crate::StorageConfig;

/// One file under the table location.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Full path, in the table location's scheme (`file:///…`, `s3://…`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, if the store reports one (files without it are never orphans).
    pub modified: Option<SystemTime>,
}

/// Every file under `location` (a table location).
pub(crate) async fn list(location: &str, storage: &StorageConfig) -> Result<Vec<Listed>, Error> {
    let local = location
        .strip_prefix("file://")
        .or_else(|| location.starts_with('/').then_some(location));
    if let Some(root) = local {
        // Paths come back in the location's own form, as the metadata names them.
        let scheme = location[..location.len() - root.len()].to_string();
        let root = root.to_string();
        return tokio::task::spawn_blocking(move || list_local(&scheme, &root))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
    }
    if let Some(rest) = location
        .strip_prefix("s3://")
        .or_else(|| location.strip_prefix("s3a://"))
    {
        return list_s3(location, rest, storage).await;
    }
    Err(Error::new(
        ErrorKind::FeatureUnsupported,
        format!("listing files under {location} (only file:// and s3:// warehouses)"),
    ))
}

fn list_local(scheme: &str, root: &str) -> Result<Vec<Listed>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(root)];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir, e))?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&entry.path(), e)),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(Listed {
                    path: format!("{scheme}{}", entry.path().display()),
                    size: meta.len(),
                    modified: meta.modified().ok(),
                });
            }
        }
    }
    Ok(out)
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("listing {}: {e}", path.display()),
    )
}

async fn list_s3(
    location: &str,
    rest: &str,
    storage: &StorageConfig,
) -> Result<Vec<Listed>, Error> {
    let scheme = &location[..location.len() - rest.len()];
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    let mut builder = opendal::services::S3::default()
        .bucket(bucket)
        .root("/")
        .region(storage.s3_region.as_deref().unwrap_or("us-east-1"));
    if let Some(endpoint) = &storage.s3_endpoint {
        builder = builder.endpoint(endpoint);
    }
    if let (Some(key), Some(secret)) = (&storage.s3_access_key_id, &storage.s3_secret_access_key) {
        builder = builder.access_key_id(key).secret_access_key(secret);
    }
    if !storage.s3_path_style && storage.s3_endpoint.is_none() {
        builder = builder.enable_virtual_host_style();
    }
    let op = opendal::Operator::new(builder)
        .map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("S3 client for {location}: {e}"),
            )
        })?
        .finish();
    let entries = op
        .list_with(&format!("{prefix}/"))
        .recursive(true)
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, format!("listing {location}: {e}")))?;
    Ok(entries
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| Listed {
            path: format!("{scheme}{bucket}/{}", e.path().trim_start_matches('/')),
            size: e.metadata().content_length(),
            modified: e.metadata().last_modified().map(SystemTime::from),
        })
        .collect())
}

/// Deletes `paths` (16 at a time); a file already gone counts as deleted. Returns how many
/// were deleted and the first failure, if any.
pub(crate) async fn delete_all(file_io: &FileIO, paths: Vec<String>) -> (usize, Option<Error>) {
    let results: Vec<_> = futures::stream::iter(paths)
        .map(|path| async move { file_io.delete(&path).await.map_err(|e| (path, e)) })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut deleted = 0;
    let mut first = None;
    for result in results {
        match result {
            Ok(()) => deleted += 1,
            Err((path, e)) => {
                if first.is_none() {
                    first = Some(Error::new(
                        ErrorKind::Unexpected,
                        format!("deleting {path}: {e}"),
                    ));
                }
            }
        }
    }
    (deleted, first)
}
