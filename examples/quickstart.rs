//! Quickstart: outbox as a library, end to end, in one process.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It creates an SQLite store in a temporary directory, starts a receiver on 127.0.0.1 with
//! three endpoints (`/ok` answers 200, `/flaky` 503 twice and then 200, `/broken` always 404),
//! starts the delivery engine with short retry delays, enqueues one delivery to each endpoint
//! and waits until all three are finished. Then it prints what happened to each delivery, as
//! the store recorded it and as the receiver saw it.
//!
//! It checks itself: it exits non-zero unless `/ok` succeeded at once, `/flaky` succeeded on
//! the third attempt and `/broken` was dead-lettered after one attempt (a 404 is permanent).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;

use outbox::clock::{Clock, SystemClock};
use outbox::config::EngineConfig;
use outbox::delivery::{DeliveryDetail, NewDelivery, Status};
use outbox::engine::Engine;
use outbox::http_server::{Request, Response, Server, ServerConfig};
use outbox::metrics::Metrics;
use outbox::policy::RetryPolicy;
use outbox::render::build_payload;
use outbox::secret_box::MasterKey;
use outbox::send::{HttpConfig, UreqSender};
use outbox::store::{self, StoreOptions};
use outbox::vault::Vault;

/// How long to wait for all deliveries to finish before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// One request as the receiver saw it.
struct Seen {
    path: String,
    delivery_id: String,
    attempt: String,
    answered: u16,
}

/// What each endpoint should end with: status and number of attempts.
const EXPECTED: [(&str, Status, u32); 3] = [
    ("ok", Status::Succeeded, 1),
    ("flaky", Status::Succeeded, 3),
    ("broken", Status::DeadLetter, 1),
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("quickstart failed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // 1. A store: an SQLite file in a temporary directory, with the schema applied.
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let db_path = dir.path().join("outbox.db");
    let db = db_path.to_str().ok_or("temporary path is not UTF-8")?;
    let store = store::open(db, &StoreOptions::default()).map_err(|e| e.to_string())?;
    store.migrate_up().map_err(|e| e.to_string())?;
    println!("store: {}", store.describe());

    // 2. A receiver to deliver to.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let receiver = start_receiver(Arc::clone(&seen))?;
    let base = format!("http://{}", receiver.local_addr());
    println!("receiver: {base}");

    // 3. The engine, with delays short enough to watch the retries happen.
    let config = EngineConfig {
        senders: 4,
        retry: RetryPolicy {
            base_delay: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        http: HttpConfig {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            ..HttpConfig::default()
        },
        lease: Duration::from_secs(10),
        poll_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    // Credentials are sealed under a master key; a real service keeps it in a file
    // (`secret_box::load_or_create`). These deliveries use no credential.
    let key = MasterKey::generate().map_err(|e| e.to_string())?;
    let vault = Arc::new(Vault::new(Arc::clone(&store), key));
    let sender = UreqSender::new(&config.http)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = Engine::start(
        Arc::clone(&store),
        Arc::new(sender),
        vault,
        Arc::clone(&clock),
        config,
        Arc::new(Metrics::default()),
    )
    .map_err(|e| e.to_string())?;

    // 4. Enqueue one delivery per endpoint. The payload is rendered once, now, from a
    //    template, and then sent byte for byte on every attempt.
    let template = json!({
        "event": "call_finished",
        "run": "{{ workflow_run_id }}",
        "caller": "{{ initial_context.phone_number }}",
    });
    let mut uuids = Vec::new();
    for (i, (name, _, _)) in EXPECTED.iter().enumerate() {
        let run_id = 1000 + i as i64;
        let context = json!({
            "workflow_run_id": run_id,
            "initial_context": {"phone_number": "+15550100"},
            "gathered_context": {"call_disposition": "completed"},
        });
        let payload = build_payload(Some(&template), &context, clock.now());
        let new = NewDelivery {
            organization_id: 1,
            workflow_run_id: run_id,
            webhook_node_id: format!("node-{name}"),
            webhook_name: Some(format!("quickstart {name}")),
            endpoint_url: format!("{base}/{name}"),
            http_method: "POST".into(),
            payload: payload.to_string(),
            custom_headers: Vec::new(),
            credential_uuid: None,
            max_attempts: 5,
            scheduled_for: None,
        };
        let (delivery, created) = store.create(&new, clock.now()).map_err(|e| e.to_string())?;
        println!(
            "enqueued {name:<6} {} (created: {created})",
            delivery.delivery_uuid
        );
        uuids.push(delivery.delivery_uuid);
    }
    // Without this the engine would still find them, at its next poll.
    engine.waker().wake();

    // 5. Wait until every delivery is finished (succeeded or dead_letter).
    let started = Instant::now();
    let details = loop {
        let details = uuids
            .iter()
            .map(|uuid| {
                store
                    .get(uuid)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("delivery {uuid} vanished"))
            })
            .collect::<Result<Vec<DeliveryDetail>, String>>()?;
        if details.iter().all(|d| d.delivery.status != Status::Pending) {
            break details;
        }
        if started.elapsed() > WAIT_LIMIT {
            engine.shutdown();
            return Err(format!(
                "deliveries still pending after {} s",
                WAIT_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "all {} deliveries finished in {:.1} s\n",
        details.len(),
        started.elapsed().as_secs_f64()
    );

    // 6. Stop: the engine drains (nothing is in flight now), then the receiver.
    let report = engine.shutdown();
    receiver.shutdown();

    // 7. The report, and the check.
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let mut problems = Vec::new();
    for ((name, want_status, want_attempts), detail) in EXPECTED.iter().zip(&details) {
        print_delivery(name, detail, &seen);
        let d = &detail.delivery;
        if d.status != *want_status || d.attempt_count != *want_attempts {
            problems.push(format!(
                "{name}: {} after {} attempt(s), expected {} after {}",
                d.status.as_str(),
                d.attempt_count,
                want_status.as_str(),
                want_attempts
            ));
        }
    }
    println!(
        "engine stopped (drain clean: {}, handed back unsent: {})",
        report.clean, report.released
    );
    if problems.is_empty() {
        println!("quickstart: all outcomes as expected");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Starts the receiver: `/ok` 200, `/flaky` 503 on its first two requests then 200,
/// `/broken` 404, anything else 404 too. It records every request it answers.
fn start_receiver(
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<outbox::http_server::ServerHandle, String> {
    let server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .map_err(|e| format!("cannot start the receiver: {e}"))?;
    let counts: Mutex<HashMap<String, u32>> = Mutex::default();
    server
        .serve(move |request: Request| {
            let n = {
                let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                let n = counts.entry(request.path.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let status = match request.path.as_str() {
                "/ok" => 200,
                "/flaky" if n <= 2 => 503,
                "/flaky" => 200,
                _ => 404,
            };
            let header = |name| request.header(name).unwrap_or("-").to_string();
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Seen {
                    path: request.path.clone(),
                    delivery_id: header("X-Dograh-Delivery-Id"),
                    attempt: header("X-Dograh-Delivery-Attempt"),
                    answered: status,
                });
            Response::text(status, format!("answered {status}\n"))
        })
        .map_err(|e| format!("cannot start the receiver: {e}"))
}

/// Prints one delivery: its outcome, its attempt history and what the receiver saw.
fn print_delivery(name: &str, detail: &DeliveryDetail, seen: &[Seen]) {
    let d = &detail.delivery;
    println!(
        "{name}: {} after {} attempt(s)  [{} {}]",
        d.status.as_str(),
        d.attempt_count,
        d.http_method,
        d.endpoint_url
    );
    println!("  delivery id: {}", d.delivery_uuid);
    println!("  payload:     {}", d.payload);
    for a in &detail.attempts {
        let code = a
            .status_code
            .map_or_else(|| "no response".to_string(), |c| format!("HTTP {c}"));
        let error = a
            .error
            .as_deref()
            .map(|e| format!(", error: {}", e.trim_end()))
            .unwrap_or_default();
        println!(
            "  attempt {}: {code} in {} ms{error}",
            a.attempt_number, a.duration_ms
        );
    }
    let path = format!("/{name}");
    for s in seen.iter().filter(|s| s.path == path) {
        println!(
            "  receiver saw: X-Dograh-Delivery-Id {} X-Dograh-Delivery-Attempt {} -> answered {}",
            s.delivery_id, s.attempt, s.answered
        );
    }
    println!();
}
