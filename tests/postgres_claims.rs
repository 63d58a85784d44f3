//! What PostgreSQL's claims and outcomes do that the parity suite cannot show. Migrations 2
//! ("hot_claims") and 3 ("queue_table"): a claim updates only the delivery's narrow queue row,
//! in place; a success deletes that row and updates the wide row in place; leases taken before
//! rolling either migration back (or applying it again) still hold after it; a row an
//! application inserts with SQL is queued by the trigger. Migration 4 ("attempts_key"): one
//! index on attempts, and their history keeps its order both ways. The claim floor: a claim
//! starts its walk of the due index where the last one found its first row, and a row due
//! earlier is still claimed, at once when this store made it, within a second when another
//! process did; `next_due_at`, which the engine waits on, sees it within a second too.

mod common;

use std::time::{Duration, Instant};

use common::new_delivery;
use outbox::clock;
use outbox::delivery::{Claim, NewDelivery, Outcome, Transition};
use outbox::store::{self, StoreOptions};
use time::OffsetDateTime;

const LEASE: Duration = Duration::from_secs(90);

fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
}

/// The outcome of `claim`, without an attempt.
fn outcome(claim: &Claim, transition: Transition) -> Outcome {
    Outcome {
        delivery_id: claim.delivery.id,
        lease_token: claim.lease_token.clone(),
        transition,
        attempt: None,
    }
}

/// Row counts of one table from `pg_stat_user_tables`: updates, HOT updates, deletes.
#[derive(Debug, PartialEq)]
struct TableWrites {
    updated: i64,
    hot: i64,
    deleted: i64,
}

/// Waits until the statistics of `table` show `updated` updates, or 20 s have passed: a
/// session's table statistics reach the others when it flushes them (within about a second
/// of going idle, or ten at most).
fn table_writes(t: &common::TestStore, table: &str, updated: i64) -> TableWrites {
    let schema = t.postgres_schema.as_deref().unwrap();
    let mut admin =
        postgres::Client::connect(&common::postgres_url().unwrap(), postgres::NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = admin
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = $2",
                &[&schema, &table],
            )
            .unwrap();
        let writes = TableWrites {
            updated: row.get(0),
            hot: row.get(1),
            deleted: row.get(2),
        };
        if writes.updated >= updated || Instant::now() > deadline {
            return writes;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn claims_and_successes_update_rows_in_place() {
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
    let claims = t.store.claim_due(now, 100, LEASE).unwrap();
    assert_eq!(claims.len(), rows as usize);
    let queue = table_writes(&t, "webhook_delivery_queue", rows);
    assert_eq!(queue.updated, rows, "one update of the queue row a claim");
    assert_eq!(
        queue.hot, rows,
        "every claim a HOT update (no new index entries)"
    );

    let outcomes: Vec<Outcome> = claims
        .iter()
        .map(|c| outcome(c, Transition::Succeeded { status_code: 200 }))
        .collect();
    assert!(t.store.record(&outcomes, now).unwrap().iter().all(|&a| a));
    let wide = table_writes(&t, "webhook_deliveries", rows);
    assert_eq!(
        wide,
        TableWrites {
            updated: rows,
            hot: rows,
            deleted: 0
        },
        "claims left the wide rows alone; each success updated its row in place"
    );
    assert_eq!(
        table_writes(&t, "webhook_delivery_queue", rows).deleted,
        rows,
        "a success deletes the queue row"
    );
}

#[test]
fn leases_hold_across_rolling_back_and_reapplying_the_migrations() {
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

    assert_eq!(store.migrate_down().unwrap(), Some(4));
    assert_eq!(store.migrate_down().unwrap(), Some(3));
    assert_eq!(store.migrate_down().unwrap(), Some(2));
    assert_eq!(store.migrate_up().unwrap(), vec![2, 3, 4]);

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

    // A dead letter and a row in flight both come through another round trip.
    assert_eq!(store.migrate_down().unwrap(), Some(4));
    assert_eq!(store.migrate_down().unwrap(), Some(3));
    assert_eq!(store.migrate_up().unwrap(), vec![3, 4]);
    let dead = store.get(&final_row.delivery_uuid).unwrap().unwrap();
    assert_eq!(dead.delivery.status, outbox::delivery::Status::DeadLetter);
    let success = outcome(&again[0], Transition::Succeeded { status_code: 200 });
    assert_eq!(store.record(&[success], lease_end).unwrap(), vec![true]);
    assert_eq!(
        store.redrive_all(None, lease_end).unwrap(),
        1,
        "the dead letter is still found"
    );
    let redriven = store.claim_due(lease_end, 10, LEASE).unwrap();
    assert_eq!(redriven.len(), 1);
    assert_eq!(redriven[0].delivery.id, final_row.id);
}

#[test]
fn a_row_inserted_with_sql_is_delivered() {
    let Some(t) = common::postgres() else { return };
    let now = clock::now();
    let mut app = postgres::Client::connect(&t.database, postgres::NoTls).unwrap();
    app.execute(
        "INSERT INTO webhook_deliveries (delivery_uuid, organization_id, workflow_run_id, \
         webhook_node_id, endpoint_url, payload, max_attempts, scheduled_for, created_at, \
         updated_at) VALUES ('from-sql', 7, 1, 'n', 'https://example.com/hook', '{}', 3, $1, \
         $1, $1)",
        &[&now],
    )
    .unwrap();
    let claims = t.store.claim_due(now, 10, LEASE).unwrap();
    assert_eq!(claims.len(), 1, "the trigger queued it");
    assert_eq!(claims[0].delivery.delivery_uuid, "from-sql");
    assert_eq!(claims[0].attempt(), 1);
    assert_eq!(claims[0].delivery.max_attempts, 3);
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

/// The floor's age runs from the claim that walked from the index's head: claims that keep
/// finding rows from the floor do not keep it fresh, or a row behind it would wait for a
/// lull in the load.
#[test]
fn a_row_behind_the_floor_is_claimed_within_a_second_under_steady_claims() {
    let Some(t) = common::postgres() else { return };
    let store = &t.store;
    let now = clock::now();
    store.create(&due_at(1, now - secs(10)), now).unwrap();
    assert_eq!(store.claim_due(now, 10, LEASE).unwrap().len(), 1);
    let other = store::open(&t.database, &StoreOptions::default()).unwrap();
    other.create(&due_at(2, now - secs(60)), now).unwrap();

    // Claims every 400 ms, each finding a row this store enqueued.
    let mut found_behind = None;
    for (i, run) in (3..8).enumerate() {
        let at = now + time::Duration::milliseconds(400 * (i as i64 + 1));
        store.create(&due_at(run, at - secs(1)), at).unwrap();
        let runs: Vec<i64> = store
            .claim_due(at, 10, LEASE)
            .unwrap()
            .iter()
            .map(|c| c.delivery.workflow_run_id)
            .collect();
        assert!(runs.contains(&run), "claim at {at}: {runs:?}");
        if runs.contains(&2) {
            found_behind = Some(at - now);
            break;
        }
    }
    let found = found_behind.expect("row 2 claimed in 2 s of steady claims");
    assert!(
        found > time::Duration::milliseconds(500) && found <= secs(1) + secs(1) / 5,
        "claimed once the floor was a second old, not at {found}"
    );
}

/// The engine claims only when `next_due_at` says a row is due, so what it misses behind a
/// fresh floor it must see once the floor is stale: here a lease another process took and
/// left to run out (it was killed), behind the rows this store claimed since.
#[test]
fn next_due_sees_a_lease_left_behind_the_floor_within_a_second() {
    let Some(t) = common::postgres() else { return };
    let store = &t.store;
    let now = clock::now();
    store.create(&due_at(1, now - secs(10)), now).unwrap();
    store.create(&due_at(2, now - secs(5)), now).unwrap();
    let other = store::open(&t.database, &StoreOptions::default()).unwrap();
    let short = Duration::from_millis(300);
    let killed = other.claim_due(now, 1, short).unwrap();
    assert_eq!(killed[0].delivery.workflow_run_id, 1);
    let ours = store.claim_due(clock::now(), 10, LEASE).unwrap();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].delivery.workflow_run_id, 2, "the floor is at row 2");

    let start = Instant::now();
    let seen = loop {
        let next = store.next_due_at().unwrap();
        if next.is_some_and(|at| at <= clock::now()) {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "row 1's lease ran out but next_due_at still says {next:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(seen >= short, "not before the lease ran out: {seen:?}");
    let again = store.claim_due(clock::now(), 10, LEASE).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.workflow_run_id, 1);
    assert_eq!(again[0].attempt(), 2);
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
    let release = outcome(&first[0], Transition::Release { at: now - secs(90) });
    assert_eq!(store.record(&[release], now).unwrap(), vec![true]);
    let again = store.claim_due(now, 10, LEASE).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.workflow_run_id, 1);
    assert_eq!(again[0].attempt(), 1, "the released attempt was given back");
}

#[test]
fn purge_takes_the_attempts_and_queue_rows_along() {
    let Some(t) = common::postgres() else { return };
    let store = &t.store;
    let now = clock::now();
    store.create(&new_delivery(1, "n"), now).unwrap();
    store.create(&new_delivery(2, "n"), now).unwrap();
    let (kept, _) = store.create(&new_delivery(3, "n"), now).unwrap();
    let claims = store.claim_due(now, 2, LEASE).unwrap();
    let attempt = outbox::delivery::Attempt {
        attempt_number: 1,
        started_at: now,
        duration_ms: 1,
        status_code: Some(404),
        error: None,
        response_excerpt: None,
    };
    let outcomes: Vec<Outcome> = claims
        .iter()
        .zip([
            Transition::Succeeded { status_code: 200 },
            Transition::DeadLetter {
                status_code: Some(404),
                error: "HTTP 404".into(),
            },
        ])
        .map(|(c, transition)| Outcome {
            attempt: Some(attempt.clone()),
            ..outcome(c, transition)
        })
        .collect();
    assert_eq!(store.record(&outcomes, now).unwrap(), vec![true, true]);

    let mut db = postgres::Client::connect(&t.database, postgres::NoTls).unwrap();
    let mut count = |table: &str| -> i64 {
        db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count("webhook_delivery_attempts"), 2);
    assert_eq!(
        count("webhook_delivery_queue"),
        2,
        "the dead letter's and row 3's"
    );
    assert_eq!(store.purge(now + secs(1)).unwrap(), 2);
    assert_eq!(count("webhook_delivery_attempts"), 0);
    assert_eq!(count("webhook_delivery_queue"), 1);
    assert!(store.get(&kept.delivery_uuid).unwrap().is_some());
}

#[test]
fn attempts_keep_their_order_across_the_attempts_key_migration() {
    let Some(t) = common::postgres() else { return };
    let store = &t.store;
    let now = clock::now();
    let (d, _) = store.create(&new_delivery(1, "n"), now).unwrap();
    let attempt = |status_code| outbox::delivery::Attempt {
        attempt_number: 1,
        started_at: now,
        duration_ms: 1,
        status_code: Some(status_code),
        error: None,
        response_excerpt: None,
    };
    let dead = Transition::DeadLetter {
        status_code: Some(404),
        error: "HTTP 404".into(),
    };
    let first = store.claim_due(now, 1, LEASE).unwrap();
    let first = Outcome {
        attempt: Some(attempt(404)),
        ..outcome(&first[0], dead)
    };
    assert_eq!(store.record(&[first], now).unwrap(), vec![true]);
    assert_eq!(store.redrive_all(None, now).unwrap(), 1);
    let second = store.claim_due(now, 1, LEASE).unwrap();
    let second = Outcome {
        attempt: Some(attempt(200)),
        ..outcome(&second[0], Transition::Succeeded { status_code: 200 })
    };
    assert_eq!(store.record(&[second], now).unwrap(), vec![true]);
    let history = || -> Vec<Option<u16>> {
        let got = store.get(&d.delivery_uuid).unwrap().unwrap();
        got.attempts.iter().map(|a| a.status_code).collect()
    };
    let mut db = postgres::Client::connect(&t.database, postgres::NoTls).unwrap();
    let mut indexes = || -> Vec<String> {
        db.query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'webhook_delivery_attempts' \
             AND schemaname = current_schema() ORDER BY indexname",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            r.get::<_, String>(0)
                .split(" USING ")
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect()
    };
    assert_eq!(indexes(), vec!["btree (delivery_id, id)"]);
    assert_eq!(history(), vec![Some(404), Some(200)]);

    assert_eq!(store.migrate_down().unwrap(), Some(4));
    assert_eq!(indexes(), vec!["btree (delivery_id)", "btree (id)"]);
    assert_eq!(history(), vec![Some(404), Some(200)]);
    assert_eq!(store.migrate_up().unwrap(), vec![4]);
    assert_eq!(history(), vec![Some(404), Some(200)]);
    assert_eq!(store.purge(now + secs(1)).unwrap(), 1);
    assert!(store.get(&d.delivery_uuid).unwrap().is_none());
}
