//! The contract tests (what the emulator and S3 promise) and the table tests (the journal on
//! real catalogs and storage) in one test binary: every test binary links DataFusion, iceberg
//! and the AWS SDK, so one link replaces six.

mod contract {
    mod annotations;
    mod key_versions;
    mod notifications;
    mod sqs;
}

mod table {
    mod common;
    mod interop;
    mod maintain;
    mod state;
    mod storage;
}
