//! The one error type of the crate.

/// Why a message body could not be turned into events.
///
/// Every variant is permanent: the same bytes will fail the same way, so the consumer must not
/// retry them but route the message to its dead-letter path, logging [`ParseError::kind`] and the
/// message (which names the record and field at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is not valid UTF-8.
    #[error("message body is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The body (or the SNS `Message` inside it) is not JSON.
    #[error("{what} is not valid JSON: {detail}")]
    NotJson {
        /// `message body` or `SNS Message field`.
        what: &'static str,
        /// serde_json's description, with line and column.
        detail: String,
    },
    /// The JSON is valid but is neither an S3 notification, an S3 test event, nor an SNS
    /// envelope carrying one.
    #[error("not an S3 event notification: {detail}")]
    NotS3Notification {
        /// What was found instead.
        detail: String,
    },
    /// `Records` is present but empty: S3 never sends that.
    #[error("S3 notification has an empty Records array")]
    EmptyRecords,
    /// A required field is missing.
    #[error("record {record}: missing field `{field}`")]
    MissingField {
        /// Index of the record in `Records`.
        record: usize,
        /// JSON path of the field inside the record.
        field: &'static str,
    },
    /// A field has the wrong JSON type or an invalid value.
    #[error("record {record}: field `{field}` is invalid: {detail}")]
    InvalidField {
        /// Index of the record in `Records`.
        record: usize,
        /// JSON path of the field inside the record.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The record's `eventVersion` has a major version this parser does not know.
    #[error(
        "record {record}: unsupported eventVersion {version:?} (this version of annotable reads 2.x)"
    )]
    UnsupportedEventVersion {
        /// Index of the record in `Records`.
        record: usize,
        /// The version string as received.
        version: String,
    },
    /// The record comes from another service (`eventSource` is not `aws:s3`).
    #[error("record {record}: eventSource is {source_name:?}, expected \"aws:s3\"")]
    NotS3Source {
        /// Index of the record in `Records`.
        record: usize,
        /// The source as received.
        source_name: String,
    },
}

impl ParseError {
    /// A short, stable name for the error class, for log fields and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::NotUtf8 { .. } => "not_utf8",
            ParseError::NotJson { .. } => "not_json",
            ParseError::NotS3Notification { .. } => "not_s3_notification",
            ParseError::EmptyRecords => "empty_records",
            ParseError::MissingField { .. } => "missing_field",
            ParseError::InvalidField { .. } => "invalid_field",
            ParseError::UnsupportedEventVersion { .. } => "unsupported_event_version",
            ParseError::NotS3Source { .. } => "not_s3_source",
        }
    }

    /// Parse errors never go away on retry.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
