//! `annotable doctor`: checks what `serve`, `backfill` and `query` need, and says what to fix:
//! credentials, the queue and its dead-letter queue, each bucket's route to the queue
//! (`route.rs`), the bucket's annotation API and the warehouse (`probe.rs`), the catalog and
//! the table.

mod probe;
mod route;

use annotation_table::CatalogConfig;
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

    let clients = crate::setup::Clients::new(crate::aws::s3_client(config, &sdk), &sdk);
    let mut queue_arn = None;
    let mut queue_policy = None;
    if let Some(url) = &config.serve.queue_url {
        let mut dlq_check = None;
        let r = clients
            .sqs
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
                queue_policy = a.get(&QueueAttributeName::Policy).cloned();
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

    let owner = config.aws.expected_bucket_owner.as_deref();
    let queue = route::QueueFacts {
        url: config.serve.queue_url.as_deref(),
        arn: queue_arn.as_deref(),
        policy: queue_policy.as_deref(),
    };
    for bucket in buckets {
        if let Some(allowed) = &config.aws.allowed_buckets
            && !allowed.contains(bucket)
        {
            checks.push(Check {
                what: format!("bucket {bucket}"),
                result: Err(format!(
                    "not in aws.allowed_buckets ({}): serve refuses its events; add it to the list",
                    allowed.join(", ")
                )),
            });
            continue;
        }
        let reachable = clients
            .s3
            .head_bucket()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await;
        // The annotation API is probed on every bucket that answers, whatever its route.
        let reached = reachable.is_ok();
        let result = match reachable {
            Ok(_) => route::check(&clients, bucket, owner, &queue).await,
            Err(e) => Err(format!(
                "{}; check the name and s3:ListBucket permission{}",
                aws_sdk_s3::error::DisplayErrorContext(&e),
                if owner.is_some() {
                    ", and that aws.expected_bucket_owner names its owner"
                } else {
                    ""
                }
            )),
        };
        checks.push(Check {
            what: format!("bucket {bucket}"),
            result,
        });
        if reached {
            checks.push(Check {
                what: format!("annotation API of bucket {bucket}"),
                result: probe::annotation_api(&clients.s3, bucket, owner).await,
            });
            if config.object_prefixes().is_some() {
                checks.push(Check {
                    what: format!("version listing of bucket {bucket} (objects)"),
                    result: probe::version_listing(&clients.s3, bucket, owner).await,
                });
            }
        }
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
    checks.push(Check {
        what: "warehouse".into(),
        result: probe::warehouse(config, warehouse_of(&catalog)).await,
    });
    let ident = format!("{}.{}", config.namespace(), config.table());
    match annotation_table::connect(config.catalog_name(), &catalog, &config.storage_config()).await
    {
        Ok(cat) => {
            checks.push(Check {
                what: format!("catalog {}", catalog.describe()),
                result: Ok("connected".into()),
            });
            let exists = match annotation_table::table_ident(config.namespace(), config.table()) {
                Some(table) => cat.table_exists(&table).await.map_err(|e| e.to_string()),
                None => Err(format!("{ident:?} is not a valid table name")),
            };
            let result = match exists {
                Ok(false) => Err(format!(
                    "does not exist in {}: `annotable serve` and `annotable backfill` create it on their first run; if it exists elsewhere, check namespace and table (ANNOTABLE_NAMESPACE, ANNOTABLE_TABLE)",
                    catalog.describe()
                )),
                Err(e) => Err(format!("cannot tell whether it exists: {e}")),
                Ok(true) => match annotation_sql::QuerySession::new(
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
                },
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

/// Where the catalog keeps the tables' files, when annotable writes them itself.
fn warehouse_of(catalog: &CatalogConfig) -> Option<&str> {
    match catalog {
        CatalogConfig::Sql { warehouse, .. } | CatalogConfig::Glue { warehouse, .. } => {
            Some(warehouse)
        }
        CatalogConfig::Rest { .. } | CatalogConfig::S3Tables { .. } => None,
    }
}
