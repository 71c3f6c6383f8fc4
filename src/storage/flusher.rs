//! The process-wide sled flusher.
//!
//! sled 0.34's `flush_async` deadlocks when called concurrently, and its
//! `flush` blocks; so exactly one task calls `flush` on a blocking thread at
//! a fixed interval, for every tree of the process's single `Db`. After
//! each flush that succeeds it records, in the state marker
//! ([`crate::storage::marker::write_applied`]), the applied index of every
//! group as it was before the flush began: what the flush covered.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::storage::marker::Applied;

/// Where the flusher records what each flush covered.
pub struct StateMarker {
    pub root: PathBuf,
    /// What the marker file holds now; a group that is not running keeps
    /// its entry.
    pub recorded: Applied,
}

/// Runs until `shutdown` flips to true, then flushes one last time.
/// `applied` tells the applied index of each running group. `failed` hears
/// why a flush failed, or None once one succeeds again.
pub async fn run(
    db: sled::Db,
    interval_ms: u64,
    mut shutdown: watch::Receiver<bool>,
    marker: StateMarker,
    applied: impl Fn() -> Applied + Send + 'static,
    failed: impl Fn(Option<String>) + Send + 'static,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let StateMarker { root: marker_root, mut recorded } = marker;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        failed(flush_and_mark(&db, &marker_root, &applied, &mut recorded).await.err());
    }
    failed(flush_and_mark(&db, &marker_root, &applied, &mut recorded).await.err());
}

/// Flushes, then records what the flush covered when it moved.
async fn flush_and_mark(
    db: &sled::Db,
    marker_root: &std::path::Path,
    applied: &impl Fn() -> Applied,
    recorded: &mut Applied,
) -> Result<(), String> {
    let mut covered = recorded.clone();
    covered.extend(applied());
    flush(db).await?;
    if covered == *recorded {
        return Ok(());
    }
    let root = marker_root.to_path_buf();
    let marks = covered.clone();
    match crate::storage::blocking::run(move || crate::storage::marker::write_applied(&root, &marks)).await {
        Ok(Ok(())) => *recorded = covered,
        Ok(Err(error)) => tracing::warn!(%error, "cannot write the state marker"),
        Err(error) => tracing::warn!(%error, "cannot write the state marker"),
    }
    Ok(())
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
