//! The schema, its version and the columns read back.

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    target           TEXT NOT NULL,
    rule             TEXT NOT NULL,
    session_id       TEXT NOT NULL,
    pbx              TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    method           TEXT NOT NULL,
    url              TEXT NOT NULL,
    headers          TEXT NOT NULL,
    body             BLOB,
    idempotency_key  TEXT,
    created_at       REAL NOT NULL,
    expires_at       REAL,
    enqueued_at      REAL NOT NULL,
    status           TEXT NOT NULL,
    head             INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_status      TEXT,
    last_error       TEXT,
    updated_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_ready
    ON deliveries (target, next_attempt_at) WHERE status = 'pending' AND head = 1;
CREATE INDEX IF NOT EXISTS deliveries_chain
    ON deliveries (target, session_id, id) WHERE status IN ('pending', 'inflight');
CREATE INDEX IF NOT EXISTS deliveries_event
    ON deliveries (target, event_id) WHERE status IN ('pending', 'inflight');
CREATE INDEX IF NOT EXISTS deliveries_expiry
    ON deliveries (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status);
CREATE TABLE IF NOT EXISTS dedupe (
    target   TEXT NOT NULL,
    key      TEXT NOT NULL,
    seen_at  REAL NOT NULL,
    PRIMARY KEY (target, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_seen ON dedupe (seen_at);
"#;

pub(super) const COLS: &str =
    "id, target, rule, session_id, pbx, event_id, method, url, headers, body, \
     idempotency_key, created_at, expires_at, enqueued_at, status, attempts, next_attempt_at, \
     last_status, last_error, updated_at";

pub(super) const WAITING: &str = "status IN ('pending', 'inflight')";
