//! `annotable setup notifications`: route a bucket's events to the queue `serve` reads, in any
//! of the three shapes AWS delivers them: directly (S3 → SQS), through a topic (S3 → SNS →
//! SQS, raw or enveloped), or through EventBridge (S3 → EventBridge → rule → SQS).
//!
//! Merges, never clobbers: the bucket's other topic, queue, Lambda and EventBridge
//! configurations are written back as they were; a configuration for this destination with the
//! same prefix is replaced only if its events differ. Each hop's resource policy gets a
//! statement letting the previous hop deliver, if no statement allows it yet. Running it twice
//! changes nothing the second time; every change is reported, one line each.

mod bucket;
mod eventbridge;
pub mod policy;
mod sns;

use aws_sdk_sqs::types::QueueAttributeName;

use policy::Grant;

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

/// How the bucket's events reach the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// S3 sends to the queue.
    Sqs,
    /// S3 publishes to this topic and the queue subscribes to it.
    Sns {
        /// The topic's ARN.
        topic_arn: String,
        /// The queue receives S3's message as is, not inside SNS's JSON envelope (`serve`
        /// reads both).
        raw_message_delivery: bool,
    },
    /// S3 sends every event to EventBridge's default bus; a rule sends this bucket's events
    /// (under the prefix) to the queue.
    EventBridge,
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
    /// bucket call, and pinned as `aws:SourceAccount` where the bucket is a policy's source.
    pub expected_bucket_owner: Option<String>,
    /// The route.
    pub via: Via,
}

/// The clients setup calls.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The annotated buckets' S3.
    pub s3: aws_sdk_s3::Client,
    /// The queue's SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// SNS, for `Via::Sns`.
    pub sns: aws_sdk_sns::Client,
    /// EventBridge, for `Via::EventBridge`.
    pub events: aws_sdk_eventbridge::Client,
}

impl Clients {
    /// `s3` for the buckets, and clients of the other services from `sdk`.
    pub fn new(s3: aws_sdk_s3::Client, sdk: &aws_config::SdkConfig) -> Clients {
        Clients {
            s3,
            sqs: aws_sdk_sqs::Client::new(sdk),
            sns: aws_sdk_sns::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
        }
    }
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

impl SetupError {
    fn aws(what: String, message: String, hint: &'static str) -> SetupError {
        SetupError::Aws {
            what,
            message,
            hint,
        }
    }
}

/// Routes the bucket's events to the queue; what changed, one line each (empty: nothing).
///
/// Each hop's policy is written before the hop that relies on it: S3 validates a queue or
/// topic destination when the bucket's configuration is saved, and refuses it unless the
/// policy already lets the bucket deliver.
pub async fn notifications(
    clients: &Clients,
    request: &SetupRequest,
) -> Result<Vec<String>, SetupError> {
    let mut changes = Vec::new();
    let bucket_arn = format!("arn:aws:s3:::{}", request.bucket);
    let queue = QueueHop {
        sqs: &clients.sqs,
        url: &request.queue_url,
    };
    let (queue_arn, queue_policy) = queue_attributes(&clients.sqs, &request.queue_url).await?;
    let prefix = request.prefix.clone().unwrap_or_default();
    let from_bucket = |service, action| Grant {
        service,
        action,
        source_arn: &bucket_arn,
        source_account: request.expected_bucket_owner.as_deref(),
    };
    let from = |service, source_arn| Grant {
        service,
        action: "sqs:SendMessage",
        source_arn,
        source_account: None,
    };
    let route = |destination| bucket::route(&clients.s3, request, &prefix, destination);
    match &request.via {
        Via::Sqs => {
            let grant = from_bucket("s3.amazonaws.com", "sqs:SendMessage");
            changes.extend(
                queue
                    .allow(&queue_arn, queue_policy.as_deref(), grant)
                    .await?,
            );
            changes.extend(route(bucket::Destination::Queue(&queue_arn)).await?);
        }
        Via::Sns {
            topic_arn,
            raw_message_delivery,
        } => {
            let publish = from_bucket("s3.amazonaws.com", "sns:Publish");
            changes.extend(sns::allow_publish(&clients.sns, topic_arn, publish).await?);
            let grant = from("sns.amazonaws.com", topic_arn);
            changes.extend(
                queue
                    .allow(&queue_arn, queue_policy.as_deref(), grant)
                    .await?,
            );
            changes.extend(
                sns::subscribe(&clients.sns, topic_arn, &queue_arn, *raw_message_delivery).await?,
            );
            changes.extend(route(bucket::Destination::Topic(topic_arn)).await?);
        }
        Via::EventBridge => {
            let (rule_arn, rule_changes) =
                eventbridge::route(&clients.events, &request.bucket, &prefix, &queue_arn).await?;
            changes.extend(rule_changes);
            let grant = from("events.amazonaws.com", &rule_arn);
            changes.extend(
                queue
                    .allow(&queue_arn, queue_policy.as_deref(), grant)
                    .await?,
            );
            changes.extend(route(bucket::Destination::EventBridge).await?);
        }
    }
    Ok(changes)
}

/// The queue, the last hop of every route.
struct QueueHop<'a> {
    sqs: &'a aws_sdk_sqs::Client,
    url: &'a str,
}

impl QueueHop<'_> {
    /// Adds a statement allowing `grant` to the queue's policy, if none allows it yet.
    async fn allow(
        &self,
        queue_arn: &str,
        policy: Option<&str>,
        grant: Grant<'_>,
    ) -> Result<Option<String>, SetupError> {
        let Some(new_policy) = policy::policy_with(policy, queue_arn, grant) else {
            return Ok(None);
        };
        self.sqs
            .set_queue_attributes()
            .queue_url(self.url)
            .attributes(QueueAttributeName::Policy, new_policy)
            .send()
            .await
            .map_err(|e| {
                SetupError::aws(
                    format!("SetQueueAttributes(Policy) on {}", self.url),
                    aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                    "grant sqs:SetQueueAttributes, or add a statement allowing the sender to sqs:SendMessage yourself (docs/deploy)",
                )
            })?;
        Ok(Some(format!(
            "queue policy of {}: added a statement allowing {} to send (sqs:SendMessage from {})",
            self.url, grant.source_arn, grant.service
        )))
    }
}

/// The queue's ARN and policy.
async fn queue_attributes(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<(String, Option<String>), SetupError> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .map_err(|e| {
            SetupError::aws(
                format!("GetQueueAttributes on {queue_url}"),
                aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                "check the queue URL and sqs:GetQueueAttributes permission",
            )
        })?;
    let attributes = attrs.attributes().cloned().unwrap_or_default();
    Ok((
        attributes
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .unwrap_or_default(),
        attributes.get(&QueueAttributeName::Policy).cloned(),
    ))
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
