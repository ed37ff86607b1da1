//! `annotable sql-server` as clients use it: the real binary on the embedded defaults, psql
//! (a real PostgreSQL client) over a real connection. Every file of `queries/` answers the
//! same rows as `annotable query`; writes are refused; a statement sees what was committed
//! after its connection opened; the timeout and the memory limit fail one statement and
//! leave the server up; passwords and exposed addresses are checked.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use annotation_table::{
    Batch, CatalogConfig, JournalRow, JournalTable, RecordType, Source, StorageConfig,
};
use chrono::Utc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The binary in `dir` with only `env` from the environment's ANNOTABLE_* and PG* variables.
fn annotable(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_annotable"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ANNOTABLE_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir).args(args).envs(env.iter().copied());
    cmd
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A running `annotable sql-server`, stopped with SIGTERM when dropped.
struct SqlServer {
    child: Child,
    port: u16,
}

impl SqlServer {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Result<SqlServer, Box<dyn std::error::Error>> {
        let mut child = annotable(dir, &["sql-server", "--listen", "127.0.0.1:0"], env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Shown with the test's output when it fails.
                eprintln!("sql-server: {line}");
                if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                    let port = rest.split(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => Ok(SqlServer { child, port }),
            _ => {
                let _ = child.kill();
                Err("sql-server did not say where it listens".into())
            }
        }
    }

    /// psql on this server: `args` after the connection options, `password` in PGPASSWORD.
    fn psql(&self, args: &[&str], password: Option<&str>) -> std::io::Result<Output> {
        self.psql_with(args, password, &[])
    }

    /// [`SqlServer::psql`] with more libpq environment (`PGSSLMODE`, say).
    fn psql_with(
        &self,
        args: &[&str],
        password: Option<&str>,
        env: &[(&str, &str)],
    ) -> std::io::Result<Output> {
        let mut cmd = self.psql_command(args);
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.envs(env.iter().copied());
        cmd.output()
    }

    /// psql on this server, with no libpq environment of the caller's, not yet run.
    fn psql_command(&self, args: &[&str]) -> Command {
        let port = self.port.to_string();
        let mut cmd = Command::new("psql");
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.args([
            "-X",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "annotable",
            "-d",
            "annotable",
        ])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "20");
        cmd
    }
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        // SIGTERM: the graceful stop a user's Ctrl-C or ECS gives it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn row(
    key: &str,
    version: Option<&str>,
    name: &str,
    seq: u64,
    kind: RecordType,
    value: &str,
) -> JournalRow {
    let now = Utc::now();
    let put = kind == RecordType::Put;
    JournalRow {
        bucket: "photos".into(),
        object_key: key.into(),
        object_version_id: version.map(str::to_string),
        object_join_key: format!("photos/{key}"),
        name: Some(name.into()),
        record_type: kind,
        sequence_number: format!("{seq:020}"),
        last_modified_date: Some(now.naive_utc()),
        size: put.then_some(value.len() as i64),
        e_tag: None,
        checksum_algorithm: None,
        replication_status: None,
        text_value: put.then(|| value.to_string()),
        event_name: Some(
            if put {
                "ObjectAnnotation:Put"
            } else {
                "ObjectAnnotation:Delete"
            }
            .into(),
        ),
        event_time: Some(now),
        source: Source::Notification,
        requester: None,
        source_ip_address: None,
        request_id: None,
        ingested_at: now,
    }
}

async fn append(dir: &Path, rows: Vec<JournalRow>) -> TestResult {
    let catalog = annotation_table::connect(
        "annotable",
        &CatalogConfig::embedded(&dir.join("annotable-data")),
        &StorageConfig::default(),
    )
    .await?;
    JournalTable::open(catalog, "s3_metadata", None)
        .await?
        .append(Batch::new(Source::Notification, rows))
        .await?;
    Ok(())
}

/// A CSV cell as both sides print it: PostgreSQL writes timestamps `2026-12-03
/// 12:00:00.123456+00` and booleans `t`/`f`, Arrow `2026-12-03T12:00:00.123456Z` and
/// `true`/`false`; the same instant or truth value compares equal.
fn canonical(cell: &str) -> String {
    let iso = cell.replacen(' ', "T", 1);
    for candidate in [iso.clone(), format!("{iso}:00")] {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&candidate) {
            return t.with_timezone(&Utc).to_rfc3339();
        }
    }
    match cell {
        "t" => "true".into(),
        "f" => "false".into(),
        other => other.to_string(),
    }
}

/// CSV text as rows of canonical cells (no cell of these queries holds a comma or quote
/// except JSON payloads, which both sides quote the same way).
fn rows_of(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .map(|line| split_csv(line).iter().map(|c| canonical(c)).collect())
        .collect()
}

fn split_csv(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(cell) = cells.last_mut() {
                    cell.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => cells.push(String::new()),
            c => {
                if let Some(cell) = cells.last_mut() {
                    cell.push(c);
                }
            }
        }
    }
    cells
}

/// Each query file's rows as text cells (NULL as ""), through psycopg (extended protocol)
/// and node-postgres (text as the server sent it), keyed by driver and file.
fn drivers(
    port: &str,
    files: &[String],
) -> Result<Vec<(&'static str, serde_json::Value)>, Box<dyn std::error::Error>> {
    let psycopg = r#"
import json, sys, psycopg
out = {}
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="annotable", dbname="annotable") as conn:
    for file in sys.argv[2:]:
        rows = conn.execute(open(file).read()).fetchall()
        out[file] = [["" if v is None else str(v) for v in row] for row in rows]
print(json.dumps(out))
"#;
    let node = r#"
const { Client } = require("pg");
const fs = require("fs");
(async () => {
  const [port, ...files] = process.argv.slice(1);
  const client = new Client({ host: "127.0.0.1", port: Number(port), user: "annotable", database: "annotable" });
  await client.connect();
  const raw = { getTypeParser: () => (v) => v };
  const out = {};
  for (const file of files) {
    const res = await client.query({ text: fs.readFileSync(file, "utf8"), rowMode: "array", types: raw });
    out[file] = res.rows.map((row) => row.map((v) => (v === null ? "" : String(v))));
  }
  await client.end();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"#;
    let node_dir = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/node-tools.sh"))
        .arg("dir")
        .output()?;
    assert!(node_dir.status.success(), "{}", text(&node_dir.stderr));
    let runs = [
        (
            "psycopg",
            Command::new(annotable_tests::py_tools_python())
                .args(["-c", psycopg, port])
                .args(files)
                .output()?,
        ),
        (
            "node-postgres",
            Command::new("node")
                .args(["-e", node, "--", port])
                .args(files)
                .env(
                    "NODE_PATH",
                    format!("{}/node_modules", text(&node_dir.stdout).trim()),
                )
                .output()?,
        ),
    ];
    let mut answers = Vec::new();
    for (driver, out) in runs {
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        answers.push((driver, serde_json::from_slice(&out.stdout)?));
    }
    Ok(answers)
}

#[tokio::test]
async fn psql_gets_what_annotable_query_gets_and_cannot_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    append(
        d,
        vec![
            row(
                "cats/tom.jpg",
                None,
                "review",
                1,
                RecordType::Put,
                r#"{"status":"approved","reviewer":"ann"}"#,
            ),
            row("cats/tom.jpg", None, "owner", 2, RecordType::Put, "ann"),
            row(
                "cats/felix.jpg",
                Some("v1"),
                "review",
                3,
                RecordType::Put,
                r#"{"status":"rejected","reviewer":"bob"}"#,
            ),
            row(
                "dogs/rex.jpg",
                Some("v7"),
                "colour",
                4,
                RecordType::Put,
                "brown",
            ),
        ],
    )
    .await?;
    // The state table holds the first batch; the second is only in the journal, so
    // `annotations` is the state with the newest journal rows folded in, as in `query`.
    let out = annotable(d, &["maintain", "--refresh"], &[]).output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A copy of the view as it is now, for time travel to come back to.
    let travel_sql = "SELECT object_key, name, text_value FROM annotations ORDER BY 1, 2";
    let out = annotable(d, &["query", "--format", "csv", "-q", travel_sql], &[]).output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copy_then = text(&out.stdout);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append(
        d,
        vec![
            row("cats/tom.jpg", None, "owner", 5, RecordType::Delete, ""),
            row(
                "dogs/rex.jpg",
                Some("v7"),
                "review",
                6,
                RecordType::Put,
                r#"{"status":"approved","reviewer":"cy"}"#,
            ),
        ],
    )
    .await?;

    let server = SqlServer::start(d, &[("ANNOTABLE_SQL_STATEMENT_MEMORY_MB", "64")])?;

    // psql's \dt lists the tables (pg_catalog is emulated).
    let out = server.psql(&["-c", "\\dt"], None)?;
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        listing.contains("annotation_journal") && listing.contains("annotations"),
        "{listing}"
    );
    // \d describes a table's columns.
    let out = server.psql(&["-c", "\\d annotations"], None)?;
    let described = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for column in ["object_join_key", "sequence_number", "text_value"] {
        assert!(described.contains(column), "{described}");
    }

    // Every example query: the same rows from psql, psycopg and node-postgres as from
    // `annotable query`.
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../queries");
    let mut files: Vec<String> = std::fs::read_dir(&queries)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "only {} query files", files.len());
    let port = server.port.to_string();
    let drivers = drivers(&port, &files)?;
    let mut nonempty = 0;
    for file in &files {
        let ours = annotable(d, &["query", "--format", "csv", "--file", file], &[]).output()?;
        assert!(ours.status.success(), "{file}: {}", text(&ours.stderr));
        let ours = rows_of(&text(&ours.stdout));
        let psql = server.psql(&["--csv", "-v", "ON_ERROR_STOP=1", "-f", file], None)?;
        assert!(psql.status.success(), "{file}: {}", text(&psql.stderr));
        assert_eq!(
            rows_of(&text(&psql.stdout)),
            ours,
            "{file}: psql differs from annotable query"
        );
        for (driver, answers) in &drivers {
            let rows: Vec<Vec<String>> = answers[file.as_str()]
                .as_array()
                .ok_or("rows")?
                .iter()
                .map(|row| {
                    row.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| canonical(c.as_str().unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(
                rows,
                ours[1..],
                "{file}: {driver} differs from annotable query"
            );
        }
        nonempty += usize::from(ours.len() > 1);
    }
    assert!(nonempty >= 5, "only {nonempty} query files returned rows");

    // One connection, two statements, a commit in between: the second sees it.
    let mut session = Command::new("psql")
        .args([
            "-X",
            "-w",
            "-q",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "annotable",
            "-d",
            "annotable",
        ])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = session.stdin.take().ok_or("stdin")?;
    let mut output = BufReader::new(session.stdout.take().ok_or("stdout")?).lines();
    let count = "SELECT count(*) FROM annotations WHERE object_key = 'birds/tweety.jpg';\n";
    input.write_all(count.as_bytes())?;
    input.flush()?;
    assert_eq!(output.next().transpose()?.as_deref(), Some("0"));
    append(
        d,
        vec![row(
            "birds/tweety.jpg",
            None,
            "owner",
            7,
            RecordType::Put,
            "gran",
        )],
    )
    .await?;
    input.write_all(count.as_bytes())?;
    input.flush()?;
    assert_eq!(output.next().transpose()?.as_deref(), Some("1"));
    drop(input);
    session.wait()?;

    // psycopg: a prepared statement with parameters, run twice; BEGIN from the driver;
    // results in binary format.
    let script = r#"
import json, sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="annotable", dbname="annotable") as conn:
    q = "SELECT object_key, name, text_value FROM annotations WHERE bucket = %s AND object_key = %s ORDER BY name"
    out = {
        "tom": conn.execute(q, ("photos", "cats/tom.jpg"), prepare=True).fetchall(),
        "rex": conn.execute(q, ("photos", "dogs/rex.jpg"), prepare=True).fetchall(),
    }
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT count(*), max(size), min(sequence_number) FROM annotation_journal WHERE bucket = %s", ("photos",))
        out["binary"] = [list(r) for r in cur.fetchall()]
print(json.dumps(out))
"#;
    let out = Command::new(annotable_tests::py_tools_python())
        .args(["-c", script, &port])
        .output()?;
    assert!(out.status.success(), "psycopg: {}", text(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        got,
        serde_json::json!({
            "tom": [["cats/tom.jpg", "review", r#"{"status":"approved","reviewer":"ann"}"#]],
            "rex": [
                ["dogs/rex.jpg", "colour", "brown"],
                ["dogs/rex.jpg", "review", r#"{"status":"approved","reviewer":"cy"}"#],
            ],
            "binary": [[7, 38, format!("{:020}", 1)]],
        })
    );

    // Writes, COPY and DataFusion's own settings are refused with a PostgreSQL error.
    for (sql, expect) in [
        ("DELETE FROM annotation_journal", "read-only"),
        (
            "INSERT INTO annotation_journal (bucket) VALUES ('x')",
            "read-only",
        ),
        ("CREATE TABLE t (a INT)", "read-only"),
        ("COPY annotation_journal TO STDOUT", "read-only"),
        (
            "SET datafusion.runtime.memory_limit = '100G'",
            "fixed by its configuration",
        ),
    ] {
        let out = server.psql(&["-c", sql], None)?;
        assert!(!out.status.success(), "{sql} was not refused");
        assert!(
            text(&out.stderr).contains(expect),
            "{sql}: {}",
            text(&out.stderr)
        );
    }

    // A statement over the timeout or the memory limit fails alone; the server stays up.
    let out = server.psql(
        &[
            "-c",
            "SET statement_timeout = 50",
            "-c",
            "SELECT count(*) FROM generate_series(1, 5000000000) t(v) WHERE v % 7 = 3",
        ],
        None,
    )?;
    assert!(
        text(&out.stderr).contains("canceling statement due to statement timeout"),
        "{}",
        text(&out.stderr)
    );
    // Ctrl-C in psql sends a cancel request: the statement stops, the server stays up.
    let running = server
        .psql_command(&[
            "-c",
            "SELECT count(*) FROM generate_series(1, 5000000000) t(v) WHERE v % 7 = 3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let interrupted = Command::new("kill")
        .args(["-INT", &running.id().to_string()])
        .status()?;
    assert!(interrupted.success());
    let started = Instant::now();
    let out = running.wait_with_output()?;
    assert!(
        text(&out.stderr).contains("canceling statement due to user request"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the cancel took {:?}",
        started.elapsed()
    );
    let out = server.psql(
        &[
            "-c",
            "SELECT array_length(array_agg(v), 1) FROM generate_series(1, 30000000) t(v)",
        ],
        None,
    )?;
    assert!(
        text(&out.stderr).contains("sql.statement_memory_mb"),
        "{}",
        text(&out.stderr)
    );
    let out = server.psql(
        &["-A", "-t", "-c", "SELECT count(*) FROM annotation_journal"],
        None,
    )?;
    assert_eq!(text(&out.stdout).trim(), "7", "{}", text(&out.stderr));

    // Time travel is a setting of the connection: the copy taken before the second batch,
    // from psql as from `annotable query --as-of`, then the present again after RESET.
    let set = format!("SET annotable.as_of = '{between}'");
    let out = server.psql(
        &[
            "--csv",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &set,
            "-c",
            travel_sql,
            "-c",
            "SHOW annotable.as_of",
            "-c",
            "RESET annotable.as_of",
            "-c",
            "SELECT count(*) AS n FROM annotations",
        ],
        None,
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(
        screen.starts_with(&copy_then),
        "psql as of {between}:\n{screen}\nthe copy then:\n{copy_then}"
    );
    assert!(screen.contains("annotable.as_of\n"), "{screen}");
    assert!(screen.trim_end().ends_with("n\n5"), "{screen}");
    let cli = annotable(
        d,
        &[
            "query", "--format", "csv", "-q", "--as-of", &between, travel_sql,
        ],
        &[],
    )
    .output()?;
    assert_eq!(text(&cli.stdout), copy_then, "{}", text(&cli.stderr));
    let out = server.psql(&["-c", "SET annotable.snapshot = 42"], None)?;
    assert!(
        text(&out.stderr).contains("snapshot 42"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// 20 clients query while a writer commits batches of 3 rows: within a statement a table is
/// read at one snapshot (two counts of the journal agree), only whole batches are ever seen,
/// no client sees the journal shrink, and the last statements see every commit. A client that drops its connection in the middle of
/// a long result fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_see_whole_commits_while_a_writer_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_path_buf();
    append(&d, vec![row("obj-0", None, "a", 1, RecordType::Put, "x")]).await?;
    let server = SqlServer::start(&d, &[])?;
    let url = format!(
        "host=127.0.0.1 port={} user=annotable dbname=annotable",
        server.port
    );

    // A client that walks away from a long result.
    let (quitter, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let quitter_conn = tokio::spawn(connection);
    let rows = quitter
        .query_raw(
            "SELECT v FROM generate_series(1, 100000000) t(v)",
            Vec::<String>::new(),
        )
        .await?;
    let mut rows = Box::pin(rows);
    for _ in 0..10 {
        futures::StreamExt::next(&mut rows)
            .await
            .ok_or("no rows")??;
    }
    drop(rows);
    drop(quitter);
    quitter_conn.abort();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (d, done) = (d.clone(), done.clone());
        tokio::spawn(async move {
            for i in 1..=12u64 {
                let key = format!("obj-{i}");
                let rows = ["a", "b", "c"]
                    .iter()
                    .enumerate()
                    .map(|(j, name)| row(&key, None, name, 10 * i + j as u64, RecordType::Put, "v"))
                    .collect();
                if let Err(e) = append(&d, rows).await {
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (url, done) = (url.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let sql = "SELECT (SELECT count(*) FROM annotation_journal) AS a, \
                       (SELECT count(*) FROM annotation_journal) AS b";
            let mut last = 0i64;
            let mut statements = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let row = client
                    .query_one(sql, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                let (a, b): (i64, i64) = (row.get(0), row.get(1));
                if a != b || a % 3 != 1 || a < last {
                    return Err(format!(
                        "inconsistent answer: the journal counted {a} and {b} rows, after {last}"
                    ));
                }
                last = a;
                statements += 1;
                if finished {
                    return Ok((last, statements));
                }
            }
        }));
    }
    writer.await?.map_err(|e| format!("writer: {e}"))?;
    for client in clients {
        let (last, statements) = client.await?.map_err(|e| format!("client: {e}"))?;
        assert_eq!(last, 37, "a client's last statement missed commits");
        assert!(statements >= 1);
    }
    let out = server.psql(
        &["-A", "-t", "-c", "SELECT count(*) FROM annotations"],
        None,
    )?;
    assert_eq!(text(&out.stdout).trim(), "37", "{}", text(&out.stderr));
    drop(server);
    Ok(())
}

#[tokio::test]
async fn a_password_is_checked_and_an_exposed_address_needs_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    append(
        d,
        vec![row("a.jpg", None, "owner", 1, RecordType::Put, "ann")],
    )
    .await?;

    // Not even bound: anyone who could reach it would read every annotation.
    let out = annotable(d, &["sql-server", "--listen", "0.0.0.0:0"], &[]).output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("refuses to listen")
            && text(&out.stderr).contains("sql.password"),
        "{}",
        text(&out.stderr)
    );

    let server = SqlServer::start(d, &[("ANNOTABLE_SQL_PASSWORD", "s3cret pass")])?;
    let out = server.psql(&["-c", "SELECT 1"], Some("wrong"))?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .to_lowercase()
            .contains("password authentication failed"),
        "{}",
        text(&out.stderr)
    );
    let out = server.psql(&["-c", "SELECT 1"], None)?;
    assert!(!out.status.success(), "no password got in");
    let out = server.psql(
        &["-A", "-t", "-c", "SELECT object_key FROM annotations"],
        Some("s3cret pass"),
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "a.jpg");
    drop(server);

    // With a certificate, clients that require TLS get it.
    let (cert, key) = (d.join("server.crt"), d.join("server.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    assert!(made.status.success(), "{}", text(&made.stderr));
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let server = SqlServer::start(
        d,
        &[
            ("ANNOTABLE_SQL_PASSWORD", "s3cret pass"),
            ("ANNOTABLE_SQL_TLS_CERT", &cert),
            ("ANNOTABLE_SQL_TLS_KEY", &key),
        ],
    )?;
    let out = server.psql_with(
        &[
            "-c",
            "\\conninfo",
            "-A",
            "-t",
            "-c",
            "SELECT object_key FROM annotations",
        ],
        Some("s3cret pass"),
        &[("PGSSLMODE", "require")],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(screen.contains("SSL connection"), "{screen}");
    assert!(screen.trim_end().ends_with("a.jpg"), "{screen}");
    Ok(())
}
