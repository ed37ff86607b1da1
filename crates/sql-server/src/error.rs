//! Why the server could not start. Statement errors go to the client as PostgreSQL errors
//! (see `statement`), never here.

use std::net::SocketAddr;
use std::path::PathBuf;

use annotation_sql::SqlError;

/// The server could not start or stopped accepting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be bound.
    #[error(
        "sql-server cannot listen on {listen}: {source}; choose a free address with sql.listen (--listen)"
    )]
    Bind {
        /// The address as configured.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anyone who can reach a non-loopback address could read every annotation.
    #[error(
        "sql-server refuses to listen on {addr} without a password: set sql.password (ANNOTABLE_SQL_PASSWORD) so clients authenticate, and sql.tls_cert/sql.tls_key for TLS, or listen on 127.0.0.1"
    )]
    Unauthenticated {
        /// The bound address.
        addr: SocketAddr,
    },
    /// The TLS certificate or key cannot be used.
    #[error("sql-server TLS: {what} {path}: {message}; check sql.tls_cert and sql.tls_key")]
    Tls {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tables cannot be opened (the catalog is unreachable, say).
    #[error("sql-server cannot open the SQL session: {0}")]
    Session(#[from] SqlError),
    /// Accepting connections failed for good.
    #[error("sql-server stopped accepting connections on {addr}: {source}")]
    Accept {
        /// The bound address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ServerError {
    /// Whether starting again may succeed without changing the configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServerError::Bind { .. } | ServerError::Accept { .. } => true,
            ServerError::Session(e) => e.is_retryable(),
            ServerError::Unauthenticated { .. } | ServerError::Tls { .. } => false,
        }
    }
}
