-- outbox schema for PostgreSQL: migration 1 ("init"), up. The down is INIT_DOWN in src/store/mod.rs.
-- Same tables and meaning as schema.sql (SQLite).

CREATE TABLE webhook_deliveries (
    id               BIGSERIAL   PRIMARY KEY,
    delivery_uuid    TEXT        NOT NULL,
    workflow_run_id  BIGINT      NOT NULL,
    organization_id  BIGINT      NOT NULL,
    webhook_node_id  TEXT        NOT NULL,
    webhook_name     TEXT,
    endpoint_url     TEXT        NOT NULL,
    http_method      TEXT        NOT NULL DEFAULT 'POST'
                     CHECK (http_method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),
    payload          JSON        NOT NULL,                 -- JSON, not JSONB: kept byte for byte
    custom_headers   JSON,
    credential_uuid  TEXT,
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'dead_letter')),
    attempt_count    INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER     NOT NULL DEFAULT 5,
    scheduled_for    TIMESTAMPTZ,
    lease_token      TEXT,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_webhook_deliveries_run_node UNIQUE (workflow_run_id, webhook_node_id)
);

CREATE UNIQUE INDEX ix_webhook_deliveries_delivery_uuid ON webhook_deliveries (delivery_uuid);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (scheduled_for, id)
    WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_final_lease ON webhook_deliveries (scheduled_for)
    WHERE status = 'pending' AND attempt_count >= max_attempts;
CREATE INDEX idx_webhook_deliveries_org ON webhook_deliveries (organization_id, id);
CREATE INDEX idx_webhook_deliveries_dead ON webhook_deliveries (id) WHERE status = 'dead_letter';

CREATE TABLE webhook_delivery_attempts (
    id               BIGSERIAL   PRIMARY KEY,
    delivery_id      BIGINT      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt_number   INTEGER     NOT NULL,
    started_at       TIMESTAMPTZ NOT NULL,
    duration_ms      BIGINT      NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    response_excerpt TEXT
);
CREATE INDEX idx_webhook_delivery_attempts_delivery ON webhook_delivery_attempts (delivery_id);

CREATE TABLE workflow_run_organizations (
    workflow_run_id BIGINT      PRIMARY KEY,
    organization_id BIGINT      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE webhook_credentials (
    credential_uuid TEXT        PRIMARY KEY,
    organization_id BIGINT      NOT NULL,
    credential_type TEXT        NOT NULL,
    sealed_data     BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
