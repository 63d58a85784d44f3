//! The benchmark: `cargo run --release --example bench -- [options]`.
//!
//! Starts a fast local receiver (threads of this process), then measures and prints:
//! 0. disk: what a 4 KiB write and its fsync cost where the databases are (the naive loop and
//!    the enqueue rate wait on it);
//! 1. ceiling: bare HTTP POSTs to the receiver with the same sender count (no database);
//! 2. naive: a per-row loop (claim 1, send, record 1; a synced commit each, SQLite STRICT),
//!    the design replaced;
//! 3. outbox: the real engine draining a backlog of N deliveries (1 KiB payloads) on SQLite
//!    in each OUTBOX_SQLITE_SYNCHRONOUS mode (FULL, the default; NORMAL; STRICT), and on
//!    PostgreSQL when `--postgres URL` is given; before it, "store only": the same backlog
//!    claimed and recorded by one thread, nothing sent (what the store costs a delivery),
//!    and the rate that backlog was written at (`create_many` in batches of 2,000);
//! 4. enqueue: deliveries/s accepted through the HTTP API of a real `outbox serve` process
//!    with 16 keep-alive clients (each 201 means committed), on SQLite (FULL) and, when
//!    `--postgres URL` is given, on PostgreSQL (in a schema of its own);
//! 5. latency: enqueue -> first attempt p50/p99 at a fixed offered rate;
//! 6. the `outbox serve` process's peak RSS under load, RSS when idle, and its CPU use over
//!    10 s with nothing due (4-6 for each backend).
//!
//! It prints figures; it does not pass or fail.
//!
//! Options (defaults): --deliveries 100000, --senders 4, --postgres URL (none),
//! --rate 1000 (latency, per second), --latency-seconds 5, --enqueue-seconds 5,
//! --enqueue-warmup-seconds 2 (enqueues before the measured ones, on the same fresh database),
//! --enqueue-clients 16, --idle-seconds 10, --only LIST (comma-separated sections:
//! disk,ceiling,naive,store,outbox,serve), --modes LIST (SQLite modes drained: full,normal,strict; "" for none).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::clock::{self, SystemClock};
use outbox::config::EngineConfig;
use outbox::delivery::{Attempt, NewDelivery, Outcome, Transition};
use outbox::engine::{CredentialSource, Engine};
use outbox::headers::request_headers;
use outbox::http_server::{Response, Server, ServerConfig, ServerHandle};
use outbox::metrics::{AttemptResult, Metrics};
use outbox::send::{Request, Sender, UreqSender};
use outbox::store::{self, Store, StoreOptions, Synchronous};

struct Args {
    deliveries: usize,
    senders: usize,
    postgres: Option<String>,
    rate: u32,
    latency_seconds: u64,
    enqueue_seconds: u64,
    enqueue_warmup_seconds: u64,
    enqueue_clients: usize,
    idle_seconds: u64,
    only: Option<Vec<String>>,
    modes: Vec<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            deliveries: 100_000,
            senders: 4,
            postgres: None,
            rate: 1000,
            latency_seconds: 5,
            enqueue_seconds: 5,
            enqueue_warmup_seconds: 2,
            enqueue_clients: 16,
            idle_seconds: 10,
            only: None,
            modes: vec!["full".into(), "normal".into(), "strict".into()],
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let number = |v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag}: {v:?} is not a number"))
            };
            match flag.as_str() {
                "--deliveries" => args.deliveries = number(value()?)? as usize,
                "--senders" => args.senders = number(value()?)? as usize,
                "--postgres" => args.postgres = Some(value()?),
                "--rate" => args.rate = number(value()?)? as u32,
                "--latency-seconds" => args.latency_seconds = number(value()?)?,
                "--enqueue-seconds" => args.enqueue_seconds = number(value()?)?,
                "--enqueue-warmup-seconds" => args.enqueue_warmup_seconds = number(value()?)?,
                "--enqueue-clients" => args.enqueue_clients = number(value()?)? as usize,
                "--idle-seconds" => args.idle_seconds = number(value()?)?,
                "--only" => args.only = Some(value()?.split(',').map(str::to_string).collect()),
                "--modes" => {
                    args.modes = value()?
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "--help" | "-h" => {
                    println!(
                        "{}",
                        include_str!("bench.rs")
                            .lines()
                            .take_while(|l| l.starts_with("//!"))
                            .map(|l| l.trim_start_matches("//!").trim_start())
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown option {other} (see --help)")),
            }
        }
        if args.deliveries == 0 || args.senders == 0 || args.rate == 0 {
            return Err("--deliveries, --senders and --rate must be positive".into());
        }
        Ok(args)
    }

    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

/// The local receiver: answers 200 at once, counts requests, and notes when each run id first
/// arrived (for the latency section).
struct Receiver {
    handle: Option<ServerHandle>,
    url: String,
    requests: Arc<AtomicU64>,
    first_seen: Arc<Mutex<HashMap<i64, Instant>>>,
    track: Arc<AtomicBool>,
    /// While set, each request takes a second: the engine's senders wait instead of competing
    /// for the CPU (used to measure the API on its own).
    slow: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let server = Server::bind("127.0.0.1:0", ServerConfig::default()).expect("bind receiver");
        let url = format!("http://{}/hook", server.local_addr());
        let requests = Arc::new(AtomicU64::new(0));
        let first_seen = Arc::new(Mutex::new(HashMap::new()));
        let track = Arc::new(AtomicBool::new(false));
        let slow = Arc::new(AtomicBool::new(false));
        let (r, f, t, sl) = (
            requests.clone(),
            first_seen.clone(),
            track.clone(),
            slow.clone(),
        );
        let handle = server.serve(move |req| {
            r.fetch_add(1, Ordering::Relaxed);
            if sl.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
            }
            if t.load(Ordering::Relaxed)
                && let Some(run) = req
                    .header("X-Dograh-Workflow-Run-Id")
                    .and_then(|v| v.parse().ok())
            {
                f.lock().unwrap().entry(run).or_insert_with(Instant::now);
            }
            Response::text(200, "ok")
        });
        Receiver {
            handle: Some(handle.expect("start the receiver")),
            url,
            requests,
            first_seen,
            track,
            slow,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

struct NoCredentials;

impl CredentialSource for NoCredentials {
    fn auth_header(&self, uuid: &str, _: i64) -> Result<(String, String), String> {
        Err(format!("no credential {uuid} in the benchmark"))
    }
}

fn payload_1k(run: i64) -> String {
    static FILLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let filler = FILLER.get_or_init(|| {
        "x".repeat(
            std::env::var("BENCH_FILLER")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024 - 60),
        )
    });
    format!(r#"{{"event":"call_done","run":{run},"filler":"{filler}"}}"#)
}

fn new_delivery(url: &str, run: i64) -> NewDelivery {
    NewDelivery {
        organization_id: 1,
        workflow_run_id: run,
        webhook_node_id: "bench".into(),
        webhook_name: None,
        endpoint_url: url.to_string(),
        http_method: "POST".into(),
        payload: payload_1k(run),
        custom_headers: Vec::new(),
        credential_uuid: None,
        max_attempts: 5,
        scheduled_for: None,
    }
}

/// Writes the backlog in batches of [`FILL_BATCH`]; returns the rows written a second.
fn fill(store: &Arc<dyn Store>, url: &str, n: usize) -> f64 {
    let news: Vec<NewDelivery> = (0..n as i64).map(|run| new_delivery(url, run)).collect();
    let started = Instant::now();
    for chunk in news.chunks(FILL_BATCH) {
        for r in store.create_many(chunk, clock::now()).expect("fill") {
            r.expect("create");
        }
    }
    rate(n as u64, started.elapsed())
}

/// Rows a `create_many` call of the backlog's fill writes.
const FILL_BATCH: usize = 2000;

/// Fills the backlog, then lets the background checkpoint copy the fill's WAL into the
/// database, so what is measured next is not charged for the fill's I/O.
fn fill_and_settle(store: &Arc<dyn Store>, url: &str, n: usize) -> f64 {
    let written = fill(store, url, n);
    std::thread::sleep(Duration::from_secs(3));
    written
}

fn engine_config(senders: usize) -> EngineConfig {
    let mut config = EngineConfig {
        senders,
        ..Default::default()
    };
    config.http.idle_per_host = senders;
    config
}

fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// A rate, and the CPU this process used meanwhile (in cores: 2.0 is both cores all the time),
/// which tells a CPU-bound figure from one that waited; for PostgreSQL, also what its server
/// processes on this machine used.
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    cores: f64,
    server_cores: Option<f64>,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // CPU time per operation: what a ratio of two rates comes down to when both are
        // bound by CPU.
        let per_op = |cores: f64| cores / self.rate.max(1.0) * 1e6;
        write!(
            f,
            "{:.0}   ({:.2} cores busy, {:.0} us CPU each",
            self.rate,
            self.cores,
            per_op(self.cores)
        )?;
        if let Some(server) = self.server_cores {
            write!(
                f,
                "; PostgreSQL server {server:.2} cores, {:.0} us each",
                per_op(server)
            )?;
        }
        write!(f, ")")
    }
}

/// CPU ticks of this process and, when `postgres` is set, of the PostgreSQL server's processes
/// on this machine, to measure a span with [`CpuSpan::end`].
struct CpuSpan {
    start: Instant,
    own: u64,
    server: Option<u64>,
}

impl CpuSpan {
    fn start(postgres: bool) -> CpuSpan {
        CpuSpan {
            start: Instant::now(),
            own: cpu_ticks(std::process::id()),
            server: postgres.then(postgres_server_ticks),
        }
    }

    /// `n` operations done since the start.
    fn end(&self, n: u64) -> Measured {
        let took = self.start.elapsed();
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / took.as_secs_f64();
        Measured {
            rate: rate(n, took),
            cores: cores(cpu_ticks(std::process::id()) - self.own),
            server_cores: self
                .server
                .map(|before| cores(postgres_server_ticks().saturating_sub(before))),
        }
    }
}

/// CPU ticks of every process named `postgres` (the server's backends and helpers; a
/// backend that exits meanwhile takes its ticks with it, so the figure is a lower bound).
fn postgres_server_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_ticks)
        .sum()
}

/// USER_HZ on Linux: the unit of the CPU times in /proc.
const TICKS_PER_SECOND: f64 = 100.0;

/// 1. Bare POSTs with the same client, headers and body, no database.
fn ceiling(args: &Args, receiver: &Receiver) -> Measured {
    let sender = Arc::new(UreqSender::new(&engine_config(args.senders).http).unwrap());
    let total = args.deliveries.min(100_000);
    let next = Arc::new(AtomicUsize::new(0));
    let span = CpuSpan::start(false);
    let threads: Vec<_> = (0..args.senders)
        .map(|_| {
            let (sender, next, url) = (sender.clone(), next.clone(), receiver.url.clone());
            std::thread::spawn(move || {
                let body = payload_1k(0);
                let headers = request_headers(
                    true,
                    None,
                    &[],
                    "00000000-0000-0000-0000-000000000000",
                    0,
                    1,
                );
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    sender.send(&Request {
                        method: "POST",
                        url: &url,
                        headers: &headers,
                        body: Some(body.as_bytes()),
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    span.end(total as u64)
}

/// 2. The replaced design: every row claimed alone, sent, and recorded alone.
fn naive(args: &Args, receiver: &Receiver, dir: &std::path::Path) -> f64 {
    let path = dir.join("naive.db");
    // Every write a synced commit, as the origin's per-row loop on PostgreSQL.
    let options = StoreOptions {
        synchronous: Synchronous::Strict,
        ..Default::default()
    };
    let store = store::open(path.to_str().unwrap(), &options).unwrap();
    store.migrate_up().unwrap();
    let total = args.deliveries.min(20_000);
    fill(&store, &receiver.url, total);
    let sender = Arc::new(UreqSender::new(&engine_config(args.senders).http).unwrap());
    let start = Instant::now();
    let threads: Vec<_> = (0..args.senders)
        .map(|_| {
            let (store, sender) = (store.clone(), sender.clone());
            std::thread::spawn(move || {
                loop {
                    let claims = store
                        .claim_due(clock::now(), 1, Duration::from_secs(90))
                        .unwrap();
                    let Some(claim) = claims.into_iter().next() else {
                        return;
                    };
                    let d = &claim.delivery;
                    let headers = request_headers(
                        true,
                        None,
                        &[],
                        &d.delivery_uuid,
                        d.workflow_run_id,
                        claim.attempt(),
                    );
                    sender.send(&Request {
                        method: "POST",
                        url: &d.endpoint_url,
                        headers: &headers,
                        body: Some(d.payload.as_bytes()),
                    });
                    let outcome = Outcome {
                        delivery_id: d.id,
                        lease_token: claim.lease_token.clone(),
                        transition: Transition::Succeeded { status_code: 200 },
                        attempt: None,
                    };
                    store.record(&[outcome], clock::now()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rate(total as u64, start.elapsed())
}

/// Section 3: the engine draining a backlog of `n` rows. `before` runs once the backlog is
/// written, right before the engine starts.
fn drain(
    args: &Args,
    receiver: &Receiver,
    store: Arc<dyn Store>,
    before: impl FnOnce(),
) -> Measured {
    let n = args.deliveries;
    fill_and_settle(&store, &receiver.url, n);
    before();
    let metrics = Arc::new(Metrics::default());
    let config = engine_config(args.senders);
    let sender = Arc::new(UreqSender::new(&config.http).unwrap());
    let span = CpuSpan::start(is_postgres(&*store));
    let engine = Engine::start(
        store.clone(),
        sender,
        Arc::new(NoCredentials),
        Arc::new(SystemClock),
        config,
        metrics.clone(),
    )
    .expect("engine");
    while metrics.attempts(AttemptResult::Succeeded) < n as u64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let measured = span.end(n as u64);
    engine.shutdown();
    let stats = store.stats(clock::now()).unwrap();
    assert_eq!(
        stats.succeeded, n as u64,
        "every delivery recorded as succeeded"
    );
    measured
}

fn is_postgres(store: &dyn Store) -> bool {
    store.describe().starts_with("PostgreSQL")
}

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // As `outbox serve` does first: the engine drained in this process then runs with the
    // service's allocator settings.
    outbox::memory::configure_allocator();
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start();
    println!(
        "outbox benchmark: {} deliveries of 1 KiB, {} senders, {} cores ({}), {}",
        args.deliveries,
        args.senders,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_default()
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut print = |name: &str, value: String| {
        println!("{name:<44} {value}");
        rows.push((name.to_string(), value));
    };
    if args.runs("disk") {
        let value = disk(dir.path()).unwrap_or_else(|e| format!("not measured: {e}"));
        print("disk: a 4 KiB write + fsync", value);
    }
    let ceiling_rate = args.runs("ceiling").then(|| ceiling(&args, &receiver));
    if let Some(c) = ceiling_rate {
        print("ceiling: bare POSTs/s", c.to_string());
    }
    let ceiling_rate = ceiling_rate.map(|c| c.rate);
    let naive_rate = args
        .runs("naive")
        .then(|| naive(&args, &receiver, dir.path()));
    if let Some(r) = naive_rate {
        print("naive: per-row loop/s (SQLite STRICT)", format!("{r:.0}"));
    }
    let mut pg_schemas = Vec::new();
    if args.runs("store") {
        let modes = ["full".to_string()];
        let mut store_schemas = Vec::new();
        for (name, store) in open_backends(&args, &modes, dir.path(), "store", &mut store_schemas) {
            let (measured, written) = store_only(&args, &receiver.url, store);
            let mut line = format!(
                "{:.1} us   ({:.2} cores busy",
                1e6 / measured.rate.max(1.0),
                measured.cores
            );
            if let Some(server) = measured.server_cores {
                line.push_str(&format!(
                    "; PostgreSQL server {server:.2} cores, {:.1} us each",
                    server / measured.rate.max(1.0) * 1e6
                ));
            }
            print(
                &format!("store only: claim + record, per delivery ({name})"),
                line + ")",
            );
            print(
                &format!("store only: backlog written, rows/s ({name})"),
                format!("{written:.0}   (create_many, {FILL_BATCH} a call, one thread)"),
            );
        }
        if let Some(url) = &args.postgres {
            // Its 200,000 updates leave PostgreSQL work (vacuuming the dead row versions,
            // writing out its buffers) that it would do on the same two cores during the
            // SQLite drains and their ceilings: dropped and flushed here, it does not.
            drop_schemas(url, &store_schemas);
            flush_postgres(url);
        }
    }
    if args.runs("outbox") {
        let backends = open_backends(&args, &args.modes, dir.path(), "drain", &mut pg_schemas);
        for (name, store) in backends {
            // The ceiling again, right before and right after each drain: this machine's
            // speed drifts by a third within a minute, and only a ratio to figures taken on
            // either side of the drain cancels the drift (their mean, for a steady drift).
            let bracket = ceiling_rate.is_some();
            let mut before = None;
            let measured = drain(&args, &receiver, store, || {
                before = bracket.then(|| ceiling(&args, &receiver));
            });
            let r = measured.rate;
            let mut line = measured.to_string();
            if let Some(b) = before {
                let a = ceiling(&args, &receiver);
                let mean = (b.rate + a.rate) / 2.0;
                line.push_str(&format!(
                    "   x{:.2} ceiling ({:.0} before, {:.0} after)",
                    r / mean,
                    b.rate,
                    a.rate
                ));
            }
            if let Some(nv) = naive_rate {
                line.push_str(&format!("   x{:.1} naive", r / nv));
            }
            print(&format!("outbox: drain deliveries/s ({name})"), line);
        }
    }
    if let Some(url) = &args.postgres {
        drop_schemas(url, &pg_schemas);
        flush_postgres(url);
    }
    if args.runs("serve") {
        let sqlite = dir.path().join("serve.db").to_string_lossy().into_owned();
        let mut targets = vec![("SQLite FULL", sqlite, None)];
        if let Some(url) = &args.postgres {
            let schema = format!("outbox_bench_serve_{}", std::process::id());
            create_schema(url, &schema);
            targets.push(("PostgreSQL", with_search_path(url, &schema), Some(schema)));
        }
        for (backend, database, schema) in targets {
            match serve_section(&args, &receiver, dir.path(), backend, &database) {
                Ok(figures) => {
                    for (name, value) in figures {
                        print(&name, value);
                    }
                }
                Err(e) => println!("serve section ({backend}) failed: {e}"),
            }
            if let (Some(url), Some(schema)) = (&args.postgres, schema) {
                drop_schemas(url, &[schema]);
            }
        }
    }
    println!(
        "receiver answered {} requests in all",
        receiver.requests.load(Ordering::Relaxed)
    );
}

/// A store for each SQLite mode in `modes` (files in `dir`), and one on PostgreSQL in a
/// schema of its own when `--postgres` is given (its name added to `pg_schemas`).
fn open_backends(
    args: &Args,
    modes: &[String],
    dir: &std::path::Path,
    prefix: &str,
    pg_schemas: &mut Vec<String>,
) -> Vec<(String, Arc<dyn Store>)> {
    let mut backends: Vec<(String, Arc<dyn Store>)> = Vec::new();
    for mode in modes {
        let sync = match Synchronous::parse(mode) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: --modes: {e}");
                std::process::exit(2);
            }
        };
        let name = mode.to_uppercase();
        let path = dir.join(format!("{prefix}-{name}.db"));
        let options = StoreOptions {
            synchronous: sync,
            ..Default::default()
        };
        let store = store::open(path.to_str().unwrap(), &options).unwrap();
        store.migrate_up().unwrap();
        backends.push((format!("SQLite {name}"), store));
    }
    if let Some(url) = &args.postgres {
        let schema = format!("outbox_bench_{prefix}_{}", std::process::id());
        create_schema(url, &schema);
        pg_schemas.push(schema.clone());
        let options = StoreOptions {
            postgres_schema: Some(schema),
            ..Default::default()
        };
        let store = store::open(url, &options).expect("open --postgres");
        store.migrate_up().unwrap();
        backends.push(("PostgreSQL".into(), store));
    }
    backends
}

/// Creates `schema` afresh (dropping one of that name a killed run left).
fn create_schema(url: &str, schema: &str) {
    drop_schemas(url, &[schema.to_string()]);
    let mut admin = postgres::Client::connect(url, postgres::NoTls).expect("connect --postgres");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
}

/// `url` with `schema` as the search path of every connection made with it, for the `serve`
/// process (whose store takes no schema option): libpq's `options` parameter, which the
/// server reads as `-c search_path=...` at each connection's start.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

fn drop_schemas(url: &str, schemas: &[String]) {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).expect("connect --postgres");
    for schema in schemas {
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .unwrap();
    }
}

/// Has PostgreSQL write out now what a section left in its buffers. Otherwise its next
/// checkpoint does, during a later section, and its writes and fsyncs slow that section's
/// SQLite commits (seen: latency p50 1.95 ms and p99 13 ms right after a PostgreSQL drain,
/// against 0.85 and 5.3 ms without one).
fn flush_postgres(url: &str) {
    let flushed = postgres::Client::connect(url, postgres::NoTls)
        .and_then(|mut admin| admin.batch_execute("CHECKPOINT"));
    if let Err(e) = flushed {
        println!("(PostgreSQL CHECKPOINT failed, its buffers may be flushed during `serve`: {e})");
    }
}

/// 3b. The store alone: the same backlog claimed and recorded in batches of 256 by one thread,
/// nothing sent. Microseconds of wall time per delivery: what the store costs, apart from HTTP.
/// Also returns the rate the backlog was written at.
fn store_only(args: &Args, url: &str, store: Arc<dyn Store>) -> (Measured, f64) {
    let written = fill_and_settle(&store, url, args.deliveries);
    let span = CpuSpan::start(is_postgres(&*store));
    let mut done = 0usize;
    loop {
        let claims = store
            .claim_due(clock::now(), 256, Duration::from_secs(90))
            .unwrap();
        if claims.is_empty() {
            break;
        }
        let outcomes: Vec<Outcome> = claims
            .iter()
            .map(|c| Outcome {
                delivery_id: c.delivery.id,
                lease_token: c.lease_token.clone(),
                transition: Transition::Succeeded { status_code: 200 },
                attempt: Some(Attempt {
                    attempt_number: c.attempt(),
                    started_at: clock::now(),
                    duration_ms: 0,
                    status_code: Some(200),
                    error: None,
                    response_excerpt: Some("ok".into()),
                }),
            })
            .collect();
        store.record(&outcomes, clock::now()).unwrap();
        done += claims.len();
    }
    (span.end(done as u64), written)
}

/// A running `outbox serve` child process.
struct Serve {
    child: std::process::Child,
    base: String,
}

impl Serve {
    /// Starts `outbox serve` on `database` (an SQLite path or a PostgreSQL URL).
    fn start(args: &Args, dir: &std::path::Path, database: &str) -> Result<Serve, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/release/examples/bench -> target/release/outbox
        let binary = exe
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("outbox"))
            .filter(|p| p.exists())
            .ok_or("build the binary first: cargo build --release")?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let child = std::process::Command::new(binary)
            .arg("serve")
            .env("OUTBOX_DATABASE", database)
            .env("OUTBOX_KEY_FILE", dir.join("serve.key"))
            .env("OUTBOX_LISTEN", format!("127.0.0.1:{port}"))
            .env("OUTBOX_SENDERS", args.senders.to_string())
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting outbox serve: {e}"))?;
        let serve = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let agent = agent();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = agent.get(&format!("{}/healthz", serve.base)).call()
                && r.status() == 200
            {
                return Ok(serve);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("outbox serve did not become healthy within 20 s".into())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pending deliveries, from `/metrics`.
    fn pending(&self, agent: &ureq::Agent) -> Option<u64> {
        let mut r = agent.get(&format!("{}/metrics", self.base)).call().ok()?;
        let text = r.body_mut().read_to_string().ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("outbox_deliveries{status=\"pending\"} "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn wait_drained(&self, agent: &ureq::Agent, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.pending(agent) == Some(0) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn stop(mut self) -> Result<i32, String> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        Ok(status.code().unwrap_or(-1))
    }
}

/// `--enqueue-clients` threads enqueueing for `seconds`: (accepted, failed, time).
fn enqueue_load(
    args: &Args,
    seconds: u64,
    base: &str,
    url: &str,
    next_run: &Arc<AtomicU64>,
) -> (u64, u64, Duration) {
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let clients: Vec<_> = (0..args.enqueue_clients)
        .map(|_| {
            let (next_run, accepted, failed) = (next_run.clone(), accepted.clone(), failed.clone());
            let (base, url) = (base.to_string(), url.to_string());
            std::thread::spawn(move || {
                let mut client = Client::new(&base);
                while Instant::now() < stop_at {
                    let run = next_run.fetch_add(1, Ordering::Relaxed) as i64;
                    let ok = client.post(&enqueue_body(&url, run)) == Some(201);
                    if ok { &accepted } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    (
        accepted.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

/// A lean HTTP/1.1 keep-alive client for the enqueue load, so that the load generator, which
/// shares the two cores with `outbox serve`, costs little more than its syscalls (as wrk
/// would). It reconnects after any error.
struct Client {
    addr: String,
    stream: Option<std::net::TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            addr: base.trim_start_matches("http://").to_string(),
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    /// POSTs one enqueue and reads the whole response; the status, or `None` on any error.
    fn post(&mut self, body: &str) -> Option<u16> {
        let result = self.try_post(body);
        if result.is_none() {
            self.stream = None;
        }
        result
    }

    fn try_post(&mut self, body: &str) -> Option<u16> {
        use std::io::{Read, Write};
        if self.stream.is_none() {
            let stream = std::net::TcpStream::connect(&self.addr).ok()?;
            stream.set_nodelay(true).ok()?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut()?;
        let request = format!(
            "POST /v1/deliveries HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf).ok()? {
                let length: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())?;
                let status = response.code?;
                while self.buf.len() < head + length {
                    let n = stream.read(&mut chunk).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Some(status);
            }
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(64)
        .build()
        .into()
}

/// A process's memory, in KiB, from /proc/PID/status.
struct Memory {
    /// Resident set size (`VmRSS`) and its peak (`VmHWM`).
    rss: u64,
    peak: u64,
    /// What of `rss` is the process's own (heap, stacks) and what is mapped files (the
    /// binary's code and libraries, clean pages the kernel can drop and read back).
    anon: u64,
    file: u64,
}

impl Memory {
    /// "11.4 MiB (4.1 anonymous, 7.2 mapped files)"
    fn resident(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "{:.1} MiB ({:.1} anonymous, {:.1} mapped files)",
            mib(self.rss),
            mib(self.anon),
            mib(self.file)
        )
    }
}

fn memory_kib(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// The body of one enqueue (`url` is a plain local URL: nothing in it needs escaping).
fn enqueue_body(url: &str, run: i64) -> String {
    format!(
        r#"{{"organization_id":1,"workflow_run_id":{run},"webhook_node_id":"bench","endpoint_url":"{url}","payload":{}}}"#,
        payload_1k(run)
    )
}

/// The processor's name, from /proc/cpuinfo ("unknown CPU" elsewhere).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// 0: what a durable write costs where the benchmark's databases live: 4 KiB written and
/// fsynced (as SQLite syncs a commit), first each write growing the file, then over the same
/// bytes again (as SQLite reuses its WAL file once a checkpoint has emptied it). The naive
/// loop and the enqueue rate wait on this; printed so a run's figures can be read against
/// the disk's state that day.
fn disk(dir: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    const WRITES: usize = 400;
    const BLOCK: usize = 4096;
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5a_u8; BLOCK];
    let round = || -> std::io::Result<Vec<Duration>> {
        let mut took = Vec::with_capacity(WRITES);
        for i in 0..WRITES {
            let start = Instant::now();
            file.write_all_at(&block, (i * BLOCK) as u64)?;
            file.sync_all()?;
            took.push(start.elapsed());
        }
        took.sort();
        Ok(took)
    };
    let growing = round()?;
    let overwriting = round()?;
    std::fs::remove_file(&path)?;
    Ok(format!(
        "growing the file p50 {} p99 {}   overwriting p50 {} p99 {}",
        ms(percentile(&growing, 0.5)),
        ms(percentile(&growing, 0.99)),
        ms(percentile(&overwriting, 0.5)),
        ms(percentile(&overwriting, 0.99)),
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// 4-6: the real `outbox serve` process: enqueue rate, latency, memory and idle CPU.
/// Figures are named with `backend`, the store `database` is.
fn serve_section(
    args: &Args,
    receiver: &Receiver,
    dir: &std::path::Path,
    backend: &str,
    database: &str,
) -> Result<Vec<(String, String)>, String> {
    let serve = Serve::start(args, dir, database)?;
    let pid = serve.pid();
    let mut figures = Vec::new();
    figures.push((
        format!("memory: outbox serve RSS once started ({backend})"),
        memory_kib(pid).resident(),
    ));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (peak_rss.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kib(pid).rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // 4. Enqueue: clients with keep-alive connections, each 201 a committed row. Measured
    // twice: with the engine held up by a slow receiver (the API on its own), and with the
    // engine delivering everything at once (both compete for the same two cores).
    let next_run = Arc::new(AtomicU64::new(1_000_000));
    // Not counted: a fresh database file is slower for its first seconds, while SQLite's WAL
    // file grows to its working size (measured: ~11-14k/s in the first 5 s, ~17-19k/s after).
    receiver.slow.store(true, Ordering::Relaxed);
    enqueue_load(
        args,
        args.enqueue_warmup_seconds,
        &serve.base,
        &receiver.url,
        &next_run,
    );
    for (label, slow) in [
        ("engine waiting on a slow receiver", true),
        ("engine delivering meanwhile", false),
    ] {
        receiver.slow.store(slow, Ordering::Relaxed);
        let (accepted, failed, took) = enqueue_load(
            args,
            args.enqueue_seconds,
            &serve.base,
            &receiver.url,
            &next_run,
        );
        figures.push((
            format!(
                "enqueue: accepted/s, {} clients ({backend}, {label})",
                args.enqueue_clients
            ),
            format!("{:.0}   ({failed} failed)", rate(accepted, took)),
        ));
        receiver.slow.store(false, Ordering::Relaxed);
    }
    let probe = agent();
    if !serve.wait_drained(&probe, Duration::from_secs(300)) {
        return Err("the enqueued deliveries were not all delivered within 300 s".into());
    }

    // 5. Latency at a fixed offered rate: from the start of the enqueue request to the
    // receiver seeing the first attempt.
    // The same run ids as an earlier backend's section: what it saw is forgotten.
    receiver.first_seen.lock().unwrap().clear();
    receiver.track.store(true, Ordering::Relaxed);
    let total = args.rate as u64 * args.latency_seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let sent_at: Arc<Mutex<HashMap<i64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let workers = 4u64;
    let begin = Instant::now() + Duration::from_millis(50);
    let pacers: Vec<_> = (0..workers)
        .map(|w| {
            let (sent_at, base, url) = (sent_at.clone(), serve.base.clone(), receiver.url.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(&base);
                let mut i = w;
                while i < total {
                    let due = begin + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let run = 2_000_000 + i as i64;
                    sent_at.lock().unwrap().insert(run, Instant::now());
                    client.post(&enqueue_body(&url, run));
                    i += workers;
                }
            })
        })
        .collect();
    for p in pacers {
        let _ = p.join();
    }
    if !serve.wait_drained(&probe, Duration::from_secs(120)) {
        return Err("the latency deliveries were not all delivered within 120 s".into());
    }
    receiver.track.store(false, Ordering::Relaxed);
    let sent_at = sent_at.lock().unwrap();
    let seen = receiver.first_seen.lock().unwrap();
    let mut latencies: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(run, t0)| seen.get(run).map(|t1| t1.saturating_duration_since(*t0)))
        .collect();
    latencies.sort();
    figures.push((
        format!(
            "latency: enqueue -> first attempt at {}/s ({backend})",
            args.rate
        ),
        format!(
            "p50 {}   p99 {}   max {}   ({} of {})",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
            latencies.len(),
            total
        ),
    ));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = memory_kib(pid).peak;
    figures.push((
        format!("memory: outbox serve peak RSS under load ({backend})"),
        format!(
            "{:.1} MiB (VmHWM {:.1} MiB)",
            peak_rss.load(Ordering::Relaxed) as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
    ));

    // 6. Idle: nothing due; the process should sleep.
    std::thread::sleep(Duration::from_secs(1));
    let ticks_before = cpu_ticks(pid);
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let ticks = cpu_ticks(pid) - ticks_before;
    let cpu_percent = ticks as f64 / TICKS_PER_SECOND / idle_start.elapsed().as_secs_f64() * 100.0;
    figures.push((
        format!("idle: CPU over {} s, RSS ({backend})", args.idle_seconds),
        format!(
            "{cpu_percent:.2} % of one core ({ticks} ticks), RSS {}",
            memory_kib(pid).resident()
        ),
    ));
    let code = serve.stop()?;
    figures.push((
        format!("serve: exit code after SIGTERM ({backend})"),
        code.to_string(),
    ));
    Ok(figures)
}
