//! Reading the fields of a JSON event: required and optional values with the record and the
//! field named in every error, and the lenient readers for informational strings. Shared by
//! the notification records (`parse.rs`) and EventBridge events (`eventbridge.rs`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::ParseError;

/// The field readers of one record (`index` in `Records`; 0 for an EventBridge event).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// The record's index, named in every error.
    pub index: usize,
}

impl Fields {
    pub(crate) fn invalid(&self, field: &'static str, detail: String) -> ParseError {
        ParseError::InvalidField {
            record: self.index,
            field,
            detail,
        }
    }

    pub(crate) fn required_object<'v>(
        &self,
        value: Option<&'v Value>,
        field: &'static str,
    ) -> Result<&'v Map<String, Value>, ParseError> {
        match value {
            Some(Value::Object(map)) => Ok(map),
            None | Some(Value::Null) => Err(ParseError::MissingField {
                record: self.index,
                field,
            }),
            Some(other) => Err(self.invalid(
                field,
                format!("is {}, expected an object", json_type(other)),
            )),
        }
    }

    pub(crate) fn required_str<'v>(
        &self,
        value: Option<&'v Value>,
        field: &'static str,
    ) -> Result<&'v str, ParseError> {
        self.optional_str(value, field)?
            .ok_or(ParseError::MissingField {
                record: self.index,
                field,
            })
    }

    pub(crate) fn optional_str<'v>(
        &self,
        value: Option<&'v Value>,
        field: &'static str,
    ) -> Result<Option<&'v str>, ParseError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(self.invalid(field, format!("is {}, expected a string", json_type(other))))
            }
        }
    }

    pub(crate) fn optional_u64(
        &self,
        value: Option<&Value>,
        field: &'static str,
    ) -> Result<Option<u64>, ParseError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("{n} is not a non-negative integer"))),
            // Some producers quote numbers; accept a decimal string.
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| self.invalid(field, format!("{s:?} is not a non-negative integer"))),
            Some(other) => {
                Err(self.invalid(field, format!("is {}, expected a number", json_type(other))))
            }
        }
    }

    /// Informational strings (identity, request ids): kept when they are non-empty strings,
    /// ignored otherwise, never an error.
    pub(crate) fn lenient_str(&self, value: Option<&Value>) -> Option<String> {
        value
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
}

pub(crate) fn strip_quotes(s: String) -> String {
    match s.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.to_string(),
        None => s,
    }
}

pub(crate) fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
