//! `annotable serve` end to end against the emulator, as a real child process: convergence of a
//! random workload, kill -9 and restart, redelivery under a short visibility timeout, poison
//! messages, SIGTERM during a held batch, and two processes sharing a PostgreSQL catalog.

use std::time::{Duration, Instant};

use annotable_tests::{
    Env, PLAIN, TestResult, VERSIONED, Workload, assert_converged, assert_object_examples_answer,
    assert_objects_converged,
};
use aws_sdk_s3::types::{
    BucketVersioningStatus, Event as S3Event, NotificationConfiguration, QueueConfiguration,
    VersioningConfiguration,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_converges_to_s3_after_a_random_workload() -> TestResult {
    let mut env = Env::start(30, 5).await;
    let mut workload = Workload::new(0x5eed, 60);
    let ops = workload.run(&env.stack.s3, 520).await;
    assert!(ops >= 500);
    let (status, log) = env.serve_until_idle("3", &[]);
    assert!(status.success(), "serve failed: {status}\n{log}");
    assert_converged(&env).await;
    assert_objects_converged(&env).await;
    assert_object_examples_answer(&env).await;
    let restated = env.restated().await;
    assert!(restated.is_empty(), "restating rows: {restated:#?}");
    // Nothing left behind, nothing poisoned.
    env.assert_nothing_left(&log).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_maintenance_on_compacts_while_it_commits_and_still_converges() -> TestResult {
    let mut env = Env::start(30, 5).await;
    let mut workload = Workload::new(0xc0de, 40);
    let ops = workload.run(&env.stack.s3, 300).await;
    assert!(ops >= 280);
    // Small batches (many commits) and maintenance every second, in the same process.
    let (status, log) = env.serve_until_idle(
        "4",
        &[
            ("ANNOTABLE_SERVE_FLUSH_AGE_MS", "100"),
            ("ANNOTABLE_SERVE_FLUSH_ROWS", "20"),
            ("ANNOTABLE_MAINTAIN_SERVE_INTERVAL_SECS", "1"),
        ],
    );
    assert!(status.success(), "serve failed: {status}\n{log}");
    assert_converged(&env).await;
    assert!(env.restated().await.is_empty(), "restating rows");
    assert_eq!(env.queue_depth(&env.queue.clone()).await, (0, 0));
    // Files before/after a round say little while serve keeps adding them; a committed
    // compaction snapshot is the evidence.
    let compacted = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "rewrite committed" && l["kind"] == "compaction")
        .count();
    assert!(compacted > 0, "no maintenance round compacted:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_and_restates_nothing() -> TestResult {
    // A visibility timeout short enough that what a killed process held comes back quickly.
    let mut env = Env::start(3, 50).await;
    let mut workload = Workload::new(0xc0ffee, 50);
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..6 {
        workload.run(&env.stack.s3, 90).await;
        let serve = env.spawn_serve(&[], &[("ANNOTABLE_SERVE_FLUSH_AGE_MS", "300")]);
        std::thread::sleep(Duration::from_millis(rng.u64(300..2_500)));
        serve.signal(9);
        drop(serve);
        eprintln!("round {round}: killed");
    }
    let (status, log) = env.serve_until_idle("5", &[]);
    assert!(status.success(), "final serve failed: {status}\n{log}");
    assert_converged(&env).await;
    assert_objects_converged(&env).await;
    let restated = env.restated().await;
    assert!(
        restated.is_empty(),
        "restating rows after kill -9 and restart: {restated:#?}"
    );
    assert_eq!(env.queue_depth(&env.queue.clone()).await, (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_past_the_visibility_timeout_is_extended_not_redelivered() -> TestResult {
    let mut env = Env::start(2, 50).await;
    Workload::new(42, 30).run(&env.stack.s3, 80).await;
    // Batches are held 7 s: three and a half visibility timeouts.
    let mut serve = env.spawn_serve(
        &["--exit-when-idle", "3"],
        &[("ANNOTABLE_SERVE_FLUSH_AGE_MS", "7000")],
    );
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(180)));
    assert!(status.success(), "{}", serve.log());
    let stopped = serve.lines_with("serve stopped");
    let report = stopped
        .first()
        .unwrap_or_else(|| panic!("no final line:\n{}", serve.log()));
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert!(n("received") > 0);
    assert_eq!(
        n("received"),
        n("acked"),
        "a message was received twice: {report}"
    );
    assert!(
        n("extended") > 0,
        "the heartbeat never extended a message: {report}"
    );
    assert_converged(&env).await;
    assert!(env.restated().await.is_empty());
    Ok(())
}

/// Issue 19, item 14: with one message resolved at a time and the catalog gone for 5 s, the
/// stages fill up and each receiver waits with the rest of its poll in hand for five
/// visibility timeouts. Those messages are held from receipt, so the heartbeat extends them
/// and none is received twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_behind_back_pressure_are_extended_not_redelivered() -> TestResult {
    let mut env = Env::start(1, 50).await;
    let switch = annotable_tests::TcpSwitch::start(5432).await;
    env.use_postgres_on(switch.port, "serve_backpressure");
    Workload::new(43, 30).run(&env.stack.s3, 100).await;
    let mut serve = env.spawn_serve(
        &["--exit-when-idle", "4"],
        &[
            ("ANNOTABLE_SERVE_MESSAGES_IN_FLIGHT", "1"),
            ("ANNOTABLE_SERVE_FLUSH_ROWS", "1"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.queue_depth(&env.queue.clone()).await.1 == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing received\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    switch.set(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    switch.set(true);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(180)));
    assert!(status.success(), "{}", serve.log());
    let stopped = serve.lines_with("serve stopped");
    let report = stopped
        .first()
        .unwrap_or_else(|| panic!("no final line:\n{}", serve.log()));
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert_eq!(
        n("received"),
        n("acked"),
        "a message was received twice: {report}"
    );
    assert!(n("extended") > 0, "{report}");
    assert_converged(&env).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_reach_the_dead_letter_queue_and_the_loop_lives_on() -> TestResult {
    let mut env = Env::start(30, 2).await;
    let sqs = env.stack.sqs.clone();
    let garbage = "}{garbage ".repeat(1 << 17); // 1 MiB of it (SQS refuses control characters)
    let bodies = [
        "this is not JSON".to_string(),
        r#"{"Message":"hello","Foo":1}"#.to_string(),
        r#"{"Records":[{"eventVersion":"3.0","eventSource":"aws:s3","eventName":"ObjectAnnotation:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#.to_string(),
        garbage[..(1 << 20)].to_string(),
    ];
    for body in &bodies {
        sqs.send_message()
            .queue_url(&env.queue.url)
            .message_body(body)
            .send()
            .await?;
    }
    // A real annotation among them.
    env.stack
        .put_object(annotable_tests::PLAIN, "ok.txt", "x")
        .await;
    env.stack
        .put_annotation(annotable_tests::PLAIN, "ok.txt", None, "status", "fine")
        .await;
    let (status, log) = env.serve_until_idle("4", &[]);
    assert!(status.success(), "{log}");
    assert_converged(&env).await;
    let rows = env.sql("SELECT count(*) FROM annotation_journal WHERE bucket <> 'serve-plain' OR object_key <> 'ok.txt'").await;
    assert_eq!(rows[0][0].as_deref(), Some("0"), "poison wrote rows");
    // Everything poisonous is in the DLQ (SQS moves it on the receive after the limit).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (visible, _) = env.queue_depth(&env.dlq.clone()).await;
        if visible as usize == bodies.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DLQ holds {visible} of {} poison messages\n{log}",
            bodies.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id_line in log.lines().filter(|l| l.contains("poison message")) {
        assert!(
            id_line.contains("message_id"),
            "poison log line without message id: {id_line}"
        );
    }
    assert!(log.contains("poison message"), "no poison log line:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_and_deletes_what_is_held_within_the_deadline() -> TestResult {
    let mut env = Env::start(60, 5).await;
    Workload::new(9, 30).run(&env.stack.s3, 120).await;
    // Nothing is flushed by age or size before the signal: everything is held.
    let mut serve = env.spawn_serve(
        &["--shutdown-timeout", "20"],
        &[("ANNOTABLE_SERVE_FLUSH_AGE_MS", "600000")],
    );
    let started = Instant::now();
    loop {
        let (visible, in_flight) = env.queue_depth(&env.queue.clone()).await;
        if visible == 0 && in_flight > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve never received the backlog:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = Instant::now();
    serve.signal(15);
    let status = serve.wait(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        serve.log()
    );
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}, over the 20 s deadline"
    );
    // Every message was deleted, so every row must be committed: no second run.
    assert_eq!(
        env.queue_depth(&env.queue.clone()).await,
        (0, 0),
        "{}",
        serve.log()
    );
    assert_converged(&env).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_queue_with_a_postgresql_catalog_converge() -> TestResult {
    let mut env = Env::start(30, 5).await;
    env.use_postgres("serve_two");
    Workload::new(77, 50).run(&env.stack.s3, 300).await;
    let mut a = env.spawn_serve(&["--exit-when-idle", "4"], &[]);
    let mut b = env.spawn_serve(&["--exit-when-idle", "4"], &[]);
    let (sa, sb) = (
        a.wait(Duration::from_secs(240)),
        b.wait(Duration::from_secs(240)),
    );
    assert!(
        sa.success() && sb.success(),
        "a: {sa}\n{}\nb: {sb}\n{}",
        a.log(),
        b.log()
    );
    assert!(
        a.acked() > 0 && b.acked() > 0,
        "one process did all the work"
    );
    assert_converged(&env).await;
    assert_eq!(env.queue_depth(&env.queue.clone()).await, (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_throttling_and_5xx_are_retried_and_the_view_converges() -> TestResult {
    let mut env = Env::start(30, 50).await;
    Workload::new(1234, 40).run(&env.stack.s3, 200).await;
    // S3 (only) goes through a proxy that fails 30% of the requests with SlowDown or 500.
    let proxy = annotable_tests::FaultProxy::start(env.stack.stack.port(), 30).await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut serve = env.spawn_serve(
        &["--exit-when-idle", "4"],
        &[("AWS_ENDPOINT_URL_S3", &endpoint)],
    );
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(240)));
    assert!(status.success(), "{}", serve.log());
    let injected = proxy.injected.load(std::sync::atomic::Ordering::Relaxed);
    let forwarded = proxy.forwarded.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        injected >= 20 && forwarded > injected,
        "the proxy injected {injected} faults and forwarded {forwarded} calls"
    );
    assert_converged(&env).await;
    assert!(env.restated().await.is_empty());
    assert_eq!(
        env.queue_depth(&env.dlq.clone()).await,
        (0, 0),
        "a throttled message was dead-lettered"
    );
    Ok(())
}

/// Issue 19's first reproduction: in a bucket whose versioning is suspended, a plain DELETE
/// replaces the null version with a delete marker (event `DeleteMarkerCreated`, version
/// `null`) and its annotations are gone; deleting that marker again (the undelete path) must
/// not dead-letter anything. Annotations of the older real version stay throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_a_versioning_suspended_bucket_takes_the_null_versions_annotations()
-> TestResult {
    // Each run ends with a long poll the emulator may still answer after the process is gone:
    // a short visibility timeout brings such a message back for the next run.
    let mut env = Env::start(2, 5).await;
    let s3 = env.stack.s3.clone();
    let v1 = env.stack.put_object(VERSIONED, "k", "v1").await;
    let v1 = v1.ok_or("no version id from a versioned bucket")?;
    env.stack
        .put_annotation(VERSIONED, "k", Some(&v1), "kept", "on v1")
        .await;
    s3.put_bucket_versioning()
        .bucket(VERSIONED)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await?;
    env.stack.put_object(VERSIONED, "k", "null body").await;
    env.stack
        .put_annotation(VERSIONED, "k", Some("null"), "label", "on the null version")
        .await;
    let (status, log) = env.serve_until_idle("3", &[]);
    assert!(status.success(), "{log}");
    assert_converged(&env).await;
    let on_null = |view: &std::collections::BTreeSet<annotable_tests::Row>| {
        view.iter()
            .any(|r| r.object_key == "k" && r.object_version_id.is_none())
    };
    assert!(
        on_null(&env.view().await),
        "the null version's annotation was indexed"
    );

    s3.delete_object().bucket(VERSIONED).key("k").send().await?;
    let (status, log) = env.serve_until_idle("6", &[]);
    assert!(status.success(), "{log}");
    assert_converged(&env).await;
    assert!(
        !on_null(&env.view().await),
        "the null version is gone, and with it its annotation"
    );

    // Undelete: remove the marker (itself the null version now).
    s3.delete_object()
        .bucket(VERSIONED)
        .key("k")
        .version_id("null")
        .send()
        .await?;
    let (status, log) = env.serve_until_idle("6", &[]);
    assert!(status.success(), "{log}");
    assert_converged(&env).await;
    assert!(!log.contains("poison message"), "{log}");
    env.assert_nothing_left(&log).await;
    Ok(())
}

/// Messages written by hand: an annotation event without a `versionId` for an object of a
/// versioned bucket is stored under the version S3 answered for; a record that cannot be
/// parsed is reported and skipped while its siblings are processed; odd `eventTime` and
/// `sequencer` values are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_a_version_id_and_bad_records_lose_nothing() -> TestResult {
    let mut env = Env::start_with(30, 2, false).await;
    let v1 = env.stack.put_object(VERSIONED, "k", "one").await;
    let v1 = v1.ok_or("no version id from a versioned bucket")?;
    env.stack
        .put_annotation(VERSIONED, "k", Some(&v1), "label", "on v1")
        .await;
    env.stack.put_object(PLAIN, "p", "x").await;
    env.stack
        .put_annotation(PLAIN, "p", None, "note", "plain")
        .await;
    let record = |bucket: &str, key: &str, name: &str| {
        serde_json::json!({
            "eventVersion": "2.6", "eventSource": "aws:s3",
            "eventTime": "not a time", "eventName": "ObjectAnnotation:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "sequencer": "zz"}},
            "objectAnnotation": [{"name": name}]
        })
    };
    let bad = serde_json::json!({"eventVersion": "2.6", "eventName": "ObjectAnnotation:Put"});
    let body = serde_json::json!({
        "Records": [record(VERSIONED, "k", "label"), bad, record(PLAIN, "p", "note")]
    });
    let sent = env
        .stack
        .sqs
        .send_message()
        .queue_url(&env.queue.url)
        .message_body(body.to_string())
        .send()
        .await?;
    let message_id = sent.message_id().unwrap_or_default().to_string();
    let (status, log) = env.serve_until_idle("3", &[]);
    assert!(status.success(), "{log}");
    assert_converged(&env).await;
    let versions = env
        .sql("SELECT DISTINCT object_version_id FROM annotation_journal WHERE object_key = 'k'")
        .await;
    assert_eq!(
        versions,
        vec![vec![Some(v1.clone())]],
        "rows under {versions:?}"
    );
    let reported = log
        .lines()
        .any(|l| l.contains("cannot be parsed") && l.contains(&message_id));
    assert!(
        reported,
        "the bad record is reported with its message id:\n{log}"
    );
    env.assert_nothing_left(&log).await;
    Ok(())
}

/// `setup` subscribes lifecycle expirations; `doctor` finds a bucket that misses an event type
/// or notifies another queue, and prints the command that mends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_subscribes_lifecycle_expirations_and_doctor_checks_queue_and_events() -> TestResult {
    let env = Env::start(30, 2).await;
    let s3 = env.stack.s3.clone();
    let ours = |c: &aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput| {
        c.queue_configurations()
            .iter()
            .filter(|q| q.queue_arn() == env.queue.arn)
            .flat_map(|q| q.events().iter().map(|e| e.as_str().to_string()))
            .collect::<Vec<_>>()
    };
    let conf = s3
        .get_bucket_notification_configuration()
        .bucket(VERSIONED)
        .send()
        .await?;
    assert!(
        ours(&conf).contains(&"s3:LifecycleExpiration:*".to_string()),
        "{:?}",
        ours(&conf)
    );
    let doctor = |bucket: &str| {
        let out = env.annotable(&["doctor", "--bucket", bucket]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .lines()
            .find(|l| l.contains(&format!("bucket {bucket}:")))
            .unwrap_or_else(|| panic!("no line for {bucket}:\n{stdout}"))
            .to_string()
    };
    let line = doctor(VERSIONED);
    assert!(line.starts_with("ok"), "{line}");
    // Objects are on: the version listing serve makes for object events is probed too.
    let out = env.annotable(&["doctor", "--bucket", VERSIONED]);
    let said = String::from_utf8_lossy(&out.stdout);
    let probe = format!("version listing of bucket {VERSIONED} (objects)");
    assert!(
        said.lines()
            .any(|l| l.starts_with("ok") && l.contains(&probe) && l.contains("ListObjectVersions")),
        "{said}"
    );

    // The configuration an older `setup` wrote: no lifecycle expirations.
    let only = |arn: &str, events: &[&str]| {
        QueueConfiguration::builder()
            .queue_arn(arn)
            .set_events(Some(events.iter().map(|e| S3Event::from(*e)).collect()))
            .build()
            .map(|q| {
                NotificationConfiguration::builder()
                    .queue_configurations(q)
                    .build()
            })
    };
    let old = [
        "s3:ObjectAnnotation:*",
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
    ];
    s3.put_bucket_notification_configuration()
        .bucket(PLAIN)
        .notification_configuration(only(&env.queue.arn, &old)?)
        .send()
        .await?;
    let line = doctor(PLAIN);
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("s3:LifecycleExpiration:*"), "{line}");
    assert!(
        line.contains(&format!("annotable setup notifications --bucket {PLAIN}")),
        "{line}"
    );
    // Everything, but to another queue.
    let other = env.stack.queue("elsewhere", &[]).await;
    s3.put_bucket_notification_configuration()
        .bucket(PLAIN)
        .notification_configuration(only(&other.arn, &annotable::setup::EVENTS)?)
        .send()
        .await?;
    let line = doctor(PLAIN);
    assert!(
        line.starts_with("FAIL") && line.contains("not this queue"),
        "{line}"
    );
    // setup mends it, keeping the other queue's configuration.
    let out = env.annotable(&[
        "setup",
        "notifications",
        "--bucket",
        PLAIN,
        "--queue-url",
        &env.queue.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = doctor(PLAIN);
    assert!(line.starts_with("ok"), "{line}");
    let conf = s3
        .get_bucket_notification_configuration()
        .bucket(PLAIN)
        .send()
        .await?;
    assert_eq!(conf.queue_configurations().len(), 2, "merged, not replaced");
    Ok(())
}

/// The way it breaks: S3 keeps changing while two `serve` processes on one PostgreSQL
/// catalog consume the queue, one of them is killed (-9) and restarted at random points, and
/// `maintain --compact` runs beside them. When the writes stop and the queue drains, every
/// column of the view equals S3. (Before safe suppression, a process that suppressed a
/// delete on a cache missing the other writer's PUT lost that delete for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_changing_under_two_writers_killed_at_random_with_maintenance_converges() -> TestResult {
    let mut env = Env::start(3, 50).await;
    env.use_postgres("serve_chaos");
    let s3 = env.stack.s3.clone();
    let workload = tokio::spawn(async move {
        let mut workload = Workload::new(0xfeed, 25);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut ops = 0;
        for _ in 0..30 {
            ops += workload.run(&s3, 15).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
        }
        ops
    });
    let extra = [("ANNOTABLE_SERVE_FLUSH_AGE_MS", "200")];
    let mut writers = [env.spawn_serve(&[], &extra), env.spawn_serve(&[], &extra)];
    let mut rng = fastrand::Rng::with_seed(19);
    let (mut kills, mut maintenance) = (0, Vec::new());
    while !workload.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1_500))).await;
        let i = rng.usize(0..writers.len());
        writers[i].signal(9);
        writers[i] = env.spawn_serve(&[], &extra);
        kills += 1;
        if kills % 3 == 0 {
            maintenance.push(env.spawn(&["maintain", "--compact"], &[]));
        }
    }
    let ops = workload.await?;
    assert!(ops >= 400, "{ops} S3 writes");
    assert!(
        kills >= 4,
        "only {kills} kills: the workload ended too soon to prove anything"
    );
    for w in &writers {
        w.signal(9);
    }
    for m in &mut maintenance {
        tokio::task::block_in_place(|| m.wait(Duration::from_secs(120)));
    }
    // Two fresh processes drain what is left (killed work comes back after 3 s).
    let mut a = env.spawn_serve(&["--exit-when-idle", "5"], &[]);
    let mut b = env.spawn_serve(&["--exit-when-idle", "5"], &[]);
    let (sa, sb) = tokio::task::block_in_place(|| {
        (
            a.wait(Duration::from_secs(240)),
            b.wait(Duration::from_secs(240)),
        )
    });
    assert!(sa.success() && sb.success(), "{}\n{}", a.log(), b.log());
    assert_converged(&env).await;
    assert_objects_converged(&env).await;
    env.assert_nothing_left(&format!("{}\n{}", a.log(), b.log()))
        .await;
    Ok(())
}

/// Issue 19, item 6: a catalog outage longer than the commit retries, on a queue whose
/// dead-letter limit is two receives. Held messages stay held (extended, retried), `/readyz`
/// says why serve is not ready while `/healthz` stays alive, nothing reaches the dead-letter queue, and once the catalog
/// is back everything is committed. (Before: each failed batch was released with a backoff,
/// so by the third receive the messages were dead-lettered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_outage_holds_messages_and_dead_letters_nothing() -> TestResult {
    let mut env = Env::start(5, 2).await;
    let switch = annotable_tests::TcpSwitch::start(5432).await;
    env.use_postgres_on(switch.port, "serve_outage");
    let http = annotable_tests::free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let mut workload = Workload::new(0x07a6e, 20);
    workload.run(&env.stack.s3, 40).await;
    // An outage is not a wedge: /healthz stays 200 however long the outage outlasts this.
    let mut serve = env.spawn_serve(
        &[],
        &[
            ("ANNOTABLE_SERVE_HTTP_ADDR", &http_addr),
            ("ANNOTABLE_SERVE_WEDGED_AFTER_SECS", "3"),
        ],
    );
    env.wait_until_drained(Duration::from_secs(120)).await;
    assert_eq!(
        annotable_tests::http_get(http, "/readyz")
            .await
            .map(|r| r.0),
        Some(200)
    );

    switch.set(false);
    workload.run(&env.stack.s3, 60).await;
    let outage = Instant::now();
    let mut said_why = None;
    while outage.elapsed() < Duration::from_secs(80) {
        if let Some((503, body)) = annotable_tests::http_get(http, "/readyz").await {
            said_why = Some(body);
            let alive = annotable_tests::http_get(http, "/healthz").await;
            assert_eq!(alive.as_ref().map(|r| r.0), Some(200), "{alive:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(
        env.queue_depth(&env.dlq.clone()).await,
        (0, 0),
        "dead-lettered during the outage\n{}",
        serve.log()
    );
    let said_why =
        said_why.unwrap_or_else(|| panic!("/readyz never said not ready\n{}", serve.log()));
    assert!(said_why.contains("commits to the table fail"), "{said_why}");

    switch.set(true);
    env.wait_until_drained(Duration::from_secs(120)).await;
    let ready = annotable_tests::http_get(http, "/readyz").await;
    assert_eq!(ready.as_ref().map(|r| r.0), Some(200), "{ready:?}");
    serve.signal(15);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
    assert!(status.success(), "{}", serve.log());
    assert_eq!(env.queue_depth(&env.dlq.clone()).await, (0, 0));
    assert!(
        serve.log().contains("commits work again"),
        "{}",
        serve.log()
    );
    assert_converged(&env).await;
    Ok(())
}

/// Issue 19, item 3: two serve processes, one whose clock runs 200 ms fast, while one
/// annotation is overwritten every few tens of milliseconds. Host-clock stamps let the fast
/// host's read of an older value outrank the other's read of a newer one for good; stamps
/// corrected towards S3's clock (its `Date` headers) end on S3's last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_clock_runs_fast_does_not_win_with_stale_reads() -> TestResult {
    let mut env = Env::start(30, 5).await;
    env.use_postgres("serve_skew");
    env.stack.put_object(VERSIONED, "hot", "x").await;
    env.stack.put_object(PLAIN, "hot", "x").await;
    let fast = [(annotable::aws::TEST_CLOCK_SHIFT_ENV, "200")];
    let mut a = env.spawn_serve(&["--exit-when-idle", "5"], &fast);
    let mut b = env.spawn_serve(&["--exit-when-idle", "5"], &[]);
    // Both have calibrated and are polling before the writes start.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut rng = fastrand::Rng::with_seed(200);
    for i in 0..120 {
        let bucket = if i % 2 == 0 { VERSIONED } else { PLAIN };
        let name = ["status", "owner"][rng.usize(0..2)];
        env.stack
            .put_annotation(bucket, "hot", None, name, &format!("value-{i}"))
            .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(20..60))).await;
    }
    let (sa, sb) = tokio::task::block_in_place(|| {
        (
            a.wait(Duration::from_secs(240)),
            b.wait(Duration::from_secs(240)),
        )
    });
    assert!(sa.success() && sb.success(), "{}\n{}", a.log(), b.log());
    assert_converged(&env).await;
    let corrected = a
        .lines_with("this host's clock disagrees with S3's")
        .first()
        .and_then(|l| l["correction_ms"].as_f64());
    assert!(
        corrected.is_some_and(|ms| (-220.0..=-150.0).contains(&ms)),
        "the fast host's correction: {corrected:?}\n{}",
        a.log()
    );
    assert!(
        a.acked() > 0 && b.acked() > 0,
        "one process did all the work"
    );
    Ok(())
}

/// Issue 19 item 4: object versions carrying far more payload than the read buffer (an object
/// with 60 annotations of 1 MiB, copied 8 times: 540 MiB to read) are drained by `serve`, the
/// writes landing while it runs, and walked by `backfill`, both with a 16 MiB read buffer. Both
/// converge, and neither process's peak memory grows with what it read: it stays within a fixed
/// allowance of an idle run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_annotation_sets_are_read_in_parts_under_the_read_buffer() -> TestResult {
    const MIB: usize = 1 << 20;
    const ANNOTATIONS: usize = 60;
    const COPIES: usize = 8;
    let buffer = (16 * MIB).to_string();
    let limits = [
        ("ANNOTABLE_SERVE_READ_BUFFER_BYTES", buffer.as_str()),
        ("ANNOTABLE_BACKFILL_READ_BUFFER_BYTES", buffer.as_str()),
    ];
    // The idle run's last long poll may take a message after it exited: a short visibility
    // timeout brings it back for the next run.
    let mut env = Env::start(2, 5).await;

    // An idle run (the setup's test events only): the process's own footprint.
    let mut idle = env.spawn_serve(&["--exit-when-idle", "3"], &limits);
    let (status, baseline) =
        tokio::task::block_in_place(|| idle.wait_measuring(Duration::from_secs(120)));
    assert!(status.success(), "{}", idle.log());

    // S3 changes while serve runs: the annotations and the copies arrive as it reads.
    let mut serve = env.spawn_serve(&["--exit-when-idle", "5"], &limits);
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.stack.put_object(PLAIN, "big", "body").await;
    for i in 0..ANNOTATIONS {
        let mut payload = format!("{i:04}-");
        payload.extend(std::iter::repeat_n(
            (b'a' + (i % 26) as u8) as char,
            MIB - 5,
        ));
        env.stack
            .put_annotation(PLAIN, "big", None, &format!("n{i:03}"), &payload)
            .await;
    }
    for c in 0..COPIES {
        env.stack
            .s3
            .copy_object()
            .bucket(PLAIN)
            .key(format!("copy-{c}"))
            .copy_source(format!("{PLAIN}/big"))
            .send()
            .await?;
    }

    let (status, peak) =
        tokio::task::block_in_place(|| serve.wait_measuring(Duration::from_secs(600)));
    assert!(status.success(), "{}", serve.log());
    let log = serve.log();
    env.assert_nothing_left(&log).await;
    assert_converged(&env).await;
    let read_mib = (ANNOTATIONS * (COPIES + 1)) as u64;
    let grew = peak.saturating_sub(baseline) >> 20;
    eprintln!(
        "serve: idle peak {} MiB, peak {} MiB after reading {read_mib} MiB of payloads with a 16 MiB read buffer",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        grew <= 160,
        "serve's peak memory grew by {grew} MiB over an idle run's ({} MiB) while reading {read_mib} MiB with a 16 MiB read buffer",
        baseline >> 20
    );
    let parts = serve.lines_with(r#""message":"committed""#).len();
    assert!(
        parts > COPIES * 2,
        "each copy's set is committed in several parts ({parts} commits)"
    );

    let mut backfill = env.spawn(&["backfill", "--bucket", PLAIN], &limits);
    let (status, peak) =
        tokio::task::block_in_place(|| backfill.wait_measuring(Duration::from_secs(600)));
    assert!(status.success(), "{}", backfill.log());
    assert_converged(&env).await;
    let grew = peak.saturating_sub(baseline) >> 20;
    eprintln!(
        "backfill: peak {} MiB after reading {read_mib} MiB of payloads with a 16 MiB read buffer",
        peak >> 20
    );
    assert!(
        grew <= 160,
        "backfill's peak memory grew by {grew} MiB over an idle serve's ({} MiB) while reading {read_mib} MiB with a 16 MiB read buffer",
        baseline >> 20
    );
    Ok(())
}

/// `objects.enabled = false`: annotations only. No object journal is created, no key is listed
/// for object events, and the annotations still equal S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_objects_off_serve_keeps_annotations_only() -> TestResult {
    let mut env = Env::start(30, 5).await;
    let mut workload = Workload::new(0x0ff, 20);
    assert!(workload.run(&env.stack.s3, 80).await >= 80);
    let (status, log) = env.serve_until_idle("3", &[("ANNOTABLE_OBJECTS_ENABLED", "false")]);
    assert!(status.success(), "serve failed: {status}\n{log}");
    assert_converged(&env).await;
    let query = env.annotable(&["query", "SELECT count(*) FROM object_journal"]);
    let said = String::from_utf8_lossy(&query.stderr);
    assert!(
        !query.status.success() && said.contains("object_journal"),
        "object_journal exists with objects off: {said}"
    );
    Ok(())
}
