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

const V5: &str = "
ALTER TABLE signing_keys ADD COLUMN retire_at BIGINT;
ALTER TABLE signing_keys ADD COLUMN created_unix BIGINT NOT NULL DEFAULT 0
";

const V6: &str = "
CREATE TABLE IF NOT EXISTS mfa_totp (
    user_id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0,
    last_step BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    code_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS mfa_recovery_codes_user ON mfa_recovery_codes (user_id)
";

const V7: &str = "
ALTER TABLE clients ADD COLUMN kind TEXT NOT NULL DEFAULT 'service';
ALTER TABLE clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '';
ALTER TABLE refresh_tokens ADD COLUMN client_id TEXT;
CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    family_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
)
";

/// Roles name bundles of permissions. Two useful ones ship: `support` reads every order and
/// payment (kit::policy's `<resource>:read:any`), `catalog-editor` edits the catalog.
const V8: &str = "
CREATE TABLE IF NOT EXISTS roles (
    name TEXT PRIMARY KEY,
    permissions TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO roles (name, permissions, updated_at) VALUES
    ('support', 'orders:read:any,payments:read:any', '2026-01-01T00:00:00Z'),
    ('catalog-editor', 'catalog:write', '2026-01-01T00:00:00Z')
ON CONFLICT (name) DO NOTHING
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
    Migration {
        version: 5,
        description: "signing key rotation",
        sqlite: V5,
        postgres: V5,
    },
    Migration {
        version: 6,
        description: "TOTP second factor and recovery codes",
        sqlite: V6,
        postgres: V6,
    },
    Migration {
        version: 7,
        description: "third-party apps: authorization codes with PKCE",
        sqlite: V7,
        postgres: V7,
    },
    Migration {
        version: 8,
        description: "roles and the permissions they grant",
        sqlite: V8,
        postgres: V8,
    },
];
