use stratus_kit::db::Migration;

/// One row per account, keyed by the token's `sub`; the account itself lives in auth.
const V1: &str = "
CREATE TABLE IF NOT EXISTS profiles (
    sub TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    address TEXT,
    phone TEXT,
    updated_at TEXT NOT NULL
)
";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "profiles",
    sqlite: V1,
    postgres: V1,
}];
