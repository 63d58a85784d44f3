//! Counters the engine and API keep, and their Prometheus text rendering. Lock-free: the hot
//! path only adds to atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::delivery::Stats;

/// Upper bounds (seconds) of the send-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What one attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    Retry,
    DeadLetter,
}

impl AttemptResult {
    const ALL: [AttemptResult; 3] = [
        AttemptResult::Succeeded,
        AttemptResult::Retry,
        AttemptResult::DeadLetter,
    ];

    fn label(self) -> &'static str {
        match self {
            AttemptResult::Succeeded => "succeeded",
            AttemptResult::Retry => "retry",
            AttemptResult::DeadLetter => "dead_letter",
        }
    }
}

/// The process's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    attempts: [AtomicU64; 3],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// Claimed rows handed back unsent at shutdown.
    pub released: AtomicU64,
    /// Outcome writes refused by the lease fence (another worker holds the row).
    pub stale_outcomes: AtomicU64,
    /// Outcome batches whose write failed (and was retried).
    pub record_errors: AtomicU64,
    /// Deliveries created through this process.
    pub enqueued: AtomicU64,
}

impl Metrics {
    /// Counts one attempt and its send latency.
    pub fn attempt(&self, result: AttemptResult, latency: Duration) {
        self.attempts[result as usize].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Attempts so far with this result.
    pub fn attempts(&self, result: AttemptResult) -> u64 {
        self.attempts[result as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of these counters and of `stats` (from the store).
    pub fn render(&self, stats: &Stats) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP outbox_deliveries Deliveries stored, by status."
        );
        let _ = writeln!(out, "# TYPE outbox_deliveries gauge");
        for (status, n) in [
            ("pending", stats.pending),
            ("succeeded", stats.succeeded),
            ("dead_letter", stats.dead_letter),
        ] {
            let _ = writeln!(out, "outbox_deliveries{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP outbox_due_backlog Pending deliveries due now and not leased."
        );
        let _ = writeln!(out, "# TYPE outbox_due_backlog gauge");
        let _ = writeln!(out, "outbox_due_backlog {}", stats.due);
        let _ = writeln!(
            out,
            "# HELP outbox_oldest_due_age_seconds How long the oldest due delivery has waited."
        );
        let _ = writeln!(out, "# TYPE outbox_oldest_due_age_seconds gauge");
        let _ = writeln!(
            out,
            "outbox_oldest_due_age_seconds {}",
            stats.oldest_due_ms.unwrap_or(0) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "# HELP outbox_attempts_total Delivery attempts, by outcome."
        );
        let _ = writeln!(out, "# TYPE outbox_attempts_total counter");
        for result in AttemptResult::ALL {
            let _ = writeln!(
                out,
                "outbox_attempts_total{{outcome=\"{}\"}} {}",
                result.label(),
                self.attempts(result)
            );
        }
        let _ = writeln!(
            out,
            "# HELP outbox_send_duration_seconds Time from request start to response read."
        );
        let _ = writeln!(out, "# TYPE outbox_send_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "outbox_send_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "outbox_send_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "outbox_send_duration_seconds_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "outbox_send_duration_seconds_count {count}");
        for (name, help, counter) in [
            (
                "outbox_enqueued_total",
                "Deliveries created through this process.",
                &self.enqueued,
            ),
            (
                "outbox_released_total",
                "Claimed deliveries handed back unsent at shutdown.",
                &self.released,
            ),
            (
                "outbox_stale_outcomes_total",
                "Outcome writes refused by the lease fence.",
                &self.stale_outcomes,
            ),
            (
                "outbox_record_errors_total",
                "Outcome batch writes that failed and were retried.",
                &self.record_errors,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.attempt(AttemptResult::Succeeded, Duration::from_micros(800));
        m.attempt(AttemptResult::Succeeded, Duration::from_millis(20));
        m.attempt(AttemptResult::Retry, Duration::from_secs(60));
        let stats = Stats {
            pending: 3,
            succeeded: 2,
            dead_letter: 1,
            due: 4,
            oldest_due_ms: Some(1500),
        };
        let text = m.render(&stats);
        for line in [
            "outbox_deliveries{status=\"pending\"} 3",
            "outbox_deliveries{status=\"dead_letter\"} 1",
            "outbox_due_backlog 4",
            "outbox_oldest_due_age_seconds 1.5",
            "outbox_attempts_total{outcome=\"succeeded\"} 2",
            "outbox_attempts_total{outcome=\"retry\"} 1",
            "outbox_send_duration_seconds_bucket{le=\"0.001\"} 1",
            "outbox_send_duration_seconds_bucket{le=\"0.025\"} 2",
            "outbox_send_duration_seconds_bucket{le=\"30\"} 2",
            "outbox_send_duration_seconds_bucket{le=\"+Inf\"} 3",
            "outbox_send_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
