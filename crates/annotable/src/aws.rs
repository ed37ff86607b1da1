//! AWS clients from the configuration: the standard credential/region chain of `aws-config`
//! (environment, profile, ECS task role), plus the `[aws]` overrides for emulators and
//! S3-compatible stores.

use annotation_source::{AnnotationSource, Clock, SourceOptions};

use crate::config::Config;

/// The shared SDK configuration.
pub async fn sdk_config(config: &Config) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = &config.aws.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = &config.aws.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    loader.load().await
}

/// The S3 client configuration (path style when configured).
pub fn s3_config(config: &Config, sdk: &aws_config::SdkConfig) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(config.aws.force_path_style.unwrap_or(false))
}

/// A plain S3 client (SDK retries on), for setup and checks.
pub fn s3_client(config: &Config, sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s3_config(config, sdk).build())
}

/// An S3 client for the warehouse (the `[storage]` settings: endpoint, region, static keys,
/// path style), for documents kept beside the tables such as backfill's lease and checkpoint.
/// The warehouse may live in another store or account than the annotated buckets, so the
/// annotation-side `[aws]` overrides do not apply to it.
pub fn warehouse_s3_client(config: &Config, sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let storage = config.storage_config();
    let mut builder =
        aws_sdk_s3::config::Builder::from(sdk).force_path_style(storage.s3_path_style);
    if let Some(endpoint) = &storage.s3_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    if let Some(region) = &storage.s3_region {
        builder = builder.region(aws_config::Region::new(region.clone()));
    }
    if let (Some(key), Some(secret)) = (&storage.s3_access_key_id, &storage.s3_secret_access_key) {
        builder = builder.credentials_provider(aws_credential_types::Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "annotable-storage",
        ));
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// The SQS client.
pub fn sqs_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

/// Shifts this process's clock by this many milliseconds, to test a host whose clock is off.
/// Not a configuration key: nothing but a test should ever set it.
pub const TEST_CLOCK_SHIFT_ENV: &str = "ANNOTABLE_TEST_CLOCK_SHIFT_MS";

/// The annotation reader, with its own retries and a clock kept in step with S3's (see
/// `annotation_source`).
pub fn annotation_source(config: &Config, sdk: &aws_config::SdkConfig) -> AnnotationSource {
    let shift_ms: i64 = std::env::var(TEST_CLOCK_SHIFT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let clock = Clock::with_shift(shift_ms.saturating_mul(1_000_000));
    let s3 = annotation_source::s3_client(&s3_config(config, sdk), &clock);
    let mut options = SourceOptions {
        expected_bucket_owner: config.aws.expected_bucket_owner.clone(),
        allowed_buckets: config
            .aws
            .allowed_buckets
            .as_ref()
            .map(|b| b.iter().cloned().collect()),
        ..SourceOptions::default()
    };
    options.concurrency = config
        .aws
        .s3_concurrency
        .unwrap_or(crate::config::defaults::S3_CONCURRENCY)
        .max(1);
    AnnotationSource::new(s3, options, clock)
}
