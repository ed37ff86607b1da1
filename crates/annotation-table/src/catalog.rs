//! Catalogs and warehouse storage from configuration.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_glue::{
    GLUE_CATALOG_PROP_URI, GLUE_CATALOG_PROP_WAREHOUSE, GlueCatalogBuilder,
};
use iceberg_catalog_rest::{
    REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder,
};
use iceberg_catalog_s3tables::{
    S3TABLES_CATALOG_PROP_ENDPOINT_URL, S3TABLES_CATALOG_PROP_TABLE_BUCKET_ARN,
    S3TablesCatalogBuilder,
};
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
    /// An Iceberg REST catalog (Polaris, Nessie, Lakekeeper, Unity, Tabular, ...).
    Rest {
        /// Base URI, e.g. `https://catalog.example.com/api/catalog`.
        uri: String,
        /// Warehouse name or location, when the server wants one.
        warehouse: Option<String>,
        /// Extra catalog properties passed through (`credential`, `token`, `scope`, ...).
        properties: BTreeMap<String, String>,
    },
    /// AWS Glue Data Catalog; table files go to `warehouse` on S3.
    Glue {
        /// Warehouse root, `s3://bucket/prefix`.
        warehouse: String,
        /// Custom Glue endpoint (emulators); also used for S3 unless the storage sets one.
        endpoint: Option<String>,
        /// Extra catalog properties passed through (`catalog_id`, `profile_name`, ...).
        properties: BTreeMap<String, String>,
    },
    /// Amazon S3 Tables: the table bucket holds both catalog and files.
    S3Tables {
        /// `arn:aws:s3tables:REGION:ACCOUNT:bucket/NAME`.
        table_bucket_arn: String,
        /// Custom S3 Tables endpoint (emulators).
        endpoint: Option<String>,
        /// Extra catalog properties passed through (`profile_name`, ...).
        properties: BTreeMap<String, String>,
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
            CatalogConfig::Rest { uri, .. } => format!("REST catalog {}", redact(uri)),
            CatalogConfig::Glue { warehouse, .. } => {
                format!("Glue catalog (warehouse {warehouse})")
            }
            CatalogConfig::S3Tables {
                table_bucket_arn, ..
            } => {
                format!("S3 Tables {table_bucket_arn}")
            }
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
    pub(crate) fn props(&self) -> HashMap<String, String> {
        let mut props = HashMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                props.insert(k.to_string(), v.clone());
            }
        };
        put("s3.endpoint", &self.s3_endpoint);
        // The AWS catalogs (Glue, S3 Tables) take their own credentials and region under
        // these names; the same static keys serve both when configured.
        put("aws_access_key_id", &self.s3_access_key_id);
        put("aws_secret_access_key", &self.s3_secret_access_key);
        put("region_name", &self.s3_region);
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
            if let Some(path) = uri.strip_prefix("sqlite:") {
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
            }
            let Some((uri, bind_style)) = sql_driver_uri(uri) else {
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
        CatalogConfig::Rest {
            uri,
            warehouse,
            properties,
        } => {
            let mut props = with_extra(storage, properties);
            props.insert(REST_CATALOG_PROP_URI.into(), uri.clone());
            if let Some(warehouse) = warehouse {
                props.insert(REST_CATALOG_PROP_WAREHOUSE.into(), warehouse.clone());
            }
            load(
                RestCatalogBuilder::default(),
                name,
                props,
                config,
                "is the REST catalog URI right and reachable, and are its credentials set?",
            )
            .await
        }
        CatalogConfig::Glue {
            warehouse,
            endpoint,
            properties,
        } => {
            let mut props = with_extra(storage, properties);
            props.insert(GLUE_CATALOG_PROP_WAREHOUSE.into(), warehouse.clone());
            if let Some(endpoint) = endpoint {
                props.insert(GLUE_CATALOG_PROP_URI.into(), endpoint.clone());
            }
            load(
                GlueCatalogBuilder::default(),
                name,
                props,
                config,
                "are AWS credentials and region set, and may they use Glue?",
            )
            .await
        }
        CatalogConfig::S3Tables {
            table_bucket_arn,
            endpoint,
            properties,
        } => {
            let mut props = with_extra(storage, properties);
            props.insert(
                S3TABLES_CATALOG_PROP_TABLE_BUCKET_ARN.into(),
                table_bucket_arn.clone(),
            );
            if let Some(endpoint) = endpoint {
                props.insert(S3TABLES_CATALOG_PROP_ENDPOINT_URL.into(), endpoint.clone());
            }
            load(
                S3TablesCatalogBuilder::default(),
                name,
                props,
                config,
                "is the table bucket ARN right, and are AWS credentials and region set?",
            )
            .await
        }
    }
}

/// The sqlx URI and placeholder style of a SQL catalog URI (`sqlite:PATH`, opened read-write and
/// created if missing, or `postgres://…`); `None` for any other scheme.
pub(crate) fn sql_driver_uri(uri: &str) -> Option<(String, SqlBindStyle)> {
    if let Some(path) = uri.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        let uri = if path.contains('?') {
            format!("sqlite:{path}")
        } else {
            format!("sqlite:{path}?mode=rwc")
        };
        Some((uri, SqlBindStyle::QMark))
    } else if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        Some((uri.to_string(), SqlBindStyle::DollarNumeric))
    } else {
        None
    }
}

/// The storage properties with the configured extra catalog properties on top.
fn with_extra(
    storage: &StorageConfig,
    properties: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut props = storage.props();
    props.extend(properties.clone());
    props
}

/// Loads a REST, Glue or S3 Tables catalog with annotable's storage factory.
async fn load<B: CatalogBuilder>(
    builder: B,
    name: &str,
    props: HashMap<String, String>,
    config: &CatalogConfig,
    hint: &'static str,
) -> Result<Arc<dyn Catalog>, TableError>
where
    B::C: 'static,
{
    let catalog = builder
        .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
        .load(name, props)
        .await
        .map_err(|e| TableError::Catalog {
            catalog: config.describe(),
            action: "connecting".to_string(),
            hint,
            source: Box::new(e),
        })?;
    Ok(Arc::new(catalog))
}

fn is_creation_race(error: &iceberg::Error) -> bool {
    let text = format!("{error:?}");
    text.contains("duplicate key value") || text.contains("already exists")
}

/// Removes a password from a URI for logs and errors.
pub(crate) fn redact(uri: &str) -> String {
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
