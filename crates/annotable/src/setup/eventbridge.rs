//! The bus's side of S3 → EventBridge → SQS: a rule on the default bus that matches the
//! bucket's events (under the prefix) and targets the queue. The rule matches every `aws.s3`
//! event of the bucket, not a list of detail types: `serve` acknowledges the ones that say
//! nothing about annotations, and a detail type added later is not silently missed.

use aws_sdk_eventbridge::types::{RuleState, Target};
use serde_json::json;

use super::{SetupError, short_hash};

/// The target id the rule's queue target is created under.
const TARGET_ID: &str = "annotable-queue";

/// The rule's name: `annotable-<bucket>` (plus a hash of the prefix), or a hash when that
/// exceeds EventBridge's 64 characters.
pub(super) fn rule_name(bucket: &str, prefix: &str) -> String {
    let name = if prefix.is_empty() {
        format!("annotable-{bucket}")
    } else {
        format!("annotable-{bucket}-{}", short_hash(prefix))
    };
    if name.len() <= 64 {
        name
    } else {
        format!("annotable-{}", short_hash(&format!("{bucket}/{prefix}")))
    }
}

/// The rule's event pattern.
pub(super) fn pattern(bucket: &str, prefix: &str) -> String {
    let mut detail = json!({"bucket": {"name": [bucket]}});
    if !prefix.is_empty() {
        detail["object"] = json!({"key": [{"prefix": prefix}]});
    }
    json!({"source": ["aws.s3"], "detail": detail}).to_string()
}

/// Makes the rule exist with this pattern and target the queue; the rule's ARN and the changes.
pub(super) async fn route(
    events: &aws_sdk_eventbridge::Client,
    bucket: &str,
    prefix: &str,
    queue_arn: &str,
) -> Result<(String, Vec<String>), SetupError> {
    let name = rule_name(bucket, prefix);
    let wanted = pattern(bucket, prefix);
    let mut changes = Vec::new();
    let error = |call: &str, e: String, hint: &'static str| {
        SetupError::aws(format!("{call} on rule {name}"), e, hint)
    };
    let current = events.describe_rule().name(&name).send().await;
    let same = match &current {
        Ok(rule) => {
            let pattern_now = rule
                .event_pattern()
                .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok());
            let pattern_wanted = serde_json::from_str::<serde_json::Value>(&wanted).ok();
            pattern_now == pattern_wanted && rule.state() == Some(&RuleState::Enabled)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => {
            return Err(error(
                "DescribeRule",
                aws_sdk_eventbridge::error::DisplayErrorContext(e).to_string(),
                "grant events:DescribeRule",
            ));
        }
    };
    let rule_arn = match (&current, same) {
        (Ok(rule), true) => rule.arn().unwrap_or_default().to_string(),
        _ => {
            let put = events
                .put_rule()
                .name(&name)
                .event_pattern(&wanted)
                .state(RuleState::Enabled)
                .description(format!("annotable: S3 events of {bucket} to its queue"))
                .send()
                .await
                .map_err(|e| {
                    error(
                        "PutRule",
                        aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string(),
                        "grant events:PutRule on the default bus",
                    )
                })?;
            changes.push(format!("EventBridge rule {name}: matches {wanted}"));
            put.rule_arn().unwrap_or_default().to_string()
        }
    };
    let targets = events
        .list_targets_by_rule()
        .rule(&name)
        .send()
        .await
        .map_err(|e| {
            error(
                "ListTargetsByRule",
                aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string(),
                "grant events:ListTargetsByRule",
            )
        })?;
    if !targets.targets().iter().any(|t| t.arn() == queue_arn) {
        let target = Target::builder()
            .id(TARGET_ID)
            .arn(queue_arn)
            .build()
            .map_err(|e| {
                error(
                    "building the target",
                    e.to_string(),
                    "this is a bug; please report it",
                )
            })?;
        let put = events
            .put_targets()
            .rule(&name)
            .targets(target)
            .send()
            .await
            .map_err(|e| {
                error(
                    "PutTargets",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string(),
                    "grant events:PutTargets",
                )
            })?;
        if put.failed_entry_count() > 0 {
            let why: Vec<String> = put
                .failed_entries()
                .iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f.error_code().unwrap_or("?"),
                        f.error_message().unwrap_or("?")
                    )
                })
                .collect();
            return Err(error(
                "PutTargets",
                why.join("; "),
                "check that the queue is in the rule's region and account",
            ));
        }
        changes.push(format!("EventBridge rule {name}: now targets {queue_arn}"));
    }
    Ok((rule_arn, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_fit_eventbridge_and_differ_by_prefix() {
        assert_eq!(rule_name("media", ""), "annotable-media");
        assert_ne!(rule_name("media", "a/"), rule_name("media", "b/"));
        let long = "b".repeat(63);
        assert!(rule_name(&long, "").len() <= 64);
        assert!(rule_name(&long, "x/").starts_with("annotable-"));
        let p: serde_json::Value =
            serde_json::from_str(&pattern("media", "in/")).unwrap_or_default();
        assert_eq!(p["source"][0], "aws.s3");
        assert_eq!(p["detail"]["bucket"]["name"][0], "media");
        assert_eq!(p["detail"]["object"]["key"][0]["prefix"], "in/");
        assert!(pattern("media", "").find("object").is_none());
    }
}
