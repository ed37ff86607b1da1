//! The outbox: a walk's rows batched by the shared flush policy, each batch carrying the
//! listing position after its last complete version (so a resume never writes them again).
//! Object journal rows ride in the same batches (committed first, see `commit`).

use annotation_source::{ListPosition, Reservation};
use annotation_table::{JournalRow, ObjectRow, Source};
use chrono::Utc;
use tokio::sync::mpsc;

use crate::batcher::Batcher;
use crate::object_rows::{KeyObservation, object_rows_of};
use crate::rows::{Observation, rows_of};

/// Rows ready to commit, and where the listing stands after them.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) rows: Vec<JournalRow>,
    /// Object journal rows of the versions walked.
    pub(super) object_rows: Vec<ObjectRow>,
    pub(super) objects: u64,
    /// After the last object version completed in this batch; `None` when the batch holds
    /// only early parts of one large set (the checkpoint must not move past it yet).
    pub(super) position: Option<ListPosition>,
    /// The payload bytes the rows hold, given back once committed.
    pub(super) held: Vec<Reservation>,
}

/// What the batcher gathers for the committer.
pub(super) enum Piece {
    /// A version's rows (or a part's), and the payload bytes they hold.
    Rows(Vec<JournalRow>, Reservation),
    /// A version's object journal row.
    Objects(Vec<ObjectRow>),
    /// A version is done: the checkpoint may move past it.
    Done(ListPosition),
}

impl Pending {
    pub(super) fn of(pieces: Vec<Piece>) -> Pending {
        let mut pending = Pending::default();
        for piece in pieces {
            match piece {
                Piece::Rows(rows, held) => {
                    pending.rows.extend(rows);
                    pending.held.push(held);
                }
                Piece::Objects(rows) => pending.object_rows.extend(rows),
                Piece::Done(position) => {
                    pending.objects += 1;
                    pending.position = Some(position);
                }
            }
        }
        pending
    }
}

/// Feeds the committer, batching by the shared flush policy.
pub(super) struct Outbox {
    pub(super) batch: Batcher<Piece>,
    pub(super) dry_run: bool,
    pub(super) dry_rows: u64,
    pub(super) dry_object_rows: u64,
    pub(super) tx: mpsc::Sender<Pending>,
    /// The committer is gone: stop reading.
    pub(super) closed: bool,
}

impl Outbox {
    /// Adds an observation's rows (call [`Outbox::flush_if_full`] after, once the version is
    /// [complete](Outbox::complete) if it is: a batch must carry the position after its rows'
    /// version, or a resume would write them again).
    pub(super) fn add(&mut self, observation: &Observation, held: Reservation) {
        // Each version is listed once per walk: nothing to suppress.
        let mut rows = rows_of(observation, Source::Backfill, Utc::now());
        let (count, bytes) = (rows.len(), observation.observed.estimated_bytes());
        if self.dry_run {
            self.dry_rows += count as u64;
            rows.clear();
        }
        let now = tokio::time::Instant::now();
        self.batch.push(Piece::Rows(rows, held), count, bytes, now);
    }

    /// Adds the object journal rows of a version the walk listed.
    pub(super) fn add_object(&mut self, observation: &KeyObservation) {
        let mut rows = object_rows_of(observation, Source::Backfill, Utc::now());
        let count = rows.len();
        if self.dry_run {
            self.dry_object_rows += count as u64;
            rows.clear();
        }
        let now = tokio::time::Instant::now();
        self.batch.push(Piece::Objects(rows), count, 0, now);
    }

    /// Marks an object version done: the checkpoint may move past it.
    pub(super) fn complete(&mut self, position: ListPosition) {
        let now = tokio::time::Instant::now();
        self.batch.push(Piece::Done(position), 0, 0, now);
    }

    pub(super) async fn flush_if_full(&mut self) {
        if self.batch.is_full() {
            self.flush().await;
        }
    }

    pub(super) async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.tx.send(Pending::of(self.batch.take())).await.is_err() {
            self.closed = true;
        }
    }
}
