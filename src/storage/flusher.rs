//! The process-wide sled flusher.
//!
//! sled 0.34's `flush_async` deadlocks when called concurrently, and its
//! `flush` blocks; so exactly one task calls `flush` on a blocking thread at
//! a fixed interval, for every tree of the process's single `Db`.

use std::time::Duration;

use tokio::sync::watch;

/// Runs until `shutdown` flips to true, then flushes one last time.
/// `failed` hears why a flush failed, or None once one succeeds again.
pub async fn run(
    db: sled::Db,
    interval_ms: u64,
    mut shutdown: watch::Receiver<bool>,
    failed: impl Fn(Option<String>) + Send + 'static,
) {
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
        failed(flush(&db).await.err());
    }
    failed(flush(&db).await.err());
}

/// Writes the state machine out; why it failed, logged too.
pub async fn flush(db: &sled::Db) -> Result<(), String> {
    let db = db.clone();
    let why = match crate::storage::blocking::run(move || db.flush()).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(error)) => format!("state machine flush failed: {error}"),
        Err(error) => format!("state machine flush task failed: {error}"),
    };
    tracing::error!("{why}");
    Err(why)
}
