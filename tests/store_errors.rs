//! Bad input to the store: a clear error naming the file or URL, never a panic.

mod common;

use outbox::store::{self, StoreOptions};

fn open_err(database: &str) -> String {
    match store::open(database, &StoreOptions::default()) {
        Ok(_) => panic!("opening {database} should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unwritable_directory_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("outbox.db");
    let message = open_err(path.to_str().unwrap());
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn corrupt_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let message = open_err(path.to_str().unwrap());
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    assert!(message.contains("not a database"), "{message}");
}

#[test]
fn read_only_file_is_refused_at_open() {
    use std::os::unix::fs::PermissionsExt;
    let t = common::sqlite();
    drop(t.store);
    std::fs::set_permissions(&t.database, std::fs::Permissions::from_mode(0o444)).unwrap();
    // Root ignores file modes; the check only means something for other users.
    if unsafe_is_root() {
        return;
    }
    let message = open_err(&t.database);
    assert!(message.contains(&t.database), "{message}");
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn missing_tables_say_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let store = store::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let message = store::check_schema(store.as_ref()).unwrap_err().to_string();
    assert!(message.contains("outbox migrate up"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    // Used anyway, a call fails with an error, not a panic.
    let message = store.get("x").unwrap_err().to_string();
    assert!(message.contains("no such table"), "{message}");
}

#[test]
fn wrong_postgres_url_names_the_url_without_password() {
    let message = open_err("postgres://outbox:hunter2@127.0.0.1:1/outbox");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let message = open_err("postgres://outbox@127.0.0.1:5432/db?sslmode=bogus");
    assert!(message.contains("PostgreSQL"), "{message}");
}

#[test]
fn postgres_missing_tables_say_what_to_run() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = format!("outbox_empty_{}", uuid::Uuid::new_v4().simple());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let options = StoreOptions {
        postgres_schema: Some(schema.clone()),
        ..Default::default()
    };
    let store = store::open(&url, &options).unwrap();
    let message = store::check_schema(store.as_ref()).unwrap_err().to_string();
    assert!(message.contains("outbox migrate up"), "{message}");
    let message = store.get("x").unwrap_err().to_string();
    assert!(message.contains("webhook_deliveries"), "{message}");
    drop(store);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

#[test]
fn a_schema_from_a_newer_outbox_is_refused() {
    let t = common::sqlite();
    // A newer outbox applied migration 99; this binary must not run on that schema.
    let conn = rusqlite::Connection::open(&t.database).unwrap();
    conn.execute(
        "INSERT INTO outbox_migrations (version, name, applied_at) VALUES (99, 'future', 0)",
        [],
    )
    .unwrap();
    let states = t.store.migration_status().unwrap();
    assert!(states.iter().any(|m| m.version == 99 && m.applied));
    let message = store::check_schema(t.store.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("[99]") && message.contains("newer outbox"),
        "{message}"
    );
}
