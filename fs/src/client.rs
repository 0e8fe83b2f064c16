//! The file system as one principal sees it: paths, files and directories over
//! [`Blocks`], with keys following the tree.
//!
//! A path is found from the tree's root when this principal can open its *anchor* (a
//! readcap sealed to it), else from the longest of its prefixes that has an anchor it can
//! open, then down through encrypted directories. The root of
//! a tree's file system is the anchor of the prefix of a writer's writecap; `share` turns a
//! directory into an anchor with readcaps for other principals.
//!
//! Writes follow a fixed order so that a crash never leaves a reference to something that
//! was not stored: chunks, then the inode version, then the parent directory. A write is
//! acknowledged (its method returns) only after the blocks acknowledged every step, and is
//! durable then, or, where the blocks let this node's own store defer its commits, at the
//! next [`Client::sync`] (a mount's `fsync`; the daemon's commands sync before answering).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::{FutureExt, StreamExt, TryStreamExt};
use keys::{CapId, Chain, DataKey, Identity, Path, Principal, PublicIdentity, Readcap, Validity};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::blocks::{BlockError, Blocks};
use crate::chunk::{self, ChunkBuf, DEFAULT_CHUNK_SIZE};
use crate::dir::{self, Directory, Entry};
use crate::id::{InodeId, VersionId};
use crate::inode::{self, Binding, ChunkRef, Inode, Kind, MAX_LINK_TARGET, Signed, Verified};
use crate::memo::Memo;

/// How a [`Client`] reads and writes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plaintext bytes per chunk of new files. Default 1 MiB.
    pub chunk_size: usize,
    /// Chunks fetched, or stored, at once (sealed: at most one per core). Default 8.
    pub parallel: usize,
    /// Unsealed chunks an open file buffers before it seals and stores them (they are
    /// acknowledged only at `fsync`). Default 16.
    pub max_dirty_chunks: usize,
    /// How long stored chunks may wait for the version that refers to them; `fsync`
    /// refuses after that. Must be well under the collection grace period
    /// ([`crate::gc::Config::grace`]), half of it by default: 12 h.
    pub max_unsynced: std::time::Duration,
    /// Stage the directory changes of new files and removals instead of writing the
    /// directory at once. This client sees staged changes at once (walks, listings);
    /// [`Client::flush_staged`] writes them, each directory once, merged into its latest
    /// version, and [`Client::sync`] does before it syncs. A directory that many files
    /// are created in or removed from is then written once per flush instead of once per
    /// file (it is written whole: per file, that is quadratic in its size). Other nodes
    /// see the changes when they are flushed. Default false.
    pub stage_directories: bool,
    /// Most names a directory may hold: a new name in a full directory (a file, a
    /// directory or a link made there) is refused with [`Error::DirectoryFull`], as one
    /// whose names would take more than [`dir::MAX_DIRECTORY_BYTES`] is. At most, and by
    /// default, [`dir::MAX_ENTRIES`], half what a directory may be read with
    /// ([`dir::MAX_DECODED_ENTRIES`]): the merge of two full forks is still written and
    /// read back, and a directory past that is never written.
    pub max_entries: usize,
}

impl Config {
    /// The defaults.
    pub fn new() -> Self {
        Config {
            chunk_size: DEFAULT_CHUNK_SIZE,
            parallel: 8,
            max_dirty_chunks: 16,
            max_unsynced: MAX_UNSYNCED,
            stage_directories: false,
            max_entries: dir::MAX_ENTRIES,
        }
    }

    /// Sets the chunk size (at most [`chunk::MAX_CHUNK_SIZE`]).
    pub fn with_chunk_size(mut self, size: usize) -> Self {
        self.chunk_size = size.clamp(1, chunk::MAX_CHUNK_SIZE);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a file system operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing at the path.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The first missing path.
        path: String,
    },
    /// No readcap opens the path for this principal.
    #[error("{path}: permission denied: {reason}")]
    PermissionDenied {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// This principal holds no writecap covering the path.
    #[error("{path}: not authorised to write: this node holds no writecap covering {binding}")]
    NotAuthorized {
        /// The path.
        path: String,
        /// The path the writecap must cover.
        binding: String,
    },
    /// A directory was needed.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path.
        path: String,
    },
    /// A file was needed.
    #[error("{path}: is a directory")]
    IsADirectory {
        /// The path.
        path: String,
    },
    /// The path exists already.
    #[error("{path}: already exists")]
    Exists {
        /// The path.
        path: String,
    },
    /// The directory is not empty.
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The path.
        path: String,
    },
    /// A conflict copy or the root cannot be changed this way.
    #[error("{path}: read-only: {reason}")]
    ReadOnly {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A name or argument is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The directory holds the most names it may (see [`Config::max_entries`]).
    #[error("{path}: the directory holds the most names it may ({max})")]
    DirectoryFull {
        /// The directory.
        path: String,
        /// The most.
        max: usize,
    },
    /// A size or offset past the largest file.
    #[error("{path}: {size} bytes is over the largest file ({max} bytes)")]
    TooLarge {
        /// The file.
        path: String,
        /// The size asked for.
        size: u64,
        /// The largest.
        max: u64,
    },
    /// The replicas failed or refused.
    #[error("{path}: {source}")]
    Blocks {
        /// The path.
        path: String,
        /// What the blocks said.
        source: BlockError,
    },
    /// Stored contents do not open with their key (tampered, or a wrong key in a directory).
    #[error("{path}: contents do not open: {reason}")]
    Corrupt {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Reading the local source or writing the local destination failed.
    #[error("local I/O: {0}")]
    Io(String),
}

/// What `stat` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    /// The inode.
    pub inode: InodeId,
    /// File or directory.
    pub kind: Kind,
    /// Bytes of contents (for a directory, of its encoded entries).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, nanoseconds since the UNIX epoch (set by utimes, else when
    /// the contents last changed).
    pub mtime_ns: u64,
    /// When the shown version was signed, seconds since the UNIX epoch (the status
    /// change time: later than `mtime_ns` after a utimes into the past).
    #[serde(default)]
    pub changed_at: u64,
    /// The shown version's sequence number.
    pub seq: u64,
    /// The shown version.
    pub version: VersionId,
    /// Who signed it.
    pub writer: Principal,
    /// Unmerged versions beside the shown one (conflict copies).
    pub conflicts: usize,
    /// Whether the inode is an anchor (a tree's root or a shared directory).
    pub anchor: bool,
    /// Principals holding a readcap here.
    pub readers: Vec<Principal>,
    /// Number of chunks.
    pub chunks: usize,
    /// Whether this is a conflict copy (a losing head of a fork, read-only).
    #[serde(default)]
    pub conflict_copy: bool,
}

/// One name in a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirEntry {
    /// The name shown.
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// The inode.
    pub inode: InodeId,
    /// Size of the shown version (0 if it could not be fetched).
    pub size: u64,
    /// For a conflict copy: the version it shows.
    pub conflict: Option<VersionId>,
}

/// Bytes read from a file: a range of a stored chunk shared with the handle's cache, or
/// bytes of their own.
#[derive(Debug, Clone)]
pub struct Bytes(Shared);

#[derive(Debug, Clone)]
enum Shared {
    Within(Arc<Vec<u8>>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Bytes {
    /// The bytes in a vector of their own.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Shared::Within(chunk, range) => chunk[range].to_vec(),
            Shared::Owned(bytes) => bytes,
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Shared::Within(chunk, range) => &chunk[range.clone()],
            Shared::Owned(bytes) => bytes,
        }
    }
}

/// One inode on a walked path.
#[derive(Clone)]
struct Node {
    path: Path,
    binding: Binding,
    /// The inode's id, hashed from `binding` at first use (a walk asks for it several
    /// times per step): set again with [`Node::rebind`].
    id: std::sync::OnceLock<InodeId>,
    key: DataKey,
    kind: Kind,
    /// Every version fetched (empty for an inode not yet written).
    versions: Vec<Verified>,
    /// The version shown (a conflict copy shows a losing head).
    current: Option<Verified>,
    /// Epochs of the anchors above and at this node, as walked.
    governing: Vec<(InodeId, u64)>,
    /// The epochs its key was made in.
    key_epochs: Vec<(InodeId, u64)>,
    read_only: bool,
    /// Permission bits for the next version of a directory (chmod).
    mode_override: Option<u32>,
    /// Modification time for the next version of a directory (utimes; `chmod` keeps
    /// the current one): `None` is the time it is written.
    mtime_override: Option<u64>,
    /// The key before the last replacement, tried when `key` does not open a version.
    previous_key: Option<DataKey>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("path", &self.path.to_string())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Node {
    fn id(&self) -> InodeId {
        *self.id.get_or_init(|| self.binding.id())
    }

    /// Binds the node to another inode.
    fn rebind(&mut self, binding: Binding) {
        self.binding = binding;
        self.id = std::sync::OnceLock::new();
    }

    fn stale_key(&self) -> bool {
        self.governing.iter().any(|(anchor, epoch)| {
            let made = self
                .key_epochs
                .iter()
                .find(|(a, _)| a == anchor)
                .map_or(0, |(_, e)| *e);
            *epoch > made
        })
    }

    fn name(&self) -> String {
        self.path.segments().last().cloned().unwrap_or_default()
    }

    fn entry(&self) -> Entry {
        Entry {
            inode: self.id(),
            key: *self.key.as_bytes(),
            kind: self.kind,
            previous: self.previous_key.as_ref().map(|k| *k.as_bytes()),
        }
    }

    /// Replaces the key (a revocation made it stale), keeping the old one as `previous`
    /// until a version under the new one is written.
    fn new_key(&mut self) {
        let old = std::mem::replace(&mut self.key, DataKey::generate());
        self.previous_key = Some(old);
        self.key_epochs = self.governing.clone();
    }
}

/// An open file: reads and writes buffer here until [`Client::fsync`] makes them a new
/// version. Dropping a handle with unsynced writes loses them (they were never
/// acknowledged).
#[derive(Debug)]
pub struct Handle {
    /// From the start anchor to the file.
    nodes: Vec<Node>,
    size: u64,
    chunk_size: usize,
    /// Stored chunks; entries for indices in `dirty` or in a batch under way are
    /// placeholders.
    refs: Vec<ChunkRef>,
    dirty: BTreeMap<u64, ChunkBuf>,
    /// Something changed since the last version.
    changed: bool,
    mode: u32,
    /// Bytes changed since the last version (else only metadata did: the version is
    /// then made on the latest one, keeping its modification time).
    data_changed: bool,
    /// The next version's modification time, when set (utimes) after the last write.
    mtime: Option<u64>,
    /// The last version was made on a newer one than this handle had read.
    rebased: bool,
    /// Plaintext of stored chunks: the last read, and the next ones being fetched.
    cache: ReadCache,
    /// When the first chunk stored since the last version was stored.
    unsynced_since: Option<std::time::Instant>,
    /// Batches of chunks being sealed and stored, oldest first (at most
    /// [`BATCHES_IN_FLIGHT`]): each gives the refs of its chunks by index.
    storing: std::collections::VecDeque<Storing>,
    /// Why storing this handle's chunks failed: it then refuses to make a version.
    failed: Option<Error>,
    /// A new file its directory does not name yet.
    unlinked: bool,
}

/// The default of [`Config::max_unsynced`]: chunks are collected as garbage when
/// unreferenced for [`crate::gc::Config::grace`] (24 h by default), so an `fsync` later
/// than this refuses rather than commit a version whose chunks may be gone.
pub const MAX_UNSYNCED: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// How many stored chunks a sequential reader has fetched ahead of it: each is opened on
/// a blocking thread while the reader copies out the one before. Two kept a FUSE reader
/// waiting on chunks with a core idle (fio, 1 GiB: 450-650 MiB/s); four keep both cores
/// busy (690-850 MiB/s, at 4 MiB of memory per reader); eight read no faster.
const READ_AHEAD: u64 = 4;

/// How many chunks of a local file being put are read ahead of the one being written.
const PUT_READ_AHEAD: usize = 4;

/// How many chunks of a file being got wait to be written to the local file.
const GET_WRITE_BEHIND: usize = 4;

/// Batches of written chunks a handle seals and stores in the background while its writer
/// goes on: one being sealed, one being stored.
const BATCHES_IN_FLIGHT: usize = 2;

/// A batch of chunks being sealed and stored: the refs of its chunks by index.
type Storing = tokio::task::JoinHandle<Result<BTreeMap<u64, ChunkRef>, Error>>;

/// A chunk being fetched and opened in the background.
type Fetching = tokio::task::JoinHandle<Result<Vec<u8>, Error>>;

/// A handle's plaintext of stored chunks: the one read last (a read of a few KiB must not
/// open a whole chunk again), and the chunks after it, fetched ahead of a sequential
/// reader.
#[derive(Debug, Default)]
struct ReadCache {
    last: Option<(u64, Arc<Vec<u8>>)>,
    ahead: std::collections::VecDeque<(u64, Fetching)>,
}

impl ReadCache {
    /// Forgets everything (the chunks changed); fetches under way are stopped.
    fn clear(&mut self) {
        self.last = None;
        for (_, fetching) in self.ahead.drain(..) {
            fetching.abort();
        }
    }
}

impl Drop for ReadCache {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Handle {
    /// Bytes in the file, including unsynced writes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Permission bits, including an unsynced change.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Whether the last [`Client::fsync`], which changed only the mode or the time, made
    /// its version on a newer one than this handle had read (so bytes read or cached
    /// through it may be stale).
    pub fn rebased(&self) -> bool {
        self.rebased
    }

    /// A modification time set (utimes) that no version holds yet.
    pub fn mtime_set(&self) -> Option<u64> {
        self.mtime
    }

    /// Whether writes are buffered that no version holds yet.
    pub fn is_dirty(&self) -> bool {
        self.changed
    }

    /// Whether storing its writes failed: it makes no version any more.
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The file's metadata as of its last version, with the handle's size and mode.
    pub fn stat(&self) -> Stat {
        let mut stat = stat_of(self.node());
        stat.size = self.size;
        stat.mode = self.mode;
        if let Some(mtime) = self.mtime {
            stat.mtime_ns = mtime;
        }
        stat
    }

    /// Marks the bytes as changed, before any is: the next version's time is its own.
    fn touch_data(&mut self) {
        self.changed = true;
        self.data_changed = true;
        self.mtime = None;
    }

    fn node(&self) -> &Node {
        // A handle always holds at least the file's node.
        &self.nodes[self.nodes.len() - 1]
    }

    /// The path the file was opened at (or moved to through this client since).
    pub fn path(&self) -> &Path {
        &self.node().path
    }
}

/// The file system for one principal.
#[derive(Debug)]
pub struct Client<B> {
    blocks: Arc<B>,
    /// The block layer's revocation lists: this node's own writecaps are checked
    /// against them too.
    revocations: keys::SharedRevocations,
    identity: Arc<Identity>,
    chains: RwLock<Vec<Chain>>,
    config: Config,
    /// Directories decoded before, by inode and single head version, with the key that
    /// opened them: a version never changes, and walks read the same directories again
    /// and again. A hit counts only for a walk that brings that same key, as if it had
    /// opened the chunks itself (a stale parent's old key must fail here as it fails on
    /// the chunks, not go on to seal new versions under it).
    dirs: Memo<(InodeId, VersionId), (Arc<Directory>, DataKey)>,
    /// Keys the readcaps of anchor versions opened (one X25519 agreement each).
    anchor_keys: Memo<VersionId, DataKey>,
    /// Directory changes not written yet, by directory (see
    /// [`Config::stage_directories`]).
    staged: std::sync::Mutex<HashMap<InodeId, Staged>>,
    /// One flush at a time per directory (a flush may flush the directories above).
    flushing: std::sync::Mutex<HashMap<InodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// When a walk last asked afresh for a directory that lacked the name it looked for.
    asked_afresh: std::sync::Mutex<HashMap<InodeId, std::time::Instant>>,
}

/// Changes to one directory that are not written yet, and those written lately.
#[derive(Debug)]
struct Staged {
    /// The walk to the directory when its first change was staged.
    nodes: Vec<Node>,
    /// The change to each name (a later change to a name replaces the earlier one).
    changes: BTreeMap<String, Change>,
    /// Changes written lately, oldest first, each with the sequence number of the version
    /// that holds them and when: a walk that read an older version (before the write)
    /// still sees them.
    written: std::collections::VecDeque<(u64, std::time::Instant, BTreeMap<String, Change>)>,
    /// Set while flushes of the directory fail: it is then tried again later and later
    /// (see [`Failing::retry_at`]), and its error is reported to what its changes concern,
    /// not to every sync.
    failing: Option<Failing>,
    /// Directories whose staged removal a flush gave up (they had gained names made
    /// elsewhere), and when: kept for a while (see [`Staged::prune`]) for a flush on
    /// behalf of one of them to report.
    given_up: Vec<(Path, std::time::Instant)>,
    /// Directories whose removal from this directory was written but whose check
    /// afterwards (see [`Client::relink_if_filled`]) could not be made: checked at the
    /// next flush.
    rechecks: Vec<Recheck>,
}

/// A directory to be checked, in a staged directory, for names made in it while it was
/// removed from there (see [`Client::relink_if_filled`]).
#[derive(Debug, Clone)]
struct Recheck {
    /// Its name there.
    name: String,
    entry: Entry,
    /// Whether this client removed it (else it wrote new names in it, and could not
    /// check afterwards that it was still linked).
    removal: bool,
    /// Checks that failed so far.
    attempts: u32,
}

/// Checks of a removed directory that fail in a row before it is given up (logged as an
/// error): with the backoff of failing flushes, about a quarter of an hour.
const MAX_RECHECK_ATTEMPTS: u32 = 20;

/// Passes of [`Client::relink_settled`] before it gives up (each one linked a directory
/// back that was removed again).
const RELINK_PASSES: usize = 8;

/// Levels of [`Client::flush_inside`] (directories removed with directories inside them,
/// each with changes of its own staged): a bound, not a depth trees reach.
const MAX_FLUSH_INSIDE: usize = 64;

/// Flushes of one directory that failed in a row.
#[derive(Debug)]
struct Failing {
    times: u32,
    error: String,
    /// Before this, flushes of other directories leave it alone.
    retry_at: std::time::Instant,
}

impl Failing {
    /// The wait after `times` failures in a row: 1 s, doubling up to [`FLUSH_RETRY_MAX`].
    fn backoff(times: u32) -> std::time::Duration {
        let doublings = times.saturating_sub(1).min(16);
        (std::time::Duration::from_secs(1) * (1u32 << doublings)).min(FLUSH_RETRY_MAX)
    }
}

/// The longest wait before a directory whose flushes fail is tried again unasked.
const FLUSH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Which staged directories a flush writes, and whose errors it returns.
#[derive(Debug, Clone, Copy)]
enum Flush<'a> {
    /// Every one; the first error.
    All,
    /// Those not waiting to be tried again after failing; none (each is logged).
    Due,
    /// Those due, and every one at, above or below one of these paths whether due or
    /// not; the first error among the latter.
    For(&'a [&'a Path]),
}

impl Flush<'_> {
    /// Whether a flush of this kind writes the directory at `path` (`waiting` if it
    /// waits to be tried again), and whether it reports its error.
    fn takes(&self, path: &Path, waiting: bool) -> (bool, bool) {
        match self {
            Flush::All => (true, true),
            Flush::Due => (!waiting, false),
            Flush::For(paths) => {
                let related = paths
                    .iter()
                    .any(|p| p.starts_with(path) || path.starts_with(p));
                (related || !waiting, related)
            }
        }
    }
}

impl Staged {
    /// Nothing staged yet for the directory last in `nodes` (the walk to it).
    fn new(nodes: &[Node]) -> Self {
        Staged {
            nodes: nodes.to_vec(),
            changes: BTreeMap::new(),
            written: std::collections::VecDeque::new(),
            failing: None,
            given_up: Vec::new(),
            rechecks: Vec::new(),
        }
    }

    /// The changes a reader of a version with sequence number `seq` does not see in it,
    /// oldest first.
    fn unseen(&self, seq: u64) -> impl DoubleEndedIterator<Item = &BTreeMap<String, Change>> {
        self.written
            .iter()
            .filter(move |(written, _, _)| *written > seq)
            .map(|(_, _, changes)| changes)
            .chain(std::iter::once(&self.changes))
    }

    /// Forgets written changes no walk can still be behind.
    fn prune(&mut self) {
        while self
            .written
            .front()
            .is_some_and(|(_, at, _)| at.elapsed() > KEEP_WRITTEN)
            || self.written.len() > KEEP_WRITTEN_FLUSHES
        {
            self.written.pop_front();
        }
        self.given_up.retain(|(_, at)| at.elapsed() <= KEEP_WRITTEN);
        let over = self.given_up.len().saturating_sub(KEEP_WRITTEN_FLUSHES);
        self.given_up.drain(..over);
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.written.is_empty()
            && self.given_up.is_empty()
            && self.rechecks.is_empty()
    }

    /// Whether a flush has anything to write or check.
    fn has_work(&self) -> bool {
        !self.changes.is_empty() || !self.rechecks.is_empty()
    }

    /// The inodes its staged changes remove.
    fn removed(&self) -> impl Iterator<Item = &InodeId> {
        self.changes.values().flat_map(|c| match c {
            Change::Remove(inodes) => inodes.as_slice(),
            Change::Put { .. } => &[],
        })
    }
}

/// Whether directory `id` has staged changes not written yet.
fn has_changes(staged: &HashMap<InodeId, Staged>, id: &InodeId) -> bool {
    staged.get(id).is_some_and(|s| !s.changes.is_empty())
}

/// How long written changes stay visible to walks that read an older version.
const KEEP_WRITTEN: std::time::Duration = std::time::Duration::from_secs(10);
/// The most flushes per directory whose changes are kept that way.
const KEEP_WRITTEN_FLUSHES: usize = 64;

/// A staged change to one name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// The name names this entry, a new file, in place of any of `replaces` (the inodes
    /// this client removed from the name before): another inode found under the name
    /// (made meanwhile by another writer) keeps it, and the new file is linked beside it
    /// under a conflict name, so neither is lost.
    Put {
        entry: Entry,
        replaces: Vec<InodeId>,
    },
    /// The name is removed, if it still names one of these inodes.
    Remove(Vec<InodeId>),
}

impl Change {
    /// Applies the change to `name` in `dir`; whether that changed anything.
    fn apply(&self, dir: &mut Directory, name: &str) -> bool {
        match self {
            Change::Put { entry, replaces } => {
                let name = link_name(dir, name, entry, replaces);
                dir.entries.insert(name, entry.clone()).as_ref() != Some(entry)
            }
            Change::Remove(inodes) => {
                let named = dir
                    .entries
                    .get(name)
                    .is_some_and(|e| inodes.contains(&e.inode));
                if named {
                    dir.remove_name(name);
                }
                named
            }
        }
    }

    /// This change after `earlier` to the same name: what both do, as one change.
    fn after(self, earlier: Option<Change>) -> Change {
        let (mut gone, earlier_entry) = match earlier {
            None => return self,
            Some(Change::Remove(inodes)) => (inodes, None),
            Some(Change::Put { entry, replaces }) => (replaces, Some(entry.inode)),
        };
        gone.extend(earlier_entry);
        match self {
            Change::Put {
                entry,
                mut replaces,
            } => {
                replaces.extend(gone.into_iter().filter(|i| *i != entry.inode));
                replaces.sort();
                replaces.dedup();
                Change::Put { entry, replaces }
            }
            Change::Remove(mut inodes) => {
                inodes.extend(gone);
                inodes.sort();
                inodes.dedup();
                Change::Remove(inodes)
            }
        }
    }
}

/// The name a new file `entry` is linked under in `dir` for `name`: `name` unless it
/// names another inode (not one of `replaces`), then a conflict name beside it.
fn link_name(dir: &Directory, name: &str, entry: &Entry, replaces: &[InodeId]) -> String {
    match dir.entries.get(name) {
        Some(there) if there.inode != entry.inode && !replaces.contains(&there.inode) => {
            dir::conflict_name(name, &entry.inode)
        }
        _ => name.to_string(),
    }
}

/// A walk that finds a name missing asks for the directory afresh (another node may have
/// just written it), but not more often than this per directory: a burst of lookups of
/// new names (a kernel's before each create) would otherwise fetch it for every one.
const ASK_AFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Directories whose last fresh asking [`Client`] remembers.
const ASKED_AFRESH_ENTRIES: usize = 4096;

/// Budget of [`Client`]'s decoded directories, in encoded bytes (decoded, a few times
/// more).
const DIRECTORY_MEMO_BYTES: usize = 16 << 20;
/// Anchor keys a [`Client`] remembers.
const KEY_MEMO_ENTRIES: usize = 4096;

const NO_KEY: &str = "no readcap here is sealed to this node";

fn blocks_err(path: &Path) -> impl FnOnce(BlockError) -> Error + '_ {
    move |source| Error::Blocks {
        path: path.to_string(),
        source,
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `path` (at or below `from`) with `from` replaced by `to`.
fn rebased(path: &Path, from: &Path, to: &Path) -> Result<Path, Error> {
    let mut out = to.clone();
    for segment in path.segments().iter().skip(from.segments().len()) {
        out = out
            .join(segment)
            .map_err(|e| Error::Invalid(format!("{to}/…/{segment}: {e}")))?;
    }
    Ok(out)
}

/// The directory entry `change` removes from `dir` under `name`, if it removes one.
fn removes_dir<'a>(dir: &'a Directory, name: &str, change: &Change) -> Option<&'a Entry> {
    let Change::Remove(inodes) = change else {
        return None;
    };
    dir.entries
        .get(name)
        .filter(|e| e.kind == Kind::Dir && inodes.contains(&e.inode))
}

/// Sets the path of the node last in `nodes` to its name in the one before it (which
/// may have been renamed or linked back under another name meanwhile).
fn follow_parent(nodes: &mut [Node]) -> Result<(), Error> {
    let [.., parent, node] = nodes else {
        return Ok(());
    };
    let name = node.name();
    node.path = parent
        .path
        .join(&name)
        .map_err(|e| Error::Invalid(format!("{}/{name}: {e}", parent.path)))?;
    Ok(())
}

/// The highest sequence number of a node's versions (0 before the first).
fn seq_of(node: &Node) -> u64 {
    node.versions.iter().map(|v| v.inode.seq).max().unwrap_or(0)
}

fn chunk_count(size: u64, chunk_size: usize) -> usize {
    usize::try_from(size.div_ceil(chunk_size as u64)).unwrap_or(usize::MAX)
}

impl<B: Blocks> Client<B> {
    /// A client writing as `identity` with the writecap `chains` it holds.
    pub fn new(
        blocks: Arc<B>,
        identity: Arc<Identity>,
        chains: Vec<Chain>,
        config: Config,
    ) -> Self {
        Client {
            revocations: blocks.revocations(),
            blocks,
            identity,
            chains: RwLock::new(chains),
            config,
            dirs: Memo::new(DIRECTORY_MEMO_BYTES),
            anchor_keys: Memo::new(KEY_MEMO_ENTRIES),
            staged: std::sync::Mutex::default(),
            flushing: std::sync::Mutex::default(),
            asked_afresh: std::sync::Mutex::default(),
        }
    }

    /// The blocks underneath.
    pub fn blocks(&self) -> &Arc<B> {
        &self.blocks
    }

    /// Adds a writecap chain (e.g. one installed after start).
    pub fn add_chain(&self, chain: Chain) {
        if let Ok(mut chains) = self.chains.write()
            && !chains.contains(&chain)
        {
            chains.push(chain);
        }
    }

    /// Whether this principal holds a writecap covering `path` or some path below it.
    pub fn can_write_under(&self, path: &Path) -> bool {
        let me = self.me();
        let now = keys::now();
        let chains = self.chains.read().map(|c| c.clone()).unwrap_or_default();
        chains.iter().any(|c| {
            c.prefix().is_some_and(|prefix| {
                (path.starts_with(prefix) || prefix.starts_with(path))
                    && c.verify_remembering(prefix, &me, now, &self.revocations.read())
                        .is_ok()
            })
        })
    }

    fn me(&self) -> Principal {
        self.identity.principal()
    }

    fn chain_for(&self, path: &Path, binding: &Path) -> Result<Chain, Error> {
        let now = keys::now();
        let me = self.me();
        let chains = self.chains.read().map(|c| c.clone()).unwrap_or_default();
        chains
            .into_iter()
            .find(|c| {
                c.verify_remembering(binding, &me, now, &self.revocations.read())
                    .is_ok()
            })
            .ok_or_else(|| Error::NotAuthorized {
                path: path.to_string(),
                binding: binding.to_string(),
            })
    }

    // ---- reading ----

    async fn versions(&self, path: &Path, id: InodeId) -> Result<Vec<Verified>, Error> {
        self.blocks.get_versions(id).await.map_err(blocks_err(path))
    }

    /// [`Client::versions`] of an inode a directory names (see
    /// [`Blocks::get_versions_expected`]).
    async fn versions_expected(&self, path: &Path, id: InodeId) -> Result<Vec<Verified>, Error> {
        self.blocks
            .get_versions_expected(id)
            .await
            .map_err(blocks_err(path))
    }

    /// Opens the anchor's key with a readcap sealed to this principal.
    fn open_anchor(&self, winner: &Verified) -> Result<DataKey, String> {
        if let Some(key) = self.anchor_keys.get(&winner.version) {
            return Ok(key);
        }
        let me = self.me();
        let cap = winner
            .inode
            .readcaps
            .iter()
            .find(|c| c.recipient() == &me)
            .ok_or_else(|| NO_KEY.to_string())?;
        let key = cap
            .open(&self.identity, winner.id.as_bytes())
            .map_err(|e| e.to_string())?;
        self.anchor_keys.put(winner.version, key.clone(), 1);
        Ok(key)
    }

    /// Walks as far as `path` exists: the nodes from the anchor it starts at, and the
    /// segments that were not found. Something missing or closed may only be a view the
    /// blocks remembered from before another node's write: then the walk is made once
    /// more with what was in the way asked afresh.
    async fn walk_partial(&self, path: &Path) -> Result<(Vec<Node>, Vec<String>), Error> {
        match self.walk_partial_once(path).await {
            Ok((nodes, missing)) if !missing.is_empty() => {
                match nodes.last() {
                    Some(last) if !self.ask_afresh(last.id()) => return Ok((nodes, missing)),
                    Some(last) => self.blocks.forget(last.id()),
                    None => self.forget_anchors(path),
                }
                self.walk_partial_once(path).await
            }
            Err(Error::PermissionDenied { .. }) => {
                self.forget_anchors(path);
                self.walk_partial_once(path).await
            }
            other => other,
        }
    }

    /// Whether to ask for directory `id` afresh now: not if that was done less than
    /// [`ASK_AFRESH_EVERY`] ago.
    fn ask_afresh(&self, id: InodeId) -> bool {
        let Ok(mut asked) = self.asked_afresh.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        if asked
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < ASK_AFRESH_EVERY)
        {
            return false;
        }
        if asked.len() >= ASKED_AFRESH_ENTRIES {
            asked.retain(|_, at| now.duration_since(*at) < ASK_AFRESH_EVERY);
            if asked.len() >= ASKED_AFRESH_ENTRIES {
                asked.clear();
            }
        }
        asked.insert(id, now);
        true
    }

    fn forget_anchors(&self, path: &Path) {
        let mut prefix = Some(path.clone());
        while let Some(p) = prefix {
            prefix = p.parent();
            self.blocks.forget(Binding::anchor(p).id());
        }
    }

    async fn walk_partial_once(&self, path: &Path) -> Result<(Vec<Node>, Vec<String>), Error> {
        let mut prefixes = vec![path.clone()];
        while let Some(parent) = prefixes.last().and_then(Path::parent) {
            prefixes.push(parent);
        }
        // The tree's root first: whoever opens it walks from there, and the anchors of the
        // longer prefixes (a request each, for names that mostly have none) are asked for
        // only when it stays closed.
        let root = prefixes[prefixes.len() - 1].clone();
        let root_versions = self
            .versions(&root, Binding::anchor(root.clone()).id())
            .await;
        let root_opens = root_versions.as_ref().is_ok_and(|versions| {
            inode::winner(versions).is_some_and(|w| self.open_anchor(w).is_ok())
        });
        let mut anchors: Vec<Result<Vec<Verified>, Error>> = if root_opens {
            prefixes[..prefixes.len() - 1]
                .iter()
                .map(|_| Ok(Vec::new()))
                .collect()
        } else {
            futures::stream::iter(prefixes[..prefixes.len() - 1].to_vec())
                .map(|p| {
                    async move {
                        let id = Binding::anchor(p.clone()).id();
                        self.versions(&p, id).await
                    }
                    .boxed()
                })
                .buffered(self.config.parallel)
                .collect()
                .await
        };
        anchors.push(root_versions);
        let mut denied = None;
        let mut start = None;
        for (prefix, found) in prefixes.iter().zip(anchors) {
            let versions = found?;
            let Some(winner) = inode::winner(&versions).cloned() else {
                continue;
            };
            match self.open_anchor(&winner) {
                Ok(key) => {
                    start = Some((prefix.clone(), versions, winner, key));
                    break;
                }
                Err(reason) => {
                    denied.get_or_insert((prefix.clone(), reason));
                }
            }
        }
        let Some((prefix, versions, winner, key)) = start else {
            return match denied {
                Some((prefix, reason)) => Err(Error::PermissionDenied {
                    path: prefix.to_string(),
                    reason,
                }),
                None => Ok((Vec::new(), path.segments().to_vec())),
            };
        };
        let anchor_id = winner.id;
        let governing = vec![(anchor_id, winner.inode.epoch)];
        let mut nodes = vec![Node {
            path: prefix.clone(),
            binding: winner.inode.binding.clone(),
            id: std::sync::OnceLock::new(),
            key,
            kind: winner.inode.kind,
            key_epochs: winner.inode.key_epochs.clone(),
            current: Some(winner),
            versions,
            governing,
            read_only: false,
            mode_override: None,
            mtime_override: None,
            previous_key: None,
        }];
        let rest = &path.segments()[prefix.segments().len()..];
        for (i, name) in rest.iter().enumerate() {
            let parent = &nodes[nodes.len() - 1];
            if parent.kind != Kind::Dir {
                return Err(Error::NotADirectory {
                    path: parent.path.to_string(),
                });
            }
            let dir = self.read_dir_shared(parent).await?;
            let child_path = parent
                .path
                .join(name)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let child = match self.entry_in(parent, &dir, name) {
                Some(entry) => self.child(parent, child_path, &entry).await?,
                None => match self.conflict_copy(parent, &dir, name, child_path).await? {
                    Some(node) => node,
                    None => return Ok((nodes, rest[i..].to_vec())),
                },
            };
            nodes.push(child);
        }
        Ok((nodes, Vec::new()))
    }

    async fn child(&self, parent: &Node, path: Path, entry: &Entry) -> Result<Node, Error> {
        let versions = self.versions_expected(&path, entry.inode).await?;
        let winner = inode::winner(&versions)
            .cloned()
            .ok_or_else(|| Error::Blocks {
                path: path.to_string(),
                source: BlockError::NotFound,
            })?;
        let mut governing = parent.governing.clone();
        if winner.inode.binding.is_anchor() {
            governing.retain(|(a, _)| a != &winner.id);
            governing.push((winner.id, winner.inode.epoch));
        }
        Ok(Node {
            path,
            binding: winner.inode.binding.clone(),
            id: std::sync::OnceLock::new(),
            key: entry.data_key(),
            kind: winner.inode.kind,
            key_epochs: winner.inode.key_epochs.clone(),
            current: Some(winner),
            versions,
            governing,
            read_only: false,
            mode_override: None,
            mtime_override: None,
            previous_key: entry.previous.map(DataKey::from_bytes),
        })
    }

    /// `name.conflict-<8 hex digits>`: a losing head of a forked file in `dir` (a
    /// directory's forks are merged: none of its heads is a copy).
    async fn conflict_copy(
        &self,
        parent: &Node,
        dir: &Directory,
        name: &str,
        path: Path,
    ) -> Result<Option<Node>, Error> {
        let Some((base, _)) = dir::parse_conflict_copy_name(name) else {
            return Ok(None);
        };
        // Only files have conflict copies, as listings show them: the forks of a
        // directory are merged, and a copy of one of its heads named here could be
        // removed, which wrote the winner's names alone over both heads (the other's
        // names were lost).
        let file = |n: &str| {
            self.entry_in(parent, dir, n)
                .filter(|e| e.kind == Kind::File)
        };
        let mut candidates: Vec<(String, Entry)> = file(base)
            .map(|e| (base.to_string(), e))
            .into_iter()
            .collect();
        // A long name is cut short in its copies' names: the longer files whose names
        // are cut to this base (only names that long: a made-up name with a short base
        // costs no fetch of every file it begins).
        let longer = (std::ops::Bound::Excluded(base), std::ops::Bound::Unbounded);
        candidates.extend(
            dir.entries
                .range::<str, _>(longer)
                .take_while(|(n, _)| n.starts_with(base))
                .filter(|(n, _)| dir::conflict_copy_base(n) == base)
                .filter_map(|(n, _)| file(n).map(|entry| (n.clone(), entry))),
        );
        for (shown, entry) in candidates {
            let mut node = match self.child(parent, path.clone(), &entry).await {
                Ok(node) => node,
                // Another long name it may be: one that cannot be read now is not this
                // copy's file, or the copy is not there either.
                Err(_) if shown != base => continue,
                Err(e) => return Err(e),
            };
            let heads = inode::heads(&node.versions);
            let Some(head) = heads
                .iter()
                .skip(1)
                .find(|h| dir::conflict_copy_name(&shown, &h.version) == name)
                .map(|h| (*h).clone())
            else {
                continue;
            };
            node.current = Some(head);
            node.read_only = true;
            return Ok(Some(node));
        }
        Ok(None)
    }

    async fn walk(&self, path: &Path) -> Result<Vec<Node>, Error> {
        let (nodes, missing) = self.walk_partial(path).await?;
        if nodes.is_empty() {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        }
        if let Some(first) = missing.first() {
            let found = nodes
                .last()
                .map_or_else(|| Path::root_of(*path.root()), |n| n.path.clone());
            let missing_path = if nodes.is_empty() {
                path.to_string()
            } else {
                found
                    .join(first)
                    .map_or_else(|_| path.to_string(), |p| p.to_string())
            };
            return Err(Error::NotFound { path: missing_path });
        }
        Ok(nodes)
    }

    /// What a version that replaces every head of `node` must hold: for a directory with
    /// more than one head, the merge of all of them (and true); else the winner's bytes.
    /// (Sharing or revoking a forked directory wrote the winner's entries alone under all
    /// heads, and the other head's names were gone.)
    async fn contents_to_rewrite(&self, node: &Node) -> Result<(Vec<u8>, bool), Error> {
        if node.kind == Kind::Dir && inode::heads(&node.versions).len() > 1 {
            let merged = self.read_dir(node).await?;
            let bytes = merged.encode().map_err(|e| Error::Invalid(e.to_string()))?;
            return Ok((bytes, true));
        }
        Ok((self.read_all(node).await?, false))
    }

    /// The plaintext of a node's shown version.
    async fn read_all(&self, node: &Node) -> Result<Vec<u8>, Error> {
        let Some(current) = &node.current else {
            return Ok(Vec::new());
        };
        self.read_version(node, current).await
    }

    async fn read_version(&self, node: &Node, version: &Verified) -> Result<Vec<u8>, Error> {
        let id = node.id();
        let chunks: Vec<Vec<u8>> =
            futures::stream::iter(version.inode.chunks.clone().into_iter().enumerate())
                .map(|(i, c)| self.fetch_chunk(node, &node.key, id, i as u64, c).boxed())
                .buffered(self.config.parallel)
                .try_collect()
                .await?;
        Ok(chunks.concat())
    }

    async fn fetch_chunk(
        &self,
        node: &Node,
        key: &DataKey,
        id: InodeId,
        index: u64,
        chunk: ChunkRef,
    ) -> Result<Vec<u8>, Error> {
        fetch_and_open(
            self.blocks.clone(),
            node.path.clone(),
            keys_for(node, key),
            id,
            index,
            chunk,
        )
        .await
    }

    /// A directory's entries, forks merged, to change.
    async fn read_dir(&self, node: &Node) -> Result<Directory, Error> {
        Ok(Arc::unwrap_or_clone(self.read_dir_shared(node).await?))
    }

    /// A directory's entries, forks merged; remembered when a single version is shown.
    async fn read_dir_shared(&self, node: &Node) -> Result<Arc<Directory>, Error> {
        let heads = inode::heads(&node.versions);
        // Only a walk with a single key: with a previous key beside it (a re-key under
        // way), which of the two opens the version is for the chunks to say.
        let single = match heads.as_slice() {
            [only] if node.previous_key.is_none() => {
                Some(((node.id(), only.version), only.inode.size))
            }
            _ => None,
        };
        if let Some((id, _)) = &single
            && let Some((dir, opened_with)) = self.dirs.get(id)
            && opened_with == node.key
        {
            return Ok(dir);
        }
        let dir = Arc::new(self.read_dir_uncached(node, &heads).await?);
        if let Some((id, size)) = single {
            // Read with `node.key` alone: that is the key that opened it.
            self.remember_dir(id, dir.clone(), node.key.clone(), size);
        }
        Ok(dir)
    }

    fn remember_dir(
        &self,
        id: (InodeId, VersionId),
        dir: Arc<Directory>,
        opened_with: DataKey,
        size: u64,
    ) {
        let weight = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .saturating_add(64);
        self.dirs.put(id, (dir, opened_with), weight);
    }

    async fn read_dir_uncached(
        &self,
        node: &Node,
        heads: &[&Verified],
    ) -> Result<Directory, Error> {
        let Some(first) = heads.first() else {
            return Ok(Directory::default());
        };
        let mut merged = self.read_dir_version(node, first).await?;
        for other in heads.iter().skip(1) {
            let theirs = self.read_dir_version(node, other).await?;
            // The newest common ancestor still held is the base (the two sides may be
            // any number of versions deep: a base only where both named one parent
            // merged against nothing, and names one side had removed came back);
            // without one, merge against nothing (a union: nothing is lost).
            let ours: std::collections::HashSet<VersionId> = ancestors(&node.versions, first)
                .iter()
                .map(|v| v.version)
                .collect();
            let base = ancestors(&node.versions, other)
                .into_iter()
                .filter(|v| ours.contains(&v.version))
                .max_by(|a, b| inode::order(a, b));
            let base = match base {
                Some(b) => self.read_dir_version(node, b).await?,
                None => Directory::default(),
            };
            merged = dir::merge(&base, &merged, &theirs);
        }
        Ok(merged)
    }

    /// One version of a directory, refused before any chunk is fetched when it is larger
    /// than a directory may be (a co-writer's 16 GiB "directory" is not read into memory).
    async fn read_dir_version(&self, node: &Node, version: &Verified) -> Result<Directory, Error> {
        let corrupt = |reason: String| Error::Corrupt {
            path: node.path.to_string(),
            reason,
        };
        if version.inode.size > dir::MAX_DECODED_BYTES as u64 {
            return Err(corrupt(format!(
                "a directory of {} bytes (at most {})",
                version.inode.size,
                dir::MAX_DECODED_BYTES
            )));
        }
        let bytes = self.read_version(node, version).await?;
        Directory::decode(&bytes).map_err(|e| corrupt(e.to_string()))
    }

    /// The entry `name` has in directory `node` (read as `dir`) as this client sees it:
    /// the latest change staged for it or written since the version read, else `dir`'s.
    fn entry_in(&self, node: &Node, dir: &Directory, name: &str) -> Option<Entry> {
        let committed = dir.entries.get(name);
        let change = self.staged.lock().ok().and_then(|staged| {
            staged.get(&node.id()).and_then(|s| {
                s.unseen(seq_of(node))
                    .rev()
                    .find_map(|changes| changes.get(name))
                    .cloned()
            })
        });
        match change {
            Some(Change::Put { entry, replaces }) => match committed {
                // Another writer's file keeps the name (this one is linked beside it).
                Some(there) if there.inode != entry.inode && !replaces.contains(&there.inode) => {
                    Some(there.clone())
                }
                _ => Some(entry),
            },
            Some(Change::Remove(gone)) => committed.filter(|e| !gone.contains(&e.inode)).cloned(),
            None => committed.cloned(),
        }
    }

    /// `dir` (directory `node`'s) with the changes staged for it or written since.
    fn with_staged(&self, node: &Node, dir: Arc<Directory>) -> Arc<Directory> {
        let Ok(staged) = self.staged.lock() else {
            return dir;
        };
        let Some(s) = staged.get(&node.id()) else {
            return dir;
        };
        let mut dir = Arc::unwrap_or_clone(dir);
        for changes in s.unseen(seq_of(node)) {
            for (name, change) in changes {
                change.apply(&mut dir, name);
            }
        }
        Arc::new(dir)
    }

    /// The metadata of `path`.
    pub async fn stat(&self, path: &Path) -> Result<Stat, Error> {
        let nodes = self.walk(path).await?;
        let node = &nodes[nodes.len() - 1];
        Ok(stat_of(node))
    }

    /// The entries of the directory at `path`, with conflict copies of forked files.
    pub async fn readdir(&self, path: &Path) -> Result<Vec<DirEntry>, Error> {
        let nodes = self.walk(path).await?;
        let node = &nodes[nodes.len() - 1];
        if node.kind != Kind::Dir {
            return Err(Error::NotADirectory {
                path: path.to_string(),
            });
        }
        let dir = self.with_staged(node, self.read_dir_shared(node).await?);
        let listed: Vec<Vec<DirEntry>> = futures::stream::iter(dir.entries.clone())
            .map(|(name, entry)| {
                async move {
                    let child_path = node.path.join(&name).ok();
                    let versions = match child_path {
                        Some(p) => self
                            .versions_expected(&p, entry.inode)
                            .await
                            .unwrap_or_default(),
                        None => Vec::new(),
                    };
                    let heads = inode::heads(&versions);
                    let mut shown = vec![DirEntry {
                        name: name.clone(),
                        kind: entry.kind,
                        inode: entry.inode,
                        size: heads.first().map_or(0, |h| h.inode.size),
                        conflict: None,
                    }];
                    if entry.kind == Kind::File {
                        for head in heads.iter().skip(1) {
                            shown.push(DirEntry {
                                name: dir::conflict_copy_name(&name, &head.version),
                                kind: Kind::File,
                                inode: entry.inode,
                                size: head.inode.size,
                                conflict: Some(head.version),
                            });
                        }
                    }
                    shown
                }
                .boxed()
            })
            .buffered(self.config.parallel)
            .collect()
            .await;
        Ok(listed.into_iter().flatten().collect())
    }

    // ---- writing ----

    /// Signs and stores a new version of `node`; the caller stored its chunks already.
    async fn commit(
        &self,
        node: &mut Node,
        contents: Contents,
        anchor: Option<AnchorChange>,
    ) -> Result<Verified, Error> {
        let Contents {
            size,
            chunk_size,
            chunks,
            mode,
            mtime_ns,
            parents,
        } = contents;
        let chain = self.chain_for(&node.path, &node.binding.path)?;
        let seq = node.versions.iter().map(|v| v.inode.seq).max().unwrap_or(0) + 1;
        let previous = node.current.as_ref().map(|v| &v.inode);
        let (mut readers, mut grants, mut epoch) = match previous {
            Some(p) => (p.readers.clone(), p.grants.clone(), p.epoch),
            None => (Vec::new(), Vec::new(), 0),
        };
        if let Some(change) = anchor {
            readers = change.readers;
            grants = change.grants;
            epoch = change.epoch;
        }
        let id = node.id();
        let readcaps = readers
            .iter()
            .map(|r| Readcap::seal(&node.key, r, id.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid(format!("cannot seal a readcap: {e}")))?;
        let inode = Inode {
            binding: node.binding.clone(),
            seq,
            parents,
            kind: node.kind,
            size,
            mode,
            mtime_ns: mtime_ns.unwrap_or_else(now_ns),
            chunk_size: u32::try_from(chunk_size).unwrap_or(u32::MAX),
            chunks,
            key_epochs: node.key_epochs.clone(),
            epoch,
            readers,
            readcaps,
            grants,
            writer: self.identity.signing_key().public_key(),
            chain,
            signed_at: keys::now(),
        };
        debug_assert_eq!(inode.id(), id);
        let verified = self.sign_and_store(node, inode).await?;
        node.current = Some(verified.clone());
        Ok(verified)
    }

    /// Signs `inode` as this node, stores it on the replicas and adds it to `node`'s
    /// versions.
    async fn sign_and_store(&self, node: &mut Node, inode: Inode) -> Result<Verified, Error> {
        let signed = Signed::sign(&inode, self.identity.signing_key())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        // What this node has just signed it need not check again: every replica checks it
        // before it stores it (and refuses it, failing this write, if it were wrong).
        let verified = Verified {
            id: inode.id(),
            version: VersionId::of(&signed),
            inode: inode.into(),
            signed: signed.as_slice().into(),
        };
        self.blocks
            .put_version(verified.id, signed)
            .await
            .map_err(blocks_err(&node.path))?;
        node.versions.push(verified.clone());
        Ok(verified)
    }

    /// Seals `data` as the contents of `node` and stores the chunks.
    async fn store_contents(&self, node: &Node, data: &[u8]) -> Result<Vec<ChunkRef>, Error> {
        let chunk_size = self.config.chunk_size;
        let pieces: BTreeMap<u64, ChunkBuf> = data
            .chunks(chunk_size)
            .enumerate()
            .map(|(i, c)| (i as u64, ChunkBuf::from_slice(c)))
            .collect();
        let sealed = self.seal_and_store(node, &node.key, pieces).await?;
        Ok(sealed.into_values().collect())
    }

    /// Seals pieces in parallel and stores them; their refs by index.
    async fn seal_and_store(
        &self,
        node: &Node,
        key: &DataKey,
        pieces: BTreeMap<u64, ChunkBuf>,
    ) -> Result<BTreeMap<u64, ChunkRef>, Error> {
        let (refs, batch) = seal(node.id(), key, pieces, self.config.parallel).await?;
        self.blocks
            .put_chunks(node.id(), batch)
            .await
            .map_err(blocks_err(&node.path))?;
        Ok(refs)
    }

    /// Writes `dir` as a new version of the directory `nodes[i]`, replacing its key first
    /// when a revocation above made it stale, and then links changed keys upwards.
    async fn write_dir(&self, nodes: &mut [Node], i: usize, dir: &Directory) -> Result<(), Error> {
        let new = nodes[i].current.is_none();
        self.write_dir_version(nodes, i, dir).await?;
        if new {
            self.link_up(nodes, i).await?;
        }
        Ok(())
    }

    /// [`Client::write_dir`] without linking a new directory into its parent.
    async fn write_dir_version(
        &self,
        nodes: &mut [Node],
        i: usize,
        dir: &Directory,
    ) -> Result<(), Error> {
        let new = nodes[i].current.is_none();
        let rekey = !new && nodes[i].stale_key();
        // Encoded before a re-key changes anything. One no node could read back (too many
        // names or bytes: every name in it would be lost) is refused as full.
        let bytes = dir.encode().map_err(|e| {
            let too_large = matches!(e, protocols::wire::EncodeError::TooLarge { .. });
            if too_large || dir.entries.len() > dir::MAX_DECODED_ENTRIES {
                Error::DirectoryFull {
                    path: nodes[i].path.to_string(),
                    max: dir::MAX_DECODED_ENTRIES,
                }
            } else {
                Error::Invalid(e.to_string())
            }
        })?;
        // Refused before anything is stored: a write that cannot be signed leaves no
        // chunks behind.
        self.chain_for(&nodes[i].path, &nodes[i].binding.path)?;
        if rekey {
            // The parent learns the new key (keeping the old one) before any version
            // needs it: a crash in between leaves a directory every reader still opens.
            nodes[i].new_key();
            self.link_up(nodes, i).await?;
        }
        let node = &mut nodes[i];
        let chunks = self.store_contents(node, &bytes).await?;
        let parents = inode::heads(&node.versions)
            .iter()
            .map(|v| v.version)
            .collect();
        let mode = node
            .mode_override
            .take()
            .unwrap_or_else(|| node.current.as_ref().map_or(0o755, |v| v.inode.mode));
        let mtime_ns = node.mtime_override.take();
        let chunk_size = self.config.chunk_size;
        let written = self
            .commit(
                node,
                Contents {
                    size: bytes.len() as u64,
                    chunk_size,
                    chunks,
                    mode,
                    mtime_ns,
                    parents,
                },
                None,
            )
            .await?;
        // The next walk through this directory finds it decoded, unless a fork shows.
        if let [only] = inode::heads(&node.versions).as_slice()
            && only.version == written.version
        {
            // Sealed under `node.key` (a new one already, when this write re-keyed).
            self.remember_dir(
                (node.id(), written.version),
                Arc::new(dir.clone()),
                node.key.clone(),
                written.inode.size,
            );
        }
        Ok(())
    }

    /// Puts `nodes[i]`'s entry (new inode or new key) into its parent, re-reading the
    /// parent so that concurrent changes are merged, not overwritten.
    async fn link_up(&self, nodes: &mut [Node], i: usize) -> Result<(), Error> {
        if i == 0 {
            return Ok(());
        }
        let entry = nodes[i].entry();
        let name = nodes[i].name();
        let parent = i - 1;
        Box::pin(self.flush_dir(nodes[parent].id())).await?;
        self.refresh(&mut nodes[parent]).await?;
        let mut dir = self.read_dir(&nodes[parent]).await?;
        dir.entries.insert(name, entry);
        Box::pin(self.write_dir(nodes, parent, &dir)).await
    }

    /// Takes the nodes above `nodes`' last (and, with `take_last`, the last too) from a
    /// fresh walk to its path: the anchors governing it and their epochs, and the keys
    /// of the directories, as they are now (a kept walk may predate a share, which puts
    /// an anchor above, or a revocation, which re-keys one). Where the path no longer
    /// leads to it (moved or removed since), the kept walk stays, its epochs brought up
    /// to date; a key that must change then has no entry to go to: [`Error::NotFound`].
    /// Where the walk fails otherwise, the kept walk stays as it is.
    async fn refresh_above(&self, nodes: &mut Vec<Node>, take_last: bool) -> Result<(), Error> {
        let i = nodes.len() - 1;
        let path = nodes[i].path.clone();
        // A directory shared since (by another client) is at its anchor now, a new
        // inode its contents moved to: what is written in it goes there (written to the
        // old inode, which nothing names any more, it was lost). Not where the old
        // inode is still named, elsewhere (renamed, and another directory shared under
        // its old name): it stays the directory written to, as a directory renamed
        // under an open file is.
        let walked = self.walk(&path).await;
        let shared_since = match &walked {
            Ok(fresh)
                if take_last
                    && fresh.len() > 1
                    && fresh.last().is_some_and(|f| {
                        f.id() != nodes[i].id()
                            && f.kind == Kind::Dir
                            && nodes[i].kind == Kind::Dir
                            && !nodes[i].binding.is_anchor()
                            && f.binding.is_anchor()
                            && f.binding.path == path
                    }) =>
            {
                let old = nodes[i].id();
                let parent = self.read_dir_shared(&fresh[fresh.len() - 2]).await?;
                !parent.entries.values().any(|e| e.inode == old)
            }
            _ => false,
        };
        match walked {
            Ok(mut fresh) if fresh.last().map(Node::id) == Some(nodes[i].id()) || shared_since => {
                if !take_last {
                    let governing = fresh[fresh.len() - 1].governing.clone();
                    fresh.pop();
                    let mut last = nodes.pop().expect("a walk has a last node");
                    last.governing = governing;
                    fresh.push(last);
                }
                *nodes = fresh;
                Ok(())
            }
            Ok(_) | Err(Error::NotFound { .. } | Error::NotADirectory { .. }) => {
                self.refresh_governing(nodes).await?;
                if nodes.iter().any(Node::stale_key) {
                    return Err(Error::NotFound {
                        path: format!("{path} (moved or removed since it was opened)"),
                    });
                }
                Ok(())
            }
            Err(e) => {
                // The tree cannot be walked now (say, its anchors' replicas are out of
                // reach): the version is made on the kept walk, as it was before this
                // check existed, rather than failing a write that can be stored.
                tracing::debug!(path = %path, error = %e, "cannot walk afresh; the kept walk is used");
                Ok(())
            }
        }
    }

    /// Brings the key epochs of the anchors governing `nodes` up to date. A walk reads
    /// them, and a handle keeps the walk it was opened with: without this, a revocation
    /// made while a file was open left its later versions (and its directory's) sealed
    /// under keys the revoked reader holds.
    async fn refresh_governing(&self, nodes: &mut [Node]) -> Result<(), Error> {
        let mut latest: Vec<(InodeId, u64)> = Vec::new();
        for node in nodes.iter_mut() {
            for (anchor, epoch) in &mut node.governing {
                let known = match latest.iter().find(|(a, _)| a == anchor) {
                    Some((_, e)) => *e,
                    None => {
                        let versions = self.versions(&node.path, *anchor).await?;
                        let e = inode::winner(&versions).map_or(0, |w| w.inode.epoch);
                        latest.push((*anchor, e));
                        e
                    }
                };
                *epoch = (*epoch).max(known);
            }
        }
        Ok(())
    }

    /// Fails with [`Error::NotFound`] unless `nodes[i]`'s directory, read afresh, still
    /// names it under its name.
    async fn check_still_named(&self, nodes: &mut [Node], i: usize) -> Result<(), Error> {
        if i == 0 {
            return Ok(());
        }
        let parent = i - 1;
        Box::pin(self.flush_dir(nodes[parent].id())).await?;
        self.refresh(&mut nodes[parent]).await?;
        let dir = self.read_dir(&nodes[parent]).await?;
        if dir.entries.get(&nodes[i].name()).map(|e| e.inode) == Some(nodes[i].id()) {
            return Ok(());
        }
        Err(Error::NotFound {
            path: format!("{} (moved or removed while open)", nodes[i].path),
        })
    }

    /// Links the new file `nodes[i]` into its directory, read afresh: under its name, or,
    /// where another writer's file took the name meanwhile, beside it under a conflict
    /// name (see [`Change::Put`]). A new directory is linked only where the name is still
    /// free: whether it was.
    async fn link_new(&self, nodes: &mut [Node], i: usize) -> Result<bool, Error> {
        if i == 0 {
            return Ok(true);
        }
        let entry = nodes[i].entry();
        let parent = i - 1;
        Box::pin(self.flush_dir(nodes[parent].id())).await?;
        self.refresh(&mut nodes[parent]).await?;
        let mut dir = self.read_dir(&nodes[parent]).await?;
        let name = nodes[i].name();
        let name = if entry.kind == Kind::Dir {
            if dir
                .entries
                .get(&name)
                .is_some_and(|e| e.inode != entry.inode)
            {
                return Ok(false);
            }
            name
        } else {
            link_name(&dir, &name, &entry, &[])
        };
        dir.entries.insert(name, entry);
        Box::pin(self.write_dir(nodes, parent, &dir)).await?;
        // Written: the directory may have been removed meanwhile (see
        // `relink_if_filled`); then it is linked back.
        Box::pin(self.settle_or_recheck(&mut nodes[..=parent])).await;
        follow_parent(&mut nodes[..=i])?;
        Ok(true)
    }

    /// Stages `change` to `name` in the directory `nodes[last]` (see
    /// [`Config::stage_directories`]).
    fn stage(&self, nodes: &[Node], name: String, change: Change) -> Result<(), Error> {
        let Some(dir) = nodes.last() else {
            return Err(Error::Invalid("no directory to change".into()));
        };
        let mut staged = self
            .staged
            .lock()
            .map_err(|_| Error::Io("the staged directory changes are poisoned".into()))?;
        staged
            .entry(dir.id())
            .or_insert_with(|| Staged::new(nodes))
            .changes
            .entry(name)
            .and_modify(|earlier| *earlier = change.clone().after(Some(earlier.clone())))
            .or_insert(change);
        Ok(())
    }

    /// Writes the staged directory changes (see [`Config::stage_directories`]): each
    /// directory once, its changes merged into its latest version. Changes that could not
    /// be written stay staged for the next flush; the first such error is returned.
    pub async fn flush_staged(&self) -> Result<(), Error> {
        self.flush_which(Flush::All).await
    }

    /// [`Client::flush_staged`] as a periodic flush does it: a directory whose flushes
    /// failed is left alone until it is due to be tried again (1 s after the first
    /// failure, doubling up to a minute), and errors are logged, not returned.
    pub async fn flush_due(&self) {
        let _ = self.flush_which(Flush::Due).await;
    }

    /// [`Client::flush_staged`] on behalf of an operation on `paths`: every directory at,
    /// above or below one of them is written, and the first error among those is
    /// returned; the others are written if due (see [`Client::flush_due`]), and their
    /// errors are logged. One directory that cannot be written (removed elsewhere, its
    /// writecap expired) fails what concerns it, not every `fsync`.
    pub async fn flush_staged_for(&self, paths: &[&Path]) -> Result<(), Error> {
        self.flush_which(Flush::For(paths)).await
    }

    async fn flush_which(&self, which: Flush<'_>) -> Result<(), Error> {
        let now = std::time::Instant::now();
        let mut dirs: Vec<(usize, InodeId, bool)> = match self.staged.lock() {
            Ok(mut staged) => {
                staged.retain(|_, s| {
                    s.prune();
                    !s.is_empty()
                });
                staged
                    .iter()
                    .filter(|(_, s)| s.has_work())
                    .filter_map(|(id, s)| {
                        let path = &s.nodes.last()?.path;
                        let waiting = s.failing.as_ref().is_some_and(|f| f.retry_at > now);
                        let (takes, reports) = which.takes(path, waiting);
                        takes.then_some((path.segments().len(), *id, reports))
                    })
                    .collect()
            }
            Err(_) => {
                return Err(Error::Io(
                    "the staged directory changes are poisoned".into(),
                ));
            }
        };
        // Deepest first: an `rm -r` writes the removals inside a directory before the
        // directory's own, whose check for emptiness then sees them written (and a
        // removal given up inside, because another writer made names there, keeps the
        // directory above it too).
        dirs.sort_by_key(|(depth, _, _)| std::cmp::Reverse(*depth));
        let mut first_error = None;
        for (_, dir, reports) in dirs {
            // A removal left waiting for the changes inside the directory it removes is
            // this directory's error here (tried again later, reported to what concerns
            // it), not inside `flush_dir`: a write of that directory may need its
            // parent flushed first, and must not fail for it.
            let flushed = self.flush_dir(dir).await.and_then(|()| {
                match self.removal_waiting(dir) {
                    Some(path) => Err(Error::Io(format!(
                        "{path} is not removed yet: the changes staged inside it are not written"
                    ))),
                    None => Ok(()),
                }
            });
            if let Err(e) = flushed {
                self.note_failure(dir, &e);
                if reports {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Notes that a flush of directory `id` failed with `error`: it is tried again unasked
    /// later and later, and logged as a warning the first time (and when the error
    /// changes), not at every try. (A flush that succeeds clears this itself.)
    fn note_failure(&self, id: InodeId, error: &Error) {
        let Ok(mut staged) = self.staged.lock() else {
            return;
        };
        let Some(s) = staged.get_mut(&id) else {
            return;
        };
        let path = s
            .nodes
            .last()
            .map(|n| n.path.to_string())
            .unwrap_or_default();
        let error = error.to_string();
        let times = s.failing.as_ref().map_or(0, |f| f.times) + 1;
        let names = s.changes.len() + s.rechecks.len();
        if s.failing.as_ref().is_none_or(|f| f.error != error) {
            tracing::warn!(%path, names, %error, "cannot write staged directory changes; they stay staged and are tried again");
        } else {
            tracing::debug!(%path, names, %error, times, "cannot write staged directory changes yet");
        }
        s.failing = Some(Failing {
            times,
            error,
            retry_at: std::time::Instant::now() + Failing::backoff(times),
        });
    }

    /// A removal of one of `paths` given up at a flush (see [`Staged::given_up`]), taken
    /// out of those kept.
    fn take_given_up(&self, paths: &[&Path]) -> Option<Path> {
        let mut staged = self.staged.lock().ok()?;
        for s in staged.values_mut() {
            if let Some(at) = s.given_up.iter().position(|(g, _)| paths.contains(&g)) {
                return Some(s.given_up.swap_remove(at).0);
            }
        }
        None
    }

    /// New names still staged, with the error of their directory's last flush: what a
    /// node that stops now loses (their files' data is stored, but nothing links it);
    /// removals still staged (the names stay); and directories removed here whose check
    /// for names made elsewhere meanwhile is still to be made.
    pub fn unwritten(&self) -> Vec<(Path, String)> {
        let Ok(staged) = self.staged.lock() else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        for s in staged.values() {
            let Some(dir) = s.nodes.last() else { continue };
            let error = s
                .failing
                .as_ref()
                .map_or_else(|| "not written yet".to_owned(), |f| f.error.clone());
            for (name, change) in &s.changes {
                let path = dir.path.join(name).unwrap_or_else(|_| dir.path.clone());
                match change {
                    Change::Put { .. } => lost.push((path, error.clone())),
                    // Acknowledged, and undone by the stop: the name stays.
                    Change::Remove(_) => lost.push((
                        path,
                        format!("removed here, the removal not written (the name stays): {error}"),
                    )),
                }
            }
            for check in &s.rechecks {
                let path = dir
                    .path
                    .join(&check.name)
                    .unwrap_or_else(|_| dir.path.clone());
                let owed = if check.removal {
                    "removed here, and not checked for names another node made in it \
                     meanwhile (they would be unlinked)"
                } else {
                    "new names made in it here, and not checked that it was not removed \
                     meanwhile (they would be unlinked)"
                };
                lost.push((path, owed.to_owned()));
            }
        }
        lost
    }

    /// Whether directory `id` has staged changes not written yet.
    fn has_staged(&self, id: InodeId) -> bool {
        self.staged.lock().map_or(true, |s| has_changes(&s, &id))
    }

    /// Writes the changes staged for directory `id`, if any. They stay visible to this
    /// client until they are written (and afterwards as part of the directory).
    async fn flush_dir(&self, id: InodeId) -> Result<(), Error> {
        if !self
            .staged
            .lock()
            .is_ok_and(|s| s.get(&id).is_some_and(Staged::has_work))
        {
            return Ok(());
        }
        self.flush_inside(id, 0).await;
        let lock = self
            .flush_lock(id)
            .ok_or_else(|| Error::Io("the directory flush locks are poisoned".into()))?;
        let result = {
            let _one = lock.lock().await;
            self.flush_dir_locked(id).await
        };
        self.release_flush_lock(id, lock);
        result
    }

    /// The lock that one flush of directory `id` at a time holds.
    fn flush_lock(&self, id: InodeId) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut locks = self.flushing.lock().ok()?;
        Some(locks.entry(id).or_default().clone())
    }

    /// Gives back `lock` ([`Client::flush_lock`]), forgotten once nobody else holds it.
    fn release_flush_lock(&self, id: InodeId, lock: Arc<tokio::sync::Mutex<()>>) {
        if let Ok(mut locks) = self.flushing.lock()
            && Arc::strong_count(&lock) <= 2
        {
            locks.remove(&id);
        }
    }

    /// The directories whose removal directory `id`'s staged changes hold and that have
    /// changes of their own staged: written first, deepest first (a removal waits for
    /// them, see `flush_dir_locked`), before `id`'s flush lock is taken. One whose flush
    /// is under way (it may be the caller: writing a directory can write its parent
    /// first) or waiting to be tried again after failing is left alone, and the removal
    /// waits. Their errors are theirs.
    fn flush_inside(&self, id: InodeId, depth: usize) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if depth >= MAX_FLUSH_INSIDE {
                return;
            }
            let now = std::time::Instant::now();
            let inside: Vec<InodeId> = match self.staged.lock() {
                Ok(staged) => match staged.get(&id) {
                    Some(s) => s
                        .removed()
                        .filter(|i| {
                            has_changes(&staged, i)
                                && staged[*i]
                                    .failing
                                    .as_ref()
                                    .is_none_or(|f| f.retry_at <= now)
                        })
                        .copied()
                        .collect(),
                    None => return,
                },
                Err(_) => return,
            };
            for child in inside {
                self.flush_inside(child, depth + 1).await;
                let Some(lock) = self.flush_lock(child) else {
                    return;
                };
                let result = match lock.try_lock() {
                    Ok(_one) => self.flush_dir_locked(child).await,
                    Err(_) => continue,
                };
                if let Err(e) = result {
                    self.note_failure(child, &e);
                }
                self.release_flush_lock(child, lock);
            }
        })
    }

    /// A removal staged in directory `id` that waits for the changes staged inside the
    /// directory it removes (see `flush_dir_locked`): that directory's path, if any.
    fn removal_waiting(&self, id: InodeId) -> Option<Path> {
        let staged = self.staged.lock().ok()?;
        let inside = staged
            .get(&id)?
            .removed()
            .find(|i| has_changes(&staged, i))?;
        staged[inside].nodes.last().map(|n| n.path.clone())
    }

    async fn flush_dir_locked(&self, id: InodeId) -> Result<(), Error> {
        let taken = match self.staged.lock() {
            Ok(staged) => staged
                .get(&id)
                .map(|s| (s.nodes.clone(), s.changes.clone(), s.rechecks.clone())),
            Err(_) => {
                return Err(Error::Io(
                    "the staged directory changes are poisoned".into(),
                ));
            }
        };
        let Some((mut nodes, changes, rechecks)) = taken else {
            return Ok(());
        };
        let d = nodes.len() - 1;
        // What an earlier flush wrote stays known, even if a replica's answer (or what a
        // fetch under way then left in a cache) does not have it yet.
        let known = std::mem::take(&mut nodes[d].versions);
        let before = nodes[d].id();
        // The walk kept with the staged changes may predate a share or a revocation:
        // the directory and those above it are taken afresh (their keys too), as a write
        // through a fresh walk would, so that nothing is sealed under a key a revoked
        // reader holds (and a directory another node re-keyed meanwhile still opens).
        self.refresh_above(&mut nodes, true).await?;
        let puts = changes.values().any(|c| matches!(c, Change::Put { .. }));
        let d = nodes.len() - 1;
        self.refresh(&mut nodes[d]).await?;
        // Not when the directory moved to its anchor (shared since): those are the old
        // inode's versions.
        let known = if nodes[d].id() == before {
            known
        } else {
            Vec::new()
        };
        for version in known {
            if !nodes[d]
                .versions
                .iter()
                .any(|v| v.version == version.version)
            {
                nodes[d].versions.push(version);
            }
        }
        nodes[d].current = inode::winner(&nodes[d].versions).cloned();
        let mut dir = self.read_dir(&nodes[d]).await?;
        let mut applied = changes.clone();
        let mut deferred = std::collections::BTreeSet::new();
        let mut deferred_error = None;
        let mut given_up = Vec::new();
        for (name, change) in &changes {
            if let Some(entry) = removes_dir(&dir, name, change) {
                // Not while the directory's own staged changes are unwritten (its flush
                // failed): it only looks empty with them, and nobody else could check
                // it afresh. Written at a later flush.
                if self.has_staged(entry.inode) {
                    applied.remove(name);
                    deferred.insert(name.clone());
                    continue;
                }
            }
            match self.holds_new_names(&nodes[d], &dir, name, change).await {
                Ok(false) => {}
                Ok(true) => {
                    // Another writer made names in the directory after this client saw
                    // it empty and removed it: it stays, with them.
                    tracing::info!(path = %nodes[d].path, %name, "a directory removed here holds names made elsewhere since; it is kept");
                    applied.remove(name);
                    if let Ok(path) = nodes[d].path.join(name) {
                        given_up.push(path);
                    }
                }
                Err(e) => {
                    // Cannot be told now: this removal waits for the next flush, the
                    // directory's other changes do not.
                    tracing::debug!(path = %nodes[d].path, %name, error = %e, "cannot read a directory removed here; its removal waits");
                    applied.remove(name);
                    deferred.insert(name.clone());
                    deferred_error.get_or_insert(e);
                }
            }
        }
        // Directories this flush removes: checked again once the removal is written.
        let mut to_check = rechecks.clone();
        for (name, change) in &applied {
            if let Some(entry) = removes_dir(&dir, name, change)
                && !to_check.iter().any(|r| r.entry.inode == entry.inode)
            {
                to_check.push(Recheck {
                    name: name.clone(),
                    entry: entry.clone(),
                    removal: true,
                    attempts: 0,
                });
            }
        }
        let taken: Vec<InodeId> = rechecks.iter().map(|r| r.entry.inode).collect();
        let mut changed = false;
        for (name, change) in &applied {
            changed |= change.apply(&mut dir, name);
        }
        if changed && let Err(e) = self.write_dir(&mut nodes, d, &dir).await {
            // Nothing written, as far as this client knows; but a replica may have taken
            // it and show it later, when the removal no longer applies: checked then.
            if let Ok(mut staged) = self.staged.lock()
                && let Some(s) = staged.get_mut(&id)
            {
                s.rechecks.retain(|r| !taken.contains(&r.entry.inode));
                s.rechecks.extend(to_check);
            }
            return Err(e);
        }
        // Written: each side of a race between new names in a directory and its removal
        // checks the other's item afresh (see `relink_if_filled`). First the directories
        // removed here.
        let mut failed_checks = Vec::new();
        for mut check in to_check {
            match self
                .relink_if_filled(&mut nodes[..=d], &check.name, &check.entry)
                .await
            {
                Ok(false) => {}
                Ok(true) if !check.removal => {}
                Ok(true) => {
                    if let Some(Change::Remove(inodes)) = applied.get(&check.name)
                        && inodes.contains(&check.entry.inode)
                    {
                        applied.remove(&check.name);
                    }
                    if let Ok(path) = nodes[d].path.join(&check.name) {
                        given_up.push(path);
                    }
                }
                Err(e) => {
                    check.attempts += 1;
                    let path = nodes[d].path.join(&check.name).ok();
                    if check.attempts >= MAX_RECHECK_ATTEMPTS {
                        tracing::error!(?path, error = %e, attempts = check.attempts, "cannot check a directory removed here for names made elsewhere; given up (names another node made in it meanwhile would be unlinked)");
                    } else {
                        tracing::debug!(?path, error = %e, "cannot check a directory removed here; checked again at the next flush");
                        failed_checks.push(check);
                    }
                    deferred_error.get_or_insert(e);
                }
            }
        }
        // Then this client's new names: their directory may have been removed since the
        // walk, and so may a directory this flush kept a name in (a removal given up, in
        // a directory this client removed with it: `rm -r` here while another writer
        // wrote deeper down).
        if (puts || !given_up.is_empty())
            && let Err(e) = self.relink_settled(&mut nodes).await
        {
            // The names are written: what is owed is the check, made at the next flush
            // of the parent (see `settle_or_recheck`). This flush reports it.
            if d > 0 {
                let (name, entry) = (nodes[d].name(), nodes[d].entry());
                self.recheck_later(&nodes[..d], &name, &entry, false, &e);
            }
            deferred_error.get_or_insert(e);
        }
        // Written (or found written, or given up as above): what was not changed again
        // meanwhile is no longer staged, and walks that read an older version still see
        // what was written.
        if let Ok(mut staged) = self.staged.lock()
            && let Some(s) = staged.get_mut(&id)
        {
            s.changes.retain(|name, change| {
                changes.get(name) != Some(change) || deferred.contains(name)
            });
            let now = std::time::Instant::now();
            s.written.push_back((seq_of(&nodes[d]), now, applied));
            s.given_up.extend(given_up.into_iter().map(|g| (g, now)));
            s.prune();
            s.rechecks.retain(|r| !taken.contains(&r.entry.inode));
            s.rechecks.extend(failed_checks);
            s.nodes = nodes;
            if deferred_error.is_none()
                && let Some(failing) = s.failing.take()
            {
                let path = s
                    .nodes
                    .last()
                    .map(|n| n.path.to_string())
                    .unwrap_or_default();
                tracing::info!(%path, failures = failing.times, "staged directory changes written after failing");
            }
        }
        // The rest is written; a removal that waits is this flush's error (tried again
        // later and later, reported to what concerns the directory).
        deferred_error.map_or(Ok(()), Err)
    }

    /// After this client wrote new names in the directory last in `nodes`: links back
    /// the directories of `nodes` that another writer removed meanwhile, finding them
    /// empty (see [`Client::relink_removed`]), until a pass finds nothing to link (a
    /// directory linked back is a new name in its parent, whose own removal may have
    /// raced with it).
    async fn relink_settled(&self, nodes: &mut [Node]) -> Result<(), Error> {
        let mut thorough = false;
        for _ in 0..RELINK_PASSES {
            if !self.relink_removed(nodes, thorough).await? {
                return Ok(());
            }
            thorough = true;
        }
        Err(Error::Io(format!(
            "{}: its directories were linked back {RELINK_PASSES} times and removed again",
            nodes[nodes.len() - 1].path
        )))
    }

    /// Links back the directories of `nodes` (the walk to a directory this client made
    /// new names in) that another writer removed since, finding them empty: from the top,
    /// a directory its parent no longer names but lists as removed
    /// ([`Directory::removed`]) is named there again, under its old name or, where that
    /// is taken now, a conflict name (the paths in `nodes` follow). A directory moved
    /// elsewhere meanwhile is left where it is: the new names go there with it. Whether
    /// anything was linked back.
    ///
    /// Called after the names are written (see [`Client::relink_if_filled`] for the
    /// other side of the race). Unless `thorough`, the parent read afresh naming the
    /// directory settles it: a directory higher up is removed only once the one below it
    /// is (it is not empty before), which the parent shows.
    async fn relink_removed(&self, nodes: &mut [Node], thorough: bool) -> Result<bool, Error> {
        let d = nodes.len() - 1;
        if d == 0 {
            return Ok(false);
        }
        // Where the parent, read afresh, names the directory, nothing was removed;
        // otherwise each level is read (a read that fails there fails
        // the flush, which is tried again: the names are not left where nothing may find
        // them).
        if !thorough {
            self.blocks.forget(nodes[d - 1].id());
            let mut parent = nodes[d - 1].clone();
            if self.refresh(&mut parent).await.is_ok()
                && let Ok(dir) = self.read_dir_shared(&parent).await
                && self
                    .with_staged(&parent, dir)
                    .entries
                    .get(&nodes[d].name())
                    .is_some_and(|e| e.inode == nodes[d].id())
            {
                return Ok(false);
            }
        }
        let mut wrote = false;
        for i in 1..=d {
            self.blocks.forget(nodes[i - 1].id());
            self.refresh(&mut nodes[i - 1]).await?;
            let mut dir = self.read_dir(&nodes[i - 1]).await?;
            let id = nodes[i].id();
            let name = nodes[i].name();
            let view = self.with_staged(&nodes[i - 1], Arc::new(dir.clone()));
            if view.entries.get(&name).is_some_and(|e| e.inode == id) {
                continue;
            }
            if let Some(now) = view
                .entries
                .iter()
                .find(|(_, e)| e.inode == id)
                .map(|(n, _)| n.clone())
            {
                // Renamed where it was: followed.
                self.follow(nodes, i, &now)?;
                continue;
            }
            if !dir.removed.contains(&id) {
                // Moved elsewhere (or removed longer ago than the directory remembers):
                // the new names go where the directory is.
                return Ok(wrote);
            }
            dir.removed.retain(|r| *r != id);
            let entry = nodes[i].entry();
            let linked = link_name(&dir, &name, &entry, &[]);
            tracing::warn!(
                path = %nodes[i].path,
                linked = %linked,
                "a directory another node removed holds names made here since; it is linked back"
            );
            dir.entries.insert(linked.clone(), entry);
            self.write_dir(&mut nodes[..i], i - 1, &dir).await?;
            wrote = true;
            if linked != name {
                self.follow(nodes, i, &linked)?;
            }
        }
        Ok(wrote)
    }

    /// Notes that `nodes[i]` is named `name` in `nodes[i - 1]` now: the paths of it and
    /// of those below it change, in `nodes` and in the walks kept with staged changes
    /// (which would otherwise be flushed through the old path).
    fn follow(&self, nodes: &mut [Node], i: usize, name: &str) -> Result<(), Error> {
        let old = nodes[i].path.clone();
        let id = nodes[i].id();
        let new = nodes[i - 1]
            .path
            .join(name)
            .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
        for node in &mut nodes[i..] {
            node.path = rebased(&node.path, &old, &new)?;
        }
        self.follow_staged(id, &old, &new)
    }

    /// Notes that directory `id` at `old` is at `new` now, in the walks kept with staged
    /// changes.
    fn follow_staged(&self, id: InodeId, old: &Path, new: &Path) -> Result<(), Error> {
        if let Ok(mut staged) = self.staged.lock() {
            for s in staged.values_mut() {
                if let Some(k) = s.nodes.iter().position(|n| n.id() == id && n.path == *old) {
                    for node in &mut s.nodes[k..] {
                        node.path = rebased(&node.path, old, new)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `change` removes a directory named `name` in `dir` (directory `parent`'s)
    /// that is not empty as it is now, with this client's staged changes to it: another
    /// writer made names there after this client found it empty.
    async fn holds_new_names(
        &self,
        parent: &Node,
        dir: &Directory,
        name: &str,
        change: &Change,
    ) -> Result<bool, Error> {
        match removes_dir(dir, name, change) {
            Some(entry) => self.holds_names_now(parent, name, entry).await,
            None => Ok(false),
        }
    }

    /// Whether directory `entry`, named `name` in `parent` (or just taken out of it),
    /// holds names as it is now, read afresh, with this client's staged changes to it.
    async fn holds_names_now(
        &self,
        parent: &Node,
        name: &str,
        entry: &Entry,
    ) -> Result<bool, Error> {
        let path = parent
            .path
            .join(name)
            .map_err(|e| Error::Invalid(format!("{}/{name}: {e}", parent.path)))?;
        self.blocks.forget(entry.inode);
        let child = match self.child(parent, path, entry).await {
            Ok(child) => child,
            // Nothing to be found there, new names least of all.
            Err(Error::Blocks {
                source: BlockError::NotFound,
                ..
            }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let now = self.with_staged(&child, self.read_dir_shared(&child).await?);
        Ok(!now.entries.is_empty())
    }

    /// After this client wrote the removal of directory `entry`, named `name` in the
    /// directory last in `nodes`: if it holds names now, it is linked back there, under
    /// `name` or, where that is taken, a conflict name, unless it is named again
    /// already (by the writer of the names, here or elsewhere after a move) or the
    /// parent no longer remembers removing it. Whether it holds names (and so was not
    /// removed, as far as they go).
    ///
    /// The removal checked that the directory was empty before it wrote; another writer
    /// may have written new names there in between, after its own check that the
    /// directory was still named (see [`Client::relink_removed`]). Each of the two
    /// writes first and reads the other's item afresh second (with read quorums that
    /// meet the write quorum), so at least one of them sees the other's write and
    /// links the directory back: the names are not lost with it.
    async fn relink_if_filled(
        &self,
        nodes: &mut [Node],
        name: &str,
        entry: &Entry,
    ) -> Result<bool, Error> {
        let p = nodes.len() - 1;
        if !self.holds_names_now(&nodes[p], name, entry).await? {
            return Ok(false);
        }
        self.blocks.forget(nodes[p].id());
        self.refresh(&mut nodes[p]).await?;
        let mut dir = self.read_dir(&nodes[p]).await?;
        if !dir.removed.contains(&entry.inode) {
            // Named (still, or again: linked back by the writer of the names, here or
            // elsewhere after a move), or forgotten by the directory (removed longer ago
            // than it remembers): not linked a second time.
            return Ok(true);
        }
        dir.removed.retain(|r| *r != entry.inode);
        let linked = link_name(&dir, name, entry, &[]);
        tracing::warn!(
            path = %nodes[p].path,
            %name,
            %linked,
            "a directory removed here holds names another node made meanwhile; it is linked back"
        );
        dir.entries.insert(linked.clone(), entry.clone());
        self.write_dir(nodes, p, &dir).await?;
        if linked != name
            && let (Ok(old), Ok(new)) = (nodes[p].path.join(name), nodes[p].path.join(&linked))
            && let Err(e) = self.follow_staged(entry.inode, &old, &new)
        {
            tracing::debug!(%old, %new, error = %e, "staged walks do not follow a directory linked back");
        }
        // A new name in this directory, whose own removal may have raced with it.
        self.settle_or_recheck(nodes).await;
        Ok(true)
    }

    /// [`Client::relink_settled`] after a new name was written in the directory last in
    /// `nodes`; where that cannot be done now, the directory is checked at the next flush
    /// of its parent (as a directory removed there: linked back if it holds names and
    /// the parent lists it as removed).
    async fn settle_or_recheck(&self, nodes: &mut [Node]) {
        let d = nodes.len() - 1;
        if let Err(e) = self.relink_settled(nodes).await
            && d > 0
        {
            let (name, entry) = (nodes[d].name(), nodes[d].entry());
            self.recheck_later(&nodes[..d], &name, &entry, false, &e);
        }
    }

    /// Keeps the check of directory `entry`, named `name` in the directory last in
    /// `nodes` (or removed from there by this client, with `removal`), for the next
    /// flush (see [`Client::relink_if_filled`]): it could not be made now (`error`).
    fn recheck_later(
        &self,
        nodes: &[Node],
        name: &str,
        entry: &Entry,
        removal: bool,
        error: &Error,
    ) {
        let Some(parent) = nodes.last() else { return };
        tracing::warn!(path = %parent.path, %name, removal, %error, "cannot check whether a directory was removed while names were made in it; checked again later");
        let Ok(mut staged) = self.staged.lock() else {
            return;
        };
        let s = staged
            .entry(parent.id())
            .or_insert_with(|| Staged::new(nodes));
        if !s.rechecks.iter().any(|r| r.entry.inode == entry.inode) {
            s.rechecks.push(Recheck {
                name: name.to_string(),
                entry: entry.clone(),
                removal,
                attempts: 1,
            });
        }
    }

    /// Fetches a node's versions again (others may have written since the walk).
    async fn refresh(&self, node: &mut Node) -> Result<(), Error> {
        let versions = self.versions_expected(&node.path, node.id()).await?;
        if let Some(winner) = inode::winner(&versions) {
            node.current = Some(winner.clone());
        }
        node.versions = versions;
        Ok(())
    }

    /// Walks to `path`'s parent, creating missing directories (and the tree's root anchor
    /// when this node holds a writecap for a prefix of the path and none exists yet).
    async fn parent_dirs(&self, path: &Path, create: bool) -> Result<Vec<Node>, Error> {
        let parent = path.parent().ok_or_else(|| Error::ReadOnly {
            path: path.to_string(),
            reason: "a tree's root is made with the tree, not created or replaced".into(),
        })?;
        let (mut nodes, missing) = self.walk_partial(&parent).await?;
        // A file where a directory is needed (it was read as one: "contents do not open").
        if let Some(last) = nodes.last()
            && last.kind != Kind::Dir
        {
            return Err(Error::NotADirectory {
                path: last.path.to_string(),
            });
        }
        if missing.is_empty() && !nodes.is_empty() {
            return Ok(nodes);
        }
        if !create {
            return Err(Error::NotFound {
                path: parent.to_string(),
            });
        }
        let mut missing = missing;
        if nodes.is_empty() {
            self.create_root(&parent).await?;
            (nodes, missing) = self.walk_partial(&parent).await?;
            if nodes.is_empty() {
                return Err(Error::NotFound {
                    path: parent.to_string(),
                });
            }
        }
        for name in missing {
            match self.mkdir_in(&mut nodes, &name).await {
                Err(Error::Exists { .. }) => self.enter_made(&mut nodes, &name).await?,
                done => done?,
            }
        }
        Ok(nodes)
    }

    /// Creates the anchor of the longest prefix of `path` this node holds a writecap for.
    async fn create_root(&self, path: &Path) -> Result<Node, Error> {
        let me = self.me();
        let now = keys::now();
        let chains = self.chains.read().map(|c| c.clone()).unwrap_or_default();
        let prefix = chains
            .iter()
            .filter_map(|c| c.prefix().cloned())
            .filter(|p| path.starts_with(p))
            .filter(|p| {
                chains
                    .iter()
                    .any(|c| c.verify(p, &me, now, &self.revocations.read()).is_ok())
            })
            .max_by_key(|p| p.segments().len())
            // Nothing there, and this node may not make it: say the second (a node set up
            // without a tree of its own, writing to its own principal's, was told "no such
            // file or directory").
            .ok_or_else(|| Error::NotAuthorized {
                path: path.to_string(),
                binding: path.to_string(),
            })?;
        // Only when every node it belongs on says it is not there: a root created because
        // its replicas were out of reach would hide the real one.
        let anchor = Binding::anchor(prefix.clone()).id();
        let existing = self
            .blocks
            .get_versions_strict(anchor)
            .await
            .map_err(blocks_err(&prefix))?;
        if !existing.is_empty() {
            return Err(Error::Blocks {
                path: prefix.to_string(),
                source: BlockError::Unavailable {
                    needed: 1,
                    acks: 0,
                    reason: "the root exists but its versions were not read; try again".into(),
                },
            });
        }
        let mut node = Node {
            path: prefix.clone(),
            binding: Binding::anchor(prefix),
            id: std::sync::OnceLock::new(),
            key: self.identity.anchor_key(anchor.as_bytes()),
            kind: Kind::Dir,
            versions: Vec::new(),
            current: None,
            governing: Vec::new(),
            key_epochs: Vec::new(),
            read_only: false,
            mode_override: None,
            mtime_override: None,
            previous_key: None,
        };
        let bytes = Directory::default()
            .encode()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let chunks = self.store_contents(&node, &bytes).await?;
        let readers = vec![self.identity.public()];
        self.commit(
            &mut node,
            Contents {
                size: bytes.len() as u64,
                chunk_size: self.config.chunk_size,
                chunks,
                mode: 0o755,
                mtime_ns: None,
                parents: Vec::new(),
            },
            Some(AnchorChange {
                readers,
                grants: Vec::new(),
                epoch: 0,
            }),
        )
        .await?;
        tracing::info!(root = %node.path, "created a file system root");
        Ok(node)
    }

    /// Refuses a new `name` in the directory `parent` when it is full (see
    /// [`Config::max_entries`]); a name it holds (or has staged) is not new.
    async fn check_room(&self, parent: &Node, name: &str) -> Result<(), Error> {
        let max = self.config.max_entries.min(dir::MAX_ENTRIES);
        let dir = self.with_staged(parent, self.read_dir_shared(parent).await?);
        if dir.entries.contains_key(name) {
            return Ok(());
        }
        // Long names fill a directory's bytes before its count.
        let bytes = dir::estimated_size(&dir) + name.len() + dir::ENTRY_BYTES;
        if dir.entries.len() >= max || bytes > dir::MAX_DIRECTORY_BYTES {
            return Err(Error::DirectoryFull {
                path: parent.path.to_string(),
                max,
            });
        }
        Ok(())
    }

    async fn mkdir_in(&self, nodes: &mut Vec<Node>, name: &str) -> Result<(), Error> {
        dir::check_name(name).map_err(Error::Invalid)?;
        let parent = &nodes[nodes.len() - 1];
        self.check_room(parent, name).await?;
        let path = parent
            .path
            .join(name)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let binding = Binding::new(path.clone()).map_err(|e| Error::Io(e.to_string()))?;
        nodes.push(Node {
            path,
            binding,
            id: std::sync::OnceLock::new(),
            key: DataKey::generate(),
            kind: Kind::Dir,
            versions: Vec::new(),
            current: None,
            governing: parent.governing.clone(),
            key_epochs: parent.governing.clone(),
            read_only: false,
            mode_override: None,
            mtime_override: None,
            previous_key: None,
        });
        let i = nodes.len() - 1;
        self.write_dir_version(nodes, i, &Directory::default())
            .await?;
        if self.link_new(nodes, i).await? {
            return Ok(());
        }
        // Another writer made the name meanwhile: theirs stays (with whatever they put
        // in it), and this empty one is left unlinked.
        let path = nodes[i].path.to_string();
        nodes.pop();
        Err(Error::Exists { path })
    }

    /// Into the directory `name` below `nodes` that another writer made meanwhile (a
    /// [`Client::mkdir_in`] found it there), asked for afresh.
    async fn enter_made(&self, nodes: &mut Vec<Node>, name: &str) -> Result<(), Error> {
        let parent = &nodes[nodes.len() - 1];
        let path = parent
            .path
            .join(name)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.blocks.forget(parent.id());
        let (found, missing) = self.walk_partial(&path).await?;
        match found.last() {
            Some(node) if missing.is_empty() && node.path == path && node.kind == Kind::Dir => {
                *nodes = found;
                Ok(())
            }
            Some(node) if missing.is_empty() && node.path == path => Err(Error::NotADirectory {
                path: path.to_string(),
            }),
            _ => Err(Error::NotFound {
                path: path.to_string(),
            }),
        }
    }

    /// Creates a directory; its parent must exist (a tree's root is made when its owner
    /// first uses it, as by `put` and [`Client::mkdir_all`]).
    pub async fn mkdir(&self, path: &Path) -> Result<(), Error> {
        if let Some(root) = path.parent().filter(|p| p.parent().is_none()) {
            self.mkdir_all(&root).await?;
        }
        let mut nodes = self.parent_dirs(path, false).await?;
        let name = path.segments().last().cloned().unwrap_or_default();
        let parent = &nodes[nodes.len() - 1];
        let dir = self.read_dir_shared(parent).await?;
        if self.entry_in(parent, &dir, &name).is_some() {
            return Err(Error::Exists {
                path: path.to_string(),
            });
        }
        self.mkdir_in(&mut nodes, &name).await
    }

    /// Creates a directory and any missing parents; an existing directory is fine.
    pub async fn mkdir_all(&self, path: &Path) -> Result<(), Error> {
        match self.stat(path).await {
            Ok(stat) if stat.kind == Kind::Dir => return Ok(()),
            Ok(_) => {
                return Err(Error::NotADirectory {
                    path: path.to_string(),
                });
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if path.parent().is_none() {
            // A tree's root: made when its owner first uses it.
            self.create_root(path).await?;
            return Ok(());
        }
        let mut nodes = self.parent_dirs(path, true).await?;
        let name = path.segments().last().cloned().unwrap_or_default();
        if nodes.last().is_some_and(|n| n.path == *path) {
            return Ok(());
        }
        match self.mkdir_in(&mut nodes, &name).await {
            // Made meanwhile by another writer: a directory is what was asked for.
            Err(Error::Exists { .. }) => self.enter_made(&mut nodes, &name).await,
            done => done,
        }
    }

    /// Opens the file at `path` for reading and writing.
    pub async fn open(&self, path: &Path) -> Result<Handle, Error> {
        let nodes = self.walk(path).await?;
        refuse_symlink(path, &nodes)?;
        self.handle_of(path, nodes)
    }

    /// A handle on the file (or symbolic link) a walk to `path` found (`nodes`, not
    /// empty).
    fn handle_of(&self, path: &Path, nodes: Vec<Node>) -> Result<Handle, Error> {
        let Some(node) = nodes.last() else {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        };
        if node.kind == Kind::Dir {
            return Err(Error::IsADirectory {
                path: path.to_string(),
            });
        }
        let current = node.current.as_ref().map(|v| v.inode.clone());
        let (size, chunk_size, refs, mode) = match current {
            Some(i) => (i.size, i.chunk_size as usize, i.chunks.clone(), i.mode),
            None => (0, self.config.chunk_size, Vec::new(), 0o644),
        };
        Ok(Handle {
            nodes,
            size,
            chunk_size,
            refs,
            dirty: BTreeMap::new(),
            changed: false,
            mode,
            data_changed: false,
            mtime: None,
            rebased: false,
            cache: ReadCache::default(),
            unsynced_since: None,
            storing: std::collections::VecDeque::new(),
            failed: None,
            unlinked: false,
        })
    }

    /// Creates (or truncates) the file at `path`, creating missing parent directories.
    pub async fn create(&self, path: &Path) -> Result<Handle, Error> {
        let (found, missing) = self.walk_partial(path).await?;
        if missing.is_empty() && !found.is_empty() {
            refuse_symlink(path, &found)?;
            let mut handle = self.handle_of(path, found)?;
            self.truncate(&mut handle, 0).await?;
            return Ok(handle);
        }
        self.create_new(path, found, missing, Kind::File).await
    }

    /// Creates the file `path` only where no file has the name: [`Error::Exists`] else,
    /// and the file there is left as it is. A mount creates with it: the kernel asks to
    /// create a name its lookup found free, and another node's file may have taken the
    /// name since; [`Client::create`] would have emptied that file.
    pub async fn create_new_file(&self, path: &Path) -> Result<Handle, Error> {
        let (found, missing) = self.walk_partial(path).await?;
        if missing.is_empty() && !found.is_empty() {
            return Err(Error::Exists {
                path: path.to_string(),
            });
        }
        self.create_new(path, found, missing, Kind::File).await
    }

    /// Creates a symbolic link at `path` to `target` (the bytes the kernel gives: the
    /// file system neither follows nor checks them; on a mount the kernel resolves
    /// links). The target is sealed like a file's contents, so replicas cannot read it.
    /// Refused if `path` exists.
    pub async fn symlink(&self, path: &Path, target: &[u8]) -> Result<Stat, Error> {
        if target.is_empty() || target.len() > MAX_LINK_TARGET || target.contains(&0) {
            return Err(Error::Invalid(format!(
                "{path}: a link target is 1 to {MAX_LINK_TARGET} bytes without NUL"
            )));
        }
        let (found, missing) = self.walk_partial(path).await?;
        if missing.is_empty() && !found.is_empty() {
            return Err(Error::Exists {
                path: path.to_string(),
            });
        }
        let mut handle = self.create_new(path, found, missing, Kind::Symlink).await?;
        handle.mode = 0o777;
        self.write(&mut handle, 0, target).await?;
        self.fsync(&mut handle).await?;
        Ok(stat_of(handle.node()))
    }

    /// The target of the symbolic link at `path`.
    pub async fn readlink(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let nodes = self.walk(path).await?;
        let node = &nodes[nodes.len() - 1];
        if node.kind != Kind::Symlink {
            return Err(Error::Invalid(format!("{path}: not a symbolic link")));
        }
        let Some(current) = &node.current else {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_string(),
            reason,
        };
        if current.inode.size > MAX_LINK_TARGET as u64 {
            // A co-writer's oversized "link" is not fetched.
            return Err(corrupt(format!(
                "a link target of {} bytes (at most {MAX_LINK_TARGET})",
                current.inode.size
            )));
        }
        let target = self.read_version(node, current).await?;
        if target.is_empty() || target.contains(&0) {
            return Err(corrupt("an empty link target, or one with NUL".into()));
        }
        Ok(target)
    }

    /// A handle on a new inode of `kind` (a file or a link) at `path`, which the walk
    /// did not find (`found` and `missing` are that walk's); its directory names it at
    /// its first [`Client::fsync`].
    async fn create_new(
        &self,
        path: &Path,
        found: Vec<Node>,
        missing: Vec<String>,
        kind: Kind,
    ) -> Result<Handle, Error> {
        let name = path.segments().last().cloned().unwrap_or_default();
        dir::check_name(&name).map_err(Error::Invalid)?;
        // Only the name missing: the walk ended at its directory (one walk, not two).
        let mut nodes = if missing.len() == 1 && !found.is_empty() {
            found
        } else {
            self.parent_dirs(path, true).await?
        };
        let parent = &nodes[nodes.len() - 1];
        if parent.kind != Kind::Dir {
            return Err(Error::NotADirectory {
                path: parent.path.to_string(),
            });
        }
        self.chain_for(path, path)?;
        self.check_room(parent, &name).await?;
        let binding = Binding::new(path.clone()).map_err(|e| Error::Io(e.to_string()))?;
        let governing = parent.governing.clone();
        nodes.push(Node {
            path: path.clone(),
            binding,
            id: std::sync::OnceLock::new(),
            key: DataKey::generate(),
            kind,
            versions: Vec::new(),
            current: None,
            key_epochs: governing.clone(),
            governing,
            read_only: false,
            mode_override: None,
            mtime_override: None,
            previous_key: None,
        });
        Ok(Handle {
            nodes,
            size: 0,
            chunk_size: self.config.chunk_size,
            refs: Vec::new(),
            dirty: BTreeMap::new(),
            changed: true,
            mode: 0o644,
            data_changed: true,
            mtime: None,
            rebased: false,
            cache: ReadCache::default(),
            unsynced_since: None,
            storing: std::collections::VecDeque::new(),
            failed: None,
            unlinked: true,
        })
    }

    /// Chunk `index` as plaintext, unsynced writes included (empty past the end).
    async fn plaintext_of(&self, handle: &mut Handle, index: u64) -> Result<ChunkBuf, Error> {
        if let Some(d) = handle.dirty.get(&index) {
            return Ok(d.clone());
        }
        Ok(ChunkBuf::from_slice(&self.stored(handle, index).await?))
    }

    /// The plaintext of stored chunk `index` (empty past the end), and the next ones
    /// fetched in the background for a sequential reader.
    async fn stored(&self, handle: &mut Handle, index: u64) -> Result<Arc<Vec<u8>>, Error> {
        if let Some((i, bytes)) = &handle.cache.last
            && *i == index
        {
            return Ok(bytes.clone());
        }
        if usize::try_from(index).map_or(true, |i| i >= handle.refs.len()) {
            return Ok(Arc::default());
        }
        // A chunk of a batch still being stored is read back once it is stored.
        self.wait_stored(handle).await?;
        // Fetches for other chunks than this one and the ones after it are not wanted.
        while let Some((i, _)) = handle.cache.ahead.front()
            && *i != index
        {
            if let Some((_, fetching)) = handle.cache.ahead.pop_front() {
                fetching.abort();
            }
        }
        let fetched = match handle.cache.ahead.pop_front() {
            Some((_, fetching)) => fetching
                .await
                .map_err(|e| Error::Io(format!("reading ahead: {e}")))?,
            None => self.fetch_stored(handle, index).await,
        };
        let bytes = match fetched {
            // Opened with a key from a directory older than the file's re-keying
            // elsewhere: the key a directory read afresh gives, once.
            Err(Error::Corrupt { .. }) if self.take_fresh_key(handle).await => {
                self.fetch_stored(handle, index).await?
            }
            fetched => fetched?,
        };
        let bytes = Arc::new(bytes);
        handle.cache.last = Some((index, bytes.clone()));
        self.read_ahead(handle, index);
        Ok(bytes)
    }

    /// Fetches and opens stored chunk `index` of the file of `handle` (in range).
    async fn fetch_stored(&self, handle: &Handle, index: u64) -> Result<Vec<u8>, Error> {
        let node = handle.node();
        let chunk = handle.refs[index as usize];
        self.fetch_chunk(node, &node.key, node.id(), index, chunk)
            .await
    }

    /// Takes the key that the file of `handle` has in its directory, read afresh (with
    /// every inode on the way), where it differs from the handle's: whether it did. A
    /// handle opened through a directory version older than another writer's re-keying of
    /// the file (its first write after a revocation) holds the old key.
    async fn take_fresh_key(&self, handle: &mut Handle) -> bool {
        let (path, id) = (handle.node().path.clone(), handle.node().id());
        for node in &handle.nodes {
            self.blocks.forget(node.id());
        }
        let Ok(nodes) = self.walk(&path).await else {
            return false;
        };
        let Some(fresh) = nodes.last().filter(|n| n.id() == id) else {
            return false;
        };
        let i = handle.nodes.len() - 1;
        let mine = &mut handle.nodes[i];
        if fresh.key == mine.key && fresh.previous_key == mine.previous_key {
            return false;
        }
        mine.key = fresh.key.clone();
        mine.previous_key = fresh.previous_key.clone();
        while let Some((_, fetching)) = handle.cache.ahead.pop_front() {
            fetching.abort();
        }
        true
    }

    /// Starts fetching the stored chunks after `index` (up to [`READ_AHEAD`] of them).
    fn read_ahead(&self, handle: &mut Handle, index: u64) {
        // The node, borrowed apart from the cache.
        let Some(node) = handle.nodes.last() else {
            return;
        };
        let mut next = handle.cache.ahead.back().map_or(index + 1, |(i, _)| i + 1);
        while next <= index + READ_AHEAD {
            let Some(chunk) = usize::try_from(next).ok().and_then(|i| handle.refs.get(i)) else {
                break;
            };
            if handle.dirty.contains_key(&next) {
                break;
            }
            let fetching = tokio::spawn(fetch_and_open(
                self.blocks.clone(),
                node.path.clone(),
                keys_for(node, &node.key),
                node.id(),
                next,
                *chunk,
            ));
            handle.cache.ahead.push_back((next, fetching));
            next += 1;
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub async fn read(
        &self,
        handle: &mut Handle,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        Ok(self.read_shared(handle, offset, len).await?.into_vec())
    }

    /// [`Client::read`], without a copy when the bytes lie in one stored chunk.
    pub async fn read_shared(
        &self,
        handle: &mut Handle,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, Error> {
        let end = handle.size.min(offset.saturating_add(len as u64));
        let cs = handle.chunk_size as u64;
        let index = offset / cs;
        let start = offset.saturating_sub(index * cs) as usize;
        let stop = end.saturating_sub(index * cs) as usize;
        if offset < end && stop <= handle.chunk_size && !handle.dirty.contains_key(&index) {
            let chunk = self.stored(handle, index).await?;
            if stop <= chunk.len() {
                return Ok(Bytes(Shared::Within(chunk, start..stop)));
            }
        }
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / cs;
            let start = (pos - index * cs) as usize;
            let stop = ((end - index * cs) as usize).min(handle.chunk_size);
            let stored;
            let chunk: &[u8] = match handle.dirty.get(&index) {
                Some(d) => &d[..],
                None => {
                    stored = self.stored(handle, index).await?;
                    &stored
                }
            };
            if start >= chunk.len() {
                // A hole (bytes past a stored chunk's end read as zeros).
                out.resize(out.len() + (stop - start), 0);
            } else {
                out.extend_from_slice(&chunk[start..stop.min(chunk.len())]);
                if stop > chunk.len() {
                    out.resize(out.len() + (stop - chunk.len()), 0);
                }
            }
            pos = index * cs + stop as u64;
        }
        Ok(Bytes(Shared::Owned(out)))
    }

    fn check_writable(&self, handle: &Handle) -> Result<(), Error> {
        if let Some(failed) = &handle.failed {
            // Chunks of this handle's writes were not stored: no version may refer to
            // them, so the handle stays failed until the file is opened again.
            return Err(failed.clone());
        }
        let node = handle.node();
        if node.read_only {
            return Err(Error::ReadOnly {
                path: node.path.to_string(),
                reason: "a conflict copy cannot be written; remove it or copy it".into(),
            });
        }
        self.chain_for(&node.path, &node.binding.path).map(|_| ())
    }

    /// Writes `data` at `offset`; the file grows as needed (a gap reads as zeros).
    pub async fn write(
        &self,
        handle: &mut Handle,
        offset: u64,
        data: &[u8],
    ) -> Result<usize, Error> {
        self.check_writable(handle)?;
        check_size(handle, offset.saturating_add(data.len() as u64))?;
        handle.touch_data();
        if offset > handle.size {
            self.set_len(handle, offset).await?;
        }
        let cs = handle.chunk_size as u64;
        let mut written = 0usize;
        while written < data.len() {
            let pos = offset + written as u64;
            let index = pos / cs;
            let start = (pos - index * cs) as usize;
            let take = (handle.chunk_size - start).min(data.len() - written);
            if !handle.dirty.contains_key(&index) {
                // A whole chunk written needs nothing of what was there.
                let old = if start == 0 && take == handle.chunk_size {
                    ChunkBuf::with_capacity(handle.chunk_size)
                } else {
                    self.plaintext_of(handle, index).await?
                };
                handle.dirty.insert(index, old);
                handle.cache.clear();
            }
            let chunk = handle
                .dirty
                .get_mut(&index)
                .ok_or_else(|| Error::Io("a buffered chunk went missing".into()))?;
            if chunk.capacity() < start + take {
                // Doubling, as a vector grows, up to a whole chunk.
                let mut want = (chunk.capacity() * 2).max(start + take);
                if want >= handle.chunk_size {
                    want = handle.chunk_size.max(start + take);
                }
                chunk.reserve_total(want);
            }
            let bytes = &data[written..written + take];
            // What lies over bytes already there replaces them; the rest is appended (a
            // gap before it reads as zeros).
            let over = chunk.len().saturating_sub(start).min(take);
            if over > 0 {
                chunk[start..start + over].copy_from_slice(&bytes[..over]);
            }
            if over < take {
                chunk.resize(start + over, 0);
                chunk.extend_from_slice(&bytes[over..]);
            }
            written += take;
        }
        handle.size = handle.size.max(offset + data.len() as u64);
        if handle.dirty.len() >= self.config.max_dirty_chunks {
            self.flush(handle).await?;
        }
        Ok(written)
    }

    /// Sets the permission bits of the file or directory at `path` (a new version).
    pub async fn chmod(&self, path: &Path, mode: u32) -> Result<(), Error> {
        self.restamp(path, Some(mode), None).await
    }

    /// A new version of what is at `path`, with the same contents and a new mode or
    /// modification time (`chmod`, `utimes`; the time is kept when not given).
    async fn restamp(
        &self,
        path: &Path,
        mode: Option<u32>,
        mtime_ns: Option<u64>,
    ) -> Result<(), Error> {
        let mut nodes = self.walk(path).await?;
        let i = nodes.len() - 1;
        if nodes[i].kind != Kind::Dir {
            let mut handle = self.handle_of(path, nodes)?;
            if let Some(mode) = mode {
                self.set_mode(&mut handle, mode)?;
            }
            if let Some(mtime_ns) = mtime_ns {
                self.set_mtime(&mut handle, mtime_ns)?;
            }
            return self.fsync(&mut handle).await;
        }
        if nodes[i].read_only {
            return Err(Error::ReadOnly {
                path: nodes[i].path.to_string(),
                reason: "a conflict copy cannot be written; remove it or copy it".into(),
            });
        }
        self.chain_for(&nodes[i].path, &nodes[i].binding.path)?;
        // Entries staged for it go in first, so that they do not move its time later.
        self.flush_dir(nodes[i].id()).await?;
        self.refresh(&mut nodes[i]).await?;
        let dir = self.read_dir(&nodes[i]).await?;
        let node = &mut nodes[i];
        node.mode_override = mode.map(|m| m & 0o7777);
        node.mtime_override = mtime_ns.or_else(|| node.current.as_ref().map(|v| v.inode.mtime_ns));
        self.write_dir(&mut nodes, i, &dir).await
    }

    /// Sets the permission bits (`mode & 0o7777`) of an open file; they are part of the
    /// next version ([`Client::fsync`]).
    pub fn set_mode(&self, handle: &mut Handle, mode: u32) -> Result<(), Error> {
        self.check_writable(handle)?;
        handle.mode = mode & 0o7777;
        handle.changed = true;
        Ok(())
    }

    /// Sets the modification time (nanoseconds since the UNIX epoch) of an open file's
    /// next version ([`Client::fsync`]); a later write sets it to the time of that
    /// version again.
    pub fn set_mtime(&self, handle: &mut Handle, mtime_ns: u64) -> Result<(), Error> {
        self.check_writable(handle)?;
        handle.mtime = Some(mtime_ns);
        handle.changed = true;
        Ok(())
    }

    /// Sets the modification time of the file or directory at `path` (a new version, as
    /// [`Client::chmod`] makes).
    pub async fn set_times(&self, path: &Path, mtime_ns: u64) -> Result<(), Error> {
        self.restamp(path, None, Some(mtime_ns)).await
    }

    /// Sets the file's length: shorter drops bytes, longer appends zeros.
    pub async fn truncate(&self, handle: &mut Handle, size: u64) -> Result<(), Error> {
        self.check_writable(handle)?;
        check_size(handle, size)?;
        self.set_len(handle, size).await
    }

    async fn set_len(&self, handle: &mut Handle, size: u64) -> Result<(), Error> {
        // Refs change below: the batches under way put theirs in first.
        self.wait_stored(handle).await?;
        handle.touch_data();
        let cs = handle.chunk_size as u64;
        let count = chunk_count(size, handle.chunk_size);
        if size < handle.size {
            // The new last chunk is read first: a read that fails leaves the file whole.
            let last = if size.is_multiple_of(cs) {
                None
            } else {
                let last = (count - 1) as u64;
                let mut chunk = self.plaintext_of(handle, last).await?;
                chunk.resize((size - last * cs) as usize, 0);
                Some((last, chunk))
            };
            handle.refs.truncate(count);
            handle.dirty.retain(|i, _| (*i as usize) < count);
            if let Some((last, chunk)) = last {
                handle.dirty.insert(last, chunk);
            }
        } else if size > handle.size {
            // Fill the old last chunk, then add zero chunks (kept dirty, flushed in turn).
            let mut pos = handle.size;
            while pos < size {
                let index = pos / cs;
                let mut chunk = self.plaintext_of(handle, index).await?;
                let want = ((size - index * cs).min(cs)) as usize;
                chunk.resize(want, 0);
                handle.dirty.insert(index, chunk);
                pos = index * cs + want as u64;
                if handle.dirty.len() >= self.config.max_dirty_chunks {
                    handle.size = pos;
                    self.flush(handle).await?;
                }
            }
        }
        handle.size = size;
        handle.cache.clear();
        Ok(())
    }

    /// Seals and stores the buffered chunks in the background (not yet a version: see
    /// [`Client::fsync`], which waits for them). The writer goes on meanwhile; once
    /// [`BATCHES_IN_FLIGHT`] batches are under way, it waits for the oldest.
    async fn flush(&self, handle: &mut Handle) -> Result<(), Error> {
        if handle.dirty.is_empty() {
            return Ok(());
        }
        while handle.storing.len() >= BATCHES_IN_FLIGHT {
            self.wait_oldest(handle).await?;
        }
        let dirty = std::mem::take(&mut handle.dirty);
        handle
            .unsynced_since
            .get_or_insert_with(std::time::Instant::now);
        let node = handle.node();
        let (id, key, path) = (node.id(), node.key.clone(), node.path.clone());
        let (blocks, parallel) = (self.blocks.clone(), self.config.parallel);
        handle.storing.push_back(tokio::spawn(async move {
            let (refs, batch) = seal(id, &key, dirty, parallel).await?;
            blocks
                .put_chunks(id, batch)
                .await
                .map_err(blocks_err(&path))?;
            Ok(refs)
        }));
        let count = chunk_count(handle.size, handle.chunk_size);
        let placeholder = ChunkRef {
            id: crate::id::ChunkId([0; 32]),
            len: 0,
        };
        handle
            .refs
            .resize(count.max(handle.refs.len()), placeholder);
        Ok(())
    }

    /// Waits for every batch of chunks being stored.
    async fn wait_stored(&self, handle: &mut Handle) -> Result<(), Error> {
        while !handle.storing.is_empty() {
            self.wait_oldest(handle).await?;
        }
        Ok(())
    }

    /// Waits for the oldest batch being stored and takes in its refs.
    async fn wait_oldest(&self, handle: &mut Handle) -> Result<(), Error> {
        let Some(storing) = handle.storing.pop_front() else {
            return Ok(());
        };
        let stored = match storing.await {
            Ok(result) => result,
            Err(e) => Err(Error::Io(format!("storing chunks: {e}"))),
        };
        match stored {
            Ok(refs) => {
                for (index, r) in refs {
                    if let Some(slot) = handle.refs.get_mut(index as usize) {
                        *slot = r;
                    }
                }
                Ok(())
            }
            Err(e) => {
                // The batches after it are no use to a handle that cannot make a version.
                for later in handle.storing.drain(..) {
                    later.abort();
                }
                handle.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Makes the handle's writes a new version, acknowledged by the replicas, and links a
    /// new file into its directory.
    pub async fn fsync(&self, handle: &mut Handle) -> Result<(), Error> {
        if !handle.changed {
            return Ok(());
        }
        self.check_writable(handle)?;
        let i = handle.nodes.len() - 1;
        let new = handle.nodes[i].current.is_none();
        handle.rebased = false;
        if !handle.data_changed && !new {
            // Only the mode or the time changed: the version is made on the latest one
            // (another handle or node may have written since this one was opened), with
            // its bytes and the key its directory now gives for them.
            let path = handle.node().path.clone();
            // Renamed or removed since it was opened (the handle keeps the path it was
            // opened at): the version is made on what the handle holds, by its inode,
            // as a write's is. Failing here lost the change and failed the close.
            let nodes = match self.walk(&path).await {
                Ok(nodes) => nodes,
                Err(Error::NotFound { .. } | Error::NotADirectory { .. }) => handle.nodes.clone(),
                Err(e) => return Err(e),
            };
            let fresh = &nodes[nodes.len() - 1];
            let version = |n: &Node| n.current.as_ref().map(|v| v.version);
            if fresh.id() == handle.nodes[i].id()
                && !fresh.read_only
                && version(fresh) != version(&handle.nodes[i])
                && let Some(current) = fresh.current.clone()
            {
                handle.size = current.inode.size;
                handle.chunk_size = current.inode.chunk_size as usize;
                handle.refs = current.inode.chunks.clone();
                handle.cache.clear();
                handle.nodes = nodes;
                handle.rebased = true;
            }
        }
        // Shares and revocations since the handle was opened: its file and the
        // directories above it must be sealed under the keys a fresh walk would use.
        if !new {
            self.refresh_above(&mut handle.nodes, false).await?;
        } else if i > 0 && !self.config.stage_directories {
            // A new file is linked into its directory now, with the walk it was created
            // on: that walk is taken afresh as well, and the file's key (new, and in no
            // directory yet) is labelled with the epochs it gives. Where changes are
            // staged, the flush that links the file takes its walk afresh.
            let mut above = handle.nodes[..i].to_vec();
            self.refresh_above(&mut above, true).await?;
            let governing = above[above.len() - 1].governing.clone();
            let mut file = handle.nodes[i].clone();
            file.governing = governing.clone();
            file.key_epochs = governing;
            above.push(file);
            handle.nodes = above;
        }
        let i = handle.nodes.len() - 1;
        let rekey = !new && handle.nodes[i].stale_key();
        if rekey {
            // Resealed bytes are not new bytes (the time stays), but a retry must not
            // take other chunks in place of these.
            if !handle.data_changed && handle.mtime.is_none() {
                handle.mtime = handle.nodes[i].current.as_ref().map(|v| v.inode.mtime_ns);
            }
            handle.data_changed = true;
            // Everything is sealed again under a new key.
            for index in 0..chunk_count(handle.size, handle.chunk_size) as u64 {
                if !handle.dirty.contains_key(&index) {
                    let bytes = self.plaintext_of(handle, index).await?;
                    handle.dirty.insert(index, bytes);
                }
            }
            handle.nodes[i].new_key();
        }
        self.flush(handle).await?;
        self.wait_stored(handle).await?;
        if rekey {
            // The directory learns the new key (keeping the old one) before the version
            // under it exists: a crash in between leaves a file every reader still opens.
            // Only where its name still names this file: one renamed or removed while
            // open would otherwise be put back under its old name (over whatever took
            // the name since).
            self.check_still_named(&mut handle.nodes, i).await?;
            self.link_up(&mut handle.nodes, i).await?;
        }
        if handle
            .unsynced_since
            .is_some_and(|t| t.elapsed() > self.config.max_unsynced)
        {
            return Err(Error::ReadOnly {
                path: handle.node().path.to_string(),
                reason: format!(
                    "writes stayed unsynced for more than {} s and their chunks may have been \
                     collected; write the file again",
                    self.config.max_unsynced.as_secs()
                ),
            });
        }
        let node = &mut handle.nodes[i];
        let parents = node.current.iter().map(|v| v.version).collect();
        let chunks = handle.refs.clone();
        let (size, chunk_size, mode) = (handle.size, handle.chunk_size, handle.mode);
        // Set by utimes, else the time of this version if the bytes changed, else kept.
        let mtime_ns = match handle.mtime {
            Some(t) => Some(t),
            None if !handle.data_changed => node.current.as_ref().map(|v| v.inode.mtime_ns),
            None => None,
        };
        self.commit(
            node,
            Contents {
                size,
                chunk_size,
                chunks,
                mode,
                mtime_ns,
                parents,
            },
            None,
        )
        .await?;
        if handle.unlinked {
            // Not done until the directory names it: a failed link leaves the handle
            // changed, and the next fsync writes and links again.
            if self.config.stage_directories && i > 0 {
                let node = &handle.nodes[i];
                let link = Change::Put {
                    entry: node.entry(),
                    replaces: Vec::new(),
                };
                self.stage(&handle.nodes[..i], node.name(), link)?;
            } else {
                // Linked back with its directory if that was removed meanwhile.
                self.link_new(&mut handle.nodes, i).await?;
            }
            handle.unlinked = false;
        }
        handle.changed = false;
        handle.data_changed = false;
        handle.mtime = None;
        handle.unsynced_since = None;
        Ok(())
    }

    /// Writes the staged directory changes and makes every write acknowledged so far
    /// durable (see the module docs).
    pub async fn sync(&self) -> Result<(), Error> {
        let flushed = self.flush_staged().await;
        self.sync_blocks().await?;
        flushed
    }

    /// [`Client::sync`] on behalf of an operation on `paths` (an `fsync` of one file, a
    /// command): the staged changes are flushed as [`Client::flush_staged_for`] does, so
    /// only errors of the directories at, above or below `paths` are returned.
    /// A removal of one of `paths` that a flush gave up (the directory gained names made
    /// elsewhere) is reported as [`Error::NotEmpty`]: the command that asked for it did
    /// not do it.
    pub async fn sync_for(&self, paths: &[&Path]) -> Result<(), Error> {
        let flushed = self.flush_staged_for(paths).await;
        self.sync_blocks().await?;
        flushed?;
        match self.take_given_up(paths) {
            Some(kept) => Err(Error::NotEmpty {
                path: format!("{kept} (another node made names in it meanwhile)"),
            }),
            None => Ok(()),
        }
    }

    /// [`Client::sync`] as a periodic sync does it: the staged changes are flushed as
    /// [`Client::flush_due`] does (errors logged), and every write acknowledged so far is
    /// made durable.
    pub async fn sync_due(&self) -> Result<(), Error> {
        self.flush_due().await;
        self.sync_blocks().await
    }

    /// Makes every write the store acknowledged durable.
    async fn sync_blocks(&self) -> Result<(), Error> {
        self.blocks
            .sync()
            .await
            .map_err(|e| Error::Io(format!("making writes durable: {e}")))
    }

    /// Writes everything from `source` as the file at `path` (created or replaced),
    /// calling `progress` with the bytes stored so far.
    pub async fn put(
        &self,
        path: &Path,
        source: impl AsyncRead + Unpin,
        progress: impl FnMut(u64),
    ) -> Result<Stat, Error> {
        let mut handle = self.create(path).await?;
        let size = handle.chunk_size;
        // Each piece is read where its chunk will be sealed, with room for it.
        let pieces = futures::stream::unfold(source, move |mut source| async move {
            let mut piece = ChunkBuf::with_capacity(size);
            match piece.fill_from_async(&mut source, size).await {
                Ok(_) => Some((Ok(piece), source)),
                Err(e) => Some((Err(Error::Io(e.to_string())), source)),
            }
        });
        self.write_pieces(&mut handle, Box::pin(pieces), progress)
            .await?;
        self.fsync(&mut handle).await?;
        Ok(stat_of(handle.node()))
    }

    /// [`Client::put`] from a local file, read on a blocking thread a few chunks ahead of
    /// the sealing, straight into the buffers the chunks are sealed in.
    pub async fn put_file(
        &self,
        path: &Path,
        file: std::fs::File,
        progress: impl FnMut(u64),
    ) -> Result<Stat, Error> {
        let mut handle = self.create(path).await?;
        let size = handle.chunk_size;
        let (pieces, mut read) = tokio::sync::mpsc::channel(PUT_READ_AHEAD);
        let reader = tokio::task::spawn_blocking(move || read_pieces(file, size, &pieces));
        let pieces = futures::stream::poll_fn(move |cx| read.poll_recv(cx))
            .map(|piece| piece.map_err(|e| Error::Io(format!("reading the file to put: {e}"))));
        let written = self.write_pieces(&mut handle, pieces, progress).await;
        // The reader ends once its channel is gone (it is, with `pieces`).
        let read = reader
            .await
            .map_err(|e| Error::Io(format!("reading the file to put: {e}")));
        written?;
        read?;
        self.fsync(&mut handle).await?;
        Ok(stat_of(handle.node()))
    }

    /// Writes `pieces` of a new file from its start: chunk-sized, until one is shorter
    /// (or empty), each handed over whole (see [`Client::write_owned`]).
    async fn write_pieces(
        &self,
        handle: &mut Handle,
        mut pieces: impl futures::Stream<Item = Result<ChunkBuf, Error>> + Unpin,
        mut progress: impl FnMut(u64),
    ) -> Result<(), Error> {
        let size = handle.chunk_size;
        let mut offset = 0u64;
        while let Some(piece) = pieces.next().await {
            let piece = piece?;
            let len = piece.len();
            if len == 0 {
                break;
            }
            self.write_owned(handle, offset, piece).await?;
            offset += len as u64;
            progress(offset);
            if len < size {
                break;
            }
        }
        Ok(())
    }

    /// [`Client::write`] of bytes the caller gives up: a piece that replaces a whole
    /// chunk (it starts the chunk, and ends it or the file) becomes that chunk's buffer
    /// without being copied, and is sealed where it lies.
    pub async fn write_owned(
        &self,
        handle: &mut Handle,
        offset: u64,
        piece: ChunkBuf,
    ) -> Result<usize, Error> {
        let cs = handle.chunk_size as u64;
        let len = piece.len();
        let end = offset.saturating_add(len as u64);
        let whole = offset.is_multiple_of(cs)
            && offset <= handle.size
            && len > 0
            && (len as u64 == cs || (len as u64) < cs && end >= handle.size);
        if !whole {
            return self.write(handle, offset, &piece).await;
        }
        self.check_writable(handle)?;
        check_size(handle, end)?;
        handle.touch_data();
        handle.dirty.insert(offset / cs, piece);
        handle.cache.clear();
        handle.size = handle.size.max(end);
        if handle.dirty.len() >= self.config.max_dirty_chunks {
            self.flush(handle).await?;
        }
        Ok(len)
    }

    /// Writes the file at `path` to `sink`, calling `progress` with the bytes so far.
    pub async fn get(
        &self,
        path: &Path,
        mut sink: impl AsyncWrite + Unpin,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let mut handle = self.open(path).await?;
        let mut afresh = false;
        let mut done = 0u64;
        'again: loop {
            let mut chunks = self.plaintexts(&handle);
            while let Some(chunk) = chunks.next().await {
                let chunk = match chunk {
                    Err(Error::Corrupt { .. }) if done == 0 && !afresh => {
                        drop(chunks);
                        afresh = true;
                        handle = self.open_afresh(path, &handle).await?;
                        continue 'again;
                    }
                    chunk => chunk?,
                };
                sink.write_all(&chunk)
                    .await
                    .map_err(|e| Error::Io(e.to_string()))?;
                done += chunk.len() as u64;
                progress(done);
            }
            break;
        }
        sink.flush().await.map_err(|e| Error::Io(e.to_string()))?;
        Ok(done)
    }

    /// [`Client::get`] into a local file, written on a blocking thread while the next
    /// chunks are fetched and opened: the bytes written, and the file (to sync, say).
    pub async fn get_file(
        &self,
        path: &Path,
        file: std::fs::File,
        mut progress: impl FnMut(u64),
    ) -> Result<(u64, std::fs::File), Error> {
        let mut handle = self.open(path).await?;
        let (pieces, mut take) = tokio::sync::mpsc::channel::<Vec<u8>>(GET_WRITE_BEHIND);
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut file = file;
            while let Some(piece) = take.blocking_recv() {
                file.write_all(&piece)?;
            }
            Ok::<_, std::io::Error>(file)
        });
        let mut done = 0u64;
        let mut fetched = Ok(());
        let mut afresh = false;
        'again: loop {
            let mut chunks = self.plaintexts(&handle);
            while let Some(chunk) = chunks.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(Error::Corrupt { .. }) if done == 0 && !afresh => {
                        drop(chunks);
                        afresh = true;
                        match self.open_afresh(path, &handle).await {
                            Ok(h) => handle = h,
                            Err(e) => fetched = Err(e),
                        }
                        if fetched.is_ok() {
                            continue 'again;
                        }
                        break 'again;
                    }
                    Err(e) => {
                        fetched = Err(e);
                        break;
                    }
                };
                let len = chunk.len() as u64;
                // Refused only when the writer stopped: its error is the answer.
                if pieces.send(chunk).await.is_err() {
                    break;
                }
                done += len;
                progress(done);
            }
            break;
        }
        drop(pieces);
        let written = writer
            .await
            .map_err(|e| Error::Io(format!("writing the file got: {e}")))?
            .map_err(|e| Error::Io(format!("writing the file got: {e}")));
        fetched?;
        Ok((done, written?))
    }

    /// Opens `path` again, every inode on the way asked for afresh: for a reader whose
    /// first chunk did not open with the key its directory gave (a directory version
    /// from a cache, older than another writer's re-keying of the file after a
    /// revocation, names the old key).
    async fn open_afresh(&self, path: &Path, handle: &Handle) -> Result<Handle, Error> {
        for node in &handle.nodes {
            self.blocks.forget(node.id());
        }
        self.open(path).await
    }

    /// The plaintext of a file's chunks in order, fetched and opened
    /// [`Config::parallel`] at a time.
    fn plaintexts<'a>(
        &'a self,
        handle: &'a Handle,
    ) -> impl futures::Stream<Item = Result<Vec<u8>, Error>> + Unpin + 'a {
        let node = handle.node();
        futures::stream::iter(handle.refs.iter().copied().enumerate())
            .map(move |(i, c)| {
                self.fetch_chunk(node, &node.key, node.id(), i as u64, c)
                    .boxed()
            })
            .buffered(self.config.parallel)
    }

    /// Removes a file or an empty directory. Removing a conflict copy merges the fork
    /// (the shown version stays).
    pub async fn unlink(&self, path: &Path) -> Result<(), Error> {
        self.remove(path, None).await
    }

    /// [`Client::unlink`], refused unless the path is of kind `expected` (when given):
    /// POSIX's `unlink` and `rmdir`.
    pub async fn remove(&self, path: &Path, expected: Option<Kind>) -> Result<(), Error> {
        let mut nodes = match self.walk(path).await {
            Ok(nodes) => nodes,
            // A name whose inode has no version any replica holds or any reader may be
            // shown (every version signed through a revoked writecap): nothing to keep,
            // and nothing else to do with the name but take it away.
            Err(Error::Blocks {
                source: BlockError::NotFound,
                ..
            }) if path.parent().is_some() => return self.remove_dangling(path).await,
            Err(e) => return Err(e),
        };
        let target = nodes.len() - 1;
        match (expected, nodes[target].kind) {
            (Some(Kind::Dir), Kind::File | Kind::Symlink) => {
                return Err(Error::NotADirectory {
                    path: path.to_string(),
                });
            }
            (Some(Kind::File | Kind::Symlink), Kind::Dir) => {
                return Err(Error::IsADirectory {
                    path: path.to_string(),
                });
            }
            _ => {}
        }
        if target == 0 {
            return Err(Error::ReadOnly {
                path: path.to_string(),
                reason: "an anchor (a tree's root or a shared directory) is not removed this way"
                    .into(),
            });
        }
        if nodes[target].read_only {
            return self.resolve_fork(&mut nodes[target]).await;
        }
        if nodes[target].kind == Kind::Dir {
            // Empty as it is now, not as a walk remembered it: a file another writer made
            // there since would go with the directory.
            self.blocks.forget(nodes[target].id());
            self.refresh(&mut nodes[target]).await?;
        }
        if nodes[target].kind == Kind::Dir
            && !self
                .with_staged(&nodes[target], self.read_dir_shared(&nodes[target]).await?)
                .entries
                .is_empty()
        {
            return Err(Error::NotEmpty {
                path: path.to_string(),
            });
        }
        let name = nodes[target].name();
        let parent = target - 1;
        if self.config.stage_directories {
            // The walk found it, in this client's view.
            let gone = nodes[target].id();
            return self.stage(&nodes[..=parent], name, Change::Remove(vec![gone]));
        }
        self.flush_dir(nodes[parent].id()).await?;
        let gone = self
            .remove_entry(&mut nodes[..=parent], &name, path)
            .await?;
        self.check_removed(&mut nodes[..=parent], &name, &gone, path)
            .await
    }

    /// After directory `gone` (or anything else) was removed from the directory last in
    /// `nodes` under `name` (of `path`): [`Client::relink_if_filled`], a directory that
    /// comes back reported as [`Error::NotEmpty`]. The removal is written: a check that
    /// cannot be made now is made later, and not this operation's error.
    async fn check_removed(
        &self,
        nodes: &mut [Node],
        name: &str,
        gone: &Entry,
        path: &Path,
    ) -> Result<(), Error> {
        if gone.kind != Kind::Dir {
            return Ok(());
        }
        match self.relink_if_filled(nodes, name, gone).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(Error::NotEmpty {
                path: format!("{path} (another node made names in it meanwhile)"),
            }),
            Err(e) => {
                self.recheck_later(nodes, name, gone, true, &e);
                Ok(())
            }
        }
    }

    /// Takes `name` (of `path`) out of the directory last in `nodes`, read afresh; the
    /// entry it named.
    async fn remove_entry(
        &self,
        nodes: &mut [Node],
        name: &str,
        path: &Path,
    ) -> Result<Entry, Error> {
        let parent = nodes.len() - 1;
        self.refresh(&mut nodes[parent]).await?;
        let mut dir = self.read_dir(&nodes[parent]).await?;
        let Some(gone) = dir.remove_name(name) else {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        };
        self.write_dir(nodes, parent, &dir).await?;
        Ok(gone)
    }

    /// Takes the name `path` out of its directory, whose entry names an inode without a
    /// version to show (see [`Client::remove`]).
    async fn remove_dangling(&self, path: &Path) -> Result<(), Error> {
        let parent_path = path.parent().ok_or_else(|| Error::NotFound {
            path: path.to_string(),
        })?;
        let name = path.segments().last().cloned().unwrap_or_default();
        self.flush_staged_for(&[path]).await?;
        let mut nodes = self.walk(&parent_path).await?;
        let parent = nodes.len() - 1;
        if nodes[parent].kind != Kind::Dir {
            return Err(Error::NotADirectory {
                path: parent_path.to_string(),
            });
        }
        self.remove_entry(&mut nodes, &name, path).await.map(|_| ())
    }

    /// A version of a forked file naming every head, with the shown version's contents.
    async fn resolve_fork(&self, node: &mut Node) -> Result<(), Error> {
        let heads: Vec<VersionId> = inode::heads(&node.versions)
            .iter()
            .map(|h| h.version)
            .collect();
        let Some(winner) = inode::winner(&node.versions).cloned() else {
            return Ok(());
        };
        node.current = Some(winner.clone());
        node.read_only = false;
        let i = winner.inode;
        self.commit(
            node,
            Contents {
                size: i.size,
                chunk_size: i.chunk_size as usize,
                chunks: i.chunks.clone(),
                mode: i.mode,
                mtime_ns: Some(i.mtime_ns),
                parents: heads,
            },
            None,
        )
        .await
        .map(|_| ())
    }

    /// Moves a file or directory. The inode keeps its binding: later writes to it need a
    /// writecap covering the path it was created at.
    pub async fn rename(&self, from: &Path, to: &Path) -> Result<(), Error> {
        if to.starts_with(from) && to != from {
            return Err(Error::Invalid(format!("cannot move {from} into itself")));
        }
        if to == from {
            // As rename(2): nothing to do once it exists (it wrote a new version).
            self.walk(from).await?;
            return Ok(());
        }
        // Both directories as written: the move reads and writes them itself.
        self.flush_staged_for(&[from, to]).await?;
        let source = self.walk(from).await?;
        let s = source.len() - 1;
        if s == 0 || source[s].read_only || source[s].binding.is_anchor() {
            return Err(Error::ReadOnly {
                path: from.to_string(),
                reason: "a tree's root, shared directories and conflict copies are not moved \
                         (readers find a shared directory by its path)"
                    .into(),
            });
        }
        if source[s].kind == Kind::Dir
            && let Some(shared) = self.anchors_below(from, 1).await?.pop()
        {
            return Err(Error::ReadOnly {
                path: from.to_string(),
                reason: format!(
                    "{shared} below it is shared, and readers find a shared directory by its path"
                ),
            });
        }
        let entry = source[s].entry();
        let name = to.segments().last().cloned().unwrap_or_default();
        dir::check_name(&name).map_err(Error::Invalid)?;
        let mut dest = self.parent_dirs(to, false).await?;
        let d = dest.len() - 1;
        if dest[d].kind != Kind::Dir {
            return Err(Error::NotADirectory {
                path: dest[d].path.to_string(),
            });
        }
        // Into the new place first, out of the old one second: a crash in between leaves
        // two names, never none.
        self.refresh(&mut dest[d]).await?;
        let mut dir = self.read_dir(&dest[d]).await?;
        // Over an existing name, as rename(2): a file replaces a file, a directory an
        // empty directory; a file over a directory, or the other way round, is refused.
        let mut replaced_dir = None;
        if let Some(existing) = dir.entries.get(&name) {
            if existing.inode == entry.inode {
                return Ok(());
            }
            match (entry.kind == Kind::Dir, existing.kind == Kind::Dir) {
                (false, true) => {
                    return Err(Error::IsADirectory {
                        path: to.to_string(),
                    });
                }
                (true, false) => {
                    return Err(Error::NotADirectory {
                        path: to.to_string(),
                    });
                }
                (true, true) => {
                    if existing.inode == Binding::anchor(to.clone()).id() {
                        return Err(Error::ReadOnly {
                            path: to.to_string(),
                            reason: "a shared directory is not replaced".into(),
                        });
                    }
                    // Empty as it is now (see `remove`).
                    self.blocks.forget(existing.inode);
                    if !self.readdir(to).await?.is_empty() {
                        return Err(Error::NotEmpty {
                            path: to.to_string(),
                        });
                    }
                    // Replaced: removed, as far as a writer of new names there goes.
                    replaced_dir = Some(existing.clone());
                    dir.note_removed(existing.inode);
                }
                (false, false) => {}
            }
        }
        // Named here now: not a removed directory (see `relink_removed`) here or where
        // it was, whatever a merge kept.
        dir.removed.retain(|r| *r != entry.inode);
        dir.entries.insert(name.clone(), entry.clone());
        self.write_dir(&mut dest, d, &dir).await?;
        // Names another node made in the replaced directory meanwhile bring it back
        // beside (see `relink_if_filled`); the move stands.
        if let Some(replaced) = replaced_dir {
            // Its `NotEmpty` is the replaced directory's, not the move's.
            let _ = self.check_removed(&mut dest, &name, &replaced, to).await;
        }
        // A new name in the destination, whose removal may have raced with it; not
        // within one directory, which held the moved name all along (never empty).
        if source[s - 1].id() != dest[d].id() {
            self.settle_or_recheck(&mut dest).await;
        }
        let mut source = self
            .walk(&from.parent().unwrap_or_else(|| from.clone()))
            .await?;
        let p = source.len() - 1;
        let mut dir = self.read_dir(&source[p]).await?;
        let old = from.segments().last().cloned().unwrap_or_default();
        if dir
            .entries
            .get(&old)
            .is_some_and(|e| e.inode == entry.inode)
        {
            dir.entries.remove(&old);
            dir.removed.retain(|r| *r != entry.inode);
            self.write_dir(&mut source, p, &dir).await?;
        }
        Ok(())
    }

    /// Up to `most` directories below `dir` that are anchors (shared, or a tree's root
    /// bound there). An anchor's id is its path's, so it is one exactly where an entry
    /// names the inode of the anchor at the entry's path.
    async fn anchors_below(&self, dir: &Path, most: usize) -> Result<Vec<Path>, Error> {
        let mut found = Vec::new();
        let mut pending = vec![dir.clone()];
        // Each directory once: a writer may name a directory (its own, or one above it)
        // in an entry below it, and the walk went round until the path grew too long.
        let mut seen = std::collections::HashSet::new();
        while let Some(dir) = pending.pop() {
            for entry in self.readdir(&dir).await? {
                if entry.kind != Kind::Dir || entry.conflict.is_some() || !seen.insert(entry.inode)
                {
                    continue;
                }
                let child = dir
                    .join(&entry.name)
                    .map_err(|e| Error::Invalid(format!("{dir}/{}: {e}", entry.name)))?;
                if entry.inode == Binding::anchor(child.clone()).id() {
                    found.push(child.clone());
                    if found.len() >= most {
                        return Ok(found);
                    }
                }
                pending.push(child);
            }
        }
        Ok(found)
    }

    // ---- sharing ----

    /// Lets `reader` read everything under `path` (a readcap for it), and with `write`
    /// also write there (a writecap delegated from this node's, valid for `write`, which
    /// is returned: the caller keeps it, to revoke it by later even after the anchor no
    /// longer lists it).
    /// A directory that is not an anchor yet becomes one.
    pub async fn share(
        &self,
        path: &Path,
        reader: &PublicIdentity,
        write: Option<Validity>,
    ) -> Result<Option<Chain>, Error> {
        reader
            .verify()
            .map_err(|e| Error::Invalid(format!("the reader's identity does not verify: {e}")))?;
        // Anchors are rewritten and relinked from the directories as written.
        self.flush_staged_for(&[path]).await?;
        let mut nodes = self.anchor_at(path).await?;
        let i = nodes.len() - 1;
        let current = nodes[i].current.clone().map(|v| v.inode);
        let mut readers = current
            .as_ref()
            .map(|c| c.readers.clone())
            .unwrap_or_default();
        let mut grants = current
            .as_ref()
            .map(|c| c.grants.clone())
            .unwrap_or_default();
        let epoch = current.as_ref().map_or(0, |c| c.epoch);
        let principal = reader.principal();
        readers.retain(|r| r.principal() != principal);
        readers.push(reader.clone());
        let mut granted = None;
        if let Some(validity) = write {
            let mine = self.chain_for(path, path)?;
            let chain = mine
                .delegate(
                    self.identity.signing_key(),
                    principal,
                    path.clone(),
                    validity,
                    keys::now(),
                )
                .map_err(|e| Error::Invalid(format!("cannot delegate a writecap: {e}")))?;
            grants.retain(|g| g.holder() != Some(&principal));
            grants.push(chain.clone());
            granted = Some(chain);
        }
        if readers.len() > inode::MAX_READCAPS || grants.len() > inode::MAX_GRANTS {
            return Err(Error::Invalid(
                "too many readers or writers shared here".into(),
            ));
        }
        self.rewrite_anchor(
            &mut nodes,
            AnchorChange {
                readers,
                grants,
                epoch,
            },
            false,
        )
        .await?;
        Ok(granted)
    }

    /// Takes `principal`'s access to `path` away: its readcap and writecap grant at
    /// `path`, if shared, and at every shared directory below it. Each of those anchors
    /// gets a new key at once, and everything below it a new key on its next write, so
    /// the principal can read no version written there from now on.
    ///
    /// The writecaps this node granted the principal there are returned for the caller
    /// to revoke (a [`keys::RevocationList`] of this node's, made known to replicas and
    /// readers, who then refuse whatever they sign, whenever it claims to be signed).
    /// So that nothing the principal wrote before is lost with them, every current
    /// version under `path` signed through one of them (the principal's, or a writer's
    /// it delegated to) is first signed again by this node, with the same contents.
    pub async fn revoke(&self, path: &Path, principal: &Principal) -> Result<Revoked, Error> {
        self.revoke_with(path, principal, &[]).await
    }

    /// [`Client::revoke`], revoking `also` too: writecaps this node granted the principal
    /// at or below `path` that the anchors may no longer list (a share again replaces
    /// the grant in the anchor, but the older writecap stays valid until revoked).
    pub async fn revoke_with(
        &self,
        path: &Path,
        principal: &Principal,
        also: &[CapId],
    ) -> Result<Revoked, Error> {
        self.flush_staged_for(&[path]).await?;
        if principal == &self.me() {
            return Err(Error::Invalid("a node does not revoke itself".into()));
        }
        let mut anchors = vec![path.clone()];
        if self.stat(path).await?.kind == Kind::Dir {
            anchors.extend(self.anchors_below(path, usize::MAX).await?);
        }
        let mut revoked = Revoked::default();
        for anchor in &anchors {
            let versions = self
                .versions(anchor, Binding::anchor(anchor.clone()).id())
                .await?;
            let Some(current) = inode::winner(&versions) else {
                continue;
            };
            for grant in current
                .inode
                .grants
                .iter()
                .filter(|g| g.holder() == Some(principal))
            {
                let Some(link) = grant.links().last() else {
                    continue;
                };
                if link.issuer().principal() == self.me() {
                    revoked.caps.push(link.id());
                } else {
                    revoked.granted_by_others.push(link.issuer().principal());
                }
            }
        }
        revoked.caps.extend_from_slice(also);
        revoked.caps.sort_unstable();
        revoked.caps.dedup();
        revoked.granted_by_others.sort_unstable();
        revoked.granted_by_others.dedup();
        if !revoked.caps.is_empty() {
            let caps: BTreeSet<CapId> = revoked.caps.iter().copied().collect();
            (revoked.resigned, revoked.not_resigned) = self.resign_under(path, &caps).await;
        }
        let mut any = false;
        for anchor in &anchors {
            any |= self.revoke_at(anchor, principal).await?;
        }
        if !any {
            return Err(Error::Invalid(format!(
                "{principal} holds no readcap at or below {path}"
            )));
        }
        Ok(revoked)
    }

    /// Signs again, as this node and with the same contents, every head version at and
    /// below `path` whose writer's chain has a link in `caps`: how many, and the paths it
    /// could not read or sign again (skipped, so that an entry the revoked writer made
    /// unreadable does not stop its revocation; what it holds is lost with it).
    async fn resign_under(&self, path: &Path, caps: &BTreeSet<CapId>) -> (usize, Vec<String>) {
        let mut resigned = 0;
        let mut failed = Vec::new();
        let mut pending = vec![path.clone()];
        // Each inode once: an entry that names a directory above it (a hostile writer's)
        // made this walk go round, doubling at every level it had two such entries.
        let mut seen = std::collections::HashSet::new();
        while let Some(p) = pending.pop() {
            let step = async {
                let mut nodes = self.walk(&p).await?;
                let i = nodes.len() - 1;
                if !seen.insert(nodes[i].id()) {
                    return Ok((0, Vec::new()));
                }
                let n = self.resign_heads(&mut nodes[i], caps).await?;
                let below = if nodes[i].kind == Kind::Dir {
                    self.readdir(&p).await?
                } else {
                    Vec::new()
                };
                Ok::<_, Error>((n, below))
            };
            match step.await {
                Ok((n, below)) => {
                    resigned += n;
                    for entry in below.into_iter().filter(|e| e.conflict.is_none()) {
                        match p.join(&entry.name) {
                            Ok(child) => pending.push(child),
                            Err(e) => failed.push(format!("{p}/{}: {e}", entry.name)),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %p, error = %e, "cannot sign again what a revoked writer wrote here");
                    failed.push(format!("{p}: {e}"));
                }
            }
        }
        (resigned, failed)
    }

    /// [`Client::resign_under`] for one inode: each head signed through a link in `caps`
    /// gets a successor that is the same but for its sequence, parents, writer, chain and
    /// signing time (a fork stays a fork).
    async fn resign_heads(&self, node: &mut Node, caps: &BTreeSet<CapId>) -> Result<usize, Error> {
        let heads: Vec<Verified> = inode::heads(&node.versions)
            .into_iter()
            .filter(|h| h.inode.chain.links().iter().any(|l| caps.contains(&l.id())))
            .cloned()
            .collect();
        for head in &heads {
            let chain = self.chain_for(&node.path, &node.binding.path)?;
            let mut inode = Inode::clone(&head.inode);
            inode.seq = node.versions.iter().map(|v| v.inode.seq).max().unwrap_or(0) + 1;
            // What the head superseded stays superseded once it is left out
            // (`inode::drop_revoked`).
            inode.parents = vec![head.version];
            inode.writer = self.identity.signing_key().public_key();
            inode.chain = chain;
            inode.signed_at = keys::now();
            self.sign_and_store(node, inode).await?;
        }
        Ok(heads.len())
    }

    /// Revokes `principal` at the anchor at `path`: whether it held anything there
    /// (nothing is written if not, nor where `path` is not shared).
    async fn revoke_at(&self, path: &Path, principal: &Principal) -> Result<bool, Error> {
        let mut nodes = self.walk(path).await?;
        let i = nodes.len() - 1;
        let Some(current) = nodes[i].current.clone().map(|v| v.inode) else {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        };
        if !current.binding.is_anchor() || current.binding.path != *path {
            return Ok(false);
        }
        let mut readers = current.readers.clone();
        let mut grants = current.grants.clone();
        let before = readers.len() + grants.len();
        readers.retain(|r| &r.principal() != principal);
        grants.retain(|g| g.holder() != Some(principal));
        if readers.len() + grants.len() == before {
            return Ok(false);
        }
        // Validation bounds epochs by MAX_SEQ, so this only fails on a tree revoked 2^48 times.
        let epoch = current
            .epoch
            .checked_add(1)
            .filter(|e| *e <= inode::MAX_SEQ)
            .ok_or_else(|| Error::Invalid(format!("{path}: no key epoch left to revoke with")))?;
        let id = nodes[i].id();
        nodes[i].governing.retain(|(a, _)| a != &id);
        nodes[i].governing.push((id, epoch));
        self.rewrite_anchor(
            &mut nodes,
            AnchorChange {
                readers,
                grants,
                epoch,
            },
            true,
        )
        .await?;
        Ok(true)
    }

    /// The nodes down to `path`, whose last is `path`'s anchor (made from the inode there
    /// when it is not one yet).
    async fn anchor_at(&self, path: &Path) -> Result<Vec<Node>, Error> {
        let mut nodes = self.walk(path).await?;
        let i = nodes.len() - 1;
        if nodes[i].binding.is_anchor() && nodes[i].binding.path == *path {
            return Ok(nodes);
        }
        if nodes[i].read_only {
            return Err(Error::ReadOnly {
                path: path.to_string(),
                reason: "a conflict copy is not shared".into(),
            });
        }
        // A rename across bindings: the contents move to a new inode, the anchor, sealed
        // again under a new key (chunks are bound to their inode).
        let (contents, _) = self.contents_to_rewrite(&nodes[i]).await?;
        let old = nodes[i].clone();
        let node = &mut nodes[i];
        node.rebind(Binding::anchor(path.clone()));
        node.key = DataKey::generate();
        node.versions = Vec::new();
        node.current = None;
        // An anchor may have been here before (a shared directory removed since): the
        // new one starts above every epoch the old one reached, since the head with the
        // higher epoch wins a fork (see `inode::order`), and an old head this node did
        // not see (a replica behind) won over the new anchor and brought the old readers
        // back. What is below keys made before it is re-keyed at its next write.
        node.versions = self.versions(path, node.id()).await?;
        let epoch = match node.versions.iter().map(|v| v.inode.epoch).max() {
            None => 0,
            Some(old) => old
                .checked_add(1)
                .filter(|e| *e <= inode::MAX_SEQ)
                .ok_or_else(|| {
                    Error::Invalid(format!("{path}: no key epoch left to share with"))
                })?,
        };
        let id = node.id();
        node.governing.retain(|(a, _)| a != &id);
        node.governing.push((id, epoch));
        node.key_epochs = node.governing.clone();
        let chunks = self.store_contents(node, &contents).await?;
        let mode = old.current.as_ref().map_or(0o644, |v| v.inode.mode);
        let parents = inode::heads(&node.versions)
            .iter()
            .map(|v| v.version)
            .collect();
        let readers = vec![self.identity.public()];
        self.commit(
            node,
            Contents {
                size: contents.len() as u64,
                chunk_size: self.config.chunk_size,
                chunks,
                mode,
                mtime_ns: old.current.as_ref().map(|v| v.inode.mtime_ns),
                parents,
            },
            Some(AnchorChange {
                readers,
                grants: Vec::new(),
                epoch,
            }),
        )
        .await?;
        self.link_up(&mut nodes, i).await?;
        Ok(nodes)
    }

    async fn rewrite_anchor(
        &self,
        nodes: &mut [Node],
        change: AnchorChange,
        rekey: bool,
    ) -> Result<(), Error> {
        let i = nodes.len() - 1;
        let (contents, merged) = self.contents_to_rewrite(&nodes[i]).await?;
        if rekey {
            // The parent's entry learns the new key (keeping the old one) first; when the
            // anchor was reached directly, its parent is found from above.
            nodes[i].new_key();
            self.link_up(nodes, i).await?;
            if i == 0 {
                self.relink_from_above(&nodes[0]).await?;
            }
        }
        let node = &mut nodes[i];
        let chunks = if rekey || merged {
            self.store_contents(node, &contents).await?
        } else {
            node.current
                .as_ref()
                .map(|v| v.inode.chunks.clone())
                .unwrap_or_default()
        };
        let current = node.current.clone().map(|v| v.inode);
        let (mode, chunk_size) = current
            .as_ref()
            .map_or((0o755, self.config.chunk_size), |c| {
                (c.mode, c.chunk_size as usize)
            });
        let chunk_size = if rekey || merged {
            self.config.chunk_size
        } else {
            chunk_size
        };
        let parents = inode::heads(&node.versions)
            .iter()
            .map(|v| v.version)
            .collect();
        self.commit(
            node,
            Contents {
                size: contents.len() as u64,
                chunk_size,
                chunks,
                mode,
                mtime_ns: current.as_ref().map(|c| c.mtime_ns),
                parents,
            },
            Some(change),
        )
        .await?;
        Ok(())
    }

    /// After an anchor reached directly got a new key: updates its parent's entry when
    /// this node can reach and write the parent.
    async fn relink_from_above(&self, anchor: &Node) -> Result<(), Error> {
        let Some(parent) = anchor.path.parent() else {
            return Ok(());
        };
        let mut nodes = match self.walk(&parent).await {
            Ok(nodes) => nodes,
            Err(Error::NotFound { .. } | Error::PermissionDenied { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let p = nodes.len() - 1;
        let mut dir = self.read_dir(&nodes[p]).await?;
        let name = anchor.name();
        if dir
            .entries
            .get(&name)
            .is_some_and(|e| e.inode == anchor.id())
        {
            dir.entries.insert(name, anchor.entry());
            match self.write_dir(&mut nodes, p, &dir).await {
                Ok(()) | Err(Error::NotAuthorized { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writecaps handed to this node in the anchors of `path` and above, installed into
    /// this client; returns them so the caller can keep them.
    pub async fn pick_up_grants(&self, path: &Path) -> Result<Vec<Chain>, Error> {
        let me = self.me();
        let mut found = Vec::new();
        let mut prefix = Some(path.clone());
        while let Some(p) = prefix {
            let versions = self.versions(&p, Binding::anchor(p.clone()).id()).await?;
            if let Some(w) = inode::winner(&versions) {
                for g in &w.inode.grants {
                    if g.holder() == Some(&me)
                        && g.verify(&p, &me, keys::now(), &self.revocations.read())
                            .is_ok()
                    {
                        self.add_chain(g.clone());
                        found.push(g.clone());
                    }
                }
            }
            prefix = p.parent();
        }
        Ok(found)
    }
}

/// Reads `file` in pieces of `size` bytes (the last may be shorter), each in a vector
/// with room for a chunk's overhead, and sends them until the end of the file, an error,
/// or the receiver is gone.
fn read_pieces(
    file: std::fs::File,
    size: usize,
    pieces: &tokio::sync::mpsc::Sender<std::io::Result<ChunkBuf>>,
) {
    let mut file = file;
    loop {
        let mut piece = ChunkBuf::with_capacity(size);
        let read = piece.fill_from(&mut file, size);
        let end = match &read {
            Ok(_) => piece.len() < size,
            Err(_) => true,
        };
        let sent = match read {
            Ok(_) => pieces.blocking_send(Ok(piece)),
            Err(e) => pieces.blocking_send(Err(e)),
        };
        if end || sent.is_err() {
            return;
        }
    }
}

/// Chunks sealed at once: one per core (at most `parallel`). Sealing only computes, so
/// more at once gain nothing, and they take the cores from what waits on the disk: with
/// 8 at once on 2 cores, each batch's store (one direct write per chunk, then a wait for
/// a core) took 10–19 ms for 16 MiB, and a `btnode fs put` ran 4–8 % slower than with 2
/// (paired runs).
fn sealing_at_once(parallel: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
    parallel.min(cores).max(1)
}

/// Seals pieces of inode `id` in parallel (see [`sealing_at_once`]): their refs by index,
/// and the sealed chunks.
async fn seal(
    id: InodeId,
    key: &DataKey,
    pieces: BTreeMap<u64, ChunkBuf>,
    parallel: usize,
) -> Result<(BTreeMap<u64, ChunkRef>, Vec<chunk::Sealed>), Error> {
    let sealed: Vec<(u64, u32, chunk::Sealed)> = futures::stream::iter(pieces)
        .map(|(index, plaintext)| {
            let key = key.clone();
            async move {
                let len = u32::try_from(plaintext.len()).unwrap_or(u32::MAX);
                tokio::task::spawn_blocking(move || {
                    chunk::seal_buf(&key, &id, index, plaintext).map(|s| (index, len, s))
                })
                .await
                .map_err(|e| Error::Io(e.to_string()))?
                .map_err(|e| Error::Io(e.to_string()))
            }
            .boxed()
        })
        .buffered(sealing_at_once(parallel))
        .try_collect()
        .await?;
    let refs = sealed
        .iter()
        .map(|(index, len, s)| {
            (
                *index,
                ChunkRef {
                    id: s.id(),
                    len: *len,
                },
            )
        })
        .collect();
    let batch: Vec<chunk::Sealed> = sealed.into_iter().map(|(_, _, s)| s).collect();
    Ok((refs, batch))
}

/// The keys to try on a chunk of `node` sealed under `key`: a re-key under way leaves the
/// previous key beside the new one.
fn keys_for(node: &Node, key: &DataKey) -> Vec<DataKey> {
    std::iter::once(key.clone())
        .chain(node.previous_key.clone().filter(|_| key == &node.key))
        .collect()
}

/// Fetches chunk `index` of inode `id` and opens it with the first of `keys` that does,
/// on a blocking thread; checks its length against the inode's reference.
async fn fetch_and_open<B: Blocks>(
    blocks: Arc<B>,
    path: Path,
    keys: Vec<DataKey>,
    id: InodeId,
    index: u64,
    chunk: ChunkRef,
) -> Result<Vec<u8>, Error> {
    // Opening checks every byte against the key, the inode and the index (the tag), so
    // this node's own copy is first read without the check against the chunk's id, and
    // opened on the same blocking thread (the read waits for the disk: on the runtime's
    // threads it held up every task, the ones finishing the chunks read ahead among them).
    // Anything short of a plaintext of the expected length reads the chunk again with
    // that check, which tells a corrupt or misplaced copy (reported, dropped, and read
    // from another replica) from a key that does not open it.
    let local = {
        let (blocks, keys) = (blocks.clone(), keys.clone());
        tokio::task::spawn_blocking(move || {
            let sealed = blocks.local_chunk_unchecked(&chunk.id)?;
            open_with(&keys, &id, index, sealed)
                .ok()
                .filter(|plaintext| plaintext.len() == chunk.len as usize)
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
    };
    if let Some(plaintext) = local {
        return Ok(plaintext);
    }
    let sealed = blocks
        .get_chunk(chunk.id)
        .await
        .map_err(blocks_err(&path))?;
    let plaintext = open_sealed(keys, id, index, sealed)
        .await?
        .map_err(|e| Error::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    if plaintext.len() != chunk.len as usize {
        return Err(Error::Corrupt {
            path: path.to_string(),
            reason: format!(
                "chunk {index} holds {} bytes, not {}",
                plaintext.len(),
                chunk.len
            ),
        });
    }
    Ok(plaintext)
}

/// Opens chunk `index` of inode `id` with the first of `keys` that opens it, off the
/// runtime's threads.
async fn open_sealed(
    keys: Vec<DataKey>,
    id: InodeId,
    index: u64,
    sealed: Vec<u8>,
) -> Result<Result<Vec<u8>, chunk::ChunkError>, Error> {
    tokio::task::spawn_blocking(move || open_with(&keys, &id, index, sealed))
        .await
        .map_err(|e| Error::Io(e.to_string()))
}

/// Opens chunk `index` of inode `id` with the first of `keys` that opens it.
fn open_with(
    keys: &[DataKey],
    id: &InodeId,
    index: u64,
    sealed: Vec<u8>,
) -> Result<Vec<u8>, chunk::ChunkError> {
    let Some((last_key, earlier)) = keys.split_last() else {
        return Err(chunk::ChunkError::Open);
    };
    for key in earlier {
        if let Ok(plaintext) = chunk::open(key, id, index, &sealed) {
            return Ok(plaintext);
        }
    }
    // The last (usually the only) key opens the chunk where it lies.
    chunk::open_vec(last_key, id, index, sealed)
}

/// Refuses a size beyond what one inode can describe, before any work.
fn check_size(handle: &Handle, size: u64) -> Result<(), Error> {
    let max = inode::MAX_CHUNKS as u64 * handle.chunk_size as u64;
    if size > max {
        return Err(Error::TooLarge {
            path: handle.node().path.to_string(),
            size,
            max,
        });
    }
    Ok(())
}

/// Files are opened and created; a symbolic link is not (the kernel follows it on a
/// mount, and a put or a get through one would act on the link, not on its target).
fn refuse_symlink(path: &Path, nodes: &[Node]) -> Result<(), Error> {
    if nodes.last().is_some_and(|n| n.kind == Kind::Symlink) {
        return Err(Error::Invalid(format!("{path}: a symbolic link")));
    }
    Ok(())
}

/// What a new version holds, besides what the node carries.
struct Contents {
    size: u64,
    chunk_size: usize,
    chunks: Vec<ChunkRef>,
    mode: u32,
    /// The version's modification time; `None`: now.
    mtime_ns: Option<u64>,
    parents: Vec<VersionId>,
}

/// What [`Client::revoke`] took away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Writecaps this node had granted the principal at the paths revoked, to be put in
    /// this node's revocation list.
    pub caps: Vec<CapId>,
    /// The nodes that granted the principal the other writecaps found there: taken out
    /// of the anchors, but only those nodes (or one above them) can revoke them.
    pub granted_by_others: Vec<Principal>,
    /// Versions signed again by this node (see [`Client::revoke`]).
    pub resigned: usize,
    /// Paths under the revoked one that could not be read or signed again, with why:
    /// what the revoked writer last wrote there is no longer shown.
    pub not_resigned: Vec<String>,
}

struct AnchorChange {
    readers: Vec<PublicIdentity>,
    grants: Vec<Chain>,
    epoch: u64,
}

fn stat_of(node: &Node) -> Stat {
    let heads = inode::heads(&node.versions).len();
    match &node.current {
        Some(v) => Stat {
            inode: v.id,
            kind: v.inode.kind,
            size: v.inode.size,
            mode: v.inode.mode,
            mtime_ns: v.inode.mtime_ns,
            changed_at: v.inode.signed_at,
            seq: v.inode.seq,
            version: v.version,
            writer: v.inode.writer.principal(),
            conflicts: heads.saturating_sub(1),
            anchor: v.inode.binding.is_anchor(),
            readers: v
                .inode
                .readers
                .iter()
                .map(PublicIdentity::principal)
                .collect(),
            chunks: v.inode.chunks.len(),
            conflict_copy: node.read_only,
        },
        None => Stat {
            inode: node.id(),
            kind: node.kind,
            size: 0,
            mode: 0,
            mtime_ns: 0,
            changed_at: 0,
            seq: 0,
            version: VersionId([0; 32]),
            writer: Principal::of_key(&[0; 32]),
            conflicts: 0,
            anchor: node.binding.is_anchor(),
            readers: Vec::new(),
            chunks: 0,
            conflict_copy: false,
        },
    }
}

/// The versions among `versions` that `head` descends from (itself not included), by its
/// parents and theirs: each once, so a parent list that loops ends.
fn ancestors<'a>(versions: &'a [Verified], head: &Verified) -> Vec<&'a Verified> {
    let by_id: HashMap<VersionId, &Verified> = versions.iter().map(|v| (v.version, v)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    let mut pending: Vec<VersionId> = head.inode.parents.clone();
    while let Some(id) = pending.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(v) = by_id.get(&id) {
            found.push(*v);
            pending.extend(v.inode.parents.iter().copied());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A directory named again below itself (as a hostile co-writer may write it) is
    /// walked once by the walks that go down a tree: finding the anchors below a path
    /// (it went round until the path grew too long, failing every revoke and move) and
    /// signing again what a revoked writer wrote (with two such names it doubled at
    /// every level: it never ended).
    #[tokio::test]
    async fn a_directory_named_below_itself_is_walked_once() {
        let crate::testing::Owner { client, tree, .. } = crate::testing::owner();
        let team = tree.join("team").unwrap();
        let sub = team.join("sub").unwrap();
        client
            .put(&sub.join("f").unwrap(), &b"x"[..], |_| {})
            .await
            .unwrap();
        let mut nodes = client.walk(&sub).await.unwrap();
        let i = nodes.len() - 1;
        let team_entry = nodes[i - 1].entry();
        let mut dir = client.read_dir(&nodes[i]).await.unwrap();
        dir.entries.insert("again".into(), team_entry.clone());
        dir.entries.insert("and-again".into(), team_entry);
        client.write_dir(&mut nodes, i, &dir).await.unwrap();
        let bounded = std::time::Duration::from_secs(20);
        let found = tokio::time::timeout(bounded, client.anchors_below(&team, 100))
            .await
            .expect("looking for anchors below went round")
            .unwrap();
        assert!(found.is_empty(), "{found:?}");
        let (resigned, failed) =
            tokio::time::timeout(bounded, client.resign_under(&team, &BTreeSet::new()))
                .await
                .expect("signing again went round");
        assert_eq!(resigned, 0);
        assert!(failed.is_empty(), "{failed:?}");
    }
}
