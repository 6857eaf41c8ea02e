use stratus_kit::db::Migration;

const V1: &str = "
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    pkcs8 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    family_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id)
";

const V2: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    roles TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at TEXT NOT NULL
)
";

const V3: &str = "
CREATE TABLE IF NOT EXISTS login_attempts (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    first_failure BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
)
";

const V4: &str = "
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
)
";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, keys, refresh tokens",
        sqlite: V1,
        postgres: V1,
    },
    Migration {
        version: 2,
        description: "service accounts",
        sqlite: V2,
        postgres: V2,
    },
    Migration {
        version: 3,
        description: "login throttling",
        sqlite: V3,
        postgres: V3,
    },
    Migration {
        version: 4,
        description: "revoked access tokens",
        sqlite: V4,
        postgres: V4,
    },
];
