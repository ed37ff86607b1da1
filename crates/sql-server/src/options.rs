//! What the server serves and how: the tables, the address, credentials, TLS and limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iceberg::Catalog;

/// The tables a connection's SQL session opens: the same ones `annotable query` opens.
#[derive(Debug, Clone)]
pub struct Tables {
    /// The Iceberg catalog.
    pub catalog: Arc<dyn Catalog>,
    /// How errors name the catalog (no secrets).
    pub catalog_name: String,
    /// The namespace unqualified names resolve in.
    pub namespace: String,
    /// The journal table.
    pub journal: String,
    /// The current-state table.
    pub state_table: String,
    /// The object journal (`objects.table`).
    pub objects_table: String,
}

/// A user name and password clients authenticate with (SCRAM-SHA-256).
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What one statement and the whole server may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A statement (waiting for a slot, planning and sending its rows) is cancelled after
    /// this; a client's `SET statement_timeout` may lower it, not raise it.
    pub statement_timeout: Duration,
    /// The memory one statement may hold, in bytes; more fails that statement alone.
    pub statement_memory: usize,
    /// Statements running at once over all connections; more wait for a slot.
    pub max_statements: usize,
    /// Open connections; more are turned away.
    pub max_connections: usize,
}

/// How the server listens.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `host:port`; port 0 picks a free port ([`crate::SqlServer::local_addr`] says which).
    pub listen: String,
    /// Required by any address but loopback; with it, every client authenticates.
    pub credentials: Option<Credentials>,
    /// TLS for clients that ask for it (`sslmode=require`).
    pub tls: Option<TlsFiles>,
    /// The limits.
    pub limits: Limits,
}
