//! The catalog-row store of leases: table maintenance's lease as a row of `annotable_leases`
//! in the SQL catalog's database (`annotation-table`'s `Maintainer::lease`/`swap_lease`).
//!
//! The row holds the holder (as JSON, so it reads back as a [`Holder`] and a dead holder can be
//! recognised) and the expiry in milliseconds; the tag a swap names is the pair as read. On
//! catalogs without a database of ours the maintainer needs no lease and always grants it.

use annotation_table::Maintainer;
use chrono::{DateTime, Utc};

use super::{Holder, LeaseError, LeaseStore, Record, Stored, Tag};

/// The maintenance lease of one table.
pub struct CatalogRow<'a> {
    maintainer: &'a Maintainer,
}

impl<'a> CatalogRow<'a> {
    /// The lease of `maintainer`'s table.
    pub fn new(maintainer: &'a Maintainer) -> Self {
        CatalogRow { maintainer }
    }

    fn failed(&self, e: annotation_table::TableError) -> LeaseError {
        LeaseError::Store {
            location: self.location(),
            reason: format!("{e}; check that the catalog's database is reachable"),
        }
    }
}

/// A holder as the row keeps it.
fn stored(holder: &Holder) -> String {
    serde_json::to_string(holder).unwrap_or_else(|_| holder.to_string())
}

/// A holder as read back; a holder written by something else is kept as its text (it is
/// never taken for a process that is gone, so its lease is waited out).
fn parsed(text: &str) -> Holder {
    serde_json::from_str(text).unwrap_or_else(|_| Holder {
        host: text.to_string(),
        pid: 0,
        writer: String::new(),
    })
}

/// The tag of a row: its holder text and expiry, separated by a character neither holds.
fn tag(holder: &str, until_ms: i64) -> Tag {
    format!("{until_ms}\u{1f}{holder}")
}

fn untag(tag: &Tag) -> Option<(&str, i64)> {
    let (until_ms, holder) = tag.split_once('\u{1f}')?;
    Some((holder, until_ms.parse().ok()?))
}

impl LeaseStore for CatalogRow<'_> {
    type Job = ();

    fn location(&self) -> String {
        self.maintainer.lease_location()
    }

    async fn read(&self) -> Result<Stored<()>, LeaseError> {
        let Some((holder, until_ms)) = self.maintainer.lease().await.map_err(|e| self.failed(e))?
        else {
            return Ok(None);
        };
        let until = DateTime::<Utc>::from_timestamp_millis(until_ms).unwrap_or_default();
        let record = Record {
            holder: parsed(&holder),
            lease_expires_at: until,
            updated_at: until,
            job: (),
        };
        Ok(Some((record, tag(&holder, until_ms))))
    }

    async fn swap(
        &self,
        record: &Record<()>,
        expect: Option<&Tag>,
    ) -> Result<Option<Tag>, LeaseError> {
        let expect = match expect {
            Some(t) => Some(untag(t).ok_or_else(|| LeaseError::Store {
                location: self.location(),
                reason: format!("malformed lease tag {t:?} (a defect)"),
            })?),
            None => None,
        };
        let holder = stored(&record.holder);
        let until_ms = record.lease_expires_at.timestamp_millis();
        let swapped = self
            .maintainer
            .swap_lease(&holder, until_ms, expect)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(swapped.then(|| tag(&holder, until_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_reads_back_as_the_row_it_names() {
        let holder = stored(&Holder {
            host: "h\u{1f}x".into(),
            pid: 7,
            writer: "w".into(),
        });
        let t = tag(&holder, 1_700_000_000_123);
        assert_eq!(untag(&t), Some((holder.as_str(), 1_700_000_000_123)));
        assert_eq!(parsed("legacy text").pid, 0);
    }
}
