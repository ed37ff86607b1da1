//! `serve` against the local emulator (in-process, release build), three figures:
//!
//! 1. **freshness**: annotation put → visible in `annotations`, p50/p99, at a steady
//!    `ANNOTABLE_BENCH_RATE` (50) events/s for `ANNOTABLE_BENCH_SECS` (30) s, default settings,
//!    with the current-state refresher on (the default) and off, and then with the previous
//!    default `serve.flush_age_ms` (2,000) beside the current one;
//! 2. **throughput**: a backlog of `ANNOTABLE_BENCH_EVENTS` (5,000) annotation events drained by
//!    one process, events/s from its first receive to its last delete, next to a plain SDK
//!    client draining an equal queue (receive, GetObjectAnnotation, delete;
//!    `ANNOTABLE_BENCH_PLAIN_POLLERS` (8) loops) and to the GetObjectAnnotation calls alone, 64
//!    at a time, all in the same run; then where serve's time went, stage by stage;
//! 3. **memory**: peak RSS while draining `ANNOTABLE_BENCH_BACKLOG` (100,000) messages;
//! 4. **large sets**: peak RSS while draining the copies of an object carrying
//!    `ANNOTABLE_BENCH_ANNOTATIONS` (1,000) annotations of 1 MiB, `ANNOTABLE_BENCH_COPIES` (3)
//!    at a time, once per `serve.read_buffer_bytes` (64 and 256 MiB): the peak follows the
//!    buffer, not the gigabytes read.
//!
//! `ANNOTABLE_BENCH_ONLY=freshness|throughput|rss|large` runs one of them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use annotable::config::Config;
use annotable::serve::{self, ServeOptions};
use annotable_bench::env_usize;
use aws_sdk_s3::primitives::ByteStream;
use local_stack::LocalStack;
use tokio_util::sync::CancellationToken;

struct Rig {
    stack: LocalStack,
    dir: tempfile::TempDir,
    queue_url: String,
    bucket: String,
    /// Whether serve runs the current-state refresher (`state.refresh_interval_secs`).
    refresher: bool,
    /// `serve.flush_age_ms`, when not the default.
    flush_age_ms: Option<u64>,
}

impl Rig {
    async fn new(name: &str) -> Rig {
        let stack = LocalStack::start().expect("emulator");
        let dir = tempfile::tempdir().expect("dir");
        let s3 = stack.s3();
        let bucket = format!("bench-{name}");
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket");
        let queue_url = stack
            .sqs()
            .create_queue()
            .queue_name(format!("bench-{name}"))
            .send()
            .await
            .expect("queue")
            .queue_url
            .unwrap();
        let config = Rig::config_for(&stack, dir.path(), &queue_url);
        let sdk = annotable::aws::sdk_config(&config).await;
        annotable::setup::notifications(
            &annotable::setup::Clients::new(annotable::aws::s3_client(&config, &sdk), &sdk),
            &annotable::setup::SetupRequest {
                bucket: bucket.clone(),
                queue_url: queue_url.clone(),
                prefix: None,
                expected_bucket_owner: None,
                via: annotable::setup::Via::Sqs,
            },
        )
        .await
        .expect("setup");
        Rig {
            stack,
            dir,
            queue_url,
            bucket,
            refresher: true,
            flush_age_ms: None,
        }
    }

    fn config_for(stack: &LocalStack, dir: &std::path::Path, queue_url: &str) -> Config {
        Rig::config_with(stack, dir, queue_url, true, None)
    }

    fn config_with(
        stack: &LocalStack,
        dir: &std::path::Path,
        queue_url: &str,
        refresher: bool,
        flush_age_ms: Option<u64>,
    ) -> Config {
        // SAFETY-free: the bench is single-purpose; the SDK reads credentials from the env.
        let mut vars = vec![
            ("ANNOTABLE_DATA_DIR", dir.join("data").display().to_string()),
            ("ANNOTABLE_AWS_ENDPOINT_URL", stack.endpoint()),
            ("ANNOTABLE_AWS_REGION", "us-east-1".into()),
            ("ANNOTABLE_AWS_FORCE_PATH_STYLE", "true".into()),
            ("ANNOTABLE_SERVE_QUEUE_URL", queue_url.into()),
            ("ANNOTABLE_SERVE_HTTP_ADDR", "off".into()),
            (
                "ANNOTABLE_STATE_REFRESH_INTERVAL_SECS",
                if refresher { "5" } else { "0" }.into(),
            ),
        ];
        if let Some(ms) = flush_age_ms {
            vars.push(("ANNOTABLE_SERVE_FLUSH_AGE_MS", ms.to_string()));
        }
        Config::load(None, vars.into_iter().map(|(k, v)| (k.to_string(), v))).expect("config")
    }

    fn config(&self) -> Config {
        Rig::config_with(
            &self.stack,
            self.dir.path(),
            &self.queue_url,
            self.refresher,
            self.flush_age_ms,
        )
    }

    fn start_serve(
        &self,
        idle: Option<Duration>,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<serve::ServeReport>,
    ) {
        let config = self.config();
        let mut options = ServeOptions::from_config(&config).expect("options");
        options.exit_when_idle = idle;
        let token = CancellationToken::new();
        let t = token.clone();
        let handle =
            tokio::spawn(async move { serve::run(&config, options, t).await.expect("serve") });
        (token, handle)
    }

    async fn put(&self, key: String, name: &str, value: String) {
        self.stack
            .s3()
            .put_object_annotation()
            .bucket(&self.bucket)
            .key(key)
            .annotation_name(name)
            .annotation_payload(ByteStream::from(value.into_bytes()))
            .send()
            .await
            .expect("put annotation");
    }

    async fn objects(&self, n: usize) {
        let s3 = self.stack.s3();
        for i in 0..n {
            s3.put_object()
                .bucket(&self.bucket)
                .key(format!("obj/{i:05}"))
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
                .expect("put object");
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `flush_age_ms`: `None` runs the default; `Some` the given age (the previous default, 2,000,
/// measured beside the current one in the same run).
async fn freshness(refresher: bool, flush_age_ms: Option<u64>) {
    let rate = env_usize("ANNOTABLE_BENCH_RATE", 50);
    let secs = env_usize("ANNOTABLE_BENCH_SECS", 30);
    let name = format!(
        "fresh-{}-{}",
        if refresher { "on" } else { "off" },
        flush_age_ms.map_or("default".to_string(), |ms| ms.to_string())
    );
    let mut rig = Rig::new(&name).await;
    rig.refresher = refresher;
    rig.flush_age_ms = flush_age_ms;
    rig.objects(50).await;
    let (stop, handle) = rig.start_serve(None);
    tokio::time::sleep(Duration::from_secs(3)).await; // past start-up
    let session = annotable::query::open_session(&rig.config())
        .await
        .expect("session");
    let total = rate * secs;
    let mut put_at: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    let mut seen: HashMap<String, f64> = HashMap::new();
    let mut next_poll = Instant::now();
    let mut i = 0;
    while seen.len() < total && started.elapsed() < Duration::from_secs(secs as u64 + 60) {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if i < total && Instant::now() >= due {
            let name = format!("n{i:05}");
            put_at.insert(name.clone(), Instant::now());
            rig.put(
                format!("obj/{:05}", i % 50),
                &name,
                format!("{{\"i\":{i}}}"),
            )
            .await;
            i += 1;
            continue;
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + Duration::from_millis(100);
            let result = session
                .query("SELECT name FROM annotations")
                .await
                .expect("poll");
            let now = Instant::now();
            for b in &result.batches {
                let col =
                    arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
                let col = arrow::array::AsArray::as_string::<i32>(&col);
                for j in 0..arrow::array::Array::len(col) {
                    let name = col.value(j).to_string();
                    if let Some(t) = put_at.get(&name) {
                        seen.entry(name).or_insert_with(|| (now - *t).as_secs_f64());
                    }
                }
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    let _ = handle.await;
    let mut lat: Vec<f64> = seen.values().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "freshness at {rate} events/s for {secs} s (flush_age {}, polls every 100 ms), state refresher {}: {} of {total} seen, p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        flush_age_ms.map_or(
            format!(
                "{} ms, the default",
                annotable::config::defaults::SERVE_FLUSH_AGE_MS
            ),
            |ms| format!("{ms} ms")
        ),
        if refresher { "on (every 5 s)" } else { "off" },
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

async fn throughput() {
    let events = env_usize("ANNOTABLE_BENCH_EVENTS", 5_000);
    let pollers = env_usize("ANNOTABLE_BENCH_PLAIN_POLLERS", 8);
    let rig = Rig::new("tput").await;
    rig.objects(100).await;
    let sqs = rig.stack.sqs();
    // The objects' creation events are not part of the backlog.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqs.purge_queue()
        .queue_url(&rig.queue_url)
        .send()
        .await
        .expect("purge");
    // The backlog: `events` annotation puts (each one notification), each a name of its own so
    // every event is a row to commit (overwrites of one name would mostly be suppressed).
    let load = Instant::now();
    let rig_ref = &rig;
    let puts = (0..events).map(|i| async move {
        rig_ref
            .put(
                format!("obj/{:05}", i % 100),
                &format!("n{i:05}"),
                format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(150)),
            )
            .await
    });
    futures::stream::iter(puts)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    // The same notifications, once for the plain client and once for serve, so both drain
    // equal queues (the emulator's queue operations cost more the longer the queue).
    let bodies = take_all(&sqs, &rig.queue_url, events).await;
    let plain_url = sqs
        .create_queue()
        .queue_name("bench-tput-plain")
        .send()
        .await
        .expect("queue")
        .queue_url
        .unwrap();
    enqueue(&sqs, &plain_url, &bodies).await;
    enqueue(&sqs, &rig.queue_url, &bodies).await;
    println!(
        "backlog: {events} annotation puts and their notifications queued twice in {:.1} s",
        load.elapsed().as_secs_f64()
    );

    // Reference 1: the GetObjectAnnotation calls alone, from a plain SDK client, 64 at a time
    // (what the emulator answers when no queue is involved).
    let s3 = rig.stack.s3();
    let base = Instant::now();
    let gets = (0..events).map(|i| {
        let s3 = s3.clone();
        let bucket = rig.bucket.clone();
        async move {
            let out = s3
                .get_object_annotation()
                .bucket(bucket)
                .key(format!("obj/{:05}", i % 100))
                .annotation_name(format!("n{i:05}"))
                .send()
                .await
                .expect("get");
            out.annotation_payload.collect().await.expect("body");
        }
    });
    futures::stream::iter(gets)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let gets_only = events as f64 / base.elapsed().as_secs_f64();

    // Reference 2: a plain SDK client draining an equal queue: receive 10, read each event's
    // annotation, delete the 10; `pollers` such loops at once. No table, no ordering.
    let base = Instant::now();
    let drained =
        futures::future::join_all((0..pollers).map(|_| plain_drain(&sqs, &s3, &plain_url)))
            .await
            .into_iter()
            .sum::<usize>();
    assert_eq!(drained, events, "the plain client drained what was queued");
    let plain = events as f64 / base.elapsed().as_secs_f64();

    let idle = Duration::from_secs(2);
    let (_, handle) = rig.start_serve(Some(idle));
    let t = Instant::now();
    let report = handle.await.expect("serve");
    let wall = (t.elapsed() - idle).as_secs_f64();
    let drain = report.stages.drain.as_secs_f64();
    let rate = report.acked as f64 / drain;
    println!(
        "throughput: serve drained {} messages ({} rows, {} commits) in {drain:.2} s (first receive to last delete) = {rate:.0} events/s; {wall:.2} s with start-up and stop",
        report.acked, report.rows, report.commits,
    );
    println!(
        "throughput: plain SDK client draining an equal queue ({pollers} x receive/get/delete) = {plain:.0} events/s; ratio {:.2}",
        rate / plain
    );
    println!(
        "throughput: plain SDK GetObjectAnnotation x64, no queue = {gets_only:.0} calls/s; ratio {:.2}",
        rate / gets_only
    );
    let s = report.stages;
    let line = |what: &str, t: annotable::serve::StageTime, per: &str| {
        println!(
            "  stage {what:<8} {:>6} {per:<9} {:>7.2} s busy, {:>7.2} ms each",
            t.count,
            t.seconds,
            1e3 * t.seconds / t.count.max(1) as f64
        )
    };
    line("receive", s.receive, "polls");
    line("resolve", s.resolve, "messages");
    line("commit", s.commit, "batches");
    line("delete", s.delete, "batches");
}

/// Receives every message of `queue_url` (expecting `n`), keeps their bodies, and empties the
/// queue.
async fn take_all(sqs: &aws_sdk_sqs::Client, queue_url: &str, n: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(60);
    while bodies.len() < n && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(3600)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        bodies.extend(out.messages().iter().filter_map(|m| m.body.clone()));
    }
    assert_eq!(bodies.len(), n, "every put's notification arrived");
    sqs.purge_queue()
        .queue_url(queue_url)
        .send()
        .await
        .expect("purge");
    bodies
}

async fn enqueue(sqs: &aws_sdk_sqs::Client, queue_url: &str, bodies: &[String]) {
    let batches = bodies.chunks(10).map(|chunk| {
        let entries = chunk.iter().enumerate().map(|(j, body)| {
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(j.to_string())
                .message_body(body)
                .build()
                .unwrap()
        });
        sqs.send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries.collect()))
            .send()
    });
    for out in futures::stream::iter(batches)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
    {
        assert!(out.expect("send batch").failed().is_empty());
    }
}

/// One plain consumer loop; returns the messages it deleted once the queue stays empty.
async fn plain_drain(sqs: &aws_sdk_sqs::Client, s3: &aws_sdk_s3::Client, queue_url: &str) -> usize {
    let mut deleted = 0;
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return deleted;
        }
        let gets = messages.iter().flat_map(|m| {
            let body = m.body().unwrap_or_default();
            let Ok(s3_events::Notification::Events(events)) =
                s3_events::parse_message(body.as_bytes())
            else {
                panic!("not a notification: {body}");
            };
            events.into_iter().map(|e| {
                let s3_events::Action::FetchAnnotation(a) = &e.action else {
                    panic!("not an annotation put: {e:?}");
                };
                s3.get_object_annotation()
                    .bucket(&e.object.bucket)
                    .key(&e.object.key)
                    .annotation_name(&a.name)
                    .send()
            })
        });
        for out in futures::future::join_all(gets).await {
            out.expect("get")
                .annotation_payload
                .collect()
                .await
                .expect("body");
        }
        let entries = messages.iter().enumerate().map(|(i, m)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .unwrap()
        });
        let out = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries.collect()))
            .send()
            .await
            .expect("delete");
        assert!(out.failed().is_empty());
        deleted += messages.len();
    }
}

async fn rss() {
    use futures::StreamExt as _;
    let backlog = env_usize("ANNOTABLE_BENCH_BACKLOG", 100_000);
    let rig = Rig::new("rss").await;
    rig.objects(200).await;
    for i in 0..200 {
        rig.put(format!("obj/{i:05}"), "label", format!("{{\"i\":{i}}}"))
            .await;
    }
    // Capture one real notification body, then replay it (with other keys) as the backlog.
    let sqs = rig.stack.sqs();
    let mut template = None;
    while template.is_none() {
        let out = sqs
            .receive_message()
            .queue_url(&rig.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in out.messages() {
            let body = m.body().unwrap_or_default();
            if body.contains("ObjectAnnotation:Put") && body.contains("obj/00000") {
                template = Some(body.to_string());
            }
        }
    }
    let _ = sqs.purge_queue().queue_url(&rig.queue_url).send().await;
    let template = template.unwrap();
    let load = Instant::now();
    let batches = (0..backlog.div_ceil(10)).map(|b| {
        let sqs = sqs.clone();
        let url = rig.queue_url.clone();
        let template = template.clone();
        async move {
            let entries = (0..10).map(|j| {
                let i = (b * 10 + j) % 200;
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(j.to_string())
                    .message_body(template.replace("obj/00000", &format!("obj/{i:05}")))
                    .build()
                    .unwrap()
            });
            sqs.send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .expect("send batch");
        }
    });
    futures::stream::iter(batches)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!(
        "rss: {backlog} messages enqueued in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let before = annotable_bench::peak_rss_mib();
    let (_, handle) = rig.start_serve(Some(Duration::from_secs(3)));
    let t = Instant::now();
    let report = handle.await.expect("serve");
    println!(
        "rss: drained {} messages ({} rows, {} commits) in {:.1} s; peak RSS {:.0} MiB (bench process before serve: {before:.0} MiB)",
        report.acked,
        report.rows,
        report.commits,
        t.elapsed().as_secs_f64(),
        annotable_bench::peak_rss_mib()
    );
}

async fn large() {
    let annotations = env_usize("ANNOTABLE_BENCH_ANNOTATIONS", 1_000);
    let copies = env_usize("ANNOTABLE_BENCH_COPIES", 3);
    for buffer_mib in [64u64, 256] {
        // A rig (emulator, queue) per run: a finished run's last long polls may still take
        // messages meant for the next one.
        let rig = Rig::new(&format!("large-{buffer_mib}")).await;
        let s3 = rig.stack.s3();
        // The original lives in a bucket without notifications: only the copies are events.
        s3.create_bucket()
            .bucket("bench-large-src")
            .send()
            .await
            .expect("bucket");
        let t = Instant::now();
        annotable_bench::put_large_set(&s3, "bench-large-src", "big", annotations).await;
        annotable_bench::copy_set(&s3, "bench-large-src", "big", &rig.bucket, "copy-", copies)
            .await;
        println!(
            "large: {annotations} annotations of 1 MiB put and copied {copies} times in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        annotable_bench::reset_peak_rss();
        let before = annotable_bench::peak_rss_mib();
        let config = rig.config();
        let mut options = ServeOptions::from_config(&config).expect("options");
        options.read_buffer_bytes = buffer_mib << 20;
        options.flush_bytes = options.flush_bytes.min((buffer_mib << 20) as usize / 4);
        options.exit_when_idle = Some(Duration::from_secs(3));
        let t = Instant::now();
        let report = serve::run(&config, options, CancellationToken::new())
            .await
            .expect("serve");
        println!(
            "large: read_buffer_bytes {buffer_mib} MiB: {copies} copies ({} MiB of payloads, {} rows, {} commits) in {:.1} s; peak RSS {:.0} MiB (before: {before:.0} MiB)",
            copies * annotations,
            report.rows,
            report.commits,
            t.elapsed().as_secs_f64(),
            annotable_bench::peak_rss_mib()
        );
    }
}

use futures::StreamExt;

fn main() {
    require_credentials();
    let only = std::env::var("ANNOTABLE_BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if only.is_empty() || only == "freshness" {
            freshness(false, None).await;
            freshness(true, None).await;
            freshness(true, Some(2_000)).await;
        }
        if only.is_empty() || only == "throughput" {
            throughput().await;
        }
        if only.is_empty() || only == "rss" {
            rss().await;
        }
        if only.is_empty() || only == "large" {
            large().await;
        }
    });
}

/// The SDK's default credential chain needs credentials; the emulator accepts any.
fn require_credentials() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        eprintln!(
            "serve bench: run with AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test (the emulator accepts any)"
        );
        std::process::exit(2);
    }
}
