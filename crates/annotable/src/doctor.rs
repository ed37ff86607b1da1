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
        let result = match s3.head_bucket().bucket(bucket).send().await {
            Ok(_) => match s3
                .get_bucket_notification_configuration()
                .bucket(bucket)
                .send()
                .await
            {
                Ok(n) => {
                    let queues: Vec<&str> = n
                        .queue_configurations()
                        .iter()
                        .map(|q| q.queue_arn())
                        .collect();
                    if queues.is_empty() {
                        Err("reachable, but sends no notifications to any queue; run `annotable setup notifications`".into())
                    } else {
                        Ok(format!("reachable; notifies {}", queues.join(", ")))
                    }
                }
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
