//! SQL over the annotation journal.
//!
//! This crate owns the query side: a read-only DataFusion session on an Iceberg catalog
//! ([`QuerySession`]) in which new tables and new snapshots are visible to the next query,
//! the views of `queries/views/*.sql` (embedded at build time), the SQL name `annotations` (the
//! AWS-compatible current state: the state table with the journal's newest rows folded in,
//! see `state`), the JSON functions of `datafusion-functions-json` over
//! `text_value` (`json_get_str`, `json_get_int`, `json_contains`, `->`, `->>`, ...), and the
//! output formats of `annotable query` ([`OutputFormat`]).
//!
//! It writes nothing to the catalog: rows are written by `annotation-table`.

mod error;
mod format;
mod local_scan;
mod metadata_tables;
mod provider;
mod scan;
mod schema;
mod session;
mod state;
mod time_travel;

pub use error::SqlError;
pub use format::{OutputFormat, ResultWriter, Written, write_result};
pub use session::{
    CATALOG_NAME, QueryResult, QuerySession, SessionOptions, TravelTarget, view_definitions,
};
pub use state::{AnnotationsSource, MAX_UNFOLDED_ROWS, StateComparison};
pub use time_travel::TimeTravel;
