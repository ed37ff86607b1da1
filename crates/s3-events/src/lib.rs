//! Pure parsing of S3 bucket notification messages into typed changes.
//!
//! This crate owns one thing: turning the body of an SQS message that S3 (directly, through
//! SNS, or through EventBridge) delivered into [`Notification`], a list of [`Event`]s each naming the object version it
//! concerns and the [`Action`] the indexing pipeline must take (docs/correctness.md §2). It does no I/O,
//! holds no state and never panics on any input: everything it cannot understand is a
//! [`ParseError`] that says what is wrong and where, which the consumer routes to the dead-letter
//! path.
//!
//! What it accepts (leniently, because AWS's and the emulators' shapes differ, see the README's notes on AWS and the emulator):
//! - raw S3 bodies `{"Records":[...]}` and SNS envelopes whose `Message` string holds one;
//! - EventBridge events from `aws.s3` (`detail-type`, `detail`), directly or in an SNS
//!   envelope: each becomes one event that re-reads the object version (see `eventbridge.rs`);
//! - `s3:TestEvent` (flat object, no `Records`), which needs no action;
//! - several records per message; `eventVersion` with major version 2 and any minor version;
//! - event names with or without the `s3:` prefix;
//! - object keys in form-URL encoding (`+` is a space; `%2F` and `/` both mean `/`);
//! - optional `versionId` (`"null"` and empty mean the null version), `sequencer`, `size`, `eTag`;
//! - annotation details in a record-level `objectAnnotation` array, in an `s3.annotation` object
//!   (or array), or absent (then the pipeline re-lists the object version).
//!
//! Unknown fields are ignored everywhere.

mod error;
mod event;
mod eventbridge;
mod fields;
mod key;
mod parse;
mod sequencer;

pub use error::ParseError;
pub use event::{
    Action, AnnotationRef, Event, EventContext, EventKind, IgnoreReason, Notification, ObjectRef,
    ResetCause, TestEvent,
};
pub use key::decode_key;
pub use parse::parse_message;
pub use sequencer::Sequencer;
