//! One state-machine suite, written once, run against both backends: every test here is a
//! function of `&dyn Store`, instantiated for SQLite (always) and PostgreSQL (when
//! `OUTBOX_TEST_POSTGRES_URL` is set; required under CI).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::new_delivery;
use outbox::clock;
use outbox::delivery::{
    Attempt, Header, ListFilter, NewDelivery, Outcome, Redrive, Status, StoredCredential,
    Transition,
};
use outbox::store::Store;
use time::OffsetDateTime;

macro_rules! parity_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { let t = super::common::sqlite(); super::$name(&t.store); })*
        }
        mod postgres {
            $(#[test] fn $name() {
                if let Some(t) = super::common::postgres() { super::$name(&t.store); }
            })*
        }
    };
}

parity_suite!(
    get_or_create_reports_created,
    organization_mismatch_is_refused_and_writes_nothing,
    claim_takes_due_rows_only_earliest_first_at_most_limit,
    concurrent_claimers_claim_each_row_exactly_once,
    expired_lease_makes_row_claimable_with_next_attempt,
    stale_token_outcome_changes_nothing,
    succeeded_transition,
    retry_transition_waits_until_due,
    dead_letter_transition,
    release_gives_the_attempt_back,
    exhausted_rows_are_not_claimed,
    final_lease_expiry_dead_letters_with_a_reason,
    redrive_one_and_all,
    purge_deletes_old_terminal_rows_only,
    keyset_pagination_walks_every_row_once,
    listing_by_status_finds_each_status_among_the_others,
    migrations_up_down_up_leave_an_identical_schema,
    payload_and_headers_round_trip_byte_for_byte,
    stats_and_next_due,
    next_due_sees_rows_made_due_before_the_last_claims,
    credentials_are_scoped_to_their_organization,
    batch_create_commits_items_independently,
    concurrent_batches_bind_each_run_to_one_organization,
    concurrent_batches_of_the_same_deliveries_create_each_once,
    a_batch_that_breaks_a_constraint_writes_nothing_and_the_store_goes_on,
);

const LEASE: Duration = Duration::from_secs(90);

fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
}

fn due_at(run: i64, at: OffsetDateTime) -> NewDelivery {
    NewDelivery {
        scheduled_for: Some(at),
        ..new_delivery(run, "node-1")
    }
}

fn attempt(n: u32, code: Option<u16>, error: Option<&str>) -> Attempt {
    Attempt {
        attempt_number: n,
        started_at: clock::now(),
        duration_ms: 12,
        status_code: code,
        error: error.map(str::to_string),
        response_excerpt: code.map(|c| format!("body of {c}")),
    }
}

/// Claims the one due row (asserting there is exactly one).
fn claim_one(store: &Arc<dyn Store>, now: OffsetDateTime) -> outbox::delivery::Claim {
    let mut claims = store.claim_due(now, 10, LEASE).unwrap();
    assert_eq!(claims.len(), 1, "expected exactly one due row");
    claims.remove(0)
}

fn outcome(claim: &outbox::delivery::Claim, transition: Transition, a: Option<Attempt>) -> Outcome {
    Outcome {
        delivery_id: claim.delivery.id,
        lease_token: claim.lease_token.clone(),
        transition,
        attempt: a,
    }
}

fn get(store: &Arc<dyn Store>, uuid: &str) -> outbox::delivery::DeliveryDetail {
    store.get(uuid).unwrap().expect("delivery exists")
}

fn get_or_create_reports_created(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (first, created) = store.create(&new_delivery(9, "node-1"), now).unwrap();
    assert!(created);
    assert_eq!(first.status, Status::Pending);
    assert_eq!(first.attempt_count, 0);
    assert_eq!(first.scheduled_for, Some(now));
    assert_eq!(first.max_attempts, 5);

    // The same run + node again, with another payload: the first row comes back, unchanged.
    let again = NewDelivery {
        payload: r#"{"event":"richer"}"#.into(),
        ..new_delivery(9, "node-1")
    };
    let (second, created) = store.create(&again, now + secs(1)).unwrap();
    assert!(!created);
    assert_eq!(second, first);

    // Another node of the same run is another delivery.
    let (third, created) = store.create(&new_delivery(9, "node-2"), now).unwrap();
    assert!(created);
    assert_ne!(third.delivery_uuid, first.delivery_uuid);
}

fn organization_mismatch_is_refused_and_writes_nothing(store: &Arc<dyn Store>) {
    let now = clock::now();
    store.create(&new_delivery(9, "node-1"), now).unwrap();
    let other_org = NewDelivery {
        organization_id: 8,
        ..new_delivery(9, "node-2")
    };
    let err = store.create(&other_org, now).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("belongs to organization"), "{message}");
    assert!(message.contains('7') && message.contains('8'), "{message}");
    let all = store
        .list(&ListFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        all.deliveries.len(),
        1,
        "the refused delivery was not written"
    );
}

fn claim_takes_due_rows_only_earliest_first_at_most_limit(store: &Arc<dyn Store>) {
    let now = clock::now();
    // Ids in the opposite order to due times, so "earliest due" differs from "lowest id".
    let mut uuid_by_offset = HashMap::new();
    for (run, offset) in [(1, -1), (2, -2), (3, -3), (4, -4), (5, -5)] {
        let (d, _) = store.create(&due_at(run, now + secs(offset)), now).unwrap();
        uuid_by_offset.insert(offset, d.delivery_uuid);
    }
    store.create(&due_at(6, now + secs(5)), now).unwrap();
    store.create(&due_at(7, now + secs(60)), now).unwrap();

    let first = store.claim_due(now, 3, LEASE).unwrap();
    let mut got: Vec<&str> = first
        .iter()
        .map(|c| c.delivery.delivery_uuid.as_str())
        .collect();
    got.sort();
    let mut want: Vec<&str> = [-5, -4, -3]
        .iter()
        .map(|o| uuid_by_offset[o].as_str())
        .collect();
    want.sort();
    assert_eq!(got, want, "the three earliest-due rows are claimed first");
    for c in &first {
        assert_eq!(c.delivery.attempt_count, 1);
        assert_eq!(c.attempt(), 1);
        assert_eq!(c.delivery.scheduled_for, Some(now + secs(90)));
        assert!(!c.lease_token.is_empty());
        assert_eq!(
            c.delivery,
            get(store, &c.delivery.delivery_uuid).delivery,
            "a claim hands out the row as stored"
        );
    }
    assert!(
        first
            .windows(2)
            .all(|w| w[0].delivery.id < w[1].delivery.id)
    );

    let second = store.claim_due(now, 10, LEASE).unwrap();
    assert_eq!(second.len(), 2, "only the two remaining due rows");
    assert_ne!(second[0].lease_token, first[0].lease_token);
    assert!(store.claim_due(now, 10, LEASE).unwrap().is_empty());
    // The future rows become due in their time.
    assert_eq!(store.claim_due(now + secs(5), 10, LEASE).unwrap().len(), 1);
}

fn concurrent_claimers_claim_each_row_exactly_once(store: &Arc<dyn Store>) {
    let now = clock::now();
    let rows: Vec<NewDelivery> = (0..4000).map(|i| new_delivery(i, "n")).collect();
    for chunk in rows.chunks(500) {
        for r in store.create_many(chunk, now).unwrap() {
            assert!(r.unwrap().1);
        }
    }
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let claims = store.claim_due(now, 37, LEASE).unwrap();
                    if claims.is_empty() {
                        return mine;
                    }
                    mine.extend(claims.into_iter().map(|c| c.delivery.id));
                }
            })
        })
        .collect();
    let mut counts: HashMap<i64, u32> = HashMap::new();
    for t in threads {
        for id in t.join().unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 4000, "every row claimed");
    assert!(counts.values().all(|&n| n == 1), "no row claimed twice");
}

fn expired_lease_makes_row_claimable_with_next_attempt(store: &Arc<dyn Store>) {
    let now = clock::now();
    store.create(&new_delivery(1, "n"), now).unwrap();
    let first = claim_one(store, now);
    assert_eq!(first.attempt(), 1);
    assert!(
        store
            .claim_due(now + secs(89), 10, LEASE)
            .unwrap()
            .is_empty(),
        "leased"
    );
    let second = claim_one(store, now + secs(90));
    assert_eq!(second.delivery.id, first.delivery.id);
    assert_eq!(second.attempt(), 2, "the lost attempt was counted");
    assert_ne!(second.lease_token, first.lease_token);
}

fn stale_token_outcome_changes_nothing(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store.create(&new_delivery(1, "n"), now).unwrap();
    let stale = claim_one(store, now);
    let fresh = claim_one(store, now + secs(91));
    let before = get(store, &d.delivery_uuid);

    let applied = store
        .record(
            &[outcome(
                &stale,
                Transition::Succeeded { status_code: 200 },
                Some(attempt(1, Some(200), None)),
            )],
            now + secs(95),
        )
        .unwrap();
    assert_eq!(applied, vec![false], "the stale write says it did nothing");
    assert_eq!(get(store, &d.delivery_uuid), before, "and did nothing");

    // The current holder's write goes through.
    let applied = store
        .record(
            &[outcome(
                &fresh,
                Transition::Succeeded { status_code: 204 },
                Some(attempt(2, Some(204), None)),
            )],
            now + secs(95),
        )
        .unwrap();
    assert_eq!(applied, vec![true]);
    // A second write with the now-used token is stale too.
    let applied = store
        .record(
            &[outcome(
                &fresh,
                Transition::DeadLetter {
                    status_code: None,
                    error: "late".into(),
                },
                None,
            )],
            now + secs(96),
        )
        .unwrap();
    assert_eq!(applied, vec![false]);
    assert_eq!(
        get(store, &d.delivery_uuid).delivery.status,
        Status::Succeeded
    );
}

fn succeeded_transition(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store.create(&new_delivery(1, "n"), now).unwrap();
    let c = claim_one(store, now);
    let a = attempt(1, Some(200), None);
    let later = now + secs(1);
    store
        .record(
            &[outcome(
                &c,
                Transition::Succeeded { status_code: 200 },
                Some(a.clone()),
            )],
            later,
        )
        .unwrap();
    let got = get(store, &d.delivery_uuid);
    assert_eq!(got.delivery.status, Status::Succeeded);
    assert_eq!(got.delivery.attempt_count, 1);
    assert_eq!(got.delivery.last_status_code, Some(200));
    assert_eq!(got.delivery.last_error, None);
    assert_eq!(got.delivery.scheduled_for, None);
    assert_eq!(got.delivery.updated_at, later);
    assert_eq!(got.attempts, vec![a]);
    assert!(
        store
            .claim_due(now + secs(1000), 10, LEASE)
            .unwrap()
            .is_empty()
    );
}

fn retry_transition_waits_until_due(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store.create(&new_delivery(1, "n"), now).unwrap();
    let c = claim_one(store, now);
    let at = now + secs(30);
    let long_error = "x".repeat(5000);
    store
        .record(
            &[outcome(
                &c,
                Transition::Retry {
                    at,
                    status_code: Some(503),
                    error: long_error.clone(),
                },
                Some(attempt(1, Some(503), Some("HTTP 503"))),
            )],
            now,
        )
        .unwrap();
    let got = get(store, &d.delivery_uuid).delivery;
    assert_eq!(got.status, Status::Pending);
    assert_eq!(got.scheduled_for, Some(at));
    assert_eq!(got.last_status_code, Some(503));
    assert_eq!(
        got.last_error.as_deref(),
        Some(&long_error[..2000]),
        "cut to 2000 chars"
    );
    assert!(store.claim_due(at - secs(1), 10, LEASE).unwrap().is_empty());
    let again = claim_one(store, at);
    assert_eq!(again.attempt(), 2);
}

fn dead_letter_transition(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store.create(&new_delivery(1, "n"), now).unwrap();
    let c = claim_one(store, now);
    store
        .record(
            &[outcome(
                &c,
                Transition::DeadLetter {
                    status_code: Some(401),
                    error: "HTTP 401: Unauthorized".into(),
                },
                Some(attempt(1, Some(401), Some("HTTP 401: Unauthorized"))),
            )],
            now,
        )
        .unwrap();
    let got = get(store, &d.delivery_uuid);
    assert_eq!(got.delivery.status, Status::DeadLetter);
    assert_eq!(got.delivery.scheduled_for, None);
    assert_eq!(got.delivery.last_status_code, Some(401));
    assert_eq!(
        got.delivery.last_error.as_deref(),
        Some("HTTP 401: Unauthorized")
    );
    assert_eq!(got.attempts.len(), 1);
    assert!(
        store
            .claim_due(now + secs(1000), 10, LEASE)
            .unwrap()
            .is_empty()
    );
}

fn release_gives_the_attempt_back(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store.create(&new_delivery(1, "n"), now).unwrap();
    let c = claim_one(store, now);
    store
        .record(
            &[outcome(
                &c,
                Transition::Retry {
                    at: now,
                    status_code: Some(500),
                    error: "HTTP 500".into(),
                },
                Some(attempt(1, Some(500), Some("HTTP 500"))),
            )],
            now,
        )
        .unwrap();
    let c = claim_one(store, now);
    assert_eq!(c.attempt(), 2);
    store
        .record(&[outcome(&c, Transition::Release { at: now }, None)], now)
        .unwrap();
    let got = get(store, &d.delivery_uuid);
    assert_eq!(
        got.delivery.attempt_count, 1,
        "the unsent attempt is given back"
    );
    assert_eq!(
        got.delivery.last_status_code,
        Some(500),
        "last outcome kept"
    );
    assert_eq!(got.delivery.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(got.attempts.len(), 1, "no attempt recorded for a release");
    assert_eq!(
        claim_one(store, now).attempt(),
        2,
        "due at once, same attempt number"
    );
}

fn exhausted_rows_are_not_claimed(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store
        .create(
            &NewDelivery {
                max_attempts: 2,
                ..new_delivery(1, "n")
            },
            now,
        )
        .unwrap();
    for n in 1..=2 {
        let c = claim_one(store, now);
        assert_eq!(c.attempt(), n);
        let transition = if n < 2 {
            Transition::Retry {
                at: now,
                status_code: None,
                error: "connection refused".into(),
            }
        } else {
            Transition::DeadLetter {
                status_code: None,
                error: "connection refused".into(),
            }
        };
        store
            .record(
                &[outcome(
                    &c,
                    transition,
                    Some(attempt(n, None, Some("refused"))),
                )],
                now,
            )
            .unwrap();
    }
    let got = get(store, &d.delivery_uuid);
    assert_eq!(got.delivery.status, Status::DeadLetter);
    assert_eq!(got.delivery.attempt_count, 2);
    assert_eq!(
        got.attempts
            .iter()
            .map(|a| a.attempt_number)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
}

fn final_lease_expiry_dead_letters_with_a_reason(store: &Arc<dyn Store>) {
    let now = clock::now();
    let (d, _) = store
        .create(
            &NewDelivery {
                max_attempts: 1,
                ..new_delivery(1, "n")
            },
            now,
        )
        .unwrap();
    let c = claim_one(store, now);
    assert_eq!(c.attempt(), 1);
    // The worker is lost. Before the lease ends nothing happens; after, the row is neither
    // claimed again (its budget is spent) nor left pending forever.
    assert!(
        store
            .expire_final_leases(now + secs(89))
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_due(now + secs(90), 10, LEASE)
            .unwrap()
            .is_empty()
    );
    let expired = store.expire_final_leases(now + secs(90)).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].delivery_uuid, d.delivery_uuid);
    let got = get(store, &d.delivery_uuid);
    assert_eq!(got.delivery.status, Status::DeadLetter);
    assert!(
        got.delivery
            .last_error
            .unwrap()
            .contains("outcome is unknown")
    );
    assert_eq!(got.attempts.len(), 1, "the lost attempt is in the history");
    // A late write by the lost worker changes nothing.
    let applied = store
        .record(
            &[outcome(
                &c,
                Transition::Succeeded { status_code: 200 },
                None,
            )],
            now,
        )
        .unwrap();
    assert_eq!(applied, vec![false]);
    assert!(
        store
            .expire_final_leases(now + secs(1000))
            .unwrap()
            .is_empty()
    );
}

fn dead_letter(store: &Arc<dyn Store>, run: i64, org: i64, now: OffsetDateTime) -> String {
    let (d, _) = store
        .create(
            &NewDelivery {
                organization_id: org,
                ..new_delivery(run, "n")
            },
            now,
        )
        .unwrap();
    let c = store
        .claim_due(now, 100, LEASE)
        .unwrap()
        .into_iter()
        .find(|c| c.delivery.id == d.id)
        .expect("claimed");
    store
        .record(
            &[outcome(
                &c,
                Transition::DeadLetter {
                    status_code: Some(404),
                    error: "HTTP 404".into(),
                },
                Some(attempt(1, Some(404), None)),
            )],
            now,
        )
        .unwrap();
    d.delivery_uuid
}

fn redrive_one_and_all(store: &Arc<dyn Store>) {
    let now = clock::now();
    let a = dead_letter(store, 1, 7, now);
    let b = dead_letter(store, 2, 7, now);
    let c = dead_letter(store, 3, 8, now);
    let later = now + secs(10);

    let Redrive::Redriven(d) = store.redrive(&a, later).unwrap() else {
        panic!("expected a redrive");
    };
    assert_eq!(d.status, Status::Pending);
    assert_eq!(d.attempt_count, 0, "fresh attempt budget");
    assert_eq!(d.scheduled_for, Some(later));
    assert_eq!(
        store.redrive(&a, later).unwrap(),
        Redrive::NotDeadLetter(Status::Pending)
    );
    assert_eq!(
        store.redrive("no-such-uuid", later).unwrap(),
        Redrive::NotFound
    );
    // Attempt numbers start again at 1; the history lists attempts in the order they were
    // recorded, even when the later one's clock (another instance's) reads earlier.
    let again = claim_one(store, later);
    assert_eq!(again.attempt(), 1);
    let behind = Attempt {
        started_at: now - secs(60),
        ..attempt(1, Some(200), None)
    };
    let success = outcome(
        &again,
        Transition::Succeeded { status_code: 200 },
        Some(behind),
    );
    assert_eq!(store.record(&[success], later).unwrap(), vec![true]);
    let history: Vec<(u32, Option<u16>)> = get(store, &a)
        .attempts
        .iter()
        .map(|t| (t.attempt_number, t.status_code))
        .collect();
    assert_eq!(history, vec![(1, Some(404)), (1, Some(200))]);

    assert_eq!(
        store.redrive_all(Some(8), later).unwrap(),
        1,
        "only organization 8"
    );
    assert_eq!(get(store, &b).delivery.status, Status::DeadLetter);
    assert_eq!(get(store, &c).delivery.status, Status::Pending);
    assert_eq!(store.redrive_all(None, later).unwrap(), 1);
    assert_eq!(get(store, &b).delivery.status, Status::Pending);
}

fn purge_deletes_old_terminal_rows_only(store: &Arc<dyn Store>) {
    let t0 = clock::now();
    let old_dead = dead_letter(store, 1, 7, t0);
    let (old_pending, _) = store.create(&due_at(2, t0 + secs(10_000)), t0).unwrap();
    let recent_dead = dead_letter(store, 3, 7, t0 + secs(100));
    let removed = store.purge(t0 + secs(50)).unwrap();
    assert_eq!(removed, 1);
    assert!(store.get(&old_dead).unwrap().is_none());
    assert!(
        store.get(&old_pending.delivery_uuid).unwrap().is_some(),
        "pending never purged"
    );
    assert!(store.get(&recent_dead).unwrap().is_some());
    assert_eq!(store.purge(t0 + secs(50)).unwrap(), 0);
}

fn keyset_pagination_walks_every_row_once(store: &Arc<dyn Store>) {
    let now = clock::now();
    let news: Vec<NewDelivery> = (0..25)
        .map(|i| NewDelivery {
            organization_id: if i % 2 == 0 { 7 } else { 8 },
            ..new_delivery(i, "n")
        })
        .collect();
    store.create_many(&news, now).unwrap();
    let walk = |filter: ListFilter| {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = store
                .list(&ListFilter {
                    after,
                    ..filter.clone()
                })
                .unwrap();
            pages += 1;
            seen.extend(page.deliveries.iter().map(|d| (d.id, d.organization_id)));
            match page.next_after {
                Some(next) => after = Some(next),
                None => return (seen, pages),
            }
        }
    };
    let (all, pages) = walk(ListFilter {
        limit: 10,
        ..Default::default()
    });
    assert_eq!(all.len(), 25);
    assert_eq!(pages, 3);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "ascending, no repeats"
    );
    let (org8, _) = walk(ListFilter {
        limit: 4,
        organization_id: Some(8),
        ..Default::default()
    });
    assert_eq!(org8.len(), 12);
    assert!(org8.iter().all(|(_, org)| *org == 8));
    let (pending, _) = walk(ListFilter {
        limit: 7,
        status: Some(Status::Pending),
        ..Default::default()
    });
    assert_eq!(pending.len(), 25);
    let (dead, _) = walk(ListFilter {
        limit: 7,
        status: Some(Status::DeadLetter),
        ..Default::default()
    });
    assert!(dead.is_empty());
}

fn listing_by_status_finds_each_status_among_the_others(store: &Arc<dyn Store>) {
    let now = clock::now();
    let news: Vec<NewDelivery> = (1..=7)
        .map(|run| NewDelivery {
            organization_id: if run == 5 { 8 } else { 7 },
            ..new_delivery(run, "n")
        })
        .collect();
    store.create_many(&news, now).unwrap();
    let claims = store.claim_due(now, 10, LEASE).unwrap();
    let dead = Transition::DeadLetter {
        status_code: Some(404),
        error: "HTTP 404".into(),
    };
    let outcomes: Vec<Outcome> = claims
        .iter()
        .map(|c| {
            let transition = match c.delivery.workflow_run_id {
                1 | 3 | 5 | 6 => dead.clone(),
                2 => Transition::Succeeded { status_code: 200 },
                _ => Transition::Release { at: now },
            };
            outcome(c, transition, None)
        })
        .collect();
    assert!(store.record(&outcomes, now).unwrap().iter().all(|&a| a));
    let run_of = |status, org, limit| {
        let mut runs = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list(&ListFilter {
                    status: Some(status),
                    organization_id: org,
                    limit,
                    after,
                })
                .unwrap();
            runs.extend(page.deliveries.iter().map(|d| d.workflow_run_id));
            assert!(page.deliveries.iter().all(|d| d.status == status));
            match page.next_after {
                Some(next) => after = Some(next),
                None => return runs,
            }
        }
    };
    assert_eq!(run_of(Status::DeadLetter, None, 1), vec![1, 3, 5, 6]);
    assert_eq!(run_of(Status::DeadLetter, Some(7), 2), vec![1, 3, 6]);
    assert_eq!(run_of(Status::DeadLetter, Some(8), 2), vec![5]);
    assert_eq!(run_of(Status::Succeeded, None, 2), vec![2]);
    assert_eq!(run_of(Status::Pending, None, 2), vec![4, 7]);

    let uuid_of = |run| {
        claims
            .iter()
            .find(|c| c.delivery.workflow_run_id == run)
            .unwrap()
    };
    let redriven = store
        .redrive(&uuid_of(3).delivery.delivery_uuid, now)
        .unwrap();
    assert!(matches!(redriven, Redrive::Redriven(_)));
    assert_eq!(run_of(Status::DeadLetter, None, 10), vec![1, 5, 6]);
    assert_eq!(run_of(Status::Pending, None, 10), vec![3, 4, 7]);
    assert_eq!(store.redrive_all(Some(7), now).unwrap(), 2);
    assert_eq!(run_of(Status::DeadLetter, None, 10), vec![5]);
    let stats = store.stats(now).unwrap();
    assert_eq!(
        (stats.pending, stats.succeeded, stats.dead_letter, stats.due),
        (5, 1, 1, 5)
    );
}

/// Creates, claims and records one delivery of `run`: every hot statement, so a backend that
/// keeps prepared statements has them prepared.
fn deliver_one(store: &Arc<dyn Store>, run: i64) {
    let now = clock::now();
    let (created, _) = store.create(&new_delivery(run, "node-1"), now).unwrap();
    let claim = claim_one(store, now);
    assert_eq!(claim.delivery.id, created.id);
    let recorded = store
        .record(
            &[outcome(
                &claim,
                Transition::Succeeded { status_code: 200 },
                Some(attempt(1, Some(200), None)),
            )],
            now,
        )
        .unwrap();
    assert_eq!(recorded, vec![true]);
    assert_eq!(get(store, &created.delivery_uuid).attempts.len(), 1);
}

fn migrations_up_down_up_leave_an_identical_schema(store: &Arc<dyn Store>) {
    deliver_one(store, 1);
    let before = store.schema_dump().unwrap();
    assert!(before.contains("webhook_deliveries"));
    assert!(store.migration_status().unwrap().iter().all(|m| m.applied));
    assert!(store.migrate_up().unwrap().is_empty(), "nothing pending");

    let versions: Vec<u32> = store
        .migration_status()
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    for &version in versions.iter().rev() {
        assert_eq!(store.migrate_down().unwrap(), Some(version), "latest first");
    }
    let down = store.schema_dump().unwrap();
    assert!(!down.contains("webhook_deliveries"), "{down}");
    assert!(store.migration_status().unwrap().iter().all(|m| !m.applied));
    assert!(outbox::store::check_schema(store.as_ref()).is_err());
    assert_eq!(
        store.migrate_down().unwrap(),
        None,
        "nothing left to roll back"
    );

    assert_eq!(store.migrate_up().unwrap(), versions);
    assert_eq!(store.schema_dump().unwrap(), before);
    outbox::store::check_schema(store.as_ref()).unwrap();
    // Statements prepared before the tables were dropped work on the new ones.
    deliver_one(store, 2);
}

fn payload_and_headers_round_trip_byte_for_byte(store: &Arc<dyn Store>) {
    let now = clock::now();
    // Key order, spacing, escapes, unicode and a number beyond f64 must all survive.
    let payload = "{ \"z\":1,  \"a\" : [1.0e3, \"é\\u00e9\\n\"],\n\"big\": 123456789012345678901234567890, \"emoji\":\"🦀\"}";
    let headers = vec![
        Header {
            key: "X-Idempotency-Key".into(),
            value: "  spaced  value ".into(),
        },
        Header {
            key: "X-Unicode".into(),
            value: "ünï \"quoted\"".into(),
        },
    ];
    let new = NewDelivery {
        payload: payload.into(),
        custom_headers: headers.clone(),
        ..new_delivery(1, "n")
    };
    let (created, _) = store.create(&new, now).unwrap();
    assert_eq!(created.payload, payload);
    assert_eq!(created.custom_headers, headers);
    let got = get(store, &created.delivery_uuid).delivery;
    assert_eq!(got.payload, payload);
    assert_eq!(got.custom_headers, headers);
    let claimed = claim_one(store, now);
    assert_eq!(claimed.delivery.payload, payload);
    assert_eq!(claimed.delivery.custom_headers, headers);
    let listed = store
        .list(&ListFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.deliveries[0].payload, payload);
}

fn stats_and_next_due(store: &Arc<dyn Store>) {
    let now = clock::now();
    assert_eq!(store.next_due_at().unwrap(), None);
    store.create(&due_at(1, now - secs(5)), now).unwrap();
    store.create(&due_at(2, now - secs(2)), now).unwrap();
    store.create(&due_at(3, now + secs(60)), now).unwrap();
    dead_letter(store, 4, 7, now - secs(10));
    let stats = store.stats(now).unwrap();
    assert_eq!(stats.pending, 3);
    assert_eq!(stats.dead_letter, 1);
    assert_eq!(stats.succeeded, 0);
    assert_eq!(stats.due, 2);
    assert_eq!(stats.oldest_due_ms, Some(5000));
    assert_eq!(store.next_due_at().unwrap(), Some(now - secs(5)));
    store.claim_due(now, 10, LEASE).unwrap();
    let stats = store.stats(now).unwrap();
    assert_eq!(stats.due, 0, "leased rows are not due");
    assert_eq!(stats.oldest_due_ms, None);
    assert_eq!(store.next_due_at().unwrap(), Some(now + secs(60)));
}

/// Rows this store makes due before the rows it last claimed (a retry, an enqueue due in the
/// past) are what the engine sleeps until: PostgreSQL's answer starts at its claim floor,
/// which they must lower.
fn next_due_sees_rows_made_due_before_the_last_claims(store: &Arc<dyn Store>) {
    let now = clock::now();
    store.create(&due_at(1, now - secs(10)), now).unwrap();
    store.create(&due_at(2, now - secs(5)), now).unwrap();
    let claim = || store.claim_due(now, 1, LEASE).unwrap().remove(0);
    let first = claim();
    assert_eq!(first.delivery.workflow_run_id, 1);
    assert_eq!(claim().delivery.workflow_run_id, 2);
    assert_eq!(
        store.next_due_at().unwrap(),
        Some(now + secs(90)),
        "the leases"
    );

    let retry = Transition::Retry {
        at: now + secs(30),
        status_code: Some(503),
        error: "HTTP 503".into(),
    };
    assert_eq!(
        store.record(&[outcome(&first, retry, None)], now).unwrap(),
        vec![true]
    );
    assert_eq!(
        store.next_due_at().unwrap(),
        Some(now + secs(30)),
        "the retry"
    );

    store.create(&due_at(3, now - secs(60)), now).unwrap();
    assert_eq!(
        store.next_due_at().unwrap(),
        Some(now - secs(60)),
        "an enqueue due before both"
    );
}

fn credentials_are_scoped_to_their_organization(store: &Arc<dyn Store>) {
    let now = clock::now();
    let cred = StoredCredential {
        credential_uuid: "cred-1".into(),
        organization_id: 7,
        credential_type: "bearer_token".into(),
        sealed_data: vec![1, 2, 3, 0, 255],
        created_at: now,
        updated_at: now,
    };
    assert!(store.put_credential(&cred).unwrap(), "created");
    assert_eq!(
        store.get_credential("cred-1", 7).unwrap(),
        Some(cred.clone())
    );
    assert_eq!(
        store.get_credential("cred-1", 8).unwrap(),
        None,
        "other org sees nothing"
    );

    let rotated = StoredCredential {
        sealed_data: vec![9, 9],
        updated_at: now + secs(1),
        ..cred.clone()
    };
    assert!(!store.put_credential(&rotated).unwrap(), "replaced");
    let got = store.get_credential("cred-1", 7).unwrap().unwrap();
    assert_eq!(got.sealed_data, vec![9, 9]);
    assert_eq!(got.created_at, now, "creation time kept");

    let hijack = StoredCredential {
        organization_id: 8,
        ..cred.clone()
    };
    let err = store.put_credential(&hijack).unwrap_err();
    assert!(matches!(err, outbox::Error::Conflict(_)), "{err}");
    assert_eq!(
        store
            .get_credential("cred-1", 7)
            .unwrap()
            .unwrap()
            .sealed_data,
        vec![9, 9]
    );

    assert!(!store.delete_credential("cred-1", 8).unwrap());
    assert!(store.delete_credential("cred-1", 7).unwrap());
    assert_eq!(store.get_credential("cred-1", 7).unwrap(), None);
}

fn batch_create_commits_items_independently(store: &Arc<dyn Store>) {
    let now = clock::now();
    store.create(&new_delivery(1, "n"), now).unwrap();
    let batch = vec![
        new_delivery(2, "n"),
        NewDelivery {
            organization_id: 99,
            ..new_delivery(1, "other")
        },
        new_delivery(2, "n"),
        new_delivery(3, "n"),
    ];
    let results = store.create_many(&batch, now).unwrap();
    assert_eq!(results.len(), 4);
    assert!(results[0].as_ref().unwrap().1);
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("belongs to organization")
    );
    let (dup, created) = results[2].as_ref().unwrap();
    assert!(!created, "the same run+node twice in one batch");
    assert_eq!(dup.id, results[0].as_ref().unwrap().0.id);
    assert!(results[3].as_ref().unwrap().1);
    let page = store
        .list(&ListFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.deliveries.len(), 3);
}

/// Two batches at once name the same runs for two organizations, in opposite orders (each
/// would wait on the other's bindings, were runs bound in item order): both batches commit,
/// and each run has one organization and only that organization's delivery.
fn concurrent_batches_bind_each_run_to_one_organization(store: &Arc<dyn Store>) {
    let now = clock::now();
    for round in 0..5 {
        let runs: Vec<i64> = (1..=50).map(|r| round * 100 + r).collect();
        let batches = [(1, runs.clone()), (2, runs.iter().rev().copied().collect())];
        let threads: Vec<_> = batches
            .into_iter()
            .map(|(organization_id, runs)| {
                let store = Arc::clone(store);
                std::thread::spawn(move || {
                    let news: Vec<NewDelivery> = runs
                        .iter()
                        .map(|&run| NewDelivery {
                            organization_id,
                            ..new_delivery(run, &format!("node-{organization_id}"))
                        })
                        .collect();
                    let results = store.create_many(&news, now).expect("the batch commits");
                    let created: Vec<(i64, i64)> = results
                        .iter()
                        .filter_map(|r| r.as_ref().ok())
                        .map(|(d, created)| {
                            assert!(created);
                            (d.workflow_run_id, d.organization_id)
                        })
                        .collect();
                    let refused = results.iter().filter(|r| r.is_err()).count();
                    assert_eq!(created.len() + refused, runs.len());
                    created
                })
            })
            .collect();
        let mut owner: HashMap<i64, i64> = HashMap::new();
        for t in threads {
            for (run, organization) in t.join().unwrap() {
                assert_eq!(owner.insert(run, organization), None, "run {run} won twice");
            }
        }
        assert_eq!(owner.len(), runs.len(), "every run went to someone");
        let page = store
            .list(&ListFilter {
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        let stored: Vec<_> = page
            .deliveries
            .iter()
            .filter(|d| runs.contains(&d.workflow_run_id))
            .map(|d| (d.workflow_run_id, d.organization_id))
            .collect();
        assert_eq!(stored.len(), runs.len(), "one delivery a run");
        assert!(stored.iter().all(|(run, org)| owner[run] == *org));
    }
}

/// Two batches at once carry the same deliveries, of runs already bound, in opposite orders
/// (each would wait on the other's rows, were rows inserted in item order): both commit, and
/// each delivery is created once; the other batch gets that row back.
fn concurrent_batches_of_the_same_deliveries_create_each_once(store: &Arc<dyn Store>) {
    let now = clock::now();
    for round in 0..5 {
        let runs = (1..=500).map(|r| round * 1000 + r);
        // The runs are bound already, so neither batch waits on the other's bindings.
        let bound: Vec<NewDelivery> = runs.clone().map(|r| new_delivery(r, "first")).collect();
        store.create_many(&bound, now).unwrap();
        let news: Vec<NewDelivery> = runs.map(|r| new_delivery(r, "n")).collect();
        let threads: Vec<_> = [news.clone(), news.iter().rev().cloned().collect()]
            .into_iter()
            .map(|news| {
                let store = Arc::clone(store);
                std::thread::spawn(move || {
                    let results = store.create_many(&news, now).expect("the batch commits");
                    results
                        .into_iter()
                        .map(|r| r.map(|(d, created)| (d.workflow_run_id, d.id, created)))
                        .collect::<outbox::Result<Vec<_>>>()
                        .unwrap()
                })
            })
            .collect();
        let mut seen: HashMap<i64, Vec<(i64, bool)>> = HashMap::new();
        for t in threads {
            for (run, id, created) in t.join().unwrap() {
                seen.entry(run).or_default().push((id, created));
            }
        }
        assert_eq!(seen.len(), news.len());
        for (run, both) in seen {
            assert_eq!(both.len(), 2);
            assert_eq!(both[0].0, both[1].0, "run {run}: the same row to both");
            assert!(both[0].1 != both[1].1, "run {run}: created once: {both:?}");
        }
    }
}

/// The API validates before it writes, so only a caller of the store itself can break a
/// constraint; when one does, the whole batch is undone (SQLite's `OR ROLLBACK` ends the
/// transaction inside the statement) and the next write works as usual.
fn a_batch_that_breaks_a_constraint_writes_nothing_and_the_store_goes_on(store: &Arc<dyn Store>) {
    let now = clock::now();
    let batch = vec![
        new_delivery(1, "n"),
        NewDelivery {
            http_method: "TRACE".into(),
            ..new_delivery(2, "n")
        },
        new_delivery(3, "n"),
    ];
    assert!(store.create_many(&batch, now).is_err());
    let all = ListFilter {
        limit: 100,
        ..Default::default()
    };
    assert!(store.list(&all).unwrap().deliveries.is_empty());

    deliver_one(store, 1);
    assert_eq!(store.list(&all).unwrap().deliveries.len(), 1);
}
