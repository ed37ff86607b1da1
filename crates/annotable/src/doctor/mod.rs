//! `annotable doctor`: checks what `serve`, `backfill` and `query` need, and says what to fix.

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::config::Config;

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// `Ok(detail)` or `Err(what to fix)`.
    pub result: Result<String, String>,
}

/// Runs every check that the configuration makes possible; `buckets` adds bucket checks.
pub async fn run(config: &Config, buckets: &[String]) -> Vec<Check> {
    let mut checks = Vec::new();
    let sdk = crate::aws::sdk_config(config).await;

    let creds = match sdk.credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            Ok(c) => Ok(format!(
                "access key {}…",
                c.access_key_id().chars().take(4).collect::<String>()
            )),
            Err(e) => Err(format!(
                "{e}; set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with a task role"
            )),
        },
        None => Err("no credentials provider; set AWS credentials".into()),
    };
    checks.push(Check {
        what: "AWS credentials".into(),
        result: creds,
    });

    let mut queue_arn = None;
    if let Some(url) = &config.serve.queue_url {
        let sqs = crate::aws::sqs_client(&sdk);
        let mut dlq_check = None;
        let r = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await;
        let result = match r {
            Ok(out) => {
                let a = out.attributes().cloned().unwrap_or_default();
                let get = |k: QueueAttributeName| a.get(&k).cloned().unwrap_or_else(|| "?".into());
                let redrive = a.get(&QueueAttributeName::RedrivePolicy).cloned();
                queue_arn = a.get(&QueueAttributeName::QueueArn).cloned();
                let detail = format!(
                    "visibility timeout {} s, ~{} messages waiting, ~{} in flight",
                    get(QueueAttributeName::VisibilityTimeout),
                    get(QueueAttributeName::ApproximateNumberOfMessages),
                    get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                );
                dlq_check = Some(Check {
                    what: format!("dead-letter queue of {url}"),
                    result: match (redrive, &config.serve.dead_letter_queue_url) {
                        (Some(r), _) => Ok(r),
                        (None, Some(dlq)) => Ok(format!("explicit: {dlq}")),
                        (None, None) => Err("none: add a RedrivePolicy to the queue (or set serve.dead_letter_queue_url) so poison messages are kept".into()),
                    },
                });
                Ok(detail)
            }
            Err(e) => Err(format!(
                "{}; check serve.queue_url, the region/endpoint and sqs:GetQueueAttributes",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )),
        };
        checks.push(Check {
            what: format!("queue {url}"),
            result,
        });
        checks.extend(dlq_check);
    } else {
        checks.push(Check {
            what: "queue".into(),
            result: Err(
                "serve.queue_url (ANNOTABLE_SERVE_QUEUE_URL) is not set; serve needs it".into(),
            ),
        });
    }

    let s3 = crate::aws::s3_client(config, &sdk);
    for bucket in buckets {
        let owner = config.aws.expected_bucket_owner.clone();
        let result = match s3
            .head_bucket()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.clone())
            .send()
            .await
        {
            Ok(_) => match s3
                .get_bucket_notification_configuration()
                .bucket(bucket)
                .set_expected_bucket_owner(owner)
                .send()
                .await
            {
                Ok(n) => notification_check(
                    bucket,
                    n.queue_configurations(),
                    queue_arn.as_deref(),
                    config.serve.queue_url.as_deref(),
                ),
                Err(e) => Err(format!(
                    "reachable, but its notification configuration cannot be read: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )),
            },
            Err(e) => Err(format!(
                "{}; check the name and s3:ListBucket permission",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
        };
        checks.push(Check {
            what: format!("bucket {bucket}"),
            result,
        });
    }

    let catalog = match config.catalog_config() {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check {
                what: "catalog".into(),
                result: Err(e.to_string()),
            });
            return checks;
        }
    };
    match annotation_table::connect(config.catalog_name(), &catalog, &config.storage_config()).await
    {
        Ok(cat) => {
            checks.push(Check {
                what: format!("catalog {}", catalog.describe()),
                result: Ok("connected".into()),
            });
            let ident = format!("{}.{}", config.namespace(), config.table());
            let result = match annotation_sql::QuerySession::new(
                cat,
                catalog.describe(),
                config.namespace(),
                config.table(),
            )
            .await
            {
                Ok(session) => match session
                    .query(&format!("SELECT count(*) AS n FROM {}", config.table()))
                    .await
                {
                    Ok(r) => Ok(format!("readable, {} result rows", r.num_rows())),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            checks.push(Check {
                what: format!("table {ident}"),
                result,
            });
        }
        Err(e) => checks.push(Check {
            what: format!("catalog {}", catalog.describe()),
            result: Err(e.to_string()),
        }),
    }
    checks
}

/// Whether `bucket`'s queue configurations send every event `serve` needs to this queue; the
/// fix when they do not.
fn notification_check(
    bucket: &str,
    queues: &[aws_sdk_s3::types::QueueConfiguration],
    queue_arn: Option<&str>,
    queue_url: Option<&str>,
) -> Result<String, String> {
    let fix = format!(
        "run `annotable setup notifications --bucket {bucket} --queue-url {}` (it merges with the bucket's other configurations)",
        queue_url.unwrap_or("<serve.queue_url>")
    );
    let targets: Vec<&str> = queues.iter().map(|q| q.queue_arn()).collect();
    let Some(arn) = queue_arn else {
        return if targets.is_empty() {
            Err(format!(
                "reachable, but sends no notifications to any queue; {fix}"
            ))
        } else {
            Ok(format!(
                "reachable; notifies {} (serve.queue_url is not set, so which one serve reads is unknown)",
                targets.join(", ")
            ))
        };
    };
    let ours: Vec<&aws_sdk_s3::types::QueueConfiguration> =
        queues.iter().filter(|q| q.queue_arn() == arn).collect();
    if ours.is_empty() {
        return Err(if targets.is_empty() {
            format!("reachable, but sends no notifications to any queue; {fix}")
        } else {
            format!(
                "notifies {} but not this queue ({arn}); {fix}",
                targets.join(", ")
            )
        });
    }
    let events: Vec<&str> = ours
        .iter()
        .flat_map(|q| q.events().iter().map(|e| e.as_str()))
        .collect();
    let missing = crate::setup::missing_events(events.iter().copied());
    if missing.is_empty() {
        Ok(format!("reachable; sends {} to {arn}", events.join(", ")))
    } else {
        Err(format!(
            "sends {} to {arn} but not {}: those changes would never reach the table; {fix}",
            events.join(", "),
            missing.join(", ")
        ))
    }
}
