//! The convergence workload through the CLI on the catalogs the README offers: S3 Tables, an
//! Iceberg REST catalog (the emulator's `/iceberg` endpoint), and PostgreSQL, the SQL catalog
//! the other tests use in many shapes, here through the same workload so the runs compare.
//! backfill, two serve processes on one table while S3 changes, `maintain` and `query`; the
//! table must end equal to S3, column for column. Each run prints its wall time.
//!
//! The emulator's S3 Tables API does not check version tokens (AWS's does), so without help
//! two writers there overwrite each other's commits; the S3 Tables runs go through
//! `S3TablesCasProxy`, which makes the pointer update the compare-and-swap it is on AWS.

use std::time::{Duration, Instant};

use annotable_tests::{Env, PLAIN, TestResult, VERSIONED, Workload, assert_converged};

#[derive(Debug, Clone, Copy)]
enum Catalog {
    PostgreSql,
    S3Tables,
    Rest,
}

async fn converge_on(catalog: Catalog, seed: u64) -> TestResult {
    let started = Instant::now();
    let mut env = Env::start(30, 5).await;
    let cas = match catalog {
        Catalog::PostgreSql => {
            env.use_postgres("converge");
            None
        }
        Catalog::S3Tables => env.use_table_bucket("via-s3tables", false).await,
        Catalog::Rest => env.use_table_bucket("via-rest", true).await,
    };
    let mut workload = Workload::new(seed, 25);
    workload.run(&env.stack.s3, 80).await;
    for bucket in [VERSIONED, PLAIN] {
        let out = env.annotable(&["backfill", "--bucket", bucket, "--versions", "all"]);
        assert!(
            out.status.success(),
            "backfill {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut a = env.spawn_serve(&[], &[]);
    let mut b = env.spawn_serve(&[], &[]);
    workload.run(&env.stack.s3, 160).await;
    env.wait_until_drained(Duration::from_secs(180)).await;
    for serve in [&mut a, &mut b] {
        serve.signal(15);
        let status = tokio::task::block_in_place(|| serve.wait(Duration::from_secs(60)));
        assert!(status.success(), "{}", serve.log());
    }
    let maintain = env.annotable(&["maintain"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&maintain.stdout),
        String::from_utf8_lossy(&maintain.stderr)
    );
    assert!(maintain.status.success(), "maintain: {said}");
    // Files the catalog's own maintenance looks after are left to it, and maintain says so.
    let handed_off = match catalog {
        Catalog::Rest => Some("catalog server's own maintenance"),
        Catalog::S3Tables => Some("S3 Tables' managed maintenance"),
        Catalog::PostgreSql => None,
    };
    match handed_off {
        Some(handed_off) => assert!(said.contains(handed_off), "{said}"),
        // The SQL catalog's tables are annotable's to compact, and two writers' commits left
        // small files to rewrite.
        None => assert!(said.contains("compact  rewrote"), "{said}"),
    }
    let query = env.annotable(&[
        "query",
        "-q",
        "--format",
        "csv",
        "SELECT count(*) FROM annotations",
    ]);
    assert!(
        query.status.success(),
        "query: {}",
        String::from_utf8_lossy(&query.stderr)
    );
    assert_converged(&env).await;
    env.assert_nothing_left(&format!("{}\n{}", a.log(), b.log()))
        .await;
    if let Some(cas) = cas {
        // The two writers did race for the pointer, and the losers retried.
        let conflicts = cas.conflicts.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("S3 Tables commits refused as conflicts: {conflicts}");
    }
    eprintln!(
        "the convergence workload on {catalog:?}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_convergence_workload_passes_on_postgresql() -> TestResult {
    converge_on(Catalog::PostgreSql, 0x9051).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_convergence_workload_passes_on_s3_tables() -> TestResult {
    converge_on(Catalog::S3Tables, 0x53).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_convergence_workload_passes_on_an_iceberg_rest_catalog() -> TestResult {
    converge_on(Catalog::Rest, 0x4e57).await
}

/// Glue cannot hold the journal with iceberg 0.10.1: every command refuses it before doing
/// anything, naming what works instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glue_is_refused_at_start_with_the_alternatives() -> TestResult {
    let env = Env::start_with(30, 5, false).await;
    for command in [&["serve"][..], &["query", "SELECT 1"], &["maintain"]] {
        let out = env.annotable_env(
            command,
            &[
                ("ANNOTABLE_CATALOG_TYPE", "glue"),
                ("ANNOTABLE_CATALOG_WAREHOUSE", "s3://lake/warehouse"),
            ],
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?} accepted glue");
        assert!(
            said.contains("timestamptz") && said.contains("s3tables") && said.contains("rest"),
            "{command:?}: {said}"
        );
    }
    Ok(())
}
