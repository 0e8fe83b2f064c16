//! Blocktree's overlay: Kademlia, identify, ping and gossipsub under Blocktree's own
//! protocol names ([`Behaviour`]); signed path records ([`PathRecord`]) that every node
//! checks before storing or serving; a persistent record store on redb ([`Store`]); and a
//! running node ([`start`], [`Client`]) that registers and resolves paths.

pub mod behaviour;
pub mod config;
pub mod node;
mod port;
pub mod record;
mod refresh;
pub mod store;
pub mod streams;

pub use behaviour::{Behaviour, KAD_PROTOCOL, Swarms, Transports, build_swarm};
pub use config::Config;
pub use node::{
    Candidate, Client, Error, EventLoop, GOSSIP_QUEUE, Gossip, IncomingStreams, KadCounters,
    PeerInfo, QueryCount, Registered, Resolution, StartError, Status, Streams, Verdict, start,
    start_with_metrics,
};
pub use record::{PathRecord, RecordError, key_of};
pub use store::{Inserted, Store, StoreError};
