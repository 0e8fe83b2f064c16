//! Blocktree's distributed file system.
//!
//! Files are split into chunks, each encrypted on the client and named by the hash of its
//! ciphertext ([`ChunkId`]); inodes and directories are signed records bound, when they
//! are created, to the path that authorises them; replicas keep chunks and inode
//! versions in a redb [`store`] and check everything they accept.

pub mod id;
pub mod store;

pub use id::{ChunkId, InodeId, ItemId, VersionId};
pub mod blocks;
pub mod chunk;
pub mod client;
pub mod dir;
pub mod inode;
pub mod net;
pub mod repair;
pub mod replica;

pub use blocks::{BlockError, Blocks};
pub use client::{Client, Config, DirEntry, Error, Handle, Stat};
pub use replica::Replica;
