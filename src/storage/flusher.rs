//! The process-wide sled flusher.
//!
//! sled 0.34's `flush_async` deadlocks when called concurrently, and its
//! `flush` blocks; so exactly one task calls `flush` on a blocking thread at
//! a fixed interval, for every tree of the process's single `Db`.

use std::time::Duration;

use tokio::sync::watch;

/// Runs until `shutdown` flips to true, then flushes one last time.
pub async fn run(db: sled::Db, interval_ms: u64, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        flush(&db).await;
    }
    flush(&db).await;
}

pub async fn flush(db: &sled::Db) {
    let db = db.clone();
    match crate::storage::blocking::run(move || db.flush()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "state machine flush failed"),
        Err(error) => tracing::error!(%error, "state machine flush task failed"),
    }
}
