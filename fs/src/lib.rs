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
pub mod fuse;
pub mod gc;
pub mod inode;
mod memo;
pub mod net;
pub mod repair;
pub mod replica;

pub use blocks::{BlockError, Blocks};
pub use client::{Client, Config, DirEntry, Error, Handle, Revoked, Stat};
pub use replica::Replica;

/// Compile-time guard: the client's futures over the network must stay `Send` (the
/// daemon runs them on a multi-threaded runtime; a closure over borrowed items in a
/// stream combinator silently breaks that).
#[allow(dead_code)]
fn _send_check(c: &'static Client<net::Network>, p: &'static keys::Path, h: &'static mut Handle) {
    fn s<T: Send>(_: T) {}
    s(c.stat(p));
    s(c.readdir(p));
    s(c.mkdir(p));
    s(c.mkdir_all(p));
    s(c.unlink(p));
    s(c.rename(p, p));
    s(c.open(p));
    s(c.create(p));
    s(c.revoke(p, p.root()));
    s(c.pick_up_grants(p));
    s(c.put(p, tokio::io::empty(), |_| {}));
    s(c.get(p, tokio::io::sink(), |_| {}));
    s(c.fsync(h));
}

/// What the unit tests of several modules start from.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use keys::{Chain, Identity, Path, Validity};

    use crate::{Client, Config, Replica, store::Store};

    /// A tree's owner: a client holding its root's writecap over a replica in memory.
    pub(crate) struct Owner {
        pub(crate) client: Client<Replica>,
        pub(crate) replica: Arc<Replica>,
        /// The tree's root path.
        pub(crate) tree: Path,
        /// The root's key, which signs the root's grants.
        pub(crate) root: Arc<Identity>,
    }

    /// A new tree and its owner.
    pub(crate) fn owner() -> Owner {
        let root = Arc::new(Identity::generate());
        let tree = Path::root_of(root.principal());
        let chain = Chain::root_grant(
            root.signing_key(),
            root.principal(),
            tree.clone(),
            Validity::for_seconds(3600),
        );
        let replica = Arc::new(Replica::new(Store::in_memory().expect("a store in memory")));
        let client = Client::new(replica.clone(), root.clone(), vec![chain], Config::new());
        Owner {
            client,
            replica,
            tree,
            root,
        }
    }
}
