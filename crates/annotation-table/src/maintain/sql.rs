//! Direct access to the SQL catalog's database: the atomic metadata-pointer swap a rewrite
//! commit needs (iceberg 0.10.1 offers no public way to commit a snapshot it did not build),
//! and the maintenance lease.
//!
//! The swap is the same statement iceberg-catalog-sql runs for its own commits: update the
//! table's row only where `metadata_location` still holds the location the new metadata was
//! built on. Whoever commits in between (a `serve` appending) makes it touch no row, which is
//! the conflict signal. The lease is a row in `annotable_leases` in the same database, read and
//! replaced by compare-and-swap (an INSERT that does nothing on conflict, or an UPDATE that
//! names the holder and expiry it read), so it works for SQLite and PostgreSQL alike and needs
//! nothing besides the catalog; the rules of leasing live in `annotable`'s `lease` module.

use iceberg::TableIdent;
use iceberg_catalog_sql::SqlBindStyle;
use sqlx::any::{AnyPoolOptions, install_default_drivers};

use crate::TableError;
use crate::catalog::{redact, sql_driver_uri};

/// The SQL catalog's database.
pub(crate) struct CatalogDb {
    pool: sqlx::AnyPool,
    dollar: bool,
    catalog_name: String,
    uri: String,
}

impl CatalogDb {
    /// Connects to the catalog database at `uri` (as configured for the SQL catalog).
    pub(crate) async fn connect(uri: &str, catalog_name: &str) -> Result<Self, TableError> {
        let (driver_uri, style) = sql_driver_uri(uri).ok_or_else(|| {
            db_error(
                uri,
                "choosing a driver",
                "the SQL catalog URI must start with sqlite: or postgres://".into(),
            )
        })?;
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&driver_uri)
            .await
            .map_err(|e| db_error(uri, "connecting", e.to_string()))?;
        let db = CatalogDb {
            pool,
            dollar: matches!(style, SqlBindStyle::DollarNumeric),
            catalog_name: catalog_name.to_string(),
            uri: redact(uri),
        };
        db.execute(
            "CREATE TABLE IF NOT EXISTS annotable_leases (name VARCHAR(255) PRIMARY KEY, \
             holder VARCHAR(255) NOT NULL, expires_at_ms BIGINT NOT NULL)",
            &[],
        )
        .await
        .or_else(|e| {
            // Two processes creating it at once on PostgreSQL: the loser sees a duplicate type.
            if e.contains("duplicate key") || e.contains("already exists") {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|e| db_error(uri, "creating the annotable_leases table", e))?;
        Ok(db)
    }

    /// `?` placeholders, or `$1, $2, …` for PostgreSQL.
    fn sql(&self, query: &str) -> String {
        if !self.dollar {
            return query.to_string();
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    async fn execute(&self, query: &str, args: &[Arg<'_>]) -> Result<u64, String> {
        let sql = self.sql(query);
        let mut q = sqlx::query(&sql);
        for arg in args {
            q = match arg {
                Arg::Text(s) => q.bind(*s),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q.execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| e.to_string())
    }

    /// Points `table` at `to` if it still points at `from`. `Ok(false)`: another commit came
    /// first. An error leaves the outcome unknown (the caller reloads to find out).
    pub(crate) async fn swap(
        &self,
        table: &TableIdent,
        from: &str,
        to: &str,
    ) -> Result<bool, TableError> {
        let namespace = table.namespace().join(".");
        let changed = self
            .execute(
                SWAP,
                &[
                    Arg::Text(to),
                    Arg::Text(from),
                    Arg::Text(&self.catalog_name),
                    Arg::Text(&namespace),
                    Arg::Text(table.name()),
                    Arg::Text(from),
                ],
            )
            .await
            .map_err(|e| db_error(&self.uri, &format!("swapping the metadata of {table}"), e))?;
        Ok(changed == 1)
    }

    /// Locks the table's catalog row against other commits until the returned guard swaps or
    /// is dropped: a no-op UPDATE of the row takes SQLite's write lock and PostgreSQL's row
    /// lock, so other writers' commits wait (and then fail their compare-and-swap, and retry)
    /// instead of overtaking a rewrite again and again. Held only while one commit is staged.
    pub(crate) async fn lock(&self, table: &TableIdent) -> Result<RowLock, TableError> {
        let namespace = table.namespace().join(".");
        let context = |e: sqlx::Error| {
            db_error(
                &self.uri,
                &format!("locking the catalog row of {table}"),
                e.to_string(),
            )
        };
        let mut tx = self.pool.begin().await.map_err(context)?;
        let sql = self.sql(
            "UPDATE iceberg_tables SET metadata_location = metadata_location \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        );
        sqlx::query(&sql)
            .bind(self.catalog_name.as_str())
            .bind(namespace.as_str())
            .bind(table.name())
            .execute(&mut *tx)
            .await
            .map_err(context)?;
        Ok(RowLock {
            tx,
            swap_sql: self.sql(SWAP),
            catalog_name: self.catalog_name.clone(),
            namespace,
            name: table.name().to_string(),
            uri: self.uri.clone(),
        })
    }

    /// Who holds lease `name`, and until when (ms since the epoch).
    pub(crate) async fn lease_holder(
        &self,
        name: &str,
    ) -> Result<Option<(String, i64)>, TableError> {
        use sqlx::Row;
        let sql = self.sql("SELECT holder, expires_at_ms FROM annotable_leases WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                db_error(
                    &self.uri,
                    &format!("reading the lease {name}"),
                    e.to_string(),
                )
            })?;
        row.map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .transpose()
            .map_err(|e: sqlx::Error| {
                db_error(
                    &self.uri,
                    &format!("reading the lease {name}"),
                    e.to_string(),
                )
            })
    }

    /// Compare-and-swap of lease `name`: sets (`holder`, `until_ms`) if the row is still
    /// `expect` (`None`: absent). False when someone else changed it first.
    pub(crate) async fn swap_lease(
        &self,
        name: &str,
        holder: &str,
        until_ms: i64,
        expect: Option<(&str, i64)>,
    ) -> Result<bool, TableError> {
        let context = |e| db_error(&self.uri, &format!("writing the lease {name}"), e);
        let changed = match expect {
            None => self
                .execute(
                    "INSERT INTO annotable_leases (name, holder, expires_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT (name) DO NOTHING",
                    &[Arg::Text(name), Arg::Text(holder), Arg::Int(until_ms)],
                )
                .await
                .map_err(context)?,
            Some((previous, previous_until_ms)) => self
                .execute(
                    "UPDATE annotable_leases SET holder = ?, expires_at_ms = ? \
                     WHERE name = ? AND holder = ? AND expires_at_ms = ?",
                    &[
                        Arg::Text(holder),
                        Arg::Int(until_ms),
                        Arg::Text(name),
                        Arg::Text(previous),
                        Arg::Int(previous_until_ms),
                    ],
                )
                .await
                .map_err(context)?,
        };
        Ok(changed == 1)
    }
}

const SWAP: &str = "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
     WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?";

/// The table's catalog row, locked (see [`CatalogDb::lock`]); dropping it rolls back.
pub(crate) struct RowLock {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    swap_sql: String,
    catalog_name: String,
    namespace: String,
    name: String,
    uri: String,
}

impl RowLock {
    /// Swaps the pointer from `from` to `to` and commits: `Ok(false)` if it no longer points
    /// at `from`.
    pub(crate) async fn swap(mut self, from: &str, to: &str) -> Result<bool, TableError> {
        let context = |e: sqlx::Error| {
            db_error(
                &self.uri,
                &format!("swapping the metadata of {}.{}", self.namespace, self.name),
                e.to_string(),
            )
        };
        let changed = sqlx::query(&self.swap_sql)
            .bind(to)
            .bind(from)
            .bind(self.catalog_name.as_str())
            .bind(self.namespace.as_str())
            .bind(self.name.as_str())
            .bind(from)
            .execute(&mut *self.tx)
            .await
            .map_err(context)?
            .rows_affected();
        self.tx.commit().await.map_err(context)?;
        Ok(changed == 1)
    }
}

enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

fn db_error(uri: &str, action: &str, message: String) -> TableError {
    TableError::Catalog {
        catalog: redact(uri),
        action: action.to_string(),
        hint: "is the catalog database reachable, and may this user write to it?",
        source: Box::new(iceberg::Error::new(iceberg::ErrorKind::Unexpected, message)),
    }
}
