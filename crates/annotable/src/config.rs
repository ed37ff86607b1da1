//! Configuration: one TOML file (`--config`), every key overridable by an `ANNOTABLE_*`
//! environment variable, and the most used ones by flags (flags win, then the environment,
//! then the file, then the embedded defaults). Which keys exist, their variables, flags and
//! defaults are one table, [`keys::KEYS`].
//!
//! A key `a.b` in the file is `ANNOTABLE_A_B` in the environment: `catalog.uri` is
//! `ANNOTABLE_CATALOG_URI`. With nothing configured, annotable runs embedded: a SQLite catalog
//! at `<data_dir>/catalog.db` and a warehouse at `<data_dir>/warehouse`, `data_dir` being
//! `./annotable-data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use annotation_table::{Catalog, CatalogConfig, StorageConfig, TableError};
use serde::{Deserialize, Serialize};

pub mod keys;

pub use keys::defaults;
use keys::{Key, Kind};

/// A configuration problem, naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// TOML's description, with line and column.
        message: String,
    },
    /// A value (from any layer) is not acceptable.
    #[error("config key {key} ({env}): {message}")]
    Invalid {
        /// The key, as in the file.
        key: String,
        /// The environment variable for it.
        env: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The data directory cannot be created.
    #[error(
        "cannot create data directory {path}: {source}; set data_dir (ANNOTABLE_DATA_DIR) to a writable folder"
    )]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The whole configuration, as read from the file (every field optional there).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder for the embedded catalog and warehouse (and backfill checkpoints).
    pub data_dir: Option<PathBuf>,
    /// Iceberg namespace of the tables.
    pub namespace: Option<String>,
    /// Journal table name.
    pub table: Option<String>,
    /// The catalog.
    #[serde(default)]
    pub catalog: CatalogSection,
    /// The warehouse storage.
    #[serde(default)]
    pub storage: StorageSection,
    /// How the S3 buckets and the SQS queue are reached (credentials come from the standard
    /// AWS chain: environment, profile, ECS task role).
    #[serde(default)]
    pub aws: AwsSection,
    /// `annotable serve`.
    #[serde(default)]
    pub serve: ServeSection,
    /// `annotable backfill`.
    #[serde(default)]
    pub backfill: BackfillSection,
    /// `annotable maintain`, and maintenance inside `serve`.
    #[serde(default)]
    pub maintain: MaintainSection,
    /// The current-state table and its refresh.
    #[serde(default)]
    pub state: StateSection,
    /// Objects beside annotations.
    #[serde(default)]
    pub objects: ObjectsSection,
    /// `annotable sql-server`, the PostgreSQL-wire endpoint.
    #[serde(default)]
    pub sql: SqlSection,
}

/// `[sql]`: `annotable sql-server`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSection {
    /// `host:port` to listen on (default 127.0.0.1:5433). Any address but loopback needs
    /// `password`.
    pub listen: Option<String>,
    /// The user clients log in as when `password` is set (default `annotable`).
    pub user: Option<String>,
    /// Clients authenticate with SCRAM-SHA-256 when set; prefer the environment variable
    /// `ANNOTABLE_SQL_PASSWORD` to the file.
    pub password: Option<String>,
    /// PEM certificate chain for TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// A statement is cancelled after this many seconds (default 300); clients may set less.
    pub statement_timeout_secs: Option<u64>,
    /// Memory one statement may hold, in MiB (default 1024); more fails the statement alone.
    pub statement_memory_mb: Option<u64>,
    /// Statements running at once over all connections (default 8); more wait.
    pub max_statements: Option<u64>,
    /// Open connections (default 64); more are turned away.
    pub max_connections: Option<u64>,
}

/// `[objects]`: the object journal and the `objects` view beside the annotations.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsSection {
    /// Record object versions at all (default true; false keeps annotations only).
    pub enabled: Option<bool>,
    /// The object journal's name (default `object_journal`).
    pub table: Option<String>,
    /// Record only keys under these prefixes (default: every key the events and listings
    /// name; set it to the prefixes `setup notifications` subscribed).
    pub prefixes: Option<Vec<String>>,
}

/// `[state]`: the `annotations` table, the current state refreshed from the journal.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Its name (default `annotations`; its tombstones are `<name>_tombstones`).
    pub table: Option<String>,
    /// `serve` refreshes it every this many seconds (default 5; 0 turns the refresher off).
    /// Only one process refreshes at a time (a lease in the catalog database).
    pub refresh_interval_secs: Option<u64>,
    /// Journal rows (uncompressed) one refresh or rebuild holds at once, in MiB; more are
    /// folded in passes (default: a quarter of `serve.read_buffer_bytes` in serve, 1024 in
    /// `maintain`).
    pub fold_budget_mb: Option<u64>,
}

/// `[maintain]`: compaction, snapshot expiry and orphan cleanup.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaintainSection {
    /// Size compaction writes files at, in MiB (default 128); files under 3/4 of it are small.
    pub target_file_mb: Option<u64>,
    /// Snapshots younger than this are kept, in seconds (default 3600). Must cover the time a
    /// commit retry may take and message redelivery: at least 600.
    pub snapshot_retention_secs: Option<u64>,
    /// The newest this many snapshots are always kept (default 10).
    pub min_snapshots: Option<usize>,
    /// Unreferenced files younger than this are never deleted, in seconds (default 86400).
    pub orphan_age_secs: Option<u64>,
    /// `serve` maintains the table every this many seconds (default: never; opt in). Only
    /// one process maintains a table at a time (a lease in the catalog database).
    pub serve_interval_secs: Option<u64>,
    /// Journal rows ingested more than this many days ago are dropped by `maintain` once the
    /// annotations table has folded them in (default: never; history queries then reach back
    /// this far only). 0 keeps nothing the table has folded.
    pub journal_retention_days: Option<u64>,
}

/// `[backfill]`: the bucket walker.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSection {
    /// Object versions read at once (default 64; S3 calls stay under `aws.s3_concurrency`).
    pub concurrency: Option<usize>,
    /// Commit when this many rows are pending (default 50,000).
    pub flush_rows: Option<usize>,
    /// Commit when this many payload bytes are pending (default 64 MiB).
    pub flush_bytes: Option<usize>,
    /// Commit at least this often, in milliseconds (default 10,000), so a stop loses little.
    pub flush_age_ms: Option<u64>,
    /// Payload bytes read and not yet committed, at most (default 256 MiB): large annotation
    /// sets are read and committed in parts to stay under it.
    pub read_buffer_bytes: Option<u64>,
    /// Where the lease and checkpoint objects live: `s3://bucket/prefix` (conditional writes)
    /// or a local folder. Default: `<warehouse>/_annotable/backfill` for an `s3://` warehouse,
    /// else `<data_dir>/backfill`.
    pub state_url: Option<String>,
    /// How long a lease lasts without renewal, in seconds (default 60; renewed every third).
    pub lease_ttl_secs: Option<u64>,
}

/// `[aws]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSection {
    /// Custom endpoint for S3 and SQS (an emulator or S3-compatible store); `AWS_ENDPOINT_URL`
    /// works too.
    pub endpoint_url: Option<String>,
    /// Region (otherwise `AWS_REGION` / the profile).
    pub region: Option<String>,
    /// Path-style S3 addressing (needed by most emulators).
    pub force_path_style: Option<bool>,
    /// Sent as `x-amz-expected-bucket-owner` on every S3 call.
    pub expected_bucket_owner: Option<String>,
    /// Only these buckets are read; events of others go to the dead-letter path.
    pub allowed_buckets: Option<Vec<String>>,
    /// S3 calls in flight at most.
    pub s3_concurrency: Option<usize>,
}

/// `[serve]`: the queue consumer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// The SQS queue URL the bucket notifications arrive on.
    pub queue_url: Option<String>,
    /// Concurrent long-poll receivers.
    pub receivers: Option<usize>,
    /// Messages being resolved at once.
    pub messages_in_flight: Option<usize>,
    /// Flush a batch at this many observations.
    pub flush_rows: Option<usize>,
    /// Flush a batch at this many payload bytes.
    pub flush_bytes: Option<usize>,
    /// Flush a batch when its oldest message is this old (milliseconds).
    pub flush_age_ms: Option<u64>,
    /// Payload bytes read and not yet committed, at most (default 256 MiB): large annotation
    /// sets are read and committed in parts to stay under it.
    pub read_buffer_bytes: Option<u64>,
    /// Visibility timeout to keep in-flight messages at (seconds; default: the queue's).
    pub visibility_timeout_secs: Option<u64>,
    /// Deadline for a graceful stop (seconds).
    pub shutdown_timeout_secs: Option<u64>,
    /// Address of /metrics, /healthz and /readyz (`off` to disable).
    pub http_addr: Option<String>,
    /// Where poison messages are moved when the queue has no redrive policy.
    pub dead_letter_queue_url: Option<String>,
    /// Object versions whose last written state is remembered (restating rows are suppressed).
    pub dedup_versions: Option<usize>,
    /// How far back (seconds) the start-up warm-up of that memory reads the journal.
    pub dedup_lookback_secs: Option<u64>,
    /// How far (milliseconds) a host's clock may be from S3's: an absence is only taken as
    /// already recorded when it was observed this long after the event.
    pub max_clock_skew_ms: Option<u64>,
    /// `/healthz` fails when messages are held and no stage has moved one on for this long
    /// (seconds), outside a reported outage.
    pub wedged_after_secs: Option<u64>,
}

/// `[catalog]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// `sql` (default), `rest` or `s3tables` (`glue` is refused with the alternatives).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// sql: `sqlite:PATH` or `postgres://…` (default `sqlite:<data_dir>/catalog.db`);
    /// rest: the server URI; glue, s3tables: a custom endpoint (optional).
    pub uri: Option<String>,
    /// sql, glue: `file:///abs/path` or `s3://bucket/prefix` (default `<data_dir>/warehouse`);
    /// rest: the warehouse name, if the server wants one; s3tables: the table bucket ARN.
    pub warehouse: Option<String>,
    /// Catalog name (as other engines will see it).
    pub name: Option<String>,
    /// Extra properties passed to the catalog as they are (REST `credential`/`token`, Glue
    /// `catalog_id`, AWS `profile_name`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[storage]`: how the warehouse's S3 files are reached.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Custom S3 endpoint (S3-compatible stores).
    pub s3_endpoint: Option<String>,
    /// Region of the warehouse bucket.
    pub s3_region: Option<String>,
    /// Static access key id (otherwise the AWS default chain).
    pub s3_access_key_id: Option<String>,
    /// Static secret access key.
    pub s3_secret_access_key: Option<String>,
    /// Path-style addressing.
    pub s3_path_style: Option<bool>,
}

impl Config {
    /// Reads `path` if given, then applies the `ANNOTABLE_*` variables of `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load_layers(path, env, [])
    }

    /// The layers in order, each over the one before: the file at `path` (if any), the
    /// `ANNOTABLE_*` variables of `env`, then `flags` (`(key path, value)`, as
    /// [`keys::KEYS`] names them). Every key's layers come from that one table.
    pub fn load_layers(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let parse_error = |e: toml::de::Error| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                };
                // Typed first, so a mistake in the file is reported with its line.
                toml::from_str::<Config>(&text).map_err(parse_error)?;
                toml::from_str::<toml::Table>(&text).map_err(parse_error)?
            }
            None => toml::Table::new(),
        };
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("ANNOTABLE_"))
            .collect();
        for key in keys::KEYS {
            if let Some(value) = key.env().and_then(|name| env.get(&name)) {
                set(&mut tree, key, value, &env_name(key.path))?;
            }
        }
        for (path, value) in flags {
            let key = keys::find(path).ok_or_else(|| ConfigError::Invalid {
                key: path.into(),
                env: env_name(path),
                message:
                    "not a configuration key (a defect: flags must name keys of config::keys::KEYS)"
                        .into(),
            })?;
            let flag = key.flag.unwrap_or(key.path);
            set(&mut tree, key, &value, flag)?;
        }
        Config::deserialize(toml::Value::Table(tree)).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })
    }

    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(defaults::NAMESPACE)
    }

    /// The journal table name, defaulted.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or(defaults::TABLE)
    }

    /// The object journal's name, defaulted.
    pub fn objects_table(&self) -> &str {
        self.objects
            .table
            .as_deref()
            .unwrap_or(defaults::OBJECTS_TABLE)
    }

    /// Whether object versions are recorded, and where: `None` when `objects.enabled` is
    /// false, else the prefixes to record (empty: every key).
    pub fn object_prefixes(&self) -> Option<Vec<String>> {
        self.objects
            .enabled
            .unwrap_or(true)
            .then(|| self.objects.prefixes.clone().unwrap_or_default())
    }

    /// The current-state table name, defaulted.
    pub fn state_table(&self) -> &str {
        self.state.table.as_deref().unwrap_or(defaults::STATE_TABLE)
    }

    /// The catalog name, defaulted.
    pub fn catalog_name(&self) -> &str {
        self.catalog
            .name
            .as_deref()
            .unwrap_or(defaults::CATALOG_NAME)
    }

    /// Where backfill keeps its lease and checkpoint objects (see [`BackfillSection::state_url`]).
    pub fn backfill_state_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.backfill.state_url {
            return Ok(url.clone());
        }
        if let Some(w) = &self.catalog.warehouse
            && w.starts_with("s3://")
        {
            return Ok(format!("{}/_annotable/backfill", w.trim_end_matches('/')));
        }
        Ok(self.data_dir()?.join("backfill").display().to_string())
    }

    /// The data directory as an absolute path, created if missing.
    pub fn data_dir(&self) -> Result<PathBuf, ConfigError> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR));
        std::fs::create_dir_all(&dir).map_err(|source| ConfigError::DataDir {
            path: dir.clone(),
            source,
        })?;
        std::path::absolute(&dir).map_err(|source| ConfigError::DataDir { path: dir, source })
    }

    /// The catalog to connect to: the configured one, or the embedded default under the data
    /// directory (missing parts of a SQL catalog default the same way).
    pub fn catalog_config(&self) -> Result<CatalogConfig, ConfigError> {
        let properties = self.catalog.properties.clone();
        let required = |value: &Option<String>, key: &str, what: &str| {
            value.clone().ok_or_else(|| ConfigError::Invalid {
                key: key.into(),
                env: env_name(key),
                message: format!("required for this catalog type: {what}"),
            })
        };
        match self
            .catalog
            .kind
            .as_deref()
            .unwrap_or(defaults::CATALOG_TYPE)
        {
            "sql" => {}
            "rest" => {
                return Ok(CatalogConfig::Rest {
                    uri: required(&self.catalog.uri, "catalog.uri", "the REST catalog's URI")?,
                    warehouse: self.catalog.warehouse.clone(),
                    properties,
                });
            }
            // iceberg-catalog-glue 0.10.1 maps no Glue type to `timestamptz`, which the journal
            // has: creating it fails. Refused here, before any work, with the ways that work.
            "glue" => {
                return Err(ConfigError::Invalid {
                    key: "catalog.type".into(),
                    env: env_name("catalog.type"),
                    message: "\"glue\" cannot hold the journal yet: iceberg-catalog-glue 0.10.1 \
                        has no Glue type for its timestamptz columns (fixed upstream, \
                        apache/iceberg-rust#2956). Use \"s3tables\" (catalog.warehouse = the table \
                        bucket ARN; S3 Tables' AWS analytics integration shows the tables in Glue \
                        and Athena) or \"rest\" with a REST catalog"
                        .into(),
                });
            }
            "s3tables" => {
                return Ok(CatalogConfig::S3Tables {
                    table_bucket_arn: required(
                        &self.catalog.warehouse,
                        "catalog.warehouse",
                        "the table bucket ARN, arn:aws:s3tables:REGION:ACCOUNT:bucket/NAME",
                    )?,
                    endpoint: self.catalog.uri.clone(),
                    properties,
                });
            }
            other => {
                return Err(ConfigError::Invalid {
                    key: "catalog.type".into(),
                    env: env_name("catalog.type"),
                    message: format!(
                        "{other:?} is not a catalog type: use sql, rest, glue or s3tables"
                    ),
                });
            }
        }
        let needs_data_dir = self.catalog.uri.is_none() || self.catalog.warehouse.is_none();
        let embedded = if needs_data_dir {
            Some(CatalogConfig::embedded(&self.data_dir()?))
        } else {
            None
        };
        let (default_uri, default_warehouse) = match embedded {
            Some(CatalogConfig::Sql { uri, warehouse }) => (Some(uri), Some(warehouse)),
            _ => (None, None),
        };
        let uri = self.catalog.uri.clone().or(default_uri).unwrap_or_default();
        let warehouse = match self.catalog.warehouse.clone() {
            Some(w) => normalise_warehouse(&w)?,
            None => default_warehouse.unwrap_or_default(),
        };
        Ok(CatalogConfig::Sql { uri, warehouse })
    }

    /// Connects to the configured catalog; returns its configuration too (for descriptions).
    pub async fn connect_catalog<E: From<ConfigError> + From<TableError>>(
        &self,
    ) -> Result<(CatalogConfig, Arc<dyn Catalog>), E> {
        let catalog_config = self.catalog_config()?;
        let catalog =
            annotation_table::connect(self.catalog_name(), &catalog_config, &self.storage_config())
                .await?;
        Ok((catalog_config, catalog))
    }

    /// How the warehouse's files are reached.
    pub fn storage_config(&self) -> StorageConfig {
        StorageConfig {
            s3_endpoint: self.storage.s3_endpoint.clone(),
            s3_region: self.storage.s3_region.clone(),
            s3_access_key_id: self.storage.s3_access_key_id.clone(),
            s3_secret_access_key: self.storage.s3_secret_access_key.clone(),
            s3_path_style: self.storage.s3_path_style.unwrap_or(false),
        }
    }
}

/// `catalog.warehouse` accepts `s3://…`, `file:///abs` and a plain local path (made absolute).
fn normalise_warehouse(w: &str) -> Result<String, ConfigError> {
    if w.starts_with("s3://") || w.starts_with("s3a://") || w.starts_with("file:///") {
        return Ok(w.to_string());
    }
    if w.contains("://") {
        return Err(ConfigError::Invalid {
            key: "catalog.warehouse".into(),
            env: env_name("catalog.warehouse"),
            message: format!(
                "{w:?} is not supported: use s3://bucket/prefix, file:///abs/path or a local folder"
            ),
        });
    }
    let path = std::path::absolute(w).map_err(|e| ConfigError::Invalid {
        key: "catalog.warehouse".into(),
        env: env_name("catalog.warehouse"),
        message: e.to_string(),
    })?;
    Ok(format!("file://{}", path.display()))
}

/// The environment variable for a config key: `catalog.uri` → `ANNOTABLE_CATALOG_URI`.
pub fn env_name(key: &str) -> String {
    format!("ANNOTABLE_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Sets `key` to `raw` (from the environment variable or flag `origin`) in the layered tree,
/// read according to the key's kind.
fn set(tree: &mut toml::Table, key: &Key, raw: &str, origin: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.path.into(),
        env: origin.into(),
        message,
    };
    let value = match key.kind {
        Kind::Text => toml::Value::String(raw.to_string()),
        Kind::Number => toml::Value::Integer(
            raw.trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| invalid(format!("{raw:?} is not a non-negative whole number")))?,
        ),
        Kind::Bool => toml::Value::Boolean(
            parse_bool(raw)
                .ok_or_else(|| invalid(format!("{raw:?} is not a boolean (true/false)")))?,
        ),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        ),
        Kind::Map => return Err(invalid("set in the configuration file only".into())),
    };
    let mut table = tree;
    let mut parts = key.path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(invalid(format!(
                    "[{part}] in the configuration file is not a table"
                )));
            }
        };
    }
    Ok(())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("annotable.toml");
        std::fs::write(
            &file,
            "namespace = \"from_file\"\n[catalog]\nuri = \"postgres://db/x\"\nwarehouse = \"s3://wh/p\"\n[storage]\ns3_path_style = true\n",
        )?;
        let config = Config::load(
            Some(&file),
            env(&[("ANNOTABLE_NAMESPACE", "from_env"), ("OTHER", "x")]),
        )?;
        assert_eq!(config.namespace(), "from_env");
        assert_eq!(config.table(), defaults::TABLE);
        assert_eq!(
            config.catalog_config()?,
            CatalogConfig::Sql {
                uri: "postgres://db/x".into(),
                warehouse: "s3://wh/p".into()
            }
        );
        assert!(config.storage_config().s3_path_style);
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[catalog]\nurl = \"x\"\n")?;
        let err = Config::load(Some(&file), env(&[]))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("url") && e.contains("bad.toml")),
            "{err:?}"
        );
        let err = Config::load(None, env(&[("ANNOTABLE_STORAGE_S3_PATH_STYLE", "maybe")]))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("ANNOTABLE_STORAGE_S3_PATH_STYLE")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn aws_and_rest_catalogs_from_config() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[catalog]\ntype = \"s3tables\"\nwarehouse = \"arn:aws:s3tables:us-east-1:111122223333:bucket/b\"\n[catalog.properties]\nprofile_name = \"p\"\n",
        )?;
        let config = Config::load(Some(&file), env(&[]))?;
        assert_eq!(
            config.catalog_config()?,
            CatalogConfig::S3Tables {
                table_bucket_arn: "arn:aws:s3tables:us-east-1:111122223333:bucket/b".into(),
                endpoint: None,
                properties: [("profile_name".to_string(), "p".to_string())].into(),
            }
        );
        let config = Config::load(None, env(&[("ANNOTABLE_CATALOG_TYPE", "glue")]))?;
        let err = config.catalog_config().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("ANNOTABLE_CATALOG_TYPE")
                    && e.contains("timestamptz")
                    && e.contains("\"s3tables\"")),
            "{err:?}"
        );
        let config = Config::load(
            None,
            env(&[
                ("ANNOTABLE_CATALOG_TYPE", "rest"),
                ("ANNOTABLE_CATALOG_URI", "http://127.0.0.1:8181"),
            ]),
        )?;
        assert!(matches!(
            config.catalog_config()?,
            CatalogConfig::Rest { .. }
        ));
        let config = Config::load(None, env(&[("ANNOTABLE_CATALOG_TYPE", "hive")]))?;
        assert!(config.catalog_config().is_err());
        Ok(())
    }

    #[test]
    fn embedded_defaults_live_under_an_absolute_data_dir() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let config = Config::load(
            None,
            env(&[(
                "ANNOTABLE_DATA_DIR",
                &dir.path().join("d").display().to_string(),
            )]),
        )?;
        let CatalogConfig::Sql { uri, warehouse } = config.catalog_config()? else {
            panic!("the default catalog is SQL");
        };
        assert!(
            uri.starts_with("sqlite:/") && uri.ends_with("/d/catalog.db"),
            "{uri}"
        );
        assert!(
            warehouse.starts_with("file:///") && warehouse.ends_with("/d/warehouse"),
            "{warehouse}"
        );
        Ok(())
    }
}
