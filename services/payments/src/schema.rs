use stratus_kit::db::Migration;
use stratus_kit::outbox::OUTBOX_SCHEMA;

/// One payment per order, ever: `order_id` is unique, so a second `order.placed` for the same
/// order (a redelivery, or a duplicate publish) cannot charge twice.
const V1: &str = "
CREATE TABLE IF NOT EXISTS payments (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_by_user ON payments (user_id, id)
";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "payments",
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
