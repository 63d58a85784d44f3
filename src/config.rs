//! Configuration: every setting with its default, read from the environment, validated once.
//! A configuration that cannot work (a lease shorter than a request) refuses to start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::policy::RetryPolicy;
use crate::send::HttpConfig;
use crate::store::{StoreOptions, Synchronous, is_postgres_url};

/// Default database: an SQLite file in the working directory.
pub const DEFAULT_DATABASE: &str = "./outbox.db";
/// Default API address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8425";
/// The lease must exceed the request deadline by this much, so an outcome is written before
/// another worker may take the row.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Settings of the delivery engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Sender threads (`OUTBOX_SENDERS`). Default 16.
    pub senders: usize,
    /// Attempts per delivery, frozen on the row at enqueue (`WEBHOOK_DELIVERY_MAX_ATTEMPTS`). Default 5.
    pub max_attempts: u32,
    /// Backoff and Retry-After (`WEBHOOK_DELIVERY_BASE_DELAY_SECONDS` default 30,
    /// `WEBHOOK_DELIVERY_MAX_DELAY_SECONDS` default 600, `OUTBOX_RETRY_AFTER_CAP_SECONDS` default 3600).
    pub retry: RetryPolicy,
    /// The HTTP client (`WEBHOOK_DELIVERY_TIMEOUT_SECONDS` default 30 is the total deadline,
    /// `OUTBOX_CONNECT_TIMEOUT_SECONDS` default 10, `OUTBOX_HTTP_PROXY` default none).
    pub http: HttpConfig,
    /// How long a claim holds a row (`OUTBOX_LEASE_SECONDS`). Default timeout + 60 s (the
    /// origin's 90 s); at least timeout + [`LEASE_MARGIN`].
    pub lease: Duration,
    /// Most rows claimed at once (`OUTBOX_CLAIM_BATCH`). Default 256.
    pub claim_batch: u32,
    /// Longest sleep between looks at the store, the backstop for rows other processes insert
    /// (`OUTBOX_POLL_INTERVAL_MS`). Default 1000 ms.
    pub poll_interval: Duration,
    /// How long a graceful stop waits for in-flight sends (`OUTBOX_DRAIN_SECONDS`). Default 30 s.
    pub drain_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let http = HttpConfig::default();
        EngineConfig {
            senders: 16,
            max_attempts: 5,
            retry: RetryPolicy::default(),
            lease: http.timeout + Duration::from_secs(60),
            http,
            claim_batch: 256,
            poll_interval: Duration::from_millis(1000),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl EngineConfig {
    /// Checks that the settings can work together.
    ///
    /// # Errors
    /// [`Error::Config`] saying which setting is wrong and why.
    pub fn validate(&self) -> Result<()> {
        let need = self.http.timeout + LEASE_MARGIN;
        if self.lease < need {
            return Err(Error::Config(format!(
                "OUTBOX_LEASE_SECONDS ({}s) must be at least the request timeout \
                 WEBHOOK_DELIVERY_TIMEOUT_SECONDS ({}s) plus {}s, or a slow request could \
                 outlive its lease and be sent twice",
                self.lease.as_secs_f64(),
                self.http.timeout.as_secs_f64(),
                LEASE_MARGIN.as_secs()
            )));
        }
        if self.senders == 0 || self.senders > 1024 {
            return Err(Error::Config(format!(
                "OUTBOX_SENDERS must be 1..=1024, not {}",
                self.senders
            )));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(Error::Config(format!(
                "WEBHOOK_DELIVERY_MAX_ATTEMPTS must be 1..=100, not {}",
                self.max_attempts
            )));
        }
        if self.claim_batch == 0 {
            return Err(Error::Config(
                "OUTBOX_CLAIM_BATCH must be at least 1".into(),
            ));
        }
        if self.http.timeout.is_zero() || self.poll_interval.is_zero() {
            return Err(Error::Config(
                "WEBHOOK_DELIVERY_TIMEOUT_SECONDS and OUTBOX_POLL_INTERVAL_MS must be positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Everything `outbox serve` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `OUTBOX_DATABASE`: an SQLite file path or a `postgres://` URL. Default [`DEFAULT_DATABASE`].
    pub database: String,
    /// `OUTBOX_LISTEN`. Default [`DEFAULT_LISTEN`].
    pub listen: String,
    /// `OUTBOX_API_TOKEN`: accepted bearer tokens, comma-separated. Default none, which is
    /// allowed only on a loopback address.
    pub api_tokens: Vec<String>,
    /// `OUTBOX_KEY_FILE`: the master key that seals credential secrets. Default `outbox.key`
    /// beside the SQLite file, or in the working directory for PostgreSQL.
    pub key_file: PathBuf,
    /// `OUTBOX_SQLITE_SYNCHRONOUS`: `full` (default) or `normal`.
    pub synchronous: Synchronous,
    /// `OUTBOX_POOL_SIZE`: database connections. Default 8.
    pub pool_size: u32,
    /// `OUTBOX_MAX_BODY_BYTES`: the largest API request body. Default 1 MiB.
    pub max_body_bytes: usize,
    pub engine: EngineConfig,
}

/// Every environment variable read, for `--help` texts and the README.
pub const VARIABLES: &[&str] = &[
    "OUTBOX_DATABASE",
    "OUTBOX_LISTEN",
    "OUTBOX_API_TOKEN",
    "OUTBOX_KEY_FILE",
    "OUTBOX_SQLITE_SYNCHRONOUS",
    "OUTBOX_POOL_SIZE",
    "OUTBOX_MAX_BODY_BYTES",
    "OUTBOX_SENDERS",
    "WEBHOOK_DELIVERY_MAX_ATTEMPTS",
    "WEBHOOK_DELIVERY_BASE_DELAY_SECONDS",
    "WEBHOOK_DELIVERY_MAX_DELAY_SECONDS",
    "WEBHOOK_DELIVERY_TIMEOUT_SECONDS",
    "OUTBOX_CONNECT_TIMEOUT_SECONDS",
    "OUTBOX_RETRY_AFTER_CAP_SECONDS",
    "OUTBOX_LEASE_SECONDS",
    "OUTBOX_CLAIM_BATCH",
    "OUTBOX_POLL_INTERVAL_MS",
    "OUTBOX_DRAIN_SECONDS",
    "OUTBOX_HTTP_PROXY",
];

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable that does not parse or does not fit.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a test's map). Empty
    /// values count as unset.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable that does not parse or does not fit.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut engine = EngineConfig::default();
        let database = get("OUTBOX_DATABASE").unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let key_file = match get("OUTBOX_KEY_FILE") {
            Some(path) => PathBuf::from(path),
            None => default_key_file(&database),
        };
        if let Some(v) = get("OUTBOX_SENDERS") {
            engine.senders = parse_number("OUTBOX_SENDERS", &v)?;
        }
        if let Some(v) = get("WEBHOOK_DELIVERY_MAX_ATTEMPTS") {
            engine.max_attempts = parse_number("WEBHOOK_DELIVERY_MAX_ATTEMPTS", &v)?;
        }
        if let Some(v) = get("WEBHOOK_DELIVERY_BASE_DELAY_SECONDS") {
            engine.retry.base_delay = parse_seconds("WEBHOOK_DELIVERY_BASE_DELAY_SECONDS", &v)?;
        }
        if let Some(v) = get("WEBHOOK_DELIVERY_MAX_DELAY_SECONDS") {
            engine.retry.max_delay = parse_seconds("WEBHOOK_DELIVERY_MAX_DELAY_SECONDS", &v)?;
        }
        if let Some(v) = get("OUTBOX_RETRY_AFTER_CAP_SECONDS") {
            engine.retry.retry_after_cap = parse_seconds("OUTBOX_RETRY_AFTER_CAP_SECONDS", &v)?;
        }
        if let Some(v) = get("WEBHOOK_DELIVERY_TIMEOUT_SECONDS") {
            engine.http.timeout = parse_seconds("WEBHOOK_DELIVERY_TIMEOUT_SECONDS", &v)?;
            engine.lease = engine.http.timeout + Duration::from_secs(60);
        }
        if let Some(v) = get("OUTBOX_CONNECT_TIMEOUT_SECONDS") {
            engine.http.connect_timeout = parse_seconds("OUTBOX_CONNECT_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = get("OUTBOX_LEASE_SECONDS") {
            engine.lease = parse_seconds("OUTBOX_LEASE_SECONDS", &v)?;
        }
        if let Some(v) = get("OUTBOX_CLAIM_BATCH") {
            engine.claim_batch = parse_number("OUTBOX_CLAIM_BATCH", &v)?;
        }
        if let Some(v) = get("OUTBOX_POLL_INTERVAL_MS") {
            engine.poll_interval =
                Duration::from_millis(parse_number("OUTBOX_POLL_INTERVAL_MS", &v)?);
        }
        if let Some(v) = get("OUTBOX_DRAIN_SECONDS") {
            engine.drain_timeout = parse_seconds("OUTBOX_DRAIN_SECONDS", &v)?;
        }
        engine.http.proxy = get("OUTBOX_HTTP_PROXY");
        engine.http.idle_per_host = engine.senders;
        let synchronous = match get("OUTBOX_SQLITE_SYNCHRONOUS") {
            Some(v) => Synchronous::parse(&v)
                .map_err(|e| Error::Config(format!("OUTBOX_SQLITE_SYNCHRONOUS: {e}")))?,
            None => Synchronous::Full,
        };
        let config = Config {
            database,
            listen: get("OUTBOX_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            api_tokens: get("OUTBOX_API_TOKEN")
                .map(|v| {
                    v.split(',')
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            key_file,
            synchronous,
            pool_size: match get("OUTBOX_POOL_SIZE") {
                Some(v) => parse_number("OUTBOX_POOL_SIZE", &v)?,
                None => 8,
            },
            max_body_bytes: match get("OUTBOX_MAX_BODY_BYTES") {
                Some(v) => parse_number("OUTBOX_MAX_BODY_BYTES", &v)?,
                None => 1024 * 1024,
            },
            engine,
        };
        config.engine.validate()?;
        Ok(config)
    }

    /// The store options these settings imply.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            synchronous: self.synchronous,
            pool_size: self.pool_size,
            postgres_schema: None,
        }
    }
}

/// `outbox.key` beside an SQLite file; in the working directory for PostgreSQL.
pub fn default_key_file(database: &str) -> PathBuf {
    if is_postgres_url(database) {
        return PathBuf::from("outbox.key");
    }
    match Path::new(database).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("outbox.key"),
        _ => PathBuf::from("outbox.key"),
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name}: {value:?} is not a valid whole number")))
}

/// Seconds, fractions allowed (`0.5`), so tests and tight setups can go below one second.
fn parse_seconds(name: &str, value: &str) -> Result<Duration> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name}: {value:?} is not a number of seconds")))?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(Error::Config(format!(
            "{name}: {value:?} is out of range (0 to 1e9 seconds)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_origins() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database, "./outbox.db");
        assert_eq!(c.listen, "127.0.0.1:8425");
        assert_eq!(c.key_file, PathBuf::from("./outbox.key"));
        assert_eq!(c.engine.max_attempts, 5);
        assert_eq!(c.engine.retry.base_delay, Duration::from_secs(30));
        assert_eq!(c.engine.retry.max_delay, Duration::from_secs(600));
        assert_eq!(c.engine.http.timeout, Duration::from_secs(30));
        assert_eq!(c.engine.lease, Duration::from_secs(90));
        assert_eq!(c.synchronous, Synchronous::Full);
        assert!(c.api_tokens.is_empty());
    }

    #[test]
    fn origin_variables_override() {
        let c = config(&[
            ("WEBHOOK_DELIVERY_MAX_ATTEMPTS", "7"),
            ("WEBHOOK_DELIVERY_BASE_DELAY_SECONDS", "0.5"),
            ("WEBHOOK_DELIVERY_MAX_DELAY_SECONDS", "60"),
            ("WEBHOOK_DELIVERY_TIMEOUT_SECONDS", "10"),
            ("OUTBOX_API_TOKEN", "a, b,,"),
            ("OUTBOX_DATABASE", "/var/lib/outbox/outbox.db"),
        ])
        .unwrap();
        assert_eq!(c.engine.max_attempts, 7);
        assert_eq!(c.engine.retry.base_delay, Duration::from_millis(500));
        assert_eq!(
            c.engine.lease,
            Duration::from_secs(70),
            "follows the timeout"
        );
        assert_eq!(c.api_tokens, vec!["a", "b"]);
        assert_eq!(c.key_file, PathBuf::from("/var/lib/outbox/outbox.key"));
    }

    #[test]
    fn short_lease_refuses_to_start_and_says_why() {
        let e = config(&[
            ("WEBHOOK_DELIVERY_TIMEOUT_SECONDS", "30"),
            ("OUTBOX_LEASE_SECONDS", "31"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("OUTBOX_LEASE_SECONDS") && e.contains("sent twice"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("OUTBOX_SENDERS", "many"),
            ("OUTBOX_SENDERS", "0"),
            ("WEBHOOK_DELIVERY_MAX_ATTEMPTS", "0"),
            ("WEBHOOK_DELIVERY_TIMEOUT_SECONDS", "-1"),
            ("OUTBOX_SQLITE_SYNCHRONOUS", "off"),
            ("OUTBOX_POLL_INTERVAL_MS", "1.5"),
        ] {
            let e = config(&[(name, value)]).unwrap_err().to_string();
            assert!(e.contains(name), "{name}={value}: {e}");
        }
    }
}
