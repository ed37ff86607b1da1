//! Every shape in which AWS delivers bucket events to the queue, end to end: S3 → SNS → SQS
//! (enveloped and raw) and S3 → EventBridge → SQS, each set up by `annotable setup
//! notifications --via …` (idempotent, printing what changed) while S3 keeps changing under a
//! running `serve`; the table must end equal to S3, column for column.

use std::time::Duration;

use annotable_tests::{Env, PLAIN, TestResult, VERSIONED, Workload, assert_converged};

/// Runs `setup notifications` for `bucket` with `via` arguments; its stdout.
fn setup(env: &Env, bucket: &str, via: &[&str]) -> String {
    let queue_url = env.queue.url.clone();
    let args = [
        &[
            "setup",
            "notifications",
            "--bucket",
            bucket,
            "--queue-url",
            &queue_url,
        ][..],
        via,
    ]
    .concat();
    let out = env.annotable(&args);
    assert!(
        out.status.success(),
        "setup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `doctor`'s line for the bucket's route.
fn doctor(env: &Env, bucket: &str) -> String {
    let out = env.annotable(&["doctor", "--bucket", bucket]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.contains(&format!("bucket {bucket}:")))
        .unwrap_or_else(|| panic!("no line for {bucket}:\n{stdout}"))
        .to_string()
}

/// Starts serve, runs the workload while it consumes, waits for the queue to drain, stops it
/// with SIGTERM and checks the table against S3.
async fn converge_while_s3_changes(env: &mut Env, seed: u64) -> TestResult {
    let mut serve = env.spawn_serve(&[], &[]);
    let mut workload = Workload::new(seed, 30);
    let ops = workload.run(&env.stack.s3, 240).await;
    assert!(ops >= 220);
    env.wait_until_drained(Duration::from_secs(180)).await;
    // Deliveries through a topic or a bus may trail the last write by a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.wait_until_drained(Duration::from_secs(60)).await;
    serve.signal(15);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
    assert!(status.success(), "{}", serve.log());
    assert_converged(env).await;
    env.assert_nothing_left(&serve.log()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_enveloped_and_raw_deliveries_converge_while_s3_changes() -> TestResult {
    let mut env = Env::start_with(30, 5, false).await;
    let sns = aws_sdk_sns::Client::new(&env.stack.stack.sdk_config());
    let topic = |name: &'static str| {
        let sns = sns.clone();
        async move {
            sns.create_topic()
                .name(name)
                .send()
                .await
                .map(|t| t.topic_arn.unwrap_or_default())
        }
    };
    let enveloped = topic("annotable-enveloped").await?;
    let raw = topic("annotable-raw").await?;

    let first = setup(
        &env,
        VERSIONED,
        &["--via", "sns", "--topic-arn", &enveloped],
    );
    for change in [
        "topic policy of",
        "subscribed",
        "(enveloped delivery)",
        "now go to topic",
        "queue policy of",
        "sns.amazonaws.com",
    ] {
        assert!(first.contains(change), "{change:?} missing from:\n{first}");
    }
    let again = setup(
        &env,
        VERSIONED,
        &["--via", "sns", "--topic-arn", &enveloped],
    );
    assert!(
        again.contains("nothing changed"),
        "not idempotent:\n{again}"
    );
    // Raw delivery for the other bucket; asked again, the subscription is switched, not doubled.
    setup(&env, PLAIN, &["--via", "sns", "--topic-arn", &raw]);
    let switched = setup(
        &env,
        PLAIN,
        &[
            "--via",
            "sns",
            "--topic-arn",
            &raw,
            "--raw-message-delivery",
        ],
    );
    assert!(
        switched.contains("RawMessageDelivery is now true"),
        "{switched}"
    );
    let subscriptions = sns
        .list_subscriptions_by_topic()
        .topic_arn(&raw)
        .send()
        .await?;
    assert_eq!(subscriptions.subscriptions().len(), 1, "{subscriptions:?}");
    let doctor = doctor(&env, VERSIONED);
    assert!(
        doctor.starts_with("ok") && doctor.contains(&enveloped),
        "{doctor}"
    );

    converge_while_s3_changes(&mut env, 0x5a5).await
}

/// The emulator's EventBridge events carry no `version-id` (AWS's do), so an event about an
/// older version of a versioned object would name the current one: only the unversioned bucket
/// is routed through EventBridge here, beside the versioned one sending to the queue directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_delivery_converges_beside_a_direct_queue_while_s3_changes() -> TestResult {
    let mut env = Env::start_with(30, 5, false).await;
    setup(&env, VERSIONED, &[]);
    let first = setup(&env, PLAIN, &["--via", "eventbridge"]);
    for change in [
        "EventBridge's default bus",
        &format!("EventBridge rule annotable-{PLAIN}: matches"),
        "now targets",
        "events.amazonaws.com",
    ] {
        assert!(first.contains(change), "{change:?} missing from:\n{first}");
    }
    let again = setup(&env, PLAIN, &["--via", "eventbridge"]);
    assert!(
        again.contains("nothing changed"),
        "not idempotent:\n{again}"
    );
    // The unversioned bucket's events reach the queue through EventBridge only.
    let conf = env
        .stack
        .s3
        .get_bucket_notification_configuration()
        .bucket(PLAIN)
        .send()
        .await?;
    assert!(conf.event_bridge_configuration().is_some());
    assert!(conf.queue_configurations().is_empty());
    let doctor = doctor(&env, PLAIN);
    assert!(
        doctor.starts_with("ok") && doctor.contains(&format!("rule annotable-{PLAIN}")),
        "{doctor}"
    );

    converge_while_s3_changes(&mut env, 0xeb).await
}
