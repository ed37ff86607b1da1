//! Warm-up: at start, the journal's recent rows are replayed into the suppression memory, so
//! a restart does not restate what was just written.

use std::time::Duration;

use annotation_table::{CatalogConfig, JournalTable, decode_rows};
use chrono::Utc;
use tracing::debug;

use crate::config::Config;
use crate::suppression::StateCache;

/// Replays the journal rows ingested within `lookback` into the suppression memory. Payloads
/// are read only for rows without an ETag (see `suppression`'s digest), so warming up does not
/// hold an hour of payloads.
pub(crate) async fn warm_up(
    table: &JournalTable,
    catalog_config: &CatalogConfig,
    config: &Config,
    lookback: Duration,
    cache: &mut StateCache,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    if lookback.is_zero() {
        return Ok(0);
    }
    let session = annotation_sql::QuerySession::new(
        table.catalog().clone(),
        catalog_config.describe(),
        config.namespace(),
        config.table(),
    )
    .await?;
    let since = Utc::now() - chrono::Duration::from_std(lookback)?;
    // Rows in sequence order per version, an OBJECT_RESET before the PUTs sharing its number.
    let sql = format!(
        "SELECT * EXCLUDE (text_value), CASE WHEN e_tag IS NULL THEN text_value END AS text_value \
         FROM {} WHERE ingested_at >= TIMESTAMP '{}' \
         ORDER BY sequence_number, CASE WHEN record_type = 'OBJECT_RESET' THEN 0 ELSE 1 END",
        config.table(),
        since.format("%Y-%m-%dT%H:%M:%S%.6fZ")
    );
    let result = session.query(&sql).await?;
    let mut n = 0;
    for batch in &result.batches {
        for row in decode_rows(batch)? {
            match row {
                Ok(row) => {
                    cache.apply_row(&row);
                    n += 1;
                }
                // Not a row this version writes: it must not shape what is suppressed.
                Err(e) => debug!(table = %table.ident(), error = %e, "warm-up skips a journal row"),
            }
        }
    }
    Ok(n)
}
