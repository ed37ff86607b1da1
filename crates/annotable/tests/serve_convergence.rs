//! `annotable serve` end to end against the emulator: a seeded random workload over a versioned
//! and an unversioned bucket, then the `annotations` view must equal what S3 reports.

mod support;

use support::{Env, TestResult, Workload, assert_converged};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_converges_to_s3_after_a_random_workload() -> TestResult {
    let mut env = Env::start(30, 5).await;
    let mut workload = Workload::new(0x5eed, 60);
    let ops = workload.run(&env.stack.s3, 520).await;
    assert!(ops >= 500);
    let (status, log) = env.serve_until_idle("3", &[]);
    assert!(status.success(), "serve failed: {status}\n{log}");
    assert_converged(&env).await;
    let restated = env.restated().await;
    assert!(restated.is_empty(), "restating rows: {restated:#?}");
    // Nothing left behind, nothing poisoned.
    assert_eq!(env.queue_depth(&env.queue.clone()).await, (0, 0));
    assert_eq!(
        env.queue_depth(&env.dlq.clone()).await,
        (0, 0),
        "log:\n{log}"
    );
    Ok(())
}
