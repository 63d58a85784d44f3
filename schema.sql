-- outbox schema for SQLite: migration 1 ("init"), up. The down is INIT_DOWN in src/store/mod.rs.
-- Times are INTEGER microseconds since the Unix epoch (UTC).
-- The CHECKs compare with OR, not IN: SQLite evaluates a constant IN list of three or more
-- values by building a temporary b-tree each time a statement runs, and every enqueue and
-- outcome runs them (measured with callgrind: 32 % of the store's instructions).

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so list cursors stay valid after a purge
    delivery_uuid    TEXT    NOT NULL,
    workflow_run_id  INTEGER NOT NULL,
    organization_id  INTEGER NOT NULL,
    webhook_node_id  TEXT    NOT NULL,
    webhook_name     TEXT,
    endpoint_url     TEXT    NOT NULL,
    http_method      TEXT    NOT NULL DEFAULT 'POST'
                     CHECK (http_method = 'GET' OR http_method = 'POST' OR http_method = 'PUT'
                            OR http_method = 'PATCH' OR http_method = 'DELETE'),
    payload          TEXT    NOT NULL,                     -- frozen JSON, byte for byte
    custom_headers   TEXT,                                 -- JSON [{"key","value"}] or NULL
    credential_uuid  TEXT,
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status = 'pending' OR status = 'succeeded' OR status = 'dead_letter'),
    attempt_count    INTEGER NOT NULL DEFAULT 0,           -- attempts started (the claim counts it)
    max_attempts     INTEGER NOT NULL DEFAULT 5,
    scheduled_for    INTEGER,                              -- next due time or lease end; NULL once terminal
    lease_token      TEXT,                                 -- set by a claim, fences its outcome write
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CONSTRAINT uq_webhook_deliveries_run_node UNIQUE (workflow_run_id, webhook_node_id)
);

CREATE UNIQUE INDEX ix_webhook_deliveries_delivery_uuid ON webhook_deliveries (delivery_uuid);
-- Serves the claim: WHERE status = 'pending' AND scheduled_for <= now ORDER BY scheduled_for, id.
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (scheduled_for, id)
    WHERE status = 'pending';
-- Rows whose lease ran out on their final attempt (normally none).
CREATE INDEX idx_webhook_deliveries_final_lease ON webhook_deliveries (scheduled_for)
    WHERE status = 'pending' AND attempt_count >= max_attempts;
CREATE INDEX idx_webhook_deliveries_org ON webhook_deliveries (organization_id, id);
CREATE INDEX idx_webhook_deliveries_dead ON webhook_deliveries (id) WHERE status = 'dead_letter';

CREATE TABLE webhook_delivery_attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      INTEGER NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt_number   INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    response_excerpt TEXT
);
CREATE INDEX idx_webhook_delivery_attempts_delivery ON webhook_delivery_attempts (delivery_id);

-- A workflow run belongs to one organization; the first delivery for a run binds it.
CREATE TABLE workflow_run_organizations (
    workflow_run_id INTEGER PRIMARY KEY,
    organization_id INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);

-- Credentials resolved at send time. sealed_data is the credential_data JSON encrypted
-- (XChaCha20-Poly1305) under the master key; no secret is stored in plain text.
CREATE TABLE webhook_credentials (
    credential_uuid TEXT    PRIMARY KEY,
    organization_id INTEGER NOT NULL,
    credential_type TEXT    NOT NULL,
    sealed_data     BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
