//! The journal rows the state has not folded in yet: those of the data files the journal's
//! appends added after the snapshot the state records as its watermark.
//!
//! The journal is append-only; compaction's `replace` snapshots only move rows already there
//! into new files, and journal retention only drops rows the state has folded in, so both are
//! skipped. Walking from the current snapshot back through its
//! parents to the watermark finds the appends in between; each one's own manifest
//! (`added_snapshot_id` = the append) lists the files it added. If the walk does not reach the
//! watermark (it was expired, or the state belongs to another journal), the whole journal is
//! the delta: the refresh then rebuilds the state instead of patching it. A state never
//! refreshed starts from the journal's first snapshot when the history still reaches it, so
//! even the first refresh can be taken one append at a time.

use iceberg::spec::{DataFile, ManifestStatus, SnapshotRef};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};

use super::retention::is_retention;
use crate::maintain::changes_rows;
use crate::maintain::inventory::ManifestCache;

/// The journal files to fold.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// The journal snapshot the state reflects once all of this is folded in; `None` when the
    /// journal has no snapshot.
    pub to: Option<SnapshotRef>,
    /// True when `files` is the whole journal (no usable watermark).
    pub full: bool,
    /// The data files to read: the whole journal's when `full`, else every append's.
    pub files: Vec<DataFile>,
    /// Each append after the watermark, oldest first, with the files it added (not `full`).
    pub appends: Vec<(SnapshotRef, Vec<DataFile>)>,
}

/// Where the delta starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// After this journal snapshot (the state's watermark).
    Watermark(i64),
    /// The state was never refreshed: every append since the journal began.
    Beginning,
    /// The whole journal as one delta (a rebuild).
    Everything,
}

/// The delta of `journal` after `from`.
pub(crate) async fn since(journal: &Table, from: From) -> Result<Delta, Error> {
    let metadata = journal.metadata();
    let Some(current) = metadata.current_snapshot().cloned() else {
        return Ok(Delta::default());
    };
    let mut appends = Vec::new();
    let mut reached = false;
    if from != From::Everything {
        let mut at = Some(current.clone());
        while let Some(snapshot) = at {
            if from == From::Watermark(snapshot.snapshot_id()) {
                reached = true;
                break;
            }
            if changes_rows(&snapshot) && !is_retention(&snapshot) {
                appends.push(snapshot.clone());
            }
            at = match snapshot.parent_snapshot_id() {
                Some(parent) => metadata.snapshot_by_id(parent).cloned(),
                None => {
                    // The first snapshot of the journal: nothing came before it.
                    reached = from == From::Beginning;
                    None
                }
            };
        }
    }
    let mut cache = ManifestCache::default();
    if !reached {
        let files = cache.snapshot(journal, &current).await?;
        return Ok(Delta {
            to: Some(current),
            full: true,
            files: files.live.iter().map(|e| e.data_file().clone()).collect(),
            appends: Vec::new(),
        });
    }
    let mut out = Vec::new();
    for snapshot in appends.into_iter().rev() {
        let mut files = Vec::new();
        let list = journal.manifest_list_reader(&snapshot).load().await?;
        for manifest in list.entries() {
            if manifest.added_snapshot_id != snapshot.snapshot_id() {
                continue;
            }
            let loaded = manifest.load_manifest(journal.file_io()).await?;
            for entry in loaded.entries() {
                if entry.status() == ManifestStatus::Added
                    && entry.snapshot_id() == Some(snapshot.snapshot_id())
                {
                    if entry.data_file().content_type() != iceberg::spec::DataContentType::Data {
                        return Err(Error::new(
                            ErrorKind::FeatureUnsupported,
                            format!(
                                "journal snapshot {} adds a delete file; annotable's journal is \
                                 append-only",
                                snapshot.snapshot_id()
                            ),
                        ));
                    }
                    files.push(entry.data_file().clone());
                }
            }
        }
        out.push((snapshot, files));
    }
    Ok(Delta {
        to: Some(current),
        full: false,
        files: out.iter().flat_map(|(_, f)| f.iter().cloned()).collect(),
        appends: out,
    })
}
