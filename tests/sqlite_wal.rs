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

/// Rows in the database file itself, leaving out what is only in the WAL: a copy of the
/// file alone, opened elsewhere. `None` while a checkpoint is half-way through the copy.
fn rows_in_database_file(database: &str) -> Option<i64> {
    let dir = tempfile::tempdir().ok()?;
    let copy = dir.path().join("copy.db");
    std::fs::copy(database, &copy).ok()?;
    let conn = rusqlite::Connection::open(&copy).ok()?;
    conn.query_row("SELECT count(*) FROM webhook_deliveries", [], |r| r.get(0))
        .ok()
}

/// Waits up to 10 s for the database file to hold `rows` rows.
fn wait_for_rows_in_database_file(database: &str, rows: i64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if rows_in_database_file(database) == Some(rows) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_write_after_an_idle_spell_is_checkpointed_soon() {
    // With nothing to copy, the checkpointer sleeps for a minute; a commit must wake it, so
    // what was written reaches the database file (and the disk) within about a second.
    let t = common::sqlite();
    let create = |run| {
        t.store
            .create_many(&[common::new_delivery(run, "idle")], clock::now())
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
    };
    create(1);
    assert!(wait_for_rows_in_database_file(&t.database, 1));
    // Two more ticks of the checkpointer find nothing new: it goes idle.
    std::thread::sleep(Duration::from_millis(2500));
    create(2);
    assert!(
        wait_for_rows_in_database_file(&t.database, 2),
        "the second row did not reach the database file within 10 s"
    );
}
