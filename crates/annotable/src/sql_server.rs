//! `annotable sql-server`: the PostgreSQL-wire endpoint (crate `annotable-sql-server`) on the
//! configured catalog, with the `[sql]` section's address, credentials, TLS and limits.

use std::future::Future;
use std::time::Duration;

use annotable_sql_server::{
    Credentials, Limits, ServerError, ServerOptions, SqlServer, Tables, TlsFiles,
};
use annotation_table::TableError;

use crate::config::{Config, ConfigError, defaults, env_name};

/// Why `sql-server` could not run.
#[derive(Debug, thiserror::Error)]
pub enum SqlServerError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The catalog could not be opened.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The server.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// The server's options from `[sql]`.
pub fn options(config: &Config) -> Result<ServerOptions, ConfigError> {
    let sql = &config.sql;
    let tls = match (&sql.tls_cert, &sql.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "sql.tls_cert".into(),
                env: env_name("sql.tls_cert"),
                message: "TLS needs both sql.tls_cert and sql.tls_key".into(),
            });
        }
    };
    let credentials = match sql.password.as_deref() {
        None => None,
        Some("") => {
            return Err(ConfigError::Invalid {
                key: "sql.password".into(),
                env: env_name("sql.password"),
                message:
                    "an empty password would let anyone in; unset it (loopback only) or set one"
                        .into(),
            });
        }
        Some(password) => Some(Credentials {
            user: sql
                .user
                .clone()
                .unwrap_or_else(|| defaults::SQL_USER.to_string()),
            password: password.to_string(),
        }),
    };
    let positive = |key: &str, value: Option<u64>, default: u64| -> Result<u64, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(ConfigError::Invalid {
                key: key.into(),
                env: env_name(key),
                message: "must be at least 1".into(),
            }),
            n => Ok(n),
        }
    };
    Ok(ServerOptions {
        listen: sql
            .listen
            .clone()
            .unwrap_or_else(|| defaults::SQL_LISTEN.to_string()),
        credentials,
        tls,
        limits: Limits {
            statement_timeout: Duration::from_secs(positive(
                "sql.statement_timeout_secs",
                sql.statement_timeout_secs,
                defaults::SQL_STATEMENT_TIMEOUT_SECS,
            )?),
            statement_memory: usize::try_from(positive(
                "sql.statement_memory_mb",
                sql.statement_memory_mb,
                defaults::SQL_STATEMENT_MEMORY_MB,
            )?)
            .unwrap_or(usize::MAX / (1 << 20))
            .saturating_mul(1 << 20),
            max_statements: positive(
                "sql.max_statements",
                sql.max_statements,
                defaults::SQL_MAX_STATEMENTS,
            )? as usize,
            max_connections: positive(
                "sql.max_connections",
                sql.max_connections,
                defaults::SQL_MAX_CONNECTIONS,
            )? as usize,
        },
    })
}

/// Binds, prints the address clients connect to on stderr, and serves until `shutdown`.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SqlServerError> {
    let options = options(config)?;
    let (catalog_config, catalog) = config.connect_catalog::<SqlServerError>().await?;
    let tables = Tables {
        catalog,
        catalog_name: catalog_config.describe(),
        namespace: config.namespace().to_string(),
        journal: config.table().to_string(),
        state_table: config.state_table().to_string(),
        objects_table: config.objects_table().to_string(),
    };
    let authenticated = options.credentials.is_some();
    let tls = options.tls.is_some();
    let server = SqlServer::bind(tables, options).await?;
    let addr = server.local_addr();
    tracing::info!(%addr, authenticated, tls, "sql-server listening");
    eprintln!(
        "annotable sql-server listening on {addr}: psql -h {} -p {} -U {} (read-only; Ctrl-C stops)",
        addr.ip(),
        addr.port(),
        config.sql.user.as_deref().unwrap_or(defaults::SQL_USER)
    );
    server.run(shutdown).await?;
    Ok(())
}
