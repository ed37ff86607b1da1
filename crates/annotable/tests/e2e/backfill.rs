//! `annotable backfill` end to end against the emulator, as a real child process: a bucket pair
//! of 2,000+ object versions and 5,000+ annotations indexed exactly, kill -9 and resume with
//! fewer S3 calls and no duplicate rows, a concurrent second backfill refused by the S3 lease,
//! serve and backfill together while annotations change, and the clean early stops (no
//! annotation API, directory bucket).

use std::time::{Duration, Instant};

use annotable_tests::{
    Env, PLAIN, TestResult, VERSIONED, Workload, assert_converged, assert_objects_converged,
    objects_by_pyiceberg,
};
use futures::StreamExt;

/// Objects per bucket; every third key of the versioned bucket gets a second version.
const OBJECTS: usize = 1_000;

/// Puts `OBJECTS` objects with 1–4 annotations each (and, when `versioned`, a second version of
/// every third key with one annotation of its own); returns (object versions, annotations).
async fn populate(env: &Env, bucket: &'static str, versioned: bool) -> (usize, usize) {
    let stack = &env.stack;
    let results: Vec<(usize, usize)> = futures::stream::iter(0..OBJECTS)
        .map(|i| async move {
            let key = format!(
                "{:04}/{}",
                i,
                annotable_tests::KEYS[i % annotable_tests::KEYS.len()]
            );
            stack.put_object(bucket, &key, &format!("body {i}")).await;
            let names = 1 + i % 4;
            for n in 0..names {
                let payload = format!("{{\"i\":{i},\"n\":{n}}}");
                stack
                    .put_annotation(bucket, &key, None, &format!("n{n}"), &payload)
                    .await;
            }
            if versioned && i % 3 == 0 {
                stack
                    .put_object(bucket, &key, &format!("body {i} v2"))
                    .await;
                stack
                    .put_annotation(bucket, &key, None, "v2", "{\"second\":true}")
                    .await;
                return (2, names + 1);
            }
            (1, names)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results
        .into_iter()
        .fold((0, 0), |(v, a), (dv, da)| (v + dv, a + da))
}

/// The number after `label` in a backfill summary line.
fn figure(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{summary}"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Journal rows that have a twin (same version, name, record type and state).
async fn duplicates(env: &Env) -> Vec<Vec<Option<String>>> {
    env.sql(
        "SELECT bucket, object_key, object_version_id, name, record_type, count(*) AS n \
         FROM annotation_journal GROUP BY bucket, object_key, object_version_id, name, record_type \
         HAVING count(*) > 1 LIMIT 10",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_indexes_both_buckets_and_resumes_after_kill_9() -> TestResult {
    let mut env = Env::start_with(30, 5, false).await;
    let (v_versions, v_annotations) = populate(&env, VERSIONED, true).await;
    let (p_versions, p_annotations) = populate(&env, PLAIN, false).await;
    assert!(v_versions + p_versions >= 2_000 && v_annotations + p_annotations >= 5_000);

    // The cost of a full run, measured on a second table.
    let full = env.annotable_env(
        &[
            "backfill",
            "--bucket",
            VERSIONED,
            "--versions",
            "all",
            "--progress",
            "off",
        ],
        &[
            ("ANNOTABLE_TABLE", "full_run_journal"),
            ("ANNOTABLE_OBJECTS_TABLE", "full_run_objects"),
        ],
    );
    assert!(full.status.success(), "{}", stderr(&full));
    let full_calls = figure(&stdout(&full), "S3 calls:");
    assert_eq!(figure(&stdout(&full), "annotations:"), v_annotations as u64);
    // Under another objects.table name, `objects` (which reads `object_journal`) reads it.
    let counted = env.annotable_env(
        &["query", "--format", "csv", "SELECT count(*) FROM objects"],
        &[
            ("ANNOTABLE_TABLE", "full_run_journal"),
            ("ANNOTABLE_OBJECTS_TABLE", "full_run_objects"),
        ],
    );
    assert!(counted.status.success(), "{}", stderr(&counted));
    assert_eq!(
        stdout(&counted).lines().nth(1),
        Some(v_versions.to_string().as_str()),
        "{}",
        stdout(&counted)
    );

    // Small commits, few reads at a time, killed once some are committed.
    let small = [
        ("ANNOTABLE_BACKFILL_FLUSH_ROWS", "400"),
        ("ANNOTABLE_BACKFILL_CONCURRENCY", "4"),
    ];
    let mut first = env.spawn(
        &[
            "backfill",
            "--bucket",
            VERSIONED,
            "--versions",
            "all",
            "--progress",
            "log",
            "--progress-interval",
            "0.2",
        ],
        &small,
    );
    let started = Instant::now();
    let committed = |log: &str| {
        log.lines()
            .filter_map(|l| l.split("objects_committed=").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    while committed(&first.log()) < 800 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the first backfill committed nothing in 120 s:\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.signal(9);
    let _ = first.wait(Duration::from_secs(10));
    let before = env.sql("SELECT count(*) FROM annotation_journal").await[0][0].clone();

    let resumed = env.annotable_env(
        &[
            "backfill",
            "--bucket",
            VERSIONED,
            "--versions",
            "all",
            "--progress",
            "off",
        ],
        &small,
    );
    assert!(
        resumed.status.success(),
        "{}\n{}",
        stdout(&resumed),
        stderr(&resumed)
    );
    let summary = stdout(&resumed);
    assert!(summary.contains("resumed run"), "not resumed:\n{summary}");
    let resumed_calls = figure(&summary, "S3 calls:");
    assert!(
        resumed_calls * 10 < full_calls * 9,
        "the resumed run made {resumed_calls} S3 calls, a full run {full_calls}:\n{summary}"
    );
    eprintln!(
        "full run {full_calls} S3 calls; resumed run {resumed_calls} (killed with {before:?} rows)"
    );

    let plain = env.annotable(&["backfill", "--bucket", PLAIN, "--progress", "off"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_eq!(
        figure(&stdout(&plain), "annotations:"),
        p_annotations as u64
    );

    let dups = duplicates(&env).await;
    assert!(dups.is_empty(), "duplicate journal rows: {dups:#?}");
    let rows = env.sql("SELECT count(*) FROM annotation_journal").await;
    let expected = v_versions + v_annotations + p_versions + p_annotations;
    assert_eq!(rows[0][0].as_deref(), Some(expected.to_string().as_str()));
    assert_converged(&env).await;
    assert_eq!(env.truth().await.len(), v_annotations + p_annotations);
    // Every listed version has its object row: all of the versioned bucket's, the plain
    // bucket's current ones (its only ones).
    assert_objects_converged(&env).await;
    let by_pyiceberg = objects_by_pyiceberg(&env);
    let ours: std::collections::BTreeSet<_> = env
        .objects_view()
        .await
        .into_iter()
        .map(|o| {
            (
                o.bucket,
                o.key,
                o.version_id,
                o.is_delete_marker,
                o.size,
                o.e_tag,
            )
        })
        .collect();
    assert_eq!(
        by_pyiceberg, ours,
        "pyiceberg's fold of object_journal differs from objects"
    );
    let object_rows = env.sql("SELECT count(*) FROM object_journal").await;
    let object_rows: usize = object_rows[0][0].as_deref().unwrap_or("0").parse()?;
    assert!(
        object_rows >= v_versions + p_versions,
        "{object_rows} object rows for {} versions",
        v_versions + p_versions
    );

    // A finished backfill is not resumed: the next one starts over (a rebuild).
    let again = env.annotable(&[
        "backfill",
        "--bucket",
        PLAIN,
        "--dry-run",
        "--progress",
        "off",
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("dry run complete"),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        figure(&stdout(&again), "rows:"),
        (p_versions + p_annotations) as u64
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backfill_of_the_same_bucket_is_refused_then_resumes_the_first() -> TestResult {
    let mut env = Env::start_with(30, 5, false).await;
    env.stack.bucket("annotable-state", false).await;
    env.env.push((
        "ANNOTABLE_BACKFILL_STATE_URL".into(),
        "s3://annotable-state/backfill".into(),
    ));
    populate(&env, PLAIN, false).await;
    let slow = [
        ("ANNOTABLE_BACKFILL_CONCURRENCY", "1"),
        ("ANNOTABLE_BACKFILL_FLUSH_ROWS", "200"),
    ];
    let mut first = env.spawn(
        &[
            "backfill",
            "--bucket",
            PLAIN,
            "--progress",
            "log",
            "--progress-interval",
            "0.2",
        ],
        &slow,
    );
    let started = Instant::now();
    while !first.log().contains("backfill starting") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = env.annotable(&["backfill", "--bucket", PLAIN, "--progress", "off"]);
    assert!(
        !second.status.success(),
        "a second backfill ran beside the first"
    );
    let message = stderr(&second);
    assert!(
        message.contains("already running")
            && message.contains(&format!("pid {}", first.pid()))
            && message.contains("holds the lease until")
            && message.contains("s3://annotable-state/backfill/"),
        "unclear refusal:\n{message}"
    );
    // The lease is an object in the state bucket.
    let listed = env
        .stack
        .s3
        .list_objects_v2()
        .bucket("annotable-state")
        .send()
        .await?;
    assert_eq!(listed.contents().len(), 1);

    // SIGTERM: the first commits what it read, releases the lease, and says how to resume.
    first.signal(15);
    let status = first.wait(Duration::from_secs(60));
    assert!(!status.success(), "an interrupted backfill must not exit 0");
    assert!(
        first.log().contains("run the same command again to resume"),
        "{}",
        first.log()
    );
    let third = env.annotable(&["backfill", "--bucket", PLAIN, "--progress", "off"]);
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(stdout(&third).contains("resumed run"), "{}", stdout(&third));
    let dups = duplicates(&env).await;
    assert!(dups.is_empty(), "duplicate journal rows: {dups:#?}");
    assert_converged(&env).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_backfill_together_converge_while_annotations_change() -> TestResult {
    // A short visibility timeout: messages a stopped serve's last long poll received (and
    // dropped) come back quickly for the final run.
    let mut env = Env::start(4, 5).await;
    let mut workload = Workload::new(0xbacf11, 80);
    workload.run(&env.stack.s3, 300).await;
    let mut serve = env.spawn_serve(&[], &[]);
    let mut backfills = vec![
        env.spawn(
            &[
                "backfill",
                "--bucket",
                VERSIONED,
                "--versions",
                "all",
                "--progress",
                "off",
            ],
            &[
                ("ANNOTABLE_BACKFILL_CONCURRENCY", "2"),
                ("ANNOTABLE_BACKFILL_FLUSH_ROWS", "50"),
            ],
        ),
        env.spawn(
            &["backfill", "--bucket", PLAIN, "--progress", "off"],
            &[
                ("ANNOTABLE_BACKFILL_CONCURRENCY", "2"),
                ("ANNOTABLE_BACKFILL_FLUSH_ROWS", "50"),
            ],
        ),
    ];
    // Annotations change while both run.
    workload.run(&env.stack.s3, 300).await;
    for b in &mut backfills {
        let status = tokio::task::block_in_place(|| b.wait(Duration::from_secs(240)));
        assert!(status.success(), "{}", b.log());
    }
    serve.signal(15);
    let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
    assert!(status.success(), "{}", serve.log());
    let (status, log) = env.serve_until_idle("8", &[]);
    assert!(status.success(), "{log}");
    assert_eq!(env.queue_depth(&env.queue.clone()).await, (0, 0));
    let sources = env
        .sql("SELECT source, count(*) FROM annotation_journal GROUP BY source ORDER BY source")
        .await;
    assert_eq!(sources.len(), 2, "both writers wrote: {sources:?}");
    assert_converged(&env).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_annotation_api_and_directory_buckets_stop_before_writing_anything() -> TestResult {
    let env = Env::start_with(30, 5, false).await;
    populate_few(&env).await;
    let proxy = annotable_tests::FaultProxy::without_annotation_api(env.stack.stack.port()).await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let out = env.annotable_env(
        &["backfill", "--bucket", PLAIN, "--progress", "off"],
        &[("AWS_ENDPOINT_URL_S3", &endpoint)],
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("NotImplemented") && message.contains("no S3 annotation API"),
        "{message}"
    );
    let out = env.annotable(&[
        "backfill",
        "--bucket",
        "logs--use1-az4--x-s3",
        "--progress",
        "off",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("directory bucket"),
        "{}",
        stderr(&out)
    );
    // Nothing written: no catalog, no table, no lease.
    let data = env.data_dir();
    for path in ["catalog.db", "warehouse", "backfill"] {
        assert!(!data.join(path).exists(), "{path} was created");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_s3_refuses_is_reported_and_skipped_not_fatal() -> TestResult {
    let env = Env::start_with(30, 5, false).await;
    populate_few(&env).await;
    let proxy = annotable_tests::FaultProxy::denying(env.stack.stack.port(), "/k2?").await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let out = env.annotable_env(
        &["backfill", "--bucket", PLAIN, "--progress", "off"],
        &[("AWS_ENDPOINT_URL_S3", &endpoint)],
    );
    assert!(
        !out.status.success(),
        "a skipped object must fail the command"
    );
    let (summary, log) = (stdout(&out), stderr(&out));
    assert!(
        summary.contains("backfill complete") && summary.contains("skipped:         1"),
        "{summary}"
    );
    assert!(
        log.contains("k2")
            && log.contains("AccessDenied")
            && log.contains("1 object versions could not be read"),
        "{log}"
    );
    // The other four are indexed.
    let view = env.view().await;
    assert_eq!(view.len(), 4, "{view:?}");
    assert!(view.iter().all(|r| r.object_key != "k2"));
    Ok(())
}

async fn populate_few(env: &Env) {
    for i in 0..5 {
        let key = format!("k{i}");
        env.stack.put_object(PLAIN, &key, "x").await;
        env.stack.put_annotation(PLAIN, &key, None, "a", "{}").await;
    }
}

/// Issue 19, item 11: with the warehouse on S3, backfill's lease and checkpoint live beside the
/// tables and are reached with the `[storage]` settings the tables use. Here the endpoint of
/// the annotated buckets (`[aws]`) refuses the lake bucket, as credentials for the data
/// account would; before, the lease was written through that client and backfill failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_keeps_its_lease_on_an_s3_warehouse_with_the_storage_settings() -> TestResult {
    let mut env = Env::start_with(30, 5, false).await;
    env.stack.bucket("lake", false).await;
    populate_few(&env).await;
    let lake = env.stack.stack.endpoint();
    for (k, v) in [
        ("ANNOTABLE_CATALOG_WAREHOUSE", "s3://lake/warehouse"),
        ("ANNOTABLE_STORAGE_S3_ENDPOINT", lake.as_str()),
        ("ANNOTABLE_STORAGE_S3_REGION", "us-east-1"),
        ("ANNOTABLE_STORAGE_S3_ACCESS_KEY_ID", "test"),
        ("ANNOTABLE_STORAGE_S3_SECRET_ACCESS_KEY", "test"),
        ("ANNOTABLE_STORAGE_S3_PATH_STYLE", "true"),
    ] {
        env.env.push((k.into(), v.into()));
    }
    let proxy = annotable_tests::FaultProxy::refusing(env.stack.stack.port(), "/lake").await;
    let annotations_endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let out = env.annotable_env(
        &["backfill", "--bucket", PLAIN, "--progress", "off"],
        &[("AWS_ENDPOINT_URL", annotations_endpoint.as_str())],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let state = env
        .stack
        .s3
        .list_objects_v2()
        .bucket("lake")
        .prefix("warehouse/_annotable/backfill/")
        .send()
        .await?;
    assert!(
        !state.contents().is_empty(),
        "no lease or checkpoint beside the tables"
    );
    // The annotated bucket was read through the [aws] endpoint (the refusing proxy).
    let through_proxy = proxy.forwarded.load(std::sync::atomic::Ordering::Relaxed);
    assert!(through_proxy > 0, "the annotation reads went elsewhere");
    assert_converged(&env).await;
    Ok(())
}
