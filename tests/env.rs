//! A private emulator with a versioned and an unversioned bucket and a queue, the real
//! `annotable` binary run against it as a child process (the CLI runner), and the view side of
//! the convergence check.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed set-up is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::truth::{Row, read_version};
use crate::{Queue, Stack};
use annotable::config::Config;
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use aws_sdk_sqs::types::QueueAttributeName;

/// The `annotable` binary under test: nextest names it for the tests of its package
/// (`NEXTEST_BIN_EXE_annotable`), `ANNOTABLE_BIN` overrides, and otherwise it is where Cargo
/// puts it, beside the test binary's `deps/` folder.
pub fn annotable_bin() -> PathBuf {
    for var in ["ANNOTABLE_BIN", "NEXTEST_BIN_EXE_annotable"] {
        if let Some(path) = std::env::var_os(var) {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in <target>/<profile>/deps");
    let bin = profile_dir.join("annotable");
    assert!(
        bin.exists(),
        "{} does not exist: build it (cargo build -p annotable) or set ANNOTABLE_BIN",
        bin.display()
    );
    bin
}

pub const VERSIONED: &str = "serve-versioned";
pub const PLAIN: &str = "serve-plain";

pub struct Env {
    pub stack: Stack,
    pub dir: tempfile::TempDir,
    pub queue: Queue,
    pub dlq: Queue,
    /// Extra environment for every serve process (catalog overrides).
    pub env: Vec<(String, String)>,
    runs: usize,
}

impl Env {
    /// Emulator, two buckets notifying one queue (set up by `annotable setup notifications`),
    /// a dead-letter queue with `max_receives`, and the queue's visibility timeout.
    pub async fn start(visibility_timeout: u32, max_receives: u32) -> Env {
        Env::start_with(visibility_timeout, max_receives, true).await
    }

    /// Like [`Env::start`]; `notify: false` leaves the buckets without notifications (backfill
    /// tests that need no queue traffic).
    pub async fn start_with(visibility_timeout: u32, max_receives: u32, notify: bool) -> Env {
        let stack = Stack::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let dlq = stack.queue("serve-dlq", &[]).await;
        let redrive = format!(
            r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":"{max_receives}"}}"#,
            dlq.arn
        );
        let queue = stack
            .queue(
                "serve-events",
                &[
                    (
                        QueueAttributeName::VisibilityTimeout,
                        visibility_timeout.to_string(),
                    ),
                    (QueueAttributeName::RedrivePolicy, redrive),
                ],
            )
            .await;
        stack.bucket(VERSIONED, true).await;
        stack.bucket(PLAIN, false).await;
        let env = Env {
            stack,
            dir,
            queue,
            dlq,
            env: Vec::new(),
            runs: 0,
        };
        for bucket in [VERSIONED, PLAIN].into_iter().filter(|_| notify) {
            let out = env.annotable(&[
                "setup",
                "notifications",
                "--bucket",
                bucket,
                "--queue-url",
                &env.queue.url.clone(),
            ]);
            assert!(
                out.status.success(),
                "setup notifications: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The s3:TestEvent messages that setup caused stay on the queue: serve must ack them.
        env
    }

    /// Points every process at a shared PostgreSQL catalog (its own catalog name) and a shared
    /// warehouse.
    pub fn use_postgres(&mut self, tag: &str) {
        self.use_postgres_on(5432, tag);
    }

    /// [`Env::use_postgres`] through another port (a [`TcpSwitch`] in front of PostgreSQL).
    pub fn use_postgres_on(&mut self, port: u16, tag: &str) {
        let warehouse = self.dir.path().join("shared-warehouse");
        std::fs::create_dir_all(&warehouse).expect("warehouse dir");
        self.env = vec![
            (
                "ANNOTABLE_CATALOG_URI".into(),
                format!("postgres://postgres@127.0.0.1:{port}/test"),
            ),
            (
                "ANNOTABLE_CATALOG_WAREHOUSE".into(),
                warehouse.display().to_string(),
            ),
            (
                "ANNOTABLE_CATALOG_NAME".into(),
                format!("{tag}_{}", fastrand::u32(..)),
            ),
        ];
    }

    /// Points every process at an S3 Tables table bucket (created here) on the emulator:
    /// `catalog.type = s3tables` through a [`S3TablesCasProxy`] (returned; keep it), or `rest`
    /// through the emulator's Iceberg REST endpoint for the same kind of bucket (`/iceberg`,
    /// the table bucket ARN as the warehouse), which checks commit requirements itself.
    pub async fn use_table_bucket(
        &mut self,
        name: &str,
        rest: bool,
    ) -> Option<crate::net::S3TablesCasProxy> {
        let arn = aws_sdk_s3tables::Client::new(&self.stack.stack.sdk_config())
            .create_table_bucket()
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateTableBucket {name}: {e:?}"))
            .arn
            .clone();
        let endpoint = self.stack.stack.endpoint();
        let proxy = if rest {
            None
        } else {
            Some(crate::net::S3TablesCasProxy::start(self.stack.stack.port()).await)
        };
        let (kind, uri) = match &proxy {
            None => ("rest", format!("{endpoint}/iceberg")),
            Some(proxy) => ("s3tables", format!("http://127.0.0.1:{}", proxy.port)),
        };
        self.env = vec![
            ("ANNOTABLE_CATALOG_TYPE".into(), kind.into()),
            ("ANNOTABLE_CATALOG_URI".into(), uri),
            ("ANNOTABLE_CATALOG_WAREHOUSE".into(), arn.clone()),
            ("ANNOTABLE_STORAGE_S3_ENDPOINT".into(), endpoint),
            ("ANNOTABLE_STORAGE_S3_REGION".into(), "us-east-1".into()),
            ("ANNOTABLE_STORAGE_S3_ACCESS_KEY_ID".into(), "test".into()),
            (
                "ANNOTABLE_STORAGE_S3_SECRET_ACCESS_KEY".into(),
                "test".into(),
            ),
            ("ANNOTABLE_STORAGE_S3_PATH_STYLE".into(), "true".into()),
        ];
        proxy
    }

    /// Whether the catalog can hold the `annotations` state table (the SQL catalog only).
    pub fn catalog_holds_the_state(&self) -> bool {
        !self
            .env
            .iter()
            .any(|(k, v)| k == "ANNOTABLE_CATALOG_TYPE" && v != "sql")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn base_env(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("AWS_ENDPOINT_URL".into(), self.stack.stack.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("ANNOTABLE_AWS_FORCE_PATH_STYLE".into(), "true".into()),
            (
                "ANNOTABLE_DATA_DIR".into(),
                self.data_dir().display().to_string(),
            ),
            ("ANNOTABLE_SERVE_QUEUE_URL".into(), self.queue.url.clone()),
            ("ANNOTABLE_SERVE_HTTP_ADDR".into(), "off".into()),
            ("ANNOTABLE_SERVE_FLUSH_AGE_MS".into(), "500".into()),
        ];
        v.extend(self.env.iter().cloned());
        v
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(annotable_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("ANNOTABLE_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(self.dir.path())
            .args(args)
            .envs(self.base_env());
        cmd
    }

    /// Runs a short annotable command to completion.
    pub fn annotable(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run annotable")
    }

    /// Runs a short annotable command with extra environment to completion.
    pub fn annotable_env(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        self.command(args)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .output()
            .expect("run annotable")
    }

    /// Starts `annotable serve` with extra env; its JSON log goes to a file.
    pub fn spawn_serve(&mut self, args: &[&str], extra: &[(&str, &str)]) -> Serve {
        self.spawn(&[&["serve"], args].concat(), extra)
    }

    /// Starts any `annotable` command with extra env; its output goes to a file.
    pub fn spawn(&mut self, args: &[&str], extra: &[(&str, &str)]) -> Serve {
        self.runs += 1;
        let log = self.dir.path().join(format!(
            "{}-{}.log",
            args.first().unwrap_or(&"run"),
            self.runs
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = self.command(args);
        cmd.envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env("ANNOTABLE_LOG", "info,annotable=debug")
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = cmd.spawn().expect("spawn serve");
        Serve {
            child: Some(child),
            log,
            started: Instant::now(),
        }
    }

    /// Runs serve until it has been idle for `idle` seconds (the queue drained).
    pub fn serve_until_idle(&mut self, idle: &str, extra: &[(&str, &str)]) -> (ExitStatus, String) {
        let mut serve = self.spawn_serve(&["--exit-when-idle", idle], extra);
        let status = serve.wait(Duration::from_secs(240));
        (status, serve.log())
    }

    /// S3's truth: every annotation of every object version of both buckets (every listing
    /// page; the reads run 16 at a time).
    pub async fn truth(&self) -> BTreeSet<Row> {
        use futures::StreamExt;
        let s3 = &self.stack.s3;
        let mut versions: Vec<(String, String, Option<String>)> = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let listed = s3
                .list_object_versions()
                .bucket(VERSIONED)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .expect("ListObjectVersions");
            for v in listed.versions() {
                versions.push((
                    VERSIONED.into(),
                    v.key().unwrap_or_default().into(),
                    v.version_id().map(str::to_string),
                ));
            }
            if !listed.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = listed.next_key_marker().map(str::to_string);
            version_marker = listed.next_version_id_marker().map(str::to_string);
        }
        let mut after = None;
        loop {
            let plain = s3
                .list_objects_v2()
                .bucket(PLAIN)
                .set_start_after(after.take())
                .send()
                .await
                .expect("ListObjectsV2");
            for o in plain.contents() {
                versions.push((PLAIN.into(), o.key().unwrap_or_default().into(), None));
            }
            if !plain.is_truncated().unwrap_or(false) {
                break;
            }
            after = plain
                .contents()
                .last()
                .and_then(|o| o.key())
                .map(str::to_string);
        }
        let reads =
            futures::stream::iter(versions)
                .map(|(bucket, key, version)| async move {
                    read_version(s3, bucket, key, version).await
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
        reads.into_iter().flatten().collect()
    }

    pub fn config(&self) -> Config {
        Config::load(
            None,
            self.base_env()
                .into_iter()
                .filter(|(k, _)| k.starts_with("ANNOTABLE_")),
        )
        .expect("config")
    }

    /// Runs SQL over the table and returns every value as an optional string.
    pub async fn sql(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let session = annotable::query::open_session(&self.config())
            .await
            .expect("session");
        let result = session
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut rows = Vec::new();
        for batch in &result.batches {
            let cols: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::cast(c, &DataType::Utf8).expect("cast"))
                .collect();
            for i in 0..batch.num_rows() {
                rows.push(
                    cols.iter()
                        .map(|c| {
                            let c = c.as_string::<i32>();
                            (!c.is_null(i)).then(|| c.value(i).to_string())
                        })
                        .collect(),
                );
            }
        }
        rows
    }

    /// `annotations`, every column; panics on a malformed `sequence_number`.
    pub async fn view(&self) -> BTreeSet<Row> {
        self.view_of("annotations").await
    }

    /// The current state under the SQL name `name` (`annotations`, `annotations_state`,
    /// `annotations_from_journal`), every column; panics on a malformed `sequence_number`.
    pub async fn view_of(&self, name: &str) -> BTreeSet<Row> {
        self.sql(&format!(
            "SELECT bucket, object_key, object_version_id, object_join_key, name, \
             last_modified_date, size, e_tag, checksum_algorithm, replication_status, text_value, \
             sequence_number FROM {name}"
        ))
        .await
        .into_iter()
        .map(|r| {
            let seq = r[11].clone().unwrap_or_default();
            // `<20-digit ns>-<writer id in hex>` (serve's ids are 8 digits, backfill's longer).
            let well_formed = seq.len() > 21
                && seq[..20].bytes().all(|b| b.is_ascii_digit())
                && &seq[20..21] == "-"
                && seq[21..].bytes().all(|b| b.is_ascii_hexdigit());
            assert!(well_formed, "malformed sequence_number {seq:?} in {r:?}");
            Row {
                bucket: r[0].clone().unwrap_or_default(),
                object_key: r[1].clone().unwrap_or_default(),
                object_version_id: r[2].clone(),
                object_join_key: r[3].clone().unwrap_or_default(),
                name: r[4].clone().unwrap_or_default(),
                last_modified_date: r[5].as_deref().map(|t| {
                    t.replace(' ', "T")
                        .parse()
                        .unwrap_or_else(|e| panic!("last_modified_date {t:?}: {e}"))
                }),
                size: r[6].as_deref().map(|n| n.parse().expect("size")),
                e_tag: r[7].clone(),
                checksum_algorithm: r[8].clone(),
                replication_status: r[9].clone(),
                text_value: r[10].clone().unwrap_or_default(),
            }
        })
        .collect()
    }

    /// Annotations that got two consecutive journal rows describing the same state (no
    /// OBJECT_RESET of the version between them).
    pub async fn restated(&self) -> Vec<String> {
        let rows = self
            .sql(
                "SELECT bucket, object_key, coalesce(object_version_id, ''), coalesce(name, ''), record_type, sequence_number, \
                 coalesce(text_value, ''), coalesce(e_tag, ''), coalesce(CAST(last_modified_date AS VARCHAR), '') \
                 FROM annotation_journal ORDER BY 1, 2, 3, 6, CASE WHEN record_type = 'OBJECT_RESET' THEN 0 ELSE 1 END",
            )
            .await;
        let mut last: BTreeMap<(String, String, String, String), (String, String)> =
            BTreeMap::new();
        let mut problems = Vec::new();
        for r in rows {
            let s = |i: usize| r[i].clone().unwrap_or_default();
            let version = (s(0), s(1), s(2));
            if s(4) == "OBJECT_RESET" {
                last.retain(|k, _| (k.0.clone(), k.1.clone(), k.2.clone()) != version);
                continue;
            }
            let state = format!("{}|{}|{}|{}", s(4), s(6), s(7), s(8));
            let key = (s(0), s(1), s(2), s(3));
            if let Some((prev_state, prev_seq)) = last.get(&key)
                && *prev_state == state
            {
                problems.push(format!("{key:?}: {state} at {prev_seq} and {}", s(5)));
            }
            last.insert(key, (state, s(5)));
        }
        problems
    }

    /// Asserts that the queue is drained and nothing reached the dead-letter queue.
    pub async fn assert_nothing_left(&self, log: &str) {
        let queue = self.queue_depth(&self.queue.clone()).await;
        assert_eq!(queue, (0, 0), "messages left on the queue\n{log}");
        let dlq = self.queue_depth(&self.dlq.clone()).await;
        assert_eq!(dlq, (0, 0), "messages dead-lettered\n{log}");
    }

    /// Waits until the queue holds nothing, visible or in flight.
    pub async fn wait_until_drained(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.queue_depth(&self.queue.clone()).await != (0, 0) {
            assert!(
                Instant::now() < deadline,
                "the queue did not drain within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Messages still on the queue (visible + in flight).
    pub async fn queue_depth(&self, queue: &Queue) -> (u64, u64) {
        let attrs = self
            .stack
            .sqs
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes");
        let a = attrs.attributes().cloned().unwrap_or_default();
        let n = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }
}

/// A running `annotable serve`; killed on drop.
pub struct Serve {
    child: Option<Child>,
    pub log: PathBuf,
    pub started: Instant,
}

impl Serve {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: libc::kill on our own child's pid.
        let _ = nix_kill(self.pid(), sig);
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                self.child = None;
                panic!(
                    "serve did not exit within {limit:?} ({status}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`Serve::wait`], also returning the process's peak resident memory in bytes
    /// (`VmHWM`, read until it exits; the peak of a process that idles before exiting).
    pub fn wait_measuring(&mut self, limit: Duration) -> (ExitStatus, u64) {
        let started = Instant::now();
        let status_file = format!("/proc/{}/status", self.pid());
        let mut peak = 0u64;
        loop {
            let hwm = std::fs::read_to_string(&status_file)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .unwrap_or(0);
            peak = peak.max(hwm * 1024);
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return (status, peak);
            }
            if started.elapsed() > limit {
                return (self.wait(Duration::ZERO), peak);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Messages this run deleted, from its final log line (0 without one).
    pub fn acked(&self) -> u64 {
        self.lines_with("serve stopped")
            .first()
            .and_then(|l| l["acked"].as_u64())
            .unwrap_or(0)
    }

    /// The JSON log lines whose message contains `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn nix_kill(pid: i32, sig: i32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}
