//! An in-process API over a real store and engine, and a small HTTP client for it. Shared by
//! `tests/api.rs` and `tests/secrets.rs` (which needs a binary of its own for its logger).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::api::{self, ApiState};
use outbox::clock::SystemClock;
use outbox::delivery::{ListFilter, Status};
use outbox::enqueue::Enqueuer;
use outbox::http_server::ServerHandle;
use serde_json::Value;

use crate::common::{RunningEngine, TestStore, fast_engine_config};

/// Requests larger than this get 413 in these tests.
pub const MAX_BODY: usize = 16 * 1024;

pub struct Api {
    pub server: Option<ServerHandle>,
    pub enqueuer: Arc<Enqueuer>,
    pub engine: RunningEngine,
    pub base: String,
    pub agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` unless a call says otherwise.
    pub token: Option<String>,
    /// Last, so the store outlives everything that uses it.
    pub t: TestStore,
}

/// A response: status and body (JSON when it parses, else `Value::String`).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

impl Api {
    /// Store, engine (short delays), enqueuer and API on 127.0.0.1:0, with these tokens.
    pub fn start(t: TestStore, tokens: &[&str]) -> Api {
        let mut config = fast_engine_config();
        config.poll_interval = Duration::from_millis(100);
        config.retry.base_delay = Duration::from_millis(50);
        config.http.timeout = Duration::from_secs(2);
        config.lease = Duration::from_secs(10);
        let engine = RunningEngine::start(&t.store, config);
        let waker = engine.engine.as_ref().map(|e| e.waker());
        let enqueuer = Arc::new(Enqueuer::start(
            Arc::clone(&t.store),
            waker,
            Arc::clone(&engine.metrics),
            Arc::new(SystemClock),
        ));
        let state = ApiState {
            store: Arc::clone(&t.store),
            vault: Arc::clone(&engine.vault),
            enqueuer: Arc::clone(&enqueuer),
            metrics: Arc::clone(&engine.metrics),
            clock: Arc::new(SystemClock),
            api_tokens: tokens.iter().map(|s| s.to_string()).collect(),
            default_max_attempts: 5,
        };
        let server = api::start("127.0.0.1:0", state, MAX_BODY).expect("api starts");
        let base = format!("http://{}", server.local_addr());
        Api {
            server: Some(server),
            enqueuer,
            engine,
            base,
            agent: client(),
            token: tokens.first().map(|s| s.to_string()),
            t,
        }
    }

    /// `method path` with `body`, authenticated with the default token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call_as(self.token.as_deref(), method, path, body)
    }

    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        call_with(&self.agent, &self.base, token, method, path, body)
    }

    /// Every delivery (uuid, status, attempts) and the counts: what "nothing changed" compares.
    pub fn snapshot(&self) -> (Vec<(String, Status, u32)>, outbox::delivery::Stats) {
        let page = self
            .t
            .store
            .list(&ListFilter {
                limit: 1000,
                ..Default::default()
            })
            .expect("list");
        let rows = page
            .deliveries
            .into_iter()
            .map(|d| (d.delivery_uuid, d.status, d.attempt_count))
            .collect();
        let mut stats = self.t.store.stats(outbox::clock::now()).expect("stats");
        // The age of the oldest due row moves with the clock; it is not a write.
        stats.oldest_due_ms = None;
        (rows, stats)
    }

    /// Polls `GET /v1/deliveries/{uuid}` until its status is not pending.
    pub fn wait_terminal(&self, uuid: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.call("GET", &format!("/v1/deliveries/{uuid}"), None);
            assert_eq!(r.status, 200, "{}", r.text);
            if r.json["status"] != "pending" || Instant::now() >= deadline {
                return r.json;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        self.engine.shutdown();
    }
}

/// A keep-alive client that returns every status instead of failing on 4xx/5xx.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections_per_host(4)
        .build()
        .into()
}

pub fn call_with(
    agent: &ureq::Agent,
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(token) = token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => agent.run(
            builder
                .header("Content-Type", "application/json")
                .body(body.to_owned())
                .expect("request"),
        ),
        None => agent.run(builder.body(()).expect("request")),
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    Reply { status, text, json }
}
