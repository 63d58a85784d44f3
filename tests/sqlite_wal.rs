//! SQLite's WAL under writes that never pause: the background checkpointer must still let the
//! WAL start over from its beginning, or the file would grow by every page ever written.

mod common;

use std::time::{Duration, Instant};

use outbox::clock;
use outbox::delivery::{Outcome, Transition};

#[test]
fn the_wal_starts_over_under_constant_writes() {
    let t = common::sqlite();
    let wal = format!("{}-wal", t.database);
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(8000));
    let rows: Vec<_> = (0..2000)
        .map(|run| {
            let mut d = common::new_delivery(run, "wal");
            d.payload = payload.clone();
            d
        })
        .collect();
    for created in t.store.create_many(&rows, clock::now()).unwrap() {
        created.unwrap();
    }
    // The same rows claimed and handed back, again and again: every round rewrites each of
    // them twice, while the database file keeps its size.
    let target: u64 = 1 << 30;
    let (mut rewritten, mut largest) = (0u64, 0u64);
    let start = Instant::now();
    while rewritten < target && start.elapsed() < Duration::from_secs(120) {
        let claims = t
            .store
            .claim_due(clock::now(), 2000, Duration::from_secs(60))
            .unwrap();
        assert_eq!(claims.len(), rows.len());
        let releases: Vec<Outcome> = claims
            .iter()
            .map(|c| Outcome {
                delivery_id: c.delivery.id,
                lease_token: c.lease_token.clone(),
                transition: Transition::Release { at: clock::now() },
                attempt: None,
            })
            .collect();
        t.store.record(&releases, clock::now()).unwrap();
        rewritten += 2 * (rows.len() * payload.len()) as u64;
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    assert!(
        rewritten >= target,
        "rewrote only {} MiB in 120 s",
        rewritten >> 20
    );
    // Never starting over, the WAL would hold every page rewritten.
    assert!(
        largest < rewritten / 4,
        "the WAL reached {} MiB for {} MiB rewritten",
        largest >> 20,
        rewritten >> 20
    );
}
