//! Chaos: `spaceraft chaos` runs a real cluster (node and gateway processes
//! per region), a workload of publishers, subscribers and readers, and a
//! seeded nemesis that kills, freezes and partitions regions; then the
//! [`checker`] proves (or refutes) the invariants from the recorded
//! [`history`].

pub mod checker;
pub mod history;
pub mod proxy;
