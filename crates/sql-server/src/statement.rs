//! One statement from a client: what is allowed, planning on the latest snapshots, running
//! under the limits, and errors as PostgreSQL reports them.
//!
//! Every statement but the session ones (`SET`, `SHOW`, `BEGIN`/`COMMIT`/`ROLLBACK`, which
//! datafusion-postgres answers) comes here, for simple and extended queries alike, so the
//! server refuses exactly what `annotable query` refuses and `annotations` means the same.
//! An extended query is planned again when it runs, not only when it is parsed: a prepared
//! statement run twice sees the snapshots of its second run.
//!
//! Time travel is a per-connection setting: `SET annotable.as_of = '2026-12-01T10:00:00Z'`
//! (or `annotable.snapshot = <journal snapshot id>`) makes every later statement of the
//! connection read the tables as they were then; `RESET annotable.as_of` (or setting it to
//! `''`) returns to the present, and `SHOW annotable.as_of` says what is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use annotation_sql::{QuerySession, SqlError, TimeTravel};
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Reset, ResetStatement, Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::{ClientInfo, ConnectionHandle};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::{StreamExt, stream};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::options::Limits;

/// Where `SET statement_timeout` leaves the client's own timeout (datafusion-postgres's key).
const CLIENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// What a statement is, for the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Session state (`SET`, `SHOW`, transactions): datafusion-postgres's hooks answer it.
    Session,
    /// Refused before planning, with the reason.
    Refused(String),
    /// `SET annotable.as_of|snapshot = ..` or `RESET ..`: the connection's time travel
    /// (`None`: the present), or why the value is not one.
    Travel(Result<Option<TimeTravel>, String>),
    /// `SHOW annotable.as_of`.
    ShowTravel,
    /// Everything else: planned and run by annotable's session (which refuses writes).
    Query,
}

/// The settings of time travel.
const AS_OF: &str = "annotable.as_of";
const SNAPSHOT: &str = "annotable.snapshot";

/// The query answering `SHOW annotable.as_of` with `value`.
fn show_statement(value: &str) -> PgWireResult<Statement> {
    let sql = format!("SELECT '{}' AS \"{AS_OF}\"", value.replace('\'', "''"));
    datafusion::sql::sqlparser::parser::Parser::parse_sql(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
        &sql,
    )
    .map_err(|e| user_error("XX000", e.to_string()))?
    .pop()
    .ok_or_else(|| user_error("XX000", "SHOW annotable.as_of did not plan".into()))
}

/// The value of `SET annotable.as_of|snapshot = value`.
fn travel_value(variable: &str, value: &str) -> Result<Option<TimeTravel>, String> {
    let value = value.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    if value.is_empty() || ["default", "now", "off"].contains(&value.to_lowercase().as_str()) {
        return Ok(None);
    }
    if variable == SNAPSHOT {
        return value
            .parse::<i64>()
            .map(|id| Some(TimeTravel::Snapshot(id)))
            .map_err(|_| format!("{SNAPSHOT} takes a journal snapshot id, not {value:?}"));
    }
    TimeTravel::parse_instant(value)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Sorts a parsed statement.
pub(crate) fn kind(statement: &Statement) -> Kind {
    match statement {
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) if [AS_OF, SNAPSHOT].contains(&variable.to_string().to_lowercase().as_str()) => {
            let variable = variable.to_string().to_lowercase();
            match values.as_slice() {
                [value] => Kind::Travel(travel_value(&variable, &value.to_string())),
                _ => Kind::Travel(Err(format!("SET {variable} takes one value"))),
            }
        }
        Statement::Reset(ResetStatement {
            reset: Reset::ConfigurationParameter(name),
        }) if [AS_OF, SNAPSHOT].contains(&name.to_string().to_lowercase().as_str()) => {
            Kind::Travel(Ok(None))
        }
        Statement::ShowVariable { variable }
            if [AS_OF, SNAPSHOT].contains(
                &variable
                    .iter()
                    .map(|i| i.value.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(".")
                    .as_str(),
            ) =>
        {
            Kind::ShowTravel
        }
        Statement::Set(Set::SingleAssignment { variable, .. })
            if variable
                .to_string()
                .to_lowercase()
                .starts_with("datafusion.") =>
        {
            Kind::Refused(format!(
                "SET {variable}: the server's DataFusion settings (memory, parallelism) are fixed by its configuration"
            ))
        }
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Kind::Session,
        _ => Kind::Query,
    }
}

/// One connection's statements: its SQL session, the server's limits and the server-wide
/// slots for running statements.
pub(crate) struct Statements {
    session: Arc<QuerySession>,
    limits: Limits,
    slots: Arc<Semaphore>,
    /// The connection's time travel, for `SHOW`.
    travel: Mutex<Option<TimeTravel>>,
}

impl Statements {
    pub(crate) fn new(session: Arc<QuerySession>, limits: Limits, slots: Arc<Semaphore>) -> Self {
        Statements {
            session,
            limits,
            slots,
            travel: Mutex::default(),
        }
    }

    /// Applies `SET annotable.as_of|snapshot` (or `RESET`) to the connection.
    pub(crate) async fn travel(
        &self,
        travel: &Result<Option<TimeTravel>, String>,
    ) -> PgWireResult<Response> {
        let travel = travel.clone().map_err(|why| user_error("22023", why))?;
        let mut current = self.travel.lock().await;
        self.session
            .set_time_travel(travel)
            .await
            .map_err(|e| user_error("22023", e.to_string()))?;
        *current = travel;
        Ok(Response::Execution(Tag::new("SET")))
    }

    /// `SHOW annotable.as_of`: the instant or snapshot set, or `now`.
    pub(crate) async fn show_travel(
        &self,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<Response> {
        let value = match *self.travel.lock().await {
            None => "now".to_string(),
            Some(travel) => travel.to_string(),
        };
        self.run(&show_statement(&value)?, None, &Format::UnifiedText, client)
            .await
    }

    /// Plans `statement` on the tables' current snapshots.
    pub(crate) async fn plan(&self, statement: &Statement) -> PgWireResult<LogicalPlan> {
        if let Kind::Refused(why) = kind(statement) {
            return Err(user_error("25006", why));
        }
        self.session
            .plan(DFStatement::Statement(Box::new(statement.clone())))
            .await
            .map_err(sql_error)
    }

    /// Plans and runs `statement` with `params`, answering in `format`: waits for a slot,
    /// plans, and streams the rows, all before the statement's deadline. The slot is held
    /// until the last row is sent or the client goes away.
    pub(crate) async fn run(
        &self,
        statement: &Statement,
        params: Option<&ParamValues>,
        format: &Format,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<Response> {
        let timeout = self.timeout_for(client);
        let deadline = Instant::now() + timeout;
        let slot = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                timed_out(
                    timeout,
                    &format!(
                        "waiting for one of the {} statement slots (sql.max_statements)",
                        self.limits.max_statements
                    ),
                )
            })?
            .map_err(|_| user_error("57P01", "the server is shutting down".into()))?;
        let plan = tokio::time::timeout_at(deadline, self.plan(statement))
            .await
            .map_err(|_| timed_out(timeout, "planning"))??;
        let plan = match params {
            Some(params) => plan
                .replace_params_with_values(params)
                .map_err(|e| sql_error(SqlError::from_planning(e)))?,
            None => plan,
        };
        let context: &SessionContext = self.session.context();
        let frame = context
            .execute_logical_plan(plan)
            .await
            .map_err(|e| sql_error(SqlError::from_planning(e)))?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(
            frame.schema().as_arrow(),
            format,
            Some(options),
        )?);
        let batches = tokio::time::timeout_at(deadline, frame.execute_stream())
            .await
            .map_err(|_| timed_out(timeout, "starting"))?
            .map_err(execution_error)?;
        // pgwire listens for a client's cancel request only until this function returns; the
        // rows are computed while they are sent, after that. So the stream listens itself,
        // from its first poll on (when pgwire no longer does).
        let handle = client.session_extensions().get::<Arc<ConnectionHandle>>();
        // Ends with one error at the deadline or on a cancel request; the slot goes when the
        // stream does.
        let batches = stream::unfold(
            Some((batches, slot, handle, None)),
            move |state| async move {
                let (mut batches, slot, handle, mut cancel) = state?;
                if cancel.is_none()
                    && let Some(handle) = &handle
                {
                    cancel = Some(handle.start_query().await);
                }
                let cancelled = async {
                    // Only a cancel request sends; a dropped sender is not one.
                    let requested = match cancel.as_mut() {
                        Some(rx) => rx.await.is_ok(),
                        None => false,
                    };
                    if !requested {
                        std::future::pending::<()>().await
                    }
                };
                let next = tokio::select! {
                    next = tokio::time::timeout_at(deadline, batches.next()) => next,
                    () = cancelled => {
                        return Some((Err(user_error("57014", "canceling statement due to user request".into())), None));
                    }
                };
                match next {
                    Ok(Some(Ok(batch))) => Some((Ok(batch), Some((batches, slot, handle, cancel)))),
                    Ok(Some(Err(e))) => Some((Err(execution_error(e)), None)),
                    Ok(None) => None,
                    Err(_) => Some((Err(timed_out(timeout, "sending rows")), None)),
                }
            },
        );
        let rows_fields = fields.clone();
        let rows = batches
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                    Ok(batch) => encode_recordbatch(rows_fields.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                };
                stream::iter(rows)
            })
            .flatten();
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }

    /// The server's timeout, or the client's `SET statement_timeout` when lower.
    fn timeout_for(&self, client: &(dyn ClientInfo + Send + Sync)) -> Duration {
        client
            .metadata()
            .get(CLIENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(Duration::from_millis)
            .map_or(self.limits.statement_timeout, |own| {
                own.min(self.limits.statement_timeout)
            })
    }
}

/// The hook datafusion-postgres calls for every simple-query statement and every parse: it
/// takes all but the session statements.
#[async_trait]
impl QueryHook for Statements {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match kind(statement) {
            Kind::Session => None,
            Kind::Refused(why) => Some(Err(user_error("25006", why))),
            Kind::Travel(travel) => Some(self.travel(&travel).await),
            Kind::ShowTravel => Some(self.show_travel(client).await),
            Kind::Query => Some(
                self.run(statement, None, &Format::UnifiedText, client)
                    .await,
            ),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match kind(statement) {
            Kind::Session => None,
            // Nothing to describe: it answers "SET".
            Kind::Travel(_) => Some(Ok(LogicalPlan::EmptyRelation(
                datafusion::logical_expr::EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(datafusion::common::DFSchema::empty()),
                },
            ))),
            Kind::ShowTravel => Some(match show_statement("now") {
                Ok(statement) => self.plan(&statement).await,
                Err(e) => Err(e),
            }),
            _ => Some(self.plan(statement).await),
        }
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // Extended queries other than session statements never reach the hooks: the
        // connection's handler runs them itself, with the portal's result formats.
        None
    }
}

/// The parameter types of `plan`, `$1` first: DataFusion's inference, else the type a
/// parameter is cast to (`$1::int`).
pub(crate) fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let mut types: HashMap<String, Option<DataType>> = plan
        .get_parameter_types()
        .map_err(|e| sql_error(SqlError::from_planning(e)))?;
    if types.values().any(Option::is_none) {
        let _ = plan.apply(|node| {
            for expr in node.expressions() {
                let _ = expr.apply(|e| {
                    if let Expr::Cast(cast) = e
                        && let Expr::Placeholder(p) = cast.expr.as_ref()
                        && let Some(slot @ None) = types.get_mut(&p.id)
                    {
                        *slot = Some(cast.data_type.clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .map(|(id, t)| {
            let n = id
                .trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            (n, t)
        })
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    Ok(ordered.into_iter().map(|(_, t)| t).collect())
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

fn timed_out(timeout: Duration, while_: &str) -> PgWireError {
    user_error(
        "57014",
        format!(
            "canceling statement due to statement timeout ({} ms, sql.statement_timeout_secs or SET statement_timeout) while {while_}",
            timeout.as_millis()
        ),
    )
}

/// An annotable SQL error as PostgreSQL reports its kind.
pub(crate) fn sql_error(e: SqlError) -> PgWireError {
    let code = match e {
        SqlError::Execution { source } => return execution_error(*source),
        SqlError::InvalidSql { .. } => "42601",
        SqlError::UnknownTable { .. } | SqlError::TableNotCreated { .. } => "42P01",
        SqlError::ReadOnly { .. } => "25006",
        SqlError::Catalog { .. } => "58030",
        _ => "XX000",
    };
    user_error(code, e.to_string())
}

/// A failure while running: out of memory is the statement's own, reported as such.
fn execution_error(e: DataFusionError) -> PgWireError {
    let code = match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => "53200",
        _ => "XX000",
    };
    let mut message = e.strip_backtrace();
    if code == "53200" {
        message.push_str(
            " (the statement needs more than sql.statement_memory_mb; filter or aggregate more, or raise the limit)",
        );
    }
    user_error(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse(sql: &str) -> Result<Statement, Box<dyn std::error::Error>> {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)?;
        Ok(statements.remove(0))
    }

    #[test]
    fn session_statements_go_to_datafusion_postgres_and_queries_to_annotable()
    -> Result<(), Box<dyn std::error::Error>> {
        for sql in [
            "SET extra_float_digits = 3",
            "SET statement_timeout = 100",
            "SHOW transaction_isolation",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
        ] {
            assert_eq!(kind(&parse(sql)?), Kind::Session, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "INSERT INTO t VALUES (1)",
            "CREATE TABLE t (a INT)",
            "COPY t TO STDOUT",
        ] {
            assert_eq!(kind(&parse(sql)?), Kind::Query, "{sql}");
        }
        assert!(matches!(
            kind(&parse("SET datafusion.runtime.memory_limit = '100G'")?),
            Kind::Refused(_)
        ));
        Ok(())
    }

    #[test]
    fn time_travel_is_a_connection_setting() -> Result<(), Box<dyn std::error::Error>> {
        let at = TimeTravel::parse_instant("2026-12-01T10:00:00Z")?;
        assert_eq!(
            kind(&parse("SET annotable.as_of = '2026-12-01T10:00:00Z'")?),
            Kind::Travel(Ok(Some(at)))
        );
        assert_eq!(
            kind(&parse("SET annotable.snapshot = 42")?),
            Kind::Travel(Ok(Some(TimeTravel::Snapshot(42))))
        );
        for present in [
            "SET annotable.as_of = ''",
            "SET annotable.as_of = DEFAULT",
            "RESET annotable.as_of",
            "RESET annotable.snapshot",
        ] {
            assert_eq!(kind(&parse(present)?), Kind::Travel(Ok(None)), "{present}");
        }
        assert!(matches!(
            kind(&parse("SET annotable.as_of = 'yesterday'")?),
            Kind::Travel(Err(_))
        ));
        assert!(matches!(
            kind(&parse("SET annotable.snapshot = 'abc'")?),
            Kind::Travel(Err(_))
        ));
        assert_eq!(kind(&parse("SHOW annotable.as_of")?), Kind::ShowTravel);
        Ok(())
    }
}
