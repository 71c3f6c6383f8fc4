//! Spaces: the ordered, append-only message streams users post to.
//!
//! Everything here is plain, deterministic Rust with no sockets and no files:
//! - [`command`]: what a Raft entry carries (create a space, a batch of posts)
//!   and what applying it answers.
//! - [`record`]: the stored shape of spaces and messages and their keys.
//! - [`machine`]: the apply logic that assigns seqs, dedupes by idempotency key
//!   and enforces membership, over any key-value reader.
//! - [`validate`]: checks done before a request becomes a proposal (names, body
//!   size), so that apply only decides what depends on replicated state.
//!
//! Invariants kept by [`machine`]:
//! - per space, seqs are 1, 2, 3 … with no gap, assigned at apply time;
//! - a key seen within the space's dedup window commits nothing new and
//!   answers the seq it first committed at;
//! - only members post; apply never reads a clock or a node's local config:
//!   the window and retention of a space are fixed in its record at creation.

pub mod command;
pub mod machine;
pub mod record;
pub mod validate;

pub use command::{ApplyError, Command, CommandResult, PostCommand, PostOutcome};
pub use machine::{DedupIndex, KvRead, Overlay, SpaceMachine};
pub use record::{MessageRecord, SpaceRecord};
