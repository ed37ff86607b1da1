//! Time travel: every table of a session read as it was at one instant, or at one journal
//! snapshot, so "the annotations as of yesterday 10:00" is one setting.
//!
//! A table *as of* an instant is the table whose `main` branch points at the snapshot that was
//! current then: the newest ancestor of today's snapshot committed at or before the instant.
//! The session rewinds a table by rewriting its metadata in memory (nothing is written), so
//! everything that reads a table's current snapshot — scans, the state's watermark, the
//! unfolded journal rows behind `annotations` — reads the old one without knowing it. With
//! `--snapshot`, the journal is rewound to exactly that snapshot and every other table to its
//! commit time.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention, TableMetadataBuilder};
use iceberg::table::Table;

use crate::error::SqlError;

/// Which past a session reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeTravel {
    /// Every table as it was at this instant.
    AsOf(DateTime<Utc>),
    /// The journal at this snapshot id, every other table as of that snapshot's commit time.
    Snapshot(i64),
}

impl fmt::Display for TimeTravel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeTravel::AsOf(at) => {
                write!(f, "{}", at.to_rfc3339_opts(SecondsFormat::Millis, true))
            }
            TimeTravel::Snapshot(id) => write!(f, "journal snapshot {id}"),
        }
    }
}

impl TimeTravel {
    /// Parses an instant as RFC 3339 (`2026-12-01T10:00:00Z`, `2026-12-01 10:00:00+01:00`) or
    /// a bare date (`2026-12-01`, midnight UTC).
    pub fn parse_instant(text: &str) -> Result<Self, SqlError> {
        let text = text.trim();
        if let Ok(at) = DateTime::parse_from_rfc3339(text) {
            return Ok(TimeTravel::AsOf(at.with_timezone(&Utc)));
        }
        if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
            return Ok(TimeTravel::AsOf(at.with_timezone(&Utc)));
        }
        if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            && let Some(midnight) = day.and_hms_opt(0, 0, 0)
        {
            return Ok(TimeTravel::AsOf(midnight.and_utc()));
        }
        Err(SqlError::TimeTravel {
            message: format!(
                "{text:?} is not an instant: give RFC 3339 with a zone (2026-12-01T10:00:00Z) or a date (2026-12-01)"
            ),
        })
    }
}

/// A [`TimeTravel`] resolved against the journal: the instant every table is read at, and the
/// journal snapshot when one was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TravelPoint {
    /// Tables are read as of this instant (ms since the epoch).
    pub(crate) at_ms: i64,
    /// The journal is read at exactly this snapshot.
    pub(crate) journal_snapshot: Option<i64>,
    /// What the user asked for, for messages.
    pub(crate) asked: TimeTravel,
}

impl TravelPoint {
    /// Resolves `travel`; `journal` is the journal table (needed for a snapshot id).
    pub(crate) fn resolve(travel: TimeTravel, journal: Option<&Table>) -> Result<Self, SqlError> {
        match travel {
            TimeTravel::AsOf(at) => Ok(TravelPoint {
                at_ms: at.timestamp_millis(),
                journal_snapshot: None,
                asked: travel,
            }),
            TimeTravel::Snapshot(id) => {
                let journal = journal.ok_or_else(|| SqlError::TimeTravel {
                    message: format!(
                        "snapshot {id}: the journal does not exist yet, so it has no snapshots"
                    ),
                })?;
                let snapshot = journal.metadata().snapshot_by_id(id).ok_or_else(|| {
                    SqlError::TimeTravel {
                        message: format!(
                            "snapshot {id} is not a snapshot of the journal {} (it never was, or it has expired); list them with SELECT snapshot_id, committed_at FROM \"annotation_journal$snapshots\"",
                            journal.identifier()
                        ),
                    }
                })?;
                Ok(TravelPoint {
                    at_ms: snapshot.timestamp_ms(),
                    journal_snapshot: Some(id),
                    asked: travel,
                })
            }
        }
    }

    /// `table` as it was at this point: `main` moved to the snapshot current then, or removed
    /// when the table had no rows yet. `is_journal` pins the journal to a named snapshot.
    pub(crate) fn rewind(&self, table: &Table, is_journal: bool) -> Result<Table, SqlError> {
        let metadata = table.metadata();
        let target = match (is_journal, self.journal_snapshot) {
            (true, Some(id)) => Some(id),
            _ => self.snapshot_at(table)?,
        };
        if target == metadata.current_snapshot_id() {
            return Ok(table.clone());
        }
        let builder = TableMetadataBuilder::new_from_metadata(metadata.clone(), None);
        let builder = match target {
            Some(id) => builder
                .set_ref(
                    MAIN_BRANCH,
                    SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
                )
                .map_err(|e| self.error(table, e.to_string()))?,
            None => builder.remove_ref(MAIN_BRANCH),
        };
        let rewound = builder
            .build()
            .map_err(|e| self.error(table, e.to_string()))?
            .metadata;
        let mut rebuilt = Table::builder()
            .metadata(rewound)
            .identifier(table.identifier().clone())
            .file_io(table.file_io().clone())
            .runtime(iceberg::Runtime::try_current().map_err(|e| self.error(table, e.to_string()))?)
            .readonly(true);
        if let Some(location) = table.metadata_location() {
            rebuilt = rebuilt.metadata_location(location);
        }
        rebuilt
            .build()
            .map_err(|e| self.error(table, e.to_string()))
    }

    /// The snapshot of `table` current at `at_ms`: the newest ancestor of today's committed
    /// at or before it; `None` when the table had none yet.
    fn snapshot_at(&self, table: &Table) -> Result<Option<i64>, SqlError> {
        let metadata = table.metadata();
        let mut next = metadata.current_snapshot().cloned();
        while let Some(snapshot) = next {
            if snapshot.timestamp_ms() <= self.at_ms {
                return Ok(Some(snapshot.snapshot_id()));
            }
            next = match snapshot.parent_snapshot_id() {
                None => return Ok(None),
                Some(parent) => match metadata.snapshot_by_id(parent) {
                    Some(parent) => Some(parent.clone()),
                    None => {
                        let oldest = DateTime::from_timestamp_millis(snapshot.timestamp_ms())
                            .map_or_else(
                                || snapshot.timestamp_ms().to_string(),
                                |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
                            );
                        return Err(self.error(
                            table,
                            format!(
                                "its history before {oldest} has expired (maintain.snapshot_retention_secs); pick a later instant"
                            ),
                        ));
                    }
                },
            };
        }
        Ok(None)
    }

    fn error(&self, table: &Table, message: String) -> SqlError {
        SqlError::TimeTravel {
            message: format!(
                "reading {} as of {}: {message}",
                table.identifier(),
                self.asked
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_as_rfc3339_with_a_zone_or_as_a_date() -> Result<(), SqlError> {
        let expect = |text: &str, rfc: &str| -> Result<(), SqlError> {
            let at = DateTime::parse_from_rfc3339(rfc)
                .map_err(|e| SqlError::TimeTravel {
                    message: e.to_string(),
                })?
                .with_timezone(&Utc);
            assert_eq!(
                TimeTravel::parse_instant(text)?,
                TimeTravel::AsOf(at),
                "{text}"
            );
            Ok(())
        };
        expect("2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z")?;
        expect("2026-12-01T10:00:00.250+01:00", "2026-12-01T09:00:00.250Z")?;
        expect("2026-12-01 10:00:00+00", "2026-12-01T10:00:00Z")?;
        expect("2026-12-01", "2026-12-01T00:00:00Z")?;
        for bad in ["yesterday", "2026-12-01T10:00:00", "12/01/2026", ""] {
            assert!(TimeTravel::parse_instant(bad).is_err(), "{bad:?} parsed");
        }
        Ok(())
    }
}
