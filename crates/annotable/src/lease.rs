//! Who holds a lease, and when a lease may be taken over before it expires.
//!
//! Two jobs run under a lease, each kept where its job needs it: a backfill walk's lease is a
//! compare-and-swap document next to the warehouse that also carries its checkpoint
//! (`backfill/lease.rs`: works with every catalog), and table maintenance's lease is a row in
//! the SQL catalog's database (`annotation-table`'s `Maintainer::try_lease`; maintenance
//! needs that catalog anyway). Both record a [`Holder`] and follow the same rules: a lease
//! lasts a TTL unless renewed (every third of it); a live holder's lease is waited out; the
//! lease of a holder that [is gone](Holder::is_gone) (a killed process on this host) is taken
//! over at once, by a compare-and-swap that fails if anyone else got there first.

use serde::{Deserialize, Serialize};

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
    /// backfill or maintainer): its lease need not be waited out. Only decided where `/proc` exists; a pid
    /// reused by another process only means waiting for the expiry.
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
