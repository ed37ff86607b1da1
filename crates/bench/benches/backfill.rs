//! `backfill` against the local emulator (in-process, release build), two figures:
//!
//! 1. **throughput**: object versions/s and annotations/s indexing a bucket of
//!    `ANNOTABLE_BENCH_OBJECTS` (5,000) objects with 2 annotations each, next to a plain
//!    concurrent SDK client making the same calls (ListObjectsV2, then ListObjectAnnotations and
//!    GetObjectAnnotation per object, 64 at a time) in the same run: the ratio is the cost of
//!    everything annotable adds (ordering, rows, Parquet, commits, checkpoints);
//! 2. **memory**: peak RSS of the backfill alone (the peak is reset before it starts) on a
//!    bucket of `ANNOTABLE_BENCH_SMALL` (10,000) objects, then of `ANNOTABLE_BENCH_LARGE`
//!    (100,000): flat means the walk holds a bounded window, not the bucket.
//!
//! 3. **large sets**: peak RSS of backfills of a bucket of `ANNOTABLE_BENCH_COPIES` (3) objects
//!    each carrying `ANNOTABLE_BENCH_ANNOTATIONS` (1,000) annotations of 1 MiB, once per
//!    `backfill.read_buffer_bytes` (64 and 256 MiB): the peak follows the buffer, not the
//!    gigabytes read.
//!
//! 4. **objects**: object versions/s and peak RSS of a backfill of `ANNOTABLE_BENCH_OBJECTS`
//!    (5,000) objects with one annotation each with `objects.enabled` on (object journal rows
//!    too) and off (annotations only), alternating, each into a fresh table, same run.
//!
//! `ANNOTABLE_BENCH_ONLY=throughput|rss|large|objects` runs one of them. Needs `AWS_ACCESS_KEY_ID=test
//! AWS_SECRET_ACCESS_KEY=test` (any value) in the environment, like the serve bench.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use annotable::backfill::{self, BackfillOptions, ProgressMode};
use annotable::config::Config;
use annotable_bench::env_usize;
use annotation_source::{ListScope, Versions};
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use local_stack::LocalStack;
use tokio_util::sync::CancellationToken;

fn config(stack: &LocalStack, dir: &std::path::Path) -> Config {
    config_with(stack, dir, true)
}

fn config_with(stack: &LocalStack, dir: &std::path::Path, objects: bool) -> Config {
    let vars = [
        ("ANNOTABLE_OBJECTS_ENABLED", objects.to_string()),
        ("ANNOTABLE_DATA_DIR", dir.join("data").display().to_string()),
        ("ANNOTABLE_AWS_ENDPOINT_URL", stack.endpoint()),
        ("ANNOTABLE_AWS_REGION", "us-east-1".into()),
        ("ANNOTABLE_AWS_FORCE_PATH_STYLE", "true".into()),
    ];
    Config::load(None, vars.into_iter().map(|(k, v)| (k.to_string(), v))).expect("config")
}

/// Objects `range` with `names` annotations each.
async fn populate(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    range: std::ops::Range<usize>,
    names: usize,
) {
    futures::stream::iter(range)
        .map(|i| {
            let s3 = s3.clone();
            let bucket = bucket.to_string();
            async move {
                let key = format!("photos/2026/{:02}/{i:07}.jpg", i % 12);
                s3.put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(ByteStream::from_static(b"x"))
                    .send()
                    .await
                    .expect("put object");
                for n in 0..names {
                    s3.put_object_annotation()
                        .bucket(&bucket)
                        .key(&key)
                        .annotation_name(format!("label-{n}"))
                        .annotation_payload(ByteStream::from(
                            format!("{{\"model\":\"v3\",\"score\":0.{i:04},\"tags\":[\"cat\",\"outdoor\"]}}").into_bytes(),
                        ))
                        .send()
                        .await
                        .expect("put annotation");
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// The plain client: list, then list + get every annotation, 64 objects at a time.
async fn plain_client(s3: &aws_sdk_s3::Client, bucket: &str) -> (usize, usize, f64) {
    let started = Instant::now();
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .set_start_after(after.take())
            .send()
            .await
            .expect("list");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        if !page.is_truncated().unwrap_or(false) {
            break;
        }
        after = keys.last().cloned();
    }
    let annotations: usize = futures::stream::iter(keys.iter())
        .map(|key| async move {
            let list = s3
                .list_object_annotations()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("list annotations");
            let mut n = 0;
            for a in list.annotations() {
                let got = s3
                    .get_object_annotation()
                    .bucket(bucket)
                    .key(key)
                    .annotation_name(a.annotation_name())
                    .send()
                    .await
                    .expect("get annotation");
                let _ = got.annotation_payload.collect().await.expect("payload");
                n += 1;
            }
            n
        })
        .buffer_unordered(64)
        .fold(0, |acc, n| async move { acc + n })
        .await;
    (keys.len(), annotations, started.elapsed().as_secs_f64())
}

async fn run_backfill(config: &Config, bucket: &str) -> backfill::BackfillReport {
    let scope = ListScope {
        bucket: bucket.to_string(),
        prefix: String::new(),
        versions: Versions::Current,
        delete_markers: false,
    };
    let mut options = BackfillOptions::from_config(config, scope);
    options.progress = ProgressMode::Off;
    backfill::run(config, options, CancellationToken::new())
        .await
        .expect("backfill")
}

async fn throughput() {
    let objects = env_usize("ANNOTABLE_BENCH_OBJECTS", 5_000);
    let stack = LocalStack::start().expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let s3 = stack.s3();
    let bucket = "bench-backfill";
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("bucket");
    let t = Instant::now();
    populate(&s3, bucket, 0..objects, 2).await;
    println!(
        "throughput: {objects} objects, {} annotations put in {:.1} s",
        objects * 2,
        t.elapsed().as_secs_f64()
    );

    // Alternate, so both see the same emulator state and warmth.
    let cfg = config(&stack, dir.path());
    let mut best_plain = f64::MAX;
    let mut best_ours = f64::MAX;
    for round in 0..2 {
        let (n, a, secs) = plain_client(&s3, bucket).await;
        assert_eq!((n, a), (objects, objects * 2));
        best_plain = best_plain.min(secs);
        let report = run_backfill(&cfg, bucket).await;
        assert_eq!(report.objects_read as usize, objects);
        assert_eq!(report.annotations as usize, objects * 2);
        let ours = report.elapsed.as_secs_f64();
        best_ours = best_ours.min(ours);
        println!(
            "throughput round {round}: plain SDK client {:.0} objects/s ({:.0} annotations/s); annotable backfill {:.0} objects/s ({:.0} annotations/s, {} rows in {} commits, {} S3 calls)",
            n as f64 / secs,
            a as f64 / secs,
            objects as f64 / ours,
            (objects * 2) as f64 / ours,
            report.rows,
            report.commits,
            report.total_s3_calls(),
        );
    }
    println!(
        "throughput (best of 2): plain SDK client {:.0} objects/s, annotable backfill {:.0} objects/s ({:.0} annotations/s): ratio {:.2}",
        objects as f64 / best_plain,
        objects as f64 / best_ours,
        (objects * 2) as f64 / best_ours,
        best_plain / best_ours
    );
}

async fn rss() {
    let small = env_usize("ANNOTABLE_BENCH_SMALL", 10_000);
    let large = env_usize("ANNOTABLE_BENCH_LARGE", 100_000);
    let stack = LocalStack::start().expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let s3 = stack.s3();
    let cfg = config(&stack, dir.path());
    let mut done = 0;
    for (i, size) in [small, large].into_iter().enumerate() {
        let bucket = format!("bench-rss-{i}");
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket");
        let t = Instant::now();
        populate(&s3, &bucket, 0..size, 1).await;
        done += size;
        println!(
            "rss: {size} objects put in {:.1} s ({done} in all)",
            t.elapsed().as_secs_f64()
        );
        // Reset the peak (VmHWM) so it measures the backfill alone.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = annotable_bench::peak_rss_mib();
        let report = run_backfill(&cfg, &bucket).await;
        assert_eq!(report.objects_read as usize, size);
        println!(
            "rss: backfill of {size} objects ({} rows, {} commits) in {:.1} s ({:.0} objects/s): peak RSS {:.0} MiB (before: {before:.0} MiB)",
            report.rows,
            report.commits,
            report.elapsed.as_secs_f64(),
            size as f64 / report.elapsed.as_secs_f64(),
            annotable_bench::peak_rss_mib()
        );
    }
}

async fn objects() {
    let objects = env_usize("ANNOTABLE_BENCH_OBJECTS", 5_000);
    let stack = LocalStack::start().expect("emulator");
    let s3 = stack.s3();
    let bucket = "bench-objects";
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("bucket");
    populate(&s3, bucket, 0..objects, 1).await;
    let mut best = [f64::MAX; 2];
    let mut peak = [0f64; 2];
    for round in 0..3 {
        for (i, on) in [false, true].into_iter().enumerate() {
            let dir = tempfile::tempdir().expect("dir");
            let cfg = config_with(&stack, dir.path(), on);
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let report = run_backfill(&cfg, bucket).await;
            assert_eq!(report.objects_read as usize, objects);
            assert_eq!(report.object_rows as usize, if on { objects } else { 0 });
            let secs = report.elapsed.as_secs_f64();
            let rss = annotable_bench::peak_rss_mib();
            best[i] = best[i].min(secs);
            peak[i] = peak[i].max(rss);
            println!(
                "objects round {round}, objects {}: {:.0} objects/s, {} rows + {} object rows, peak RSS {rss:.0} MiB",
                if on { "on" } else { "off" },
                objects as f64 / secs,
                report.rows,
                report.object_rows
            );
        }
    }
    println!(
        "objects (best of 3): off {:.0} objects/s, on {:.0} objects/s: on/off time ratio {:.2}; peak RSS off {:.0} MiB, on {:.0} MiB",
        objects as f64 / best[0],
        objects as f64 / best[1],
        best[1] / best[0],
        peak[0],
        peak[1]
    );
}

async fn large() {
    let annotations = env_usize("ANNOTABLE_BENCH_ANNOTATIONS", 1_000);
    let copies = env_usize("ANNOTABLE_BENCH_COPIES", 3);
    let stack = LocalStack::start().expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let s3 = stack.s3();
    for bucket in ["bench-large-src", "bench-large"] {
        s3.create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("bucket");
    }
    let t = Instant::now();
    annotable_bench::put_large_set(&s3, "bench-large-src", "big", annotations).await;
    annotable_bench::copy_set(
        &s3,
        "bench-large-src",
        "big",
        "bench-large",
        "copy-",
        copies,
    )
    .await;
    println!(
        "large: {copies} objects of {annotations} annotations of 1 MiB put in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cfg = config(&stack, dir.path());
    for buffer_mib in [64u64, 256] {
        let scope = ListScope {
            bucket: "bench-large".into(),
            prefix: String::new(),
            versions: Versions::Current,
            delete_markers: false,
        };
        let mut options = BackfillOptions::from_config(&cfg, scope);
        options.progress = ProgressMode::Off;
        options.read_buffer_bytes = buffer_mib << 20;
        annotable_bench::reset_peak_rss();
        let before = annotable_bench::peak_rss_mib();
        let report = backfill::run(&cfg, options, CancellationToken::new())
            .await
            .expect("backfill");
        assert_eq!(report.annotations as usize, copies * annotations);
        println!(
            "large: read_buffer_bytes {buffer_mib} MiB: {copies} objects ({} MiB of payloads, {} rows, {} commits) in {:.1} s; peak RSS {:.0} MiB (before: {before:.0} MiB)",
            copies * annotations,
            report.rows,
            report.commits,
            report.elapsed.as_secs_f64(),
            annotable_bench::peak_rss_mib()
        );
    }
}

#[tokio::main]
async fn main() {
    let only = std::env::var("ANNOTABLE_BENCH_ONLY").unwrap_or_default();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if only.is_empty() || only == "large" {
        large().await;
    }
    if only.is_empty() || only == "throughput" {
        throughput().await;
    }
    if only.is_empty() || only == "rss" {
        rss().await;
    }
    if only.is_empty() || only == "objects" {
        objects().await;
    }
}
