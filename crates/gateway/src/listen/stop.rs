//! The stop signal every listener task watches: the gateway is shutting down.

use tokio::sync::watch;

/// Resolves once the gateway is stopping (never, if the signal's sender is gone).
pub async fn stop_signal(stopped: &mut watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
