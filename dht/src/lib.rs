//! Blocktree's overlay: Kademlia, identify, ping and gossipsub under Blocktree's own
//! protocol names; signed path records; and a persistent record store.

pub mod record;
pub mod store;

pub use record::{PathRecord, RecordError, key_of};
pub use store::{Inserted, Store, StoreError};
