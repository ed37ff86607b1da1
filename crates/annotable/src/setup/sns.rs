//! The topic's side of S3 → SNS → SQS: the topic lets the bucket publish, and the queue is
//! subscribed to it with the chosen envelope (raw or SNS's JSON).

use super::SetupError;
use super::policy::{Grant, policy_with};

const RAW: &str = "RawMessageDelivery";

/// Adds a statement letting the bucket publish to the topic, if none allows it yet.
pub(super) async fn allow_publish(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    grant: Grant<'_>,
) -> Result<Option<String>, SetupError> {
    let attributes = sns
        .get_topic_attributes()
        .topic_arn(topic_arn)
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("GetTopicAttributes on {topic_arn}"),
                aws_sdk_sns::error::DisplayErrorContext(&e).to_string(),
                "check --topic-arn (the topic must exist) and sns:GetTopicAttributes permission",
            )
        })?;
    let policy = attributes
        .attributes()
        .and_then(|a| a.get("Policy"))
        .map(String::as_str);
    let Some(new_policy) = policy_with(policy, topic_arn, grant) else {
        return Ok(None);
    };
    sns.set_topic_attributes()
        .topic_arn(topic_arn)
        .attribute_name("Policy")
        .attribute_value(new_policy)
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("SetTopicAttributes(Policy) on {topic_arn}"),
                aws_sdk_sns::error::DisplayErrorContext(&e).to_string(),
                "grant sns:SetTopicAttributes, or add a statement allowing s3.amazonaws.com to sns:Publish with aws:SourceArn = the bucket ARN yourself",
            )
        })?;
    Ok(Some(format!(
        "topic policy of {topic_arn}: added a statement allowing {} to publish",
        grant.source_arn
    )))
}

/// Subscribes the queue to the topic with `raw` delivery, or sets `raw` on its subscription.
pub(super) async fn subscribe(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    queue_arn: &str,
    raw: bool,
) -> Result<Option<String>, SetupError> {
    let wanted = if raw { "true" } else { "false" };
    let list_error = |e: String| {
        SetupError::aws(
            format!("ListSubscriptionsByTopic on {topic_arn}"),
            e,
            "grant sns:ListSubscriptionsByTopic",
        )
    };
    let mut next = None;
    let existing = loop {
        let page = sns
            .list_subscriptions_by_topic()
            .topic_arn(topic_arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| list_error(aws_sdk_sns::error::DisplayErrorContext(&e).to_string()))?;
        let found = page
            .subscriptions()
            .iter()
            .find(|s| s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn))
            .and_then(|s| s.subscription_arn())
            // Not yet confirmed: SQS subscriptions confirm themselves; subscribe again.
            .filter(|arn| arn.starts_with("arn:"))
            .map(str::to_string);
        next = page.next_token().map(str::to_string);
        if found.is_some() || next.is_none() {
            break found;
        }
    };
    let Some(subscription) = existing else {
        sns.subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes(RAW, wanted)
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| {
                SetupError::aws(
                    format!("Subscribe {queue_arn} to {topic_arn}"),
                    aws_sdk_sns::error::DisplayErrorContext(&e).to_string(),
                    "grant sns:Subscribe on the topic",
                )
            })?;
        return Ok(Some(format!(
            "topic {topic_arn}: subscribed {queue_arn} ({} delivery)",
            if raw { "raw" } else { "enveloped" }
        )));
    };
    let current = sns
        .get_subscription_attributes()
        .subscription_arn(&subscription)
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("GetSubscriptionAttributes on {subscription}"),
                aws_sdk_sns::error::DisplayErrorContext(&e).to_string(),
                "grant sns:GetSubscriptionAttributes",
            )
        })?;
    let is_raw = current
        .attributes()
        .and_then(|a| a.get(RAW))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if is_raw == raw {
        return Ok(None);
    }
    sns.set_subscription_attributes()
        .subscription_arn(&subscription)
        .attribute_name(RAW)
        .attribute_value(wanted)
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("SetSubscriptionAttributes({RAW}) on {subscription}"),
                aws_sdk_sns::error::DisplayErrorContext(&e).to_string(),
                "grant sns:SetSubscriptionAttributes",
            )
        })?;
    Ok(Some(format!(
        "subscription {subscription}: {RAW} is now {wanted}"
    )))
}
