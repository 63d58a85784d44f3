//! The SQLite backend: one file, WAL, every write through one in-process writer connection.
//!
//! Why one writer: SQLite allows one writer at a time, and its busy handler starves competing
//! writer threads (measured here: 4 threads with synchronous=FULL hit SQLITE_BUSY after 5 s
//! waits; a mutex around writes cut the worst wait to ~0.1 s). Reads use a pool.
//!
//! The statements of every delivery (enqueue, claim, outcome) say `OR ROLLBACK`. Any failed
//! statement fails its whole transaction here anyway (see `write_with`), and a statement that
//! may only fail whole needs no statement journal: without it SQLite copies every page a
//! statement changes before changing it (callgrind: 21 % of an enqueue's instructions).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use scheduled_thread_pool::ScheduledThreadPool;
use time::OffsetDateTime;

use super::{
    FINAL_LEASE_EXPIRED, INIT_DOWN, Migration, OutcomeWrite, StoreOptions, Synchronous,
    headers_from_json, headers_to_json, into_page, lease_end, new_lease_token, page_limit,
};
use crate::clock::{from_micros, to_micros};
use crate::delivery::{
    Attempt, Claim, Delivery, DeliveryDetail, Expired, ListFilter, MigrationState, NewDelivery,
    Outcome, Page, Redrive, Stats, Status, StoredCredential,
};
use crate::error::{Error, Result};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    up: include_str!("../../schema.sql"),
    down: INIT_DOWN,
}];

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS outbox_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)";

const COLUMNS: &str = "id, delivery_uuid, organization_id, workflow_run_id, webhook_node_id, \
    webhook_name, endpoint_url, http_method, payload, custom_headers, credential_uuid, status, \
    attempt_count, max_attempts, scheduled_for, last_status_code, last_error, created_at, \
    updated_at, lease_token";

/// Rows deleted per purge transaction, so a large purge never holds the writer for long.
const PURGE_CHUNK: u32 = 5_000;

/// Page cache of the writer connection (SQLite's default is 2 MiB), in KiB.
const WRITER_CACHE_KIB: i64 = 2048;
/// Page cache of each reader connection, in KiB: reads are point lookups and short pages, and
/// an idle service should stay small.
const READER_CACHE_KIB: i64 = 256;
/// An unused reader connection is closed after this long (checked every 30 s by r2d2).
const READER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the background thread checkpoints the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often it looks for writes when none came since its last complete checkpoint. This
/// process's writes wake it at once; the look is the backstop for other processes' writes.
const CHECKPOINT_IDLE_EVERY: Duration = Duration::from_secs(60);
/// ... and how soon after one that found the WAL past [`RESTART_WAL_FRAMES`].
const CHECKPOINT_BUSY_EVERY: Duration = Duration::from_millis(100);
/// A WAL longer than this many frames (~40 MiB) after a background checkpoint is finished
/// under the writer lock, so that the next write starts it from the beginning (see
/// `start_checkpointer`).
const RESTART_WAL_FRAMES: i64 = 10_000;
/// The writer checkpoints by itself after a commit that leaves the WAL longer than this: a
/// backstop (~160 MiB) that holds back writes that outrun the background thread and the disk.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 4 * RESTART_WAL_FRAMES;
/// The writer's threshold when there is no background thread (SQLite's default).
const FALLBACK_AUTOCHECKPOINT_PAGES: i64 = 1_000;

/// The writer connection and the `PRAGMA synchronous` value it is set to now.
struct Writer {
    conn: Connection,
    pragma: &'static str,
}

/// How durable one write transaction must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// What a caller is told is done: enqueues, redrives, credentials, purges, migrations.
    Acknowledged,
    /// The engine's own bookkeeping: claims, outcomes, lease expiry. Under
    /// [`Synchronous::Full`] these commit without waiting for the disk (two fsyncs fewer per
    /// delivery) and are synced with the next acknowledged commit or checkpoint.
    Bookkeeping,
}

/// The `PRAGMA synchronous` value for a write of this durability under this mode.
fn pragma_for(mode: Synchronous, durability: Durability) -> &'static str {
    match (mode, durability) {
        (Synchronous::Strict, _) | (Synchronous::Full, Durability::Acknowledged) => "FULL",
        (Synchronous::Full, Durability::Bookkeeping) | (Synchronous::Normal, _) => "NORMAL",
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: String,
    /// Shared with the checkpoint thread, which holds it briefly to finish a checkpoint.
    writer: Arc<Mutex<Writer>>,
    /// The configured mode, used for every write a caller is told is done.
    synchronous: Synchronous,
    readers: r2d2::Pool<SqliteConnectionManager>,
    /// Dropped with the store (after `writer`), which ends and joins the checkpoint thread,
    /// so the writer connection is closed when the store's drop returns.
    checkpointer: Option<Checkpointer>,
}

/// The running checkpoint thread (see `start_checkpointer`).
struct Checkpointer {
    /// A message wakes the thread; closing the channel stops it.
    signal: Option<crossbeam_channel::Sender<()>>,
    /// Set by the thread when it found nothing to do and sleeps long.
    idle: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// After a commit: wakes the thread if it sleeps long (the first commit after idle only).
    fn nudge(&self) {
        if self.idle.load(Ordering::SeqCst)
            && self.idle.swap(false, Ordering::SeqCst)
            && let Some(signal) = &self.signal
        {
            let _ = signal.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn init_connection(
    conn: &Connection,
    synchronous: Synchronous,
    cache_kib: i64,
) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        pragma_for(synchronous, Durability::Acknowledged),
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Temporary data (statement journals, the b-trees of RETURNING and of sorts) goes to a
    // temp file past 64 KiB; in memory it costs no syscalls. Measured when claims still kept
    // a statement journal: 9.7 -> 7.8 us a row, the engine's drain +5-8 %.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if absent) the database file at `path`.
    ///
    /// # Errors
    /// [`Error::Sqlite`] naming the file when it cannot be created or opened, is not a
    /// database, or its directory is not writable.
    pub fn open(path: &str, options: &StoreOptions) -> Result<SqliteStore> {
        let err = |source| Error::Sqlite {
            path: path.to_string(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The writer's WAL appends go out in two writes a commit (see `sqlite_wal_vfs`).
        let writer = match super::sqlite_wal_vfs::name() {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
            None => Connection::open_with_flags(path, flags),
        }
        .map_err(err)?;
        // Setting WAL writes to the file: an unwritable or corrupt file fails here, at open.
        init_connection(&writer, options.synchronous, WRITER_CACHE_KIB).map_err(err)?;
        writer
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(err)?;
        writer.set_prepared_statement_cache_capacity(64);
        let synchronous = options.synchronous;
        let manager = SqliteConnectionManager::file(path)
            .with_flags(flags)
            .with_init(move |c| init_connection(c, synchronous, READER_CACHE_KIB));
        let readers = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(0))
            // Idle readers are closed (with their page caches) so an idle service stays small.
            .idle_timeout(Some(READER_IDLE_TIMEOUT))
            // A connection to a local file does not go stale as a socket does; the check
            // r2d2_sqlite would run on every checkout parses and runs a `SELECT 1`.
            .test_on_check_out(false)
            // r2d2 gives each pool three threads of its own by default, to open and reap
            // connections. Opening a local file does not block, so one thread does; each
            // thread more is a stack and an allocator arena that an idle service holds.
            .thread_pool(Arc::new(
                ScheduledThreadPool::builder()
                    .num_threads(1)
                    .thread_name_pattern("outbox-readers")
                    .build(),
            ))
            .build_unchecked(manager);
        let writer = Arc::new(Mutex::new(Writer {
            conn: writer,
            pragma: pragma_for(options.synchronous, Durability::Acknowledged),
        }));
        // Checkpoints copy the WAL into the database file and fsync it. Done by the writer
        // they stall every enqueue and claim behind them (measured, with the writer
        // checkpointing past 40 MiB: the senders found the queue empty for ~1.5 s of a 4 s
        // drain), so a background thread does them.
        let checkpointer = start_checkpointer(path, flags, options.synchronous, &writer);
        let autocheckpoint = if checkpointer.is_some() {
            WRITER_AUTOCHECKPOINT_PAGES
        } else {
            FALLBACK_AUTOCHECKPOINT_PAGES
        };
        writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conn
            .pragma_update(None, "wal_autocheckpoint", autocheckpoint)
            .map_err(err)?;
        Ok(SqliteStore {
            path: path.to_string(),
            writer,
            synchronous: options.synchronous,
            readers,
            checkpointer,
        })
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the one writer connection.
    fn write<T>(&self, f: impl FnOnce(&Transaction) -> rusqlite::Result<T>) -> Result<T> {
        self.write_with(Durability::Acknowledged, f)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the one writer connection, synced as
    /// `durability` asks.
    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted = pragma_for(self.synchronous, durability);
        if writer.pragma != wanted {
            writer
                .conn
                .pragma_update(None, "synchronous", wanted)
                .map_err(|e| self.err(e))?;
            writer.pragma = wanted;
        }
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let value = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.nudge();
        }
        Ok(value)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.get().map_err(|source| Error::Pool {
            target: self.describe_path(),
            source,
        })?;
        f(&conn).map_err(|e| self.err(e))
    }

    fn describe_path(&self) -> String {
        format!("SQLite {}", self.path)
    }

    /// Frees the pages `conn`'s cache holds (SQLite keeps the pages in use). A failure is only
    /// logged: the memory stays held, nothing else changes.
    fn shrink_cache(&self, conn: &Connection) {
        if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
            log::debug!("SQLite {}: shrink_memory failed: {e}", self.path);
        }
    }
}

/// Starts the thread that checkpoints the WAL every [`CHECKPOINT_EVERY`] while writes come,
/// and otherwise sleeps until a commit nudges it (see [`Checkpointer::nudge`]). It ends when
/// the returned [`Checkpointer`] is dropped. `None` if it could not start; the writer then
/// checkpoints by itself.
///
/// A PASSIVE checkpoint never blocks writers, but under constant writes it never reaches the
/// WAL's end, and only a complete checkpoint lets the next write start the WAL from the
/// beginning: the file would grow without bound. So when the WAL has grown past
/// [`RESTART_WAL_FRAMES`], the thread checkpoints once more holding the writer lock, with
/// only the frames written meanwhile left to copy and sync.
fn start_checkpointer(
    path: &str,
    flags: OpenFlags,
    synchronous: Synchronous,
    writer: &Arc<Mutex<Writer>>,
) -> Option<Checkpointer> {
    let conn = Connection::open_with_flags(path, flags).ok()?;
    init_connection(&conn, synchronous, READER_CACHE_KIB).ok()?;
    let (signal, signals) = crossbeam_channel::bounded::<()>(1);
    let idle = Arc::new(AtomicBool::new(false));
    let thread_idle = Arc::clone(&idle);
    let path = path.to_string();
    let writer = Arc::clone(writer);
    // A PASSIVE checkpoint; the frames in the WAL and those checkpointed (the pragma answers
    // busy, WAL frames, frames checkpointed).
    let checkpoint = |conn: &Connection| {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
    };
    // Changes whenever another connection (of any process) commits.
    let data_version =
        |conn: &Connection| conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
    // Only to sync the database file early (see below); SQLite's own sync stays the one
    // that counts, so without it checkpoints are as safe, only the lock is held longer.
    let db_file = std::fs::File::open(&path).ok();
    let thread = std::thread::Builder::new()
        .name("outbox-checkpoint".into())
        .spawn(move || {
            let mut wait = CHECKPOINT_EVERY;
            // The data version when a checkpoint last copied the whole WAL: while it holds,
            // there is nothing to copy, and an idle service does not wake SQLite every second.
            let mut copied_at: Option<i64> = None;
            while !matches!(
                signals.recv_timeout(wait),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            ) {
                thread_idle.store(false, Ordering::SeqCst);
                let version = data_version(&conn).ok();
                if version.is_some() && version == copied_at {
                    // Sleep long, until a commit nudges. Look once more after saying so: a
                    // commit that came before `idle` was set did not nudge.
                    thread_idle.store(true, Ordering::SeqCst);
                    if data_version(&conn).ok() == version {
                        wait = CHECKPOINT_IDLE_EVERY;
                        continue;
                    }
                    thread_idle.store(false, Ordering::SeqCst);
                }
                let finished = checkpoint(&conn).and_then(|(frames, copied)| {
                    if frames == copied {
                        copied_at = version;
                    }
                    if frames < RESTART_WAL_FRAMES {
                        return Ok(false);
                    }
                    // SQLite syncs the database file only after a checkpoint that ends at the
                    // WAL's end, which one running beside writes seldom does: the locked pass
                    // would sync all that this one copied (measured: it held the lock for
                    // 40-110 ms of a drain). So sync it now, copy what came meanwhile and sync
                    // that, outside the lock; the locked pass has a short tail left (0-12 ms).
                    sync_database(db_file.as_ref(), &path);
                    checkpoint(&conn)?;
                    sync_database(db_file.as_ref(), &path);
                    let _writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
                    checkpoint(&conn).map(|_| true)
                });
                // While writes pour in, come back soon, so the WAL stays near the threshold.
                wait = match finished {
                    Ok(true) => CHECKPOINT_BUSY_EVERY,
                    Ok(false) => CHECKPOINT_EVERY,
                    Err(e) => {
                        log::warn!("SQLite {path}: checkpoint failed: {e}");
                        CHECKPOINT_EVERY
                    }
                };
            }
        })
        .ok()?;
    Some(Checkpointer {
        signal: Some(signal),
        idle,
        thread: Some(thread),
    })
}

/// Syncs the database file's written pages to disk, if it could be opened (see
/// `start_checkpointer`). A failure is only logged: SQLite's own sync follows.
fn sync_database(file: Option<&std::fs::File>, path: &str) {
    if let Some(Err(e)) = file.map(std::fs::File::sync_data) {
        log::debug!("SQLite {path}: early sync of the database file failed: {e}");
    }
}

fn conversion_error(message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, message.into())
}

fn row_to_delivery(row: &Row) -> rusqlite::Result<Delivery> {
    let status: String = row.get(11)?;
    let headers: Option<String> = row.get(9)?;
    Ok(Delivery {
        id: row.get(0)?,
        delivery_uuid: row.get(1)?,
        organization_id: row.get(2)?,
        workflow_run_id: row.get(3)?,
        webhook_node_id: row.get(4)?,
        webhook_name: row.get(5)?,
        endpoint_url: row.get(6)?,
        http_method: row.get(7)?,
        payload: row.get(8)?,
        custom_headers: headers_from_json(headers.as_deref()).map_err(conversion_error)?,
        credential_uuid: row.get(10)?,
        status: Status::parse(&status).map_err(conversion_error)?,
        attempt_count: row.get(12)?,
        max_attempts: row.get(13)?,
        scheduled_for: row.get::<_, Option<i64>>(14)?.map(from_micros),
        last_status_code: row.get(15)?,
        last_error: row.get(16)?,
        created_at: from_micros(row.get(17)?),
        updated_at: from_micros(row.get(18)?),
    })
}

fn row_to_attempt(row: &Row) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        attempt_number: row.get(0)?,
        started_at: from_micros(row.get(1)?),
        duration_ms: row.get::<_, i64>(2)?.max(0) as u64,
        status_code: row.get(3)?,
        error: row.get(4)?,
        response_excerpt: row.get(5)?,
    })
}

const INSERT_ATTEMPT: &str = "INSERT OR ROLLBACK INTO webhook_delivery_attempts (delivery_id, \
    attempt_number, started_at, duration_ms, status_code, error, response_excerpt) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

fn insert_attempt(
    stmt: &mut rusqlite::CachedStatement,
    delivery_id: i64,
    a: &Attempt,
) -> rusqlite::Result<()> {
    stmt.execute(params![
        delivery_id,
        a.attempt_number,
        to_micros(a.started_at),
        i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
        a.status_code,
        a.error,
        a.response_excerpt,
    ])?;
    Ok(())
}

fn applied_versions(conn: &Connection) -> rusqlite::Result<Vec<u32>> {
    conn.execute(MIGRATIONS_TABLE, [])?;
    let mut stmt = conn.prepare("SELECT version FROM outbox_migrations ORDER BY version")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

fn create_one(
    tx: &Transaction,
    new: &NewDelivery,
    now: OffsetDateTime,
) -> rusqlite::Result<Result<(Delivery, bool)>> {
    let bound: Option<i64> = tx
        .prepare_cached(
            "SELECT organization_id FROM workflow_run_organizations WHERE workflow_run_id = ?1",
        )?
        .query_row([new.workflow_run_id], |r| r.get(0))
        .optional()?;
    match bound {
        Some(bound) if bound != new.organization_id => {
            return Ok(Err(Error::OrganizationMismatch {
                workflow_run_id: new.workflow_run_id,
                bound_organization_id: bound,
                organization_id: new.organization_id,
            }));
        }
        Some(_) => {}
        None => {
            tx.prepare_cached(
                "INSERT OR ROLLBACK INTO workflow_run_organizations (workflow_run_id, organization_id, \
                 created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                new.workflow_run_id,
                new.organization_id,
                to_micros(now)
            ])?;
        }
    }
    let delivery_uuid = super::new_delivery_uuid();
    // No RETURNING: SQLite collects returned rows in a temporary b-tree, a cost per row
    // that the connection's last rowid makes unnecessary here.
    let changed = tx
        .prepare_cached(
            "INSERT OR ROLLBACK INTO webhook_deliveries (delivery_uuid, organization_id, workflow_run_id, \
             webhook_node_id, webhook_name, endpoint_url, http_method, payload, custom_headers, \
             credential_uuid, status, attempt_count, max_attempts, scheduled_for, created_at, \
             updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', 0, ?11, ?12, \
             ?13, ?13) ON CONFLICT (workflow_run_id, webhook_node_id) DO NOTHING",
        )?
        .execute(params![
            delivery_uuid,
            new.organization_id,
            new.workflow_run_id,
            new.webhook_node_id,
            new.webhook_name,
            new.endpoint_url,
            new.http_method,
            new.payload,
            headers_to_json(&new.custom_headers),
            new.credential_uuid,
            new.max_attempts,
            to_micros(new.scheduled_for.unwrap_or(now)),
            to_micros(now),
        ])?;
    // One row changed: ours went in. None: the run + node existed already.
    if changed == 1 {
        return Ok(Ok((
            super::inserted_delivery(tx.last_insert_rowid(), delivery_uuid, new, now),
            true,
        )));
    }
    let existing = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE workflow_run_id = ?1 AND webhook_node_id = ?2"
        ))?
        .query_row(params![new.workflow_run_id, new.webhook_node_id], row_to_delivery)?;
    Ok(Ok((existing, false)))
}

impl super::Store for SqliteStore {
    fn describe(&self) -> String {
        self.describe_path()
    }

    fn migrate_up(&self) -> Result<Vec<u32>> {
        let mut applied_now = Vec::new();
        for m in MIGRATIONS {
            let applied = self.write(|tx| {
                if applied_versions(tx)?.contains(&m.version) {
                    return Ok(false);
                }
                tx.execute_batch(m.up)?;
                tx.execute(
                    "INSERT INTO outbox_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                    params![m.version, m.name, to_micros(crate::clock::now())],
                )?;
                Ok(true)
            })?;
            if applied {
                applied_now.push(m.version);
            }
        }
        Ok(applied_now)
    }

    fn migrate_down(&self) -> Result<Option<u32>> {
        self.write(|tx| {
            let Some(latest) = applied_versions(tx)?.into_iter().max() else {
                return Ok(None);
            };
            if let Some(m) = MIGRATIONS.iter().find(|m| m.version == latest) {
                tx.execute_batch(m.down)?;
            }
            tx.execute("DELETE FROM outbox_migrations WHERE version = ?1", [latest])?;
            Ok(Some(latest))
        })
    }

    fn migration_status(&self) -> Result<Vec<MigrationState>> {
        // Through the writer: the status query may create the bookkeeping table.
        let applied = self.write(|tx| applied_versions(tx))?;
        Ok(super::migration_states(MIGRATIONS, &applied))
    }

    fn schema_dump(&self) -> Result<String> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master \
                 WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "{} {} on {}: {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("\n"))
        })
    }

    fn create_many(
        &self,
        new: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<Vec<Result<(Delivery, bool)>>> {
        self.write(|tx| new.iter().map(|n| create_one(tx, n, now)).collect())
    }

    fn claim_due(&self, now: OffsetDateTime, limit: u32, lease: Duration) -> Result<Vec<Claim>> {
        let token = new_lease_token();
        let until = lease_end(now, lease);
        let (until, now) = (to_micros(until), to_micros(now));
        let mut claims = self.write_with(Durability::Bookkeeping, |tx| {
            // Read, then lease each row by id, rather than one UPDATE ... WHERE id IN (SELECT
            // ...) RETURNING: SQLite gathers the returned rows (1 KiB payloads) in a temporary
            // b-tree, and the ids in another. Inside this BEGIN IMMEDIATE transaction no one
            // else writes, so the rows read are the rows leased.
            // No `LIMIT ?`: this SQLite re-prepares a statement whenever a LIMIT parameter is
            // bound anew (measured: a re-prepare on every claim). The due index gives the
            // order, so rows are read one at a time and reading stops at `limit`.
            let due: Vec<Delivery> = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM webhook_deliveries \
                     WHERE status = 'pending' AND scheduled_for <= ?1 \
                       AND attempt_count < max_attempts \
                     ORDER BY scheduled_for, id"
                ))?
                .query_map(params![now], row_to_delivery)?
                .take(limit as usize)
                .collect::<rusqlite::Result<_>>()?;
            let mut lease = tx.prepare_cached(
                "UPDATE OR ROLLBACK webhook_deliveries SET attempt_count = attempt_count + 1, \
                 lease_token = ?1, scheduled_for = ?2, updated_at = ?3 WHERE id = ?4",
            )?;
            due.into_iter()
                .map(|mut delivery| {
                    lease.execute(params![token, until, now, delivery.id])?;
                    delivery.attempt_count += 1;
                    delivery.scheduled_for = Some(from_micros(until));
                    delivery.updated_at = from_micros(now);
                    Ok(Claim {
                        delivery,
                        lease_token: token.clone(),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        claims.sort_by_key(|c| c.delivery.id);
        Ok(claims)
    }

    fn record(&self, outcomes: &[Outcome], now: OffsetDateTime) -> Result<Vec<bool>> {
        self.write_with(Durability::Bookkeeping, |tx| {
            // Prepared once per batch: the statement cache is a lookup by SQL text.
            let mut update = tx.prepare_cached(
                "UPDATE OR ROLLBACK webhook_deliveries SET status = ?1, scheduled_for = ?2, \
                 last_status_code = CASE WHEN ?5 THEN last_status_code ELSE ?3 END, \
                 last_error = CASE WHEN ?5 THEN last_error ELSE ?4 END, \
                 attempt_count = attempt_count - ?5, lease_token = NULL, updated_at = ?6 \
                 WHERE id = ?7 AND lease_token = ?8",
            )?;
            let mut insert = tx.prepare_cached(INSERT_ATTEMPT)?;
            let mut applied = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                let w = OutcomeWrite::from(&outcome.transition);
                let changed = update.execute(params![
                    w.status.as_str(),
                    w.scheduled_for.map(to_micros),
                    w.status_code,
                    w.error,
                    w.release,
                    to_micros(now),
                    outcome.delivery_id,
                    outcome.lease_token,
                ])?;
                if let (1, Some(attempt)) = (changed, &outcome.attempt) {
                    insert_attempt(&mut insert, outcome.delivery_id, attempt)?;
                }
                applied.push(changed == 1);
            }
            Ok(applied)
        })
    }

    fn expire_final_leases(&self, now: OffsetDateTime) -> Result<Vec<Expired>> {
        self.write_with(Durability::Bookkeeping, |tx| {
            let expired = tx
                .prepare_cached(
                    "UPDATE webhook_deliveries SET status = 'dead_letter', scheduled_for = NULL, \
                     lease_token = NULL, last_error = ?1, last_status_code = NULL, updated_at = ?2 \
                     WHERE status = 'pending' AND attempt_count >= max_attempts \
                       AND scheduled_for <= ?2 \
                     RETURNING id, delivery_uuid, attempt_count",
                )?
                .query_map(params![FINAL_LEASE_EXPIRED, to_micros(now)], |r| {
                    Ok(Expired {
                        id: r.get(0)?,
                        delivery_uuid: r.get(1)?,
                        attempt_count: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut insert = tx.prepare_cached(INSERT_ATTEMPT)?;
            for e in &expired {
                let attempt = Attempt {
                    attempt_number: e.attempt_count,
                    started_at: now,
                    duration_ms: 0,
                    status_code: None,
                    error: Some(FINAL_LEASE_EXPIRED.to_string()),
                    response_excerpt: None,
                };
                insert_attempt(&mut insert, e.id, &attempt)?;
            }
            Ok(expired)
        })
    }

    fn get(&self, delivery_uuid: &str) -> Result<Option<DeliveryDetail>> {
        self.read(|conn| {
            let Some(delivery) = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM webhook_deliveries WHERE delivery_uuid = ?1"
                ))?
                .query_row([delivery_uuid], row_to_delivery)
                .optional()?
            else {
                return Ok(None);
            };
            let attempts = conn
                .prepare_cached(
                    "SELECT attempt_number, started_at, duration_ms, status_code, error, \
                     response_excerpt FROM webhook_delivery_attempts WHERE delivery_id = ?1 \
                     ORDER BY id",
                )?
                .query_map([delivery.id], row_to_attempt)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(DeliveryDetail { delivery, attempts }))
        })
    }

    fn list(&self, filter: &ListFilter) -> Result<Page> {
        let limit = page_limit(filter.limit);
        // The status is an enum name, inlined so the planner can use the partial indexes.
        let status_clause = filter
            .status
            .map(|s| format!(" AND status = '{}'", s.as_str()))
            .unwrap_or_default();
        let org_clause = if filter.organization_id.is_some() {
            " AND organization_id = ?3"
        } else {
            " AND ?3 IS NULL"
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE id > ?1{status_clause}{org_clause} \
             ORDER BY id LIMIT ?2"
        );
        let rows = self.read(|conn| {
            conn.prepare_cached(&sql)?
                .query_map(
                    params![filter.after.unwrap_or(0), limit + 1, filter.organization_id],
                    row_to_delivery,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(into_page(rows, limit))
    }

    fn redrive(&self, delivery_uuid: &str, now: OffsetDateTime) -> Result<Redrive> {
        self.write(|tx| {
            let redriven = tx
                .prepare_cached(&format!(
                    "UPDATE webhook_deliveries SET status = 'pending', attempt_count = 0, \
                     scheduled_for = ?2, lease_token = NULL, updated_at = ?2 \
                     WHERE delivery_uuid = ?1 AND status = 'dead_letter' RETURNING {COLUMNS}"
                ))?
                .query_row(params![delivery_uuid, to_micros(now)], row_to_delivery)
                .optional()?;
            if let Some(d) = redriven {
                return Ok(Redrive::Redriven(Box::new(d)));
            }
            let status: Option<String> = tx
                .prepare_cached("SELECT status FROM webhook_deliveries WHERE delivery_uuid = ?1")?
                .query_row([delivery_uuid], |r| r.get(0))
                .optional()?;
            match status {
                None => Ok(Redrive::NotFound),
                Some(s) => Ok(Redrive::NotDeadLetter(
                    Status::parse(&s).map_err(conversion_error)?,
                )),
            }
        })
    }

    fn redrive_all(&self, organization_id: Option<i64>, now: OffsetDateTime) -> Result<u64> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE webhook_deliveries SET status = 'pending', attempt_count = 0, \
                 scheduled_for = ?1, lease_token = NULL, updated_at = ?1 \
                 WHERE status = 'dead_letter' AND (?2 IS NULL OR organization_id = ?2)",
                params![to_micros(now), organization_id],
            )?;
            Ok(n as u64)
        })
    }

    fn purge(&self, older_than: OffsetDateTime) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self.write(|tx| {
                tx.execute(
                    "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
                     WHERE status IN ('succeeded', 'dead_letter') AND updated_at < ?1 LIMIT ?2)",
                    params![to_micros(older_than), PURGE_CHUNK],
                )
            })?;
            total += n as u64;
            if n < PURGE_CHUNK as usize {
                return Ok(total);
            }
        }
    }

    fn stats(&self, now: OffsetDateTime) -> Result<Stats> {
        self.read(|conn| {
            let mut stats = Stats::default();
            let mut stmt = conn.prepare_cached(
                "SELECT status, count(*) FROM webhook_deliveries GROUP BY status",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let n = row.get::<_, i64>(1)?.max(0) as u64;
                match Status::parse(&row.get::<_, String>(0)?) {
                    Ok(Status::Pending) => stats.pending = n,
                    Ok(Status::Succeeded) => stats.succeeded = n,
                    Ok(Status::DeadLetter) => stats.dead_letter = n,
                    Err(_) => {}
                }
            }
            let (due, oldest): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT count(*), min(scheduled_for) FROM webhook_deliveries \
                     WHERE status = 'pending' AND scheduled_for <= ?1 AND lease_token IS NULL",
                )?
                .query_row([to_micros(now)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            stats.due = due.max(0) as u64;
            stats.oldest_due_ms = oldest.map(|t| ((to_micros(now) - t).max(0) / 1000) as u64);
            Ok(stats)
        })
    }

    fn next_due_at(&self) -> Result<Option<OffsetDateTime>> {
        self.read(|conn| {
            let t: Option<i64> = conn
                .prepare_cached(
                    "SELECT min(scheduled_for) FROM webhook_deliveries WHERE status = 'pending'",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(t.map(from_micros))
        })
    }

    fn release_memory(&self) {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        super::sqlite_wal_vfs::release_buffer(&writer.conn);
        self.shrink_cache(&writer.conn);
        drop(writer);
        // Idle readers too: each keeps up to READER_CACHE_KIB of pages until it is closed, 30-60 s
        // later, after the allocator's free pages have been given back. All are held at once
        // so that each `try_get` yields another idle one; it opens none, and a read meanwhile
        // gets a connection of its own. Measured: idle anonymous memory 0.2-0.3 MiB lower.
        let mut idle = Vec::new();
        while let Some(conn) = self.readers.try_get() {
            self.shrink_cache(&conn);
            idle.push(conn);
        }
    }

    fn put_credential(&self, c: &StoredCredential) -> Result<bool> {
        let owner = self.write(|tx| {
            let owner: Option<i64> = tx
                .prepare_cached(
                    "SELECT organization_id FROM webhook_credentials WHERE credential_uuid = ?1",
                )?
                .query_row([&c.credential_uuid], |r| r.get(0))
                .optional()?;
            if owner.is_some_and(|o| o != c.organization_id) {
                return Ok(owner);
            }
            tx.prepare_cached(
                "INSERT INTO webhook_credentials (credential_uuid, organization_id, \
                 credential_type, sealed_data, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (credential_uuid) DO UPDATE SET \
                 credential_type = excluded.credential_type, sealed_data = excluded.sealed_data, \
                 updated_at = excluded.updated_at",
            )?
            .execute(params![
                c.credential_uuid,
                c.organization_id,
                c.credential_type,
                c.sealed_data,
                to_micros(c.created_at),
                to_micros(c.updated_at),
            ])?;
            Ok(owner)
        })?;
        match owner {
            Some(o) if o != c.organization_id => Err(Error::Conflict(format!(
                "credential {} belongs to another organization",
                c.credential_uuid
            ))),
            Some(_) => Ok(false),
            None => Ok(true),
        }
    }

    fn get_credential(
        &self,
        credential_uuid: &str,
        organization_id: i64,
    ) -> Result<Option<StoredCredential>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT credential_uuid, organization_id, credential_type, sealed_data, \
                 created_at, updated_at FROM webhook_credentials \
                 WHERE credential_uuid = ?1 AND organization_id = ?2",
            )?
            .query_row(params![credential_uuid, organization_id], |r| {
                Ok(StoredCredential {
                    credential_uuid: r.get(0)?,
                    organization_id: r.get(1)?,
                    credential_type: r.get(2)?,
                    sealed_data: r.get(3)?,
                    created_at: from_micros(r.get(4)?),
                    updated_at: from_micros(r.get(5)?),
                })
            })
            .optional()
        })
    }

    fn delete_credential(&self, credential_uuid: &str, organization_id: i64) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM webhook_credentials WHERE credential_uuid = ?1 AND organization_id = ?2",
                params![credential_uuid, organization_id],
            )?;
            Ok(n == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// Bytes of pages in this connection's page cache.
    fn page_cache_bytes(conn: &Connection) -> i32 {
        let (mut current, mut highwater) = (0, 0);
        // SAFETY: the handle is a live connection for the call's duration; both out-pointers
        // point to locals.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut current,
                &mut highwater,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        current
    }

    #[test]
    fn releasing_memory_empties_idle_readers_page_caches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.db");
        let store = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
        store.migrate_up().unwrap();
        let rows: Vec<NewDelivery> = (0..200)
            .map(|run| NewDelivery {
                organization_id: 1,
                workflow_run_id: run,
                webhook_node_id: "n".into(),
                webhook_name: None,
                endpoint_url: "http://127.0.0.1:9/hook".into(),
                http_method: "POST".into(),
                payload: format!(r#"{{"filler":"{}"}}"#, "x".repeat(1000)),
                custom_headers: Vec::new(),
                credential_uuid: None,
                max_attempts: 5,
                scheduled_for: None,
            })
            .collect();
        for created in store.create_many(&rows, crate::clock::now()).unwrap() {
            created.unwrap();
        }
        // Two readers at once, so that both read every row's page.
        let (a, b) = (store.readers.get().unwrap(), store.readers.get().unwrap());
        let mut before = Vec::new();
        for conn in [&a, &b] {
            let sql = "SELECT count(*) FROM webhook_deliveries WHERE payload <> ''";
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
            before.push(page_cache_bytes(conn));
        }
        drop((a, b));

        store.release_memory();

        let (a, b) = (store.readers.get().unwrap(), store.readers.get().unwrap());
        let after = [page_cache_bytes(&a), page_cache_bytes(&b)];
        // 200 rows of 1 KiB fill ~70 pages; a released cache keeps at most the first one.
        assert!(before.iter().all(|&n| n > 200 * 1024), "{before:?}");
        assert!(after.iter().all(|&n| n < 8 * 1024), "{after:?}");
    }

    #[test]
    fn bookkeeping_skips_the_fsync_only_under_full() {
        use Durability::*;
        assert_eq!(pragma_for(Synchronous::Full, Acknowledged), "FULL");
        assert_eq!(pragma_for(Synchronous::Full, Bookkeeping), "NORMAL");
        assert_eq!(pragma_for(Synchronous::Strict, Bookkeeping), "FULL");
        assert_eq!(pragma_for(Synchronous::Normal, Acknowledged), "NORMAL");
    }
}
