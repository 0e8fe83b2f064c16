//! What a node does with the items placed on it: checks everything before storing it, and
//! serves what it holds, verified again on the way out (versions once per change of the
//! store: see [`Replica::versions`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keys::SharedRevocations;

use crate::chunk::Sealed;
use crate::id::{ChunkId, InodeId, VersionId};
use crate::inode::{self, InodeError, Verified};
use crate::store::{self, Store};

/// Versions of one inode a replica keeps beyond its heads: the recent past, so that a
/// fork can be merged against its common ancestor.
pub const KEEP_HISTORY: u64 = 8;
/// Most concurrent heads (forks) of one inode a replica accepts.
pub const MAX_HEADS: usize = 16;

/// Why a replica refused an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The bytes do not hash to the chunk's id.
    #[error("the chunk's bytes do not match its id")]
    Mismatch,
    /// The inode version does not verify.
    #[error("{0}")]
    Inode(#[from] InodeError),
    /// Older than the history this replica keeps.
    #[error("version {seq} is older than the {KEEP_HISTORY} versions kept (newest {newest})")]
    Stale {
        /// The refused version's sequence.
        seq: u64,
        /// The newest held.
        newest: u64,
    },
    /// Too many forks of one inode.
    #[error("inode has {MAX_HEADS} unmerged versions already")]
    TooManyHeads,
    /// The replica's copy was corrupt; it has dropped it.
    #[error("the stored copy was corrupt and has been dropped")]
    Corrupt,
    /// The local store failed.
    #[error("store: {0}")]
    Store(String),
}

impl From<store::Error> for Refused {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Mismatch { .. } => Refused::Mismatch,
            store::Error::Corrupt { .. } => Refused::Corrupt,
            other => Refused::Store(other.to_string()),
        }
    }
}

/// Counters of a replica, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Inode versions refused (forged, unauthorised, malformed, stale).
    pub refused_versions: AtomicU64,
    /// Chunks refused (bytes not matching the id).
    pub refused_chunks: AtomicU64,
    /// Corrupt chunks found in the local store and dropped.
    pub corrupt_dropped: AtomicU64,
}

/// Inodes whose decoded versions one generation of a replica's memo holds (see
/// [`crate::memo::Generations`]).
const HELD_ENTRIES: usize = 16_384;

/// Decoded versions by inode, each with the store's [`Store::versions_epoch`] read before
/// the store was: an entry holds while the epoch is unchanged.
type Held = std::sync::Mutex<crate::memo::Generations<InodeId, (u64, Vec<Verified>)>>;

/// The checking front of a node's [`Store`].
#[derive(Debug, Clone)]
pub struct Replica {
    store: Store,
    verified: Arc<inode::VerifiedCache>,
    held: Arc<Held>,
    revocations: SharedRevocations,
    /// The generation of `revocations` the caches were filled under.
    checked_at: Arc<std::sync::atomic::AtomicU64>,
    counters: Arc<Counters>,
}

impl Replica {
    /// A replica over `store`.
    pub fn new(store: Store) -> Self {
        Replica {
            store,
            verified: Arc::default(),
            held: Arc::new(std::sync::Mutex::new(crate::memo::Generations::new(
                HELD_ENTRIES,
            ))),
            revocations: SharedRevocations::default(),
            checked_at: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// The same replica, checking versions against `revocations` (lists the node
    /// receives and issues), from now on.
    pub fn with_revocations(self, revocations: SharedRevocations) -> Self {
        Replica {
            revocations,
            ..self
        }
    }

    /// The same replica, with writes that commit without waiting for the disk: durable at
    /// the next [`Replica::sync`] (see [`Store::deferred`]).
    pub fn deferred(&self) -> Replica {
        Replica {
            store: self.store.deferred(),
            ..self.clone()
        }
    }

    /// Makes every write this replica acknowledged durable (see [`Store::sync`]).
    pub fn sync(&self) -> Result<(), Refused> {
        Ok(self.store.sync()?)
    }

    /// The versions this replica verified (with its revocations) and remembers.
    pub fn verified(&self) -> &inode::VerifiedCache {
        &self.verified
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The revocation lists versions are checked against.
    pub fn revocations(&self) -> &SharedRevocations {
        &self.revocations
    }

    /// Forgets what was checked under older revocation lists than those in force.
    pub(crate) fn refresh(&self) {
        let generation = self.revocations.generation();
        if self.checked_at.swap(generation, Ordering::AcqRel) != generation {
            self.verified.clear();
            if let Ok(mut held) = self.held.lock() {
                *held = crate::memo::Generations::new(HELD_ENTRIES);
            }
        }
    }

    /// Stores chunks of the inode `owner` (checked against their ids) in one transaction;
    /// how many were new. An all-zero owner means unknown: such chunks are never collected.
    pub fn put_chunks(
        &self,
        owner: &InodeId,
        chunks: &[(ChunkId, &[u8])],
    ) -> Result<usize, Refused> {
        self.store.put_chunks_of(owner, chunks).map_err(|e| {
            if matches!(e, store::Error::Mismatch { .. }) {
                self.counters.refused_chunks.fetch_add(1, Ordering::Relaxed);
            }
            Refused::from(e)
        })
    }

    /// Stores chunks of several owners in one transaction, each checked against its id
    /// on its own (see [`Store::put_chunks_each`]): one result per chunk.
    pub fn put_chunks_each(
        &self,
        chunks: &[(InodeId, ChunkId, &[u8])],
    ) -> Result<Vec<Result<bool, Refused>>, Refused> {
        Ok(self
            .store
            .put_chunks_each(chunks)?
            .into_iter()
            .map(|result| {
                result.map_err(|e| {
                    self.counters.refused_chunks.fetch_add(1, Ordering::Relaxed);
                    Refused::from(e)
                })
            })
            .collect())
    }

    /// Stores chunks sealed in this process (see [`Store::put_sealed_of`]).
    pub fn put_sealed(&self, owner: &InodeId, chunks: &[Sealed]) -> Result<usize, Refused> {
        Ok(self.store.put_sealed_of(owner, chunks)?)
    }

    /// A chunk, checked against its id; a corrupt copy is dropped and reported.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, Refused> {
        match self.store.get_chunk(id) {
            Ok(found) => Ok(found),
            Err(store::Error::Corrupt { .. }) => {
                self.counters
                    .corrupt_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(chunk = %id, "dropping a corrupt chunk; repair will fetch a good copy");
                self.store.remove_corrupt_chunk(id)?;
                Err(Refused::Corrupt)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A chunk's stored bytes, not checked against its id (see
    /// [`crate::Blocks::local_chunk_unchecked`]).
    pub fn get_chunk_unchecked(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, Refused> {
        Ok(self.store.get_chunk_unchecked(id)?)
    }

    /// Checks and stores an inode version; `true` if it was new. Older versions that are
    /// no longer heads and fall out of the kept history are dropped.
    pub fn put_version(&self, inode: &InodeId, signed: &[u8]) -> Result<bool, Refused> {
        self.refresh();
        let verified = self
            .verified
            .verify_as(signed, inode, keys::now(), &self.revocations.read())
            .inspect_err(|e| {
                self.counters
                    .refused_versions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%inode, error = %e, "refused an inode version");
            })?;
        if self.store.has_version(inode, &verified.version)? {
            return Ok(false);
        }
        let mut held = self.held(inode)?;
        // Versions signed through revoked writecaps count for nothing here: readers do not
        // see them, and a revoked writer's high sequence or forks must not stop others'.
        // (Without lists, what is held is what is shown: no copy.)
        let revocations = self.revocations.read();
        let mut filtered =
            (!revocations.is_empty()).then(|| inode::drop_revoked(held.clone(), &revocations));
        let newest = filtered
            .as_deref()
            .unwrap_or(&held)
            .iter()
            .map(|v| v.inode.seq)
            .max()
            .unwrap_or(0);
        if verified.inode.seq + KEEP_HISTORY <= newest {
            self.counters
                .refused_versions
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Stale {
                seq: verified.inode.seq,
                newest,
            });
        }
        held.push(verified.clone());
        if let Some(filtered) = &mut filtered {
            filtered.push(verified.clone());
        }
        if inode::heads(filtered.as_deref().unwrap_or(&held)).len() > MAX_HEADS {
            self.counters
                .refused_versions
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refused::TooManyHeads);
        }
        let replaced = pruned(&held);
        self.store.put_version_replacing(
            inode,
            &verified.version,
            verified.inode.seq,
            signed,
            &replaced,
        )?;
        Ok(true)
    }

    fn held(&self, inode: &InodeId) -> Result<Vec<Verified>, Refused> {
        // Read before the store is: a change committed after this makes the entry stale.
        let epoch = self.store.versions_epoch(inode);
        if let Ok(mut cache) = self.held.lock()
            && let Some((at, held)) = cache.get(inode)
            && *at == epoch
        {
            return Ok(held.clone());
        }
        // Stored versions were checked when they came in, their chains at signing time
        // (a writecap that has expired since does not unmake a version; one revoked
        // since is for readers to leave out, see `inode::drop_revoked`).
        let mut held = Vec::new();
        for stored in self.store.versions(inode)? {
            match self.verified.verify_as(
                &stored.signed,
                inode,
                u64::MAX - inode::MAX_CLOCK_SKEW,
                &keys::Revocations::default(),
            ) {
                Ok(v) => held.push(v),
                Err(e) => {
                    tracing::warn!(%inode, version = %stored.id, error = %e, "dropping a stored version that no longer decodes");
                    self.store.remove_version(inode, &stored.id)?;
                }
            }
        }
        if let Ok(mut cache) = self.held.lock() {
            cache.insert(*inode, (epoch, held.clone()));
        }
        Ok(held)
    }

    /// Every kept version of an inode, newest first, checked again when they were last
    /// read from the store; decoded versions are remembered until the store's
    /// [`Store::versions_epoch`] for the inode changes.
    pub fn versions(&self, inode: &InodeId) -> Result<Vec<Verified>, Refused> {
        self.refresh();
        let mut held = self.held(inode)?;
        held.sort_by(|a, b| inode::order(b, a));
        Ok(held)
    }
}

/// The versions among `held` that fall out of the kept history: older than the newest
/// by [`KEEP_HISTORY`] and no longer heads.
fn pruned(held: &[Verified]) -> Vec<VersionId> {
    let newest = held.iter().map(|v| v.inode.seq).max().unwrap_or(0);
    let heads: Vec<VersionId> = inode::heads(held).iter().map(|v| v.version).collect();
    held.iter()
        .filter(|v| v.inode.seq + KEEP_HISTORY <= newest && !heads.contains(&v.version))
        .map(|v| v.version)
        .collect()
}
