//! Whether `serve` can make progress now, for `/readyz` and the logs: not while it is
//! stopping, and not while an outage holds its messages (the catalog refuses commits, S3 keeps
//! failing). Held messages stay in flight during an outage instead of going back to the queue,
//! where each receive would count towards the dead-letter limit.

use std::sync::Mutex;

/// What holds `serve` back, by cause; ready when nothing does.
#[derive(Debug, Default)]
pub(crate) struct Health {
    problems: Mutex<Problems>,
}

#[derive(Debug, Default)]
struct Problems {
    stopping: bool,
    catalog: Option<String>,
    s3: Option<String>,
}

/// A cause of not being ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    /// Commits to the table fail.
    Catalog,
    /// S3 reads fail after their retries.
    S3,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shutdown started: never ready again.
    pub fn stopping(&self) {
        self.lock().stopping = true;
    }

    /// `cause` fails, for this reason.
    pub fn failing(&self, cause: Cause, why: String) {
        let mut p = self.lock();
        match cause {
            Cause::Catalog => p.catalog = Some(why),
            Cause::S3 => p.s3 = Some(why),
        }
    }

    /// `cause` works again.
    pub fn recovered(&self, cause: Cause) {
        let mut p = self.lock();
        match cause {
            Cause::Catalog => p.catalog = None,
            Cause::S3 => p.s3 = None,
        }
    }

    /// Why `serve` is not ready, or `None` when it is.
    pub fn problem(&self) -> Option<String> {
        let p = self.lock();
        if p.stopping {
            return Some("stopping".into());
        }
        match (&p.catalog, &p.s3) {
            (Some(c), _) => Some(format!("commits to the table fail: {c}")),
            (None, Some(s)) => Some(format!("S3 reads fail: {s}")),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_something_fails_and_never_after_stopping() {
        let h = Health::default();
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
        assert_eq!(h.problem(), None);
        h.stopping();
        assert_eq!(h.problem().as_deref(), Some("stopping"));
    }
}
