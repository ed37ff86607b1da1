//! The one test-support crate of annotable's tests (end-to-end, contract and table tests):
//!
//! - [`stack`]: a private emulator per test (from `local-stack`), SDK clients, buckets and
//!   queues, the notifications S3 delivers, the captured fixtures under `tests/fixtures/`;
//! - [`env`]: the CLI runner: the real `annotable` binary as a child process against that
//!   emulator, and the view side of the convergence check;
//! - [`truth`]: S3 read back independently, every column, and the convergence assertion;
//! - [`workload`]: a seeded random workload of writes, deletes and copies;
//! - [`net`]: fault injection (S3 error proxy, a TCP forwarder that can be cut) and ports.
//!
//! Each test starts its own emulator, so resource names never collide. This package's own test
//! binary (`integration`) holds the contract and table tests; the end-to-end tests of the
//! binary live in `crates/annotable/tests/e2e`.

// Test support, not an API: the module docs say what each part is for; the fields and
// helpers are named for what they hold and do.
#![allow(missing_docs)]

pub mod env;
pub mod net;
pub mod objects_truth;
pub mod stack;
pub mod truth;
pub mod workload;

pub use env::{Env, PLAIN, Serve, VERSIONED, annotable_bin};
pub use net::{FaultProxy, Refuse, S3TablesCasProxy, TcpSwitch, free_port, http_get};
pub use objects_truth::{
    ObjectRow, assert_object_examples_answer, assert_objects_converged, objects_by_pyiceberg,
};
pub use stack::{LocalStack, Queue, Stack, fixtures_dir, py_tools_python, save_fixture};
pub use truth::{Row, assert_converged, join_key, read_version};
pub use workload::{KEYS, Workload};

/// What a test returns.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;
