//! Where a [`Client`](crate::Client) keeps chunks and inode versions: one local
//! [`Replica`] (a single node, and tests), or the overlay ([`crate::net::Network`]).

use std::future::Future;

use crate::chunk::Sealed;
use crate::id::{ChunkId, InodeId};
use crate::inode::Verified;
use crate::replica::{Refused, Replica};

/// Why a block operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// No replica holds it.
    #[error("not found")]
    NotFound,
    /// A replica refused it.
    #[error("refused: {0}")]
    Refused(String),
    /// Fewer replicas than needed answered.
    #[error("only {acks} of the {needed} replicas needed acknowledged: {reason}")]
    Unavailable {
        /// Acknowledgements needed.
        needed: usize,
        /// Acknowledgements received.
        acks: usize,
        /// What went wrong with the others.
        reason: String,
    },
}

impl From<Refused> for BlockError {
    fn from(e: Refused) -> Self {
        BlockError::Refused(e.to_string())
    }
}

/// Storage of chunks and inode versions. Every method is cancel-safe: a dropped future
/// may or may not have stored its items, and nothing was acknowledged.
pub trait Blocks: Send + Sync + 'static {
    /// Stores sealed chunks of the inode `owner` on enough replicas before returning
    /// (durably, but for what [`Blocks::sync`] waits for).
    fn put_chunks(
        &self,
        owner: InodeId,
        chunks: Vec<Sealed>,
    ) -> impl Future<Output = Result<(), BlockError>> + Send;
    /// A chunk whose bytes hash to `id`.
    fn get_chunk(&self, id: ChunkId) -> impl Future<Output = Result<Vec<u8>, BlockError>> + Send;
    /// This node's own copy of chunk `id`, its bytes as stored and not checked against
    /// `id` (the store checked them when it took them): `None` where this node holds no
    /// copy, or reading it failed. Only for a caller that checks the bytes another way and
    /// asks [`Blocks::get_chunk`] when that check fails (or there is no copy here): that
    /// call finds a corrupt copy, reports it, and reads another replica's. Opening a chunk
    /// with its data key is such a check against changed bytes, though weaker than the
    /// id: its tag binds the key, the inode and the index, not the version, so it would
    /// take an older version's chunk for the same place.
    ///
    /// It reads the disk and waits for it: call it where blocking is allowed (a blocking
    /// thread), never on the runtime's threads. None by default.
    fn local_chunk_unchecked(&self, _id: &ChunkId) -> Option<Vec<u8>> {
        None
    }
    /// Stores a signed inode version on enough replicas before returning (durably, but
    /// for what [`Blocks::sync`] waits for).
    fn put_version(
        &self,
        inode: InodeId,
        signed: Vec<u8>,
    ) -> impl Future<Output = Result<(), BlockError>> + Send;
    /// Makes every write acknowledged so far durable. A write is acknowledged when stored
    /// on enough replicas, durably on every other node; this node's own store may take
    /// it without waiting for its disk (see [`crate::net::Config::defer_own_writes`]), and
    /// then this waits for that.
    fn sync(&self) -> impl Future<Output = Result<(), BlockError>> + Send {
        async { Ok(()) }
    }

    /// The revocation lists versions are checked against, and the node's own writecaps
    /// (none by default).
    fn revocations(&self) -> keys::SharedRevocations {
        keys::SharedRevocations::default()
    }

    /// Drops whatever is remembered of an inode's versions, so the next
    /// [`Blocks::get_versions`] asks the replicas (a cache may lag writes made elsewhere).
    fn forget(&self, _inode: InodeId) {}

    /// Every version of an inode the replicas hold, verified; empty when none is known.
    fn get_versions(
        &self,
        inode: InodeId,
    ) -> impl Future<Output = Result<Vec<Verified>, BlockError>> + Send;

    /// [`Blocks::get_versions`] of an inode known to exist (a directory names it): where
    /// the nearest replicas hold no version, a network looks farther out before it
    /// answers "none" (an item stays where it was put until repair moves it to nodes
    /// that joined nearer its id).
    fn get_versions_expected(
        &self,
        inode: InodeId,
    ) -> impl Future<Output = Result<Vec<Verified>, BlockError>> + Send {
        self.get_versions(inode)
    }

    /// [`Blocks::get_versions`] from every node the inode belongs on, none skipped and
    /// nothing remembered: for decisions a partial view must not make (creating an
    /// anchor that seems missing, collecting chunks that seem unreferenced). Fails when
    /// one of them does not answer.
    fn get_versions_strict(
        &self,
        inode: InodeId,
    ) -> impl Future<Output = Result<Vec<Verified>, BlockError>> + Send {
        self.get_versions(inode)
    }
}

impl Blocks for Replica {
    async fn put_chunks(&self, owner: InodeId, chunks: Vec<Sealed>) -> Result<(), BlockError> {
        let replica = self.clone();
        tokio::task::spawn_blocking(move || replica.put_sealed(&owner, &chunks).map(|_| ()))
            .await
            .map_err(|e| BlockError::Refused(format!("store task failed: {e}")))??;
        Ok(())
    }

    async fn get_chunk(&self, id: ChunkId) -> Result<Vec<u8>, BlockError> {
        Replica::get_chunk(self, &id)?.ok_or(BlockError::NotFound)
    }

    fn local_chunk_unchecked(&self, id: &ChunkId) -> Option<Vec<u8>> {
        Replica::get_chunk_unchecked(self, id).ok().flatten()
    }

    fn revocations(&self) -> keys::SharedRevocations {
        Replica::revocations(self).clone()
    }

    async fn put_version(&self, inode: InodeId, signed: Vec<u8>) -> Result<(), BlockError> {
        Replica::put_version(self, &inode, &signed)?;
        Ok(())
    }

    async fn get_versions(&self, inode: InodeId) -> Result<Vec<Verified>, BlockError> {
        Ok(crate::inode::drop_revoked(
            self.versions(&inode)?,
            &self.revocations().read(),
        ))
    }

    async fn sync(&self) -> Result<(), BlockError> {
        if !self.store().has_deferred() {
            return Ok(());
        }
        let replica = self.clone();
        tokio::task::spawn_blocking(move || replica.sync())
            .await
            .map_err(|e| BlockError::Refused(format!("store task failed: {e}")))??;
        Ok(())
    }
}
