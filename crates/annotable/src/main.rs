//! `annotable`: S3 object annotations as an Apache Iceberg table.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use annotable::config::Config;
use annotable::query::{self, QueryRequest};
use annotation_sql::OutputFormat;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

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
    /// Run one read-only SQL statement over the table and its views.
    ///
    /// Tables: annotation_journal (every change) and the view annotations (current state,
    /// AWS S3 Metadata compatible). JSON functions: json_get_str(text_value, 'key'),
    /// json_get_int, json_get_bool, json_contains, and the -> / ->> operators.
    Query(QueryArgs),
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ANNOTABLE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.global.config.as_deref(), std::env::vars())?;
    let g = cli.global;
    if g.data_dir.is_some() {
        config.data_dir = g.data_dir;
    }
    if g.catalog_uri.is_some() {
        config.catalog.uri = g.catalog_uri;
    }
    if g.warehouse.is_some() {
        config.catalog.warehouse = g.warehouse;
    }
    if g.namespace.is_some() {
        config.namespace = g.namespace;
    }
    match cli.command {
        Command::Query(args) => {
            let sql = read_sql(&args)?;
            let request = QueryRequest {
                sql,
                format: args.format,
                output: args.output,
            };
            let stdout = std::io::BufWriter::new(std::io::stdout());
            query::run(&config, &request, stdout).await?;
            Ok(())
        }
    }
}

fn read_sql(args: &QueryArgs) -> anyhow::Result<String> {
    let sql = match (&args.sql, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) if path.as_os_str() != "-" => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read SQL file {}", path.display()))?,
        _ => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() && args.file.is_none() {
                bail!("no SQL given: pass it as an argument, with --file FILE, or on stdin");
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
    Ok(sql)
}
