//! The listener: binds, refuses an exposed address without a password, accepts connections
//! up to the cap, opens each one's session and hands it to pgwire; stops accepting when the
//! injected shutdown resolves and gives open connections a moment to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion_postgres::pgwire::api::ConnectionManager;
use datafusion_postgres::pgwire::tokio::{TlsAcceptor, process_socket};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::connection::{Connection, open_session};
use crate::error::ServerError;
use crate::options::{ServerOptions, Tables};
use crate::tls;

/// How long open connections may finish their statements after shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// A bound server, ready to [`SqlServer::run`].
pub struct SqlServer {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    tables: Tables,
    options: ServerOptions,
    statement_slots: Arc<Semaphore>,
    connection_slots: Arc<Semaphore>,
    manager: Arc<ConnectionManager>,
}

impl SqlServer {
    /// Binds `options.listen` and checks that the tables can be opened. Refuses a
    /// non-loopback address without credentials.
    pub async fn bind(tables: Tables, options: ServerOptions) -> Result<SqlServer, ServerError> {
        let tls = options.tls.as_ref().map(tls::acceptor).transpose()?;
        let bind_error = |source| ServerError::Bind {
            listen: options.listen.clone(),
            source,
        };
        // Checked before binding: an exposed address is never open, not even for a moment.
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(&options.listen)
            .await
            .map_err(bind_error)?
            .collect();
        if let Some(addr) = resolved.iter().find(|a| !a.ip().is_loopback())
            && options.credentials.is_none()
        {
            return Err(ServerError::Unauthenticated { addr: *addr });
        }
        let listener = TcpListener::bind(resolved.as_slice())
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        if !addr.ip().is_loopback() && tls.is_none() {
            tracing::warn!(
                %addr,
                "sql-server listens beyond loopback without TLS: passwords are safe (SCRAM), query results are not; set sql.tls_cert and sql.tls_key"
            );
        }
        // Fail at start, not at the first client, when the catalog is unreachable.
        open_session(&tables, &options.limits).await?;
        Ok(SqlServer {
            listener,
            addr,
            tls,
            statement_slots: Arc::new(Semaphore::new(options.limits.max_statements.max(1))),
            connection_slots: Arc::new(Semaphore::new(options.limits.max_connections.max(1))),
            tables,
            options,
            manager: Arc::new(ConnectionManager::new()),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and closes connections that
    /// have not finished within a few seconds.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        tokio::pin!(shutdown);
        let this = Arc::new(self);
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = this.listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) if transient(&e) => {
                            tracing::warn!(error = %e, "sql-server: accepting a connection failed; continuing");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(source) => return Err(ServerError::Accept { addr: this.addr, source }),
                    };
                    let server = this.clone();
                    connections.spawn(async move { server.serve(socket, peer).await });
                }
            }
        }
        this.statement_slots.close();
        if tokio::time::timeout(DRAIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::info!(
                open = connections.len(),
                "sql-server: closing connections still open after shutdown"
            );
            connections.shutdown().await;
        }
        Ok(())
    }

    async fn serve(&self, socket: TcpStream, peer: SocketAddr) {
        let Ok(_connection_slot) = self.connection_slots.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                max = self.options.limits.max_connections,
                "sql-server: connection turned away: sql.max_connections are open"
            );
            return;
        };
        let session = match open_session(&self.tables, &self.options.limits).await {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "sql-server: cannot open a session for a connection; closing it");
                return;
            }
        };
        let connection = Connection::new(
            session,
            self.options.limits.clone(),
            self.statement_slots.clone(),
            self.options.credentials.as_ref(),
            self.manager.clone(),
        );
        if let Err(e) = process_socket(socket, self.tls.clone(), Arc::new(connection)).await {
            tracing::debug!(%peer, error = %e, "sql-server: connection ended with an error");
        }
    }
}

/// Accept errors that concern one connection or a passing shortage, not the listener.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23) // EMFILE, ENFILE
}
