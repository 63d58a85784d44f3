//! The `Store` trait: every state transition of a delivery, and its two backends.
//! All SQL lives in `sqlite.rs`, `postgres.rs` and `postgres_migrations.rs`; this file holds what both backends share.

mod postgres;
mod postgres_migrations;
mod sqlite;
mod sqlite_wal_vfs;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::delivery::{
    Claim, Delivery, DeliveryDetail, Expired, Header, ListFilter, MAX_ERROR_CHARS, MigrationState,
    NewDelivery, Outcome, Page, Redrive, Stats, Status, StoredCredential, Transition,
    truncate_chars,
};
use crate::error::{Error, Result};

/// How SQLite syncs commits to disk (`OUTBOX_SQLITE_SYNCHRONOUS`). A process crash never loses
/// a commit in any mode (WAL); the modes differ on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Writes a caller is told are done (enqueue, redrive, credentials, purge) are on disk
    /// before they are acknowledged: an accepted enqueue survives power loss. The engine's own
    /// bookkeeping (claims, outcomes) is synced with the next such commit or checkpoint: a power
    /// cut may undo the latest, which means a re-send with the same delivery id, never a lost
    /// delivery. The default.
    #[default]
    Full,
    /// Every commit synced, bookkeeping too (as the origin's per-write commits): outcomes
    /// never revert on power loss; two more fsyncs per delivery.
    Strict,
    /// Commits are synced at checkpoints only: fastest; a power cut may lose the latest
    /// enqueues too (never corrupts the file).
    Normal,
}

impl Synchronous {
    /// Parses `full`, `strict` or `normal` (any case).
    ///
    /// # Errors
    /// A message naming the value and the accepted ones.
    pub fn parse(s: &str) -> Result<Synchronous, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Synchronous::Full),
            "strict" => Ok(Synchronous::Strict),
            "normal" => Ok(Synchronous::Normal),
            _ => Err(format!(
                "unknown SQLite synchronous mode {s:?}: expected full, strict or normal"
            )),
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// SQLite only. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// Pooled connections (readers on SQLite; all connections on PostgreSQL). Default 8.
    pub pool_size: u32,
    /// PostgreSQL only: the schema to use (`search_path`). Default: the server's default.
    pub postgres_schema: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Full,
            pool_size: 8,
            postgres_schema: None,
        }
    }
}

/// Whether `database` names a PostgreSQL server rather than an SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// Opens the store `database` names: a `postgres://` URL or an SQLite file path.
/// It does not migrate; see [`Store::migrate_up`] and [`check_schema`].
///
/// # Errors
/// [`Error::Sqlite`] naming the file when it cannot be opened, created or is not a database;
/// [`Error::Postgres`] naming the URL (without password) when the server cannot be reached.
pub fn open(database: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if is_postgres_url(database) {
        Ok(Arc::new(PostgresStore::open(database, options)?))
    } else {
        Ok(Arc::new(SqliteStore::open(database, options)?))
    }
}

/// Refuses a database whose schema is older (or newer) than this binary's.
///
/// # Errors
/// [`Error::Schema`] saying what to run.
pub fn check_schema(store: &dyn Store) -> Result<()> {
    let states = store.migration_status()?;
    let unknown: Vec<u32> = states
        .iter()
        .filter(|m| m.name == UNKNOWN_MIGRATION)
        .map(|m| m.version)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Schema {
            target: store.describe(),
            message: format!(
                "schema has migrations {unknown:?} that this outbox {} does not know: the \
                 database was upgraded by a newer outbox; run that one (or roll back with it)",
                env!("CARGO_PKG_VERSION")
            ),
        });
    }
    let latest = states.iter().map(|m| m.version).max().unwrap_or(0);
    let pending: Vec<u32> = states
        .iter()
        .filter(|m| !m.applied)
        .map(|m| m.version)
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    Err(Error::Schema {
        target: store.describe(),
        message: format!(
            "schema is not migrated (pending migrations {pending:?} of {latest}): run `outbox migrate up`"
        ),
    })
}

/// Every state transition of a delivery. Implementations: [`SqliteStore`], [`PostgresStore`].
///
/// Times are passed in (`now`), never read from the database's clock.
pub trait Store: Send + Sync {
    /// What this store is, for messages: `SQLite ./outbox.db` or a URL without password.
    fn describe(&self) -> String;

    /// Applies every pending migration, in order, each in its own transaction.
    /// Returns the versions applied.
    ///
    /// # Errors
    /// The database error of the migration that failed; earlier ones stay applied.
    fn migrate_up(&self) -> Result<Vec<u32>>;

    /// Rolls back the latest applied migration; returns its version, or `None` if none was applied.
    ///
    /// # Errors
    /// The database error; nothing is rolled back then.
    fn migrate_down(&self) -> Result<Option<u32>>;

    /// Every migration this binary knows, and whether it is applied.
    ///
    /// # Errors
    /// The database error.
    fn migration_status(&self) -> Result<Vec<MigrationState>>;

    /// A text description of the schema (tables, columns, indexes, constraints), stable across
    /// runs, so two schemas can be compared (`outbox migrate status --schema`).
    ///
    /// # Errors
    /// The database error.
    fn schema_dump(&self) -> Result<String>;

    /// Get-or-create each delivery on `(workflow_run_id, webhook_node_id)`, all in one
    /// transaction (one commit for the batch). Each item returns `(delivery, created)`, or
    /// [`Error::OrganizationMismatch`] when its run is bound to another organization (that item
    /// writes nothing; the others go ahead).
    ///
    /// # Errors
    /// A database error fails the whole batch, and nothing is written.
    fn create_many(
        &self,
        new: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<Vec<Result<(Delivery, bool)>>>;

    /// Get-or-create one delivery; see [`Store::create_many`].
    ///
    /// # Errors
    /// [`Error::OrganizationMismatch`], or a database error.
    fn create(&self, new: &NewDelivery, now: OffsetDateTime) -> Result<(Delivery, bool)> {
        self.create_many(std::slice::from_ref(new), now)?
            .pop()
            .unwrap_or_else(|| Err(Error::Invalid("create returned no row".into())))
    }

    /// Claims up to `limit` due rows, earliest due first, in one transaction: each claimed row's
    /// `attempt_count` goes up by one, it gets a fresh lease token and `scheduled_for` moves to
    /// `now + lease`. Only rows with attempts left are claimed. Returned in id order.
    ///
    /// # Errors
    /// The database error; nothing is claimed then.
    fn claim_due(&self, now: OffsetDateTime, limit: u32, lease: Duration) -> Result<Vec<Claim>>;

    /// Writes a batch of outcomes in one transaction. Each write is fenced by its lease token:
    /// the returned flag is `false` (and nothing changed for it) when the token is stale.
    /// Applied outcomes append their attempt to the history.
    ///
    /// # Errors
    /// The database error; nothing of the batch is written then.
    fn record(&self, outcomes: &[Outcome], now: OffsetDateTime) -> Result<Vec<bool>>;

    /// Dead-letters pending rows whose lease ran out on their final attempt (the worker was
    /// lost; the outcome is unknown). They are not retried, since the budget is spent, and not
    /// dropped: `last_error` says what happened and a redrive sends them again.
    ///
    /// # Errors
    /// The database error.
    fn expire_final_leases(&self, now: OffsetDateTime) -> Result<Vec<Expired>>;

    /// One delivery with its attempt history.
    ///
    /// # Errors
    /// The database error.
    fn get(&self, delivery_uuid: &str) -> Result<Option<DeliveryDetail>>;

    /// One page of deliveries, by id ascending.
    ///
    /// # Errors
    /// The database error.
    fn list(&self, filter: &ListFilter) -> Result<Page>;

    /// Moves one dead-lettered delivery back to pending, due now, with a fresh attempt budget.
    ///
    /// # Errors
    /// The database error.
    fn redrive(&self, delivery_uuid: &str, now: OffsetDateTime) -> Result<Redrive>;

    /// Redrives every dead letter (of one organization, if given); returns how many.
    ///
    /// # Errors
    /// The database error; nothing is redriven then.
    fn redrive_all(&self, organization_id: Option<i64>, now: OffsetDateTime) -> Result<u64>;

    /// Deletes succeeded and dead-lettered deliveries (with their attempts) last updated
    /// before `older_than`; returns how many. Pending rows are never purged.
    ///
    /// # Errors
    /// The database error; rows deleted in earlier chunks stay deleted.
    fn purge(&self, older_than: OffsetDateTime) -> Result<u64>;

    /// Counts per status, the due backlog and the age of its oldest row.
    ///
    /// # Errors
    /// The database error.
    fn stats(&self, now: OffsetDateTime) -> Result<Stats>;

    /// When the next pending row becomes due (or its lease ends), for the engine's sleep.
    /// The engine claims only when this says a row is due, so it must not miss one for
    /// long: PostgreSQL may see a row another process made due before the rows this store
    /// last claimed up to a second late (see its claim floor), never later.
    ///
    /// # Errors
    /// The database error.
    fn next_due_at(&self) -> Result<Option<OffsetDateTime>>;

    /// Gives back memory held for speed (page caches) once the engine is idle. Default: nothing.
    fn release_memory(&self) {}

    /// Creates or replaces a credential. Returns whether it was created.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the uuid belongs to another organization; a database error.
    fn put_credential(&self, credential: &StoredCredential) -> Result<bool>;

    /// The credential with this uuid in this organization.
    ///
    /// # Errors
    /// The database error.
    fn get_credential(
        &self,
        credential_uuid: &str,
        organization_id: i64,
    ) -> Result<Option<StoredCredential>>;

    /// Deletes a credential; returns whether it existed.
    ///
    /// # Errors
    /// The database error.
    fn delete_credential(&self, credential_uuid: &str, organization_id: i64) -> Result<bool>;
}

/// One schema migration of a backend: its SQL up and down.
pub(crate) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// The name shown for an applied migration this binary does not know (a newer outbox ran).
pub const UNKNOWN_MIGRATION: &str = "(unknown: applied by a newer outbox)";

/// Every migration this binary knows, whether applied, then applied ones it does not know.
pub(crate) fn migration_states(known: &[Migration], applied: &[u32]) -> Vec<MigrationState> {
    let mut states: Vec<MigrationState> = known
        .iter()
        .map(|m| MigrationState {
            version: m.version,
            name: m.name,
            applied: applied.contains(&m.version),
        })
        .collect();
    for &version in applied {
        if !known.iter().any(|m| m.version == version) {
            states.push(MigrationState {
                version,
                name: UNKNOWN_MIGRATION,
                applied: true,
            });
        }
    }
    states
}

/// Migration 1 ("init") down, the same on both backends (the up is `schema.sql` /
/// `schema.postgres.sql`).
pub(crate) const INIT_DOWN: &str = "DROP TABLE webhook_credentials;
    DROP TABLE workflow_run_organizations;
    DROP TABLE webhook_delivery_attempts;
    DROP TABLE webhook_deliveries;";

/// An outcome flattened into the columns one fenced UPDATE writes, so both backends use a
/// single statement for every transition.
pub(crate) struct OutcomeWrite {
    pub status: Status,
    pub scheduled_for: Option<OffsetDateTime>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    /// A release keeps `last_*` as they were and gives the attempt back.
    pub release: bool,
}

impl OutcomeWrite {
    pub fn from(transition: &Transition) -> OutcomeWrite {
        let error = |e: &str| Some(truncate_chars(e, MAX_ERROR_CHARS).to_string());
        match transition {
            Transition::Succeeded { status_code } => OutcomeWrite {
                status: Status::Succeeded,
                scheduled_for: None,
                status_code: Some(i32::from(*status_code)),
                error: None,
                release: false,
            },
            Transition::Retry {
                at,
                status_code,
                error: e,
            } => OutcomeWrite {
                status: Status::Pending,
                scheduled_for: Some(*at),
                status_code: status_code.map(i32::from),
                error: error(e),
                release: false,
            },
            Transition::DeadLetter {
                status_code,
                error: e,
            } => OutcomeWrite {
                status: Status::DeadLetter,
                scheduled_for: None,
                status_code: status_code.map(i32::from),
                error: error(e),
                release: false,
            },
            Transition::Release { at } => OutcomeWrite {
                status: Status::Pending,
                scheduled_for: Some(*at),
                status_code: None,
                error: None,
                release: true,
            },
        }
    }
}

/// The message a lease that ran out on the final attempt leaves in `last_error`.
pub(crate) const FINAL_LEASE_EXPIRED: &str = "lease expired during the final attempt: the outcome is unknown (the receiver may have it); redrive to send again";

/// Custom headers as stored: a JSON array, or NULL when there are none (as the origin).
pub(crate) fn headers_to_json(headers: &[Header]) -> Option<String> {
    if headers.is_empty() {
        None
    } else {
        serde_json::to_string(headers).ok()
    }
}

/// The inverse of [`headers_to_json`].
pub(crate) fn headers_from_json(text: Option<&str>) -> Result<Vec<Header>, String> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => serde_json::from_str(t).map_err(|e| format!("stored custom_headers: {e}")),
    }
}

/// Clamps a requested page size.
pub(crate) fn page_limit(limit: u32) -> u32 {
    limit.clamp(1, crate::delivery::MAX_PAGE)
}

/// Splits a fetched `limit + 1` rows into a page and its cursor.
pub(crate) fn into_page(mut deliveries: Vec<Delivery>, limit: u32) -> Page {
    let more = deliveries.len() > limit as usize;
    deliveries.truncate(limit as usize);
    let next_after = if more {
        deliveries.last().map(|d| d.id)
    } else {
        None
    };
    Page {
        deliveries,
        next_after,
    }
}

/// The delivery an INSERT of `new` created, built here rather than read back: the same values
/// the row holds (times at the microsecond precision both backends store), without copying
/// the payload out of the database again.
pub(crate) fn inserted_delivery(
    id: i64,
    delivery_uuid: String,
    new: &NewDelivery,
    now: OffsetDateTime,
) -> Delivery {
    let stored = |t: OffsetDateTime| crate::clock::truncate_to_micros(t);
    Delivery {
        id,
        delivery_uuid,
        organization_id: new.organization_id,
        workflow_run_id: new.workflow_run_id,
        webhook_node_id: new.webhook_node_id.clone(),
        webhook_name: new.webhook_name.clone(),
        endpoint_url: new.endpoint_url.clone(),
        http_method: new.http_method.clone(),
        payload: new.payload.clone(),
        custom_headers: new.custom_headers.clone(),
        credential_uuid: new.credential_uuid.clone(),
        status: Status::Pending,
        attempt_count: 0,
        max_attempts: new.max_attempts,
        scheduled_for: Some(stored(new.scheduled_for.unwrap_or(now))),
        last_status_code: None,
        last_error: None,
        created_at: stored(now),
        updated_at: stored(now),
    }
}

/// A new delivery uuid. Version 7 (time-ordered): new rows land at the end of the unique
/// index instead of on a random page, so a batch of enqueues dirties one index page rather
/// than one per row. The uuid reveals its creation time, which the delivery shows anyway.
pub(crate) fn new_delivery_uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A new lease token: unique per claim batch, so a stale worker's writes miss.
pub(crate) fn new_lease_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Lease duration as a time offset (saturating).
pub(crate) fn lease_end(now: OffsetDateTime, lease: Duration) -> OffsetDateTime {
    let lease = time::Duration::try_from(lease).unwrap_or(time::Duration::days(365));
    now.checked_add(lease).unwrap_or(now)
}
