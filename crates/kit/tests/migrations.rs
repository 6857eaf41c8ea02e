//! Several instances of one service start together on one SQLite file (as `stratus up` starts
//! two catalogs): each migration must run once, every instance must start, and the file ends in
//! WAL mode (SQLite answers the race to enter WAL with an immediate "database is locked", which
//! `kit::db::open` waits out).

use stratus_kit::db::{open, Migration};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "items",
        sqlite: "CREATE TABLE items (id TEXT PRIMARY KEY)",
        postgres: "CREATE TABLE items (id TEXT PRIMARY KEY)",
    },
    // Not repeatable: a second run fails with "duplicate column".
    Migration {
        version: 2,
        description: "item views",
        sqlite: "ALTER TABLE items ADD COLUMN views BIGINT NOT NULL DEFAULT 0",
        postgres: "ALTER TABLE items ADD COLUMN views BIGINT NOT NULL DEFAULT 0",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_migrate_once() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("shared.db").display()
        );
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { open(&url, MIGRATIONS).await.map(|_| ()) })
            })
            .collect();
        for start in starts {
            let outcome = start.await.unwrap();
            assert!(outcome.is_ok(), "round {round}: {:#}", outcome.unwrap_err());
        }
        let (pool, _) = open(&url, MIGRATIONS).await.unwrap();
        let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(applied, 2);
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
