//! Telling customers how their order went: one notification per payment outcome.
//!
//! notifications consumes `payment.completed` and `payment.failed` as its own group, so it gets
//! every payment event beside orders (pub-sub across groups). The message id (processed table)
//! and the order id (unique) keep it to one notification per order, however often a message
//! comes.

use serde::Deserialize;
use stratus_broker::Message;
use stratus_kit::consumer::HandlerError;
use stratus_kit::db::Db;
use stratus_kit::outbox;

pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_FAILED: &str = "payment.failed";

#[derive(Debug, Deserialize)]
struct PaymentOutcome {
    order_id: String,
    user_id: String,
    amount_cents: i64,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn notify(pool: &Db, topic: &str, message: &Message) -> Result<(), HandlerError> {
    let payment: PaymentOutcome = message
        .decode()
        .map_err(|e| HandlerError::Poison(e.to_string()))?;
    if payment.order_id.is_empty() || payment.user_id.is_empty() {
        return Err(HandlerError::Poison(
            "order_id and user_id must not be empty".into(),
        ));
    }
    let amount = format!(
        "{}.{:02}",
        payment.amount_cents / 100,
        payment.amount_cents % 100
    );
    let (kind, text) = if topic == PAYMENT_COMPLETED {
        (
            "order.paid",
            format!(
                "Your order {} is paid ({amount}). Thank you!",
                payment.order_id
            ),
        )
    } else {
        (
            "order.failed",
            format!(
                "Your payment for order {} did not go through: {}.",
                payment.order_id,
                payment.reason.as_deref().unwrap_or("declined")
            ),
        )
    };
    let mut tx = pool.begin().await?;
    if !outbox::mark_processed(&mut tx, &message.id, topic).await? {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO notifications (id, order_id, user_id, kind, message, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(stratus_kit::new_id())
    .bind(&payment.order_id)
    .bind(&payment.user_id)
    .bind(kind)
    .bind(&text)
    .bind(stratus_kit::now_rfc3339())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(order = %payment.order_id, kind, "notified");
    Ok(())
}
