//! Shared harness of the `serve` tests: a private emulator, a bucket pair and a queue, the real
//! `annotable` binary as a child process, a seeded random workload, and the two sides of the
//! convergence check (S3's truth, the `annotations` view).

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use annotable::config::Config;
use annotable_tests::{Queue, Stack};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_sqs::types::QueueAttributeName;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One annotation as both sides report it: every column of the `annotations` view except
/// `sequence_number` (which S3 has no value for; [`Env::view`] checks its form instead).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub bucket: String,
    pub object_key: String,
    pub object_version_id: Option<String>,
    pub object_join_key: String,
    pub name: String,
    pub last_modified_date: Option<chrono::NaiveDateTime>,
    pub size: Option<i64>,
    pub e_tag: Option<String>,
    pub checksum_algorithm: Option<String>,
    pub replication_status: Option<String>,
    pub text_value: String,
}

/// The documented object_join_key derivation, computed here independently of the code under
/// test: the first 16 bytes of SHA-256 over `bucket \n key \n version-or-null`, in hex.
pub fn join_key(bucket: &str, key: &str, version: Option<&str>) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{bucket}\n{key}\n{}", version.unwrap_or("null")));
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_annotable"));
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

    /// The `annotations` view, every column; panics on a malformed `sequence_number`.
    pub async fn view(&self) -> BTreeSet<Row> {
        self.sql(
            "SELECT bucket, object_key, object_version_id, object_join_key, name, \
             last_modified_date, size, e_tag, checksum_algorithm, replication_status, text_value, \
             sequence_number FROM annotations",
        )
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

/// Keys that exercise the decoding rules.
pub const KEYS: [&str; 6] = [
    "plain.txt",
    "dir/with space.txt",
    "a+b=c.txt",
    "ünïcødé/文件.txt",
    "x%2Fy.txt",
    "deep/a/b/c.json",
];

/// A seeded random workload over both buckets: annotation put/overwrite/delete, object
/// overwrite/delete/copy, and deletes of specific versions.
pub struct Workload {
    rng: fastrand::Rng,
    objects: usize,
    /// Existing keys per bucket.
    live: BTreeMap<(&'static str, String), ()>,
}

impl Workload {
    pub fn new(seed: u64, objects: usize) -> Self {
        Workload {
            rng: fastrand::Rng::with_seed(seed),
            objects,
            live: BTreeMap::new(),
        }
    }

    fn key(&mut self) -> String {
        let i = self.rng.usize(0..self.objects);
        format!("{i:03}/{}", KEYS[i % KEYS.len()])
    }

    /// Runs `ops` operations; returns how many S3 writes were made.
    pub async fn run(&mut self, s3: &aws_sdk_s3::Client, ops: usize) -> usize {
        let mut done = 0;
        while done < ops {
            let bucket: &'static str = if self.rng.bool() { VERSIONED } else { PLAIN };
            let key = self.key();
            let exists = self.live.contains_key(&(bucket, key.clone()));
            if !exists {
                put_object(s3, bucket, &key, &format!("body-{}", self.rng.u32(..))).await;
                self.live.insert((bucket, key), ());
                done += 1;
                continue;
            }
            let names = ["color", "owner", "größe", "review.status", "label_2"];
            match self.rng.u32(0..100) {
                0..=54 => {
                    let name = names[self.rng.usize(0..names.len())];
                    let value = format!("{{\"v\":{},\"by\":\"t\"}}", self.rng.u32(0..5));
                    let r = s3
                        .put_object_annotation()
                        .bucket(bucket)
                        .key(&key)
                        .annotation_name(name)
                        .annotation_payload(ByteStream::from(value.into_bytes()))
                        .send()
                        .await;
                    r.unwrap_or_else(|e| panic!("PutObjectAnnotation {bucket}/{key}: {e:?}"));
                }
                55..=69 => {
                    let name = names[self.rng.usize(0..names.len())];
                    let _ = s3
                        .delete_object_annotation()
                        .bucket(bucket)
                        .key(&key)
                        .annotation_name(name)
                        .send()
                        .await;
                }
                70..=79 => {
                    put_object(s3, bucket, &key, &format!("body-{}", self.rng.u32(..))).await;
                }
                80..=87 => {
                    s3.delete_object()
                        .bucket(bucket)
                        .key(&key)
                        .send()
                        .await
                        .expect("DeleteObject");
                    self.live.remove(&(bucket, key));
                }
                88..=93 => {
                    let dest = self.key();
                    s3.copy_object()
                        .bucket(bucket)
                        .key(&dest)
                        .copy_source(format!("{bucket}/{}", urlencode(&key)))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("CopyObject {bucket}/{key} -> {dest}: {e:?}"));
                    self.live.insert((bucket, dest), ());
                }
                _ => {
                    // Delete a specific (non-current) version of a versioned object, or an
                    // annotation on one.
                    if bucket == VERSIONED {
                        let versions = s3
                            .list_object_versions()
                            .bucket(bucket)
                            .prefix(&key)
                            .send()
                            .await
                            .expect("versions");
                        let old: Vec<String> = versions
                            .versions()
                            .iter()
                            .filter(|v| {
                                v.key() == Some(key.as_str()) && v.is_latest() != Some(true)
                            })
                            .filter_map(|v| v.version_id().map(str::to_string))
                            .collect();
                        if let Some(v) = old.first() {
                            if self.rng.bool() {
                                let _ = s3
                                    .delete_objects()
                                    .bucket(bucket)
                                    .delete(
                                        Delete::builder()
                                            .objects(
                                                ObjectIdentifier::builder()
                                                    .key(&key)
                                                    .version_id(v)
                                                    .build()
                                                    .expect("id"),
                                            )
                                            .build()
                                            .expect("delete"),
                                    )
                                    .send()
                                    .await;
                            } else {
                                let _ = s3
                                    .put_object_annotation()
                                    .bucket(bucket)
                                    .key(&key)
                                    .version_id(v)
                                    .annotation_name("old-version-note")
                                    .annotation_payload(ByteStream::from_static(b"kept"))
                                    .send()
                                    .await;
                            }
                        }
                    }
                }
            }
            done += 1;
        }
        done
    }
}

async fn put_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutObject {bucket}/{key}: {e:?}"));
}

fn urlencode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Every annotation of one object version as S3 reports it: ListObjectAnnotations for the names,
/// checksum algorithm and replication status, GetObjectAnnotation for the payload, ETag and
/// Last-Modified (the values a user reading an annotation sees).
pub async fn read_version(
    s3: &aws_sdk_s3::Client,
    bucket: String,
    key: String,
    version: Option<String>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut token = None;
    loop {
        let list = s3
            .list_object_annotations()
            .bucket(&bucket)
            .key(&key)
            .set_version_id(version.clone())
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("ListObjectAnnotations");
        for entry in list.annotations() {
            let name = entry.annotation_name().to_string();
            let got = s3
                .get_object_annotation()
                .bucket(&bucket)
                .key(&key)
                .set_version_id(version.clone())
                .annotation_name(&name)
                .send()
                .await
                .expect("GetObjectAnnotation");
            let e_tag = got.e_tag().map(|e| e.trim_matches('"').to_string());
            let last_modified_date = got.last_modified().map(|t| {
                chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
                    .expect("time")
                    .naive_utc()
            });
            let body = got
                .annotation_payload
                .collect()
                .await
                .expect("payload")
                .into_bytes();
            let table_version = version.clone().filter(|v| v != "null");
            rows.push(Row {
                object_join_key: join_key(&bucket, &key, table_version.as_deref()),
                bucket: bucket.clone(),
                object_key: key.clone(),
                object_version_id: table_version,
                name,
                last_modified_date,
                size: Some(body.len() as i64),
                e_tag,
                checksum_algorithm: entry
                    .checksum_algorithm()
                    .first()
                    .map(|a| a.as_str().to_string()),
                replication_status: entry.replication_status().map(|r| r.as_str().to_string()),
                text_value: String::from_utf8(body.to_vec()).expect("utf8"),
            });
        }
        match list.next_continuation_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return rows,
        }
    }
}

/// Asserts the view equals S3 in every column, printing the difference.
pub async fn assert_converged(env: &Env) {
    let truth = env.truth().await;
    let view = env.view().await;
    let missing: Vec<_> = truth.difference(&view).take(10).collect();
    let extra: Vec<_> = view.difference(&truth).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "annotations view != S3 ({} in S3, {} in view)\nmissing from view: {missing:#?}\nextra in view: {extra:#?}",
        truth.len(),
        view.len()
    );
    assert!(
        !truth.is_empty(),
        "the workload left no annotation: the check would prove nothing"
    );
}

/// What a [`FaultProxy`] refuses outright.
pub enum Refuse {
    Nothing,
    /// Every annotation API call: 501 NotImplemented.
    AnnotationApi,
    /// Annotation calls whose path contains this: 403 AccessDenied.
    Path(String),
    /// Any call whose path contains this: 403 AccessDenied (a bucket these credentials cannot
    /// reach).
    AnyPath(String),
}

/// An HTTP/1.1 proxy in front of the emulator that answers a share of the requests itself with
/// S3 throttling and 5xx errors (one request per connection, `Connection: close`).
pub struct FaultProxy {
    pub port: u16,
    /// Answer every annotation API call with 501 NotImplemented (a store without the API).
    pub injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream_port: u16, fault_percent: u32) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, fault_percent, Refuse::Nothing).await
    }

    /// A proxy that answers AccessDenied to every annotation call on a key whose request path
    /// contains `path_part` (a bucket policy denying one object).
    pub async fn denying(upstream_port: u16, path_part: &str) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, 0, Refuse::Path(path_part.to_string())).await
    }

    /// A proxy that answers AccessDenied to every call whose request path contains `path_part`.
    pub async fn refusing(upstream_port: u16, path_part: &str) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, 0, Refuse::AnyPath(path_part.to_string())).await
    }

    /// A proxy whose S3 has no annotation API: every `?annotation` request gets 501
    /// NotImplemented, as from IBM COS or another S3-compatible store.
    pub async fn without_annotation_api(upstream_port: u16) -> FaultProxy {
        FaultProxy::start_mode(upstream_port, 0, Refuse::AnnotationApi).await
    }

    async fn start_mode(upstream_port: u16, fault_percent: u32, refuse: Refuse) -> FaultProxy {
        let refuse = std::sync::Arc::new(refuse);
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let injected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (inj, fwd) = (injected.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(99);
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let fault = rng.u32(0..100) < fault_percent;
                let slow_down = rng.bool();
                let (inj, fwd) = (inj.clone(), fwd.clone());
                let refuse = refuse.clone();
                tokio::spawn(async move {
                    if fault {
                        inj.fetch_add(1, Ordering::Relaxed);
                    } else {
                        fwd.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = proxy_one(conn, upstream_port, fault, slow_down, &refuse).await;
                });
            }
        });
        FaultProxy {
            port,
            injected,
            forwarded,
            task,
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_one(
    mut conn: tokio::net::TcpStream,
    upstream_port: u16,
    fault: bool,
    slow_down: bool,
    refuse: &Refuse,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request_line = head.lines().next().unwrap_or("");
    let annotation_call =
        request_line.contains("?annotation") || request_line.contains("&annotation");
    let refusal = match refuse {
        Refuse::AnnotationApi if annotation_call => Some((
            "501 Not Implemented",
            "NotImplemented",
            "A header you provided implies functionality that is not implemented.",
        )),
        Refuse::Path(part) if annotation_call && request_line.contains(part.as_str()) => {
            Some(("403 Forbidden", "AccessDenied", "Access Denied"))
        }
        Refuse::AnyPath(part) if request_line.contains(part.as_str()) => {
            Some(("403 Forbidden", "AccessDenied", "Access Denied"))
        }
        _ => None,
    };
    if let Some((status, code, message)) = refusal {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        );
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await?;
        return conn.shutdown().await;
    }
    if fault {
        let (status, code) = if slow_down {
            ("503 Slow Down", "SlowDown")
        } else {
            ("500 Internal Server Error", "InternalError")
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
        );
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await?;
        return conn.shutdown().await;
    }
    let mut rewritten: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.write_all(rewritten.as_bytes()).await?;
    upstream.write_all(&buf[head_end..]).await?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).await?;
    conn.write_all(&response).await?;
    conn.shutdown().await
}

/// A TCP forwarder to a local service that can be switched off: then every open connection is
/// cut and new ones are closed at once (a database outage, as the client sees it).
pub struct TcpSwitch {
    pub port: u16,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpSwitch {
    pub async fn start(upstream_port: u16) -> TcpSwitch {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind switch");
        let port = listener.local_addr().expect("addr").port();
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (on2, conns2) = (on.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !on2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                conns2.lock().expect("lock").spawn(async move {
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                });
            }
        });
        TcpSwitch {
            port,
            on,
            connections,
            accept,
        }
    }

    /// Cuts every connection and refuses new ones, or forwards again.
    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            self.connections.lock().expect("lock").abort_all();
        }
    }
}

impl Drop for TcpSwitch {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().expect("lock").abort_all();
    }
}

/// `GET path` on 127.0.0.1:`port`: (status code, body); `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// A port that was free a moment ago, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
