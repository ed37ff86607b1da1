//! One client connection: its own SQL session (so `annotations` and the memory limit are its
//! own), and the protocol handlers pgwire calls for it.

use std::fmt::Debug;
use std::sync::Arc;

use annotation_sql::{CATALOG_NAME, QuerySession, SessionOptions};
use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::QueryHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::portal::{Portal, PortalExecutionState};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, DEFAULT_NAME, PgWireConnectionState,
    PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::extendedquery::Execute;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::{DfSessionService, Parser};
use futures::{SinkExt, StreamExt};
use std::ops::Deref;
use tokio::sync::Semaphore;

use crate::auth;
use crate::options::{Credentials, Limits, Tables};
use crate::statement::{Kind, Statements, kind, parameter_types};

/// What datafusion-postgres stores for a parsed statement: the SQL, and the statement with
/// its plan at parse time.
type Parsed = (String, Option<(Statement, LogicalPlan)>);

/// Opens the SQL session of a new connection: the tables at their latest snapshots, this
/// connection's memory limit, and `pg_catalog` for psql's `\dt` and GUI clients.
pub(crate) async fn open_session(
    tables: &Tables,
    limits: &Limits,
) -> Result<QuerySession, annotation_sql::SqlError> {
    let options = SessionOptions {
        state_table: Some(tables.state_table.clone()),
        object_journal: Some(tables.objects_table.clone()),
        memory_limit: Some(limits.statement_memory),
    };
    let session = QuerySession::with_options(
        tables.catalog.clone(),
        tables.catalog_name.clone(),
        &tables.namespace,
        &tables.journal,
        &options,
    )
    .await?;
    setup_pg_catalog(session.context(), CATALOG_NAME, EmptyContextProvider).map_err(|e| {
        annotation_sql::SqlError::Execution {
            source: Box::new(*e),
        }
    })?;
    Ok(session)
}

/// The handlers of one connection.
pub(crate) struct Connection {
    service: Arc<DfSessionService>,
    extended: Arc<Extended>,
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Connection {
    pub(crate) fn new(
        session: QuerySession,
        limits: Limits,
        slots: Arc<Semaphore>,
        credentials: Option<&Credentials>,
        manager: Arc<ConnectionManager>,
    ) -> Self {
        let context = Arc::new(session.context().clone());
        let statements = Arc::new(Statements::new(Arc::new(session), limits, slots));
        // Ours first: it takes every statement but the session ones, which the others answer.
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            statements.clone(),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let service = Arc::new(DfSessionService::new_with_hooks(context, hooks));
        let startup = match credentials {
            None => Startup::Open(Open {
                manager: manager.clone(),
            }),
            Some(credentials) => Startup::Password(Box::new(
                SASLAuthStartupHandler::new(Arc::new(parameters()))
                    .with_scram(auth::scram(credentials))
                    .with_connection_manager(manager.clone()),
            )),
        };
        Connection {
            extended: Arc::new(Extended {
                service: service.clone(),
                statements,
            }),
            service,
            startup: Arc::new(startup),
            cancel: Arc::new(DefaultCancelHandler::new(manager)),
        }
    }
}

/// What the server tells clients at startup: read-only by default, as it is.
fn parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.default_transaction_read_only = true;
    parameters.is_superuser = false;
    parameters
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// No authentication: loopback only (the server refuses anything else without a password).
struct Open {
    manager: Arc<ConnectionManager>,
}

impl NoopStartupHandler for Open {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.manager.clone())
    }
}

/// How clients of this server start: openly on loopback, or with SCRAM-SHA-256.
enum Startup {
    Open(Open),
    Password(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(open) => open.on_startup(client, message).await,
            Startup::Password(scram) => scram.on_startup(client, message).await,
        }
    }
}

/// The extended protocol (parse/bind/execute): datafusion-postgres parses and describes;
/// executing a query plans it again on the latest snapshots and runs it under the limits,
/// in the result formats the client bound.
struct Extended {
    service: Arc<DfSessionService>,
    statements: Arc<Statements>,
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = Parsed;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.service.query_parser()
    }

    /// pgwire answers an Execute by collecting the portal's rows into memory first; with no
    /// row limit (what most drivers send) a query's rows stream to the client instead, so a
    /// large result neither waits for its last row nor sits in memory outside DataFusion's
    /// limit. An Execute with a row limit (a cursor's fetch) keeps pgwire's portal logic.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(portal)
                if message.max_rows == 0
                    && matches!(client.state(), PgWireConnectionState::ReadyForQuery)
                    && matches!(
                        portal.state().lock().await.deref(),
                        PortalExecutionState::Initial
                    )
                    && matches!(
                        &portal.statement.statement,
                        (_, Some((statement, _))) if kind(statement) == Kind::Query
                    ) =>
            {
                portal
            }
            _ => return self._on_execute(client, message).await,
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        let response = self.do_query(client, portal.as_ref(), 0).await?;
        *portal.state().lock().await = PortalExecutionState::Finished;
        let Response::Query(mut rows) = response else {
            client.set_state(PgWireConnectionState::ReadyForQuery);
            return Err(PgWireError::ApiError(
                "a query answered without rows".to_string().into(),
            ));
        };
        let tag = rows.command_tag().to_owned();
        let mut sent = 0;
        while let Some(row) = rows.data_rows().next().await {
            client.feed(PgWireBackendMessage::DataRow(row?)).await?;
            sent += 1;
        }
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new(&tag).with_rows(sent).into(),
            ))
            .await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, Some((statement, plan))) = &portal.statement.statement else {
            return Ok(Response::EmptyQuery);
        };
        match kind(statement) {
            Kind::Session => {
                return ExtendedQueryHandler::do_query(
                    self.service.as_ref(),
                    client,
                    portal,
                    max_rows,
                )
                .await;
            }
            Kind::Travel(travel) => return self.statements.travel(&travel).await,
            Kind::ShowTravel => return self.statements.show_travel(client).await,
            Kind::Refused(_) | Kind::Query => {}
        }
        let types = parameter_types(plan)?;
        let types: Vec<_> = types.iter().map(Option::as_ref).collect();
        let params = deserialize_parameters(portal, &types)?;
        self.statements
            .run(
                statement,
                Some(&params),
                &portal.result_column_format,
                client,
            )
            .await
    }
}
