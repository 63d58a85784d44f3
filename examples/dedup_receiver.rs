//! A webhook receiver that processes each delivery once, to copy into your own service.
//!
//! ```text
//! cargo run --example dedup_receiver              # listens on 127.0.0.1:9000
//! cargo run --example dedup_receiver 0.0.0.0:9100
//! ```
//!
//! Why receivers must deduplicate: outbox delivers at least once. A delivery is sent again
//! when the receiver's 200 was lost (timeout, reset), when outbox could not record the 200
//! (it then re-sends rather than risk losing it), and after a crash mid-send. Every attempt
//! of one delivery carries the same `X-Dograh-Delivery-Id`, so the receiver keeps the ids it
//! has processed and answers a repeat with 200 without doing the work again. A 200 matters:
//! anything else makes outbox retry a delivery that is already done.
//!
//! `X-Dograh-Delivery-Attempt` (1, 2, ...) is for logs only: never deduplicate on it.
//!
//! This receiver keeps the seen ids in memory, so a restart forgets them. A real receiver
//! stores them where its work is stored, in the same transaction: e.g. a table with the id
//! as primary key, `INSERT ... ON CONFLICT DO NOTHING`, and the work done only when the
//! insert added a row. Ids may be dropped once older than the longest retry window (minutes
//! with the defaults, but an operator may redrive a dead letter days later).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use outbox::http_server::{Request, Response, Server, ServerConfig};

const DEFAULT_ADDR: &str = "127.0.0.1:9000";

/// Where a delivery id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// An attempt is being processed right now.
    InProgress,
    /// Processed: every further attempt gets 200 and nothing else.
    Done,
}

type Seen = Mutex<HashMap<String, State>>;

fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let server = match Server::bind(&addr, ServerConfig::default()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "dedup_receiver listening on http://{} (Ctrl-C to stop)",
        server.local_addr()
    );
    let seen: Seen = Mutex::default();
    let _handle = match server.serve(move |request| handle(&seen, &request)) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("error: cannot start serving: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The server runs on its own threads; this one only has to stay alive.
    loop {
        std::thread::park();
    }
}

/// Answers one request: 200 for a new delivery once it is processed, 200 for a repeat
/// without processing it again, 503 while another attempt of the same delivery is still
/// being processed (outbox retries it later), 400 for a request that is not from outbox.
fn handle(seen: &Seen, request: &Request) -> Response {
    let attempt = request.header("X-Dograh-Delivery-Attempt").unwrap_or("?");
    let Some(id) = request.header("X-Dograh-Delivery-Id") else {
        println!(
            "{} {} from {}: no X-Dograh-Delivery-Id, refused",
            request.method, request.path, request.peer
        );
        // A 4xx is permanent for outbox: a request without an id cannot be deduplicated.
        return Response::text(400, "missing X-Dograh-Delivery-Id\n");
    };
    // Check and mark under one lock, so two concurrent attempts of one delivery (a retry
    // racing a slow first attempt) cannot both be processed.
    let before = {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let before = seen.get(id).copied();
        if before.is_none() {
            seen.insert(id.to_string(), State::InProgress);
        }
        before
    };
    match before {
        Some(State::Done) => {
            println!("delivery {id} attempt {attempt}: duplicate, answered 200 without processing");
            return Response::text(200, "duplicate\n");
        }
        Some(State::InProgress) => {
            // Not 200: the first attempt may still fail. A 503 is retried later, by which
            // time the id is Done (200) or forgotten (processed then).
            println!("delivery {id} attempt {attempt}: still in progress, answered 503");
            return Response::text(503, "in progress\n").with_header("Retry-After", "5");
        }
        None => {}
    }
    let result = process(&request.body);
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    match result {
        Ok(summary) => {
            seen.insert(id.to_string(), State::Done);
            println!("delivery {id} attempt {attempt}: processed ({summary})");
            Response::text(200, "ok\n")
        }
        Err(e) => {
            // Forget the id, so a later attempt is processed afresh.
            seen.remove(id);
            println!(
                "delivery {id} attempt {attempt}: {e}, answered {}",
                e.status()
            );
            Response::text(e.status(), format!("{e}\n"))
        }
    }
}

/// Why a delivery was not processed.
#[derive(Debug)]
enum Failure {
    /// The payload can never be processed: outbox dead-letters it at once (a 4xx other than
    /// 408, 425 and 429 is permanent), and an operator can look at it.
    Permanent(String),
    /// Worth another try later (a database down, a dependency timing out): outbox retries with
    /// backoff (5xx).
    #[allow(dead_code)] // This example's work cannot fail that way; yours may.
    Transient(String),
}

impl Failure {
    fn status(&self) -> u16 {
        match self {
            Failure::Permanent(_) => 422,
            Failure::Transient(_) => 503,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Permanent(e) => write!(f, "rejected: {e}"),
            Failure::Transient(e) => write!(f, "failed for now: {e}"),
        }
    }
}

/// The work a delivery triggers. Here: parse the JSON payload and describe it.
fn process(body: &[u8]) -> Result<String, Failure> {
    if body.is_empty() {
        return Ok("no body".to_string());
    }
    let payload: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Permanent(format!("payload is not JSON: {e}")))?;
    let disposition = payload
        .get("call_disposition")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    Ok(format!(
        "{} bytes, call_disposition {disposition:?}",
        body.len()
    ))
}
