//! Reading: the listing paged into the walk, and each listed version's annotation set, read
//! whole by the concurrent stage when it fits its share of the read buffer (larger sets are
//! deferred to be read in parts, in listing order). A version S3 refuses is logged and skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use annotation_source::{AnnotationSource, ListPosition, ListScope, Listed, SourceError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::progress::Counters;
use crate::rows::Observation;
use crate::set_reader::{ListedSet, SetReader};

/// One object version, listed and, when its set is small, read.
pub(super) struct ReadResult {
    pub(super) listed: Listed,
    pub(super) read: Read,
}

pub(super) enum Read {
    /// Read whole by the concurrent stage.
    Whole(Box<Observation>),
    /// Too large for the concurrent stage's share of the read buffer: read part by part, in
    /// listing order, by the stage that batches rows.
    Deferred(ListedSet),
    /// S3 refused to read it (logged, counted, no row written).
    Skipped,
    /// A delete marker: it has no annotations to read.
    Marker,
}

/// Pages through the listing into `tx`, from `from` (after the first page if it was read).
#[allow(clippy::too_many_arguments)]
pub(super) async fn list_all(
    source: AnnotationSource,
    scope: ListScope,
    versioned: bool,
    first_page: Option<annotation_source::ListPage>,
    from: ListPosition,
    tx: mpsc::Sender<Result<Listed, SourceError>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Result<(), SourceError> {
    let mut page = match first_page {
        Some(p) => p,
        None => match source.list_page(&scope, versioned, &from).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Ok(());
            }
        },
    };
    loop {
        for listed in std::mem::take(&mut page.objects) {
            counters.listed.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                sent = tx.send(Ok(listed)) => if sent.is_err() { return Ok(()) },
            }
        }
        let Some(next) = page.next.take() else {
            counters.listing_done.store(true, Ordering::Relaxed);
            return Ok(());
        };
        page = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            p = source.list_page(&scope, versioned, &next) => match p {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return Ok(());
                }
            },
        };
    }
}

/// Lists one object version's annotations and reads them whole when they fit `whole_limit`.
pub(super) async fn read_one(
    reader: &SetReader,
    listed: Listed,
    whole_limit: u64,
) -> Result<ReadResult, SourceError> {
    if listed.facts.is_delete_marker {
        return Ok(ReadResult {
            listed,
            read: Read::Marker,
        });
    }
    let read = async {
        let set = reader.list(&listed.object, None).await?;
        if set.bytes() > whole_limit {
            return Ok(Read::Deferred(set));
        }
        // One part: the set fits.
        match reader.read(set, None).next().await? {
            Some(whole) => Ok(Read::Whole(Box::new(whole.observation))),
            None => Ok(Read::Skipped),
        }
    }
    .await;
    let read = match read {
        Ok(read) => read,
        Err(e) if skippable(&e) => {
            skip_log(&listed, &e);
            Read::Skipped
        }
        Err(e) => return Err(e),
    };
    Ok(ReadResult { listed, read })
}

/// One object S3 will not let us read must not stop (and, on every resume, stop again) the
/// whole walk: it is logged, counted, and gets no row.
pub(super) fn skippable(e: &SourceError) -> bool {
    matches!(e, SourceError::Refused { .. } | SourceError::NotUtf8 { .. })
}

pub(super) fn skip_log(listed: &Listed, e: &SourceError) {
    tracing::error!(bucket = %listed.object.bucket, key = %listed.object.key, version_id = ?listed.object.version_id, error = %e, "skipping an object version S3 refused to read");
}
