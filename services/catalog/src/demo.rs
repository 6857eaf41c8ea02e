//! Demo products, so a system started with `stratus up` has a shop to browse and order from.
//!
//! Seeded only into an empty catalog, and only when `CATALOG_DEMO_DATA` says so (`stratus up`'s
//! stratus.toml does). Several instances start together: each product has a fixed id and is
//! inserted with `ON CONFLICT DO NOTHING`, so racing instances seed each product once.

use stratus_kit::db::Db;

/// (id, name, description, price in cents, stock). Fixed ids (UUIDv7 layout, 2026-01-01).
const PRODUCTS: &[(&str, &str, &str, i64, i64)] = &[
    (
        "019b7610-0000-7000-8000-000000000001",
        "Stratus mug",
        "350 ml stoneware, dishwasher safe.",
        1_290,
        120,
    ),
    (
        "019b7610-0000-7000-8000-000000000002",
        "Cumulus hoodie",
        "Organic cotton, relaxed fit.",
        4_900,
        40,
    ),
    (
        "019b7610-0000-7000-8000-000000000003",
        "Nimbus notebook",
        "A5, dotted, 160 pages.",
        890,
        300,
    ),
    (
        "019b7610-0000-7000-8000-000000000004",
        "Cirrus sticker pack",
        "Twelve vinyl stickers.",
        450,
        1_000,
    ),
    (
        "019b7610-0000-7000-8000-000000000005",
        "Altostratus poster",
        "A2 print of the request flow.",
        1_990,
        60,
    ),
    (
        "019b7610-0000-7000-8000-000000000006",
        "Cloud-native handbook",
        "The seeds, bound.",
        2_990,
        25,
    ),
];

/// Seeds the demo products if the catalog has none; returns how many this call inserted.
pub async fn seed_if_empty(pool: &Db) -> anyhow::Result<u64> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM products")
        .fetch_one(pool)
        .await?;
    if count > 0 {
        return Ok(0);
    }
    let now = stratus_kit::now_rfc3339();
    let mut inserted = 0;
    for (id, name, description, price_cents, stock) in PRODUCTS {
        let result = sqlx::query(
            "INSERT INTO products (id, name, description, price_cents, stock, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(*id)
        .bind(*name)
        .bind(*description)
        .bind(*price_cents)
        .bind(*stock)
        .bind(&now)
        .execute(pool)
        .await?;
        inserted += result.rows_affected();
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::PRODUCTS;

    #[test]
    fn demo_products_are_valid_products() {
        for (id, name, description, price_cents, stock) in PRODUCTS {
            let input = crate::product::ProductInput {
                name: name.to_string(),
                description: description.to_string(),
                price_cents: *price_cents,
                stock: *stock,
            };
            assert!(input.validate().is_ok(), "{id}");
            assert!(uuid_like(id), "{id}");
        }
    }

    fn uuid_like(id: &str) -> bool {
        id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
    }
}
