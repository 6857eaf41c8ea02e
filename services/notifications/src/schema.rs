use stratus_kit::db::Migration;
use stratus_kit::outbox::OUTBOX_SCHEMA;

/// One notification per order outcome: `order_id` is unique.
const V1: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, id)
";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "notifications",
        sqlite: V1,
        postgres: V1,
    },
    Migration {
        version: 2,
        description: "processed messages (and an outbox, unused so far)",
        sqlite: OUTBOX_SCHEMA,
        postgres: OUTBOX_SCHEMA,
    },
];
