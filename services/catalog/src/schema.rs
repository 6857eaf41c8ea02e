use stratus_kit::db::Migration;

const V1: &str = "
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock BIGINT NOT NULL CHECK (stock >= 0),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
";

/// Views, counted write-back (`api.rs`): incremented in batches, never per request.
const V2: &str = "ALTER TABLE products ADD COLUMN views BIGINT NOT NULL DEFAULT 0";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "products",
        sqlite: V1,
        postgres: V1,
    },
    Migration {
        version: 2,
        description: "product views",
        sqlite: V2,
        postgres: V2,
    },
];
