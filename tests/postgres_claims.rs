//! What PostgreSQL's claims do that the parity suite cannot show. Migration 2
//! ("hot_claims"): claims keep their lease in `lease_until` and are updated in place, and
//! leases taken before the migration (or before rolling it back) still hold after it. The
//! claim floor: a claim starts its walk of the due index where the last one found its first
//! row, and a row due earlier is still claimed, at once when this store made it, within a
//! second when another process did.

mod common;

use std::time::{Duration, Instant};

use common::new_delivery;
use outbox::clock;
use outbox::delivery::{NewDelivery, Outcome, Transition};
use outbox::store::{self, StoreOptions};
use time::OffsetDateTime;

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

fn due_at(run: i64, at: OffsetDateTime) -> NewDelivery {
    NewDelivery {
        scheduled_for: Some(at),
        ..new_delivery(run, "n")
    }
}

#[test]
fn a_row_due_behind_the_floor_is_claimed_within_a_second() {
    let Some(t) = common::postgres() else { return };
    let now = clock::now();
    t.store.create(&due_at(1, now - secs(10)), now).unwrap();
    assert_eq!(t.store.claim_due(now, 10, LEASE).unwrap().len(), 1);

    // Another process enqueues a row due before the row just claimed.
    let other = store::open(&t.database, &StoreOptions::default()).unwrap();
    other.create(&due_at(2, now - secs(60)), now).unwrap();
    let half_a_second = time::Duration::milliseconds(500);
    assert!(
        t.store
            .claim_due(now + half_a_second, 10, LEASE)
            .unwrap()
            .is_empty(),
        "behind the floor, which is still fresh"
    );
    let late = t.store.claim_due(now + secs(1), 10, LEASE).unwrap();
    assert_eq!(late.len(), 1, "found once the floor is a second old");
    assert_eq!(late[0].delivery.workflow_run_id, 2);
}

#[test]
fn rows_this_store_makes_due_earlier_are_claimed_at_once() {
    let Some(t) = common::postgres() else { return };
    let store = &t.store;
    let now = clock::now();
    store.create(&due_at(1, now - secs(10)), now).unwrap();
    store.create(&due_at(2, now - secs(5)), now).unwrap();
    let first = store.claim_due(now, 1, LEASE).unwrap();
    assert_eq!(first[0].delivery.workflow_run_id, 1);
    let second = store.claim_due(now, 1, LEASE).unwrap();
    assert_eq!(
        second[0].delivery.workflow_run_id, 2,
        "the floor is now at row 2"
    );

    // An enqueue due before the floor.
    store.create(&due_at(3, now - secs(60)), now).unwrap();
    let third = store.claim_due(now, 10, LEASE).unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].delivery.workflow_run_id, 3);

    // A claim given back, due before the floor (row 3's).
    let release = Outcome {
        delivery_id: first[0].delivery.id,
        lease_token: first[0].lease_token.clone(),
        transition: Transition::Release { at: now - secs(90) },
        attempt: None,
    };
    assert_eq!(store.record(&[release], now).unwrap(), vec![true]);
    let again = store.claim_due(now, 10, LEASE).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.workflow_run_id, 1);
    assert_eq!(again[0].attempt(), 1, "the released attempt was given back");
}
