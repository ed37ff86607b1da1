//! Shared by the benchmarks: realistic journal rows, the Python baselines, timing and memory.
//!
//! Rows follow the issue's description of real traffic: object keys around 70 bytes, JSON
//! payloads around 200 bytes, 10% DELETEs (plus 2% OBJECT_RESETs from object overwrites),
//! half the objects versioned, a handful of buckets and annotation names, and each
//! annotation written several times over its history.

use std::path::PathBuf;

/// The same allocator as the `annotable` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::Command;
use std::time::Instant;

use annotation_table::{JournalRow, RecordType, Source};
use chrono::{DateTime, Duration, Utc};

/// A small, fast, deterministic generator (the figures must be reproducible).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const NAMES: [&str; 8] = [
    "review",
    "owner",
    "labels",
    "retention",
    "classification",
    "caption",
    "source-system",
    "checksum-note",
];
const STATUSES: [&str; 4] = ["approved", "pending", "rejected", "needs-changes"];

/// How many buckets the rows are spread over: 4, or `ANNOTABLE_BENCH_BUCKETS` (1 shows how an
/// append of one partition, a single-bucket deployment's every batch, uses the cores).
pub fn buckets() -> u64 {
    std::env::var("ANNOTABLE_BENCH_BUCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b| b > 0)
        .unwrap_or(4)
}

/// `n` journal rows over `n / 5` objects (so each annotation has a history), in sequence order.
pub fn realistic_rows(n: usize, seed: u64) -> Vec<JournalRow> {
    realistic_rows_range(0..n, n, seed)
}

/// Rows `range` of the `n`-row journal of [`realistic_rows`] (each row depends only on its
/// index, so a large journal can be generated in pieces).
pub fn realistic_rows_range(range: std::ops::Range<usize>, n: usize, seed: u64) -> Vec<JournalRow> {
    let objects = (n / 5).max(1) as u64;
    let start: DateTime<Utc> = Utc::now() - Duration::hours(2);
    let buckets = buckets();
    range
        .map(|i| {
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
            rng.below(2);
            let object = rng.below(objects);
            let bucket = format!("media-archive-{}", object % buckets);
            // ~70-byte keys: a tenant, a date path, a file name
            let key = format!(
                "tenant-{:04}/uploads/2026/{:02}/{:02}/images/IMG_{:012}_original.jpeg",
                object % 1000,
                1 + object % 12,
                1 + object % 28,
                object
            );
            let version = object.is_multiple_of(2).then(|| format!("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIb{:06}", object % 1_000_000));
            let roll = rng.below(100);
            let record_type = match roll {
                0..=9 => RecordType::Delete,
                10..=11 => RecordType::ObjectReset,
                _ => RecordType::Put,
            };
            let name = (record_type != RecordType::ObjectReset).then(|| NAMES[rng.below(NAMES.len() as u64) as usize].to_string());
            let at = start + Duration::microseconds(i as i64 * 1_000);
            // ~200-byte JSON payloads
            let text = (record_type == RecordType::Put).then(|| {
                format!(
                    r#"{{"status":"{}","reviewer":"user-{:05}","score":{},"tags":["t{}","t{}"],"note":"revision {} of object {} checked against policy v{}","approved":{}}}"#,
                    STATUSES[rng.below(4) as usize],
                    rng.below(100_000),
                    rng.below(100),
                    rng.below(50),
                    rng.below(50),
                    i,
                    object,
                    rng.below(9),
                    rng.below(2) == 0
                )
            });
            JournalRow {
                object_join_key: format!("{bucket}/{key}/{}", version.as_deref().unwrap_or("null")),
                bucket,
                object_key: key,
                object_version_id: version,
                name,
                record_type,
                sequence_number: format!("{:020}-{:04}", 1_700_000_000_000_000_000u64 + i as u64, 1),
                last_modified_date: text.as_ref().map(|_| at.naive_utc()),
                size: text.as_ref().map(|t| t.len() as i64),
                e_tag: text.as_ref().map(|t| format!("\"{:032x}\"", t.len() as u128 * 0x9e37_79b9_7f4a_7c15)),
                checksum_algorithm: text.as_ref().map(|_| "CRC64NVME".to_string()),
                replication_status: None,
                text_value: text,
                event_name: Some(match record_type {
                    RecordType::Put => "ObjectAnnotation:Put",
                    RecordType::Delete => "ObjectAnnotation:Delete",
                    RecordType::ObjectReset => "ObjectCreated:Put",
                }.to_string()),
                event_time: Some(at),
                source: Source::Notification,
                requester: Some("123456789012".to_string()),
                source_ip_address: Some("10.0.0.1".to_string()),
                request_id: Some(format!("{:016X}", rng.below(u64::MAX))),
                ingested_at: at,
            }
        })
        .collect()
}

/// Builds (once) an embedded-catalog journal `s3_metadata.annotation_journal` of the `n` rows of
/// [`realistic_rows`] under `dir`, appended 250,000 at a time. A journal left by a build with
/// another schema, or with another row count, is rebuilt rather than measured.
pub async fn build_journal(
    dir: &std::path::Path,
    n: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use annotation_table::{
        Batch, CatalogConfig, JournalTable, StorageConfig, connect, journal_spec,
    };
    let marker = dir.join(".complete");
    let stamp = format!(
        "{n} rows; {:?}",
        journal_spec()?
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| &f.name)
            .collect::<Vec<_>>()
    );
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let catalog = connect(
        "annotable",
        &CatalogConfig::embedded(dir),
        &StorageConfig::default(),
    )
    .await?;
    let journal = JournalTable::open(catalog, "s3_metadata", None).await?;
    let start = Instant::now();
    let mut offset = 0;
    while offset < n {
        let end = (offset + 250_000).min(n);
        journal
            .append(Batch::new(
                Source::Backfill,
                realistic_rows_range(offset..end, n, 7),
            ))
            .await?;
        offset = end;
    }
    println!("  built the {n}-row journal in {:.1} s", secs(start));
    std::fs::write(marker, stamp)?;
    Ok(())
}

/// The Python of `scripts/py-tools.sh` (pyiceberg, DuckDB), installing it if needed.
pub fn py_tools_python() -> Result<PathBuf, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/py-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("python")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} python: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Where a benchmark keeps the tables it builds (reused across runs): `$ANNOTABLE_BENCH_DIR`,
/// else `bench-data/<name>` in the target directory.
pub fn bench_dir(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("ANNOTABLE_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("bench-data").join(name)
}

/// A `usize` from the environment, or `default`.
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds since `t`.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// CPU seconds (user, system) this process has used so far, from `/proc/self/stat` (Linux;
/// NaN elsewhere). CPU time is steadier than wall time on a noisy machine: it tells whether
/// a change saved work even when the wall clock cannot.
pub fn process_cpu_secs() -> (f64, f64) {
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ).
    const TICKS: f64 = 100.0;
    let fields = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            Some((
                rest.get(11)?.parse::<f64>().ok()?,
                rest.get(12)?.parse::<f64>().ok()?,
            ))
        });
    fields.map_or((f64::NAN, f64::NAN), |(u, s)| (u / TICKS, s / TICKS))
}

/// Puts `annotations` annotations of 1 MiB each (distinct payloads) on `bucket/key`, 16 at a
/// time: the largest set S3 allows one object version is 1,000 of them. Panics on a failed
/// call: a bench cannot go on without its data.
#[allow(clippy::expect_used)]
pub async fn put_large_set(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, annotations: usize) {
    use futures::StreamExt as _;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"body"))
        .send()
        .await
        .expect("put object");
    futures::stream::iter(0..annotations)
        .map(|i| async move {
            let mut payload = format!("{i:04}-").into_bytes();
            payload.resize(1 << 20, b'a' + (i % 26) as u8);
            s3.put_object_annotation()
                .bucket(bucket)
                .key(key)
                .annotation_name(format!("n{i:04}"))
                .annotation_payload(aws_sdk_s3::primitives::ByteStream::from(payload))
                .send()
                .await
                .expect("put annotation");
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Copies `from_bucket/key` (annotations and all) to `to_bucket` as `{prefix}{i}`, `copies`
/// times. Panics on a failed call.
#[allow(clippy::expect_used)]
pub async fn copy_set(
    s3: &aws_sdk_s3::Client,
    from_bucket: &str,
    key: &str,
    to_bucket: &str,
    prefix: &str,
    copies: usize,
) {
    for i in 0..copies {
        s3.copy_object()
            .bucket(to_bucket)
            .key(format!("{prefix}{i}"))
            .copy_source(format!("{from_bucket}/{key}"))
            .send()
            .await
            .expect("copy object");
    }
}

/// Forgets this process's peak resident memory so far (VmHWM), so the next
/// [`peak_rss_mib`] measures what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
