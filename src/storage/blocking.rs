//! Disk work off the async runtime. Every sled read or write and every
//! file-system call of a node runs on a blocking thread through [`run`];
//! the functions that touch the disk check it ([`assert_off_runtime`]), so
//! a debug build (every test) panics where one would stall the runtime.

use std::cell::Cell;

thread_local! {
    /// Set while this thread runs work handed to [`run`].
    static ON_BLOCKING_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Clears the mark when the work ends, however it ends.
struct Mark;

impl Mark {
    fn set() -> Mark {
        ON_BLOCKING_THREAD.with(|on| on.set(true));
        Mark
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        ON_BLOCKING_THREAD.with(|on| on.set(false));
    }
}

/// Runs `work` on a blocking thread and waits for it.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, tokio::task::JoinError> {
    spawn(work).await
}

/// Runs `work` where it may block without stalling other tasks, taking the
/// shortest way there: on a multi-threaded runtime this worker thread hands
/// its other tasks to the rest of the pool and runs `work` itself (no
/// thread hop on the commit path); elsewhere (a single-threaded runtime, as
/// in some tests) on a blocking thread.
pub async fn run_in_place<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => Ok(tokio::task::block_in_place(|| {
            let _mark = Mark::set();
            work()
        })),
        _ => run(work).await,
    }
}

/// Runs short disk work right here, on the async runtime's thread: for
/// work on records sled keeps in its cache, whose writes go to sled's
/// in-memory log (its own threads write that out), so it does not wait on
/// the disk. Handing such work to another thread costs more than the work
/// itself: `block_in_place` hands the worker's queue to another thread and
/// back, which a state machine apply of a few posts paid per batch (see the
/// `apply` stage of `spaceraft bench post --breakdown`).
pub fn run_inline<T>(work: impl FnOnce() -> T) -> T {
    let _mark = Mark::set();
    work()
}

/// Starts `work` on a blocking thread at once; await the handle for its result.
pub fn spawn<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || {
        let _mark = Mark::set();
        work()
    })
}

/// Whether disk work may run here: on a blocking thread of [`run`], or
/// outside any async runtime (tools, tests).
pub fn may_block() -> bool {
    ON_BLOCKING_THREAD.with(Cell::get) || tokio::runtime::Handle::try_current().is_err()
}

/// Panics (in debug builds) when disk work runs on the async runtime.
#[track_caller]
pub fn assert_off_runtime(what: &str) {
    debug_assert!(may_block(), "{what} ran on the async runtime: hand it to storage::blocking::run");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_is_allowed_on_blocking_threads_only() {
        assert!(!may_block(), "a runtime worker must not block");
        assert!(run(may_block).await.unwrap());
        assert!(!may_block(), "the mark does not outlive the work");
        assert!(std::thread::spawn(may_block).join().unwrap(), "outside a runtime, blocking is fine");
        assert!(run_in_place(may_block).await.unwrap(), "a single-threaded runtime hands it to a blocking thread");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_in_place_is_allowed_and_the_mark_cleared() {
        assert!(run_in_place(may_block).await.unwrap());
        assert!(!may_block());
    }

    #[tokio::test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "ran on the async runtime")]
    async fn disk_work_on_the_runtime_panics_in_debug_builds() {
        assert_off_runtime("a sled read");
    }
}
