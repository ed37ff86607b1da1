//! Every configuration key in one table: where it sits in the file, its environment variable
//! (derived from the path), the flag that sets it, its default and its type. The environment
//! and flag layers are applied from this table alone, the defaults below are the ones the
//! commands use, and tests check the table against the `Config` struct and against the
//! README's configuration reference.

/// The defaults, in one place: the commands read these, and [`KEYS`] shows them.
pub mod defaults {
    /// `data_dir`, relative to the working directory.
    pub const DATA_DIR: &str = "annotable-data";
    /// `namespace` (as AWS S3 Metadata's).
    pub const NAMESPACE: &str = "s3_metadata";
    /// `table`.
    pub const TABLE: &str = "annotation_journal";
    /// `catalog.type`.
    pub const CATALOG_TYPE: &str = "sql";
    /// `catalog.name`.
    pub const CATALOG_NAME: &str = "annotable";
    /// `aws.s3_concurrency`.
    pub const S3_CONCURRENCY: usize = 64;
    /// `serve.receivers`.
    pub const SERVE_RECEIVERS: usize = 2;
    /// `serve.messages_in_flight`.
    pub const SERVE_MESSAGES_IN_FLIGHT: usize = 64;
    /// `serve.flush_rows`.
    pub const SERVE_FLUSH_ROWS: usize = 20_000;
    /// `serve.flush_bytes` and `backfill.flush_bytes`.
    pub const FLUSH_BYTES: usize = 64 << 20;
    /// `serve.flush_age_ms`: at a trickle of events the batch age is most of an event's lag, so
    /// one second keeps p99 freshness under two (one commit a second at most).
    pub const SERVE_FLUSH_AGE_MS: u64 = 1_000;
    /// `serve.read_buffer_bytes` and `backfill.read_buffer_bytes`.
    pub const READ_BUFFER_BYTES: u64 = 256 << 20;
    /// `serve.shutdown_timeout_secs`: under ECS's 30 s stopTimeout.
    pub const SERVE_SHUTDOWN_TIMEOUT_SECS: u64 = 25;
    /// `serve.http_addr`.
    pub const SERVE_HTTP_ADDR: &str = "127.0.0.1:9464";
    /// `serve.dedup_versions`.
    pub const SERVE_DEDUP_VERSIONS: usize = 200_000;
    /// `serve.dedup_lookback_secs`.
    pub const SERVE_DEDUP_LOOKBACK_SECS: u64 = 3_600;
    /// `serve.max_clock_skew_ms`.
    pub const SERVE_MAX_CLOCK_SKEW_MS: u64 = 50;
    /// `serve.wedged_after_secs`: well above the longest a healthy stage takes (a 1 MiB
    /// annotation set read, a commit's retries) and below what a stuck task should cost.
    pub const SERVE_WEDGED_AFTER_SECS: u64 = 300;
    /// `backfill.concurrency`.
    pub const BACKFILL_CONCURRENCY: usize = 64;
    /// `backfill.flush_rows`.
    pub const BACKFILL_FLUSH_ROWS: usize = 50_000;
    /// `backfill.flush_age_ms`.
    pub const BACKFILL_FLUSH_AGE_MS: u64 = 10_000;
    /// `backfill.lease_ttl_secs`.
    pub const BACKFILL_LEASE_TTL_SECS: u64 = 60;
    /// `maintain.target_file_mb`.
    pub const MAINTAIN_TARGET_FILE_MB: u64 = 128;
    /// `maintain.snapshot_retention_secs`.
    pub const MAINTAIN_SNAPSHOT_RETENTION_SECS: u64 = 3_600;
    /// `maintain.min_snapshots`.
    pub const MAINTAIN_MIN_SNAPSHOTS: usize = 10;
    /// `maintain.orphan_age_secs`.
    pub const MAINTAIN_ORPHAN_AGE_SECS: u64 = 86_400;
    /// `state.table`.
    pub const STATE_TABLE: &str = "annotations";
    /// `objects.table`.
    pub const OBJECTS_TABLE: &str = "object_journal";
    /// `state.fold_budget_mb` of `maintain --refresh/--rebuild-state`.
    pub const STATE_FOLD_BUDGET_MB: u64 = 1024;
    /// `sql.listen`: loopback, beside PostgreSQL's own 5432.
    pub const SQL_LISTEN: &str = "127.0.0.1:5433";
    /// `sql.user`.
    pub const SQL_USER: &str = "annotable";
    /// `sql.statement_timeout_secs`.
    pub const SQL_STATEMENT_TIMEOUT_SECS: u64 = 300;
    /// `sql.statement_memory_mb`.
    pub const SQL_STATEMENT_MEMORY_MB: u64 = 1024;
    /// `sql.max_statements`: statements running at once, over all connections.
    pub const SQL_MAX_STATEMENTS: u64 = 8;
    /// `sql.max_connections`.
    pub const SQL_MAX_CONNECTIONS: u64 = 64;
    /// `state.refresh_interval_secs`: plain readers of the table lag by about this much;
    /// annotable's own queries see the journal's newest rows regardless.
    pub const STATE_REFRESH_INTERVAL_SECS: u64 = 5;
}

use defaults as d;

/// What a key holds (how an environment variable or flag value is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// A non-negative whole number.
    Number,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
    /// A list; comma-separated in the environment.
    List,
    /// A table of string properties: file only.
    Map,
}

/// A key's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// None: the key is optional or required where it is used.
    Unset,
    /// A number.
    Number(u64),
    /// A string.
    Text(&'static str),
    /// A boolean.
    Bool(bool),
    /// Derived from other keys or from the environment, as described.
    Derived(&'static str),
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Its path in the file: `section.name`, or `name` at the top level.
    pub path: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// Its default.
    pub default: KeyDefault,
    /// The command-line flag that sets it, if any.
    pub flag: Option<&'static str>,
}

impl Key {
    /// The environment variable that sets it (`None` for file-only keys).
    pub fn env(&self) -> Option<String> {
        (self.kind != Kind::Map).then(|| super::env_name(self.path))
    }
}

const fn key(path: &'static str, kind: Kind, default: KeyDefault) -> Key {
    Key {
        path,
        kind,
        default,
        flag: None,
    }
}

const fn flag(path: &'static str, kind: Kind, default: KeyDefault, flag: &'static str) -> Key {
    Key {
        path,
        kind,
        default,
        flag: Some(flag),
    }
}

use KeyDefault::{Bool, Derived, Number, Text, Unset};
use Kind::{List, Map, Number as Num, Text as Str};

/// Every key.
pub const KEYS: &[Key] = &[
    flag("data_dir", Str, Text(d::DATA_DIR), "--data-dir"),
    flag("namespace", Str, Text(d::NAMESPACE), "--namespace"),
    key("table", Str, Text(d::TABLE)),
    key("catalog.type", Str, Text(d::CATALOG_TYPE)),
    flag(
        "catalog.uri",
        Str,
        Derived("sqlite:<data_dir>/catalog.db for the sql catalog"),
        "--catalog-uri",
    ),
    flag(
        "catalog.warehouse",
        Str,
        Derived("<data_dir>/warehouse for the sql catalog"),
        "--warehouse",
    ),
    key("catalog.name", Str, Text(d::CATALOG_NAME)),
    key("catalog.properties", Map, Unset),
    key(
        "aws.endpoint_url",
        Str,
        Derived("AWS_ENDPOINT_URL, else AWS"),
    ),
    key("aws.region", Str, Derived("AWS_REGION / the profile")),
    key("aws.force_path_style", Kind::Bool, Bool(false)),
    key("aws.expected_bucket_owner", Str, Unset),
    key("aws.allowed_buckets", List, Derived("every bucket")),
    key("aws.s3_concurrency", Num, Number(d::S3_CONCURRENCY as u64)),
    flag("serve.queue_url", Str, Unset, "--queue-url"),
    key("serve.receivers", Num, Number(d::SERVE_RECEIVERS as u64)),
    key(
        "serve.messages_in_flight",
        Num,
        Number(d::SERVE_MESSAGES_IN_FLIGHT as u64),
    ),
    key("serve.flush_rows", Num, Number(d::SERVE_FLUSH_ROWS as u64)),
    key("serve.flush_bytes", Num, Number(d::FLUSH_BYTES as u64)),
    key("serve.flush_age_ms", Num, Number(d::SERVE_FLUSH_AGE_MS)),
    key("serve.read_buffer_bytes", Num, Number(d::READ_BUFFER_BYTES)),
    key(
        "serve.visibility_timeout_secs",
        Num,
        Derived("the queue's visibility timeout"),
    ),
    flag(
        "serve.shutdown_timeout_secs",
        Num,
        Number(d::SERVE_SHUTDOWN_TIMEOUT_SECS),
        "--shutdown-timeout",
    ),
    flag(
        "serve.http_addr",
        Str,
        Text(d::SERVE_HTTP_ADDR),
        "--http-addr",
    ),
    key("serve.dead_letter_queue_url", Str, Unset),
    key(
        "serve.dedup_versions",
        Num,
        Number(d::SERVE_DEDUP_VERSIONS as u64),
    ),
    key(
        "serve.dedup_lookback_secs",
        Num,
        Number(d::SERVE_DEDUP_LOOKBACK_SECS),
    ),
    key(
        "serve.max_clock_skew_ms",
        Num,
        Number(d::SERVE_MAX_CLOCK_SKEW_MS),
    ),
    key(
        "serve.wedged_after_secs",
        Num,
        Number(d::SERVE_WEDGED_AFTER_SECS),
    ),
    flag(
        "backfill.concurrency",
        Num,
        Number(d::BACKFILL_CONCURRENCY as u64),
        "--concurrency",
    ),
    key(
        "backfill.flush_rows",
        Num,
        Number(d::BACKFILL_FLUSH_ROWS as u64),
    ),
    key("backfill.flush_bytes", Num, Number(d::FLUSH_BYTES as u64)),
    key(
        "backfill.flush_age_ms",
        Num,
        Number(d::BACKFILL_FLUSH_AGE_MS),
    ),
    key(
        "backfill.read_buffer_bytes",
        Num,
        Number(d::READ_BUFFER_BYTES),
    ),
    key(
        "backfill.state_url",
        Str,
        Derived("<warehouse>/_annotable/backfill for an s3:// warehouse, else <data_dir>/backfill"),
    ),
    key(
        "backfill.lease_ttl_secs",
        Num,
        Number(d::BACKFILL_LEASE_TTL_SECS),
    ),
    key(
        "maintain.target_file_mb",
        Num,
        Number(d::MAINTAIN_TARGET_FILE_MB),
    ),
    key(
        "maintain.snapshot_retention_secs",
        Num,
        Number(d::MAINTAIN_SNAPSHOT_RETENTION_SECS),
    ),
    key(
        "maintain.min_snapshots",
        Num,
        Number(d::MAINTAIN_MIN_SNAPSHOTS as u64),
    ),
    key(
        "maintain.orphan_age_secs",
        Num,
        Number(d::MAINTAIN_ORPHAN_AGE_SECS),
    ),
    key("maintain.serve_interval_secs", Num, Derived("never")),
    key("maintain.journal_retention_days", Num, Derived("never")),
    key("objects.enabled", Kind::Bool, Bool(true)),
    key("objects.table", Str, Text(d::OBJECTS_TABLE)),
    key("objects.prefixes", List, Derived("every key")),
    key("state.table", Str, Text(d::STATE_TABLE)),
    key(
        "state.refresh_interval_secs",
        Num,
        Number(d::STATE_REFRESH_INTERVAL_SECS),
    ),
    key(
        "state.fold_budget_mb",
        Num,
        Derived("serve: a quarter of serve.read_buffer_bytes; maintain: 1024"),
    ),
    flag("sql.listen", Str, Text(d::SQL_LISTEN), "--listen"),
    key("sql.user", Str, Text(d::SQL_USER)),
    key(
        "sql.password",
        Str,
        Derived("none: loopback only, no authentication"),
    ),
    key("sql.tls_cert", Str, Derived("none: no TLS")),
    key("sql.tls_key", Str, Derived("none: no TLS")),
    key(
        "sql.statement_timeout_secs",
        Num,
        Number(d::SQL_STATEMENT_TIMEOUT_SECS),
    ),
    key(
        "sql.statement_memory_mb",
        Num,
        Number(d::SQL_STATEMENT_MEMORY_MB),
    ),
    key("sql.max_statements", Num, Number(d::SQL_MAX_STATEMENTS)),
    key("sql.max_connections", Num, Number(d::SQL_MAX_CONNECTIONS)),
    key("storage.s3_endpoint", Str, Derived("AWS")),
    key("storage.s3_region", Str, Derived("the AWS default chain")),
    key(
        "storage.s3_access_key_id",
        Str,
        Derived("the AWS default chain"),
    ),
    key(
        "storage.s3_secret_access_key",
        Str,
        Derived("the AWS default chain"),
    ),
    key("storage.s3_path_style", Kind::Bool, Bool(false)),
];

/// The key at `path`.
pub fn find(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// The configuration reference as a Markdown table (key, environment variable, flag,
/// default): `docs/configuration.md` holds it, and a test keeps the two equal.
pub fn reference() -> String {
    let mut out = String::from("| key | environment | flag | default |\n|---|---|---|---|\n");
    for k in KEYS {
        let default = match k.default {
            Unset => "—".to_string(),
            Number(n) => n.to_string(),
            Text(t) => format!("`{t}`"),
            Bool(b) => b.to_string(),
            Derived(what) => what.to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.path,
            k.env()
                .map(|e| format!("`{e}`"))
                .unwrap_or_else(|| "—".into()),
            k.flag
                .map(|f| format!("`{f}`"))
                .unwrap_or_else(|| "—".into()),
            default
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Leaf paths of a JSON object (`section.key`).
    fn leaves(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() && path != "catalog.properties" {
                    leaves(v, &path, out);
                } else {
                    out.insert(path);
                }
            }
        }
    }

    #[test]
    fn the_table_lists_every_field_of_the_config_and_nothing_else()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut fields = BTreeSet::new();
        leaves(
            &serde_json::to_value(super::super::Config::default())?,
            "",
            &mut fields,
        );
        let keys: BTreeSet<String> = KEYS.iter().map(|k| k.path.to_string()).collect();
        assert_eq!(fields, keys);
        assert_eq!(keys.len(), KEYS.len(), "a key is listed twice");
        Ok(())
    }

    /// The README's TOML reference: every key of the table appears (commented out when it has
    /// no default), nothing else does, and every literal default is the one shown.
    #[test]
    fn the_readme_reference_matches_the_table() -> Result<(), Box<dyn std::error::Error>> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let section = readme
            .split("### Configuration")
            .nth(1)
            .ok_or("README has no ### Configuration section")?;
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .ok_or("the Configuration section has no ```toml block")?;
        // `# key = value` lines are keys shown without a value of their own; uncomment them.
        let uncommented: String = block
            .lines()
            .map(|line| {
                let t = line.trim_start();
                match t.strip_prefix("# ") {
                    Some(rest)
                        if rest
                            .split_once(" = ")
                            .is_some_and(|(k, _)| !k.contains(' ')) =>
                    {
                        rest.to_string()
                    }
                    _ => line.to_string(),
                }
            })
            .map(|l| l + "\n")
            .collect();
        let shown: toml::Table = toml::from_str(&uncommented)?;
        let mut paths = BTreeSet::new();
        leaves(&serde_json::to_value(&shown)?, "", &mut paths);
        let keys: BTreeSet<String> = KEYS.iter().map(|k| k.path.to_string()).collect();
        assert_eq!(paths, keys, "README keys differ from config::keys::KEYS");
        for k in KEYS {
            let mut value = serde_json::to_value(&shown)?;
            for part in k.path.split('.') {
                value = value[part].take();
            }
            let expected = match k.default {
                Number(n) => serde_json::json!(n),
                Text(t) => serde_json::json!(t),
                Bool(b) => serde_json::json!(b),
                Unset | Derived(_) => continue,
            };
            assert_eq!(
                value, expected,
                "README shows another default for {}",
                k.path
            );
        }
        Ok(())
    }

    #[test]
    fn docs_configuration_md_holds_the_generated_reference() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ));
        assert!(
            doc.contains(&reference()),
            "docs/configuration.md is out of date; replace its table with:\n{}",
            reference()
        );
    }

    #[test]
    fn every_key_is_set_by_its_environment_variable() -> Result<(), Box<dyn std::error::Error>> {
        for k in KEYS {
            let Some(env) = k.env() else { continue };
            let value = match k.kind {
                Kind::Number => "7",
                Kind::Bool => "true",
                Kind::List => "a,b",
                Kind::Text | Kind::Map => "x",
            };
            let config = super::super::Config::load(None, [(env.clone(), value.to_string())])?;
            let mut json = serde_json::to_value(&config)?;
            for part in k.path.split('.') {
                json = json[part].take();
            }
            assert!(!json.is_null(), "{env} did not set {}", k.path);
        }
        Ok(())
    }
}
