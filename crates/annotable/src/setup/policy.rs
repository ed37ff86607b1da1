//! Resource policies that let one AWS service deliver to the next hop: S3 → queue, S3 → topic,
//! topic → queue, EventBridge rule → queue. A statement is added only when no statement allows
//! the delivery yet, so setup stays idempotent and never rewrites what a user wrote.

use serde_json::{Value, json};

/// One delivery to allow: `service` may call `action` on the resource when the request comes
/// from `source_arn` (and, when set, from `source_account`).
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The service principal, e.g. `s3.amazonaws.com`.
    pub service: &'a str,
    /// The action, e.g. `sqs:SendMessage`.
    pub action: &'a str,
    /// The ARN the delivery comes from (`aws:SourceArn`).
    pub source_arn: &'a str,
    /// The account that must own the source (`aws:SourceAccount`); bucket names are global,
    /// so a bucket of the same name in another account could otherwise deliver.
    pub source_account: Option<&'a str>,
}

/// The policy with a statement allowing `grant` on `resource_arn`, or `None` when some statement
/// already allows it.
pub fn policy_with(policy: Option<&str>, resource_arn: &str, grant: Grant<'_>) -> Option<String> {
    let mut doc: Value = policy
        .filter(|p| !p.trim().is_empty())
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({"Version": "2012-10-17", "Statement": []}));
    let mut statements = match doc.get("Statement") {
        Some(Value::Array(s)) => s.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    if statements.iter().any(|s| allows(s, grant)) {
        return None;
    }
    let mut condition = json!({"ArnLike": {"aws:SourceArn": grant.source_arn}});
    if let Some(account) = grant.source_account {
        condition["StringEquals"] = json!({"aws:SourceAccount": account});
    }
    statements.push(json!({
        "Sid": format!("annotable-{}", super::short_hash(&format!("{}{}", grant.service, grant.source_arn))),
        "Effect": "Allow",
        "Principal": {"Service": grant.service},
        "Action": grant.action,
        "Resource": resource_arn,
        "Condition": condition
    }));
    doc["Statement"] = Value::Array(statements);
    Some(doc.to_string())
}

/// Whether `statement` allows `grant` (its service or `*`, its action or a wildcard over it, and
/// no source condition or one matching the source).
pub fn allows(statement: &Value, grant: Grant<'_>) -> bool {
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
    let service_wildcard = grant
        .action
        .split_once(':')
        .map(|(service, _)| format!("{service}:*"))
        .unwrap_or_default();
    if !as_list(statement.get("Action"))
        .iter()
        .any(|a| a == "*" || *a == service_wildcard || a.eq_ignore_ascii_case(grant.action))
    {
        return false;
    }
    let principal_ok = match statement.get("Principal") {
        Some(Value::String(s)) => s == "*",
        Some(p) => {
            as_list(p.get("Service")).iter().any(|s| s == grant.service)
                || as_list(p.get("AWS")).iter().any(|s| s == "*")
        }
        None => false,
    };
    if !principal_ok {
        return false;
    }
    match statement.get("Condition") {
        None => true,
        Some(cond) => ["ArnLike", "ArnEquals", "StringEquals", "StringLike"]
            .iter()
            .flat_map(|op| as_list(cond.get(*op).and_then(|c| c.get("aws:SourceArn"))))
            .any(|a| glob_match(&a, grant.source_arn)),
    }
}

/// Whether any statement of `policy` allows `grant`.
pub fn policy_allows(policy: Option<&str>, grant: Grant<'_>) -> bool {
    let Some(doc) = policy.and_then(|p| serde_json::from_str::<Value>(p).ok()) else {
        return false;
    };
    match doc.get("Statement") {
        Some(Value::Array(statements)) => statements.iter().any(|s| allows(s, grant)),
        Some(statement) => allows(statement, grant),
        None => false,
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

    fn from_bucket<'a>(bucket: &'a str, account: Option<&'a str>) -> Grant<'a> {
        Grant {
            service: "s3.amazonaws.com",
            action: "sqs:SendMessage",
            source_arn: bucket,
            source_account: account,
        }
    }

    #[test]
    fn a_policy_statement_is_added_once() {
        let q = "arn:aws:sqs:us-east-1:1:q";
        let b = "arn:aws:s3:::bucket";
        let Some(added) = policy_with(None, q, from_bucket(b, None)) else {
            panic!("a statement should be added")
        };
        assert_eq!(policy_with(Some(&added), q, from_bucket(b, None)), None);
        assert!(policy_allows(Some(&added), from_bucket(b, None)));
        // Another bucket still needs its own.
        let other = from_bucket("arn:aws:s3:::other", None);
        assert!(policy_with(Some(&added), q, other).is_some());
        assert!(!policy_allows(Some(&added), other));
        // With the expected owner, the statement pins the source account too.
        let pinned = policy_with(None, q, from_bucket(b, Some("111122223333"))).unwrap_or_default();
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
        assert_eq!(policy_with(Some(wildcard), q, from_bucket(b, None)), None);
        // A Deny does not.
        let deny = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"sqs:*"}]}"#;
        assert!(policy_with(Some(deny), q, from_bucket(b, None)).is_some());
    }

    #[test]
    fn each_service_needs_its_own_statement() {
        let q = "arn:aws:sqs:us-east-1:1:q";
        let topic = Grant {
            service: "sns.amazonaws.com",
            action: "sqs:SendMessage",
            source_arn: "arn:aws:sns:us-east-1:1:t",
            source_account: None,
        };
        let rule = Grant {
            service: "events.amazonaws.com",
            action: "sqs:SendMessage",
            source_arn: "arn:aws:events:us-east-1:1:rule/r",
            source_account: None,
        };
        let with_topic = policy_with(None, q, topic).unwrap_or_default();
        assert!(policy_allows(Some(&with_topic), topic));
        assert!(!policy_allows(Some(&with_topic), rule));
        let both = policy_with(Some(&with_topic), q, rule).unwrap_or_default();
        assert!(policy_allows(Some(&both), topic) && policy_allows(Some(&both), rule));
        // A topic policy: S3 may publish.
        let publish = Grant {
            service: "s3.amazonaws.com",
            action: "sns:Publish",
            source_arn: "arn:aws:s3:::bucket",
            source_account: None,
        };
        let any_sns = r#"{"Statement":{"Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"sns:*"}}"#;
        assert!(policy_allows(Some(any_sns), publish));
        assert!(!policy_allows(
            Some(any_sns),
            from_bucket("arn:aws:s3:::bucket", None)
        ));
    }
}
