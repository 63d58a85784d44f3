//! The delivery engine against real HTTP receivers on 127.0.0.1, on both backends. Each
//! receiver fails the way real ones do: 5xx, 429 with Retry-After, redirects, slowness,
//! resets, refused connections. Counterparts of the origin's delivery tests are marked.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::receiver::{Receiver, Reply, refused_url};
use common::{RunningEngine, TestStore, fast_engine_config, new_delivery, wait_terminal};
use outbox::clock;
use outbox::delivery::{DeliveryDetail, Header, NewDelivery, Status};
use outbox::store::Store;
use serde_json::json;

macro_rules! engine_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(&super::common::sqlite()); })*
        }
        mod postgres {
            $(#[test] fn $name() {
                if let Some(t) = super::common::postgres() { super::$name(&t); }
            })*
        }
    };
}

engine_suite!(
    delivers_200_with_headers_and_frozen_body,
    retries_503_then_succeeds_with_the_same_delivery_id,
    honours_retry_after_on_429,
    dead_letters_401_after_one_attempt,
    does_not_follow_301,
    refused_connection_retries_then_dead_letters,
    slow_response_times_out_and_is_retried,
    reset_mid_response_is_retried,
    exhausted_attempts_dead_letter_at_max,
    credentials_are_applied_and_rotation_takes_effect_next_attempt,
    missing_credential_is_never_sent_without_auth,
    get_and_delete_carry_no_body_and_no_content_type,
    succeeded_delivery_is_never_sent_again,
    a_row_written_without_a_wake_is_found_by_the_poll,
    keeps_its_connection_while_deliveries_come_one_at_a_time,
    graceful_shutdown_hands_back_unsent_claims,
);

const WAIT: Duration = Duration::from_secs(20);

fn enqueue(t: &TestStore, new: NewDelivery) -> String {
    let (d, created) = t.store.create(&new, clock::now()).unwrap();
    assert!(created);
    d.delivery_uuid
}

fn to(receiver: &Receiver, run: i64) -> NewDelivery {
    NewDelivery {
        endpoint_url: receiver.url(),
        ..new_delivery(run, "node-1")
    }
}

fn run_one(t: &TestStore, receiver: &Receiver, new: NewDelivery) -> DeliveryDetail {
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    let uuid = enqueue(t, new);
    engine.wake();
    let _ = receiver;
    wait_terminal(&t.store, &uuid, WAIT)
}

fn codes(detail: &DeliveryDetail) -> Vec<Option<u16>> {
    detail.attempts.iter().map(|a| a.status_code).collect()
}

/// Origin: test_deliver_webhook_success -> succeeded(1, 1, 200).
fn delivers_200_with_headers_and_frozen_body(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let payload = r#"{"event":"call_done", "n": 1.50, "text":"ü"}"#;
    let new = NewDelivery {
        payload: payload.into(),
        custom_headers: vec![Header {
            key: "X-Source".into(),
            value: "dograh".into(),
        }],
        ..to(&receiver, 42)
    };
    let detail = run_one(t, &receiver, new);
    let d = &detail.delivery;
    assert_eq!(d.status, Status::Succeeded);
    assert_eq!(d.attempt_count, 1);
    assert_eq!(d.last_status_code, Some(200));
    assert_eq!(d.last_error, None);
    assert_eq!(codes(&detail), vec![Some(200)]);

    let got = receiver.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.body,
        payload.as_bytes(),
        "the frozen payload, byte for byte"
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.header("X-Dograh-Delivery-Id"),
        Some(d.delivery_uuid.as_str())
    );
    assert_eq!(r.header("X-Dograh-Workflow-Run-Id"), Some("42"));
    assert_eq!(r.header("X-Dograh-Delivery-Attempt"), Some("1"));
    assert_eq!(r.header("X-Source"), Some("dograh"));
    assert!(r.header("User-Agent").unwrap().starts_with("outbox/"));
}

/// Origin: test_deliver_webhook_retryable_5xx_schedules_retry.
fn retries_503_then_succeeds_with_the_same_delivery_id(t: &TestStore) {
    let receiver = Receiver::start(vec![Reply::Status(503)], Reply::Status(200));
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(detail.delivery.attempt_count, 2);
    assert_eq!(detail.delivery.last_status_code, Some(200));
    assert_eq!(detail.delivery.last_error, None);
    assert_eq!(codes(&detail), vec![Some(503), Some(200)]);
    assert!(
        detail.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("HTTP 503")
    );
    let got = receiver.wait_for(2, WAIT);
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("X-Dograh-Delivery-Id").unwrap())
        .collect();
    assert_eq!(ids, vec![detail.delivery.delivery_uuid.as_str(); 2]);
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("X-Dograh-Delivery-Attempt").unwrap())
        .collect();
    assert_eq!(attempts, vec!["1", "2"]);
}

fn honours_retry_after_on_429(t: &TestStore) {
    let receiver = Receiver::start(
        vec![Reply::StatusWithHeaders(
            429,
            vec![("Retry-After".into(), "2".into())],
        )],
        Reply::Status(200),
    );
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(codes(&detail), vec![Some(429), Some(200)]);
    let got = receiver.wait_for(2, WAIT);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "second attempt after {gap:?}, before Retry-After"
    );
}

/// Origin: test_deliver_webhook_permanent_4xx_dead_letters.
fn dead_letters_401_after_one_attempt(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(401));
    let detail = run_one(t, &receiver, to(&receiver, 1));
    let d = &detail.delivery;
    assert_eq!(d.status, Status::DeadLetter);
    assert_eq!(d.attempt_count, 1);
    assert_eq!(d.last_status_code, Some(401));
    assert!(d.last_error.as_deref().unwrap().starts_with("HTTP 401"));
    assert_eq!(d.scheduled_for, None);
    assert_eq!(codes(&detail), vec![Some(401)]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        receiver.received().len(),
        1,
        "no retry of a permanent failure"
    );
}

fn does_not_follow_301(t: &TestStore) {
    let elsewhere = Receiver::start(vec![], Reply::Status(200));
    let receiver = Receiver::start(
        vec![],
        Reply::StatusWithHeaders(301, vec![("Location".into(), elsewhere.url())]),
    );
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::DeadLetter);
    assert_eq!(detail.delivery.attempt_count, 1);
    assert_eq!(detail.delivery.last_status_code, Some(301));
    assert!(elsewhere.received().is_empty(), "Location not followed");
}

/// Origin: test_deliver_webhook_transient_error_schedules_retry (ConnectTimeout).
fn refused_connection_retries_then_dead_letters(t: &TestStore) {
    let url = refused_url();
    let new = NewDelivery {
        endpoint_url: url,
        max_attempts: 3,
        ..new_delivery(1, "n")
    };
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    let uuid = enqueue(t, new);
    engine.wake();
    let detail = wait_terminal(&t.store, &uuid, WAIT);
    let d = &detail.delivery;
    assert_eq!(d.status, Status::DeadLetter);
    assert_eq!(d.attempt_count, 3);
    assert_eq!(d.last_status_code, None);
    assert!(d.last_error.is_some());
    assert_eq!(codes(&detail), vec![None, None, None]);
    assert!(detail.attempts.iter().all(|a| a.error.is_some()));
    assert_eq!(
        detail
            .attempts
            .iter()
            .map(|a| a.attempt_number)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

fn slow_response_times_out_and_is_retried(t: &TestStore) {
    let receiver = Receiver::start(
        vec![Reply::Slow {
            delay: Duration::from_secs(3),
            status: 200,
        }],
        Reply::Status(200),
    );
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(codes(&detail), vec![None, Some(200)]);
    let first = &detail.attempts[0];
    assert!(
        first
            .error
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("timeout"),
        "{first:?}"
    );
    assert!(first.duration_ms < 2500, "the 1 s deadline held: {first:?}");
}

fn reset_mid_response_is_retried(t: &TestStore) {
    let receiver = Receiver::start(vec![Reply::ResetMidResponse], Reply::Status(200));
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(codes(&detail), vec![None, Some(200)]);
    assert!(detail.attempts[0].error.is_some());
}

/// Origin: test_deliver_webhook_exhausted_attempts_dead_letters (attempt 5 of 5).
fn exhausted_attempts_dead_letter_at_max(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(503));
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::DeadLetter);
    assert_eq!(detail.delivery.attempt_count, 5);
    assert_eq!(detail.delivery.last_status_code, Some(503));
    assert_eq!(codes(&detail), vec![Some(503); 5]);
    assert_eq!(receiver.received().len(), 5);
}

fn credentials_are_applied_and_rotation_takes_effect_next_attempt(t: &TestStore) {
    let receiver = Receiver::start(vec![Reply::Status(500)], Reply::Status(200));
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    engine
        .vault
        .put(
            "cred-1",
            7,
            "bearer_token",
            &json!({"token": "first"}),
            clock::now(),
        )
        .unwrap();
    let new = NewDelivery {
        credential_uuid: Some("cred-1".into()),
        ..to(&receiver, 1)
    };
    let uuid = enqueue(t, new);
    engine.wake();
    let first = receiver.wait_for(1, WAIT);
    assert_eq!(first[0].header("Authorization"), Some("Bearer first"));
    engine
        .vault
        .put(
            "cred-1",
            7,
            "bearer_token",
            &json!({"token": "second"}),
            clock::now(),
        )
        .unwrap();
    let detail = wait_terminal(&t.store, &uuid, WAIT);
    assert_eq!(detail.delivery.status, Status::Succeeded);
    let got = receiver.wait_for(2, WAIT);
    assert_eq!(
        got[1].header("Authorization"),
        Some("Bearer second"),
        "rotated"
    );

    // api_key with a custom header name, basic_auth.
    let r2 = Receiver::start(vec![], Reply::Status(200));
    engine
        .vault
        .put(
            "cred-2",
            7,
            "api_key",
            &json!({"api_key": "k-123", "header_name": "X-Key"}),
            clock::now(),
        )
        .unwrap();
    engine
        .vault
        .put(
            "cred-3",
            7,
            "basic_auth",
            &json!({"username": "u", "password": "p"}),
            clock::now(),
        )
        .unwrap();
    for (run, cred) in [(2, "cred-2"), (3, "cred-3")] {
        let uuid = enqueue(
            t,
            NewDelivery {
                credential_uuid: Some(cred.into()),
                ..to(&r2, run)
            },
        );
        engine.wake();
        assert_eq!(
            wait_terminal(&t.store, &uuid, WAIT).delivery.status,
            Status::Succeeded
        );
    }
    let got = r2.wait_for(2, WAIT);
    let find = |run: &str| {
        got.iter()
            .find(|r| r.header("X-Dograh-Workflow-Run-Id") == Some(run))
            .unwrap()
    };
    assert_eq!(find("2").header("X-Key"), Some("k-123"));
    assert_eq!(find("3").header("Authorization"), Some("Basic dTpw"));
}

fn missing_credential_is_never_sent_without_auth(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    // The credential exists, but in another organization: it must not be used.
    engine
        .vault
        .put(
            "cred-x",
            8,
            "bearer_token",
            &json!({"token": "other-org"}),
            clock::now(),
        )
        .unwrap();
    let new = NewDelivery {
        credential_uuid: Some("cred-x".into()),
        max_attempts: 2,
        ..to(&receiver, 1)
    };
    let uuid = enqueue(t, new);
    engine.wake();
    let detail = wait_terminal(&t.store, &uuid, WAIT);
    assert_eq!(detail.delivery.status, Status::DeadLetter);
    assert_eq!(
        detail.delivery.attempt_count, 2,
        "retried, then dead-lettered"
    );
    let error = detail.delivery.last_error.unwrap();
    assert!(
        error.contains("cred-x") && error.contains("not found"),
        "{error}"
    );
    assert!(
        receiver.received().is_empty(),
        "never sent without its credential"
    );
}

fn get_and_delete_carry_no_body_and_no_content_type(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(204));
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    for (run, method) in [(1, "GET"), (2, "DELETE"), (3, "PUT"), (4, "PATCH")] {
        let uuid = enqueue(
            t,
            NewDelivery {
                http_method: method.into(),
                ..to(&receiver, run)
            },
        );
        engine.wake();
        assert_eq!(
            wait_terminal(&t.store, &uuid, WAIT).delivery.status,
            Status::Succeeded
        );
    }
    let got = receiver.wait_for(4, WAIT);
    for r in &got {
        let has_body = matches!(r.method.as_str(), "PUT" | "PATCH");
        assert_eq!(r.body.is_empty(), !has_body, "{} body", r.method);
        assert_eq!(
            r.header("Content-Type").is_some(),
            has_body,
            "{} content type",
            r.method
        );
        assert!(r.header("X-Dograh-Delivery-Id").is_some());
    }
    let mut methods: Vec<_> = got.iter().map(|r| r.method.clone()).collect();
    methods.sort();
    assert_eq!(methods, vec!["DELETE", "GET", "PATCH", "PUT"]);
}

/// Origin: test_deliver_webhook_no_op_when_claim_fails: a delivery that is not claimable is
/// not sent. Here: once succeeded, no engine sends it again, even two engines polling.
fn succeeded_delivery_is_never_sent_again(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let detail = run_one(t, &receiver, to(&receiver, 1));
    assert_eq!(detail.delivery.status, Status::Succeeded);
    let _a = RunningEngine::start(&t.store, fast_engine_config());
    let _b = RunningEngine::start(&t.store, fast_engine_config());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received().len(), 1);
}

/// As another process's insert: no wake. An idle claimer polls with one read, and a row
/// found due there is claimed and sent.
fn a_row_written_without_a_wake_is_found_by_the_poll(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let _engine = RunningEngine::start(&t.store, fast_engine_config());
    // Several polls with nothing due: the claimer is in its idle loop.
    std::thread::sleep(Duration::from_millis(300));
    let uuid = enqueue(t, to(&receiver, 1));
    let detail = wait_terminal(&t.store, &uuid, WAIT);
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(receiver.received().len(), 1);
}

/// At a low rate the engine goes idle between deliveries; it must not drop its kept-alive
/// connection each time (it gives memory back only after a few seconds of idleness).
fn keeps_its_connection_while_deliveries_come_one_at_a_time(t: &TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    for run in 1..=5 {
        let uuid = enqueue(t, to(&receiver, run));
        engine.wake();
        assert_eq!(
            wait_terminal(&t.store, &uuid, WAIT).delivery.status,
            Status::Succeeded
        );
        // Idle for a few polls before the next one.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(receiver.received().len(), 5);
    assert_eq!(receiver.connections(), 1);
}

fn graceful_shutdown_hands_back_unsent_claims(t: &TestStore) {
    let receiver = Receiver::start(
        vec![],
        Reply::Slow {
            delay: Duration::from_millis(400),
            status: 200,
        },
    );
    let config = outbox::config::EngineConfig {
        senders: 1,
        ..fast_engine_config()
    };
    // Enqueued first, so the first claim takes all six and five wait in the queue.
    let uuids: Vec<String> = (0..6).map(|run| enqueue(t, to(&receiver, run))).collect();
    let mut engine = RunningEngine::start(&t.store, config);
    receiver.wait_for(1, WAIT);
    let report = engine.shutdown().unwrap();
    assert!(report.clean, "{report:?}");
    assert_eq!(report.released, 5, "{report:?}");
    let details: Vec<DeliveryDetail> = uuids
        .iter()
        .map(|u| t.store.get(u).unwrap().unwrap())
        .collect();
    let sent = receiver.received().len();
    let succeeded = details
        .iter()
        .filter(|d| d.delivery.status == Status::Succeeded)
        .count();
    assert_eq!(
        succeeded, sent,
        "the send under way finished and was recorded"
    );
    for d in details
        .iter()
        .filter(|d| d.delivery.status == Status::Pending)
    {
        assert_eq!(
            d.delivery.attempt_count, 0,
            "a handed-back claim spends no attempt"
        );
        assert!(d.attempts.is_empty());
        assert!(
            d.delivery.scheduled_for.unwrap() <= clock::now(),
            "due at once"
        );
    }
    // Another engine picks the rest up.
    let _next = RunningEngine::start(&t.store, fast_engine_config());
    for u in &uuids {
        assert_eq!(
            wait_terminal(&t.store, u, WAIT).delivery.status,
            Status::Succeeded
        );
    }
}

#[test]
fn a_lease_shorter_than_the_deadline_refuses_to_start() {
    let t = common::sqlite();
    let mut config = fast_engine_config();
    config.lease = config.http.timeout;
    let key = outbox::secret_box::MasterKey::generate().unwrap();
    let vault = Arc::new(outbox::vault::Vault::new(Arc::clone(&t.store), key));
    let result = outbox::engine::Engine::start(
        Arc::clone(&t.store),
        Arc::new(outbox::send::UreqSender::new(&config.http).unwrap()),
        vault,
        Arc::new(outbox::clock::SystemClock),
        config,
        Arc::default(),
    );
    let message = result.err().expect("refused").to_string();
    assert!(message.contains("OUTBOX_LEASE_SECONDS"), "{message}");
}

fn failing_store(t: &TestStore) -> (Arc<FailingRecords>, Arc<dyn Store>) {
    let failing = Arc::new(FailingRecords {
        inner: Arc::clone(&t.store),
        fail: std::sync::atomic::AtomicBool::new(true),
    });
    let store: Arc<dyn Store> = failing.clone();
    (failing, store)
}

/// An outcome write that fails is retried: the database comes back within the lease, the
/// success is recorded, and nothing is sent twice.
#[test]
fn a_failed_outcome_write_is_retried() {
    let t = common::sqlite();
    let (failing, store) = failing_store(&t);
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let engine = RunningEngine::start(&store, fast_engine_config());
    let uuid = enqueue(&t, to(&receiver, 1));
    engine.wake();
    receiver.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        t.store.get(&uuid).unwrap().unwrap().delivery.status,
        Status::Pending
    );
    failing
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let detail = wait_terminal(&t.store, &uuid, WAIT);
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(detail.attempts.len(), 1);
    assert_eq!(receiver.received().len(), 1);
    assert!(
        engine
            .metrics
            .record_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

/// Origin: test_deliver_webhook_delivered_but_record_failure_does_not_dead_letter. The 2xx
/// cannot be recorded for longer than the lease: the row is neither dead-lettered nor retried
/// as a failure; after its lease it is sent again with the same delivery id, then recorded.
#[test]
fn delivered_but_unrecorded_is_resent_with_the_same_id_never_dead_lettered() {
    let t = common::sqlite();
    let (failing, store) = failing_store(&t);
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let engine = RunningEngine::start(&store, fast_engine_config());
    let uuid = enqueue(&t, to(&receiver, 1));
    engine.wake();
    receiver.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let d = t.store.get(&uuid).unwrap().unwrap().delivery;
    assert_eq!(
        d.status,
        Status::Pending,
        "not dead-lettered, not retried as a failure"
    );
    assert_eq!(d.last_error, None);
    // The lease (6 s) runs out while writes still fail: the row is sent again.
    let got = receiver.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "re-sent after the lease");
    failing
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let detail = wait_terminal(&t.store, &uuid, WAIT);
    assert_eq!(detail.delivery.status, Status::Succeeded);
    assert_eq!(detail.delivery.attempt_count, 2);
    let got = receiver.received();
    assert!(
        got.iter()
            .all(|r| r.header("X-Dograh-Delivery-Id") == Some(uuid.as_str()))
    );
    assert_eq!(got[1].header("X-Dograh-Delivery-Attempt"), Some("2"));
}

/// A real store whose outcome writes fail while `fail` is set: a database that is down for
/// writes. Everything else goes to the real store.
struct FailingRecords {
    inner: Arc<dyn Store>,
    fail: std::sync::atomic::AtomicBool,
}

use outbox::delivery::{
    Claim, Delivery, Expired, ListFilter, MigrationState, Outcome, Page, Redrive, Stats,
    StoredCredential,
};
use time::OffsetDateTime;

impl Store for FailingRecords {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn migrate_up(&self) -> outbox::Result<Vec<u32>> {
        self.inner.migrate_up()
    }
    fn migrate_down(&self) -> outbox::Result<Option<u32>> {
        self.inner.migrate_down()
    }
    fn migration_status(&self) -> outbox::Result<Vec<MigrationState>> {
        self.inner.migration_status()
    }
    fn schema_dump(&self) -> outbox::Result<String> {
        self.inner.schema_dump()
    }
    fn create_many(
        &self,
        new: &[NewDelivery],
        now: OffsetDateTime,
    ) -> outbox::Result<Vec<outbox::Result<(Delivery, bool)>>> {
        self.inner.create_many(new, now)
    }
    fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> outbox::Result<Vec<Claim>> {
        self.inner.claim_due(now, limit, lease)
    }
    fn record(&self, outcomes: &[Outcome], now: OffsetDateTime) -> outbox::Result<Vec<bool>> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(outbox::Error::Unavailable(
                "injected: database down for writes".into(),
            ));
        }
        self.inner.record(outcomes, now)
    }
    fn expire_final_leases(&self, now: OffsetDateTime) -> outbox::Result<Vec<Expired>> {
        self.inner.expire_final_leases(now)
    }
    fn get(&self, uuid: &str) -> outbox::Result<Option<DeliveryDetail>> {
        self.inner.get(uuid)
    }
    fn list(&self, filter: &ListFilter) -> outbox::Result<Page> {
        self.inner.list(filter)
    }
    fn redrive(&self, uuid: &str, now: OffsetDateTime) -> outbox::Result<Redrive> {
        self.inner.redrive(uuid, now)
    }
    fn redrive_all(&self, org: Option<i64>, now: OffsetDateTime) -> outbox::Result<u64> {
        self.inner.redrive_all(org, now)
    }
    fn purge(&self, older_than: OffsetDateTime) -> outbox::Result<u64> {
        self.inner.purge(older_than)
    }
    fn stats(&self, now: OffsetDateTime) -> outbox::Result<Stats> {
        self.inner.stats(now)
    }
    fn next_due_at(&self) -> outbox::Result<Option<OffsetDateTime>> {
        self.inner.next_due_at()
    }
    fn put_credential(&self, c: &StoredCredential) -> outbox::Result<bool> {
        self.inner.put_credential(c)
    }
    fn get_credential(&self, uuid: &str, org: i64) -> outbox::Result<Option<StoredCredential>> {
        self.inner.get_credential(uuid, org)
    }
    fn delete_credential(&self, uuid: &str, org: i64) -> outbox::Result<bool> {
        self.inner.delete_credential(uuid, org)
    }
}
