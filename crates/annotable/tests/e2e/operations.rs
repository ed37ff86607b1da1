//! What an orchestrator and an operator rely on, end to end: `/metrics` scraped during a
//! workload and parsed by a real OpenMetrics parser (every metric the README documents is there,
//! and the ones the workload drives move), `/healthz` failing when serve is wedged and only then,
//! and the bucket guards (`aws.allowed_buckets`, `aws.expected_bucket_owner`) refusing what they
//! must, saying so in the log, and indexing nothing of it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use annotable_tests::{
    Env, PLAIN, TestResult, VERSIONED, Workload, assert_converged, free_port, http_get,
    py_tools_python,
};

/// The metric names of the README's table.
fn documented_metrics() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .unwrap_or_default();
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `annotable_"))
        .filter_map(|rest| rest.split(['`', '{']).next())
        .map(|name| format!("annotable_{name}"))
        .collect()
}

/// One scrape, parsed by prometheus_client's OpenMetrics parser (strict: a malformed exposition
/// fails it): sample name → value, summed over labels.
fn parse(exposition: &str) -> BTreeMap<String, f64> {
    const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out[s.name] = out.get(s.name, 0.0) + s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(py_tools_python())
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(exposition.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// A documented metric's value in a scrape: the sample itself (counters, gauges) or, for a
/// histogram, its `_count`.
fn value(samples: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    samples
        .get(name)
        .or_else(|| samples.get(&format!("{name}_count")))
        .copied()
}

async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, body) = http_get(port, "/metrics")
        .await
        .unwrap_or_else(|| panic!("/metrics did not answer"));
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_all_there_parse_and_move_during_a_workload() -> TestResult {
    // A visibility timeout shorter than a batch's age, so the heartbeat extends messages.
    let mut env = Env::start(4, 5).await;
    let proxy = annotable_tests::FaultProxy::start(env.stack.stack.port(), 10).await;
    let s3_endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let http = free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let mut serve = env.spawn_serve(
        &[],
        &[
            ("ANNOTABLE_SERVE_HTTP_ADDR", &http_addr),
            ("ANNOTABLE_SERVE_FLUSH_AGE_MS", "3000"),
            ("AWS_ENDPOINT_URL_S3", &s3_endpoint),
        ],
    );
    let started = Instant::now();
    while http_get(http, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = scrape(http).await;

    let mut workload = Workload::new(0x3e7, 20);
    workload.run(&env.stack.s3, 120).await;
    env.stack
        .sqs
        .send_message()
        .queue_url(&env.queue.url)
        .message_body("{\"not\": \"a notification\"}")
        .send()
        .await?;
    // An event that needs no row, counted as ignored.
    env.stack
        .sqs
        .send_message()
        .queue_url(&env.queue.url)
        .message_body(format!(
            r#"{{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-12-03T00:00:00Z","Bucket":"{PLAIN}","RequestId":"r","HostId":"h"}}"#
        ))
        .send()
        .await?;
    env.wait_until_drained(Duration::from_secs(180)).await;
    // The refresher folds the last commits into the annotations table a few seconds later.
    let refreshed_by = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = scrape(http).await;
        let refreshes = value(&after, "annotable_state_refreshes_total").unwrap_or(0.0);
        if refreshes > value(&before, "annotable_state_refreshes_total").unwrap_or(0.0)
            || Instant::now() > refreshed_by
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(http_get(http, "/healthz").await.map(|r| r.0), Some(200));

    let documented = documented_metrics();
    assert!(documented.len() >= 20, "the README's table: {documented:?}");
    // Moved by nothing this test does: the faults they count (a failed receive or delete, a
    // released message, a failed refresh) are driven by the serve tests that cause them; the
    // gauges go either way.
    let still: BTreeSet<&str> = [
        "annotable_messages_failed_total",
        "annotable_messages_delete_failed_total",
        "annotable_receive_errors_total",
        "annotable_state_refresh_failures_total",
        "annotable_clock_correction_seconds",
        "annotable_clock_uncertainty_seconds",
        "annotable_state_lag_seconds",
    ]
    .into();
    for name in &documented {
        let (Some(was), Some(is)) = (value(&before, name), value(&after, name)) else {
            panic!("{name} is documented but not exported: {after:#?}");
        };
        if !still.contains(name.as_str()) {
            assert!(is > was, "{name} did not move: {was} → {is}");
        }
    }
    // And nothing exported is undocumented.
    for sample in after.keys() {
        let family = ["_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|s| sample.strip_suffix(s))
            .unwrap_or(sample);
        assert!(
            documented.iter().any(|d| d == sample || d == family),
            "{sample} is exported but not in the README's table"
        );
    }
    assert!(value(&after, "annotable_messages_poisoned_total") >= Some(1.0));

    serve.signal(15);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
    assert!(status.success(), "{}", serve.log());
    assert_converged(&env).await;
    Ok(())
}

/// A catalog connection that hangs (no error, no answer) while messages are held is a wedge:
/// `/healthz` says so within `serve.wedged_after_secs`. Once the hung connection is cut (as a
/// keep-alive or a load balancer would), serve commits, is healthy again, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_held_work_stands_still_and_recovers_after() -> TestResult {
    let mut env = Env::start(30, 5).await;
    let switch = annotable_tests::TcpSwitch::start(5432).await;
    env.use_postgres_on(switch.port, "serve_wedge");
    let http = free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let mut workload = Workload::new(0x3ed9e, 20);
    workload.run(&env.stack.s3, 30).await;
    let mut serve = env.spawn_serve(
        &[],
        &[
            ("ANNOTABLE_SERVE_HTTP_ADDR", &http_addr),
            ("ANNOTABLE_SERVE_WEDGED_AFTER_SECS", "4"),
        ],
    );
    env.wait_until_drained(Duration::from_secs(120)).await;
    assert_eq!(http_get(http, "/healthz").await.map(|r| r.0), Some(200));

    switch.stall(true);
    workload.run(&env.stack.s3, 20).await;
    let stalled = Instant::now();
    let mut wedged = None;
    while stalled.elapsed() < Duration::from_secs(25) {
        if let Some((503, body)) = http_get(http, "/healthz").await {
            wedged = Some((stalled.elapsed(), body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (after, why) = wedged.unwrap_or_else(|| panic!("/healthz never failed\n{}", serve.log()));
    assert!(
        why.contains("wedged") && why.contains("serve.wedged_after_secs"),
        "{why}"
    );
    assert!(after >= Duration::from_secs(4), "wedged after {after:?}");

    switch.set(false);
    switch.stall(false);
    switch.set(true);
    env.wait_until_drained(Duration::from_secs(120)).await;
    assert_eq!(
        http_get(http, "/healthz").await.map(|r| r.0),
        Some(200),
        "{}",
        serve.log()
    );
    serve.signal(15);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
    assert!(status.success(), "{}", serve.log());
    assert_converged(&env).await;
    env.assert_nothing_left(&serve.log()).await;
    Ok(())
}

/// Rows of `bucket` only.
fn of(rows: &BTreeSet<annotable_tests::Row>, bucket: &str) -> BTreeSet<annotable_tests::Row> {
    rows.iter()
        .filter(|r| r.bucket == bucket)
        .cloned()
        .collect()
}

/// `aws.allowed_buckets` lets one bucket in: the other's notifications are refused (logged with
/// the key to change, dead-lettered, never indexed) while the allowed one converges. Then
/// `aws.expected_bucket_owner` naming another account than the one S3 says owns the buckets:
/// every read is refused and nothing more is indexed; with the right account, everything is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_guards_refuse_log_and_index_nothing() -> TestResult {
    let mut env = Env::start(30, 1).await;
    let mut workload = Workload::new(0x6a4d, 20);
    workload.run(&env.stack.s3, 80).await;
    let (status, log) = env.serve_until_idle("4", &[("ANNOTABLE_AWS_ALLOWED_BUCKETS", VERSIONED)]);
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "bucket {PLAIN} is not in the allowed_buckets list"
        )),
        "the refusal is not logged:\n{log}"
    );
    let plain_rows = env
        .sql(&format!(
            "SELECT count(*) FROM annotation_journal WHERE bucket = '{PLAIN}'"
        ))
        .await;
    assert_eq!(plain_rows, vec![vec![Some("0".to_string())]], "{log}");
    let truth = env.truth().await;
    assert!(!of(&truth, PLAIN).is_empty() && !of(&truth, VERSIONED).is_empty());
    assert_eq!(of(&env.view().await, VERSIONED), of(&truth, VERSIONED));
    let (dead, _) = env.queue_depth(&env.dlq.clone()).await;
    assert!(
        dead > 0,
        "the refused messages are kept on the dead-letter queue"
    );

    // Owner check: S3 (a proxy here) says account 111122223333 owns every bucket.
    let proxy = annotable_tests::FaultProxy::owned_by(env.stack.stack.port(), "111122223333").await;
    let s3_endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let before = env.view().await;
    workload.run(&env.stack.s3, 40).await;
    let (status, log) = env.serve_until_idle(
        "4",
        &[
            ("AWS_ENDPOINT_URL_S3", &s3_endpoint),
            ("ANNOTABLE_AWS_EXPECTED_BUCKET_OWNER", "999999999999"),
        ],
    );
    assert!(status.success(), "{log}");
    assert!(log.contains("AccessDenied"), "{log}");
    assert!(
        log.contains("expected_bucket_owner"),
        "the hint names the key:\n{log}"
    );
    assert_eq!(
        env.view().await,
        before,
        "indexed despite the owner mismatch"
    );

    // The right owner: the header is sent and matches, and a backfill of both buckets (every
    // version) indexes what the guards refused.
    for bucket in [VERSIONED, PLAIN] {
        let out = env.annotable_env(
            &["backfill", "--bucket", bucket, "--versions", "all"],
            &[
                ("AWS_ENDPOINT_URL_S3", &s3_endpoint),
                ("ANNOTABLE_AWS_EXPECTED_BUCKET_OWNER", "111122223333"),
            ],
        );
        assert!(
            out.status.success(),
            "backfill {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_converged(&env).await;
    Ok(())
}

/// `doctor` on a correct setup, then on each broken one it diagnoses, each with its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_each_broken_setup_and_prints_its_fix() -> TestResult {
    let mut env = Env::start(30, 5).await;
    env.stack.put_object(VERSIONED, "k", "x").await;
    // serve creates the journal.
    let (status, log) = env.serve_until_idle("2", &[]);
    assert!(status.success(), "{log}");
    let doctor = |extra: &[(&str, &str)]| {
        let out = env.annotable_env(&["doctor", "--bucket", VERSIONED], extra);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let line = |stdout: &str, what: &str| -> String {
        stdout
            .lines()
            .find(|l| l.contains(&format!("{what}:")))
            .unwrap_or_else(|| panic!("no line for {what}:\n{stdout}"))
            .to_string()
    };

    let (ok, stdout) = doctor(&[]);
    assert!(ok, "{stdout}");
    for what in [
        format!("bucket {VERSIONED}"),
        format!("annotation API of bucket {VERSIONED}"),
        "warehouse".to_string(),
        "table s3_metadata.annotation_journal".to_string(),
    ] {
        assert!(line(&stdout, &what).starts_with("ok"), "{stdout}");
    }

    // The queue policy lost the statement that lets the bucket send.
    env.stack
        .sqs
        .set_queue_attributes()
        .queue_url(&env.queue.url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::Policy,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sns.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"*"}]}"#,
        )
        .send()
        .await?;
    let (ok, stdout) = doctor(&[]);
    let bucket = line(&stdout, &format!("bucket {VERSIONED}"));
    assert!(!ok && bucket.starts_with("FAIL"), "{stdout}");
    assert!(
        bucket.contains("policy does not let the bucket send")
            && bucket.contains(&format!(
                "annotable setup notifications --bucket {VERSIONED}"
            )),
        "{bucket}"
    );
    let out = env.annotable(&[
        "setup",
        "notifications",
        "--bucket",
        VERSIONED,
        "--queue-url",
        &env.queue.url,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("queue policy of"));
    assert!(doctor(&[]).0, "the printed fix mends it");

    // A store without the annotation API.
    let proxy = annotable_tests::FaultProxy::without_annotation_api(env.stack.stack.port()).await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let (ok, stdout) = doctor(&[("AWS_ENDPOINT_URL_S3", &endpoint)]);
    let api = line(&stdout, &format!("annotation API of bucket {VERSIONED}"));
    assert!(
        !ok && api.starts_with("FAIL") && api.contains("no S3 annotation API"),
        "{stdout}"
    );

    // A table that is not there.
    let (ok, stdout) = doctor(&[("ANNOTABLE_TABLE", "not_created_yet")]);
    let table = line(&stdout, "table s3_metadata.not_created_yet");
    assert!(
        !ok && table.starts_with("FAIL") && table.contains("create it on their first run"),
        "{stdout}"
    );

    // A catalog nobody answers for.
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let (ok, stdout) = doctor(&[("ANNOTABLE_CATALOG_URI", &nowhere)]);
    let catalog = line(&stdout, &format!("catalog {nowhere}"));
    assert!(
        !ok && catalog.starts_with("FAIL") && catalog.contains("is the database reachable"),
        "{stdout}"
    );

    // A warehouse that cannot be written.
    let (ok, stdout) = doctor(&[(
        "ANNOTABLE_CATALOG_WAREHOUSE",
        "file:///proc/annotable-warehouse",
    )]);
    let warehouse = line(&stdout, "warehouse");
    assert!(
        !ok && warehouse.starts_with("FAIL") && warehouse.contains("cannot write"),
        "{stdout}"
    );
    Ok(())
}

/// `/readyz` fails, naming the queue, while `ReceiveMessage` fails (the queue was deleted), and
/// is ready again once the queue is back; `/healthz` stays alive throughout (nothing is held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_queue_cannot_be_read() -> TestResult {
    let mut env = Env::start(30, 5).await;
    let http = free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let mut serve = env.spawn_serve(&[], &[("ANNOTABLE_SERVE_HTTP_ADDR", &http_addr)]);
    let until = |status: u16, limit: Duration| async move {
        let start = Instant::now();
        loop {
            if let Some((s, body)) = http_get(http, "/readyz").await
                && s == status
            {
                return Some(body);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    assert!(
        until(200, Duration::from_secs(60)).await.is_some(),
        "{}",
        serve.log()
    );

    env.stack
        .sqs
        .delete_queue()
        .queue_url(&env.queue.url)
        .send()
        .await?;
    let why = until(503, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("/readyz stayed ready\n{}", serve.log()));
    assert!(
        why.contains("receiving from the queue fails") && why.contains(&env.queue.url),
        "{why}"
    );
    assert_eq!(http_get(http, "/healthz").await.map(|r| r.0), Some(200));

    env.stack.queue("serve-events", &[]).await;
    assert!(
        until(200, Duration::from_secs(60)).await.is_some(),
        "not ready again after the queue came back\n{}",
        serve.log()
    );
    serve.signal(15);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
    assert!(status.success(), "{}", serve.log());
    Ok(())
}
