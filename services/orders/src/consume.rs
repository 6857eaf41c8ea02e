//! The end of the saga: a payment's outcome moves its order from `pending` to `paid` or
//! `failed`.
//!
//! Each message is applied at most once: its id goes into `processed_messages` in the same
//! transaction as the status change, so a redelivery (after a crash, a lost ack or a slow
//! consumer) changes nothing. The update only moves orders that are still `pending`, so an order
//! never flips between outcomes.

use stratus_broker::Message;
use stratus_kit::consumer::HandlerError;
use stratus_kit::db::Db;
use stratus_kit::outbox;

use crate::events::{PaymentOutcome, PAYMENT_COMPLETED};
use crate::order;

pub async fn apply(pool: &Db, topic: &str, message: &Message) -> Result<(), HandlerError> {
    let outcome: PaymentOutcome = message
        .decode()
        .map_err(|e| HandlerError::Poison(e.to_string()))?;
    let status = if topic == PAYMENT_COMPLETED {
        order::PAID
    } else {
        order::FAILED
    };
    let mut tx = pool.begin().await?;
    if !outbox::mark_processed(&mut tx, &message.id, topic).await? {
        tracing::debug!(id = %message.id, "already processed");
        return Ok(());
    }
    let changed =
        sqlx::query("UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4")
            .bind(status)
            .bind(stratus_kit::now_rfc3339())
            .bind(&outcome.order_id)
            .bind(order::PENDING)
            .execute(&mut *tx)
            .await?;
    tx.commit().await?;
    if changed.rows_affected() > 0 {
        tracing::info!(order = %outcome.order_id, status, "order settled");
    } else {
        tracing::warn!(order = %outcome.order_id, status, "no pending order for this payment");
    }
    Ok(())
}
