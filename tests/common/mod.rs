//! Shared test harness: real stores (an SQLite file in a temp dir, a PostgreSQL schema of its
//! own per test) and delivery builders.
#![allow(dead_code)]

pub mod receiver;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use outbox::delivery::NewDelivery;
use outbox::store::{self, Store, StoreOptions};

/// A store under test, with whatever must live as long as it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    /// The value to give `--database` / `OUTBOX_DATABASE` to reach the same store.
    pub database: String,
    /// SQLite: the temp dir holding the file. PostgreSQL: the schema to drop.
    _guard: Guard,
    pub postgres_schema: Option<String>,
}

enum Guard {
    Dir(tempfile::TempDir),
    Schema { url: String, schema: String },
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Schema { url, schema } = self
            && let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls)
        {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// A fresh, migrated SQLite store in a temp dir.
pub fn sqlite() -> TestStore {
    sqlite_with(&StoreOptions::default())
}

pub fn sqlite_with(options: &StoreOptions) -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("outbox.db").to_string_lossy().into_owned();
    let store = store::open(&path, options).expect("open sqlite");
    store.migrate_up().expect("migrate sqlite");
    TestStore {
        store,
        database: path,
        _guard: Guard::Dir(dir),
        postgres_schema: None,
    }
}

/// The PostgreSQL server for tests, from `OUTBOX_TEST_POSTGRES_URL`. Unset: `None` (the test
/// is skipped), except under CI, where PostgreSQL tests must run and so fail instead.
pub fn postgres_url() -> Option<String> {
    match std::env::var("OUTBOX_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but OUTBOX_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI")
        }
        _ => {
            eprintln!("OUTBOX_TEST_POSTGRES_URL is not set: skipping a PostgreSQL test");
            None
        }
    }
}

/// A fresh, migrated PostgreSQL store in a schema of its own, dropped afterwards.
pub fn postgres() -> Option<TestStore> {
    postgres_with(&StoreOptions::default())
}

pub fn postgres_with(options: &StoreOptions) -> Option<TestStore> {
    let url = postgres_url()?;
    let schema = unique_schema();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL at OUTBOX_TEST_POSTGRES_URL is not reachable: {e}"));
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create test schema");
    let options = StoreOptions {
        postgres_schema: Some(schema.clone()),
        ..options.clone()
    };
    let store = store::open(&url, &options).expect("open postgres");
    store.migrate_up().expect("migrate postgres");
    let database = with_search_path(&url, &schema);
    Some(TestStore {
        store,
        database,
        _guard: Guard::Schema {
            url,
            schema: schema.clone(),
        },
        postgres_schema: Some(schema),
    })
}

/// The URL with `options=-c search_path=<schema>`, so a child process lands in the same schema.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

fn unique_schema() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "outbox_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A delivery for run `run`, node `node`, organization 7, due now.
pub fn new_delivery(run: i64, node: &str) -> NewDelivery {
    NewDelivery {
        organization_id: 7,
        workflow_run_id: run,
        webhook_node_id: node.to_string(),
        webhook_name: Some("Final Webhook".into()),
        endpoint_url: "https://example.com/hook".into(),
        http_method: "POST".into(),
        payload: r#"{"event":"call_done"}"#.into(),
        custom_headers: Vec::new(),
        credential_uuid: None,
        max_attempts: 5,
        scheduled_for: None,
    }
}
