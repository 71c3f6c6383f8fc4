//! openraft's storage test suite on the real stores: the fjall log engine
//! and the sled space state machine, each on a fresh temporary directory.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use spaceraft::raft::TypeConfig;
use spaceraft::storage::{LogEngine, LogStore, SpaceStateMachine, StateWriter};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, SpaceStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SpaceStateMachine), StorageError<TypeConfig>> {
        let io = |e: std::io::Error| StorageError::write(TypeConfig::err_from_error(&e));
        let dir = tempfile::tempdir().map_err(io)?;
        let engine = LogEngine::open(&dir.path().join("raft-log"), 64).map_err(io)?;
        let db = sled::Config::new()
            .path(dir.path().join("state"))
            .flush_every_ms(None)
            .open()
            .map_err(|e| io(std::io::Error::other(e)))?;
        let state_machine =
            SpaceStateMachine::open(db, StateWriter::default(), 1, dir.path().join("snapshots")).await.map_err(io)?;
        Ok((dir, engine.group(1), state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_the_real_stores() {
    Suite::test_all(Builder).await.expect("openraft storage suite");
}
