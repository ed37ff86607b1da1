//! Leases: at most one process does a job at a time — a backfill walk of one scope, the
//! maintenance of one table. One type, [`Lease`], holds, renews, updates and releases a lease;
//! one rule decides when it may be taken ([`Lease::acquire`]); the record lives in a
//! [`LeaseStore`], a compare-and-swap register with two implementations:
//!
//! - [`document`]: a JSON document next to the warehouse, replaced with S3 conditional writes
//!   (or, for a local warehouse, a file under an exclusive lock). Works with every catalog, and
//!   the job's state rides in the same document (backfill keeps its checkpoint there).
//! - [`catalog_row`]: a row of `annotable_leases` in the SQL catalog's database, for table
//!   maintenance (which needs that database anyway).
//!
//! The rules: a lease lasts its TTL unless renewed (every third of it). A lease whose holder is
//! alive and whose TTL has not run out is waited out ([`LeaseError::Held`] says who and until
//! when). An expired or released lease is taken, and so is one whose holder [is
//! gone](Holder::is_gone) (a killed process on this host), without waiting. Every change is a
//! compare-and-swap against the record as read, so of two processes racing, one wins and the
//! other reads again. A holder whose write fails the swap has lost the lease
//! ([`LeaseError::Lost`]) and must stop before doing more of the job; [`Lease::is_valid`] also
//! turns false a margin before the TTL runs out, so a stalled holder stops before another can
//! take over.

pub mod catalog_row;
pub mod document;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::warn;

/// Who holds a lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The run's writer id (also in its snapshot summaries).
    pub writer: String,
}

impl Holder {
    /// This process, running as `writer`.
    pub fn this_process(writer: impl Into<String>) -> Holder {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            writer: writer.into(),
        }
    }

    /// Whether this holder is a process of `me`'s host that no longer exists (a killed
    /// backfill or maintainer): its lease need not be waited out. Only decided where `/proc`
    /// exists; a pid reused by another process only means waiting for the expiry.
    pub fn is_gone(&self, me: &Holder) -> bool {
        self.host == me.host
            && self.pid != me.pid
            && std::path::Path::new("/proc/self").exists()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} (writer {})",
            self.pid, self.host, self.writer
        )
    }
}

/// This machine's host name, as leases record it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A lease as stored: who holds it, until when, and the job's own state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record<J> {
    /// The holder.
    pub holder: Holder,
    /// The lease is the holder's until then (a released lease: the release time).
    #[serde(with = "rfc3339")]
    pub lease_expires_at: DateTime<Utc>,
    /// The last write.
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// What the job keeps with its lease (backfill: its run and checkpoint).
    #[serde(flatten)]
    pub job: J,
}

/// What a compare-and-swap must name: the version of the record that was read.
pub type Tag = String;

/// A record as read, with its tag; `None` when there is none.
pub type Stored<J> = Option<(Record<J>, Tag)>;

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A live process holds the lease.
    #[error("the lease {location} is held by {holder} until {until}")]
    Held {
        /// Where the lease is kept.
        location: String,
        /// Who holds it.
        holder: Holder,
        /// Until when.
        until: DateTime<Utc>,
    },
    /// Another process took the lease over (this one stalled longer than the lease lasts).
    #[error("lost the lease {location}: another process took it over")]
    Lost {
        /// Where the lease is kept.
        location: String,
    },
    /// The store could not be read or written.
    #[error("lease {location}: {reason}")]
    Store {
        /// Where the lease is kept.
        location: String,
        /// What failed, and what to check.
        reason: String,
    },
}

/// A compare-and-swap register holding one lease record.
pub trait LeaseStore: Send + Sync {
    /// The job's state kept with the lease.
    type Job: Clone + Send + Sync;

    /// Where the record lives, for messages.
    fn location(&self) -> String;

    /// The record and its tag, or `None` when there is none.
    fn read(&self) -> impl Future<Output = Result<Stored<Self::Job>, LeaseError>> + Send;

    /// Writes `record` if the stored one is still `expect` (`None`: absent). Returns the new
    /// tag, or `None` when another process changed it first.
    fn swap(
        &self,
        record: &Record<Self::Job>,
        expect: Option<&Tag>,
    ) -> impl Future<Output = Result<Option<Tag>, LeaseError>> + Send;
}

/// A lease this process holds.
pub struct Lease<S: LeaseStore> {
    store: S,
    ttl: Duration,
    inner: Mutex<Held<S::Job>>,
}

struct Held<J> {
    record: Record<J>,
    tag: Tag,
    /// Until when this process may act: the send time of the last successful write + ttl.
    valid_until: Instant,
    lost: bool,
}

/// A lease just taken.
pub struct Acquired<S: LeaseStore> {
    /// The lease.
    pub lease: Lease<S>,
    /// The record before this process took it (the job may continue from it).
    pub previous: Option<Record<S::Job>>,
    /// The holder of an unexpired lease taken over because it is gone.
    pub took_over: Option<Holder>,
}

impl<S: LeaseStore> Lease<S> {
    /// Takes the lease for `me` for `ttl` if it is free, expired, released or held by a
    /// process that is gone; otherwise [`LeaseError::Held`]. `job` makes the new record's job
    /// state from the previous record, if any (continue it, or start over).
    pub async fn acquire(
        store: S,
        me: Holder,
        ttl: Duration,
        job: impl Fn(Option<&Record<S::Job>>) -> S::Job,
    ) -> Result<Acquired<S>, LeaseError> {
        for _ in 0..8 {
            let now = Utc::now();
            let current = store.read().await?;
            let mut took_over = None;
            if let Some((previous, _)) = &current
                && previous.lease_expires_at > now
            {
                if !previous.holder.is_gone(&me) {
                    return Err(LeaseError::Held {
                        location: store.location(),
                        holder: previous.holder.clone(),
                        until: previous.lease_expires_at,
                    });
                }
                took_over = Some(previous.holder.clone());
            }
            let record = Record {
                holder: me.clone(),
                lease_expires_at: now + ttl,
                updated_at: now,
                job: job(current.as_ref().map(|(r, _)| r)),
            };
            let sent = Instant::now();
            let expect = current.as_ref().map(|(_, tag)| tag);
            if let Some(tag) = store.swap(&record, expect).await? {
                return Ok(Acquired {
                    lease: Lease {
                        store,
                        ttl,
                        inner: Mutex::new(Held {
                            record,
                            tag,
                            valid_until: sent + ttl,
                            lost: false,
                        }),
                    },
                    previous: current.map(|(r, _)| r),
                    took_over,
                });
            }
            // Someone else wrote in between: look again.
        }
        Err(LeaseError::Store {
            location: store.location(),
            reason: "the lease kept changing under us; is another process starting the same job?"
                .into(),
        })
    }

    /// Where the lease is kept.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Whether this process may still act (holds the lease, with a margin).
    pub async fn is_valid(&self) -> bool {
        let held = self.inner.lock().await;
        !held.lost && Instant::now() + self.ttl / 6 < held.valid_until
    }

    /// How often to renew.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The job state as last written.
    pub async fn job(&self) -> S::Job {
        self.inner.lock().await.record.job.clone()
    }

    /// Extends the lease.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.write(|_| {}, false).await
    }

    /// Changes the job state (and extends the lease).
    pub async fn update(&self, change: impl FnOnce(&mut S::Job)) -> Result<(), LeaseError> {
        self.write(change, false).await
    }

    /// Gives the lease up (after a last change of the job state): the next process takes it
    /// at once.
    pub async fn release(&self, change: impl FnOnce(&mut S::Job)) -> Result<(), LeaseError> {
        self.write(change, true).await
    }

    async fn write(
        &self,
        change: impl FnOnce(&mut S::Job),
        release: bool,
    ) -> Result<(), LeaseError> {
        let mut held = self.inner.lock().await;
        if held.lost {
            return Err(self.lost());
        }
        let mut record = held.record.clone();
        change(&mut record.job);
        let now = Utc::now();
        record.updated_at = now;
        record.lease_expires_at = if release { now } else { now + self.ttl };
        let sent = Instant::now();
        match self.store.swap(&record, Some(&held.tag)).await? {
            Some(tag) => {
                held.tag = tag;
                held.record = record;
                held.valid_until = if release { sent } else { sent + self.ttl };
                Ok(())
            }
            None => {
                held.lost = true;
                warn!(location = %self.location(), "the lease was taken by another process");
                Err(self.lost())
            }
        }
    }

    fn lost(&self) -> LeaseError {
        LeaseError::Lost {
            location: self.location(),
        }
    }
}

/// Timestamps as RFC 3339 text, readable by people and any JSON tool.
pub(crate) mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::document::{Document, StateStore};
    use super::*;

    fn holder(pid: u32) -> Holder {
        Holder {
            host: "h".into(),
            pid,
            writer: format!("w{pid}"),
        }
    }

    /// A job's state (documents flatten it into the record).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Count {
        n: u32,
    }

    fn doc(dir: &std::path::Path) -> Document<Count> {
        Document::new(
            StateStore::Local {
                dir: dir.to_path_buf(),
            },
            "job.json".into(),
        )
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_lost_lease_stops_its_writes()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ttl = Duration::from_secs(60);
        let first = Lease::acquire(doc(dir.path()), holder(1), ttl, |_| Count { n: 0 }).await?;
        assert!(first.previous.is_none());
        let first = first.lease;
        first.update(|c| c.n = 7).await?;
        match Lease::acquire(doc(dir.path()), holder(2), ttl, |_| Count { n: 0 }).await {
            Err(LeaseError::Held { holder, .. }) => assert_eq!(holder.pid, 1),
            other => panic!("the lease should be held: {:?}", other.err()),
        }
        first.release(|c| c.n += 1).await?;
        assert!(!first.is_valid().await, "a released lease is not valid");
        // Released: the next holder takes it at once and sees the job state.
        let second = Lease::acquire(doc(dir.path()), holder(2), ttl, |p| {
            p.map_or(Count { n: 0 }, |r| r.job.clone())
        })
        .await?;
        assert_eq!(second.previous.as_ref().map(|r| r.job.n), Some(8));
        assert!(second.took_over.is_none());
        assert_eq!(second.lease.job().await, Count { n: 8 });
        // The first holder's swap now fails: it has lost the lease for good.
        assert!(matches!(first.renew().await, Err(LeaseError::Lost { .. })));
        assert!(matches!(first.renew().await, Err(LeaseError::Lost { .. })));
        second.lease.renew().await?;
        Ok(())
    }

    #[tokio::test]
    async fn the_lease_of_a_process_that_is_gone_is_taken_over_at_once()
    -> Result<(), Box<dyn std::error::Error>> {
        if !std::path::Path::new("/proc/self").exists() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let ttl = Duration::from_secs(600);
        let me = Holder::this_process("me");
        // A pid that cannot exist (above the kernel's pid_max), on this host.
        let dead = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        let _ = Lease::acquire(doc(dir.path()), dead.clone(), ttl, |_| Count { n: 1 }).await?;
        let taken = Lease::acquire(doc(dir.path()), me, ttl, |_| Count { n: 2 }).await?;
        assert_eq!(taken.took_over, Some(dead));
        Ok(())
    }
}
