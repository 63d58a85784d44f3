//! Crashes and concurrency across processes: an engine in a child process (this test binary
//! re-run as `child_engine`) is killed with SIGKILL mid-run and restarted, and nothing
//! enqueued is lost; two engines on one PostgreSQL deliver each row exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::receiver::{Receiver, Reply};
use common::{TestStore, new_delivery};
use outbox::delivery::NewDelivery;
use outbox::store::{self, Store, StoreOptions};

/// Not a test of its own: the engine process the tests below start and kill.
#[test]
#[ignore = "run by the crash tests as a child process"]
fn child_engine() {
    let Ok(database) = std::env::var("OUTBOX_CHILD_DATABASE") else {
        return;
    };
    let options = StoreOptions {
        postgres_schema: std::env::var("OUTBOX_CHILD_SCHEMA").ok(),
        ..Default::default()
    };
    let store = store::open(&database, &options).expect("child opens the store");
    let _engine = common::RunningEngine::start(&store, common::fast_engine_config());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// An engine process, killed with SIGKILL when dropped: by the test, or by a failing
/// assertion's unwinding, which would otherwise leave it running for ever.
struct ChildEngine(Child);

impl Drop for ChildEngine {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

fn spawn_engine(t: &TestStore) -> ChildEngine {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["child_engine", "--exact", "--ignored", "--nocapture"])
        .env("OUTBOX_CHILD_DATABASE", &t.database)
        .env("RUST_LOG", "warn");
    if let Some(schema) = &t.postgres_schema {
        // The child reaches the same schema with the plain URL and a search path.
        command
            .env("OUTBOX_CHILD_DATABASE", common::postgres_url().unwrap())
            .env("OUTBOX_CHILD_SCHEMA", schema);
    }
    ChildEngine(command.spawn().expect("spawn child engine"))
}

fn enqueue_many(store: &Arc<dyn Store>, url: &str, n: i64) -> HashMap<String, String> {
    let news: Vec<NewDelivery> = (0..n)
        .map(|run| NewDelivery {
            endpoint_url: url.to_string(),
            payload: format!(r#"{{"run":{run}}}"#),
            ..new_delivery(run, "n")
        })
        .collect();
    let mut payload_by_uuid = HashMap::new();
    for chunk in news.chunks(500) {
        for r in store.create_many(chunk, outbox::clock::now()).unwrap() {
            let (d, created) = r.unwrap();
            assert!(created);
            payload_by_uuid.insert(d.delivery_uuid, d.payload);
        }
    }
    payload_by_uuid
}

fn wait_all_succeeded(store: &Arc<dyn Store>, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = store.stats(outbox::clock::now()).unwrap();
        if stats.succeeded == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered in time: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn killed_mid_run_then_restarted_delivers_everything(t: &TestStore) {
    const N: i64 = 1000;
    // A little slow per request, so the kill lands mid-run.
    let receiver = Receiver::start_fn(|_| Reply::Slow {
        delay: Duration::from_millis(5),
        status: 200,
    });
    let payloads = enqueue_many(&t.store, &receiver.url(), N);

    let child = spawn_engine(t);
    let before_kill = receiver.wait_for(200, Duration::from_secs(30)).len();
    assert!(before_kill >= 200);
    drop(child); // SIGKILL
    let at_kill = receiver.received().len();
    assert!(
        at_kill < N as usize,
        "the kill must land mid-run ({at_kill} sent)"
    );

    let child = spawn_engine(t);
    wait_all_succeeded(&t.store, N as u64, Duration::from_secs(90));
    drop(child); // SIGKILL

    let got = receiver.received();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        let id = r
            .header("X-Dograh-Delivery-Id")
            .expect("delivery id header");
        // A duplicate is the same delivery: same id, same frozen payload.
        assert_eq!(
            r.body_str(),
            payloads[id],
            "request for {id} carries its own payload"
        );
        *seen.entry(id).or_default() += 1;
    }
    let all: HashSet<&str> = payloads.keys().map(String::as_str).collect();
    assert_eq!(
        seen.keys().copied().collect::<HashSet<_>>(),
        all,
        "every delivery arrived"
    );
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{} requests for {N} deliveries ({duplicates} duplicates after SIGKILL, all with their own delivery id)",
        got.len()
    );
}

#[test]
fn sqlite_killed_mid_run_then_restarted_delivers_everything() {
    killed_mid_run_then_restarted_delivers_everything(&common::sqlite());
}

#[test]
fn postgres_killed_mid_run_then_restarted_delivers_everything() {
    if let Some(t) = common::postgres() {
        killed_mid_run_then_restarted_delivers_everything(&t);
    }
}

#[test]
fn postgres_two_engines_deliver_each_row_exactly_once() {
    let Some(t) = common::postgres() else {
        return;
    };
    const N: i64 = 2000;
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let payloads = enqueue_many(&t.store, &receiver.url(), N);
    let a = spawn_engine(&t);
    let b = spawn_engine(&t);
    wait_all_succeeded(&t.store, N as u64, Duration::from_secs(90));
    drop(a); // SIGKILL
    drop(b); // SIGKILL
    let counts = receiver.count_by_header("X-Dograh-Delivery-Id");
    assert_eq!(counts.len(), payloads.len(), "every delivery arrived");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}
