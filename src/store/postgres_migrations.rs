//! PostgreSQL's schema migrations, in order. Migration 1 is `schema.postgres.sql`; each later
//! one says here why it exists. Every migration keeps the rows it finds, leases included, and
//! rolls back without losing any.

use super::{INIT_DOWN, Migration};

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        up: include_str!("../../schema.postgres.sql"),
        down: INIT_DOWN,
    },
    Migration {
        version: 2,
        name: "hot_claims",
        up: HOT_CLAIMS_UP,
        down: HOT_CLAIMS_DOWN,
    },
    Migration {
        version: 3,
        name: "queue_table",
        up: QUEUE_TABLE_UP,
        down: QUEUE_TABLE_DOWN,
    },
    Migration {
        version: 4,
        name: "attempts_key",
        up: ATTEMPTS_KEY_UP,
        down: ATTEMPTS_KEY_DOWN,
    },
];

/// Claims that PostgreSQL can apply in place. A claim used to move `scheduled_for` to the
/// lease's end: a change to an indexed column, so every claim wrote a new 1 KiB row version
/// and an entry in each of the table's five indexes. Now the lease's end goes in
/// `lease_until`, which no index uses, and pages keep half their space free for the new
/// version, so the update is HOT (heap-only: no index entries). Only the claim of a final
/// attempt still moves `scheduled_for` and sets `final_lease`, so that expired final leases
/// stay found by an index (one on `attempt_count`, as before, would make every claim
/// non-HOT). Rows leased when this runs keep their lease, and a pending row out of attempts
/// is still dead-lettered once its `scheduled_for` passes, as before.
const HOT_CLAIMS_UP: &str = "
    ALTER TABLE webhook_deliveries ADD COLUMN lease_until TIMESTAMPTZ,
        ADD COLUMN final_lease BOOLEAN NOT NULL DEFAULT false;
    UPDATE webhook_deliveries
        SET lease_until = CASE WHEN lease_token IS NOT NULL THEN scheduled_for END,
            final_lease = attempt_count >= max_attempts
        WHERE status = 'pending' AND (lease_token IS NOT NULL OR attempt_count >= max_attempts);
    DROP INDEX idx_webhook_deliveries_final_lease;
    CREATE INDEX idx_webhook_deliveries_final_lease ON webhook_deliveries (scheduled_for)
        WHERE status = 'pending' AND final_lease;
    ALTER TABLE webhook_deliveries SET (fillfactor = 50);";

/// Back to leases kept in `scheduled_for` (which a final claim already moved).
const HOT_CLAIMS_DOWN: &str = "
    ALTER TABLE webhook_deliveries RESET (fillfactor);
    DROP INDEX idx_webhook_deliveries_final_lease;
    UPDATE webhook_deliveries SET scheduled_for = lease_until WHERE lease_until IS NOT NULL;
    ALTER TABLE webhook_deliveries DROP COLUMN lease_until, DROP COLUMN final_lease;
    CREATE INDEX idx_webhook_deliveries_final_lease ON webhook_deliveries (scheduled_for)
        WHERE status = 'pending' AND attempt_count >= max_attempts;";

/// A narrow queue table beside the wide one. After migration 2 the outcome was still a
/// non-HOT update: it takes the row off the due index, so PostgreSQL wrote a new 1.2 KiB
/// version and an entry in each of four indexes (three of them unique, each checked), and the
/// claim rewrote the whole 1.2 KiB row in place. Now every delivery not yet succeeded has a
/// row of `webhook_delivery_queue` (~100 bytes): its due time, attempts and lease, and the due,
/// final-lease and dead-letter indexes. A claim updates only that row (in place), an outcome
/// deletes it (success) or updates it, and the wide row changes once, in place, when the
/// delivery is done: no index of the wide table names a column that changes after enqueue.
///
/// Attempts lose their foreign key: checking it took a quarter to a third of an outcome
/// batch's time in PostgreSQL (`EXPLAIN ANALYZE`: 1.7-4.9 ms of 6.7-13.5 ms for 256
/// outcomes), for rows that only this store writes, each right after the update of the row
/// it names. Purge deletes a delivery's attempts with it.
///
/// The queue row of a dead letter has no due time (`scheduled_for` NULL), which is what its
/// partial index finds. A trigger adds the queue row of every delivery inserted, so a row an
/// application inserts with SQL in its own transaction is delivered as before. While a row is
/// queued, its queue row holds its `attempt_count`, due time and `updated_at`; the wide row's
/// are written when the wide row is (retry, dead letter, success, redrive).
const QUEUE_TABLE_UP: &str = "
    CREATE TABLE webhook_delivery_queue (
        delivery_id   BIGINT      PRIMARY KEY REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
        scheduled_for TIMESTAMPTZ,
        attempt_count INTEGER     NOT NULL,
        max_attempts  INTEGER     NOT NULL,
        lease_token   TEXT,
        lease_until   TIMESTAMPTZ,
        final_lease   BOOLEAN     NOT NULL DEFAULT false,
        updated_at    TIMESTAMPTZ NOT NULL
    ) WITH (fillfactor = 50);
    INSERT INTO webhook_delivery_queue
        SELECT id, CASE WHEN status = 'pending' THEN COALESCE(scheduled_for, created_at) END,
               attempt_count, max_attempts, lease_token, lease_until, final_lease, updated_at
        FROM webhook_deliveries WHERE status <> 'succeeded';
    CREATE INDEX idx_webhook_delivery_queue_due
        ON webhook_delivery_queue (scheduled_for, delivery_id);
    CREATE INDEX idx_webhook_delivery_queue_final_lease
        ON webhook_delivery_queue (scheduled_for) WHERE final_lease;
    CREATE INDEX idx_webhook_delivery_queue_dead
        ON webhook_delivery_queue (delivery_id) WHERE scheduled_for IS NULL;
    DROP INDEX idx_webhook_deliveries_due;
    DROP INDEX idx_webhook_deliveries_final_lease;
    DROP INDEX idx_webhook_deliveries_dead;
    ALTER TABLE webhook_deliveries DROP COLUMN lease_token, DROP COLUMN lease_until,
        DROP COLUMN final_lease;
    ALTER TABLE webhook_delivery_attempts
        DROP CONSTRAINT webhook_delivery_attempts_delivery_id_fkey;
    CREATE FUNCTION outbox_queue_delivery() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO webhook_delivery_queue
            (delivery_id, scheduled_for, attempt_count, max_attempts, updated_at)
        VALUES (NEW.id,
                CASE WHEN NEW.status = 'pending' THEN COALESCE(NEW.scheduled_for, NEW.created_at) END,
                NEW.attempt_count, NEW.max_attempts, NEW.updated_at);
        RETURN NULL;
    END $$;
    CREATE TRIGGER webhook_deliveries_queue AFTER INSERT ON webhook_deliveries
        FOR EACH ROW WHEN (NEW.status <> 'succeeded') EXECUTE FUNCTION outbox_queue_delivery();";

/// Back to one table: each queued row's due time, attempts and lease return to it.
const QUEUE_TABLE_DOWN: &str = "
    DROP TRIGGER webhook_deliveries_queue ON webhook_deliveries;
    DROP FUNCTION outbox_queue_delivery();
    DELETE FROM webhook_delivery_attempts a
        WHERE NOT EXISTS (SELECT FROM webhook_deliveries d WHERE d.id = a.delivery_id);
    ALTER TABLE webhook_delivery_attempts ADD CONSTRAINT webhook_delivery_attempts_delivery_id_fkey
        FOREIGN KEY (delivery_id) REFERENCES webhook_deliveries (id) ON DELETE CASCADE;
    ALTER TABLE webhook_deliveries ADD COLUMN lease_token TEXT,
        ADD COLUMN lease_until TIMESTAMPTZ, ADD COLUMN final_lease BOOLEAN NOT NULL DEFAULT false;
    UPDATE webhook_deliveries d
        SET scheduled_for = q.scheduled_for, attempt_count = q.attempt_count,
            lease_token = q.lease_token, lease_until = q.lease_until,
            final_lease = q.final_lease, updated_at = q.updated_at
        FROM webhook_delivery_queue q WHERE q.delivery_id = d.id AND d.status = 'pending';
    DROP TABLE webhook_delivery_queue;
    CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (scheduled_for, id)
        WHERE status = 'pending';
    CREATE INDEX idx_webhook_deliveries_final_lease ON webhook_deliveries (scheduled_for)
        WHERE status = 'pending' AND final_lease;
    CREATE INDEX idx_webhook_deliveries_dead ON webhook_deliveries (id)
        WHERE status = 'dead_letter';";

/// One index on attempts instead of two. Each attempt appended wrote an entry in the primary
/// key on `id` and one in the index on `delivery_id`; the one key `(delivery_id, id)` serves
/// everything either did: a delivery's attempts in order (`get`), their purge by delivery,
/// and a unique key. Measured with `pgbench`, 128-row inserts as the recorder appends them:
/// 0.4-0.6 ms less a statement (3-5 us a row). `id` keeps its sequence: it is the order the
/// attempts were recorded in, which neither attempt numbers (a redrive starts them again at
/// 1) nor start times (clocks of several instances) give.
const ATTEMPTS_KEY_UP: &str = "
    ALTER TABLE webhook_delivery_attempts DROP CONSTRAINT webhook_delivery_attempts_pkey,
        ADD CONSTRAINT webhook_delivery_attempts_pkey PRIMARY KEY (delivery_id, id);
    DROP INDEX idx_webhook_delivery_attempts_delivery;";

/// Back to the key on `id` and the index on `delivery_id`.
const ATTEMPTS_KEY_DOWN: &str = "
    CREATE INDEX idx_webhook_delivery_attempts_delivery ON webhook_delivery_attempts (delivery_id);
    ALTER TABLE webhook_delivery_attempts DROP CONSTRAINT webhook_delivery_attempts_pkey,
        ADD CONSTRAINT webhook_delivery_attempts_pkey PRIMARY KEY (id);";
