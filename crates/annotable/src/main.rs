//! `annotable`: S3 object annotations as an Apache Iceberg table.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use annotable::backfill::{self, BackfillOptions, ProgressMode};
use annotable::config::Config;
use annotable::doctor;
use annotable::maintain::{self, MaintainRequest};
use annotable::query::{self, QueryRequest};
use annotable::serve::{self, ServeOptions};
use annotable::setup::{self, SetupRequest};
use annotable::shell;
use annotable::sql_server;
use annotation_source::{ListScope, Versions};
use annotation_sql::{OutputFormat, TimeTravel};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// mimalloc: see the workspace Cargo.toml for the measurement behind it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// S3 object annotations as an Apache Iceberg table you can query with SQL.
#[derive(Debug, Parser)]
#[command(name = "annotable", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// TOML configuration file (every key can also be set as ANNOTABLE_<SECTION>_<KEY>).
    #[arg(long, global = true, env = "ANNOTABLE_CONFIG")]
    config: Option<PathBuf>,
    /// Folder of the embedded catalog and warehouse [default: ./annotable-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Catalog URI: sqlite:PATH or postgres://… [default: sqlite:<data-dir>/catalog.db].
    #[arg(long, global = true)]
    catalog_uri: Option<String>,
    /// Warehouse: s3://bucket/prefix, file:///path or a folder [default: <data-dir>/warehouse].
    #[arg(long, global = true)]
    warehouse: Option<String>,
    /// Iceberg namespace [default: s3_metadata].
    #[arg(long, global = true)]
    namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one read-only SQL statement over the table and its views (a shell on a terminal).
    ///
    /// Tables: annotation_journal (every change) and annotations (current state, AWS S3
    /// Metadata compatible); <table>$snapshots, $history, $refs, $manifests and $files
    /// describe each table. JSON functions: json_get_str(text_value, 'key'), json_get_int,
    /// json_get_bool, json_contains, and the -> / ->> operators. With no SQL on a terminal,
    /// an interactive shell (\? for its commands).
    Query(QueryArgs),
    /// Serve the same read-only SQL over the PostgreSQL wire protocol (psql, drivers, BI tools).
    ///
    /// Listens on [sql] listen (default 127.0.0.1:5433) until SIGTERM/SIGINT. Each statement
    /// reads the tables' latest snapshots under [sql] statement_timeout_secs and
    /// statement_memory_mb. Any address but loopback requires [sql] password (SCRAM-SHA-256);
    /// [sql] tls_cert and tls_key enable TLS.
    SqlServer(SqlServerArgs),
    /// Consume bucket notifications from SQS and append their annotations to the table.
    ///
    /// Runs until SIGTERM/SIGINT, then commits what it holds, deletes those messages and exits 0
    /// within --shutdown-timeout. Serves /metrics, /healthz and /readyz on --http-addr.
    Serve(ServeArgs),
    /// Index a bucket's existing annotations (all current objects, or all versions, by prefix).
    ///
    /// Resumable: a killed or stopped backfill continues after the last committed object when
    /// run again. Only one backfill of a bucket/prefix runs at a time (a lease); it is safe to
    /// run beside `serve` on the same table. Prints a summary at the end.
    Backfill(BackfillArgs),
    /// Compact small files, expire old snapshots and delete orphan files.
    ///
    /// With no step flag, runs all three. Compaction rewrites small data files into sorted
    /// files of [maintain] target_file_mb and merges the manifests, in one `replace` snapshot
    /// (SQL catalogs; Glue and S3 Tables have managed compaction). Safe beside running
    /// `serve` and `backfill`; one maintainer per table at a time (a lease).
    Maintain(MaintainArgs),
    /// Configure AWS resources for annotable.
    #[command(subcommand)]
    Setup(SetupCommand),
    /// Check credentials, queue, buckets, catalog and table, and say what to fix.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
struct SqlServerArgs {
    /// host:port to listen on; port 0 picks a free one [config: sql.listen, default 127.0.0.1:5433].
    #[arg(long)]
    listen: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// SQS queue URL receiving the bucket notifications [config: serve.queue_url].
    #[arg(long)]
    queue_url: Option<String>,
    /// Stop after this many seconds with nothing received and nothing held.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<f64>,
    /// Deadline of a graceful stop, in seconds [default: 25, under ECS's 30 s stopTimeout].
    #[arg(long, value_name = "SECS")]
    shutdown_timeout: Option<u64>,
    /// Address of /metrics, /healthz and /readyz, or `off` [default: 127.0.0.1:9464].
    #[arg(long)]
    http_addr: Option<String>,
    /// Log format: json (one object per line on stdout) or text (on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

/// `serve --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// `backfill --versions`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum VersionsArg {
    Current,
    All,
}

impl From<VersionsArg> for Versions {
    fn from(v: VersionsArg) -> Versions {
        match v {
            VersionsArg::Current => Versions::Current,
            VersionsArg::All => Versions::All,
        }
    }
}

#[derive(Debug, Args)]
struct BackfillArgs {
    /// The bucket.
    #[arg(long)]
    bucket: String,
    /// Only keys under this prefix.
    #[arg(long, default_value = "")]
    prefix: String,
    /// current (each key's current version) or all (every version).
    #[arg(long, value_enum, default_value_t = VersionsArg::Current)]
    versions: VersionsArg,
    /// Object versions read at once [config: backfill.concurrency, default 64].
    #[arg(long)]
    concurrency: Option<usize>,
    /// List and read everything, print what would be written, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Progress: auto (a bar on a terminal, log lines otherwise), log, or off.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Seconds between progress log lines.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    progress_interval: f64,
}

#[derive(Debug, Args)]
struct MaintainArgs {
    /// Rewrite small data files into sorted files of the target size and merge manifests.
    #[arg(long)]
    compact: bool,
    /// Expire snapshots older than [maintain] snapshot_retention_secs and delete the files
    /// only they referenced.
    #[arg(long)]
    expire: bool,
    /// Delete files no snapshot references that are older than [maintain] orphan_age_secs.
    #[arg(long)]
    orphans: bool,
    /// Report what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Fold the journal rows committed since the last refresh into the `annotations` table
    /// (created if missing), instead of the table maintenance steps.
    #[arg(long, conflicts_with_all = ["compact", "expire", "orphans", "dry_run"])]
    refresh: bool,
    /// Rebuild the `annotations` table from the whole journal (after an upgrade, or to
    /// recover), instead of the table maintenance steps.
    #[arg(long, conflicts_with_all = ["compact", "expire", "orphans", "dry_run", "refresh"])]
    rebuild_state: bool,
    /// Compare the `annotations` table with the journal view at the journal snapshot it
    /// reflects, row for row; exit 1 on any difference.
    #[arg(long, conflicts_with_all = ["compact", "expire", "orphans", "dry_run"])]
    verify_state: bool,
    /// Only the journal retention step: refresh the `annotations` table, then drop the journal
    /// rows older than [maintain] journal_retention_days that it holds (a plain `maintain`
    /// run ends with this step when the setting is on).
    #[arg(long, conflicts_with_all = ["compact", "expire", "orphans", "refresh", "rebuild_state", "verify_state"])]
    trim_journal: bool,
}

#[derive(Debug, Subcommand)]
enum SetupCommand {
    /// Route a bucket's annotation and object events to the queue, directly, through an SNS
    /// topic, or through EventBridge (merges with the bucket's other notification
    /// configurations; idempotent; prints what changed).
    Notifications(SetupArgs),
}

#[derive(Debug, Args)]
struct SetupArgs {
    /// The bucket.
    #[arg(long)]
    bucket: String,
    /// The SQS queue URL.
    #[arg(long)]
    queue_url: String,
    /// Only keys under this prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// How events reach the queue: S3 → SQS, S3 → SNS → SQS, or S3 → EventBridge → SQS.
    #[arg(long, value_enum, default_value_t = Via::Sqs)]
    via: Via,
    /// The SNS topic S3 publishes to (with --via sns; it must exist).
    #[arg(long, required_if_eq("via", "sns"))]
    topic_arn: Option<String>,
    /// Subscribe the queue with raw message delivery (S3's message without SNS's envelope).
    #[arg(long, requires = "topic_arn")]
    raw_message_delivery: bool,
}

/// `setup notifications --via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    Sqs,
    Sns,
    #[value(name = "eventbridge")]
    EventBridge,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Buckets to check (repeatable) [default: aws.allowed_buckets].
    #[arg(long)]
    bucket: Vec<String>,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// The SQL statement (or use --file, or pipe it on stdin).
    sql: Option<String>,
    /// Read the SQL from this file ("-" for stdin).
    #[arg(long, short = 'f', conflicts_with = "sql")]
    file: Option<PathBuf>,
    /// Output format: table, csv, json, ndjson or parquet.
    #[arg(long, default_value = "table")]
    format: OutputFormat,
    /// Write the result to this file instead of stdout (required for parquet).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Read every table as it was at this instant (RFC 3339 with a zone, or a date):
    /// the journal, `annotations` and the rest.
    #[arg(long, value_name = "INSTANT", conflicts_with = "snapshot")]
    as_of: Option<String>,
    /// Read the journal at this snapshot id, every other table as of its commit time.
    #[arg(long, value_name = "ID")]
    snapshot: Option<i64>,
    /// Show at most this many rows of a text table (the rest are counted, not shown)
    /// [default: all; 40 in the shell].
    #[arg(long, value_name = "N")]
    maxrows: Option<usize>,
    /// Print no row count or timing on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(args) => init_logging(args.log_format == LogFormat::Json, "info"),
        Command::Backfill(_) | Command::Maintain(_) | Command::SqlServer(_) => {
            init_logging(false, "info")
        }
        _ => init_logging(false, "warn"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `serve` logs JSON lines to stdout (what awslogs forwards); the other commands log text to
/// stderr, keeping stdout for their output. `ANNOTABLE_LOG` sets the filter.
fn init_logging(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ANNOTABLE_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{default_level},aws_config=warn,aws_smithy_runtime=warn"
        ))
    });
    let _ = if json {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init()
    };
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load_layers(
        cli.global.config.as_deref(),
        std::env::vars(),
        flag_layer(&cli),
    )?;
    match cli.command {
        Command::Query(args) => {
            let travel = match (&args.as_of, args.snapshot) {
                (Some(instant), _) => Some(TimeTravel::parse_instant(instant)?),
                (None, Some(id)) => Some(TimeTravel::Snapshot(id)),
                (None, None) => None,
            };
            let Some(sql) = read_sql(&args)? else {
                let session = query::open_session(&config).await?;
                if let Some(target) = session.set_time_travel(travel).await? {
                    println!("Reading {}.", query::describe_travel(&target));
                }
                let options = shell::ShellOptions {
                    max_rows: Some(args.maxrows.unwrap_or(40)),
                    format: args.format,
                    history: shell::default_history(),
                    namespace: config.namespace().to_string(),
                };
                shell::run(&session, options).await?;
                return Ok(());
            };
            let request = QueryRequest {
                sql,
                format: args.format,
                output: args.output,
                travel,
                max_rows: args.maxrows,
            };
            let stdout = std::io::BufWriter::new(std::io::stdout());
            let outcome = query::run(&config, &request, stdout).await?;
            if !args.quiet {
                eprintln!("{}", outcome.summary());
                if outcome.written.shown.is_some() {
                    eprintln!(
                        "(--maxrows limits the rows a table shows; csv, json and ndjson show all)"
                    );
                }
            }
            Ok(())
        }
        Command::SqlServer(_) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            sql_server::run(&config, shutdown.cancelled_owned()).await?;
            Ok(())
        }
        Command::Serve(args) => {
            let mut options = ServeOptions::from_config(&config)?;
            options.exit_when_idle = args
                .exit_when_idle
                .map(|s| Duration::from_secs_f64(s.max(0.0)));
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            serve::run(&config, options, shutdown).await?;
            Ok(())
        }
        Command::Backfill(args) => {
            let scope = ListScope {
                bucket: args.bucket,
                prefix: args.prefix,
                versions: args.versions.into(),
                // `backfill::run` asks for them when objects are recorded.
                delete_markers: false,
            };
            let mut options = BackfillOptions::from_config(&config, scope);
            options.dry_run = args.dry_run;
            options.progress = args.progress;
            options.progress_interval = Duration::from_secs_f64(args.progress_interval.max(0.1));
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let report = backfill::run(&config, options, shutdown).await?;
            println!("{report}");
            if !report.completed {
                bail!("the backfill stopped before the end; run the same command again to resume");
            }
            if report.objects_skipped > 0 {
                bail!(
                    "{} object versions could not be read (the errors above say which and why); fix the cause and run the backfill again (it starts over)",
                    report.objects_skipped
                );
            }
            Ok(())
        }
        Command::Maintain(args) if args.refresh || args.rebuild_state || args.verify_state => {
            if args.refresh || args.rebuild_state {
                let report = annotable::state::refresh(&config, args.rebuild_state).await?;
                println!("{}", annotable::state::PrintedRefresh(&report));
            }
            if args.verify_state {
                let comparison = annotable::state::verify(&config).await?;
                println!("{}", annotable::state::PrintedComparison(&comparison));
                if !comparison.is_equal() {
                    bail!(
                        "the annotations table differs from the journal; rebuild it with `annotable maintain --rebuild-state`"
                    );
                }
            }
            Ok(())
        }
        Command::Maintain(args) if args.trim_journal => {
            let Some(cut) = annotable::state::retention_cut(&config) else {
                bail!(
                    "--trim-journal needs maintain.journal_retention_days (ANNOTABLE_MAINTAIN_JOURNAL_RETENTION_DAYS): how many days of journal rows to keep"
                );
            };
            Ok(annotable::state::trim_and_print(&config, cut, args.dry_run).await?)
        }
        Command::Maintain(args) => {
            let all = !(args.compact || args.expire || args.orphans);
            let request = MaintainRequest {
                compact: args.compact || all,
                expire: args.expire || all,
                orphans: args.orphans || all,
                dry_run: args.dry_run,
            };
            let report = maintain::run(&config, request).await?;
            println!(
                "{}",
                maintain::Printed {
                    report: &report,
                    dry_run: args.dry_run
                }
            );
            if let Some((table, report)) = maintain::object_journal(&config, request).await? {
                println!(
                    "\n{table}\n{}",
                    maintain::Printed {
                        report: &report,
                        dry_run: args.dry_run
                    }
                );
            }
            let options = maintain::options(&config, request)?;
            for (table, report) in annotable::state::maintain(&config, &options).await? {
                println!(
                    "\n{table}\n{}",
                    maintain::Printed {
                        report: &report,
                        dry_run: args.dry_run
                    }
                );
            }
            if all && let Some(cut) = annotable::state::retention_cut(&config) {
                println!();
                annotable::state::trim_and_print(&config, cut, args.dry_run).await?;
            }
            Ok(())
        }
        Command::Setup(SetupCommand::Notifications(args)) => {
            let sdk = annotable::aws::sdk_config(&config).await;
            let clients = setup::Clients::new(annotable::aws::s3_client(&config, &sdk), &sdk);
            let via = match (args.via, args.topic_arn) {
                (Via::Sqs, _) => setup::Via::Sqs,
                (Via::EventBridge, _) => setup::Via::EventBridge,
                (Via::Sns, topic_arn) => setup::Via::Sns {
                    topic_arn: topic_arn.unwrap_or_default(),
                    raw_message_delivery: args.raw_message_delivery,
                },
            };
            let request = SetupRequest {
                bucket: args.bucket,
                queue_url: args.queue_url,
                prefix: args.prefix,
                expected_bucket_owner: config.aws.expected_bucket_owner.clone(),
                via,
            };
            let changes = setup::notifications(&clients, &request).await?;
            if changes.is_empty() {
                println!(
                    "bucket {} already routes its events to {}: nothing changed",
                    request.bucket, request.queue_url
                );
            }
            for c in changes {
                println!("changed: {c}");
            }
            Ok(())
        }
        Command::Doctor(args) => {
            let buckets = if args.bucket.is_empty() {
                config.aws.allowed_buckets.clone().unwrap_or_default()
            } else {
                args.bucket
            };
            let checks = doctor::run(&config, &buckets).await;
            let mut failed = 0;
            for c in &checks {
                match &c.result {
                    Ok(detail) => println!("ok    {}: {detail}", c.what),
                    Err(fix) => {
                        failed += 1;
                        println!("FAIL  {}: {fix}", c.what);
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} checks failed", checks.len());
            }
            Ok(())
        }
    }
}

/// The flags that set configuration keys, as `(key, value)` for the flag layer (the keys'
/// table, `config::keys::KEYS`, names each key's flag).
fn flag_layer(cli: &Cli) -> Vec<(&'static str, String)> {
    let g = &cli.global;
    let mut flags = vec![
        (
            "data_dir",
            g.data_dir.as_ref().map(|p| p.display().to_string()),
        ),
        ("catalog.uri", g.catalog_uri.clone()),
        ("catalog.warehouse", g.warehouse.clone()),
        ("namespace", g.namespace.clone()),
    ];
    match &cli.command {
        Command::Serve(a) => flags.extend([
            ("serve.queue_url", a.queue_url.clone()),
            (
                "serve.shutdown_timeout_secs",
                a.shutdown_timeout.map(|t| t.to_string()),
            ),
            ("serve.http_addr", a.http_addr.clone()),
        ]),
        Command::Backfill(a) => {
            flags.push(("backfill.concurrency", a.concurrency.map(|n| n.to_string())))
        }
        Command::SqlServer(a) => flags.push(("sql.listen", a.listen.clone())),
        _ => {}
    }
    flags
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
        .collect()
}

/// Cancels `shutdown` on SIGTERM (ECS stopping the task) or SIGINT (Ctrl-C).
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("stop signal received");
    shutdown.cancel();
}

/// The SQL to run; `None` on a terminal with none given (the shell).
fn read_sql(args: &QueryArgs) -> anyhow::Result<Option<String>> {
    let sql = match (&args.sql, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) if path.as_os_str() != "-" => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read SQL file {}", path.display()))?,
        _ => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() && args.file.is_none() {
                if args.output.is_some() {
                    bail!("no SQL given: pass it as an argument, with --file FILE, or on stdin");
                }
                return Ok(None);
            }
            let mut sql = String::new();
            stdin
                .read_to_string(&mut sql)
                .context("cannot read SQL from stdin")?;
            sql
        }
    };
    if sql.trim().is_empty() {
        bail!("the SQL is empty: pass a statement as an argument, with --file FILE, or on stdin");
    }
    Ok(Some(sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag layer and the keys' table name the same flags: every flag the table lists is
    /// passed through, as the key the table gives it.
    #[test]
    fn the_flag_layer_covers_the_flags_of_the_key_table() -> Result<(), Box<dyn std::error::Error>>
    {
        let global = [
            "annotable",
            "--data-dir",
            "d",
            "--catalog-uri",
            "u",
            "--warehouse",
            "w",
            "--namespace",
            "n",
        ];
        let serve = [
            "serve",
            "--queue-url",
            "q",
            "--shutdown-timeout",
            "5",
            "--http-addr",
            "off",
        ];
        let backfill = ["backfill", "--bucket", "b", "--concurrency", "3"];
        let sql_server = ["sql-server", "--listen", "127.0.0.1:0"];
        let mut passed = std::collections::BTreeMap::new();
        for command in [&serve[..], &backfill[..], &sql_server[..]] {
            let cli = Cli::try_parse_from(global.iter().chain(command))?;
            passed.extend(flag_layer(&cli));
        }
        let table: std::collections::BTreeMap<&str, &str> = annotable::config::keys::KEYS
            .iter()
            .filter_map(|k| k.flag.map(|f| (k.path, f)))
            .collect();
        assert_eq!(
            passed.keys().collect::<Vec<_>>(),
            table.keys().collect::<Vec<_>>()
        );
        let args: Vec<&str> = global
            .iter()
            .chain(&serve)
            .chain(&backfill)
            .chain(&sql_server)
            .copied()
            .collect();
        for (key, flag) in table {
            let at = args.iter().position(|a| *a == flag).ok_or(flag)?;
            assert_eq!(passed[key], args[at + 1], "{flag} should set {key}");
        }
        Ok(())
    }
}
