//! Does a bucket's every needed event reach the queue? Follows each route `setup
//! notifications` can make (S3 → SQS, S3 → SNS → SQS, S3 → EventBridge → SQS), checks the
//! events each hop carries and the resource policy that lets it deliver, and names the
//! `setup` command that mends what is missing.

use aws_sdk_s3::types::QueueConfiguration;

use crate::setup::policy::{Grant, policy_allows};
use crate::setup::{Clients, missing_events};

/// What doctor knows of the queue.
pub(super) struct QueueFacts<'a> {
    pub url: Option<&'a str>,
    pub arn: Option<&'a str>,
    pub policy: Option<&'a str>,
}

/// Checks the bucket's routes to the queue; `Ok(what reaches it)` or `Err(what is missing
/// and the fix)`.
pub(super) async fn check(
    clients: &Clients,
    bucket: &str,
    expected_owner: Option<&str>,
    queue: &QueueFacts<'_>,
) -> Result<String, String> {
    let owner = expected_owner.map(str::to_string);
    let config = clients
        .s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .set_expected_bucket_owner(owner)
        .send()
        .await
        .map_err(|e| {
            format!(
                "reachable, but its notification configuration cannot be read: {}; grant s3:GetBucketNotification",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        })?;
    let fix = |via: &str| {
        format!(
            "run `annotable setup notifications --bucket {bucket} --queue-url {}{via}` (it merges with the bucket's other configurations)",
            queue.url.unwrap_or("<serve.queue_url>")
        )
    };
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let Some(queue_arn) = queue.arn else {
        let targets: Vec<&str> = config
            .queue_configurations()
            .iter()
            .map(|q| q.queue_arn())
            .collect();
        return if targets.is_empty() {
            Err(format!(
                "reachable, but sends no notifications to any queue; {}",
                fix("")
            ))
        } else {
            Ok(format!(
                "reachable; notifies {} (serve.queue_url is not set, so which one serve reads is unknown)",
                targets.join(", ")
            ))
        };
    };

    // S3 → SQS.
    let direct: Vec<&QueueConfiguration> = config
        .queue_configurations()
        .iter()
        .filter(|q| q.queue_arn() == queue_arn)
        .collect();
    if !direct.is_empty() {
        let events: Vec<&str> = direct
            .iter()
            .flat_map(|q| q.events().iter().map(|e| e.as_str()))
            .collect();
        let missing = missing_events(events.iter().copied());
        if !missing.is_empty() {
            return Err(format!(
                "sends {} to {queue_arn} but not {}: those changes would never reach the table; {}",
                events.join(", "),
                missing.join(", "),
                fix("")
            ));
        }
        let grant = Grant {
            service: "s3.amazonaws.com",
            action: "sqs:SendMessage",
            source_arn: &bucket_arn,
            source_account: expected_owner,
        };
        if let Some(why) = refused(queue.policy, grant, "the bucket") {
            return Err(format!(
                "sends {} to {queue_arn}, but {why}: S3 drops every notification; {}",
                events.join(", "),
                fix("")
            ));
        }
        return Ok(format!(
            "reachable; sends {} to {queue_arn}",
            events.join(", ")
        ));
    }

    // S3 → SNS → SQS.
    for topic in config.topic_configurations() {
        let topic_arn = topic.topic_arn();
        let subscribed = subscribed(clients, topic_arn, queue_arn).await?;
        if !subscribed {
            continue;
        }
        let events: Vec<&str> = topic.events().iter().map(|e| e.as_str()).collect();
        let via_sns = format!(" --via sns --topic-arn {topic_arn}");
        let missing = missing_events(events.iter().copied());
        if !missing.is_empty() {
            return Err(format!(
                "sends {} to topic {topic_arn} (which the queue subscribes to) but not {}; {}",
                events.join(", "),
                missing.join(", "),
                fix(&via_sns)
            ));
        }
        let grant = Grant {
            service: "sns.amazonaws.com",
            action: "sqs:SendMessage",
            source_arn: topic_arn,
            source_account: None,
        };
        if let Some(why) = refused(queue.policy, grant, "the topic") {
            return Err(format!(
                "sends its events to topic {topic_arn}, but {why}; {}",
                fix(&via_sns)
            ));
        }
        return Ok(format!(
            "reachable; sends {} to topic {topic_arn}, which delivers to {queue_arn}",
            events.join(", ")
        ));
    }

    // S3 → EventBridge → SQS.
    if config.event_bridge_configuration().is_some() {
        let rules = clients
            .events
            .list_rule_names_by_target()
            .target_arn(queue_arn)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "sends its events to EventBridge, but the rules targeting the queue cannot be listed: {}; grant events:ListRuleNamesByTarget",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                )
            })?;
        for name in rules.rule_names() {
            let Ok(rule) = clients.events.describe_rule().name(name).send().await else {
                continue;
            };
            let matches_bucket = rule
                .event_pattern()
                .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
                .is_some_and(|p| {
                    p["source"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|v| v == "aws.s3"))
                        && p["detail"]["bucket"]["name"]
                            .as_array()
                            .is_none_or(|b| b.iter().any(|v| v == bucket))
                });
            if !matches_bucket {
                continue;
            }
            let rule_arn = rule.arn().unwrap_or_default();
            let grant = Grant {
                service: "events.amazonaws.com",
                action: "sqs:SendMessage",
                source_arn: rule_arn,
                source_account: None,
            };
            if let Some(why) = refused(queue.policy, grant, "the rule") {
                return Err(format!(
                    "sends its events to EventBridge and rule {name} targets the queue, but {why}; {}",
                    fix(" --via eventbridge")
                ));
            }
            return Ok(format!(
                "reachable; sends every event to EventBridge, where rule {name} delivers them to {queue_arn}"
            ));
        }
        return Err(format!(
            "sends its events to EventBridge, but no rule there sends them to {queue_arn}; {}",
            fix(" --via eventbridge")
        ));
    }

    let targets: Vec<&str> = config
        .queue_configurations()
        .iter()
        .map(|q| q.queue_arn())
        .collect();
    Err(if targets.is_empty() {
        format!(
            "reachable, but sends no notifications to any queue; {}",
            fix("")
        )
    } else {
        format!(
            "notifies {} but not this queue ({queue_arn}); {}",
            targets.join(", "),
            fix("")
        )
    })
}

/// Why the queue's policy stops `sender` delivering `grant`, or `None` when it lets it.
fn refused(policy: Option<&str>, grant: Grant<'_>, sender: &str) -> Option<String> {
    (!policy_allows(policy, grant)).then(|| {
        format!(
            "the queue's policy does not let {sender} send ({} from {} with aws:SourceArn {})",
            grant.action, grant.service, grant.source_arn
        )
    })
}

/// Whether the queue subscribes to the topic.
async fn subscribed(clients: &Clients, topic_arn: &str, queue_arn: &str) -> Result<bool, String> {
    let mut next = None;
    loop {
        let page = clients
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(topic_arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "sends its events to topic {topic_arn}, whose subscriptions cannot be listed: {}; grant sns:ListSubscriptionsByTopic",
                    aws_sdk_sns::error::DisplayErrorContext(&e)
                )
            })?;
        if page
            .subscriptions()
            .iter()
            .any(|s| s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn))
        {
            return Ok(true);
        }
        next = page.next_token().map(str::to_string);
        if next.is_none() {
            return Ok(false);
        }
    }
}
