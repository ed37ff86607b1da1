//! `annotable query` on a terminal with no SQL: an interactive shell over one query session,
//! with line editing and history, statements over several lines (ended by `;`), psql-style
//! meta commands (`\dt`, `\d name`, `\timing`, `\as-of`, ...) and Ctrl-C to cancel a
//! statement. Results stream through the same writer as `annotable query`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use annotation_sql::{OutputFormat, QuerySession, TimeTravel};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config as EditorConfig, Editor};

use crate::query::{self, QueryError};

/// The prompt of a new statement.
pub const PROMPT: &str = "annotable=> ";
/// The prompt of a statement's next line.
pub const CONTINUE: &str = "annotable-> ";

/// How the shell starts.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// Rows a result table shows before it is cut (`\maxrows`).
    pub max_rows: Option<usize>,
    /// The output format (`\format`).
    pub format: OutputFormat,
    /// Where the history lives; `None` keeps none.
    pub history: Option<PathBuf>,
    /// The namespace, for `\dt`.
    pub namespace: String,
}

/// The shell's settings, changed by meta commands.
struct Settings {
    max_rows: Option<usize>,
    format: OutputFormat,
    timing: bool,
    namespace: String,
}

/// Why the shell stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The terminal could not be read.
    #[error("cannot read the terminal: {0}")]
    Terminal(#[from] ReadlineError),
}

/// The default history file: `$ANNOTABLE_HISTORY`, else `$XDG_STATE_HOME/annotable/history`,
/// else `~/.local/state/annotable/history`.
pub fn default_history() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ANNOTABLE_HISTORY") {
        return (!path.is_empty()).then(|| PathBuf::from(path));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("annotable").join("history"))
}

/// Runs the shell until `\q` or end of input.
pub async fn run(session: &QuerySession, options: ShellOptions) -> Result<(), ShellError> {
    let config = EditorConfig::builder()
        .auto_add_history(false)
        .max_history_size(10_000)?
        .build();
    let mut editor: Editor<(), DefaultHistory> = Editor::with_config(config)?;
    if let Some(path) = &options.history {
        // A missing history file is a first run, not an error.
        let _ = editor.load_history(path);
    }
    let mut settings = Settings {
        max_rows: options.max_rows,
        format: options.format,
        timing: false,
        namespace: options.namespace.clone(),
    };
    println!("annotable SQL shell: statements end with ';'. \\? for help, \\q to quit.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { PROMPT } else { CONTINUE };
        let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            if !meta(session, trimmed, &mut settings).await {
                break;
            }
            continue;
        }
        if trimmed.is_empty() && buffer.is_empty() {
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !buffer.trim_end().ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(statement.trim());
        let sql = statement.trim().trim_end_matches(';').to_string();
        execute(session, &sql, &settings).await;
    }
    if let Some(path) = &options.history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = editor.save_history(path) {
            eprintln!(
                "warning: cannot save the history to {}: {e}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Runs one statement, printing its rows, a row count, and the time when `\timing` is on.
async fn execute(session: &QuerySession, sql: &str, settings: &Settings) {
    let started = Instant::now();
    let run = query::run_to(
        session,
        sql,
        settings.format,
        settings.max_rows,
        std::io::BufWriter::new(std::io::stdout()),
    );
    let outcome = tokio::select! {
        outcome = run => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("cancelled");
            return;
        }
    };
    match outcome {
        Ok(written) => {
            let outcome = query::Outcome {
                written,
                took: started.elapsed(),
            };
            let summary = outcome.summary();
            if settings.timing {
                println!("({summary})");
            } else {
                // The row count without the time.
                let rows = summary
                    .rsplit_once(" (")
                    .map_or(summary.as_str(), |(r, _)| r);
                println!("({rows})");
            }
        }
        Err(e) => report(&e),
    }
    let _ = std::io::stdout().flush();
}

fn report(e: &QueryError) {
    eprintln!("error: {e}");
}

const HELP: &str = "\
  \\dt              list the tables and views
  \\d NAME          describe a table or view (its columns)
  \\timing          show how long each statement takes (toggle)
  \\maxrows N|off   show at most N rows of a result table
  \\format NAME     table, csv, json or ndjson
  \\as-of INSTANT   read every table as of an instant (RFC 3339 or a date); \\as-of off
  \\snapshot ID     read the journal at a snapshot, the rest as of its commit
  \\q               quit
Statements end with ';' and may span lines; Ctrl-C cancels a statement or clears the line.";

/// Runs one meta command; false to quit.
async fn meta(session: &QuerySession, line: &str, settings: &mut Settings) -> bool {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let argument = words.collect::<Vec<_>>().join(" ");
    match command {
        "\\q" | "\\quit" => return false,
        "\\?" | "\\h" | "\\help" => println!("{HELP}"),
        "\\timing" => {
            settings.timing = match argument.as_str() {
                "on" => true,
                "off" => false,
                _ => !settings.timing,
            };
            println!("Timing is {}.", if settings.timing { "on" } else { "off" });
        }
        "\\maxrows" => match argument.as_str() {
            "off" | "0" => {
                settings.max_rows = None;
                println!("Every row is shown.");
            }
            n => match n.parse::<usize>() {
                Ok(n) => {
                    settings.max_rows = Some(n);
                    println!("Tables show at most {n} rows.");
                }
                Err(_) => eprintln!("error: \\maxrows takes a number of rows or off"),
            },
        },
        "\\format" => match argument.parse::<OutputFormat>() {
            Ok(OutputFormat::Parquet) => {
                eprintln!(
                    "error: parquet needs a file: use `annotable query --format parquet -o FILE`"
                )
            }
            Ok(format) => {
                settings.format = format;
                println!("Output format is {}.", format.name());
            }
            Err(e) => eprintln!("error: {e}"),
        },
        "\\dt" => list_tables(session, settings).await,
        "\\d" if argument.is_empty() => list_tables(session, settings).await,
        "\\d" => describe(session, &argument).await,
        "\\as-of" | "\\asof" => {
            let travel = match argument.as_str() {
                "" | "off" | "now" => Ok(None),
                instant => TimeTravel::parse_instant(instant).map(Some),
            };
            travel_to(session, travel).await;
        }
        "\\snapshot" => {
            let travel = match argument.as_str() {
                "" | "off" => Ok(None),
                id => id
                    .parse::<i64>()
                    .map(|id| Some(TimeTravel::Snapshot(id)))
                    .map_err(|_| annotation_sql::SqlError::TimeTravel {
                        message: format!("{id:?} is not a snapshot id"),
                    }),
            };
            travel_to(session, travel).await;
        }
        other => eprintln!("error: unknown command {other}: \\? lists the commands"),
    }
    true
}

async fn travel_to(
    session: &QuerySession,
    travel: Result<Option<TimeTravel>, annotation_sql::SqlError>,
) {
    let result = match travel {
        Ok(travel) => session.set_time_travel(travel).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(Some(target)) => println!("Reading {}.", query::describe_travel(&target)),
        Ok(None) => println!("Reading the tables as they are now."),
        Err(e) => eprintln!("error: {e}"),
    }
}

/// `\dt`: the namespace's tables and views.
async fn list_tables(session: &QuerySession, settings: &Settings) {
    // `annotations` is defined by the first statement that names it; name it once so it is
    // listed (no journal yet is not an error here: the list is simply shorter).
    let _ = session.stream("SELECT * FROM annotations LIMIT 0").await;
    let sql = format!(
        "SELECT table_name, table_type FROM information_schema.tables \
         WHERE table_schema = '{}' ORDER BY table_name",
        settings.namespace.replace('\'', "''")
    );
    execute(session, &sql, settings).await;
}

/// `\d NAME`: the columns of a table or view, from a plan that reads no rows.
async fn describe(session: &QuerySession, name: &str) {
    let name = name.trim_end_matches(';');
    let sql = format!("SELECT * FROM {name} LIMIT 0");
    match session.stream(&sql).await {
        Ok((schema, _)) => {
            println!("{name}");
            let width = schema
                .fields()
                .iter()
                .map(|f| f.name().len())
                .max()
                .unwrap_or(0)
                .max("column".len());
            println!(" {:width$} | type | nullable", "column");
            for field in schema.fields() {
                println!(
                    " {:width$} | {} | {}",
                    field.name(),
                    field.data_type(),
                    if field.is_nullable() { "yes" } else { "no" }
                );
            }
        }
        Err(e) => eprintln!("error: {e}"),
    }
}
