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

/// An engine configuration with short delays, so retries happen in milliseconds.
pub fn fast_engine_config() -> outbox::config::EngineConfig {
    use std::time::Duration;
    let mut config = outbox::config::EngineConfig {
        senders: 4,
        claim_batch: 64,
        poll_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    config.retry.base_delay = Duration::from_millis(50);
    config.retry.max_delay = Duration::from_millis(500);
    config.retry.retry_after_cap = Duration::from_secs(10);
    config.http.timeout = Duration::from_secs(1);
    config.http.connect_timeout = Duration::from_secs(1);
    config.http.idle_per_host = 4;
    config.lease = Duration::from_secs(6);
    config
}

/// A running engine over a store, with the real ureq sender, a vault and the system clock.
pub struct RunningEngine {
    pub engine: Option<outbox::engine::Engine>,
    pub vault: Arc<outbox::vault::Vault>,
    pub metrics: Arc<outbox::metrics::Metrics>,
}

impl RunningEngine {
    pub fn start(store: &Arc<dyn Store>, config: outbox::config::EngineConfig) -> RunningEngine {
        let key = outbox::secret_box::MasterKey::generate().expect("key");
        let vault = Arc::new(outbox::vault::Vault::new(Arc::clone(store), key));
        let metrics = Arc::new(outbox::metrics::Metrics::default());
        let sender = Arc::new(outbox::send::UreqSender::new(&config.http).expect("sender"));
        let engine = outbox::engine::Engine::start(
            Arc::clone(store),
            sender,
            vault.clone(),
            Arc::new(outbox::clock::SystemClock),
            config,
            Arc::clone(&metrics),
        )
        .expect("engine starts");
        RunningEngine {
            engine: Some(engine),
            vault,
            metrics,
        }
    }

    pub fn wake(&self) {
        if let Some(e) = &self.engine {
            e.waker().wake();
        }
    }

    pub fn shutdown(&mut self) -> Option<outbox::engine::DrainReport> {
        self.engine.take().map(|e| e.shutdown())
    }
}

impl Drop for RunningEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until the delivery is no longer pending (or `timeout` passes) and returns it.
pub fn wait_terminal(
    store: &Arc<dyn Store>,
    uuid: &str,
    timeout: std::time::Duration,
) -> outbox::delivery::DeliveryDetail {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let detail = store.get(uuid).expect("get").expect("exists");
        if detail.delivery.status != outbox::delivery::Status::Pending
            || std::time::Instant::now() >= deadline
        {
            return detail;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
