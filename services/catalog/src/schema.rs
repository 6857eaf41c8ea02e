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

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "products",
    sqlite: V1,
    postgres: V1,
}];
