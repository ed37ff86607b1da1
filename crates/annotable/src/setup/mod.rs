//! `annotable setup notifications`: point a bucket's notifications at the queue.
//!
//! Merges, never clobbers: the bucket's other topic, queue, Lambda and EventBridge
//! configurations are written back as they were; a queue configuration for this queue with the
//! same prefix is replaced only if its events differ. The queue policy gets a statement letting
//! the bucket send, if no statement allows it yet. Running it twice changes nothing the second
//! time.

use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};

/// The events annotable needs. Lifecycle expirations arrive only under their own name (never
/// as `ObjectRemoved`), and they remove versions and their annotations like a DELETE does.
pub const EVENTS: [&str; 4] = [
    "s3:ObjectAnnotation:*",
    "s3:ObjectCreated:*",
    "s3:ObjectRemoved:*",
    "s3:LifecycleExpiration:*",
];

/// The events of [`EVENTS`] that `configured` (the event names of every configuration sending
/// to the queue) does not cover. A family is covered by its wildcard or, where the family has
/// a known closed set of subtypes, by all of them.
pub fn missing_events<'a>(
    configured: impl IntoIterator<Item = &'a str> + Clone,
) -> Vec<&'static str> {
    let covers = |family: &str, subtypes: &[&str]| {
        let has = |e: &str| configured.clone().into_iter().any(|c| c == e);
        has(&format!("s3:{family}:*"))
            || (!subtypes.is_empty() && subtypes.iter().all(|t| has(&format!("s3:{family}:{t}"))))
    };
    let families: [(&str, &[&str], &'static str); 4] = [
        ("ObjectAnnotation", &["Put", "Delete"], EVENTS[0]),
        // New creation subtypes appear over time: only the wildcard is safe.
        ("ObjectCreated", &[], EVENTS[1]),
        (
            "ObjectRemoved",
            &["Delete", "DeleteMarkerCreated"],
            EVENTS[2],
        ),
        (
            "LifecycleExpiration",
            &["Delete", "DeleteMarkerCreated"],
            EVENTS[3],
        ),
    ];
    families
        .into_iter()
        .filter(|(family, subtypes, _)| !covers(family, subtypes))
        .map(|(_, _, wanted)| wanted)
        .collect()
}

/// What `setup notifications` does.
#[derive(Debug, Clone)]
pub struct SetupRequest {
    /// The bucket.
    pub bucket: String,
    /// The queue URL.
    pub queue_url: String,
    /// Only keys under this prefix.
    pub prefix: Option<String>,
    /// The account that must own the bucket (`aws.expected_bucket_owner`): sent with every
    /// bucket call, and pinned as `aws:SourceAccount` in the queue policy statement.
    pub expected_bucket_owner: Option<String>,
}

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An AWS call failed.
    #[error("{what} failed: {message}; {hint}")]
    Aws {
        /// The call and resource.
        what: String,
        /// The error.
        message: String,
        /// What to do.
        hint: &'static str,
    },
}

/// What setup changed, one line each (empty: nothing to do).
pub async fn notifications(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    request: &SetupRequest,
) -> Result<Vec<String>, SetupError> {
    let mut changes = Vec::new();
    let bucket = &request.bucket;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&request.queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .map_err(|e| SetupError::Aws {
            what: format!("GetQueueAttributes on {}", request.queue_url),
            message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
            hint: "check the queue URL and sqs:GetQueueAttributes permission",
        })?;
    let attributes = attrs.attributes().cloned().unwrap_or_default();
    let queue_arn = attributes
        .get(&QueueAttributeName::QueueArn)
        .cloned()
        .unwrap_or_default();
    let bucket_arn = format!("arn:aws:s3:::{bucket}");

    // 1. The queue policy.
    let policy = attributes.get(&QueueAttributeName::Policy).cloned();
    if let Some(new_policy) = policy_with_bucket(
        policy.as_deref(),
        &queue_arn,
        &bucket_arn,
        request.expected_bucket_owner.as_deref(),
    ) {
        sqs.set_queue_attributes()
            .queue_url(&request.queue_url)
            .attributes(QueueAttributeName::Policy, new_policy)
            .send()
            .await
            .map_err(|e| SetupError::Aws {
                what: format!("SetQueueAttributes(Policy) on {}", request.queue_url),
                message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                hint: "grant sqs:SetQueueAttributes, or add a statement allowing s3.amazonaws.com to sqs:SendMessage with aws:SourceArn = the bucket ARN yourself",
            })?;
        changes.push(format!(
            "queue policy of {}: added a statement allowing {bucket_arn} to send (sqs:SendMessage from s3.amazonaws.com)",
            request.queue_url
        ));
    }

    // 2. The bucket's notification configuration.
    let current = s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .set_expected_bucket_owner(request.expected_bucket_owner.clone())
        .send()
        .await
        .map_err(|e| SetupError::Aws {
            what: format!("GetBucketNotificationConfiguration on bucket {bucket}"),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            hint: "check the bucket name and s3:GetBucketNotification permission",
        })?;
    let wanted: Vec<Event> = EVENTS.iter().map(|e| Event::from(*e)).collect();
    let prefix = request.prefix.clone().unwrap_or_default();
    let mut queues: Vec<QueueConfiguration> = Vec::new();
    let mut present = false;
    for q in current.queue_configurations() {
        if q.queue_arn() == queue_arn && filter_prefix(q) == prefix {
            let has_all = wanted.iter().all(|w| q.events().contains(w));
            if has_all {
                present = true;
                queues.push(q.clone());
            }
            // Otherwise dropped and replaced below.
        } else {
            queues.push(q.clone());
        }
    }
    if present {
        return Ok(changes);
    }
    let mut builder = QueueConfiguration::builder()
        .id(format!(
            "annotable-{}",
            short_hash(&format!("{queue_arn}{prefix}"))
        ))
        .queue_arn(&queue_arn)
        .set_events(Some(wanted));
    if !prefix.is_empty() {
        let rule = FilterRule::builder()
            .name(FilterRuleName::Prefix)
            .value(&prefix)
            .build();
        builder = builder.filter(
            NotificationConfigurationFilter::builder()
                .key(S3KeyFilter::builder().filter_rules(rule).build())
                .build(),
        );
    }
    let added = builder.build().map_err(|e| SetupError::Aws {
        what: "building the queue configuration".into(),
        message: e.to_string(),
        hint: "this is a bug; please report it",
    })?;
    queues.push(added);
    let config = NotificationConfiguration::builder()
        .set_topic_configurations(Some(current.topic_configurations().to_vec()))
        .set_queue_configurations(Some(queues))
        .set_lambda_function_configurations(Some(current.lambda_function_configurations().to_vec()))
        .set_event_bridge_configuration(current.event_bridge_configuration().cloned())
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .set_expected_bucket_owner(request.expected_bucket_owner.clone())
        .notification_configuration(config)
        .send()
        .await
        .map_err(|e| SetupError::Aws {
            what: format!("PutBucketNotificationConfiguration on bucket {bucket}"),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            hint: "check s3:PutBucketNotification permission; S3 refuses configurations whose prefixes and events overlap another one",
        })?;
    changes.push(format!(
        "bucket {bucket}: notifications {} for keys under {:?} now go to {queue_arn}",
        EVENTS.join(", "),
        prefix
    ));
    Ok(changes)
}

fn filter_prefix(q: &QueueConfiguration) -> String {
    q.filter()
        .and_then(|f| f.key())
        .map(|k| k.filter_rules())
        .unwrap_or_default()
        .iter()
        .find(|r| r.name() == Some(&FilterRuleName::Prefix))
        .and_then(|r| r.value())
        .unwrap_or("")
        .to_string()
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy with a statement letting `bucket_arn` send to the queue, or `None` when some
/// statement already allows it. With `source_account`, the statement also pins
/// `aws:SourceAccount` (bucket names are global: a bucket of the same name in another account,
/// after this one is deleted, could otherwise send to the queue).
pub fn policy_with_bucket(
    policy: Option<&str>,
    queue_arn: &str,
    bucket_arn: &str,
    source_account: Option<&str>,
) -> Option<String> {
    let mut doc: Value = policy
        .filter(|p| !p.trim().is_empty())
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({"Version": "2012-10-17", "Statement": []}));
    let statements = match doc.get("Statement") {
        Some(Value::Array(s)) => s.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    if statements.iter().any(|s| allows(s, bucket_arn)) {
        return None;
    }
    let mut statements = statements;
    let mut condition = json!({"ArnLike": {"aws:SourceArn": bucket_arn}});
    if let Some(account) = source_account {
        condition["StringEquals"] = json!({"aws:SourceAccount": account});
    }
    statements.push(json!({
        "Sid": format!("annotable-{}", short_hash(bucket_arn)),
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": condition
    }));
    doc["Statement"] = Value::Array(statements);
    Some(doc.to_string())
}

fn allows(statement: &Value, bucket_arn: &str) -> bool {
    let as_list = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
        return false;
    }
    let actions = as_list(statement.get("Action"));
    if !actions
        .iter()
        .any(|a| a == "*" || a == "sqs:*" || a.eq_ignore_ascii_case("sqs:SendMessage"))
    {
        return false;
    }
    let principal_ok = match statement.get("Principal") {
        Some(Value::String(s)) => s == "*",
        Some(p) => {
            as_list(p.get("Service"))
                .iter()
                .any(|s| s == "s3.amazonaws.com")
                || as_list(p.get("AWS")).iter().any(|s| s == "*")
        }
        None => false,
    };
    if !principal_ok {
        return false;
    }
    match statement.get("Condition") {
        None => true,
        Some(cond) => {
            let arns: Vec<String> = ["ArnLike", "ArnEquals", "StringEquals", "StringLike"]
                .iter()
                .flat_map(|op| as_list(cond.get(*op).and_then(|c| c.get("aws:SourceArn"))))
                .collect();
            arns.iter().any(|a| glob_match(a, bucket_arn))
        }
    }
}

fn glob_match(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            s.starts_with(head) && (tail.is_empty() || glob_match_tail(tail, &s[head.len()..]))
        }
    }
}

fn glob_match_tail(pattern: &str, s: &str) -> bool {
    (0..=s.len()).any(|i| s.is_char_boundary(i) && glob_match(pattern, &s[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_statement_is_added_once() {
        let q = "arn:aws:sqs:us-east-1:1:q";
        let b = "arn:aws:s3:::bucket";
        let added = policy_with_bucket(None, q, b, None);
        let Some(added) = added else {
            panic!("a statement should be added")
        };
        assert_eq!(policy_with_bucket(Some(&added), q, b, None), None);
        // Another bucket still needs its own.
        assert!(policy_with_bucket(Some(&added), q, "arn:aws:s3:::other", None).is_some());
        // With the expected owner, the statement pins the source account too.
        let pinned = policy_with_bucket(None, q, b, Some("111122223333")).unwrap_or_default();
        let doc: Value = serde_json::from_str(&pinned).unwrap_or_default();
        assert_eq!(
            doc["Statement"][0]["Condition"]["StringEquals"]["aws:SourceAccount"],
            "111122223333"
        );
        assert_eq!(
            doc["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"],
            b
        );
        // A wildcard condition covers it.
        let wildcard = r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":["sqs:SendMessage"],"Condition":{"ArnLike":{"aws:SourceArn":"arn:aws:s3:::buck*"}}}]}"#;
        assert_eq!(policy_with_bucket(Some(wildcard), q, b, None), None);
        // A Deny does not.
        let deny = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"sqs:*"}]}"#;
        assert!(policy_with_bucket(Some(deny), q, b, None).is_some());
    }

    #[test]
    fn missing_events_names_each_uncovered_family() {
        assert!(missing_events(EVENTS).is_empty());
        // The configuration `setup` wrote before lifecycle expirations were subscribed.
        assert_eq!(
            missing_events(EVENTS[..3].iter().copied()),
            vec!["s3:LifecycleExpiration:*"]
        );
        let specific = [
            "s3:ObjectAnnotation:Put",
            "s3:ObjectAnnotation:Delete",
            "s3:ObjectCreated:*",
            "s3:ObjectRemoved:Delete",
            "s3:LifecycleExpiration:Delete",
            "s3:LifecycleExpiration:DeleteMarkerCreated",
        ];
        assert_eq!(missing_events(specific), vec!["s3:ObjectRemoved:*"]);
        assert_eq!(
            missing_events(["s3:ObjectCreated:Put"]),
            EVENTS.to_vec(),
            "one creation subtype does not cover the family"
        );
    }
}
