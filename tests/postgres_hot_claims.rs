//! PostgreSQL's migration 2 ("hot_claims"): claims keep their lease in `lease_until` and are
//! updated in place. What the parity suite cannot show, since SQLite has no such migration:
//! the claims really are HOT, and leases taken before the migration (or before rolling it
//! back) still hold after it.

mod common;

use std::time::{Duration, Instant};

use common::new_delivery;
use outbox::clock;
use outbox::delivery::NewDelivery;

const LEASE: Duration = Duration::from_secs(90);

fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
}

#[test]
fn claims_update_rows_in_place() {
    let Some(t) = common::postgres() else { return };
    let now = clock::now();
    let rows = 40;
    for run in 0..rows {
        let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
        let new = NewDelivery {
            payload,
            ..new_delivery(run, "n")
        };
        t.store.create(&new, now).unwrap();
    }
    assert_eq!(
        t.store.claim_due(now, 100, LEASE).unwrap().len(),
        rows as usize
    );

    // Table statistics reach other sessions when the claiming one flushes them (it does
    // within about a second of going idle, or ten at most).
    let schema = t.postgres_schema.as_deref().unwrap();
    let mut admin =
        postgres::Client::connect(&common::postgres_url().unwrap(), postgres::NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (updated, hot) = loop {
        let row = admin
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = 'webhook_deliveries'",
                &[&schema],
            )
            .unwrap();
        let (updated, hot): (i64, i64) = (row.get(0), row.get(1));
        if updated >= rows || Instant::now() > deadline {
            break (updated, hot);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(updated, rows, "one update a claim");
    assert_eq!(hot, rows, "every claim a HOT update (no new index entries)");
}

#[test]
fn leases_hold_across_rolling_back_and_reapplying_hot_claims() {
    let Some(t) = common::postgres() else { return };
    let store = &t.store;
    let now = clock::now();
    store.create(&new_delivery(1, "n"), now).unwrap();
    let last_try = NewDelivery {
        max_attempts: 1,
        ..new_delivery(2, "n")
    };
    let (final_row, _) = store.create(&last_try, now).unwrap();
    assert_eq!(store.claim_due(now, 10, LEASE).unwrap().len(), 2);

    assert_eq!(store.migrate_down().unwrap(), Some(2));
    assert_eq!(store.migrate_up().unwrap(), vec![2]);

    let lease_end = now + secs(90);
    assert_eq!(store.next_due_at().unwrap(), Some(lease_end));
    assert!(
        store
            .claim_due(lease_end - secs(1), 10, LEASE)
            .unwrap()
            .is_empty(),
        "leased"
    );
    assert!(
        store
            .expire_final_leases(lease_end - secs(1))
            .unwrap()
            .is_empty()
    );

    let expired = store.expire_final_leases(lease_end).unwrap();
    assert_eq!(expired.len(), 1, "the final attempt's lease ran out");
    assert_eq!(expired[0].id, final_row.id);
    let again = store.claim_due(lease_end, 10, LEASE).unwrap();
    assert_eq!(again.len(), 1, "the other is claimable once its lease ends");
    assert_eq!(again[0].attempt(), 2);
    assert_eq!(again[0].delivery.scheduled_for, Some(lease_end + secs(90)));
}
