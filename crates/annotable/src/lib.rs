//! The `annotable` command: configuration, and one `run` function per subcommand.
//!
//! Library-first (README.md, Architecture): every command is a function here taking its configuration
//! (and, for long-running ones, a shutdown signal); `main.rs` only parses arguments, sets up
//! logging and reports errors. This crate is the only place `anyhow` is used: in `main`.

pub mod aws;
pub mod backfill;
pub mod batcher;
pub mod config;
pub mod doctor;
pub mod lease;
pub mod maintain;
pub mod object_rows;
pub mod query;
pub mod rows;
pub mod serve;
pub mod set_reader;
pub mod setup;
pub mod shell;
pub mod sql_server;
pub mod state;
pub mod suppression;
