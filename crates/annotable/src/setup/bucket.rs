//! The bucket's side of the route: its notification configuration sends [`EVENTS`] under the
//! prefix to a queue or a topic, or turns on delivery to EventBridge. Every other
//! configuration is written back as it was.

use aws_sdk_s3::types::{
    Event, EventBridgeConfiguration, FilterRule, FilterRuleName, NotificationConfiguration,
    NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter, TopicConfiguration,
};

use super::{EVENTS, SetupError, SetupRequest, short_hash};

/// Where the bucket sends its events.
#[derive(Debug, Clone, Copy)]
pub(super) enum Destination<'a> {
    /// This queue's ARN.
    Queue(&'a str),
    /// This topic's ARN.
    Topic(&'a str),
    /// EventBridge's default bus (a rule picks the events up).
    EventBridge,
}

/// Makes the bucket send to `destination`; the change, if one was needed.
pub(super) async fn route(
    s3: &aws_sdk_s3::Client,
    request: &SetupRequest,
    prefix: &str,
    destination: Destination<'_>,
) -> Result<Option<String>, SetupError> {
    let bucket = &request.bucket;
    let current = s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .set_expected_bucket_owner(request.expected_bucket_owner.clone())
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("GetBucketNotificationConfiguration on bucket {bucket}"),
                aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                "check the bucket name and s3:GetBucketNotification permission",
            )
        })?;
    let wanted: Vec<Event> = EVENTS.iter().map(|e| Event::from(*e)).collect();
    let id = |arn: &str| format!("annotable-{}", short_hash(&format!("{arn}{prefix}")));
    let mut queues = current.queue_configurations().to_vec();
    let mut topics = current.topic_configurations().to_vec();
    let mut event_bridge = current.event_bridge_configuration().cloned();
    let change = match destination {
        Destination::Queue(arn) => {
            if !replace(&mut queues, arn, &wanted, prefix, |q| {
                (q.queue_arn(), q.filter(), q.events())
            }) {
                return Ok(None);
            }
            queues.push(
                QueueConfiguration::builder()
                    .id(id(arn))
                    .queue_arn(arn)
                    .set_events(Some(wanted))
                    .set_filter(prefix_filter(prefix))
                    .build()
                    .map_err(built)?,
            );
            format!(
                "bucket {bucket}: notifications {} for keys under {prefix:?} now go to {arn}",
                EVENTS.join(", ")
            )
        }
        Destination::Topic(arn) => {
            if !replace(&mut topics, arn, &wanted, prefix, |t| {
                (t.topic_arn(), t.filter(), t.events())
            }) {
                return Ok(None);
            }
            topics.push(
                TopicConfiguration::builder()
                    .id(id(arn))
                    .topic_arn(arn)
                    .set_events(Some(wanted))
                    .set_filter(prefix_filter(prefix))
                    .build()
                    .map_err(built)?,
            );
            format!(
                "bucket {bucket}: notifications {} for keys under {prefix:?} now go to topic {arn}",
                EVENTS.join(", ")
            )
        }
        Destination::EventBridge => {
            if event_bridge.is_some() {
                return Ok(None);
            }
            event_bridge = Some(EventBridgeConfiguration::builder().build());
            format!("bucket {bucket}: every event now also goes to EventBridge's default bus")
        }
    };
    let config = NotificationConfiguration::builder()
        .set_topic_configurations(Some(topics))
        .set_queue_configurations(Some(queues))
        .set_lambda_function_configurations(Some(current.lambda_function_configurations().to_vec()))
        .set_event_bridge_configuration(event_bridge)
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .set_expected_bucket_owner(request.expected_bucket_owner.clone())
        .notification_configuration(config)
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("PutBucketNotificationConfiguration on bucket {bucket}"),
                aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                "check s3:PutBucketNotification permission; S3 refuses configurations whose prefixes and events overlap another one",
            )
        })?;
    Ok(Some(change))
}

/// Drops the configurations for `arn` under `prefix` that lack some wanted event; `false` when
/// one already has them all (nothing to do).
fn replace<T>(
    configurations: &mut Vec<T>,
    arn: &str,
    wanted: &[Event],
    prefix: &str,
    parts: impl Fn(&T) -> (&str, Option<&NotificationConfigurationFilter>, &[Event]),
) -> bool {
    let ours = |c: &T| {
        let (a, filter, _) = parts(c);
        a == arn && filter_prefix(filter) == prefix
    };
    let complete = |c: &T| wanted.iter().all(|w| parts(c).2.contains(w));
    if configurations.iter().any(|c| ours(c) && complete(c)) {
        return false;
    }
    configurations.retain(|c| !ours(c));
    true
}

/// The prefix a configuration's filter names ("" for none).
pub(crate) fn filter_prefix(filter: Option<&NotificationConfigurationFilter>) -> String {
    filter
        .and_then(|f| f.key())
        .map(|k| k.filter_rules())
        .unwrap_or_default()
        .iter()
        .find(|r| r.name() == Some(&FilterRuleName::Prefix))
        .and_then(|r| r.value())
        .unwrap_or("")
        .to_string()
}

fn prefix_filter(prefix: &str) -> Option<NotificationConfigurationFilter> {
    (!prefix.is_empty()).then(|| {
        let rule = FilterRule::builder()
            .name(FilterRuleName::Prefix)
            .value(prefix)
            .build();
        NotificationConfigurationFilter::builder()
            .key(S3KeyFilter::builder().filter_rules(rule).build())
            .build()
    })
}

fn built(e: aws_sdk_s3::error::BuildError) -> SetupError {
    SetupError::aws(
        "building the notification configuration".into(),
        e.to_string(),
        "this is a bug; please report it",
    )
}
