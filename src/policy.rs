//! Retry policy: how a response is classified, how long to wait before the next attempt, and
//! whether a delivery is retried or dead-lettered.
//!
//! Everything here is pure: no clock, no random number generator, no I/O. The caller passes the
//! current time and a jitter sample in, so tests are deterministic and need no sleeps.
//!
//! Compared with the origin (`reference/origin-behaviour.md`, sections 3 and 9) this policy:
//! - retries every 5xx except 501 and 505 (the origin retried only 500/502/503/504), because a 507
//!   or a proxy's 520-529 are as temporary as a 503, while 501 (Not Implemented) and 505 (HTTP
//!   Version Not Supported) will not change by waiting;
//! - adds jitter, so a burst of deliveries that failed together does not retry together;
//! - honours `Retry-After` on 429 and 503, capped, and never lets it shorten the backoff.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::parsing::Parsed;

/// Default delay after the first failed attempt: 30 s (the origin's
/// `WEBHOOK_DELIVERY_BASE_DELAY_SECONDS`).
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(30);

/// Default cap on the exponential backoff: 600 s (the origin's
/// `WEBHOOK_DELIVERY_MAX_DELAY_SECONDS`).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(600);

/// Default cap on a receiver's `Retry-After`: 3600 s. A receiver may ask for a longer pause than
/// our own backoff cap, but not park a delivery for days.
pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// How the outcome of one attempt is classified.
///
/// Network errors and timeouts never reach [`classify_status`]: the caller classifies them as
/// [`Verdict::Transient`] directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The receiver accepted the delivery (2xx).
    Succeeded,
    /// Waiting may help (408, 425, 429, most 5xx, network errors): retry with backoff.
    Transient,
    /// Waiting will not help (1xx, 3xx, other 4xx, 501, 505): dead-letter at once.
    Permanent,
}

/// Classifies an HTTP status code.
///
/// - 200-299: [`Verdict::Succeeded`];
/// - 408 Request Timeout, 425 Too Early, 429 Too Many Requests and every 500-599 except 501 and
///   505: [`Verdict::Transient`];
/// - everything else, including 1xx, 3xx (redirects are not followed, so a redirect is a
///   configuration error), other 4xx, 501, 505 and codes outside 100-599: [`Verdict::Permanent`].
#[must_use]
pub fn classify_status(code: u16) -> Verdict {
    match code {
        200..=299 => Verdict::Succeeded,
        408 | 425 | 429 => Verdict::Transient,
        501 | 505 => Verdict::Permanent,
        500..=599 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// Timing parameters of the retry schedule.
///
/// `max_attempts` is not here because it is frozen on each delivery row; see [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt; doubles with every further failure.
    /// Default: [`DEFAULT_BASE_DELAY`] (30 s).
    pub base_delay: Duration,
    /// Upper bound of the exponential backoff, jitter included.
    /// Default: [`DEFAULT_MAX_DELAY`] (600 s).
    pub max_delay: Duration,
    /// Upper bound on a delay requested through `Retry-After`.
    /// Default: [`DEFAULT_RETRY_AFTER_CAP`] (3600 s).
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    /// Base 30 s, max 600 s (the origin's values), `Retry-After` cap 3600 s.
    fn default() -> Self {
        Self {
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
        }
    }
}

/// Delay before the next attempt after attempt `failed_attempt` (counting from 1) failed.
///
/// The undelayed value is `min(base_delay * 2^(failed_attempt - 1), max_delay)`, computed with
/// saturation so any `failed_attempt` (even `u32::MAX`) yields `max_delay` instead of
/// overflowing. `failed_attempt = 0` is treated as 1.
///
/// `jitter` is a uniform random sample in `[0, 1)` supplied by the caller (keeping this function
/// pure). The result is `d * (0.75 + 0.25 * jitter)`, i.e. uniform in `[0.75 d, d]`:
/// - jitter spreads out the retries of a burst of deliveries that failed together (a receiver
///   that went down), so they do not all hit the receiver again in the same second;
/// - jitter only ever shortens the delay, so `max_delay` stays a hard upper bound that operators
///   can rely on when reasoning about the retry window.
///
/// A `jitter` outside `[0, 1]` is clamped, and NaN counts as 0, so no input can panic.
#[must_use]
pub fn backoff(policy: &RetryPolicy, failed_attempt: u32, jitter: f64) -> Duration {
    let exponent = failed_attempt.max(1) - 1;
    let undelayed = 2u32
        .checked_pow(exponent)
        .and_then(|factor| policy.base_delay.checked_mul(factor))
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay);
    apply_jitter(undelayed, jitter)
}

/// Shortens `d` by up to a quarter: `jitter = 0` gives `0.75 d`, `jitter = 1` gives `d`.
fn apply_jitter(d: Duration, jitter: f64) -> Duration {
    // `clamp` keeps NaN as NaN, so map it to 0 first.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let quarter = d / 4;
    // `try_from_secs_f64` instead of `mul_f64`, which panics on overflow; `min` guards against
    // float rounding taking more than the quarter.
    let cut = Duration::try_from_secs_f64(quarter.as_secs_f64() * (1.0 - jitter))
        .unwrap_or(quarter)
        .min(quarter);
    d.saturating_sub(cut)
}

/// IMF-fixdate, the preferred HTTP-date form: `Wed, 21 Oct 2015 07:28:00 GMT`.
const IMF_FIXDATE: &[BorrowedFormatItem<'_>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// Obsolete RFC 850 form: `Sunday, 06-Nov-94 08:49:37 GMT` (two-digit year).
const RFC_850: &[BorrowedFormatItem<'_>] = format_description!(
    "[weekday repr:long], [day]-[month repr:short]-[year repr:last_two] [hour]:[minute]:[second] GMT"
);

/// Obsolete C `asctime()` form: `Sun Nov  6 08:49:37 1994` (day padded with a space).
const ASCTIME: &[BorrowedFormatItem<'_>] = format_description!(
    "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
);

/// Parses a `Retry-After` header value (RFC 9110, section 10.2.3) into a delay from `now`.
///
/// Accepts delta-seconds (a non-negative decimal integer; values too large for `u64` saturate)
/// or an HTTP-date in IMF-fixdate, RFC 850 or asctime form, always in GMT. A date in the past
/// gives `Some(Duration::ZERO)`. Anything else (negative or fractional numbers, other date
/// formats, empty input) gives `None`, and the caller falls back to its own backoff.
/// Surrounding whitespace is ignored, and so is a weekday that does not match the date (the
/// date is what the receiver means; RFC 9110 does not ask recipients to check it).
#[must_use]
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // Check the digits ourselves: `u64::from_str` would also accept a leading `+`.
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let date = parse_http_date(value, now)?;
    // A negative difference (date in the past) fails the conversion: retry now.
    Some(Duration::try_from(date - now).unwrap_or(Duration::ZERO))
}

fn parse_http_date(value: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
    if let Ok(dt) = time::PrimitiveDateTime::parse(value, IMF_FIXDATE) {
        return Some(dt.assume_utc());
    }
    if let Ok(dt) = time::PrimitiveDateTime::parse(value, ASCTIME) {
        return Some(dt.assume_utc());
    }
    parse_rfc_850(value, now)
}

/// RFC 850 needs its own path because its year has two digits: RFC 9110 says to take the most
/// recent year with those digits that is not more than 50 years in the future.
fn parse_rfc_850(value: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let mut parsed = Parsed::new();
    let rest = parsed.parse_items(value.as_bytes(), RFC_850).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let last_two = i32::from(parsed.year_last_two()?);
    let this_year = now.year();
    let mut year = this_year - this_year.rem_euclid(100) + last_two;
    if year > this_year + 50 {
        year -= 100;
    }
    let parsed = parsed.with_year(year)?;
    time::PrimitiveDateTime::try_from(parsed)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// The delay before the next attempt, taking the receiver's `Retry-After` into account.
///
/// Starts from [`backoff`]. If the failed attempt got a 429 or 503 (the statuses for which
/// RFC 9110 defines `Retry-After` as "come back later") and the header parses, the result is
/// `max(backoff, min(retry_after, retry_after_cap))`: a receiver may ask us to wait longer, up
/// to the cap, but never shorter, so a `Retry-After: 0` cannot turn the backoff into a hot loop.
/// On any other status (or a network error, `status = None`) `Retry-After` is ignored.
#[must_use]
pub fn retry_delay(
    policy: &RetryPolicy,
    failed_attempt: u32,
    status: Option<u16>,
    retry_after: Option<&str>,
    now: OffsetDateTime,
    jitter: f64,
) -> Duration {
    let backoff = backoff(policy, failed_attempt, jitter);
    if !matches!(status, Some(429 | 503)) {
        return backoff;
    }
    match retry_after.and_then(|value| parse_retry_after(value, now)) {
        Some(requested) => backoff.max(requested.min(policy.retry_after_cap)),
        None => backoff,
    }
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Mark the delivery succeeded.
    Succeeded,
    /// Keep the delivery pending and attempt it again after `delay`.
    Retry {
        /// Time to wait before the next attempt.
        delay: Duration,
    },
    /// Give up: mark the delivery `dead_letter`.
    DeadLetter,
}

/// Decides the fate of a delivery after attempt `attempt` (counting from 1) of `max_attempts`.
///
/// - [`Verdict::Succeeded`] -> [`Decision::Succeeded`];
/// - [`Verdict::Permanent`] -> [`Decision::DeadLetter`] at once;
/// - [`Verdict::Transient`] -> [`Decision::DeadLetter`] when `attempt >= max_attempts` (the
///   budget is spent), otherwise [`Decision::Retry`] after `delay()`.
///
/// `delay` is a closure so that the delay (which may need a random jitter sample) is only
/// computed when a retry actually happens.
#[must_use]
pub fn decide(
    verdict: Verdict,
    attempt: u32,
    max_attempts: u32,
    delay: impl FnOnce() -> Duration,
) -> Decision {
    match verdict {
        Verdict::Succeeded => Decision::Succeeded,
        Verdict::Permanent => Decision::DeadLetter,
        Verdict::Transient if attempt >= max_attempts => Decision::DeadLetter,
        Verdict::Transient => Decision::Retry { delay: delay() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2015-10-21 07:28:00 UTC);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn classify_status_boundaries() {
        use Verdict::{Permanent, Succeeded, Transient};
        let cases = [
            (0, Permanent),
            (99, Permanent),
            (100, Permanent),
            (199, Permanent),
            (200, Succeeded),
            (204, Succeeded),
            (299, Succeeded),
            (300, Permanent),
            (301, Permanent),
            (399, Permanent),
            (400, Permanent),
            (401, Permanent),
            (404, Permanent),
            (407, Permanent),
            (408, Transient),
            (409, Permanent),
            (424, Permanent),
            (425, Transient),
            (426, Permanent),
            (428, Permanent),
            (429, Transient),
            (430, Permanent),
            (499, Permanent),
            (500, Transient),
            (501, Permanent),
            (502, Transient),
            (503, Transient),
            (504, Transient),
            (505, Permanent),
            (506, Transient),
            (599, Transient),
            (600, Permanent),
            (u16::MAX, Permanent),
        ];
        for (code, want) in cases {
            assert_eq!(classify_status(code), want, "status {code}");
        }
    }

    #[test]
    fn default_policy_matches_origin() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay, secs(30));
        assert_eq!(p.max_delay, secs(600));
        assert_eq!(p.retry_after_cap, secs(3600));
    }

    #[test]
    fn backoff_doubles_from_base_at_top_of_jitter() {
        let p = RetryPolicy::default();
        for (n, want) in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480)] {
            assert_eq!(backoff(&p, n, 1.0), secs(want), "attempt {n}");
        }
    }

    #[test]
    fn backoff_just_below_one_is_just_below_undelayed() {
        let p = RetryPolicy::default();
        for (n, want) in [(1, 30), (2, 60), (3, 120), (4, 240)] {
            let d = backoff(&p, n, 0.999_999);
            assert!(
                d <= secs(want) && d > secs(want) - millis(1),
                "attempt {n}: {d:?}"
            );
        }
    }

    #[test]
    fn backoff_at_zero_jitter_is_three_quarters() {
        let p = RetryPolicy::default();
        for (n, want_ms) in [(1, 22_500), (2, 45_000), (3, 90_000), (4, 180_000)] {
            assert_eq!(backoff(&p, n, 0.0), millis(want_ms), "attempt {n}");
        }
    }

    #[test]
    fn backoff_midpoint_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 1, 0.5), millis(26_250));
    }

    #[test]
    fn backoff_is_capped_and_jitter_never_exceeds_cap() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 6, 1.0), secs(600)); // 960 s uncapped
        assert_eq!(backoff(&p, 7, 1.0), secs(600));
        assert_eq!(backoff(&p, 7, 0.0), secs(450));
        for j in [0.0, 0.1, 0.5, 0.9, 0.999_999, 1.0] {
            let d = backoff(&p, 20, j);
            assert!(d >= secs(450) && d <= secs(600), "jitter {j}: {d:?}");
        }
    }

    #[test]
    fn backoff_huge_attempt_saturates_to_cap() {
        let p = RetryPolicy::default();
        for n in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(backoff(&p, n, 1.0), secs(600), "attempt {n}");
        }
    }

    #[test]
    fn backoff_extreme_policies_do_not_panic() {
        let huge = RetryPolicy {
            base_delay: Duration::MAX,
            max_delay: Duration::MAX,
            retry_after_cap: Duration::MAX,
        };
        assert_eq!(backoff(&huge, 1, 1.0), Duration::MAX);
        assert_eq!(backoff(&huge, 1000, 1.0), Duration::MAX);
        assert!(backoff(&huge, 1000, 0.0) >= Duration::MAX / 4 * 3);
        let zero = RetryPolicy {
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            retry_after_cap: Duration::ZERO,
        };
        assert_eq!(backoff(&zero, 5, 0.3), Duration::ZERO);
        // A base above the cap is still capped.
        let inverted = RetryPolicy {
            base_delay: secs(1000),
            ..RetryPolicy::default()
        };
        assert_eq!(backoff(&inverted, 1, 1.0), secs(600));
    }

    #[test]
    fn backoff_attempt_zero_counts_as_first() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 0, 1.0), secs(30));
    }

    #[test]
    fn backoff_out_of_range_jitter_is_clamped() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 1, -3.0), millis(22_500));
        assert_eq!(backoff(&p, 1, 7.0), secs(30));
        assert_eq!(backoff(&p, 1, f64::NAN), millis(22_500));
        assert_eq!(backoff(&p, 1, f64::INFINITY), secs(30));
        assert_eq!(backoff(&p, 1, f64::NEG_INFINITY), millis(22_500));
    }

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(parse_retry_after("120", NOW), Some(secs(120)));
        assert_eq!(parse_retry_after("0", NOW), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 5 ", NOW), Some(secs(5)));
        assert_eq!(
            parse_retry_after("99999999999999999999999", NOW),
            Some(secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_imf_fixdate() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", NOW),
            Some(secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", NOW),
            Some(secs(86_400))
        );
    }

    #[test]
    fn retry_after_date_with_subsecond_now() {
        let now = NOW + time::Duration::milliseconds(250);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(millis(9_750))
        );
    }

    #[test]
    fn retry_after_obsolete_date_forms() {
        // RFC 850: "15" is 2015, the most recent year ending in 15 not 50+ years ahead.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", NOW),
            Some(secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 2016", NOW),
            parse_retry_after("Sun, 06 Nov 2016 08:49:37 GMT", NOW)
        );
        assert!(parse_retry_after("Sun Nov  6 08:49:37 2016", NOW).is_some());
        // A wrong weekday is tolerated (21 Oct 2015 was a Wednesday).
        assert_eq!(
            parse_retry_after("Thu, 21 Oct 2015 07:30:00 GMT", NOW),
            Some(secs(120))
        );
    }

    #[test]
    fn retry_after_rfc_850_two_digit_year_window() {
        // "94" seen in 2015 is 1994 (2094 would be more than 50 years ahead): in the past.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", NOW),
            Some(Duration::ZERO)
        );
        // "64" seen in 2015 is 2064 (49 years ahead).
        let d = parse_retry_after("Thursday, 21-Oct-64 07:28:00 GMT", NOW);
        assert!(d.is_some_and(|d| d > secs(40 * 365 * 86_400)), "{d:?}");
    }

    #[test]
    fn retry_after_past_date_is_zero() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:59 GMT", NOW),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_none() {
        for value in [
            "",
            "   ",
            "soon",
            "-5",
            "+5",
            "1.5",
            "1e3",
            "12 s",
            "0x10",
            "Wed, 21 Oct 2015 07:28:00 UTC",
            "Wed, 21 Oct 2015 07:28:00",
            "2015-10-21T07:28:00Z",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Foo 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 GMT trailing",
            "Wednesday, 21-Oct-15 07:29:00 GMT x",
            "\u{0}\u{ff}",
        ] {
            assert_eq!(parse_retry_after(value, NOW), None, "{value:?}");
        }
    }

    #[test]
    fn retry_delay_honours_retry_after_on_429_and_503() {
        let p = RetryPolicy::default();
        for status in [429, 503] {
            assert_eq!(
                retry_delay(&p, 1, Some(status), Some("900"), NOW, 1.0),
                secs(900)
            );
            assert_eq!(
                retry_delay(
                    &p,
                    1,
                    Some(status),
                    Some("Wed, 21 Oct 2015 07:38:00 GMT"),
                    NOW,
                    1.0
                ),
                secs(600)
            );
        }
    }

    #[test]
    fn retry_delay_caps_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(
            retry_delay(&p, 1, Some(429), Some("86400"), NOW, 1.0),
            secs(3600)
        );
        let tight = RetryPolicy {
            retry_after_cap: secs(100),
            ..RetryPolicy::default()
        };
        assert_eq!(
            retry_delay(&tight, 1, Some(503), Some("900"), NOW, 1.0),
            secs(100)
        );
    }

    #[test]
    fn retry_delay_ignores_retry_after_on_other_statuses() {
        let p = RetryPolicy::default();
        for status in [Some(500), Some(502), Some(504), Some(408), None] {
            assert_eq!(
                retry_delay(&p, 1, status, Some("900"), NOW, 1.0),
                secs(30),
                "{status:?}"
            );
        }
    }

    #[test]
    fn retry_delay_never_shorter_than_backoff() {
        let p = RetryPolicy::default();
        assert_eq!(
            retry_delay(&p, 3, Some(429), Some("0"), NOW, 1.0),
            secs(120)
        );
        assert_eq!(
            retry_delay(&p, 3, Some(503), Some("10"), NOW, 0.0),
            secs(90)
        );
        assert_eq!(
            retry_delay(
                &p,
                3,
                Some(503),
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                NOW,
                1.0
            ),
            secs(120)
        );
        // A backoff above the Retry-After cap is kept.
        let tight = RetryPolicy {
            retry_after_cap: secs(10),
            ..RetryPolicy::default()
        };
        assert_eq!(
            retry_delay(&tight, 1, Some(429), Some("900"), NOW, 1.0),
            secs(30)
        );
    }

    #[test]
    fn retry_delay_falls_back_on_garbage_or_missing_header() {
        let p = RetryPolicy::default();
        assert_eq!(
            retry_delay(&p, 2, Some(429), Some("later"), NOW, 1.0),
            secs(60)
        );
        assert_eq!(retry_delay(&p, 2, Some(429), None, NOW, 1.0), secs(60));
    }

    #[test]
    fn decide_outcomes() {
        let d = || secs(30);
        assert_eq!(decide(Verdict::Succeeded, 5, 5, d), Decision::Succeeded);
        assert_eq!(decide(Verdict::Permanent, 1, 5, d), Decision::DeadLetter);
        assert_eq!(
            decide(Verdict::Transient, 1, 5, d),
            Decision::Retry { delay: secs(30) }
        );
        assert_eq!(
            decide(Verdict::Transient, 4, 5, d),
            Decision::Retry { delay: secs(30) }
        );
        assert_eq!(decide(Verdict::Transient, 5, 5, d), Decision::DeadLetter);
        assert_eq!(decide(Verdict::Transient, 6, 5, d), Decision::DeadLetter);
        assert_eq!(decide(Verdict::Transient, 1, 0, d), Decision::DeadLetter);
    }

    #[test]
    fn decide_computes_delay_only_when_retrying() {
        let mut calls = 0;
        let _ = decide(Verdict::Transient, 5, 5, || {
            calls += 1;
            secs(1)
        });
        let _ = decide(Verdict::Permanent, 1, 5, || {
            calls += 1;
            secs(1)
        });
        assert_eq!(calls, 0);
    }

    #[test]
    fn origin_schedule_end_to_end() {
        // Default policy, 5 attempts, every attempt a 503 without Retry-After:
        // waits 30, 60, 120, 240 (at full jitter) and dead-letters on the 5th failure.
        let p = RetryPolicy::default();
        let mut waits = Vec::new();
        for attempt in 1..=5 {
            match decide(classify_status(503), attempt, 5, || {
                retry_delay(&p, attempt, Some(503), None, NOW, 1.0)
            }) {
                Decision::Retry { delay } => waits.push(delay.as_secs()),
                Decision::DeadLetter => {
                    assert_eq!(attempt, 5);
                    break;
                }
                Decision::Succeeded => unreachable!(),
            }
        }
        assert_eq!(waits, [30, 60, 120, 240]);
    }
}
