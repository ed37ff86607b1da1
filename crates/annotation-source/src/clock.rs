//! This host's clock against S3's, from the `Date` header of S3's responses, and the
//! observation stamps that follow from it (docs/correctness.md §1).
//!
//! Rows are ordered by when the S3 read that observed them was sent. Two hosts whose clocks
//! differ can order two reads on either side of a change wrongly, and the stale one then wins
//! for good. S3 tells every host the same clock: each response's `Date` (whole seconds, S3's
//! time when it answered). A request sent at host time `s` and answered at host time `r` with
//! `Date: D` bounds this host's offset to S3 (`S3 time − host time`) to `[D − r, D + 1 s − s)`.
//! Many requests at different phases of S3's second narrow the intersection of those bounds
//! to about one round trip.
//!
//! **What is applied.** The smallest correction consistent with every recent bound: none while
//! zero lies inside them (a well-synchronised host is never made worse by a coarse estimate),
//! otherwise the nearer bound. A host that is provably off is so moved to within the bounds'
//! width of S3's clock, whatever its own clock says. Bounds older than [`WINDOW`] are
//! forgotten (clocks drift), and a bound that contradicts the others (the host clock was
//! stepped) restarts the estimate.
//!
//! Stamps are strictly increasing within the process, corrected or not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// How long one bound is kept.
pub const WINDOW: Duration = Duration::from_secs(600);
const NANOS: i64 = 1_000_000_000;

/// One response's bound on the offset, in ns.
#[derive(Debug, Clone, Copy)]
struct Bound {
    at: Instant,
    low: i64,
    high: i64,
}

/// This host's clock and what S3's `Date` headers say about it. Shared by every client of a
/// process; cheap to read.
#[derive(Debug, Default)]
pub struct Clock {
    bounds: Mutex<VecDeque<Bound>>,
    /// The correction applied now (ns), recomputed on every bound.
    correction: AtomicI64,
    /// A shift added to the host clock, for tests that simulate a skewed host.
    shift: i64,
    last_stamp: AtomicU64,
}

/// What is known of the offset now, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEstimate {
    /// Lowest offset (S3 − host, ns) consistent with recent responses.
    pub low_nanos: i64,
    /// Highest such offset.
    pub high_nanos: i64,
    /// The correction applied to stamps (ns).
    pub correction_nanos: i64,
}

impl Clock {
    /// A clock whose host reading is shifted by `shift` ns (0 outside tests).
    pub fn with_shift(shift_nanos: i64) -> Arc<Clock> {
        Arc::new(Clock {
            shift: shift_nanos,
            ..Clock::default()
        })
    }

    /// The host's wall clock (ns since the epoch), shifted as configured.
    pub fn host_nanos(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        now.saturating_add(self.shift)
    }

    /// A strictly increasing observation stamp: the host clock, corrected towards S3's.
    pub fn stamp(&self) -> u64 {
        let corrected = self
            .host_nanos()
            .saturating_add(self.correction.load(Ordering::Relaxed));
        let now = u64::try_from(corrected).unwrap_or(0);
        let mut prev = self.last_stamp.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.last_stamp.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// Records a response: sent and received at these host times (ns), answered with
    /// `Date` = `date_secs` (S3's time, whole seconds).
    pub fn record(&self, sent: i64, received: i64, date_secs: i64) {
        self.record_at(Instant::now(), sent, received, date_secs);
    }

    fn record_at(&self, at: Instant, sent: i64, received: i64, date_secs: i64) {
        let date = date_secs.saturating_mul(NANOS);
        let bound = Bound {
            at,
            low: date.saturating_sub(received),
            high: date.saturating_add(NANOS).saturating_sub(sent),
        };
        let mut bounds = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        while bounds
            .front()
            .is_some_and(|b| at.saturating_duration_since(b.at) > WINDOW)
        {
            bounds.pop_front();
        }
        bounds.push_back(bound);
        let (low, high) = intersect(&bounds);
        if low > high {
            // The host clock moved under us: start again from this response.
            bounds.clear();
            bounds.push_back(bound);
        }
        let (low, high) = intersect(&bounds);
        self.correction
            .store(nearest_to_zero(low, high), Ordering::Relaxed);
    }

    /// The current estimate, if any response was recorded within the window.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        let bounds = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        if bounds.is_empty() {
            return None;
        }
        let (low, high) = intersect(&bounds);
        Some(ClockEstimate {
            low_nanos: low,
            high_nanos: high,
            correction_nanos: self.correction.load(Ordering::Relaxed),
        })
    }

    /// An interceptor that feeds this clock from every response of an S3 client.
    pub fn interceptor(self: &Arc<Self>) -> DateHeaderInterceptor {
        DateHeaderInterceptor {
            clock: self.clone(),
        }
    }
}

fn intersect(bounds: &VecDeque<Bound>) -> (i64, i64) {
    bounds.iter().fold((i64::MIN, i64::MAX), |(low, high), b| {
        (low.max(b.low), high.min(b.high))
    })
}

/// The point of `[low, high]` nearest to zero.
fn nearest_to_zero(low: i64, high: i64) -> i64 {
    if low > 0 {
        low
    } else if high < 0 {
        high
    } else {
        0
    }
}

/// Reads the `Date` header of every S3 response into a [`Clock`].
#[derive(Debug)]
pub struct DateHeaderInterceptor {
    clock: Arc<Clock>,
}

/// The host time a request was handed to the transport.
#[derive(Debug, Clone, Copy)]
struct SentAt(i64);

impl Storable for SentAt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for DateHeaderInterceptor {
    fn name(&self) -> &'static str {
        "annotable-date-header"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(SentAt(self.clock.host_nanos()));
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let received = self.clock.host_nanos();
        let Some(SentAt(sent)) = cfg.load::<SentAt>().copied() else {
            return Ok(());
        };
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
        if let Some(date) = date {
            self.clock.record(sent, received, date.timestamp());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    /// Requests every 37 ms from a host whose clock is `skew` ahead of S3's, each a 4 ms round
    /// trip: the bounds close to within about two round trips.
    fn feed(clock: &Clock, skew: i64, requests: i64) {
        let start = Instant::now();
        let t0 = 1_800_000_000 * NANOS;
        for i in 0..requests {
            let s3_sent = t0 + i * 37 * MS;
            let s3_answered = s3_sent + 2 * MS;
            let s3_received = s3_sent + 4 * MS;
            clock.record_at(
                start,
                s3_sent + skew,
                s3_received + skew,
                s3_answered.div_euclid(NANOS),
            );
        }
    }

    #[test]
    fn a_skewed_host_is_corrected_to_within_a_round_trip() {
        for skew in [200 * MS, -200 * MS, 20 * MS, -3_000 * MS] {
            let clock = Clock::default();
            feed(&clock, skew, 200);
            let e = clock.estimate().unwrap_or_else(|| panic!("no estimate"));
            assert!(
                e.low_nanos <= -skew && -skew <= e.high_nanos,
                "{skew}: {e:?}"
            );
            assert!(e.high_nanos - e.low_nanos <= 8 * MS, "{skew}: {e:?}");
            assert!((e.correction_nanos + skew).abs() <= 8 * MS, "{skew}: {e:?}");
        }
    }

    #[test]
    fn a_synchronised_host_is_left_alone() {
        let clock = Clock::default();
        feed(&clock, 0, 200);
        assert_eq!(clock.estimate().map(|e| e.correction_nanos), Some(0));
        // Within a round trip of S3's: also left alone.
        let clock = Clock::default();
        feed(&clock, MS, 200);
        assert_eq!(clock.estimate().map(|e| e.correction_nanos), Some(0));
    }

    #[test]
    fn a_stepped_clock_restarts_the_estimate() {
        let clock = Clock::default();
        feed(&clock, 200 * MS, 100);
        // The host clock is fixed: the next responses contradict the old bounds.
        feed(&clock, 0, 100);
        let e = clock.estimate().unwrap_or_else(|| panic!("no estimate"));
        assert_eq!(e.correction_nanos, 0, "{e:?}");
    }

    #[test]
    fn stamps_carry_the_correction_and_never_go_back() {
        let clock = Clock::with_shift(5_000 * MS);
        let host = clock.host_nanos();
        // S3 says it is five seconds earlier than this (shifted) host thinks.
        clock.record(host, host + MS, (host - 5_000 * MS).div_euclid(NANOS));
        let corrected = clock.stamp() as i64;
        assert!(
            corrected < clock.host_nanos() - 3_000 * MS,
            "the correction was not applied"
        );
        assert!(clock.stamp() as i64 > corrected);

        // A correction learnt after stamping never makes a later stamp smaller: this process's
        // later reads must order after its earlier ones.
        let clock = Clock::with_shift(5_000 * MS);
        let before = clock.stamp();
        let host = clock.host_nanos();
        clock.record(host, host + MS, (host - 5_000 * MS).div_euclid(NANOS));
        assert!(clock.stamp() > before);
    }
}
