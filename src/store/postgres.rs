//! The PostgreSQL backend, for installs that run several instances against one database.
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on each other's rows;
//! outcome batches are one statement over `unnest`ed arrays (one round trip per batch).
//! Each pooled connection prepares a statement once and keeps it (see [`Cached`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{GenericClient, NoTls, Row, Statement, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use time::OffsetDateTime;

use super::postgres_migrations::MIGRATIONS;
use super::{
    FINAL_LEASE_EXPIRED, OutcomeWrite, StoreOptions, headers_from_json, headers_to_json, into_page,
    lease_end, new_lease_token, page_limit,
};
use crate::delivery::{
    Attempt, Claim, Delivery, DeliveryDetail, Expired, ListFilter, MigrationState, NewDelivery,
    Outcome, Page, Redrive, Stats, Status, StoredCredential,
};
use crate::error::{Error, Result, redact_url};

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS outbox_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)";

/// Serialises migrations of one schema across processes (two instances starting at once).
const MIGRATION_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('outbox:' || current_schema()))";

/// Rows deleted per purge transaction.
const PURGE_CHUNK: u64 = 5_000;

/// Final leases expired per call of `expire_final_leases` (the claimer calls it every second).
const EXPIRE_CHUNK: u32 = 500;

/// Connecting gives up after this long, so a wrong host fails fast with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where reads find deliveries: the wide row `d` and, until the delivery has succeeded, its
/// queue row `q` (migration 3), which then holds its due time, attempts, last update and lease.
const DELIVERIES: &str =
    "webhook_deliveries d LEFT JOIN webhook_delivery_queue q ON q.delivery_id = d.id";

/// The `queued` columns of a read from [`DELIVERIES`]. A leased row shows when its lease
/// ends, as on SQLite; a dead letter's queue row has no due time, nor has its wide row.
const READ_QUEUED: [&str; 4] = [
    "COALESCE(q.lease_until, q.scheduled_for, d.scheduled_for)",
    "COALESCE(q.attempt_count, d.attempt_count)",
    "COALESCE(q.updated_at, d.updated_at)",
    "q.lease_token",
];

/// Puts the rows of `redriven` (a CTE with `id` and `max_attempts`) back in the queue, due at
/// `now` (a parameter), with a fresh attempt budget and no lease. A dead letter keeps its
/// queue row, so this updates it; a missing one is made.
fn requeue(redriven: &str, now: &str) -> String {
    format!(
        "INSERT INTO webhook_delivery_queue (delivery_id, scheduled_for, attempt_count, \
             max_attempts, updated_at) \
         SELECT id, {now}, 0, max_attempts, {now} FROM {redriven} \
         ON CONFLICT (delivery_id) DO UPDATE SET scheduled_for = excluded.scheduled_for, \
             attempt_count = 0, max_attempts = excluded.max_attempts, lease_token = NULL, \
             lease_until = NULL, final_lease = false, updated_at = excluded.updated_at"
    )
}

/// The columns [`row_to_delivery`] reads, in its order: the wide row `d`'s, and from `queued`
/// the due time, attempt count, last update and lease token.
fn columns(queued: [&str; 4]) -> String {
    let [scheduled_for, attempt_count, updated_at, lease_token] = queued;
    [
        "d.id",
        "d.delivery_uuid",
        "d.organization_id",
        "d.workflow_run_id",
        "d.webhook_node_id",
        "d.webhook_name",
        "d.endpoint_url",
        "d.http_method",
        "d.payload::text",
        "d.custom_headers::text",
        "d.credential_uuid",
        "d.status",
        attempt_count,
        "d.max_attempts",
        scheduled_for,
        "d.last_status_code",
        "d.last_error",
        "d.created_at",
        updated_at,
        lease_token,
    ]
    .join(", ")
}

/// How every connection plans. Each statement here is planned once per connection, for any
/// parameters: a plan made for the parameters at hand reads the table's statistics, and a
/// table filled faster than autovacuum analyzes it has none; the claim's was then a sort of
/// every due row instead of a walk of the due index that stops at the limit (measured 64 ms
/// instead of 0.9 ms for 100 of 100,000 due rows). The generic plans of these statements are
/// the index walks they were written for, and none is planned again at each execution. No
/// JIT compilation: a generic plan's cost grows with the table, and past `jit_above_cost`
/// PostgreSQL compiled the once-a-second expiry of final leases, 180-240 ms of a core each
/// time, with 1,000,000 rows queued (these are short statements; JIT pays off on long ones).
const SESSION_SETTINGS: &str = "SET plan_cache_mode = force_generic_plan; SET jit = off";

/// A pooled connection and the statements prepared on it, by SQL text.
struct PgConnection {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
}

/// r2d2_postgres's manager, with a statement cache on each connection.
struct Manager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<PgConnection, postgres::Error> {
        let mut client = self.0.connect()?;
        client.batch_execute(SESSION_SETTINGS)?;
        Ok(PgConnection {
            client,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> std::result::Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

/// A client or transaction that prepares each statement once per connection. A statement
/// sent as text is parsed and planned by the server every time, in a round trip of its own
/// before the one that runs it: per outcome batch, two of its six round trips. Statements
/// persist across transactions (PostgreSQL's prepared statements are not transactional);
/// the set is bounded, since every SQL text here is a constant or built from constants.
struct Cached<'a, C> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Cached<'_, C> {
    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &Params,
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &Params,
    ) -> std::result::Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }

    fn execute(&mut self, sql: &str, params: &Params) -> std::result::Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }

    /// Runs `sql` as text, uncached: for DDL and `SET`, which take no parameters.
    fn batch_execute(&mut self, sql: &str) -> std::result::Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }
}

type Tx<'a, 'b> = Cached<'a, Transaction<'b>>;
type Client<'a> = Cached<'a, postgres::Client>;

/// Errors inside a transaction: the server's, or stored data that does not parse.
enum PgError {
    Db(postgres::Error),
    Data(String),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError::Db(e)
    }
}

type PgResult<T> = std::result::Result<T, PgError>;

/// The PostgreSQL store.
pub struct PostgresStore {
    url: String,
    pool: r2d2::Pool<Manager>,
    floor: Mutex<Option<ClaimFloor>>,
}

/// How long after a claim that walked the due index from its head later claims may start
/// their walk at the floor instead (see [`ClaimFloor`]). A row that becomes claimable
/// behind the floor without this store's knowing (a lease running out; another process
/// enqueuing a row due in the past) is claimed at most this much later, however busy the
/// claims are.
const FLOOR_TTL: time::Duration = time::Duration::seconds(1);

/// Where the last claim found its first claimable row. Rows done are dead entries at the
/// head of the due index until a VACUUM removes them, and every claim that starts at the
/// head steps over all of them: measured 8 ms a claim of 256 rows with 500,000 done rows
/// ahead (2,000 index pages), so a 1,000,000-row backlog drained ~35 % slower than a
/// 100,000-row one. A claim starts at the floor instead while it is fresh; this store
/// lowers it whenever it makes a row pending that is due earlier. `next_due_at` starts
/// there too while it is fresh (see there).
#[derive(Clone, Copy)]
struct ClaimFloor {
    /// The earliest `scheduled_for` of the rows the last claim took.
    due: OffsetDateTime,
    /// The `now` of the last claim that walked from the index's head. Claims from the floor
    /// move `due` but keep this: were it renewed by every claim that finds rows, a steady
    /// load would keep the floor fresh for ever, and a row behind it would wait for a lull.
    set_at: OffsetDateTime,
}

impl PostgresStore {
    /// Connects to `url`, using `options.postgres_schema` as the search path when given.
    ///
    /// # Errors
    /// [`Error::Postgres`] naming the URL (without password) when it does not parse or the
    /// server cannot be reached.
    pub fn open(url: &str, options: &StoreOptions) -> Result<PostgresStore> {
        let shown = redact_url(url);
        let err = |source| Error::Postgres {
            url: shown.clone(),
            source,
        };
        let mut config: postgres::Config = url.parse().map_err(err)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if let Some(schema) = &options.postgres_schema {
            config.options(&format!("-c search_path={schema}"));
        }
        // Connect once now, so a wrong URL fails at open with the server's own reason.
        let mut probe = config.connect(NoTls).map_err(err)?;
        probe.simple_query("SELECT 1").map_err(err)?;
        drop(probe);
        let manager = Manager(PostgresConnectionManager::new(config, NoTls));
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(0))
            .build_unchecked(manager);
        Ok(PostgresStore {
            url: shown,
            pool,
            floor: Mutex::new(None),
        })
    }

    fn err(&self, e: PgError) -> Error {
        match e {
            PgError::Db(source) => Error::Postgres {
                url: self.url.clone(),
                source,
            },
            PgError::Data(message) => Error::Schema {
                target: self.describe_url(),
                message,
            },
        }
    }

    fn client(&self) -> Result<r2d2::PooledConnection<Manager>> {
        self.pool.get().map_err(|source| Error::Pool {
            target: self.describe_url(),
            source,
        })
    }

    fn write<T>(&self, f: impl FnOnce(&mut Tx) -> PgResult<T>) -> Result<T> {
        let mut conn = self.client()?;
        let PgConnection { client, statements } = &mut *conn;
        let mut tx = client.transaction().map_err(|e| self.err(e.into()))?;
        let value = f(&mut Cached {
            client: &mut tx,
            statements,
        })
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e.into()))?;
        Ok(value)
    }

    /// Runs `f` outside a transaction: for reads, and for writes of one statement, which is
    /// a transaction by itself (one round trip instead of three: no `BEGIN`, no `COMMIT`).
    fn run<T>(&self, f: impl FnOnce(&mut Client) -> PgResult<T>) -> Result<T> {
        let mut conn = self.client()?;
        let PgConnection { client, statements } = &mut *conn;
        f(&mut Cached { client, statements }).map_err(|e| self.err(e))
    }

    /// Where a claim at `now` may start its walk of the due index (`None`: at its head).
    fn claim_floor(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let floor = (*self.floor.lock().unwrap_or_else(|e| e.into_inner()))?;
        (now >= floor.set_at && now < floor.set_at + FLOOR_TTL).then_some(floor.due)
    }

    fn set_claim_floor(&self, floor: Option<ClaimFloor>) {
        *self.floor.lock().unwrap_or_else(|e| e.into_inner()) = floor;
    }

    /// A claim at `now` found rows due from `due` on, walking from the index's head unless
    /// it started at a fresh floor.
    fn move_claim_floor(&self, due: OffsetDateTime, now: OffsetDateTime, from_floor: bool) {
        let mut floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
        let set_at = match *floor {
            Some(old) if from_floor => old.set_at,
            _ => now,
        };
        *floor = Some(ClaimFloor { due, set_at });
    }

    /// This store has made rows pending that are due at `due` or later.
    fn lower_claim_floor(&self, due: OffsetDateTime) {
        if let Some(floor) = self
            .floor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            floor.due = floor.due.min(due);
        }
    }

    fn describe_url(&self) -> String {
        format!("PostgreSQL {}", self.url)
    }
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// What a batch of creates does with each item, from who owns its run.
#[derive(Debug, PartialEq)]
enum BatchItem {
    /// The run is bound to another organization: nothing is written.
    Mismatch { owner: i64 },
    /// Inserted, or read back if the run+node already has a row.
    Insert,
    /// The same run+node as an earlier item (its index): that item's row.
    SameAs(usize),
}

/// Plans each item of `new`, given the organization that owns each run.
fn plan_batch(new: &[NewDelivery], owners: &HashMap<i64, i64>) -> PgResult<Vec<BatchItem>> {
    let mut first = HashMap::new();
    new.iter()
        .enumerate()
        .map(|(i, n)| {
            let owner = *owners.get(&n.workflow_run_id).ok_or_else(|| {
                PgError::Data(format!(
                    "workflow run {} has no organization",
                    n.workflow_run_id
                ))
            })?;
            Ok(if owner != n.organization_id {
                BatchItem::Mismatch { owner }
            } else {
                match first.entry((n.workflow_run_id, n.webhook_node_id.as_str())) {
                    Entry::Occupied(e) => BatchItem::SameAs(*e.get()),
                    Entry::Vacant(e) => {
                        e.insert(i);
                        BatchItem::Insert
                    }
                }
            })
        })
        .collect()
}

/// Inserts the items of `new` that `inserts` names (by index), each with its uuid from
/// `uuids`, in one statement; returns `(id, delivery_uuid)` of each row inserted (none for a
/// run+node that already has a row).
fn insert_deliveries(
    tx: &mut Tx,
    new: &[NewDelivery],
    uuids: &[String],
    inserts: &[usize],
    now: OffsetDateTime,
) -> PgResult<Vec<Row>> {
    if inserts.is_empty() {
        return Ok(Vec::new());
    }
    let items = || inserts.iter().map(|&i| &new[i]);
    let uuids: Vec<&str> = inserts.iter().map(|&i| uuids[i].as_str()).collect();
    let organizations: Vec<i64> = items().map(|n| n.organization_id).collect();
    let runs: Vec<i64> = items().map(|n| n.workflow_run_id).collect();
    let nodes: Vec<&str> = items().map(|n| n.webhook_node_id.as_str()).collect();
    let names: Vec<Option<&str>> = items().map(|n| n.webhook_name.as_deref()).collect();
    let urls: Vec<&str> = items().map(|n| n.endpoint_url.as_str()).collect();
    let methods: Vec<&str> = items().map(|n| n.http_method.as_str()).collect();
    let payloads: Vec<&str> = items().map(|n| n.payload.as_str()).collect();
    let headers: Vec<Option<String>> = items()
        .map(|n| headers_to_json(&n.custom_headers))
        .collect();
    let credentials: Vec<Option<&str>> = items().map(|n| n.credential_uuid.as_deref()).collect();
    let max_attempts: Vec<i32> = items().map(|n| n.max_attempts as i32).collect();
    let scheduled: Vec<OffsetDateTime> = items().map(|n| n.scheduled_for.unwrap_or(now)).collect();
    Ok(tx.query(
        "INSERT INTO webhook_deliveries (delivery_uuid, organization_id, workflow_run_id, \
             webhook_node_id, webhook_name, endpoint_url, http_method, payload, custom_headers, \
             credential_uuid, status, attempt_count, max_attempts, scheduled_for, created_at, \
             updated_at) \
         SELECT uuid, organization, run, node, name, url, method, CAST(payload AS json), \
             CAST(headers AS json), credential, 'pending', 0, max_attempts, scheduled_for, $13, $13 \
         FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], \
             $12::timestamptz[]) AS v(uuid, organization, run, node, name, url, method, \
             payload, headers, credential, max_attempts, scheduled_for) \
         ON CONFLICT (workflow_run_id, webhook_node_id) DO NOTHING \
         RETURNING id, delivery_uuid",
        &[
            &uuids,
            &organizations,
            &runs,
            &nodes,
            &names,
            &urls,
            &methods,
            &payloads,
            &headers,
            &credentials,
            &max_attempts,
            &scheduled,
            &now,
        ],
    )?)
}

fn row_to_delivery(row: &Row) -> PgResult<Delivery> {
    let status: String = row.try_get(11)?;
    let headers: Option<String> = row.try_get(9)?;
    let code: Option<i32> = row.try_get(15)?;
    Ok(Delivery {
        id: row.try_get(0)?,
        delivery_uuid: row.try_get(1)?,
        organization_id: row.try_get(2)?,
        workflow_run_id: row.try_get(3)?,
        webhook_node_id: row.try_get(4)?,
        webhook_name: row.try_get(5)?,
        endpoint_url: row.try_get(6)?,
        http_method: row.try_get(7)?,
        payload: row.try_get(8)?,
        custom_headers: headers_from_json(headers.as_deref()).map_err(PgError::Data)?,
        credential_uuid: row.try_get(10)?,
        status: Status::parse(&status).map_err(PgError::Data)?,
        attempt_count: to_u32(row.try_get(12)?),
        max_attempts: to_u32(row.try_get(13)?),
        scheduled_for: row.try_get(14)?,
        last_status_code: code.and_then(|c| u16::try_from(c).ok()),
        last_error: row.try_get(16)?,
        created_at: row.try_get(17)?,
        updated_at: row.try_get(18)?,
    })
}

fn rows_to_deliveries(rows: &[Row]) -> PgResult<Vec<Delivery>> {
    rows.iter().map(row_to_delivery).collect()
}

fn applied_versions(tx: &mut Tx) -> PgResult<Vec<u32>> {
    tx.execute(MIGRATION_LOCK, &[])?;
    tx.batch_execute(MIGRATIONS_TABLE)?;
    let rows = tx.query(
        "SELECT version FROM outbox_migrations ORDER BY version",
        &[],
    )?;
    Ok(rows.iter().map(|r| to_u32(r.get(0))).collect())
}

/// Attempts as the columns of an `unnest`, one entry an outcome (all `None` for an outcome
/// without an attempt, such as a release).
struct AttemptColumns<'a> {
    numbers: Vec<Option<i32>>,
    started: Vec<Option<OffsetDateTime>>,
    durations: Vec<Option<i64>>,
    codes: Vec<Option<i32>>,
    errors: Vec<Option<&'a str>>,
    excerpts: Vec<Option<&'a str>>,
}

impl<'a> AttemptColumns<'a> {
    fn new(attempts: impl ExactSizeIterator<Item = Option<&'a Attempt>>) -> Self {
        let mut columns = AttemptColumns {
            numbers: Vec::with_capacity(attempts.len()),
            started: Vec::with_capacity(attempts.len()),
            durations: Vec::with_capacity(attempts.len()),
            codes: Vec::with_capacity(attempts.len()),
            errors: Vec::with_capacity(attempts.len()),
            excerpts: Vec::with_capacity(attempts.len()),
        };
        for a in attempts {
            columns
                .numbers
                .push(a.map(|a| i32::try_from(a.attempt_number).unwrap_or(i32::MAX)));
            columns.started.push(a.map(|a| a.started_at));
            columns
                .durations
                .push(a.map(|a| i64::try_from(a.duration_ms).unwrap_or(i64::MAX)));
            columns
                .codes
                .push(a.and_then(|a| a.status_code.map(i32::from)));
            columns.errors.push(a.and_then(|a| a.error.as_deref()));
            columns
                .excerpts
                .push(a.and_then(|a| a.response_excerpt.as_deref()));
        }
        columns
    }
}

impl super::Store for PostgresStore {
    fn describe(&self) -> String {
        self.describe_url()
    }

    fn migrate_up(&self) -> Result<Vec<u32>> {
        self.set_claim_floor(None);
        let mut applied_now = Vec::new();
        for m in MIGRATIONS {
            let applied = self.write(|tx| {
                if applied_versions(tx)?.contains(&m.version) {
                    return Ok(false);
                }
                tx.batch_execute(m.up)?;
                tx.execute(
                    "INSERT INTO outbox_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    &[&(m.version as i32), &m.name, &crate::clock::now()],
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
        self.set_claim_floor(None);
        self.write(|tx| {
            let Some(latest) = applied_versions(tx)?.into_iter().max() else {
                return Ok(None);
            };
            if let Some(m) = MIGRATIONS.iter().find(|m| m.version == latest) {
                tx.batch_execute(m.down)?;
            }
            tx.execute(
                "DELETE FROM outbox_migrations WHERE version = $1",
                &[&(latest as i32)],
            )?;
            Ok(Some(latest))
        })
    }

    fn migration_status(&self) -> Result<Vec<MigrationState>> {
        let applied = self.write(applied_versions)?;
        Ok(super::migration_states(MIGRATIONS, &applied))
    }

    fn schema_dump(&self) -> Result<String> {
        self.run(|client| {
            let mut lines = Vec::new();
            for row in client.query(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                        coalesce(column_default::text, '') \
                 FROM information_schema.columns WHERE table_schema = current_schema() \
                 ORDER BY table_name, ordinal_position",
                &[],
            )? {
                let (t, c, ty, null, def): (String, String, String, String, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                lines.push(format!("column {t}.{c} {ty} null={null} default={def}"));
            }
            for row in client.query(
                "SELECT indexname::text, indexdef FROM pg_indexes \
                 WHERE schemaname = current_schema() ORDER BY indexname",
                &[],
            )? {
                lines.push(format!(
                    "index {}: {}",
                    row.get::<_, String>(0),
                    row.get::<_, String>(1)
                ));
            }
            for row in client.query(
                "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) \
                 FROM pg_constraint WHERE connamespace = current_schema()::regnamespace \
                 ORDER BY conrelid::regclass::text, conname",
                &[],
            )? {
                lines.push(format!(
                    "constraint {}.{}: {}",
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, String>(2)
                ));
            }
            Ok(lines.join("\n"))
        })
    }

    fn create_many(
        &self,
        new: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<Vec<Result<(Delivery, bool)>>> {
        if let Some(due) = new.iter().map(|n| n.scheduled_for.unwrap_or(now)).min() {
            self.lower_claim_floor(due);
        }
        if new.is_empty() {
            return Ok(Vec::new());
        }
        // A few statements for the whole batch, not three round trips a row: bind the runs,
        // read who owns them, insert the rows, and read back only those that existed.
        self.write(|tx| {
            // Each run goes to the first organization the batch names for it. In run order, so
            // two batches binding the same runs wait for each other rather than deadlock.
            let mut binds = BTreeMap::new();
            for n in new {
                binds.entry(n.workflow_run_id).or_insert(n.organization_id);
            }
            let runs: Vec<i64> = binds.keys().copied().collect();
            let organizations: Vec<i64> = binds.values().copied().collect();
            tx.execute(
                "INSERT INTO workflow_run_organizations (workflow_run_id, organization_id, \
                 created_at) SELECT run, organization, $3 \
                 FROM unnest($1::bigint[], $2::bigint[]) AS b(run, organization) \
                 ON CONFLICT (workflow_run_id) DO NOTHING",
                &[&runs, &organizations, &now],
            )?;
            // A statement of its own: under READ COMMITTED its snapshot sees a concurrent
            // binder's row once that transaction commits (the insert waited for it), so two
            // organizations cannot both win a run.
            let owners: HashMap<i64, i64> = tx
                .query(
                    "SELECT workflow_run_id, organization_id FROM workflow_run_organizations \
                     WHERE workflow_run_id = ANY($1)",
                    &[&runs],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let plan = plan_batch(new, &owners)?;
            let uuids: Vec<String> = new.iter().map(|_| super::new_delivery_uuid()).collect();
            // In run+node order, for the reason runs are bound in order.
            let mut inserts: Vec<usize> = (0..new.len())
                .filter(|&i| plan[i] == BatchItem::Insert)
                .collect();
            inserts.sort_by_key(|&i| (new[i].workflow_run_id, new[i].webhook_node_id.as_str()));
            let rows = insert_deliveries(tx, new, &uuids, &inserts, now)?;
            let ids: HashMap<&str, i64> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
            let mut done: HashMap<usize, Delivery> = HashMap::new();
            let existing = format!(
                "SELECT {} FROM {DELIVERIES} WHERE d.workflow_run_id = $1 AND d.webhook_node_id = $2",
                columns(READ_QUEUED)
            );
            let mut results = Vec::with_capacity(new.len());
            for (i, (n, item)) in new.iter().zip(plan).enumerate() {
                let result = match item {
                    BatchItem::Mismatch { owner } => Err(Error::OrganizationMismatch {
                        workflow_run_id: n.workflow_run_id,
                        bound_organization_id: owner,
                        organization_id: n.organization_id,
                    }),
                    BatchItem::Insert => {
                        let (delivery, created) = match ids.get(uuids[i].as_str()) {
                            Some(&id) => {
                                (super::inserted_delivery(id, uuids[i].clone(), n, now), true)
                            }
                            None => {
                                let row = tx.query_one(
                                    &existing,
                                    &[&n.workflow_run_id, &n.webhook_node_id],
                                )?;
                                (row_to_delivery(&row)?, false)
                            }
                        };
                        done.insert(i, delivery.clone());
                        Ok((delivery, created))
                    }
                    BatchItem::SameAs(first) => {
                        let delivery = done.get(&first).cloned().ok_or_else(|| {
                            PgError::Data(format!("batch item {i} repeats item {first}, not written"))
                        })?;
                        Ok((delivery, false))
                    }
                };
                results.push(result);
            }
            Ok(results)
        })
    }

    fn claim_due(&self, now: OffsetDateTime, limit: u32, lease: Duration) -> Result<Vec<Claim>> {
        let token = new_lease_token();
        let until = lease_end(now, lease);
        let floor = self.claim_floor(now);
        // One statement, so no transaction around it. It must walk the due index in order
        // and stop at `limit`, as its generic plan does (see [`SESSION_SETTINGS`]).
        let (mut claims, first_due) = self.run(|client| {
            // The due predicate is repeated outside the CTE: a row locked-and-skipped is never
            // returned, and a row changed between the scan and the lock is re-checked. Rows
            // in flight sit at the head of the due index (their `scheduled_for` has passed);
            // the scan steps over them, as many as are leased. Only the queue row changes;
            // the wide row is read for what the send needs.
            let rows = client.query(
                &format!(
                    "WITH due AS ( \
                         SELECT delivery_id, scheduled_for AS due FROM webhook_delivery_queue \
                         WHERE scheduled_for <= $1 \
                           AND scheduled_for >= COALESCE($5::timestamptz, '-infinity') \
                           AND attempt_count < max_attempts \
                           AND (lease_until IS NULL OR lease_until <= $1) \
                         ORDER BY scheduled_for, delivery_id LIMIT $2 \
                         FOR UPDATE SKIP LOCKED), \
                     claimed AS ( \
                         UPDATE webhook_delivery_queue q SET attempt_count = q.attempt_count + 1, \
                             lease_token = $3, lease_until = $4, updated_at = $1, \
                             final_lease = q.attempt_count + 1 >= q.max_attempts, \
                             scheduled_for = CASE WHEN q.attempt_count + 1 >= q.max_attempts \
                                 THEN $4 ELSE q.scheduled_for END \
                         FROM due WHERE q.delivery_id = due.delivery_id \
                           AND q.scheduled_for <= $1 AND q.attempt_count < q.max_attempts \
                           AND (q.lease_until IS NULL OR q.lease_until <= $1) \
                         RETURNING q.delivery_id, q.attempt_count, q.lease_until, q.updated_at, \
                             q.lease_token, due.due) \
                     SELECT {}, c.due FROM claimed c \
                         JOIN webhook_deliveries d ON d.id = c.delivery_id",
                    columns([
                        "c.lease_until",
                        "c.attempt_count",
                        "c.updated_at",
                        "c.lease_token"
                    ])
                ),
                &[&now, &i64::from(limit), &token, &until, &floor],
            )?;
            // RETURNING keeps no order: the floor is the earliest of the rows taken.
            let first_due = rows
                .iter()
                .filter_map(|row| row.try_get::<_, OffsetDateTime>(20).ok())
                .min();
            let claims = rows
                .iter()
                .map(|row| {
                    Ok(Claim {
                        delivery: row_to_delivery(row)?,
                        lease_token: row.try_get(19)?,
                    })
                })
                .collect::<PgResult<Vec<_>>>()?;
            Ok((claims, first_due))
        })?;
        if let Some(due) = first_due {
            self.move_claim_floor(due, now, floor.is_some());
        }
        claims.sort_by_key(|c| c.delivery.id);
        Ok(claims)
    }

    fn record(&self, outcomes: &[Outcome], now: OffsetDateTime) -> Result<Vec<bool>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let writes: Vec<OutcomeWrite> = outcomes
            .iter()
            .map(|o| OutcomeWrite::from(&o.transition))
            .collect();
        let ids: Vec<i64> = outcomes.iter().map(|o| o.delivery_id).collect();
        let tokens: Vec<&str> = outcomes.iter().map(|o| o.lease_token.as_str()).collect();
        let statuses: Vec<&str> = writes.iter().map(|w| w.status.as_str()).collect();
        let scheduled: Vec<Option<OffsetDateTime>> =
            writes.iter().map(|w| w.scheduled_for).collect();
        let codes: Vec<Option<i32>> = writes.iter().map(|w| w.status_code).collect();
        let errors: Vec<Option<&str>> = writes.iter().map(|w| w.error.as_deref()).collect();
        let releases: Vec<bool> = writes.iter().map(|w| w.release).collect();
        if let Some(due) = writes
            .iter()
            .filter(|w| w.status == Status::Pending)
            .filter_map(|w| w.scheduled_for)
            .min()
        {
            self.lower_claim_floor(due);
        }
        let attempts = AttemptColumns::new(outcomes.iter().map(|o| o.attempt.as_ref()));
        // One statement, so no transaction around it. A success deletes the queue row, any
        // other outcome updates it, fenced by the lease token; the wide row is written, and
        // the attempt appended, for every outcome applied (the wide row not for a release).
        // Data-modifying CTEs all see the snapshot the statement started with. What the later
        // writes need comes through `applied`: a join back to `v` is planned, in the generic
        // plan, as a walk of `v` for each row (measured: 19 ms a batch of 256 instead of ~6).
        let rows = self.run(|client| {
            Ok(client.query(
                "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], \
                         $4::timestamptz[], $5::int[], $6::text[], $7::bool[], $9::int[], \
                         $10::timestamptz[], $11::bigint[], $12::int[], $13::text[], $14::text[]) \
                         AS v(id, token, status, scheduled_for, status_code, error, release, \
                              attempt_number, started_at, duration_ms, attempt_status_code, \
                              attempt_error, response_excerpt)), \
                 finished AS ( \
                     DELETE FROM webhook_delivery_queue q USING v \
                     WHERE q.delivery_id = v.id AND q.lease_token = v.token \
                       AND v.status = 'succeeded' \
                     RETURNING q.attempt_count AS attempt_count, v.*), \
                 requeued AS ( \
                     UPDATE webhook_delivery_queue q SET scheduled_for = v.scheduled_for, \
                         attempt_count = q.attempt_count - CASE WHEN v.release THEN 1 ELSE 0 END, \
                         lease_token = NULL, lease_until = NULL, final_lease = false, updated_at = $8 \
                     FROM v WHERE q.delivery_id = v.id AND q.lease_token = v.token \
                       AND v.status <> 'succeeded' \
                     RETURNING q.attempt_count AS attempt_count, v.*), \
                 applied AS (SELECT * FROM finished UNION ALL SELECT * FROM requeued), \
                 written AS ( \
                     UPDATE webhook_deliveries d SET status = a.status, \
                         scheduled_for = a.scheduled_for, attempt_count = a.attempt_count, \
                         last_status_code = a.status_code, last_error = a.error, updated_at = $8 \
                     FROM applied a WHERE d.id = a.id AND NOT a.release), \
                 appended AS ( \
                     INSERT INTO webhook_delivery_attempts (delivery_id, attempt_number, \
                         started_at, duration_ms, status_code, error, response_excerpt) \
                     SELECT id, attempt_number, started_at, duration_ms, attempt_status_code, \
                         attempt_error, response_excerpt \
                     FROM applied WHERE attempt_number IS NOT NULL) \
                 SELECT id FROM applied",
                &[
                    &ids,
                    &tokens,
                    &statuses,
                    &scheduled,
                    &codes,
                    &errors,
                    &releases,
                    &now,
                    &attempts.numbers,
                    &attempts.started,
                    &attempts.durations,
                    &attempts.codes,
                    &attempts.errors,
                    &attempts.excerpts,
                ],
            )?)
        })?;
        let applied: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(outcomes
            .iter()
            .map(|o| applied.contains(&o.delivery_id))
            .collect())
    }

    fn expire_final_leases(&self, now: OffsetDateTime) -> Result<Vec<Expired>> {
        // One statement: the queue row loses its due time (a dead letter's has none), the
        // wide row is dead-lettered and the lost attempt appended. At most EXPIRE_CHUNK rows
        // a call (the rest at the next): a generic plan guesses a third of the table for
        // `scheduled_for <= $2`, and for that many it would join by reading the whole wide
        // table; for a known few it looks each one up.
        self.run(|client| {
            let rows = client.query(
                &format!(
                    "WITH expired AS ( \
                     UPDATE webhook_delivery_queue SET scheduled_for = NULL, lease_token = NULL, \
                         lease_until = NULL, final_lease = false, updated_at = $2 \
                     WHERE delivery_id IN (SELECT delivery_id FROM webhook_delivery_queue \
                             WHERE final_lease AND scheduled_for <= $2 LIMIT {EXPIRE_CHUNK}) \
                       AND final_lease AND scheduled_for <= $2 \
                     RETURNING delivery_id, attempt_count), \
                 dead AS ( \
                     UPDATE webhook_deliveries d SET status = 'dead_letter', scheduled_for = NULL, \
                         attempt_count = e.attempt_count, last_error = $1, \
                         last_status_code = NULL, updated_at = $2 \
                     FROM expired e WHERE d.id = e.delivery_id \
                     RETURNING d.id, d.delivery_uuid, d.attempt_count), \
                 appended AS ( \
                     INSERT INTO webhook_delivery_attempts (delivery_id, attempt_number, \
                         started_at, duration_ms, error) \
                     SELECT id, attempt_count, $2, 0, $1 FROM dead) \
                 SELECT * FROM dead"
                ),
                &[&FINAL_LEASE_EXPIRED, &now],
            )?;
            Ok(rows
                .iter()
                .map(|r| Expired {
                    id: r.get(0),
                    delivery_uuid: r.get(1),
                    attempt_count: to_u32(r.get(2)),
                })
                .collect())
        })
    }

    fn get(&self, delivery_uuid: &str) -> Result<Option<DeliveryDetail>> {
        self.run(|client| {
            let rows = client.query(
                &format!(
                    "SELECT {} FROM {DELIVERIES} WHERE d.delivery_uuid = $1",
                    columns(READ_QUEUED)
                ),
                &[&delivery_uuid],
            )?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let delivery = row_to_delivery(row)?;
            let attempts = client
                .query(
                    "SELECT attempt_number, started_at, duration_ms, status_code, error, \
                     response_excerpt FROM webhook_delivery_attempts WHERE delivery_id = $1 \
                     ORDER BY id",
                    &[&delivery.id],
                )?
                .iter()
                .map(|r| {
                    let code: Option<i32> = r.try_get(3)?;
                    Ok(Attempt {
                        attempt_number: to_u32(r.try_get(0)?),
                        started_at: r.try_get(1)?,
                        duration_ms: r.try_get::<_, i64>(2)?.max(0) as u64,
                        status_code: code.and_then(|c| u16::try_from(c).ok()),
                        error: r.try_get(4)?,
                        response_excerpt: r.try_get(5)?,
                    })
                })
                .collect::<PgResult<Vec<_>>>()?;
            Ok(Some(DeliveryDetail { delivery, attempts }))
        })
    }

    fn list(&self, filter: &ListFilter) -> Result<Page> {
        let limit = page_limit(filter.limit);
        let status_clause = match filter.status {
            None => String::new(),
            // Dead letters are found by their queue rows' index, not by a walk of every row.
            Some(Status::DeadLetter) => {
                " AND d.status = 'dead_letter' AND q.scheduled_for IS NULL AND q.delivery_id > $1"
                    .to_owned()
            }
            Some(status) => format!(" AND d.status = '{}'", status.as_str()),
        };
        let sql = format!(
            "SELECT {} FROM {DELIVERIES} WHERE d.id > $1{status_clause} \
             AND ($3::bigint IS NULL OR d.organization_id = $3) ORDER BY d.id LIMIT $2",
            columns(READ_QUEUED)
        );
        let rows = self.run(|client| {
            let rows = client.query(
                &sql,
                &[
                    &filter.after.unwrap_or(0),
                    &i64::from(limit + 1),
                    &filter.organization_id,
                ],
            )?;
            rows_to_deliveries(&rows)
        })?;
        Ok(into_page(rows, limit))
    }

    fn redrive(&self, delivery_uuid: &str, now: OffsetDateTime) -> Result<Redrive> {
        self.lower_claim_floor(now);
        self.write(|tx| {
            let rows = tx.query(
                &format!(
                    "WITH redriven AS ( \
                         UPDATE webhook_deliveries d SET status = 'pending', attempt_count = 0, \
                             scheduled_for = $2, updated_at = $2 \
                         WHERE d.delivery_uuid = $1 AND d.status = 'dead_letter' \
                         RETURNING {}), \
                     queued AS ({}) \
                     SELECT * FROM redriven",
                    columns([
                        "d.scheduled_for",
                        "d.attempt_count",
                        "d.updated_at",
                        "NULL::text"
                    ]),
                    requeue("redriven", "$2")
                ),
                &[&delivery_uuid, &now],
            )?;
            if let Some(row) = rows.first() {
                return Ok(Redrive::Redriven(Box::new(row_to_delivery(row)?)));
            }
            let rows = tx.query(
                "SELECT status FROM webhook_deliveries WHERE delivery_uuid = $1",
                &[&delivery_uuid],
            )?;
            match rows.first() {
                None => Ok(Redrive::NotFound),
                Some(r) => Ok(Redrive::NotDeadLetter(
                    Status::parse(r.get(0)).map_err(PgError::Data)?,
                )),
            }
        })
    }

    fn redrive_all(&self, organization_id: Option<i64>, now: OffsetDateTime) -> Result<u64> {
        self.lower_claim_floor(now);
        // One statement, so no transaction around it. Dead letters are found by their queue
        // rows' index, not by a walk of every row.
        self.run(|client| {
            Ok(client.execute(
                &format!(
                    "WITH redriven AS ( \
                         UPDATE webhook_deliveries SET status = 'pending', attempt_count = 0, \
                             scheduled_for = $1, updated_at = $1 \
                         WHERE status = 'dead_letter' \
                           AND ($2::bigint IS NULL OR organization_id = $2) \
                           AND id IN (SELECT delivery_id FROM webhook_delivery_queue \
                                      WHERE scheduled_for IS NULL) \
                         RETURNING id, max_attempts) \
                     {}",
                    requeue("redriven", "$1")
                ),
                &[&now, &organization_id],
            )?)
        })
    }

    fn purge(&self, older_than: OffsetDateTime) -> Result<u64> {
        let mut total = 0;
        loop {
            // A dead letter's queue row goes with it (its foreign key cascades); attempts
            // have no foreign key (see migration 3), so they are deleted here.
            let n = self.run(|client| {
                // The chunk is in the text, not a parameter, so the generic plan knows how
                // few rows `gone` holds and looks their attempts up by index.
                let row = client.query_one(
                    &format!(
                        "WITH gone AS ( \
                             DELETE FROM webhook_deliveries WHERE id IN ( \
                                 SELECT id FROM webhook_deliveries \
                                 WHERE status IN ('succeeded', 'dead_letter') AND updated_at < $1 \
                                 LIMIT {PURGE_CHUNK}) \
                             RETURNING id), \
                         attempts AS ( \
                             DELETE FROM webhook_delivery_attempts a USING gone \
                             WHERE a.delivery_id = gone.id) \
                         SELECT count(*) FROM gone"
                    ),
                    &[&older_than],
                )?;
                Ok(row.get::<_, i64>(0).max(0) as u64)
            })?;
            total += n;
            if n < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    fn stats(&self, now: OffsetDateTime) -> Result<Stats> {
        self.run(|client| {
            let mut stats = Stats::default();
            for row in client.query(
                "SELECT status, count(*) FROM webhook_deliveries GROUP BY status",
                &[],
            )? {
                let n = row.get::<_, i64>(1).max(0) as u64;
                match Status::parse(row.get(0)) {
                    Ok(Status::Pending) => stats.pending = n,
                    Ok(Status::Succeeded) => stats.succeeded = n,
                    Ok(Status::DeadLetter) => stats.dead_letter = n,
                    Err(_) => {}
                }
            }
            let row = client.query_one(
                "SELECT count(*), min(scheduled_for) FROM webhook_delivery_queue \
                 WHERE scheduled_for <= $1 AND lease_token IS NULL",
                &[&now],
            )?;
            stats.due = row.get::<_, i64>(0).max(0) as u64;
            let oldest: Option<OffsetDateTime> = row.get(1);
            stats.oldest_due_ms = oldest.map(|t| (now - t).whole_milliseconds().max(0) as u64);
            Ok(stats)
        })
    }

    fn next_due_at(&self) -> Result<Option<OffsetDateTime>> {
        // A leased row is due when its lease ends, any other pending row at `scheduled_for`.
        // The first unleased row in due order bounds the answer, and a leased row further on
        // has a lease ending later still (it was claimed after it became due), so only the
        // leases before that row are read: as many as are in flight, not the whole table.
        // Both walks start at the claim floor while it is fresh, as claims do: from the
        // index's head they step over every done row's dead entry (measured: 12-25 ms each,
        // 1,000/s enqueued, ~130,000 rows done without a VACUUM, and every delivery's first
        // attempt waited that long). A fresh floor misses rows behind it that this store did
        // not make pending (a lease another process left to run out); a stale one is never
        // used, so they are seen within FLOOR_TTL: the engine claims only when this says a
        // row is due, and a row missed for good would wait for ever.
        // Freshness is judged by the system clock, as this call is given no `now`; under a
        // test's clock the floor is then stale, which is slower, never wrong.
        let floor = self.claim_floor(crate::clock::now());
        self.run(|client| {
            Ok(client
                .query_one(
                    "WITH free AS (SELECT min(scheduled_for) AS at FROM webhook_delivery_queue \
                         WHERE lease_until IS NULL \
                           AND scheduled_for >= COALESCE($1::timestamptz, '-infinity')) \
                     SELECT LEAST((SELECT at FROM free), \
                         (SELECT min(lease_until) FROM webhook_delivery_queue \
                          WHERE lease_until IS NOT NULL \
                            AND scheduled_for >= COALESCE($1::timestamptz, '-infinity') \
                            AND scheduled_for <= COALESCE((SELECT at FROM free), 'infinity')))",
                    &[&floor],
                )?
                .get(0))
        })
    }

    fn put_credential(&self, c: &StoredCredential) -> Result<bool> {
        let outcome = self.write(|tx| {
            // The WHERE keeps another organization's credential untouched: no row comes back.
            let rows = tx.query(
                "INSERT INTO webhook_credentials (credential_uuid, organization_id, \
                 credential_type, sealed_data, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (credential_uuid) DO UPDATE SET \
                 credential_type = excluded.credential_type, sealed_data = excluded.sealed_data, \
                 updated_at = excluded.updated_at \
                 WHERE webhook_credentials.organization_id = excluded.organization_id \
                 RETURNING (xmax = 0)",
                &[
                    &c.credential_uuid,
                    &c.organization_id,
                    &c.credential_type,
                    &c.sealed_data,
                    &c.created_at,
                    &c.updated_at,
                ],
            )?;
            Ok(rows.first().map(|r| r.get::<_, bool>(0)))
        })?;
        outcome.ok_or_else(|| {
            Error::Conflict(format!(
                "credential {} belongs to another organization",
                c.credential_uuid
            ))
        })
    }

    fn get_credential(
        &self,
        credential_uuid: &str,
        organization_id: i64,
    ) -> Result<Option<StoredCredential>> {
        self.run(|client| {
            let rows = client.query(
                "SELECT credential_uuid, organization_id, credential_type, sealed_data, \
                 created_at, updated_at FROM webhook_credentials \
                 WHERE credential_uuid = $1 AND organization_id = $2",
                &[&credential_uuid, &organization_id],
            )?;
            rows.first()
                .map(|r| {
                    Ok(StoredCredential {
                        credential_uuid: r.try_get(0)?,
                        organization_id: r.try_get(1)?,
                        credential_type: r.try_get(2)?,
                        sealed_data: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        updated_at: r.try_get(5)?,
                    })
                })
                .transpose()
        })
    }

    fn delete_credential(&self, credential_uuid: &str, organization_id: i64) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM webhook_credentials WHERE credential_uuid = $1 AND organization_id = $2",
                &[&credential_uuid, &organization_id],
            )? == 1)
        })
    }
}
