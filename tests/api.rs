//! The HTTP API end to end: real sockets, a real store (SQLite file; PostgreSQL when
//! OUTBOX_TEST_POSTGRES_URL is set), the real engine delivering to a real receiver.

mod api_harness;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_harness::{Api, MAX_BODY, call_with, client};
use common::TestStore;
use common::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::common::sqlite()); })*
        }
        mod postgres {
            $(#[test] fn $name() {
                if let Some(t) = super::common::postgres() { super::$name(t); }
            })*
        }
    };
}

both_backends!(
    enqueue_deliver_show_list_and_metrics,
    bad_input_is_refused_and_writes_nothing,
    redrive_answers_by_state,
    concurrent_keep_alive_clients_all_commit,
);

fn body(run: i64, node: &str, url: &str) -> Value {
    json!({
        "organization_id": 7,
        "workflow_run_id": run,
        "webhook_node_id": node,
        "endpoint_url": url,
        "webhook_name": "Final Webhook",
        "payload_template": {"run": "{{workflow_run_id}}", "n": 1},
        "render_context": {"workflow_run_id": run,
                           "gathered_context": {"call_disposition": "completed"}},
        "custom_headers": [{"key": "X-Source", "value": "tests"},
                           {"key": "X-Secret-Thing", "value": "hidden"}],
    })
}

fn enqueue_deliver_show_list_and_metrics(t: TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let api = Api::start(t, &["tok-1"]);
    let health = api.call_as(None, "GET", "/healthz", None);
    assert_eq!(
        (health.status, &health.json),
        (200, &json!({"status": "ok"}))
    );

    let r = api.call(
        "POST",
        "/v1/deliveries",
        Some(&body(9, "n1", &receiver.url()).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["created"], true);
    assert_eq!(r.json["dropped_headers"], json!(["X-Secret-Thing"]));
    let d = &r.json["delivery"];
    let uuid = d["delivery_uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(d["http_method"], "POST");
    assert_eq!(d["max_attempts"], 5);
    assert_eq!(
        d["payload"],
        json!({"run": "9", "n": 1, "call_disposition": "completed"})
    );
    assert_eq!(
        d["custom_headers"],
        json!([{"key": "X-Source", "value": "tests"}])
    );
    assert!(d.get("lease_token").is_none());

    let got = receiver.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("X-Dograh-Delivery-Id"), Some(uuid.as_str()));
    assert_eq!(got[0].header("X-Source"), Some("tests"));
    assert_eq!(got[0].header("X-Secret-Thing"), None);

    let shown = api.wait_terminal(&uuid, WAIT);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["attempt_count"], 1);
    assert_eq!(shown["attempts"][0]["attempt_number"], 1);
    assert_eq!(shown["attempts"][0]["status_code"], 200);

    // Get-or-create: the same run and node is not created twice, and the first payload wins.
    let again = api.call(
        "POST",
        "/v1/deliveries",
        Some(&body(9, "n1", "http://other/").to_string()),
    );
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["created"], false);
    assert_eq!(again.json["delivery"]["delivery_uuid"], uuid.as_str());

    // The run belongs to organization 7 now.
    let mut other_org = body(9, "n2", &receiver.url());
    other_org["organization_id"] = json!(8);
    let conflict = api.call("POST", "/v1/deliveries", Some(&other_org.to_string()));
    assert_eq!(conflict.status, 409, "{}", conflict.text);
    assert_eq!(
        conflict.json["error"],
        "Workflow run 9 belongs to organization 7, not 8"
    );

    let list = api.call(
        "GET",
        "/v1/deliveries?status=succeeded&organization_id=7",
        None,
    );
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["deliveries"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.json["deliveries"][0]["delivery_uuid"], uuid.as_str());
    assert_eq!(list.json["next_after"], Value::Null);
    let none = api.call("GET", "/v1/deliveries?status=dead_letter", None);
    assert_eq!(none.json["deliveries"], json!([]));

    // Keyset pagination: two rows, pages of one.
    let second = api.call(
        "POST",
        "/v1/deliveries",
        Some(&body(10, "n1", &receiver.url()).to_string()),
    );
    assert_eq!(second.status, 201);
    let page1 = api.call("GET", "/v1/deliveries?limit=1", None);
    let cursor = page1.json["next_after"].as_i64().expect("a cursor");
    let page2 = api.call(
        "GET",
        &format!("/v1/deliveries?limit=1&after={cursor}"),
        None,
    );
    assert_eq!(
        page2.json["deliveries"][0]["delivery_uuid"],
        second.json["delivery"]["delivery_uuid"]
    );

    api.wait_terminal(
        second.json["delivery"]["delivery_uuid"]
            .as_str()
            .unwrap_or(""),
        WAIT,
    );
    let metrics = api.call("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains("outbox_deliveries{status=\"succeeded\"} 2"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("outbox_deliveries{status=\"pending\"} 0")
    );
}

/// (name, method, path, body, bearer token, expected status)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<String>,
    Option<&'a str>,
    u16,
);

fn bad_input_is_refused_and_writes_nothing(t: TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let api = Api::start(t, &["tok-1", "tok-2"]);
    // One finished row exists (the engine leaves it alone), so a bad request that wrote
    // anything would show up as a change.
    let ok = api.call(
        "POST",
        "/v1/deliveries",
        Some(&body(1, "n1", &receiver.url()).to_string()),
    );
    assert_eq!(ok.status, 201, "{}", ok.text);
    let done = api.wait_terminal(
        ok.json["delivery"]["delivery_uuid"].as_str().unwrap_or(""),
        WAIT,
    );
    assert_eq!(done["status"], "succeeded");
    let before = api.snapshot();

    let valid = body(2, "n1", "http://127.0.0.1:9/");
    let with = |key: &str, value: Value| {
        let mut b = valid.clone();
        if value.is_null() {
            b.as_object_mut().map(|m| m.remove(key));
        } else {
            b[key] = value;
        }
        b.to_string()
    };
    let oversize = json!({"payload": "x".repeat(MAX_BODY + 1)}).to_string();
    let cases: Vec<Case> = vec![
        ("oversize", "POST", "/v1/deliveries", Some(oversize), Some("tok-1"), 413),
        ("malformed", "POST", "/v1/deliveries", Some("{\"organization_id\": 7,".into()), Some("tok-1"), 400),
        ("empty body", "POST", "/v1/deliveries", Some(String::new()), Some("tok-1"), 400),
        ("unknown field", "POST", "/v1/deliveries", Some(with("max_attempt", json!(3))), Some("tok-1"), 400),
        ("missing field", "POST", "/v1/deliveries", Some(with("endpoint_url", Value::Null)), Some("tok-1"), 400),
        ("relative url", "POST", "/v1/deliveries", Some(with("endpoint_url", json!("/hook"))), Some("tok-1"), 400),
        ("ftp url", "POST", "/v1/deliveries", Some(with("endpoint_url", json!("ftp://h/x"))), Some("tok-1"), 400),
        ("TRACE", "POST", "/v1/deliveries", Some(with("http_method", json!("TRACE"))), Some("tok-1"), 400),
        ("max_attempts 0", "POST", "/v1/deliveries", Some(with("max_attempts", json!(0))), Some("tok-1"), 400),
        ("max_attempts 101", "POST", "/v1/deliveries", Some(with("max_attempts", json!(101))), Some("tok-1"), 400),
        ("header injection", "POST", "/v1/deliveries", Some(with("custom_headers", json!([{"key": "X-A", "value": "a\r\nB: c"}]))), Some("tok-1"), 400),
        ("wrong token", "POST", "/v1/deliveries", Some(valid.to_string()), Some("tok-3"), 401),
        ("missing token", "POST", "/v1/deliveries", Some(valid.to_string()), None, 401),
        ("token prefix", "POST", "/v1/deliveries", Some(valid.to_string()), Some("tok-"), 401),
        ("unknown delivery", "GET", "/v1/deliveries/no-such-uuid", None, Some("tok-2"), 404),
        ("unknown route", "GET", "/v1/nothing", None, Some("tok-1"), 404),
        ("unknown route, no token", "GET", "/v1/nothing", None, None, 401),
        ("wrong method", "DELETE", "/v1/deliveries", None, Some("tok-1"), 405),
        ("bad status", "GET", "/v1/deliveries?status=done", None, Some("tok-1"), 400),
        ("non-numeric org", "GET", "/v1/deliveries?organization_id=seven", None, Some("tok-1"), 400),
        ("metrics without token", "GET", "/metrics", None, None, 401),
        ("credential bad type", "PUT", "/v1/credentials/c1", Some(json!({"organization_id": 7, "credential_type": "magic", "credential_data": {}}).to_string()), Some("tok-1"), 400),
        ("credential missing field", "PUT", "/v1/credentials/c1", Some(json!({"organization_id": 7, "credential_type": "bearer_token", "credential_data": {}}).to_string()), Some("tok-1"), 400),
        ("delete unknown credential", "DELETE", "/v1/credentials/c1?organization_id=7", None, Some("tok-1"), 404),
        ("delete without org", "DELETE", "/v1/credentials/c1", None, Some("tok-1"), 400),
    ];
    for (name, method, path, request_body, token, want) in cases {
        // A fresh client per case: some errors close the connection.
        let r = call_with(
            &client(),
            &api.base,
            token,
            method,
            path,
            request_body.as_deref(),
        );
        assert_eq!(r.status, want, "{name}: {}", r.text);
        if want != 413 {
            assert!(r.json["error"].is_string(), "{name}: {}", r.text);
        }
        assert_eq!(api.snapshot(), before, "{name} changed the database");
    }
    // The unauthenticated liveness probe stays open.
    assert_eq!(api.call_as(None, "GET", "/healthz", None).status, 200);
}

fn redrive_answers_by_state(t: TestStore) {
    let receiver = Receiver::start(vec![], Reply::Status(401));
    let api = Api::start(t, &[]);
    let r = api.call(
        "POST",
        "/v1/deliveries",
        Some(&body(3, "n1", &receiver.url()).to_string()),
    );
    let uuid = r.json["delivery"]["delivery_uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let path = format!("/v1/deliveries/{uuid}/redrive");
    let dead = api.wait_terminal(&uuid, WAIT);
    assert_eq!(dead["status"], "dead_letter", "{dead}");
    assert_eq!(dead["last_status_code"], 401);

    let redriven = api.call("POST", &path, None);
    assert_eq!(redriven.status, 200, "{}", redriven.text);
    assert_eq!(redriven.json["status"], "pending");
    assert_eq!(redriven.json["attempt_count"], 0);
    let pending_again = api.call("POST", &path, None);
    assert!(
        [200, 409].contains(&pending_again.status),
        "{}",
        pending_again.text
    );
    api.wait_terminal(&uuid, WAIT);
    let twice = api.call("POST", &path, None);
    assert_eq!(
        twice.status, 200,
        "dead again, so redrivable: {}",
        twice.text
    );
    assert_eq!(
        api.call("POST", "/v1/deliveries/nope/redrive", None).status,
        404
    );
    assert_eq!(api.call("GET", &path, None).status, 405);

    let receiver_ok = Receiver::start(vec![], Reply::Status(200));
    let ok = api.call(
        "POST",
        "/v1/deliveries",
        Some(&body(4, "n1", &receiver_ok.url()).to_string()),
    );
    let ok_uuid = ok.json["delivery"]["delivery_uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    api.wait_terminal(&ok_uuid, WAIT);
    let conflict = api.call("POST", &format!("/v1/deliveries/{ok_uuid}/redrive"), None);
    assert_eq!(conflict.status, 409, "{}", conflict.text);
}

fn concurrent_keep_alive_clients_all_commit(t: TestStore) {
    const CLIENTS: i64 = 64;
    const EACH: i64 = 50;
    let receiver = Arc::new(Receiver::start(vec![], Reply::Status(200)));
    let api = Arc::new(Api::start(t, &["tok"]));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let api = Arc::clone(&api);
            let url = receiver.url();
            std::thread::spawn(move || {
                let agent = client();
                for i in 0..EACH {
                    let b = body(c * 1000 + i, "n1", &url).to_string();
                    let r = call_with(
                        &agent,
                        &api.base,
                        Some("tok"),
                        "POST",
                        "/v1/deliveries",
                        Some(&b),
                    );
                    assert_eq!(r.status, 201, "{}", r.text);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let stats = api.t.store.stats(outbox::clock::now()).expect("stats");
    assert_eq!(
        stats.pending + stats.succeeded + stats.dead_letter,
        (CLIENTS * EACH) as u64
    );
    assert_eq!(
        api.engine
            .metrics
            .enqueued
            .load(std::sync::atomic::Ordering::Relaxed),
        (CLIENTS * EACH) as u64
    );
    eprintln!("{} enqueues over HTTP in {took:?}", CLIENTS * EACH);
}

#[test]
fn refuses_a_public_address_without_a_token() {
    let t = common::sqlite();
    let api = Api::start(t, &[]);
    let state = outbox::api::ApiState {
        store: Arc::clone(&api.t.store),
        vault: Arc::clone(&api.engine.vault),
        enqueuer: Arc::clone(&api.enqueuer),
        metrics: Arc::clone(&api.engine.metrics),
        clock: Arc::new(outbox::clock::SystemClock),
        api_tokens: Vec::new(),
        default_max_attempts: 5,
    };
    let e = outbox::api::start("0.0.0.0:0", state, 1024)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("OUTBOX_API_TOKEN") && e.contains("loopback"),
        "{e}"
    );
}
