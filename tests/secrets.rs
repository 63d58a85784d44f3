//! Credential secrets are write-only: they reach the receiver's `Authorization` header and
//! nowhere else — not an API response, not the database file, not a log line (captured at
//! trace level). In a binary of its own because a process has one logger.

mod api_harness;
mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use api_harness::Api;
use common::receiver::{Receiver, Reply};
use serde_json::json;

const SECRET_1: &str = "s3cr3t-ZEBRA-quartz-0001";
const SECRET_2: &str = "s3cr3t-ZEBRA-quartz-0002";
const WAIT: Duration = Duration::from_secs(20);

/// Every log record, formatted with its target, into one string.
struct Capture(Arc<Mutex<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {} {}\n", record.level(), record.target(), record.args());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&line);
    }
    fn flush(&self) {}
}

fn captured_logs() -> Arc<Mutex<String>> {
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        log::set_boxed_logger(Box::new(Capture(Arc::clone(&logs)))).expect("one logger");
        log::set_max_level(log::LevelFilter::Trace);
        logs
    })
    .clone()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET_1, SECRET_2] {
        assert!(!text.contains(secret), "{what} contains a secret: {text}");
    }
}

#[test]
fn secrets_reach_the_receiver_and_nothing_else() {
    let logs = captured_logs();
    // The first secret is refused, the rotated one accepted: the retry shows the rotation.
    let receiver = Receiver::start_fn(|r| {
        if r.header("Authorization") == Some(&format!("Bearer {SECRET_2}")) {
            Reply::Status(200)
        } else {
            Reply::Status(503)
        }
    });
    let t = common::sqlite();
    let db_path = t.database.clone();
    let api = Api::start(t, &[]);

    let put = |secret: &str| {
        api.call(
            "PUT",
            "/v1/credentials/cred-1",
            Some(
                &json!({"organization_id": 7, "credential_type": "bearer_token",
                        "credential_data": {"token": secret}})
                .to_string(),
            ),
        )
    };
    let created = put(SECRET_1);
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        created.json,
        json!({"credential_uuid": "cred-1", "organization_id": 7,
               "credential_type": "bearer_token", "created": true})
    );
    assert_no_secret("PUT response", &created.text);

    // Another organization may not take the uuid over.
    let stolen = api.call(
        "PUT",
        "/v1/credentials/cred-1",
        Some(
            &json!({"organization_id": 8, "credential_type": "bearer_token",
                     "credential_data": {"token": "x"}})
            .to_string(),
        ),
    );
    assert_eq!(stolen.status, 409, "{}", stolen.text);

    let enqueue = json!({
        "organization_id": 7, "workflow_run_id": 1, "webhook_node_id": "n1",
        "endpoint_url": receiver.url(), "credential_uuid": "cred-1", "max_attempts": 100,
        "payload": {"event": "done"},
    });
    let r = api.call("POST", "/v1/deliveries", Some(&enqueue.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    let uuid = r.json["delivery"]["delivery_uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();

    let first = receiver.wait_for(1, WAIT);
    assert_eq!(
        first.first().and_then(|r| r.header("Authorization")),
        Some(format!("Bearer {SECRET_1}").as_str())
    );

    let rotated = put(SECRET_2);
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(rotated.json["created"], false);
    assert_no_secret("PUT response", &rotated.text);

    let done = api.wait_terminal(&uuid, WAIT);
    assert_eq!(done["status"], "succeeded", "{done}");
    let last = receiver.received();
    assert_eq!(
        last.last().and_then(|r| r.header("Authorization")),
        Some(format!("Bearer {SECRET_2}").as_str())
    );

    for path in [
        format!("/v1/deliveries/{uuid}"),
        "/v1/deliveries".to_owned(),
        "/metrics".to_owned(),
    ] {
        let r = api.call("GET", &path, None);
        assert_eq!(r.status, 200, "{path}");
        assert_no_secret(&path, &r.text);
    }

    // Every file SQLite keeps (the succeeded outcome is already written: wait_terminal saw it).
    let mut files = 0;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        if let Ok(bytes) = std::fs::read(format!("{db_path}{suffix}")) {
            files += 1;
            for secret in [SECRET_1, SECRET_2] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} is in {db_path}{suffix}"
                );
            }
        }
    }
    assert!(files >= 1, "found no database file at {db_path}");

    let deleted = api.call("DELETE", "/v1/credentials/cred-1?organization_id=7", None);
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    drop(api);

    let logs = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        logs.contains("PUT /v1/credentials/cred-1 201"),
        "the logger captured nothing useful: {logs}"
    );
    assert_no_secret("the log", &logs);
}
