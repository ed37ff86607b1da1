//! Whether `serve` can make progress now (`/readyz`) and whether it is alive (`/healthz`).
//!
//! Ready: not stopping, and no outage holds its messages (the catalog refuses commits, S3 or
//! the queue keeps failing). Held messages stay in flight during an outage instead of going
//! back to the queue, where each receive would count towards the dead-letter limit.
//!
//! Alive: unless wedged, meaning messages are held, none has moved on (left, or had rows
//! committed) for `serve.wedged_after_secs`, and no reported outage explains it. That is a
//! stuck task, which a restart mends; an outage is not, so it fails readiness, not liveness.

use std::sync::Mutex;
use std::time::Duration;

/// What holds `serve` back, by cause; ready when nothing does.
#[derive(Debug)]
pub(crate) struct Health {
    problems: Mutex<Problems>,
    wedged_after: Duration,
}

#[derive(Debug, Default)]
struct Problems {
    stopping: bool,
    catalog: Option<String>,
    s3: Option<String>,
    queue: Option<String>,
}

/// A cause of not being ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    /// Commits to the table fail.
    Catalog,
    /// S3 reads fail after their retries.
    S3,
    /// ReceiveMessage fails.
    Queue,
}

impl Health {
    /// Healthy and ready; wedged once held work stands still for `wedged_after`.
    pub fn new(wedged_after: Duration) -> Health {
        Health {
            problems: Mutex::default(),
            wedged_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shutdown started: never ready again.
    pub fn stopping(&self) {
        self.lock().stopping = true;
    }

    fn slot(p: &mut Problems, cause: Cause) -> &mut Option<String> {
        match cause {
            Cause::Catalog => &mut p.catalog,
            Cause::S3 => &mut p.s3,
            Cause::Queue => &mut p.queue,
        }
    }

    /// `cause` fails, for this reason.
    pub fn failing(&self, cause: Cause, why: String) {
        *Self::slot(&mut self.lock(), cause) = Some(why);
    }

    /// `cause` works again.
    pub fn recovered(&self, cause: Cause) {
        *Self::slot(&mut self.lock(), cause) = None;
    }

    /// Why `serve` is not ready, or `None` when it is.
    pub fn problem(&self) -> Option<String> {
        let p = self.lock();
        if p.stopping {
            return Some("stopping".into());
        }
        if let Some(c) = &p.catalog {
            return Some(format!("commits to the table fail: {c}"));
        }
        if let Some(s) = &p.s3 {
            return Some(format!("S3 reads fail: {s}"));
        }
        p.queue
            .as_ref()
            .map(|q| format!("receiving from the queue fails: {q}"))
    }

    /// Why `serve` is wedged, or `None` when it is alive: `held` messages, none of which has
    /// moved on for `still`.
    pub fn wedged(&self, held: usize, still: Duration) -> Option<String> {
        if held == 0 || still < self.wedged_after || self.problem().is_some() {
            return None;
        }
        Some(format!(
            "wedged: {held} messages held and none has moved on for {} s (serve.wedged_after_secs = {}); restart the task (the messages come back to the queue)",
            still.as_secs(),
            self.wedged_after.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_something_fails_and_never_after_stopping() {
        let h = Health::new(Duration::from_secs(300));
        assert_eq!(h.problem(), None);
        h.failing(Cause::Catalog, "connection refused".into());
        h.failing(Cause::S3, "SlowDown".into());
        assert!(
            h.problem()
                .is_some_and(|p| p.contains("connection refused"))
        );
        h.recovered(Cause::Catalog);
        assert!(h.problem().is_some_and(|p| p.contains("SlowDown")));
        h.recovered(Cause::S3);
        h.failing(
            Cause::Queue,
            "AWS.SimpleQueueService.NonExistentQueue".into(),
        );
        assert!(
            h.problem()
                .is_some_and(|p| p.contains("queue") && p.contains("NonExistentQueue"))
        );
        h.recovered(Cause::Queue);
        assert_eq!(h.problem(), None);
        h.stopping();
        assert_eq!(h.problem().as_deref(), Some("stopping"));
    }

    #[test]
    fn wedged_only_when_held_work_stands_still_without_an_outage() {
        let limit = Duration::from_secs(300);
        let h = Health::new(limit);
        assert_eq!(h.wedged(0, Duration::from_secs(3600)), None, "nothing held");
        assert_eq!(
            h.wedged(5, limit - Duration::from_secs(1)),
            None,
            "not long enough"
        );
        let why = h.wedged(5, limit);
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("5 messages") && w.contains("wedged_after_secs")),
            "{why:?}"
        );
        // An outage explains the standstill: not ready, but alive.
        h.failing(Cause::Catalog, "connection refused".into());
        assert_eq!(h.wedged(5, limit * 2), None);
        h.recovered(Cause::Catalog);
        assert!(h.wedged(5, limit * 2).is_some());
        h.stopping();
        assert_eq!(h.wedged(5, limit * 2), None, "draining is not wedged");
    }
}
