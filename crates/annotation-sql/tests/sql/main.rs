//! The SQL layer on real Iceberg tables: the `annotations` view's rules, every example query in
//! `queries/`, and the session (read-only, formats). One test binary: each links DataFusion.

mod common;
mod examples;
mod session;
mod time_travel;
mod views;
