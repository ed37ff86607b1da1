//! Catalogs and warehouse storage from configuration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle,
    SqlCatalogBuilder,
};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;

use crate::TableError;

/// Which Iceberg catalog holds the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogConfig {
    /// The SQL catalog on SQLite (`sqlite:PATH`, the embedded default) or PostgreSQL
    /// (`postgres://…`, for several writers).
    Sql {
        /// Database URI.
        uri: String,
        /// Warehouse root: `file:///abs/path` or `s3://bucket/prefix`.
        warehouse: String,
    },
}

impl CatalogConfig {
    /// The embedded default: SQLite at `<data_dir>/catalog.db`, warehouse `<data_dir>/warehouse`.
    pub fn embedded(data_dir: &Path) -> CatalogConfig {
        CatalogConfig::Sql {
            uri: format!("sqlite:{}", data_dir.join("catalog.db").display()),
            warehouse: format!("file://{}", data_dir.join("warehouse").display()),
        }
    }

    /// A description safe to log (no password).
    pub fn describe(&self) -> String {
        match self {
            CatalogConfig::Sql { uri, .. } => redact(uri),
        }
    }
}

/// Where and how the warehouse's files are reached, for S3 and S3-compatible stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageConfig {
    /// Custom endpoint (S3-compatible stores, emulators).
    pub s3_endpoint: Option<String>,
    /// Region.
    pub s3_region: Option<String>,
    /// Static access key id (otherwise the AWS default chain applies).
    pub s3_access_key_id: Option<String>,
    /// Static secret key.
    pub s3_secret_access_key: Option<String>,
    /// Path-style addressing (most S3-compatible stores need it).
    pub s3_path_style: bool,
}

impl StorageConfig {
    fn props(&self) -> HashMap<String, String> {
        let mut props = HashMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                props.insert(k.to_string(), v.clone());
            }
        };
        put("s3.endpoint", &self.s3_endpoint);
        put("s3.region", &self.s3_region);
        put("s3.access-key-id", &self.s3_access_key_id);
        put("s3.secret-access-key", &self.s3_secret_access_key);
        if self.s3_path_style {
            props.insert("s3.path-style-access".into(), "true".into());
        }
        props
    }
}

/// Connects to the configured catalog. For SQLite, the database file and its folder are created
/// if missing; the local warehouse folder too.
pub async fn connect(
    name: &str,
    config: &CatalogConfig,
    storage: &StorageConfig,
) -> Result<Arc<dyn Catalog>, TableError> {
    match config {
        CatalogConfig::Sql { uri, warehouse } => {
            let fail =
                |action: &str, hint: &'static str, source: iceberg::Error| TableError::Catalog {
                    catalog: redact(uri),
                    action: action.to_string(),
                    hint,
                    source: Box::new(source),
                };
            let (uri, bind_style) = if let Some(path) = uri.strip_prefix("sqlite:") {
                let path = path.trim_start_matches("//");
                let file = path.split('?').next().unwrap_or(path);
                if let Some(dir) = Path::new(file)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        fail(
                            "creating the catalog folder",
                            "the data directory must be writable",
                            iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()),
                        )
                    })?;
                }
                let uri = if path.contains('?') {
                    format!("sqlite:{path}")
                } else {
                    format!("sqlite:{path}?mode=rwc")
                };
                (uri, SqlBindStyle::QMark)
            } else if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
                (uri.clone(), SqlBindStyle::DollarNumeric)
            } else {
                return Err(fail(
                    "choosing a driver",
                    "the SQL catalog URI must start with sqlite: or postgres://",
                    iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        format!("unsupported URI {}", redact(uri)),
                    ),
                ));
            };
            if let Some(dir) = warehouse.strip_prefix("file://") {
                std::fs::create_dir_all(dir).map_err(|e| {
                    fail(
                        "creating the warehouse folder",
                        "the warehouse path must be writable",
                        iceberg::Error::new(iceberg::ErrorKind::Unexpected, format!("{dir}: {e}")),
                    )
                })?;
            }
            let mut props = storage.props();
            props.insert(SQL_CATALOG_PROP_URI.into(), uri);
            props.insert(SQL_CATALOG_PROP_WAREHOUSE.into(), warehouse.clone());
            props.insert(SQL_CATALOG_PROP_BIND_STYLE.into(), bind_style.to_string());
            // On connect, the SQL catalog creates its two tables with CREATE TABLE IF NOT EXISTS.
            // PostgreSQL lets concurrent runs of that statement race ("duplicate key value
            // violates unique constraint pg_type_typname_nsp_index"), as when several writers
            // start at once on a fresh database; the loser simply tries again.
            let mut attempt: u64 = 0;
            loop {
                attempt += 1;
                match SqlCatalogBuilder::default()
                    .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
                    .load(name, props.clone())
                    .await
                {
                    Ok(catalog) => return Ok(Arc::new(catalog)),
                    Err(e) if attempt < 5 && is_creation_race(&e) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                    }
                    Err(e) => {
                        return Err(fail(
                            "connecting",
                            "is the database reachable and the URI right?",
                            e,
                        ));
                    }
                }
            }
        }
    }
}

fn is_creation_race(error: &iceberg::Error) -> bool {
    let text = format!("{error:?}");
    text.contains("duplicate key value") || text.contains("already exists")
}

/// Removes a password from a URI for logs and errors.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &uri[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &uri[..scheme_end + 3], user, &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:/tmp/c.db"), "sqlite:/tmp/c.db");
    }
}
