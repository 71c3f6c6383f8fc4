//! The space state machine on a real sled database: what survives a reopen
//! (the dedup index is rebuilt from stored messages), and snapshots built
//! while apply goes on restore the exact state of their applied id.

use std::collections::BTreeMap;

use futures::stream;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload};
use spaceraft::raft::types::TypeConfig;
use spaceraft::space::{Command, PostCommand};
use spaceraft::storage::{SpaceStateMachine, StateWriter};

fn entry(
    index: u64,
    command: Command,
) -> Entry<
    openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>,
    openraft::type_config::alias::EntryPayloadOf<TypeConfig>,
> {
    Entry { log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index), payload: EntryPayload::Normal(command) }
}

fn create(name: &str) -> Command {
    Command::CreateSpace {
        name: name.into(),
        members: vec!["alice".into()],
        attrs: BTreeMap::new(),
        dedup_window_len: 1_000,
        retain_messages_max: 0,
    }
}

fn posts(keys: &[&str]) -> Command {
    Command::Posts(
        keys.iter()
            .map(|key| PostCommand {
                space: "general".into(),
                author: "alice".into(),
                body: format!("body {key}"),
                idempotency_key: key.to_string(),
            })
            .collect(),
    )
}

async fn apply(machine: &mut SpaceStateMachine, entries: Vec<(u64, Command)>) {
    let items: Vec<Result<_, std::io::Error>> =
        entries.into_iter().map(|(index, command)| Ok((entry(index, command), None))).collect();
    machine.apply(stream::iter(items)).await.expect("apply");
}

/// The keys of `general`'s messages, read as a node reads: off the runtime.
async fn keys_of(machine: &SpaceStateMachine) -> Vec<String> {
    let reader = machine.reader();
    spaceraft::storage::blocking::run(move || {
        let space = reader.space("general").unwrap().unwrap();
        reader
            .messages("general", 1, space.last_seq, 10_000)
            .unwrap()
            .into_iter()
            .map(|m| m.record.idempotency_key)
            .collect()
    })
    .await
    .unwrap()
}

fn open_db(path: &std::path::Path) -> sled::Db {
    sled::Config::new().path(path).flush_every_ms(None).open().unwrap()
}

#[tokio::test]
async fn a_reopened_machine_still_dedupes_keys_committed_before() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(&dir.path().join("state"));
        let mut machine =
            SpaceStateMachine::open(db.clone(), StateWriter::default(), 1, dir.path().join("snapshots")).await.unwrap();
        apply(&mut machine, vec![(1, create("general")), (2, posts(&["k1", "k2"]))]).await;
        db.flush().unwrap();
    }
    let db = open_db(&dir.path().join("state"));
    let mut machine =
        SpaceStateMachine::open(db, StateWriter::default(), 1, dir.path().join("snapshots")).await.unwrap();
    apply(&mut machine, vec![(3, posts(&["k1", "k3", "k2"]))]).await;
    assert_eq!(keys_of(&machine).await, ["k1", "k2", "k3"], "retried keys must not commit again after a reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_during_apply_restores_its_applied_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("state"));
    let mut machine =
        SpaceStateMachine::open(db, StateWriter::default(), 1, dir.path().join("snapshots")).await.unwrap();
    apply(&mut machine, vec![(1, create("general")), (2, posts(&["a", "b", "c"]))]).await;
    let mut builder = machine.try_create_snapshot_builder(true).await.expect("a builder");
    // Apply goes on while the snapshot is built: it must not leak into it.
    let building = tokio::spawn(async move { builder.build_snapshot().await });
    apply(&mut machine, vec![(3, posts(&["d", "e"])), (4, create("later"))]).await;
    let snapshot = building.await.unwrap().expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(2));
    let current = machine.get_current_snapshot().await.unwrap().expect("the built snapshot is current");
    assert_eq!(current.meta, snapshot.meta);

    let other_dir = tempfile::tempdir().unwrap();
    let other_db = open_db(&other_dir.path().join("state"));
    let mut restored =
        SpaceStateMachine::open(other_db, StateWriter::default(), 1, other_dir.path().join("snapshots")).await.unwrap();
    let copy = other_dir.path().join("incoming.recv");
    std::fs::copy(&snapshot.snapshot.path, &copy).unwrap();
    restored.install_snapshot(&snapshot.meta, spaceraft::storage::SnapshotFile { path: copy }).await.unwrap();
    assert_eq!(keys_of(&restored).await, ["a", "b", "c"]);
    let reader = restored.reader();
    let later = spaceraft::storage::blocking::run(move || reader.space("later").unwrap()).await.unwrap();
    assert!(later.is_none(), "a space created after the snapshot point leaked in");
    let (applied, _) = restored.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(2));
    // The restored replica goes on from the snapshot exactly like the original.
    apply(&mut restored, vec![(3, posts(&["d", "e", "a"])), (4, create("later"))]).await;
    assert_eq!(keys_of(&restored).await, keys_of(&machine).await);
}
