//! The free space of a node's data directory, watched off the async
//! runtime: below `storage.disk_reserve_bytes`, the posts a node leads are
//! refused with `resource_exhausted` before the disk is full, and node
//! status says so; they are taken again once space is freed.
//!
//! A store that fails anyway (the disk filled past the reserve, an I/O
//! error) stops the groups that hit it: openraft stops a group's Raft on a
//! storage error, so a leader stops leading at once and the others elect.
//! The node reports `storage-failed`; [`storage_failed`] tells its process
//! when the disk has room again, and `spaceraft node` then restarts itself
//! to reopen its stores and catch up (fjall and sled stay failed once a
//! write failed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::Fatal;

use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::raft::types::TypeConfig;

/// How often the free space is looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Free bytes of the file system holding `path` (for an unprivileged
/// process), or None when it cannot be asked.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stats` a valid out pointer.
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    (result == 0).then(|| stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Refreshes the node's view of its free space until shutdown.
pub async fn run(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let root = host.data_root();
        if let Ok(Some(free)) = crate::storage::blocking::run(move || free_bytes(&root)).await {
            let was_low = host.disk_low();
            host.disk_free_bytes.store(free, Ordering::Relaxed);
            let low = host.disk_low();
            if low && !was_low {
                tracing::error!(
                    free_bytes = free,
                    reserve_bytes = host.config.storage.disk_reserve_bytes,
                    "the data directory's disk is below its reserve: refusing posts until space is freed"
                );
            } else if was_low && !low {
                tracing::info!(free_bytes = free, "the data directory's disk has room again: taking posts");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Why a group's Raft stopped on its storage (a storage error, or a panic
/// in its storage tasks); None while it runs or when it was stopped.
pub fn storage_failure(state: &Result<(), Fatal<TypeConfig>>) -> Option<String> {
    match state {
        Err(Fatal::StorageError(error)) => Some(error.to_string()),
        Err(Fatal::Panicked) => Some("its raft core panicked".into()),
        _ => None,
    }
}

/// Resolves once the node has a storage failure and its disk has room
/// (above the reserve): what failed. Its process then restarts to reopen
/// the stores.
pub async fn storage_failed(host: Arc<Host>) -> String {
    loop {
        let failures = host.storage_failures();
        // Measured now: a disk that just filled fails the stores before the
        // free-space watcher's next look.
        if !failures.is_empty() && has_room(host.data_root(), host.config.storage.disk_reserve_bytes).await {
            return failures.join("; ");
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

/// Whether the disk of `root` has at least `reserve` bytes free, measured
/// now.
pub async fn has_room(root: std::path::PathBuf, reserve: u64) -> bool {
    let free = crate::storage::blocking::run(move || free_bytes(&root)).await.ok().flatten();
    free.is_some_and(|free| free >= reserve)
}

impl Host {
    /// What failed in this node's stores: groups whose Raft stopped on a
    /// storage failure, and the state machine store if it cannot be
    /// written out.
    pub fn storage_failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self.sm_failure.lock().expect("failure lock").clone().into_iter().collect();
        for group in self.groups.all() {
            if let Some(why) = storage_failure(&group.raft.metrics().borrow_watched().running_state) {
                failures.push(format!("group {}: {why}", group.id));
            }
        }
        failures
    }

    /// Whether the data directory's free space is below the reserve.
    pub fn disk_low(&self) -> bool {
        self.disk_free_bytes.load(Ordering::Relaxed) < self.config.storage.disk_reserve_bytes
    }

    /// Refuses a write while the disk is below its reserve.
    pub fn check_disk_reserve(&self) -> Result<(), ApiError> {
        if !self.disk_low() {
            return Ok(());
        }
        let free = self.disk_free_bytes.load(Ordering::Relaxed);
        Err(ApiError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "node {} has {free} bytes free on its data directory's disk, below storage.disk_reserve_bytes ({}): \
                 posts are refused until space is freed",
                self.config.node_id, self.config.storage.disk_reserve_bytes
            ),
        ))
    }

    /// What node status reports of the disk, when it is low.
    pub fn disk_problem(&self) -> Option<String> {
        self.disk_low().then(|| {
            format!(
                "disk below its reserve: {} bytes free, storage.disk_reserve_bytes is {}",
                self.disk_free_bytes.load(Ordering::Relaxed),
                self.config.storage.disk_reserve_bytes
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_free_space_of_a_real_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::free_bytes(dir.path()).is_some_and(|free| free > 0));
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}
