//! The annotation journal as an Iceberg table.
//!
//! This crate owns everything between "rows to record" and "rows in a committed Iceberg
//! snapshot": the table definition (loaded from `schemas/annotation_journal.json`, the single
//! source of truth, embedded at build time), the Arrow encoding of [`JournalRow`]s, Parquet data
//! files (zstd) written through iceberg's partitioned writer, and the idempotent commit: one
//! `fast_append` per [`Batch`], carrying the batch id in the snapshot summary, so a commit whose
//! outcome is unknown is resolved by looking for that id before trying again (docs/correctness.md §3).
//! It also builds the catalogs annotable supports from configuration ([`CatalogConfig`]), and
//! maintains the table ([`Maintainer`]: compaction, snapshot expiry, orphan cleanup), and keeps
//! the current state as a table of its own, refreshed from the journal ([`state`]). The object
//! journal (`schemas/object_journal.json`, [`ObjectRow`]) is written through the same commit.
//!
//! It does no S3 event handling and no querying: rows come from the pipeline, SQL goes through
//! `annotation-sql`.

mod catalog;
mod decode;
mod encode;
mod error;
mod journal;
mod maintain;
mod object_encode;
mod object_row;
mod row;
mod spec;
pub mod state;

pub use catalog::{CatalogConfig, StorageConfig, connect};
pub use decode::{DecodeError, decode_rows};
pub use encode::{encode_rows, encode_sorted};
pub use error::TableError;
/// The catalog handle [`connect`] returns (iceberg's trait, re-exported so callers need not
/// depend on `iceberg` to hold one).
pub use iceberg::Catalog;
pub use journal::{
    Batch, BatchId, CommitReport, JournalTable, Retry, RetryPolicy, SUMMARY_BATCH_ID,
    SUMMARY_WRITER, TableRow,
};
pub use maintain::{
    CompactionReport, ExpiryReport, MaintainOptions, MaintainReport, Maintainer, OrphanReport,
    SUMMARY_MAINTENANCE, TableStats, changes_rows,
};
/// The identifier of `namespace.table` (`None` if the namespace is not a valid identifier).
pub fn table_ident(namespace: &str, table: &str) -> Option<iceberg::TableIdent> {
    let ns = iceberg::NamespaceIdent::from_strs(namespace.split('.')).ok()?;
    Some(iceberg::TableIdent::new(ns, table.to_string()))
}
pub use object_row::{ObjectRecordType, ObjectRow};
pub use row::{JournalRow, RecordType, Source};
pub use spec::{JournalSpec, journal_spec, object_journal_spec, state_spec, tombstones_spec};
