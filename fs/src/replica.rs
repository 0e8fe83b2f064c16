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
/// fork can be merged against its common ancestor. A version is kept while fewer than
/// this many generations (parent links among the versions held) lie between it and the
/// nearest head that descends from it; and a version more than this many sequence
/// numbers behind the newest is refused.
pub const KEEP_HISTORY: u64 = 8;
/// Most concurrent heads (forks) of one inode a replica accepts.
pub const MAX_HEADS: usize = 16;
/// Most versions of one inode a replica keeps, heads included: beyond it the versions
/// farthest below the heads go first (the heads never do).
pub const MAX_KEPT: usize = 64;

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
    /// A version's sequence is not above that of a version it supersedes (as every
    /// writer's is: it takes the highest it has seen plus one).
    #[error("version {seq} supersedes version {parent_seq}: a sequence must rise")]
    SequenceNotRising {
        /// The later version's sequence (of the two, the one that names the other).
        seq: u64,
        /// The superseded one's.
        parent_seq: u64,
    },
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

/// Stripes of [`Replica`]'s locks for putting versions.
const PUT_STRIPES: usize = 64;

/// Inodes whose decoded versions one generation of a replica's memo holds (see
/// [`crate::memo::Generations`]), and the memory they may take ([`Verified::weight`]).
const HELD_ENTRIES: usize = 16_384;
const HELD_BYTES: usize = 32 << 20;

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
    /// Held while a version is checked against what is held and stored, per stripe of
    /// inodes: two versions of one inode put at once were each checked without the
    /// other (together past [`MAX_HEADS`], or a sequence that does not rise).
    put_locks: Arc<[std::sync::Mutex<()>; PUT_STRIPES]>,
    counters: Arc<Counters>,
}

impl Replica {
    /// A replica over `store`.
    pub fn new(store: Store) -> Self {
        Replica {
            store,
            verified: Arc::default(),
            held: Arc::new(std::sync::Mutex::new(
                crate::memo::Generations::with_budget(HELD_ENTRIES, HELD_BYTES),
            )),
            revocations: SharedRevocations::default(),
            checked_at: Arc::default(),
            put_locks: Arc::new(std::array::from_fn(|_| std::sync::Mutex::new(()))),
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
                *held = crate::memo::Generations::with_budget(HELD_ENTRIES, HELD_BYTES);
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
        let _checking = self.put_locks[usize::from(inode.0[0]) % PUT_STRIPES]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
            return self.refuse(Refused::Stale {
                seq: verified.inode.seq,
                newest,
            });
        }
        // Sequences rise along parent links: without it, one writer could chain versions
        // of one sequence that no history bound would ever prune. A new version must be
        // above every held version it names. A held version that names the new one
        // without being above it broke the rule unseen, while its parent was not held
        // here: it goes, and the new one, which keeps the rule, is taken.
        if let Some(parent) = held.iter().find(|o| {
            verified.inode.parents.contains(&o.version) && o.inode.seq >= verified.inode.seq
        }) {
            return self.refuse(Refused::SequenceNotRising {
                seq: verified.inode.seq,
                parent_seq: parent.inode.seq,
            });
        }
        let breaking: Vec<VersionId> = held
            .iter()
            .filter(|o| {
                o.inode.parents.contains(&verified.version) && o.inode.seq <= verified.inode.seq
            })
            .map(|o| o.version)
            .collect();
        if !breaking.is_empty() {
            tracing::warn!(%inode, dropped = breaking.len(), "dropping versions whose sequence is not above a parent's that came after them");
            held.retain(|o| !breaking.contains(&o.version));
            if let Some(filtered) = &mut filtered {
                filtered.retain(|o| !breaking.contains(&o.version));
            }
        }
        held.push(verified.clone());
        if let Some(filtered) = &mut filtered {
            filtered.push(verified.clone());
        }
        if inode::heads(filtered.as_deref().unwrap_or(&held)).len() > MAX_HEADS {
            return self.refuse(Refused::TooManyHeads);
        }
        let mut replaced = pruned(&held);
        if replaced.contains(&verified.version) {
            // Below what is kept (trimmed away here before, and sent again): taken, it
            // would only be dropped at the next write, or come back as a head.
            return self.refuse(Refused::Stale {
                seq: verified.inode.seq,
                newest,
            });
        }
        replaced.extend(breaking);
        self.store.put_version_replacing(
            inode,
            &verified.version,
            verified.inode.seq,
            signed,
            &replaced,
        )?;
        Ok(true)
    }

    /// Counts a refused version, and refuses it.
    fn refuse(&self, why: Refused) -> Result<bool, Refused> {
        self.counters
            .refused_versions
            .fetch_add(1, Ordering::Relaxed);
        Err(why)
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
            let weight = held.iter().map(Verified::weight).sum();
            cache.insert_weighing(*inode, (epoch, held.clone()), weight);
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

/// The versions among `held` that fall out of the kept history: those [`KEEP_HISTORY`]
/// or more generations below every head that descends from them, and then, while more
/// than [`MAX_KEPT`] would stay, the farthest below the heads (the oldest first among
/// equals). Generations, not sequence numbers: one version with a far higher sequence
/// (a writer may sign any, and be revoked later, when readers leave its versions out)
/// must not take the history it names with it.
fn pruned(held: &[Verified]) -> Vec<VersionId> {
    use std::collections::HashMap;
    let index: HashMap<VersionId, usize> = held
        .iter()
        .enumerate()
        .map(|(i, v)| (v.version, i))
        .collect();
    // Generations below the nearest head, breadth first down the parent links.
    let mut depth = vec![usize::MAX; held.len()];
    let mut queue = std::collections::VecDeque::new();
    for head in inode::heads(held) {
        if let Some(&i) = index.get(&head.version)
            && depth[i] != 0
        {
            depth[i] = 0;
            queue.push_back(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let below = depth[i].saturating_add(1);
        for parent in &held[i].inode.parents {
            if let Some(&p) = index.get(parent)
                && depth[p] > below
            {
                depth[p] = below;
                queue.push_back(p);
            }
        }
    }
    let history = usize::try_from(KEEP_HISTORY).unwrap_or(usize::MAX);
    let mut kept: Vec<usize> = Vec::new();
    let mut dropped: Vec<VersionId> = Vec::new();
    for (i, v) in held.iter().enumerate() {
        // The same version twice (it cannot be, but must not count twice).
        if index.get(&v.version) != Some(&i) {
            continue;
        }
        if depth[i] >= history {
            dropped.push(v.version);
        } else {
            kept.push(i);
        }
    }
    if kept.len() > MAX_KEPT {
        // Farthest below the heads last-kept; heads (depth 0) sort first and stay.
        kept.sort_by(|&a, &b| {
            depth[a]
                .cmp(&depth[b])
                .then_with(|| inode::order(&held[b], &held[a]))
        });
        let keep = MAX_KEPT.max(kept.iter().filter(|&&i| depth[i] == 0).count());
        dropped.extend(kept.drain(keep..).map(|i| held[i].version));
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inode::{Inode, Signed};

    /// A file's inode on a replica, its first version, and the key that signs more.
    async fn file() -> (Arc<Replica>, InodeId, Verified, Arc<keys::Identity>) {
        let crate::testing::Owner {
            client,
            replica,
            tree,
            root,
        } = crate::testing::owner();
        let path = tree.join("f").unwrap();
        client.put(&path, &b"first"[..], |_| {}).await.unwrap();
        let inode = client.stat(&path).await.unwrap().inode;
        let first = replica.versions(&inode).unwrap().remove(0);
        (replica, inode, first, root)
    }

    /// Signs a successor of `base` with `seq` naming `parents`, and offers it.
    fn offer(
        replica: &Replica,
        inode: &InodeId,
        base: &Verified,
        root: &keys::Identity,
        seq: u64,
        parents: Vec<VersionId>,
    ) -> (VersionId, Result<bool, Refused>) {
        let mut next = Inode::clone(&base.inode);
        next.seq = seq;
        next.parents = parents;
        let bytes = Signed::sign(&next, root.signing_key()).unwrap();
        let id = replica
            .verified()
            .verify_as(&bytes, inode, keys::now(), &keys::Revocations::default())
            .unwrap()
            .version;
        (id, replica.put_version(inode, &bytes))
    }

    fn held(replica: &Replica, inode: &InodeId) -> Vec<VersionId> {
        replica
            .versions(inode)
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect()
    }

    /// A version must have a higher sequence than what it supersedes, whichever of the
    /// two comes first: a chain of versions of one sequence would never leave the kept
    /// history (each put also verified them all again), however long it grew.
    #[tokio::test]
    async fn sequences_must_rise_along_parent_links() {
        let (replica, inode, first, root) = file().await;
        let s = first.inode.seq;
        let (_, same) = offer(&replica, &inode, &first, &root, s, vec![first.version]);
        assert!(
            matches!(same, Err(Refused::SequenceNotRising { seq, parent_seq }) if seq == s && parent_seq == s),
            "{same:?}"
        );
        // The child first, naming a parent not held yet; the parent then comes with a
        // sequence not below the child's.
        let mut parent = Inode::clone(&first.inode);
        parent.seq = s + 5;
        parent.parents = vec![first.version];
        let parent_bytes = Signed::sign(&parent, root.signing_key()).unwrap();
        let parent_id = replica
            .verified()
            .verify_as(
                &parent_bytes,
                &inode,
                keys::now(),
                &keys::Revocations::default(),
            )
            .unwrap()
            .version;
        let (child_id, child) = offer(&replica, &inode, &first, &root, s + 5, vec![parent_id]);
        assert_eq!(child, Ok(true));
        // The parent keeps the rule; the child that came first broke it, and goes.
        assert_eq!(replica.put_version(&inode, &parent_bytes), Ok(true));
        let now = held(&replica, &inode);
        assert!(now.contains(&parent_id) && !now.contains(&child_id));
        assert_eq!(now.len(), 2);
        // Rising, it is taken.
        let (_, next) = offer(&replica, &inode, &first, &root, s + 1, vec![first.version]);
        assert_eq!(next, Ok(true));
    }

    /// One version with a far higher sequence drops nothing it names: the history is
    /// counted in generations below the heads. (By sequence, such a version from a
    /// writer revoked later took the whole history with it at every replica, and readers,
    /// who leave the revoked version out, found nothing.)
    #[tokio::test]
    async fn a_version_far_ahead_takes_no_history_with_it() {
        let (replica, inode, first, root) = file().await;
        let mut head = first.version;
        let mut seq = first.inode.seq;
        for _ in 0..4 {
            seq += 1;
            let (id, put) = offer(&replica, &inode, &first, &root, seq, vec![head]);
            assert_eq!(put, Ok(true));
            head = id;
        }
        let before = held(&replica, &inode);
        assert_eq!(before.len(), 5);
        let far_seq = seq + 1000;
        let (far, put) = offer(&replica, &inode, &first, &root, far_seq, vec![head]);
        assert_eq!(put, Ok(true));
        let after = held(&replica, &inode);
        assert_eq!(after.len(), 6);
        assert!(before.iter().all(|v| after.contains(v)));
        assert!(after.contains(&far));
        // Generations still move the history on: eight more, and the far one and all
        // below it are out.
        let (mut head, mut seq) = (far, far_seq);
        let mut last = Vec::new();
        for _ in 0..KEEP_HISTORY {
            seq += 1;
            let (id, put) = offer(&replica, &inode, &first, &root, seq, vec![head]);
            assert_eq!(put, Ok(true));
            head = id;
            last.push(id);
        }
        let mut now = held(&replica, &inode);
        now.sort();
        last.sort();
        assert_eq!(now, last);
    }

    /// Forks put at once from many threads are checked one after another: no more than
    /// [`MAX_HEADS`] are taken.
    #[tokio::test]
    async fn forks_put_at_once_stay_within_the_bound() {
        let (replica, inode, first, root) = file().await;
        let forks: Vec<Vec<u8>> = (0..4 * MAX_HEADS)
            .map(|n| {
                let mut fork = Inode::clone(&first.inode);
                fork.seq = first.inode.seq + 1;
                fork.parents = vec![first.version];
                fork.mode = 0o600 + n as u32;
                Signed::sign(&fork, root.signing_key()).unwrap()
            })
            .collect();
        // Verified once first, so that the threads race on the checks, not on signatures.
        for bytes in &forks {
            replica
                .verified()
                .verify_as(bytes, &inode, keys::now(), &keys::Revocations::default())
                .unwrap();
        }
        let barrier = std::sync::Barrier::new(forks.len());
        let taken = std::thread::scope(|scope| {
            let handles: Vec<_> = forks
                .iter()
                .map(|bytes| {
                    let (replica, barrier) = (&replica, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        replica.put_version(&inode, bytes) == Ok(true)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().is_ok_and(|taken| taken))
                .filter(|taken| *taken)
                .count()
        });
        let heads = inode::heads(&replica.versions(&inode).unwrap()).len();
        assert_eq!(taken, MAX_HEADS);
        assert_eq!(heads, MAX_HEADS);
    }

    /// However a writer shapes its versions (here rounds of 16 forks, each merged by
    /// one version naming all of them), a replica keeps at most [`MAX_KEPT`], the heads
    /// and those nearest them.
    #[tokio::test]
    async fn a_replica_keeps_at_most_max_kept_versions() {
        let (replica, inode, first, root) = file().await;
        let mut head = first.version;
        let mut seq = first.inode.seq;
        let mut rounds: Vec<Vec<VersionId>> = Vec::new();
        let mut signed: Vec<(VersionId, Vec<u8>)> = Vec::new();
        for _ in 0..6 {
            seq += 1;
            let mut forks = Vec::new();
            for n in 0..MAX_HEADS {
                // Forks differ in their mode, so each signs to another version.
                let mut fork = Inode::clone(&first.inode);
                fork.seq = seq;
                fork.parents = vec![head];
                fork.mode = 0o600 + n as u32;
                let bytes = Signed::sign(&fork, root.signing_key()).unwrap();
                assert_eq!(replica.put_version(&inode, &bytes), Ok(true));
                let id = replica
                    .verified()
                    .verify_as(&bytes, &inode, keys::now(), &keys::Revocations::default())
                    .unwrap()
                    .version;
                forks.push(id);
                signed.push((id, bytes));
            }
            seq += 1;
            let (merge, put) = offer(&replica, &inode, &first, &root, seq, forks.clone());
            assert_eq!(put, Ok(true));
            forks.push(merge);
            rounds.push(forks);
            head = merge;
            assert!(held(&replica, &inode).len() <= MAX_KEPT);
        }
        let kept = held(&replica, &inode);
        assert_eq!(kept.len(), MAX_KEPT);
        // The last two rounds (generations 0 to 3 below the head) are all kept.
        for v in rounds[4].iter().chain(&rounds[5]) {
            assert!(kept.contains(v));
        }
        // One trimmed away, sent again (as repair would), is refused: taken, it would be
        // trimmed at the next write, or stand as a head.
        let (_, again) = signed
            .iter()
            .find(|(id, _)| rounds[2].contains(id) && !kept.contains(id))
            .unwrap();
        assert!(matches!(
            replica.put_version(&inode, again),
            Err(Refused::Stale { .. })
        ));
        assert_eq!(held(&replica, &inode).len(), MAX_KEPT);
    }
}
