//! The `outbox` binary as an operator runs it: against a temp SQLite file through
//! OUTBOX_DATABASE, and `outbox serve` as a child process stopped with SIGTERM.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{Receiver, Reply};
use outbox::delivery::{Outcome, Transition};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

/// The binary with a clean environment for outbox's own variables.
fn outbox(db: &str) -> Command {
    let mut cmd = Command::new(BIN);
    for var in outbox::config::VARIABLES {
        cmd.env_remove(var);
    }
    cmd.env("OUTBOX_DATABASE", db).env_remove("RUST_LOG");
    cmd
}

fn run(db: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = outbox(db)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outbox");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

fn ok(db: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(db, args, stdin);
    assert!(
        out.status.success(),
        "outbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(db: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(db, args, stdin);
    assert!(!out.status.success(), "outbox {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("error"), "{stderr}");
    stderr
}

fn temp_db(dir: &Path) -> String {
    dir.join("outbox.db").to_string_lossy().into_owned()
}

fn delivery_body(url: &str) -> String {
    json!({"organization_id": 7, "workflow_run_id": 42, "webhook_node_id": "n1",
           "endpoint_url": url, "payload": {"event": "done"}})
    .to_string()
}

#[test]
fn operator_commands_on_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = temp_db(dir.path());
    let body = delivery_body("http://127.0.0.1:9/hook");

    let stderr = fails(&db, &["enqueue"], Some(&body));
    assert!(stderr.contains("outbox migrate up"), "{stderr}");
    assert!(ok(&db, &["migrate", "up"], None).contains("applied migrations [1]"));
    assert!(ok(&db, &["migrate", "status"], None).contains("applied"));

    let created: Value = serde_json::from_str(&ok(&db, &["enqueue"], Some(&body))).expect("json");
    assert_eq!(created["created"], true);
    let uuid = created["delivery"]["delivery_uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let again: Value =
        serde_json::from_str(&ok(&db, &["enqueue", "-"], Some(&body))).expect("json");
    assert_eq!(again["created"], false);
    fails(&db, &["enqueue"], Some("{\"organization_id\": 7}"));

    let table = ok(&db, &["list"], None);
    assert!(
        table.contains(&uuid) && table.contains("pending"),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&ok(&db, &["list", "--json", "--status", "pending"], None))
            .expect("json");
    assert_eq!(listed["deliveries"][0]["delivery_uuid"], uuid.as_str());
    fails(&db, &["list", "--status", "done"], None);
    fails(&db, &["list", "--limit", "0"], None);

    let shown = ok(&db, &["show", &uuid], None);
    assert!(
        shown.contains("pending") && shown.contains("(none yet)"),
        "{shown}"
    );
    let shown: Value =
        serde_json::from_str(&ok(&db, &["show", &uuid, "--json"], None)).expect("json");
    assert_eq!(shown["attempts"], json!([]));
    fails(&db, &["show", "no-such-uuid"], None);

    assert!(ok(&db, &["stats"], None).contains("pending        1"));

    for bad in ["0s", "", "30", "soon", "-1d"] {
        fails(&db, &["purge", "--older-than", bad], None);
    }
    fails(&db, &["purge"], None);
    assert!(ok(&db, &["purge", "--older-than", "1d"], None).contains("purged 0"));

    // A pending delivery is not redriven; a dead letter is.
    let stderr = fails(&db, &["redrive", &uuid], None);
    assert!(stderr.contains("not dead_letter"), "{stderr}");
    dead_letter(&db);
    assert!(ok(&db, &["redrive", &uuid], None).contains("redriven 1"));
    dead_letter(&db);
    let all = ok(
        &db,
        &["redrive", "--all-dead-letters", "--organization-id", "7"],
        None,
    );
    assert!(all.contains("redriven 1"), "{all}");
    fails(&db, &["redrive"], None);

    assert!(ok(&db, &["migrate", "down"], None).contains("rolled back migration 1"));
}

/// Claims every due row and dead-letters it, as a failed final attempt would.
fn dead_letter(db: &str) {
    let store = outbox::store::open(db, &Default::default()).expect("open");
    let now = outbox::clock::now();
    let claims = store
        .claim_due(now, 100, Duration::from_secs(60))
        .expect("claim");
    assert!(!claims.is_empty());
    let outcomes: Vec<Outcome> = claims
        .into_iter()
        .map(|c| Outcome {
            delivery_id: c.delivery.id,
            lease_token: c.lease_token,
            transition: Transition::DeadLetter {
                status_code: Some(401),
                error: "HTTP 401".into(),
            },
            attempt: None,
        })
        .collect();
    store.record(&outcomes, now).expect("record");
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["migrate", "up", "--help"],
        vec!["migrate", "down", "--help"],
        vec!["migrate", "status", "--help"],
        vec!["enqueue", "--help"],
        vec!["list", "--help"],
        vec!["show", "--help"],
        vec!["redrive", "--help"],
        vec!["purge", "--help"],
        vec!["stats", "--help"],
    ] {
        let out = ok("unused.db", &args, None);
        assert!(out.contains("Usage"), "{args:?}: {out}");
        assert!(
            out.contains("OUTBOX_DATABASE"),
            "{args:?} names no env fallback: {out}"
        );
    }
    let serve = ok("unused.db", &["serve", "--help"], None);
    assert!(serve.contains("OUTBOX_LISTEN") && serve.contains("WEBHOOK_DELIVERY_MAX_ATTEMPTS"));
}

#[test]
fn a_bad_database_path_names_the_path() {
    let stderr = fails("/nonexistent-dir/sub/outbox.db", &["stats"], None);
    assert!(
        stderr.contains("/nonexistent-dir/sub/outbox.db"),
        "{stderr}"
    );
    let stderr = fails(
        "unused.db",
        &["--database", "/nonexistent-dir/x.db", "list"],
        None,
    );
    assert!(stderr.contains("/nonexistent-dir/x.db"), "{stderr}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits for the child to exit, up to `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn serve_delivers_a_cli_enqueue_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = temp_db(dir.path());
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
    let mut child = outbox(&db)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("OUTBOX_POLL_INTERVAL_MS", "100")
        .env("WEBHOOK_DELIVERY_BASE_DELAY_SECONDS", "0.05")
        .env("OUTBOX_SENDERS", "2")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start serve");
    let serve_log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();

    // Ready when /healthz answers (serve migrates the new file itself).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = agent
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().ok().flatten().is_none(),
            "serve did not come up: {}",
            serve_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let created: Value = serde_json::from_str(&ok(
        &db,
        &["enqueue"],
        Some(&delivery_body(&receiver.url())),
    ))
    .expect("json");
    let uuid = created["delivery"]["delivery_uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let got = receiver.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "not delivered: {}", serve_log());
    assert_eq!(got[0].header("X-Dograh-Delivery-Id"), Some(uuid.as_str()));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown: Value =
            serde_json::from_str(&ok(&db, &["show", &uuid, "--json"], None)).expect("json");
        if shown["status"] == "succeeded" {
            assert_eq!(shown["attempts"][0]["status_code"], 200);
            break;
        }
        assert!(Instant::now() < deadline, "not succeeded: {shown}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_exit(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("serve exits after SIGTERM");
    assert!(
        status.success(),
        "serve exited with {status}: {}",
        serve_log()
    );
    let log = serve_log();
    assert!(log.contains("stopped"), "{log}");
}
