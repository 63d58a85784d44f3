//! Text the `outbox` command prints for people (tables, details, stats) and the `--older-than`
//! duration it reads. Part of the binary, not the library; pure functions.

use std::fmt::Write;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use outbox::delivery::{Delivery, DeliveryDetail, Stats};

/// Parses an age such as `30d`, `12h`, `90m` or `45s` (a whole number and one unit).
///
/// # Errors
/// A message with the accepted forms when the text is empty, has no unit or number, or is zero
/// (a zero age would purge everything finished up to this instant, which is never what was
/// meant).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let usage =
        || format!("{text:?} is not an age: use a number and a unit, e.g. 30d, 12h, 90m or 45s");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(usage)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| usage())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(usage()),
    };
    if n == 0 {
        return Err(format!(
            "{text:?} is zero: give an age greater than zero, e.g. 30d"
        ));
    }
    n.checked_mul(unit_secs)
        .filter(|&secs| secs <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long: at most 100 years"))
}

fn time_text(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// One line per delivery, under a header.
pub fn delivery_table(deliveries: &[Delivery]) -> String {
    let mut out = format!(
        "{:>8}  {:<36}  {:<11}  {:>8}  {:>6}  {:>10}  {:<16}  {:>4}  {}\n",
        "ID", "UUID", "STATUS", "ATTEMPTS", "ORG", "RUN", "NODE", "CODE", "UPDATED"
    );
    for d in deliveries {
        let _ = writeln!(
            out,
            "{:>8}  {:<36}  {:<11}  {:>8}  {:>6}  {:>10}  {:<16}  {:>4}  {}",
            d.id,
            d.delivery_uuid,
            d.status.as_str(),
            format!("{}/{}", d.attempt_count, d.max_attempts),
            d.organization_id,
            d.workflow_run_id,
            d.webhook_node_id,
            d.last_status_code.map_or("-".to_owned(), |c| c.to_string()),
            time_text(d.updated_at),
        );
    }
    if deliveries.is_empty() {
        out.push_str("(no deliveries)\n");
    }
    out
}

/// A delivery field by field, then its attempts.
pub fn detail_text(detail: &DeliveryDetail) -> String {
    let d = &detail.delivery;
    let none = || "-".to_owned();
    let mut out = String::new();
    for (name, value) in [
        ("delivery_uuid", d.delivery_uuid.clone()),
        ("status", d.status.as_str().to_owned()),
        ("organization_id", d.organization_id.to_string()),
        ("workflow_run_id", d.workflow_run_id.to_string()),
        ("webhook_node_id", d.webhook_node_id.clone()),
        ("webhook_name", d.webhook_name.clone().unwrap_or_else(none)),
        ("endpoint", format!("{} {}", d.http_method, d.endpoint_url)),
        (
            "attempts",
            format!("{} of {}", d.attempt_count, d.max_attempts),
        ),
        (
            "scheduled_for",
            d.scheduled_for.map_or_else(none, time_text),
        ),
        (
            "last_status_code",
            d.last_status_code.map_or_else(none, |c| c.to_string()),
        ),
        ("last_error", d.last_error.clone().unwrap_or_else(none)),
        (
            "credential_uuid",
            d.credential_uuid.clone().unwrap_or_else(none),
        ),
        (
            "custom_headers",
            // Names only: values may be meant for the receiver's eyes alone.
            if d.custom_headers.is_empty() {
                none()
            } else {
                d.custom_headers
                    .iter()
                    .map(|h| h.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("created_at", time_text(d.created_at)),
        ("updated_at", time_text(d.updated_at)),
        ("payload", d.payload.clone()),
    ] {
        let _ = writeln!(out, "{name:<17}{value}");
    }
    out.push_str("\nattempt history:\n");
    if detail.attempts.is_empty() {
        out.push_str("  (none yet)\n");
    }
    for a in &detail.attempts {
        let _ = writeln!(
            out,
            "  #{:<3} {}  {:>6} ms  {:>4}  {}",
            a.attempt_number,
            time_text(a.started_at),
            a.duration_ms,
            a.status_code.map_or("-".to_owned(), |c| c.to_string()),
            a.error.as_deref().unwrap_or("ok"),
        );
    }
    out
}

/// Counts per status and the backlog.
pub fn stats_text(stats: &Stats) -> String {
    let oldest = stats
        .oldest_due_ms
        .map_or("-".to_owned(), |ms| format!("{:.3} s", ms as f64 / 1000.0));
    format!(
        "pending        {}\nsucceeded      {}\ndead_letter    {}\ndue now        {}\noldest due age {}\n",
        stats.pending, stats.succeeded, stats.dead_letter, stats.due, oldest
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        for (text, secs) in [
            ("30d", 30 * 86_400),
            ("12h", 12 * 3600),
            ("90m", 5400),
            ("45s", 45),
            (" 1d ", 86_400),
        ] {
            assert_eq!(parse_age(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for text in [
            "",
            "0s",
            "0d",
            "30",
            "d",
            "-1d",
            "1.5h",
            "1w",
            "1 d",
            "abc",
            "99999999999999999999d",
            "40000d",
        ] {
            assert!(parse_age(text).is_err(), "{text}");
        }
    }

    #[test]
    fn stats_show_every_count() {
        let text = stats_text(&Stats {
            pending: 1,
            succeeded: 2,
            dead_letter: 3,
            due: 4,
            oldest_due_ms: Some(1500),
        });
        assert!(text.contains("dead_letter    3"), "{text}");
        assert!(text.contains("1.500 s"), "{text}");
    }
}
