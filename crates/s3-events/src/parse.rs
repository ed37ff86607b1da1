//! Message body → [`Notification`].

use serde_json::{Map, Value};

use crate::event::{
    Action, AnnotationRef, Event, EventContext, EventKind, IgnoreReason, Notification, ObjectRef,
    ResetCause, TestEvent,
};
use crate::fields::{Fields, json_type, parse_time, strip_quotes};
use crate::{ParseError, Sequencer, decode_key};

/// Parses one SQS message body (raw S3 notification, SNS envelope, EventBridge event, or
/// `s3:TestEvent`).
///
/// Never panics; every failure is a [`ParseError`] naming the record and field at fault.
pub fn parse_message(body: &[u8]) -> Result<Notification, ParseError> {
    let text = std::str::from_utf8(body).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let value = parse_json(text, "message body")?;
    parse_value(&value, true)
}

fn parse_json(text: &str, what: &'static str) -> Result<Value, ParseError> {
    serde_json::from_str(text).map_err(|e| ParseError::NotJson {
        what,
        detail: e.to_string(),
    })
}

fn parse_value(value: &Value, allow_envelope: bool) -> Result<Notification, ParseError> {
    let Value::Object(top) = value else {
        return Err(ParseError::NotS3Notification {
            detail: format!("top-level JSON is {}, expected an object", json_type(value)),
        });
    };
    if let Some(records) = top.get("Records") {
        return parse_records(records);
    }
    if top.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification::Test(TestEvent {
            bucket: opt_str(top, "Bucket"),
            time: opt_str(top, "Time"),
            request_id: opt_str(top, "RequestId"),
        }));
    }
    if crate::eventbridge::is_eventbridge(top) {
        return crate::eventbridge::parse(top);
    }
    if allow_envelope && let Some(inner) = sns_message(top) {
        let inner = parse_json(inner, "SNS Message field")?;
        return parse_value(&inner, false);
    }
    let detail = if !allow_envelope {
        "the SNS Message holds neither Records nor an s3:TestEvent".to_string()
    } else {
        let mut keys: Vec<&str> = top.keys().map(String::as_str).take(8).collect();
        keys.sort_unstable();
        format!("no Records array, no s3:TestEvent, no SNS Message (top-level keys: {keys:?})")
    };
    Err(ParseError::NotS3Notification { detail })
}

/// The `Message` string of an SNS envelope (`Type: Notification`, or a `TopicArn` beside it).
fn sns_message(top: &Map<String, Value>) -> Option<&str> {
    let message = top.get("Message")?.as_str()?;
    let is_sns = top.get("Type").and_then(Value::as_str) == Some("Notification")
        || top.contains_key("TopicArn");
    is_sns.then_some(message)
}

/// Every record on its own: a message whose records all fail is an error (the first record's),
/// one with some good records is [`Notification::Partial`].
fn parse_records(records: &Value) -> Result<Notification, ParseError> {
    let Value::Array(records) = records else {
        return Err(ParseError::NotS3Notification {
            detail: format!("Records is {}, expected an array", json_type(records)),
        });
    };
    if records.is_empty() {
        return Err(ParseError::EmptyRecords);
    }
    let mut events = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let mut record_events = Vec::new();
        match (RecordParser {
            index,
            record,
            f: Fields { index },
        })
        .parse_into(&mut record_events)
        {
            Ok(()) => events.extend(record_events),
            Err(e) => rejected.push(e),
        }
    }
    match (events.is_empty(), rejected.is_empty()) {
        (_, true) => Ok(Notification::Events(events)),
        (true, false) => Err(rejected.swap_remove(0)),
        (false, false) => Ok(Notification::Partial { events, rejected }),
    }
}

struct RecordParser<'a> {
    index: usize,
    record: &'a Value,
    f: Fields,
}

impl<'a> RecordParser<'a> {
    fn parse_into(&self, out: &mut Vec<Event>) -> Result<(), ParseError> {
        let Value::Object(record) = self.record else {
            return Err(self
                .f
                .invalid("Records[]", format!("is {}", json_type(self.record))));
        };
        let event_version = self
            .f
            .required_str(record.get("eventVersion"), "eventVersion")?;
        self.check_version(event_version)?;
        if let Some(source) = self
            .f
            .optional_str(record.get("eventSource"), "eventSource")?
            && source != "aws:s3"
        {
            return Err(ParseError::NotS3Source {
                record: self.index,
                source_name: source.to_string(),
            });
        }
        let raw_name = self.f.required_str(record.get("eventName"), "eventName")?;
        let event_name = raw_name.strip_prefix("s3:").unwrap_or(raw_name);

        let s3 = self.f.required_object(record.get("s3"), "s3")?;
        let bucket = self.f.required_object(s3.get("bucket"), "s3.bucket")?;
        let bucket_name = self.f.required_str(bucket.get("name"), "s3.bucket.name")?;
        if bucket_name.is_empty() {
            return Err(self.f.invalid("s3.bucket.name", "is empty".into()));
        }
        let object = self.f.required_object(s3.get("object"), "s3.object")?;
        let raw_key = self.f.required_str(object.get("key"), "s3.object.key")?;
        let key = decode_key(raw_key).ok_or_else(|| {
            self.f.invalid(
                "s3.object.key",
                format!("{raw_key:?} does not decode to UTF-8"),
            )
        })?;
        if key.is_empty() {
            return Err(self.f.invalid("s3.object.key", "is empty".into()));
        }
        let version_id = self
            .f
            .optional_str(object.get("versionId"), "s3.object.versionId")?
            .filter(|v| !v.is_empty())
            .map(str::to_string);

        // Neither field decides what is written (rows are ordered by observation), so an odd
        // value is dropped rather than failing the record.
        let sequencer = self
            .f
            .lenient_str(object.get("sequencer"))
            .and_then(|raw| Sequencer::parse(&raw));
        let event_time = self
            .f
            .lenient_str(record.get("eventTime"))
            .and_then(|raw| parse_time(&raw));
        let has_object_annotation = match object.get("hasObjectAnnotation") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(self.f.invalid(
                    "s3.object.hasObjectAnnotation",
                    format!("is {}, expected a boolean", json_type(other)),
                ));
            }
        };

        let context = EventContext {
            event_name: event_name.to_string(),
            event_version: event_version.to_string(),
            event_time,
            region: self.f.lenient_str(record.get("awsRegion")),
            sequencer,
            object_size: self.f.optional_u64(object.get("size"), "s3.object.size")?,
            object_e_tag: self.f.lenient_str(object.get("eTag")).map(strip_quotes),
            has_object_annotation,
            requester: self
                .f
                .lenient_str(path(record, &["userIdentity", "principalId"])),
            source_ip_address: self
                .f
                .lenient_str(path(record, &["requestParameters", "sourceIPAddress"])),
            request_id: self
                .f
                .lenient_str(path(record, &["responseElements", "x-amz-request-id"])),
            configuration_id: self.f.lenient_str(s3.get("configurationId")),
        };
        let object = ObjectRef {
            bucket: bucket_name.to_string(),
            key,
            version_id,
        };

        let kind = classify(event_name);
        let annotations = self.annotations(record, s3)?;
        let mut push_for = |object: &ObjectRef, action: Action| {
            out.push(Event {
                object: object.clone(),
                kind: kind.clone(),
                action,
                context: context.clone(),
            })
        };
        let mut push = |action: Action| push_for(&object, action);
        match &kind {
            EventKind::AnnotationPut | EventKind::AnnotationDelete if !annotations.is_empty() => {
                let put = kind == EventKind::AnnotationPut;
                for annotation in annotations {
                    push(if put {
                        Action::FetchAnnotation(annotation)
                    } else {
                        Action::DeleteAnnotation(annotation)
                    });
                }
            }
            EventKind::AnnotationPut
            | EventKind::AnnotationDelete
            | EventKind::AnnotationOther(_) => push(Action::Reset {
                cause: ResetCause::AnnotationsChanged,
                relist: true,
            }),
            EventKind::ObjectCreated(how) => {
                // New content replaces the version's annotations. Only a copy (directive COPY
                // is the default) can bring annotations along; trust the flag when present.
                let relist = has_object_annotation.unwrap_or(how == "Copy");
                push(Action::Reset {
                    cause: ResetCause::ObjectCreated,
                    relist,
                })
            }
            EventKind::ObjectRemoved => push(Action::Reset {
                cause: ResetCause::ObjectRemoved,
                relist: false,
            }),
            EventKind::DeleteMarkerCreated => {
                // The marker's own version id says nothing about the null version it may have
                // replaced: re-read that one.
                let null_version = ObjectRef {
                    version_id: Some("null".to_string()),
                    ..object.clone()
                };
                push_for(
                    &null_version,
                    Action::Reset {
                        cause: ResetCause::NullVersionReplaced,
                        relist: true,
                    },
                )
            }
            EventKind::Other(name) => push(Action::Ignore(IgnoreReason::Unrelated(name.clone()))),
        }
        Ok(())
    }

    /// Annotation details: a record-level `objectAnnotation` array (the emulator's shape), or an
    /// `s3.annotation` object or array (the other plausible AWS shape). Either may be absent.
    fn annotations(
        &self,
        record: &Map<String, Value>,
        s3: &Map<String, Value>,
    ) -> Result<Vec<AnnotationRef>, ParseError> {
        let (field, value) = match (record.get("objectAnnotation"), s3.get("annotation")) {
            (Some(v), _) if !v.is_null() => ("objectAnnotation", v),
            (_, Some(v)) if !v.is_null() => ("s3.annotation", v),
            _ => return Ok(Vec::new()),
        };
        let entries: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            Value::Object(_) => vec![value],
            other => {
                return Err(self.f.invalid(
                    field,
                    format!("is {}, expected an object or array", json_type(other)),
                ));
            }
        };
        entries
            .into_iter()
            .map(|entry| {
                let Value::Object(entry) = entry else {
                    return Err(self
                        .f
                        .invalid(field, format!("has a {} entry", json_type(entry))));
                };
                let name = self.f.required_str(entry.get("name"), field)?;
                if name.is_empty() {
                    return Err(self.f.invalid(field, "names an empty annotation".into()));
                }
                Ok(AnnotationRef {
                    name: name.to_string(),
                    size: self.f.optional_u64(entry.get("size"), field)?,
                    e_tag: self.f.lenient_str(entry.get("eTag")).map(strip_quotes),
                })
            })
            .collect()
    }

    fn check_version(&self, version: &str) -> Result<(), ParseError> {
        let mut parts = version.splitn(2, '.');
        let major = parts.next().unwrap_or_default();
        let minor_ok = parts
            .next()
            .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
        if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) || !minor_ok {
            return Err(self
                .f
                .invalid("eventVersion", format!("{version:?} is not MAJOR.MINOR")));
        }
        if major.trim_start_matches('0') != "2" {
            return Err(ParseError::UnsupportedEventVersion {
                record: self.index,
                version: version.to_string(),
            });
        }
        Ok(())
    }
}

fn classify(event_name: &str) -> EventKind {
    let (family, action) = event_name.split_once(':').unwrap_or((event_name, ""));
    match (family, action) {
        ("ObjectAnnotation", "Put") => EventKind::AnnotationPut,
        ("ObjectAnnotation", "Delete") => EventKind::AnnotationDelete,
        ("ObjectAnnotation", other) => EventKind::AnnotationOther(other.to_string()),
        ("ObjectCreated", how) => EventKind::ObjectCreated(how.to_string()),
        ("ObjectRemoved" | "LifecycleExpiration", "Delete") => EventKind::ObjectRemoved,
        ("ObjectRemoved" | "LifecycleExpiration", "DeleteMarkerCreated") => {
            EventKind::DeleteMarkerCreated
        }
        _ => EventKind::Other(event_name.to_string()),
    }
}

fn path<'v>(map: &'v Map<String, Value>, keys: &[&str]) -> Option<&'v Value> {
    let (first, rest) = keys.split_first()?;
    rest.iter()
        .try_fold(map.get(*first)?, |value, key| value.as_object()?.get(*key))
}

fn opt_str(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_string)
}
