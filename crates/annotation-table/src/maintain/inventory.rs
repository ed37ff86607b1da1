//! What a table's snapshots reference: manifest lists, manifests, and the data and delete
//! files live in each snapshot, read once per manifest however many snapshots share it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use iceberg::spec::{
    DataContentType, ManifestContentType, ManifestEntryRef, ManifestFile, SnapshotRef,
};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};

/// The live files of one snapshot, with the manifests that hold them.
#[derive(Default)]
pub(crate) struct SnapshotFiles {
    /// The snapshot's manifests.
    pub manifests: Vec<ManifestFile>,
    /// Its live data files (status ADDED or EXISTING), in manifest order.
    pub live: Vec<ManifestEntryRef>,
    /// Its live position-delete files (only the current-state tables have any: a refresh
    /// that changes a few rows of a partition deletes them by position, see `state`).
    pub deletes: Vec<ManifestEntryRef>,
}

/// Reads manifests through a cache keyed by path (manifests are immutable).
#[derive(Default)]
pub(crate) struct ManifestCache {
    entries: HashMap<String, Arc<Vec<ManifestEntryRef>>>,
}

impl ManifestCache {
    /// The entries of one manifest.
    async fn entries(
        &mut self,
        table: &Table,
        manifest: &ManifestFile,
    ) -> Result<Arc<Vec<ManifestEntryRef>>, Error> {
        if let Some(found) = self.entries.get(&manifest.manifest_path) {
            return Ok(found.clone());
        }
        let loaded = manifest.load_manifest(table.file_io()).await?;
        let (entries, _) = loaded.into_parts();
        let entries = Arc::new(entries);
        self.entries
            .insert(manifest.manifest_path.clone(), entries.clone());
        Ok(entries)
    }

    /// The manifests and live data and delete files of `snapshot`. Equality deletes are
    /// refused: annotable never writes them, and a rewrite that ignored them would resurrect
    /// rows.
    pub(crate) async fn snapshot(
        &mut self,
        table: &Table,
        snapshot: &SnapshotRef,
    ) -> Result<SnapshotFiles, Error> {
        let list = table.manifest_list_reader(snapshot).load().await?;
        let manifests: Vec<ManifestFile> = list.consume_entries().into_iter().collect();
        let (mut live, mut deletes) = (Vec::new(), Vec::new());
        for manifest in &manifests {
            let entries = self.entries(table, manifest).await?;
            let alive = entries.iter().filter(|e| e.is_alive()).cloned();
            if manifest.content == ManifestContentType::Data {
                live.extend(alive);
                continue;
            }
            for entry in alive {
                if entry.content_type() != DataContentType::PositionDeletes {
                    return Err(Error::new(
                        ErrorKind::FeatureUnsupported,
                        format!(
                            "snapshot {} has equality deletes ({}); annotable only maintains tables without them",
                            snapshot.snapshot_id(),
                            entry.file_path()
                        ),
                    ));
                }
                deletes.push(entry);
            }
        }
        Ok(SnapshotFiles {
            manifests,
            live,
            deletes,
        })
    }
}

/// Every file path the given snapshots reference: their manifest lists, manifests, and live
/// data and delete files.
pub(crate) async fn referenced_by(
    table: &Table,
    snapshots: &[SnapshotRef],
    cache: &mut ManifestCache,
) -> Result<HashSet<String>, Error> {
    let mut paths = HashSet::new();
    for snapshot in snapshots {
        paths.insert(snapshot.manifest_list().to_string());
        let files = cache.snapshot(table, snapshot).await?;
        for manifest in files.manifests {
            paths.insert(manifest.manifest_path);
        }
        for entry in files.live.iter().chain(&files.deletes) {
            paths.insert(entry.file_path().to_string());
        }
    }
    Ok(paths)
}
