//! Charging: each `order.placed` (group `payments`, a work queue: one instance takes each
//! message) is charged exactly once, and its outcome published as `payment.completed` or
//! `payment.failed`.
//!
//! Exactly once rests on two keys, both written in one transaction with the payment and its
//! outbox row: the message id in `processed_messages` (a redelivery of this message), and the
//! unique `order_id` of `payments` (another message about the same order). A crash anywhere
//! before the commit leaves nothing behind, and the message comes back to be charged then.

use stratus_broker::Message;
use stratus_kit::consumer::HandlerError;
use stratus_kit::db::Db;
use stratus_kit::outbox::{self, Relay};
use stratus_kit::trace::TraceContext;

use crate::card::{self, OrderPlaced, Outcome};

pub const ORDER_PLACED: &str = "order.placed";
pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_FAILED: &str = "payment.failed";

pub async fn charge(
    pool: &Db,
    relay: &Relay,
    message: &Message,
    hop: TraceContext,
) -> Result<(), HandlerError> {
    let order: OrderPlaced = message
        .decode()
        .map_err(|e| HandlerError::Poison(e.to_string()))?;
    order.validate().map_err(HandlerError::Poison)?;
    let (outcome, reason) = card::charge(&order);
    let payment_id = stratus_kit::new_id();

    let mut tx = pool.begin().await?;
    if !outbox::mark_processed(&mut tx, &message.id, ORDER_PLACED).await? {
        tracing::debug!(id = %message.id, "already processed");
        return Ok(());
    }
    let inserted = sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, amount_cents, status, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&payment_id)
    .bind(&order.order_id)
    .bind(&order.user_id)
    .bind(order.total_cents)
    .bind(outcome.as_str())
    .bind(reason.as_deref())
    .bind(stratus_kit::now_rfc3339())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.commit().await?;
        tracing::info!(order = %order.order_id, "already charged; not charging again");
        return Ok(());
    }
    let topic = match outcome {
        Outcome::Completed => PAYMENT_COMPLETED,
        Outcome::Failed => PAYMENT_FAILED,
    };
    let event = serde_json::json!({
        "payment_id": payment_id,
        "order_id": order.order_id,
        "user_id": order.user_id,
        "amount_cents": order.total_cents,
        "status": outcome,
        "reason": reason,
    });
    outbox::enqueue(&mut tx, topic, &event, Some(&hop.header_value())).await?;
    tx.commit().await?;
    relay.wake();
    tracing::info!(order = %order.order_id, payment = %payment_id, status = outcome.as_str(), "charged");
    Ok(())
}
