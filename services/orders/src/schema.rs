use stratus_kit::db::Migration;
use stratus_kit::outbox::OUTBOX_SCHEMA;

/// `(user_id, idempotency_key)` is unique: two requests with the same key from the same user,
/// even at the same moment, make one order. `response` is the first answer, replayed verbatim.
const V1: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    status TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    items TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id)
";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "orders",
        sqlite: V1,
        postgres: V1,
    },
    Migration {
        version: 2,
        description: "outbox and processed messages",
        sqlite: OUTBOX_SCHEMA,
        postgres: OUTBOX_SCHEMA,
    },
];
