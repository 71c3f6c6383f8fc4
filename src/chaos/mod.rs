//! Chaos: `spaceraft chaos` runs a real cluster (node and gateway processes
//! per region, each region on its own loopback network behind the
//! [`proxy`]), a [`workload`] of publishers, subscribers and readers, and a
//! seeded [`nemesis`] that kills, freezes and partitions regions; then the
//! [`checker`] proves (or refutes) the invariants from the recorded
//! [`history`], and [`report`] writes what an operator reads. [`run`] ties
//! it together; [`cluster`] manages the processes.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod workload;
