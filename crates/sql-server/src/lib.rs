//! `annotable sql-server`: the PostgreSQL wire protocol over annotable's read-only SQL.
//!
//! psql, drivers (psycopg, node-postgres, JDBC) and BI tools connect here and query what
//! `annotable query` queries: the journal, the views and `annotations` (the state table with
//! the journal's newest rows folded in), each statement on the tables' latest snapshots.
//!
//! The protocol is pgwire's, the Arrow-to-PostgreSQL encoding arrow-pg's and `pg_catalog`
//! datafusion-pg-catalog's, all through datafusion-postgres; this crate decides what runs and
//! under which limits:
//! - `server`: binds (loopback unless a password is set), accepts, caps connections, stops on
//!   an injected shutdown;
//! - `connection`: one connection's SQL session and protocol handlers;
//! - `statement`: one statement, read-only, planned on the latest snapshots, run under the
//!   statement timeout, the memory limit and the server-wide cap on running statements;
//! - `auth` (SCRAM-SHA-256) and `tls`;
//! - `options` and `error`.

mod auth;
mod connection;
mod error;
mod options;
mod server;
mod statement;
mod tls;

pub use error::ServerError;
pub use options::{Credentials, Limits, ServerOptions, Tables, TlsFiles};
pub use server::SqlServer;
