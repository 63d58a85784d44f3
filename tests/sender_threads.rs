//! The engine's sender threads start as claims need them and end once idle. A test binary of
//! its own: it counts this process's threads by name, which other tests' engines would join.

mod common;

use std::time::{Duration, Instant};

use common::receiver::{Receiver, Reply};
use common::{RunningEngine, fast_engine_config, new_delivery, wait_terminal};
use outbox::clock;
use outbox::delivery::{NewDelivery, Status};

const WAIT: Duration = Duration::from_secs(20);

/// Threads of this process whose name starts with `outbox-sender`.
fn sender_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("outbox-sender"))
        .count()
}

/// Polls until `sender_threads()` is `n`, for up to `timeout`; returns the last count.
fn wait_for_senders(n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let now = sender_threads();
        if now == n || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn senders_start_with_the_claims_and_end_when_idle() {
    let t = common::sqlite();
    let receiver = Receiver::start(
        vec![],
        Reply::Slow {
            delay: Duration::from_millis(100),
            status: 200,
        },
    );
    let to = |run| NewDelivery {
        endpoint_url: receiver.url(),
        ..new_delivery(run, "node-1")
    };
    let engine = RunningEngine::start(&t.store, fast_engine_config());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sender_threads(), 0, "no claims yet, so no sender threads");

    // Twenty claims at once: the configured four senders share them.
    let uuids: Vec<String> = (0..20)
        .map(|run| {
            t.store
                .create(&to(run), clock::now())
                .unwrap()
                .0
                .delivery_uuid
        })
        .collect();
    engine.wake();
    for uuid in &uuids {
        assert_eq!(
            wait_terminal(&t.store, uuid, WAIT).delivery.status,
            Status::Succeeded
        );
    }
    assert_eq!(sender_threads(), 4, "one thread per configured sender");

    assert_eq!(
        wait_for_senders(0, Duration::from_secs(10)),
        0,
        "idle senders end"
    );

    // A claim after they ended starts a sender again.
    let (d, _) = t.store.create(&to(20), clock::now()).unwrap();
    engine.wake();
    assert_eq!(
        wait_terminal(&t.store, &d.delivery_uuid, WAIT)
            .delivery
            .status,
        Status::Succeeded
    );
    assert_eq!(receiver.received().len(), 21, "each sent once");
    assert_eq!(sender_threads(), 1, "one claim, one sender");
}
