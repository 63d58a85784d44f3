//! The `outbox` command: the service (`serve`) and the operator's tools on the same database.
//!
//! Every command exits non-zero with `error: <message>` on failure; nothing here panics on
//! user input.

mod cli_format;

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use outbox::api::{self, ApiState};
use outbox::clock::{self, Clock, SystemClock};
use outbox::config::{self, Config};
use outbox::delivery::{ListFilter, MAX_PAGE, Redrive, Status};
use outbox::engine::Engine;
use outbox::enqueue::{EnqueueRequest, Enqueuer, prepare};
use outbox::json::{EnqueuedView, delivery_view, detail_view, page_view};
use outbox::metrics::Metrics;
use outbox::store::{self, Store};
use outbox::vault::Vault;
use outbox::{secret_box, send, systemd};

const SERVE_HELP: &str = "\
Runs the delivery engine and the HTTP API until SIGTERM or SIGINT, then drains: sends under \
way finish (up to OUTBOX_DRAIN_SECONDS), claimed rows not yet sent are handed back.

Applies pending schema migrations at start. Settings come from the environment:
  OUTBOX_DATABASE, OUTBOX_LISTEN (default 127.0.0.1:8425), OUTBOX_API_TOKEN (comma-separated;
  required to listen on a non-loopback address), OUTBOX_KEY_FILE (default outbox.key beside
  the database), OUTBOX_SQLITE_SYNCHRONOUS (full|strict|normal), OUTBOX_POOL_SIZE,
  OUTBOX_MAX_BODY_BYTES, OUTBOX_SENDERS, WEBHOOK_DELIVERY_MAX_ATTEMPTS (5),
  WEBHOOK_DELIVERY_BASE_DELAY_SECONDS (30), WEBHOOK_DELIVERY_MAX_DELAY_SECONDS (600),
  WEBHOOK_DELIVERY_TIMEOUT_SECONDS (30), OUTBOX_CONNECT_TIMEOUT_SECONDS,
  OUTBOX_RETRY_AFTER_CAP_SECONDS, OUTBOX_LEASE_SECONDS, OUTBOX_CLAIM_BATCH,
  OUTBOX_POLL_INTERVAL_MS, OUTBOX_DRAIN_SECONDS, OUTBOX_HTTP_PROXY.
Logs go to stderr; RUST_LOG sets the level (default info).";

/// A durable webhook outbox.
#[derive(Parser)]
#[command(name = "outbox", version, about, propagate_version = true)]
struct Cli {
    /// The database: an SQLite file path or a postgres:// URL.
    #[arg(
        long,
        global = true,
        env = "OUTBOX_DATABASE",
        // A postgres:// URL may carry a password: never print it in --help.
        hide_env_values = true,
        default_value = config::DEFAULT_DATABASE
    )]
    database: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the delivery engine and the HTTP API.
    #[command(long_about = SERVE_HELP)]
    Serve {
        /// Address of the HTTP API.
        #[arg(long, env = "OUTBOX_LISTEN", default_value = config::DEFAULT_LISTEN)]
        listen: String,
    },
    /// Apply, roll back or show schema migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Enqueue one delivery from a JSON file (or stdin).
    ///
    /// The JSON is the body of the API's POST /v1/deliveries. A running `outbox serve` on the
    /// same database picks the delivery up within its poll interval (OUTBOX_POLL_INTERVAL_MS).
    /// max_attempts defaults to WEBHOOK_DELIVERY_MAX_ATTEMPTS.
    Enqueue {
        /// The JSON file; `-` or absent reads stdin.
        file: Option<String>,
    },
    /// List deliveries, oldest first.
    List {
        /// Only this status: pending, succeeded or dead_letter.
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
        /// Only this organization.
        #[arg(long)]
        organization_id: Option<i64>,
        /// Page size, 1 to 1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE)))]
        limit: u32,
        /// Only ids after this one (the previous page's next_after).
        #[arg(long)]
        after: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery and its attempt history.
    Show {
        /// The delivery_uuid.
        uuid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead-lettered deliveries again, with a fresh attempt budget.
    Redrive {
        /// The delivery_uuid of one dead letter.
        #[arg(
            required_unless_present = "all_dead_letters",
            conflicts_with = "all_dead_letters"
        )]
        uuid: Option<String>,
        /// Redrive every dead letter (of --organization-id, if given).
        #[arg(long)]
        all_dead_letters: bool,
        /// With --all-dead-letters: only this organization.
        #[arg(long, requires = "all_dead_letters")]
        organization_id: Option<i64>,
    },
    /// Delete succeeded and dead-lettered deliveries older than a duration.
    ///
    /// Pending deliveries are never purged. The age is that of the last update.
    Purge {
        /// How old, e.g. 30d, 12h, 90m, 45s.
        #[arg(long, value_parser = cli_format::parse_age)]
        older_than: Duration,
    },
    /// Counts per status, the due backlog and the age of its oldest delivery.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Roll back the latest applied migration.
    Down,
    /// Show which migrations are applied.
    Status {
        /// Also print the schema (tables, columns, indexes), for comparing two databases.
        #[arg(long)]
        schema: bool,
    },
}

fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration from the environment, with `--database` (and `--listen`) applied. The key
/// file follows the database unless OUTBOX_KEY_FILE names one.
fn load_config(database: &str, listen: Option<&str>) -> Result<Config, String> {
    let mut config = Config::from_env().map_err(|e| e.to_string())?;
    if config.database != database {
        config.database = database.to_owned();
        if std::env::var_os("OUTBOX_KEY_FILE").is_none_or(|v| v.is_empty()) {
            config.key_file = config::default_key_file(database);
        }
    }
    if let Some(listen) = listen {
        config.listen = listen.to_owned();
    }
    Ok(config)
}

fn open(config: &Config) -> Result<Arc<dyn Store>, String> {
    store::open(&config.database, &config.store_options()).map_err(|e| e.to_string())
}

/// Opens the store and refuses one whose schema is not migrated.
fn open_checked(config: &Config) -> Result<Arc<dyn Store>, String> {
    let store = open(config)?;
    store::check_schema(&*store).map_err(|e| e.to_string())?;
    Ok(store)
}

fn init_logger(default_level: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .target(env_logger::Target::Stderr)
        .init();
}

fn run(cli: Cli) -> Result<(), String> {
    let listen = match &cli.command {
        Command::Serve { listen } => Some(listen.as_str()),
        _ => None,
    };
    if listen.is_some() {
        init_logger("info");
    } else {
        init_logger("warn");
    }
    let config = load_config(&cli.database, listen)?;
    let now = clock::now();
    match cli.command {
        Command::Serve { .. } => serve(&config),
        Command::Migrate { action } => migrate(&config, &action),
        Command::Enqueue { file } => enqueue(&config, file.as_deref()),
        Command::List {
            status,
            organization_id,
            limit,
            after,
            json,
        } => {
            let store = open_checked(&config)?;
            let filter = ListFilter {
                status,
                organization_id,
                after,
                limit,
            };
            let page = store.list(&filter).map_err(|e| e.to_string())?;
            if json {
                print_json(&page_view(&page));
            } else {
                print!("{}", cli_format::delivery_table(&page.deliveries));
                if let Some(next) = page.next_after {
                    println!("(more: --after {next})");
                }
            }
            Ok(())
        }
        Command::Show { uuid, json } => {
            let store = open_checked(&config)?;
            let detail = store
                .get(&uuid)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no delivery {uuid}"))?;
            if json {
                print_json(&detail_view(&detail));
            } else {
                print!("{}", cli_format::detail_text(&detail));
            }
            Ok(())
        }
        Command::Redrive {
            uuid,
            all_dead_letters,
            organization_id,
        } => {
            let store = open_checked(&config)?;
            if all_dead_letters {
                let n = store
                    .redrive_all(organization_id, now)
                    .map_err(|e| e.to_string())?;
                println!("redriven {n} dead-lettered deliveries");
                return Ok(());
            }
            let uuid = uuid.ok_or("give a delivery uuid or --all-dead-letters")?;
            match store.redrive(&uuid, now).map_err(|e| e.to_string())? {
                Redrive::Redriven(_) => {
                    println!("redriven 1 delivery ({uuid})");
                    Ok(())
                }
                Redrive::NotDeadLetter(status) => Err(format!(
                    "delivery {uuid} is {}, not dead_letter: only dead letters are redriven",
                    status.as_str()
                )),
                Redrive::NotFound => Err(format!("no delivery {uuid}")),
            }
        }
        Command::Purge { older_than } => {
            let store = open_checked(&config)?;
            let age = time::Duration::try_from(older_than)
                .map_err(|_| "--older-than is too large".to_owned())?;
            let cutoff = now
                .checked_sub(age)
                .ok_or("--older-than reaches before the year -9999")?;
            let n = store.purge(cutoff).map_err(|e| e.to_string())?;
            println!("purged {n} deliveries");
            Ok(())
        }
        Command::Stats { json } => {
            let store = open_checked(&config)?;
            let stats = store.stats(now).map_err(|e| e.to_string())?;
            if json {
                print_json(&json!({
                    "pending": stats.pending,
                    "succeeded": stats.succeeded,
                    "dead_letter": stats.dead_letter,
                    "due": stats.due,
                    "oldest_due_ms": stats.oldest_due_ms,
                }));
            } else {
                print!("{}", cli_format::stats_text(&stats));
            }
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    // Pretty, since a person usually reads it; `jq -c` makes it compact again.
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

fn migrate(config: &Config, action: &MigrateAction) -> Result<(), String> {
    let store = open(config)?;
    let target = store.describe();
    match action {
        MigrateAction::Up => {
            let applied = store.migrate_up().map_err(|e| e.to_string())?;
            if applied.is_empty() {
                println!("{target}: schema is up to date");
            } else {
                println!("{target}: applied migrations {applied:?}");
            }
        }
        MigrateAction::Down => match store.migrate_down().map_err(|e| e.to_string())? {
            Some(v) => println!("{target}: rolled back migration {v}"),
            None => println!("{target}: no migration to roll back"),
        },
        MigrateAction::Status { schema } => {
            for m in store.migration_status().map_err(|e| e.to_string())? {
                let state = if m.applied { "applied" } else { "pending" };
                println!("{:>4} {:<20} {state}", m.version, m.name);
            }
            if *schema {
                print!("{}", store.schema_dump().map_err(|e| e.to_string())?);
            }
        }
    }
    Ok(())
}

fn enqueue(config: &Config, file: Option<&str>) -> Result<(), String> {
    let body = match file {
        None | Some("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            body
        }
        Some(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}"))?,
    };
    let request: EnqueueRequest =
        serde_json::from_slice(&body).map_err(|e| format!("invalid delivery JSON: {e}"))?;
    let prepared = prepare(request, config.engine.max_attempts, clock::now())?;
    let store = open_checked(config)?;
    let (delivery, created) = store
        .create(&prepared.new, clock::now())
        .map_err(|e| e.to_string())?;
    print_json(&EnqueuedView {
        created,
        delivery: delivery_view(&delivery),
        dropped_headers: &prepared.dropped_headers,
    });
    Ok(())
}

fn serve(config: &Config) -> Result<(), String> {
    outbox::memory::configure_allocator();
    let store = open(config)?;
    let applied = store.migrate_up().map_err(|e| e.to_string())?;
    if !applied.is_empty() {
        log::info!("{}: applied migrations {applied:?}", store.describe());
    }
    store::check_schema(store.as_ref()).map_err(|e| e.to_string())?;
    let key = secret_box::load_or_create(&config.key_file).map_err(|e| e.to_string())?;
    let vault = Arc::new(Vault::new(Arc::clone(&store), key));
    let metrics = Arc::new(Metrics::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sender = send::UreqSender::new(&config.engine.http)?;
    let engine = Engine::start(
        Arc::clone(&store),
        Arc::new(sender),
        Arc::clone(&vault) as _,
        Arc::clone(&clock),
        config.engine.clone(),
        Arc::clone(&metrics),
    )
    .map_err(|e| e.to_string())?;
    let enqueuer = Arc::new(Enqueuer::start(
        Arc::clone(&store),
        Some(engine.waker()),
        Arc::clone(&metrics),
        Arc::clone(&clock),
    ));
    let state = ApiState {
        store: Arc::clone(&store),
        vault,
        enqueuer,
        metrics,
        clock,
        api_tokens: config.api_tokens.clone(),
        default_max_attempts: config.engine.max_attempts,
    };
    let server = match api::start(&config.listen, state, config.max_body_bytes) {
        Ok(server) => server,
        Err(e) => {
            // Hand back anything the engine already claimed before giving up.
            engine.shutdown();
            return Err(e.to_string());
        }
    };
    log::info!(
        "outbox {} serving {} on http://{}",
        env!("CARGO_PKG_VERSION"),
        store.describe(),
        server.local_addr()
    );
    systemd::notify_ready();
    // The watchdog pings only while the store answers, so a wedged database gets the
    // service restarted.
    let health_store = Arc::clone(&store);
    systemd::spawn_watchdog_with(move || health_store.next_due_at().is_ok());
    wait_for_stop_signal()?;
    log::info!("stopping: draining in-flight deliveries");
    systemd::notify_stopping();
    // The API first, so no enqueue arrives once the engine stops claiming.
    server.shutdown();
    let report = engine.shutdown();
    log::info!(
        "stopped: {} claimed deliveries handed back unsent, drain {}",
        report.released,
        if report.clean {
            "complete"
        } else {
            "cut short (the rest come back when their leases end)"
        }
    );
    Ok(())
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_stop_signal() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    Ok(())
}
