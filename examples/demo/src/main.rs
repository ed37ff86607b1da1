//! The README's main job, end to end on the embedded defaults: start the local AWS emulator,
//! create a bucket and a queue (with a dead-letter queue), point the bucket's notifications at
//! the queue with `annotable setup notifications` (after backfilling three objects annotated
//! before, with `annotable backfill`), write objects and annotations (puts,
//! overwrites, deletes, an object delete), run `annotable serve` until the queue drains, compact
//! the table with `annotable maintain`, print a few `annotable query` results, and clean up. Run it with `scripts/demo.sh`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a demo: any failure ends it with the reason

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::QueueAttributeName;
use local_stack::LocalStack;

const BUCKET: &str = "demo-photos";

fn main() -> ExitCode {
    let bin = PathBuf::from(std::env::var("ANNOTABLE_BIN").unwrap_or_else(|_| "annotable".into()));
    let stack = match LocalStack::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: cannot start the local AWS emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(run(&stack, &bin, work.path()));
    drop(stack);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

async fn run(stack: &LocalStack, bin: &std::path::Path, work: &std::path::Path) -> bool {
    let s3 = stack.s3();
    let sqs = stack.sqs();
    let env = |cmd: &mut Command| {
        for (k, _) in std::env::vars() {
            if k.starts_with("ANNOTABLE_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(work)
            .env("AWS_ENDPOINT_URL", stack.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("ANNOTABLE_AWS_FORCE_PATH_STYLE", "true")
            .env("ANNOTABLE_SERVE_HTTP_ADDR", "127.0.0.1:0");
    };
    let annotable = |args: &[&str]| -> bool {
        println!(
            "$ annotable {}",
            args.iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new(bin);
        env(&mut cmd);
        match cmd.args(args).status() {
            Ok(s) if s.success() => true,
            Ok(s) => {
                eprintln!("demo: annotable {} exited with {s}", args.join(" "));
                false
            }
            Err(e) => {
                eprintln!(
                    "demo: cannot run {}: {e} (set ANNOTABLE_BIN)",
                    bin.display()
                );
                false
            }
        }
    };

    step(&format!(
        "local AWS emulator on {}; creating bucket {BUCKET} (versioned) and queue demo-events with a dead-letter queue",
        stack.endpoint()
    ));
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("CreateBucket");
    s3.put_bucket_versioning()
        .bucket(BUCKET)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("PutBucketVersioning");
    let dlq_url = sqs
        .create_queue()
        .queue_name("demo-dlq")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .unwrap_or_default();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .unwrap_or_default();
    let queue_url = sqs
        .create_queue()
        .queue_name("demo-events")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"5"}}"#),
        )
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .unwrap_or_default();

    step("annotations that existed before annotable: 3 archived objects, backfilled");
    for i in 1..=3 {
        let key = format!("archive/2025/report-{i}.pdf");
        s3.put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"%PDF"))
            .send()
            .await
            .expect("PutObject");
        s3.put_object_annotation()
            .bucket(BUCKET)
            .key(&key)
            .annotation_name("retention")
            .annotation_payload(aws_sdk_s3::primitives::ByteStream::from(
                format!(r#"{{"class":"legal","years":{}}}"#, 5 * i).into_bytes(),
            ))
            .send()
            .await
            .expect("PutObjectAnnotation");
    }
    if !annotable(&["backfill", "--bucket", BUCKET, "--versions", "all"]) {
        return false;
    }

    step("pointing the bucket's notifications at the queue");
    if !annotable(&[
        "setup",
        "notifications",
        "--bucket",
        BUCKET,
        "--queue-url",
        &queue_url,
    ]) {
        return false;
    }

    step("writing objects and annotations: puts, an overwrite, a delete, an object delete");
    let put_object = |key: &'static str| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from_static(b"jpeg bytes"))
                .send()
                .await
                .expect("PutObject");
        }
    };
    let annotate = |key: &'static str, name: &'static str, value: &'static str| {
        let s3 = s3.clone();
        async move {
            s3.put_object_annotation()
                .bucket(BUCKET)
                .key(key)
                .annotation_name(name)
                .annotation_payload(ByteStream::from_static(value.as_bytes()))
                .send()
                .await
                .expect("PutObjectAnnotation");
        }
    };
    for key in [
        "2026/beach.jpg",
        "2026/city at night.jpg",
        "2026/cat+dog.jpg",
        "drafts/blurry.jpg",
    ] {
        put_object(key).await;
    }
    annotate(
        "2026/beach.jpg",
        "labels",
        r#"{"labels":["sea","sand"],"score":0.97}"#,
    )
    .await;
    annotate("2026/beach.jpg", "review", r#"{"status":"pending"}"#).await;
    annotate(
        "2026/city at night.jpg",
        "labels",
        r#"{"labels":["city","lights"],"score":0.88}"#,
    )
    .await;
    annotate(
        "2026/city at night.jpg",
        "review",
        r#"{"status":"approved","by":"ana"}"#,
    )
    .await;
    annotate(
        "2026/cat+dog.jpg",
        "labels",
        r#"{"labels":["cat","dog"],"score":0.91}"#,
    )
    .await;
    annotate(
        "drafts/blurry.jpg",
        "labels",
        r#"{"labels":[],"score":0.12}"#,
    )
    .await;
    // An overwrite, a delete, and an object delete.
    annotate(
        "2026/beach.jpg",
        "review",
        r#"{"status":"approved","by":"li"}"#,
    )
    .await;
    s3.delete_object_annotation()
        .bucket(BUCKET)
        .key("2026/cat+dog.jpg")
        .annotation_name("labels")
        .send()
        .await
        .expect("DeleteObjectAnnotation");
    let versions = s3
        .list_object_versions()
        .bucket(BUCKET)
        .prefix("drafts/blurry.jpg")
        .send()
        .await
        .expect("ListObjectVersions");
    for v in versions.versions() {
        s3.delete_object()
            .bucket(BUCKET)
            .key("drafts/blurry.jpg")
            .set_version_id(v.version_id().map(str::to_string))
            .send()
            .await
            .expect("DeleteObject");
    }
    println!("9 annotation writes and 1 object delete → notifications on the queue");

    step("running serve until the queue drains (--exit-when-idle 3); its JSON log follows");
    if !annotable(&["serve", "--queue-url", &queue_url, "--exit-when-idle", "3"]) {
        return false;
    }

    step("compacting the small files serve and backfill committed (annotable maintain --compact)");
    if !annotable(&["maintain", "--compact"]) {
        return false;
    }

    step("the current state, as AWS's annotation table would show it");
    let queries: [&[&str]; 4] = [
        &[
            "query",
            "SELECT object_key, name, text_value FROM annotations ORDER BY object_key, name",
        ],
        &[
            "query",
            "SELECT object_key, json_get_str(text_value, 'by') AS reviewer FROM annotations WHERE name = 'review' AND (text_value->>'status') = 'approved' ORDER BY object_key",
        ],
        &[
            "query",
            "SELECT object_key, name, record_type, source, event_name FROM annotation_journal ORDER BY object_key, sequence_number",
        ],
        // Objects beside annotations (docs/objects.md): every object version S3 holds, joined.
        &[
            "query",
            "SELECT o.key, o.size, o.storage_class, count(a.name) AS annotations FROM objects o LEFT JOIN annotations a ON a.object_join_key = o.object_join_key WHERE NOT o.is_delete_marker GROUP BY o.key, o.size, o.storage_class ORDER BY o.key",
        ],
    ];
    for q in queries {
        if !annotable(q) {
            return false;
        }
    }
    step("done: the emulator is stopped and the demo's data folder removed");
    true
}
