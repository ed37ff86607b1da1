//! End-to-end tests of the `annotable` binary against the local AWS emulator and real
//! catalogs, in one test binary (each links DataFusion, iceberg and the AWS SDK): `serve`
//! and `backfill` converging with S3 under faults, kills and concurrent writes; `query` and
//! `maintain` through the CLI. The harness is the `annotable-tests` crate.

mod backfill;
mod catalogs;
mod delivery;
mod maintain;
mod operations;
mod query;
mod serve;
mod shell;
mod sql_server;
