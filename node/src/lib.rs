//! The Blocktree node as a library: the actor runtime that `btnode` runs, for programs
//! that embed a node (the examples, tests, benchmarks).

pub mod actor;
pub mod embed;
pub mod payload;
