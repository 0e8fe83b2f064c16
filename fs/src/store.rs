//! Replica-local persistence: the chunks and inode versions a replica holds.
//!
//! # What it holds
//!
//! Opaque bytes, under their ids:
//!
//! - **chunks**: ciphertext, up to about 1 MiB each, known by its [`ChunkId`] (the BLAKE3
//!   hash of the ciphertext). Their bytes are appended to segment files ([`Segments`]: a
//!   directory beside the database, `blocks.chunks/` for `blocks.redb`), and redb records
//!   where each one is;
//! - **versions**: for each inode, the signed bytes of each of its versions, under
//!   `(InodeId, VersionId)`, with the version's sequence number, in redb;
//! - **pins**: `(chunk, version)` pairs saying a version still references a chunk, so
//!   [`Store::collect_unpinned`] never removes it.
//!
//! Chunk bytes stay out of redb because redb copies every value into pages of its own
//! and writes those: storing a chunk cost about twice writing it to a file, and the
//! database file grew to 1.5 times the bytes stored. A segment is written once, in order,
//! straight from the caller's buffer, and read straight into the buffer returned.
//!
//! # What is verified
//!
//! Only what can be checked without keys: a chunk's bytes must hash to its id, when it is
//! stored ([`Error::Mismatch`], nothing written) and again every time it is read
//! ([`Error::Corrupt`]: the disk or someone with access to it changed the bytes). Signatures,
//! sequence numbers and the binding of versions to inodes are the business of the layers
//! above; the store keeps what it is given.
//!
//! # Durability
//!
//! Every method that writes runs one redb write transaction and commits it durably
//! ([`redb::Durability::Immediate`], two-phase commit) before it returns. A crash after a
//! method returned `Ok` loses nothing; a crash during it leaves either the old state or the
//! new one, never part of a write. A write that changes nothing (storing a chunk already
//! held, say) commits nothing.
//!
//! Chunk bytes are written to the newest segment, past its end as redb last recorded it,
//! inside the write transaction (which no other writer can enter). Before any durable
//! commit, every segment written since the last one is synced, so a durable record of a
//! chunk never points at bytes the disk may not have. A crash can leave bytes past the
//! recorded end, and segments newer than it: opening the store cuts and deletes them. A
//! removed chunk's bytes are given back (a hole punched, or its whole segment deleted)
//! only once its removal is durable, so a crash never leaves a record pointing at a hole.
//!
//! A clone made with [`Store::deferred`] commits without waiting for the disk
//! ([`redb::Durability::None`]): its writes are seen at once by every clone, and become
//! durable at the next [`Store::sync`], the next durable write of any clone, or when the
//! store is dropped. A crash before that loses the deferred writes since the last durable
//! commit, newest first: what survives is the state after some earlier write, never part
//! of one. This is for writes whose acknowledgement is a later `sync` (a file system's
//! `fsync`), which then costs one commit instead of one per write.
//!
//! Two-phase commit rather than redb's default one-phase commit: redb's one-phase commit
//! relies on a non-cryptographic checksum that chosen data could, in theory, defeat
//! (redb's design notes advise two-phase commit for untrusted input). It costs a second
//! `fsync` per commit. redb's quick repair is off: it would make reopening after a crash
//! fast, but writes the allocator state with every commit, which made small commits far
//! slower; after a crash, opening walks and checks the whole database instead. Growing
//! the file is made durable before the larger file is used (see the private `backend`
//! module), which redb 2.6 does not do.
//!
//! Reads run in read transactions and proceed alongside a write. All methods block: from
//! async code, call them through `tokio::task::spawn_blocking`.
//!
//! After an I/O error redb refuses further transactions until the database is reopened:
//! calls return [`Error::Io`]; reopen the store. The same holds after a segment could not
//! be written or synced, and then nothing more is written to the database file at all,
//! not even when it is dropped (redb would make its last deferred commits durable then):
//! Linux may drop the pages of a failed sync and report the next sync a success, so a
//! retried sync could otherwise record chunks durable whose bytes are gone. Reopening cuts
//! the segments back to what the database last recorded durably.
//!
//! # Example
//!
//! ```
//! use fs::id::{ChunkId, InodeId, VersionId};
//! use fs::store::Store;
//!
//! let store = Store::in_memory()?;
//! let ciphertext = b"not really encrypted";
//! let chunk = ChunkId::of(ciphertext);
//! assert!(store.put_chunk(&chunk, ciphertext)?);
//! assert_eq!(store.get_chunk(&chunk)?.as_deref(), Some(&ciphertext[..]));
//!
//! let inode = InodeId([7; 32]);
//! let signed = b"a signed inode";
//! let version = VersionId::of(signed);
//! assert!(store.put_version(&inode, &version, 1, signed)?);
//! store.pin(&chunk, &version)?;
//! assert_eq!(store.collect_unpinned(&[chunk])?, 0);
//! # Ok::<(), fs::store::Error>(())
//! ```

mod backend;
mod chunks;
mod error;
mod segments;
mod versions;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::id::{ChunkId, VersionId};

use self::backend::SyncedGrowth;
pub use self::chunks::NO_OWNER;
use self::error::Context;
pub use self::error::Error;
pub use self::segments::{DirSegments, MemSegments, Segments};

/// Chunk id → (segment, offset, length): where the chunk's bytes are.
const CHUNK_LOCATIONS: TableDefinition<'static, &[u8; 32], (u64, u64, u64)> =
    TableDefinition::new("chunk_locations_v1");
/// Segment → bytes of the chunks in it that are still stored. A segment has a row from
/// when it is created until it is neither the newest nor holds any chunk.
const SEGMENT_LIVE: TableDefinition<'static, u64, u64> = TableDefinition::new("segment_live_v1");
/// Format 3: place → ciphertext (moved to segments when opened).
const LEGACY_CHUNK_DATA: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("chunk_data_v1");
/// Format 3: chunk id → (place, length) (moved to [`CHUNK_LOCATIONS`] when opened).
const LEGACY_CHUNK_PLACES: TableDefinition<'static, &[u8; 32], (u64, u64)> =
    TableDefinition::new("chunk_places_v1");
/// Formats 1 and 2: chunk id → ciphertext (moved to segments when opened).
const LEGACY_CHUNKS: TableDefinition<'static, &[u8; 32], &[u8]> = TableDefinition::new("chunks_v1");
/// Format 2: chunk id → length (dropped when opened).
const LEGACY_CHUNK_INDEX: TableDefinition<'static, &[u8; 32], u64> =
    TableDefinition::new("chunk_index_v1");
/// Inode id ‖ version id → (seq, signed bytes).
const VERSIONS: TableDefinition<'static, &[u8; 64], (u64, &[u8])> =
    TableDefinition::new("versions_v1");
/// Inode id → how many versions of it are stored (never 0: the row goes with the last one).
const INODES: TableDefinition<'static, &[u8; 32], u64> = TableDefinition::new("inodes_v1");
/// Chunk id ‖ version id → (): the version pins the chunk.
const PINS: TableDefinition<'static, &[u8; 64], ()> = TableDefinition::new("pins_v1");
/// Chunk id → the inode it belongs to (a chunk's associated data binds it to one inode)
/// as the peer that stored it said, or [`NO_OWNER`] once two said different ones: for
/// collecting chunks no version refers to any more.
const OWNERS: TableDefinition<'static, &[u8; 32], &[u8; 32]> = TableDefinition::new("owners_v1");
/// Counters, the format number and the end of the log.
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta_v1");

/// The on-disk format this build reads and writes. 2 added an index of chunk ids; 3 kept
/// chunks under places in the order stored; 4 keeps their bytes in segment files
/// ([`CHUNK_LOCATIONS`]). A store of format 1, 2 or 3 is moved to 4 when opened.
const FORMAT: u64 = 4;
/// META key: the format number.
const META_FORMAT: &str = "format";
/// META key (format 3): the place the next new chunk took (dropped when moved to 4).
const META_NEXT_PLACE: &str = "next_place";
/// META key: the segment new chunks are appended to.
const META_LOG_SEGMENT: &str = "log_segment";
/// META key: where in that segment the next new chunk goes.
const META_LOG_END: &str = "log_end";
/// Bytes of chunks one transaction moves from an older format's tables when a store is
/// upgraded.
const MIGRATION_BATCH_BYTES: usize = 64 << 20;
/// META key: total bytes of stored chunks.
const META_CHUNK_BYTES: &str = "chunk_bytes";
/// A segment takes new chunks until it would grow past this; then the next one starts
/// (see [`Store::with_backends_sized`]).
pub const SEGMENT_BYTES: u64 = 1 << 30;
/// The largest chunk the store takes: the block protocol's limit. A recorded length
/// above it is corruption (a database changed on the disk), not an allocation to make.
pub const MAX_CHUNK_BYTES: usize = protocols::limits::MAX_CHUNK_BYTES;

/// The replica's store: chunks, inode versions and pins; redb, and segment files for the
/// chunks' bytes.
///
/// Cheap to clone (the clones share the database); `Send` and `Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Whether this clone's writes commit without waiting for the disk.
    deferred: bool,
}

/// Space to give back once the removal that freed it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    /// A removed chunk's bytes.
    Punch { segment: u64, offset: u64, len: u64 },
    /// A segment that holds no chunk and takes no more.
    Segment(u64),
}

#[derive(Debug)]
struct Inner {
    db: Database,
    segments: Box<dyn Segments>,
    /// See [`SEGMENT_BYTES`].
    segment_bytes: u64,
    /// A segment failed to be written or synced: writes are refused until the store is
    /// reopened, and nothing more reaches the database file (see `SyncedGrowth`). Linux
    /// may drop the pages of a failed sync and report the next sync a success, so a
    /// retried sync could otherwise record bytes durable that are gone.
    failed: Arc<AtomicBool>,
    /// Segments written since they were last synced.
    dirty: Mutex<BTreeSet<u64>>,
    /// Space freed by the write transaction running now.
    freeing: Mutex<Vec<Reclaim>>,
    /// Space freed by deferred commits, to give back after the next durable one.
    freed: Mutex<Vec<Reclaim>>,
    /// Stored chunks found not to hash to their id since the store was opened.
    corrupt_found: AtomicU64,
    /// Deferred commits begun, numbered from 1 (bumped while the commit holds the write
    /// transaction).
    deferred_seq: AtomicU64,
    /// Every deferred commit up to this number is durable: set only after a durable
    /// commit has returned, to the number read while that commit held the write
    /// transaction. A flag cleared before the commit returned let a concurrent `sync`
    /// report success while the commit it counted on was still running, or failed.
    durable_seq: AtomicU64,
    /// Counters of changes to inodes' versions, by [`epoch_stripe`] (see
    /// [`Store::versions_epoch`]).
    versions_epochs: Box<[AtomicU64]>,
}

/// Stripes of [`Store::versions_epoch`]: inodes that share one see each other's changes
/// as their own (a cache entry dropped for nothing, never one kept wrongly).
const EPOCH_STRIPES: usize = 1024;

fn epoch_stripe(inode: &crate::id::InodeId) -> usize {
    let b = inode.as_bytes();
    usize::from(u16::from_le_bytes([b[0], b[1]])) % EPOCH_STRIPES
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.has_deferred()
            && let Err(e) = self.sync(self.deferred_seq.load(Ordering::Acquire))
        {
            tracing::warn!(error = %e, "deferred writes were not made durable at close");
        }
    }
}

/// Locks `mutex`. A poisoned lock still gives its contents: they are plain lists and
/// sets, whole after every change.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes what `mutex` holds.
fn take<T>(mutex: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *lock(mutex))
}

impl Inner {
    /// Whether a deferred commit may not be durable yet.
    fn has_deferred(&self) -> bool {
        self.durable_seq.load(Ordering::Acquire) < self.deferred_seq.load(Ordering::Acquire)
    }

    /// Makes deferred commits up to number `upto` durable: returns once a durable commit
    /// that followed them has returned, running one if none has.
    fn sync(&self, upto: u64) -> Result<(), Error> {
        const WHAT: &str = "making deferred writes durable";
        if self.durable_seq.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        self.check_failed(WHAT)?;
        // Waits for any commit under way; one that made them durable meanwhile is enough.
        let mut txn = self.db.begin_write().context(WHAT)?;
        if self.durable_seq.load(Ordering::Acquire) >= upto {
            txn.abort().context(WHAT)?;
            return Ok(());
        }
        txn.set_durability(Durability::Immediate);
        txn.set_two_phase_commit(true);
        self.sync_segments(WHAT)?;
        // Holding the write transaction, no deferred write can slip in between; what
        // deferred writes freed is taken now for the same reason.
        let covered = self.deferred_seq.load(Ordering::Acquire);
        let freed = take(&self.freed);
        if let Err(e) = txn.commit() {
            lock(&self.freed).splice(0..0, freed);
            return Err(e).context(WHAT);
        }
        self.durable_seq.fetch_max(covered, Ordering::AcqRel);
        self.reclaim(freed);
        Ok(())
    }

    /// Syncs every segment written since its last sync. Call while holding the write
    /// transaction, before a durable commit.
    fn sync_segments(&self, what: &'static str) -> Result<(), Error> {
        let mut dirty = lock(&self.dirty);
        while let Some(&segment) = dirty.first() {
            self.segments
                .sync(segment)
                .map_err(|e| self.segment_failed(what, "syncing", segment, &e))?;
            dirty.remove(&segment);
        }
        Ok(())
    }

    /// Marks the store failed after a segment could not be written or synced; the error
    /// to return.
    fn segment_failed(
        &self,
        what: &'static str,
        doing: &str,
        segment: u64,
        e: &std::io::Error,
    ) -> Error {
        self.failed.store(true, Ordering::Release);
        tracing::error!(segment, error = %e, "{doing} a chunk segment failed; the store takes no more writes until reopened");
        Error::Io(format!("{what}: {doing} segment {segment}: {e}"))
    }

    /// Refuses to write after a segment failed (see [`Inner::failed`]).
    fn check_failed(&self, what: &'static str) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io(format!(
                "{what}: an earlier write or sync of a chunk segment failed; reopen the store"
            )));
        }
        Ok(())
    }

    /// Gives back space whose removal is durable. A failure only leaks the space: it is
    /// logged, not returned.
    fn reclaim(&self, freed: Vec<Reclaim>) {
        for item in freed {
            let done = match item {
                Reclaim::Punch {
                    segment,
                    offset,
                    len,
                } => self.segments.punch(segment, offset, len),
                Reclaim::Segment(segment) => self.segments.remove(segment),
            };
            if let Err(e) = done {
                tracing::warn!(?item, error = %e, "could not give back a removed chunk's space");
            }
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field(
                "corrupt_found",
                &self.inner.corrupt_found.load(Ordering::Relaxed),
            )
            .field("deferred", &self.deferred)
            .finish_non_exhaustive()
    }
}

/// One stored version of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// The version's id.
    pub id: VersionId,
    /// Its sequence number, as given to [`Store::put_version`].
    pub seq: u64,
    /// Its signed bytes, as given to [`Store::put_version`].
    pub signed: Vec<u8>,
}

/// What the store holds, from [`Store::stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Chunks stored.
    pub chunks: u64,
    /// Their total size in bytes.
    pub chunk_bytes: u64,
    /// Inodes with at least one version stored.
    pub inodes: u64,
    /// Versions stored, over all inodes.
    pub versions: u64,
    /// Stored chunks found corrupt since the store was opened (each detection counts).
    pub corrupt_found: u64,
}

impl Store {
    /// Opens the store in the file at `path`, creating it if missing, with its chunks'
    /// segments in the directory [`Store::segment_dir`] names.
    ///
    /// If the process crashed while the store was open, this first repairs the database,
    /// reading all of it (see the module docs).
    pub fn open(path: &Path) -> Result<Store, Error> {
        let failed = |e: &dyn fmt::Display| Error::Io(format!("opening {}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| failed(&e))?;
        let backend = redb::backends::FileBackend::new(file).map_err(|e| failed(&e))?;
        let dir = Store::segment_dir(path);
        let segments = DirSegments::open(&dir)
            .map_err(|e| Error::Io(format!("opening {}: {e}", dir.display())))?;
        Store::with_backends(backend, segments)
    }

    /// The directory beside the database at `path` that holds its segments: the same name
    /// with the extension `chunks`.
    pub fn segment_dir(path: &Path) -> PathBuf {
        path.with_extension("chunks")
    }

    /// Opens the store on a redb storage backend and segments (tests use it to inject
    /// faults).
    pub fn with_backends(
        backend: impl redb::StorageBackend,
        segments: impl Segments,
    ) -> Result<Store, Error> {
        Store::with_backends_sized(backend, segments, SEGMENT_BYTES)
    }

    /// [`Store::with_backends`], starting a new segment when one would grow past
    /// `segment_bytes` (tests make it small, so that segments fill, roll over and go).
    pub fn with_backends_sized(
        backend: impl redb::StorageBackend,
        segments: impl Segments,
        segment_bytes: u64,
    ) -> Result<Store, Error> {
        let failed = Arc::new(AtomicBool::new(false));
        let db = redb::Builder::new()
            .create_with_backend(SyncedGrowth {
                backend,
                fenced: failed.clone(),
            })
            .context("opening the store")?;
        Store::init(db, Box::new(segments), segment_bytes.max(1), failed)
    }

    /// A store in memory, empty, gone when the last clone is dropped.
    pub fn in_memory() -> Result<Store, Error> {
        Store::with_backends(
            redb::backends::InMemoryBackend::new(),
            MemSegments::default(),
        )
    }

    /// Creates the tables if missing, checks the format, moves an older format's chunks
    /// to segments, and cuts what a crash left past the log's end.
    fn init(
        db: Database,
        segments: Box<dyn Segments>,
        segment_bytes: u64,
        failed: Arc<AtomicBool>,
    ) -> Result<Store, Error> {
        let store = Store {
            inner: Arc::new(Inner {
                db,
                segments,
                segment_bytes,
                failed,
                dirty: Mutex::default(),
                freeing: Mutex::default(),
                freed: Mutex::default(),
                corrupt_found: AtomicU64::new(0),
                versions_epochs: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
                deferred_seq: AtomicU64::new(0),
                durable_seq: AtomicU64::new(0),
            }),
            deferred: false,
        };
        const WHAT: &str = "creating the tables";
        let found = store.write(WHAT, |txn| {
            let mut meta = txn.open_table(META).context(WHAT)?;
            let found = meta.get(META_FORMAT).context(WHAT)?.map(|g| g.value());
            match found {
                Some(FORMAT) => return Ok((found, false)),
                Some(1..FORMAT) => {
                    // Recorded first, so that an older build refuses a store half moved.
                    meta.insert(META_FORMAT, FORMAT).context(WHAT)?;
                    return Ok((found, true));
                }
                Some(found) => {
                    return Err(Error::Format {
                        found,
                        supported: FORMAT,
                    });
                }
                None => {}
            }
            meta.insert(META_FORMAT, FORMAT).context(WHAT)?;
            drop(meta);
            txn.open_table(CHUNK_LOCATIONS).context(WHAT)?;
            txn.open_table(VERSIONS).context(WHAT)?;
            txn.open_table(INODES).context(WHAT)?;
            txn.open_table(PINS).context(WHAT)?;
            txn.open_table(OWNERS).context(WHAT)?;
            Ok((None, true))
        })?;
        store.recover_log()?;
        let legacy = store.legacy_tables()?;
        if legacy != Legacy::default() {
            store.upgrade(found.unwrap_or(FORMAT), legacy)?;
        }
        Ok(store)
    }

    /// Which tables of older formats the database still has.
    fn legacy_tables(&self) -> Result<Legacy, Error> {
        const WHAT: &str = "looking for tables of older formats";
        let txn = self.read(WHAT)?;
        let exists = |result: Result<(), redb::TableError>| match result {
            Ok(()) => Ok(true),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e).context(WHAT),
        };
        Ok(Legacy {
            by_id: exists(txn.open_table(LEGACY_CHUNKS).map(drop))?,
            by_place: exists(txn.open_table(LEGACY_CHUNK_PLACES).map(drop))?,
        })
    }

    /// Starts the log if the store has none yet; cuts the newest segment to the end redb
    /// recorded and deletes segments redb does not know (what a crash left after the last
    /// durable commit).
    fn recover_log(&self) -> Result<(), Error> {
        const WHAT: &str = "recovering the chunk log";
        let io = |e: std::io::Error| Error::Io(format!("{WHAT}: {e}"));
        let (tail, known) = {
            let txn = self.read(WHAT)?;
            let meta = txn.open_table(META).context(WHAT)?;
            let get = |key| -> Result<Option<u64>, Error> {
                Ok(meta.get(key).context(WHAT)?.map(|g| g.value()))
            };
            let tail = match (get(META_LOG_SEGMENT)?, get(META_LOG_END)?) {
                (Some(segment), Some(end)) => Some((segment, end)),
                _ => None,
            };
            let known: BTreeSet<u64> = match txn.open_table(SEGMENT_LIVE) {
                Ok(live) => live
                    .iter()
                    .context(WHAT)?
                    .map(|row| Ok(row.context(WHAT)?.0.value()))
                    .collect::<Result<_, Error>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => BTreeSet::new(),
                Err(e) => return Err(e).context(WHAT),
            };
            (tail, known)
        };
        let Some((segment, end)) = tail else {
            // A new store (or one of an older format): segment 0 starts the log.
            return self.write(WHAT, |txn| {
                let mut log = chunks::Log::open(self, txn, WHAT)?;
                log.start(txn, WHAT)?;
                log.finish(txn, WHAT)?;
                Ok(((), true))
            });
        };
        let segments = &self.inner.segments;
        let listed = segments.list().map_err(io)?;
        for &n in &listed {
            if n != segment && !known.contains(&n) {
                tracing::info!(segment = n, "deleting a segment a crash left behind");
                segments.remove(n).map_err(io)?;
            }
        }
        if !listed.contains(&segment) {
            tracing::warn!(
                segment,
                "the newest segment is missing; starting it again empty"
            );
            segments.create(segment).map_err(io)?;
        }
        segments.truncate(segment, end).map_err(io)
    }

    /// Moves the chunks of a format 1, 2 or 3 store to segments, a batch per transaction
    /// (a crash part way leaves every chunk in one table or the other, and the next open
    /// goes on while an old table is there), then drops the old tables. Format 4 was
    /// recorded first (see [`Store::init`]).
    fn upgrade(&self, old: u64, legacy: Legacy) -> Result<(), Error> {
        const WHAT: &str = "moving chunks to segments (format 4)";
        tracing::info!(from = old, "upgrading the store to format {FORMAT}");
        let mut moved = 0u64;
        loop {
            let done = self.write(WHAT, |txn| {
                let mut log = chunks::Log::open(self, txn, WHAT)?;
                let mut locations = txn.open_table(CHUNK_LOCATIONS).context(WHAT)?;
                let (mut taken, mut bytes, mut dropped_bytes) = (0u64, 0, 0);
                while bytes < MIGRATION_BATCH_BYTES {
                    let Some((id, value)) = next_legacy_chunk(txn, legacy, &mut dropped_bytes)?
                    else {
                        break;
                    };
                    taken += 1;
                    bytes += value.len();
                    if locations.get(&id).context(WHAT)?.is_some() {
                        // Stored again since (only an interrupted upgrade run by an older
                        // build could do that): this copy was counted twice.
                        dropped_bytes += value.len() as u64;
                        continue;
                    }
                    let (segment, offset) = log.append(txn, &value, WHAT)?;
                    locations
                        .insert(&id, (segment, offset, value.len() as u64))
                        .context(WHAT)?;
                }
                drop(locations);
                log.finish(txn, WHAT)?;
                chunks::add_chunk_bytes(txn, 0, dropped_bytes, WHAT)?;
                moved += taken;
                if taken == 0 {
                    txn.delete_table(LEGACY_CHUNKS).context(WHAT)?;
                    txn.delete_table(LEGACY_CHUNK_INDEX).context(WHAT)?;
                    txn.delete_table(LEGACY_CHUNK_DATA).context(WHAT)?;
                    txn.delete_table(LEGACY_CHUNK_PLACES).context(WHAT)?;
                    txn.open_table(META)
                        .context(WHAT)?
                        .remove(META_NEXT_PLACE)
                        .context(WHAT)?;
                    return Ok((true, true));
                }
                Ok((false, true))
            })?;
            if done {
                tracing::info!(chunks = moved, "the store is at format {FORMAT}");
                return Ok(());
            }
        }
    }

    /// How much the store holds.
    pub fn stats(&self) -> Result<Stats, Error> {
        const WHAT: &str = "reading the statistics";
        let txn = self.read(WHAT)?;
        let chunk_bytes = txn
            .open_table(META)
            .context(WHAT)?
            .get(META_CHUNK_BYTES)
            .context(WHAT)?
            .map_or(0, |g| g.value());
        Ok(Stats {
            chunks: txn
                .open_table(CHUNK_LOCATIONS)
                .context(WHAT)?
                .len()
                .context(WHAT)?,
            chunk_bytes,
            inodes: txn.open_table(INODES).context(WHAT)?.len().context(WHAT)?,
            versions: txn
                .open_table(VERSIONS)
                .context(WHAT)?
                .len()
                .context(WHAT)?,
            corrupt_found: self.inner.corrupt_found.load(Ordering::Relaxed),
        })
    }

    /// Runs `f` in one write transaction. If `f` reports a change (the `bool`), commits it
    /// durably before returning; otherwise, or if `f` fails, rolls it back.
    fn write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, bool), Error>,
    ) -> Result<T, Error> {
        self.inner.check_failed(what)?;
        let mut txn = self.inner.db.begin_write().context(what)?;
        if self.deferred {
            txn.set_durability(Durability::None);
        } else {
            txn.set_durability(Durability::Immediate);
            // See the module docs.
            txn.set_two_phase_commit(true);
        }
        let inner = &self.inner;
        // Whatever `f` freed is given back only if its removal commits.
        // What this transaction freed is taken while it is still held: once it commits,
        // the next writer's frees go to the same list.
        let (out, reclaim) = (|| {
            let result = f(&txn);
            let freeing = take(&inner.freeing);
            let (out, changed) = result?;
            // A durable write that changed nothing still commits while deferred commits
            // wait: what it found held (and reports stored) may be theirs, not durable
            // yet.
            if !changed && (self.deferred || !inner.has_deferred()) {
                txn.abort().context(what)?;
                return Ok((out, Vec::new()));
            }
            if self.deferred {
                // Numbered while the write transaction is held: a durable commit that
                // reads the counter after this one was numbered comes after its commit.
                inner.deferred_seq.fetch_add(1, Ordering::AcqRel);
                txn.commit().context(what)?;
                lock(&inner.freed).extend(freeing);
                return Ok((out, Vec::new()));
            }
            inner.sync_segments(what)?;
            // Read while the write transaction is held: every deferred commit numbered
            // up to here has committed, and this commit makes it durable.
            let covered = inner.deferred_seq.load(Ordering::Acquire);
            // Space freed by deferred commits before this one becomes free with it.
            let mut freed = take(&inner.freed);
            if let Err(e) = txn.commit() {
                lock(&inner.freed).splice(0..0, freed);
                return Err(e).context(what);
            }
            inner.durable_seq.fetch_max(covered, Ordering::AcqRel);
            freed.extend(freeing);
            Ok((out, freed))
        })()?;
        inner.reclaim(reclaim);
        Ok(out)
    }

    /// A clone whose writes commit without waiting for the disk, durable at the next
    /// [`Store::sync`] (see the module docs).
    pub fn deferred(&self) -> Store {
        Store {
            inner: self.inner.clone(),
            deferred: true,
        }
    }

    /// Makes every write acknowledged so far durable: one durable commit if a deferred
    /// write is waiting for one, nothing otherwise.
    pub fn sync(&self) -> Result<(), Error> {
        // Every deferred commit acknowledged before this call is numbered at most this.
        let upto = self.inner.deferred_seq.load(Ordering::Acquire);
        self.inner.sync(upto)
    }

    /// Whether deferred writes wait for [`Store::sync`]: false only once every deferred
    /// commit made so far is durable (a durable commit after them has returned).
    pub fn has_deferred(&self) -> bool {
        self.inner.has_deferred()
    }

    fn read(&self, what: &'static str) -> Result<ReadTransaction, Error> {
        self.inner.db.begin_read().context(what)
    }

    /// Counts and reports a stored chunk that no longer hashes to its id.
    fn found_corrupt(&self, id: &ChunkId) {
        self.inner.corrupt_found.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = %id, "stored chunk no longer hashes to its id");
    }
}

/// The tables of older formats a database still has.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Legacy {
    /// Formats 1 and 2: [`LEGACY_CHUNKS`].
    by_id: bool,
    /// Format 3: [`LEGACY_CHUNK_PLACES`] and [`LEGACY_CHUNK_DATA`].
    by_place: bool,
}

/// A chunk taken out of an older format's tables: its id and bytes.
type LegacyChunk = ([u8; 32], Vec<u8>);

/// Takes one chunk out of an older format's tables, in `txn`: its id and bytes. A format
/// 3 row whose bytes are missing is dropped, its length added to `dropped_bytes`.
fn next_legacy_chunk(
    txn: &WriteTransaction,
    legacy: Legacy,
    dropped_bytes: &mut u64,
) -> Result<Option<LegacyChunk>, Error> {
    const WHAT: &str = "moving chunks to segments (format 4)";
    if legacy.by_id {
        let mut table = txn.open_table(LEGACY_CHUNKS).context(WHAT)?;
        if let Some((id, value)) = table.pop_first().context(WHAT)? {
            return Ok(Some((*id.value(), value.value().to_vec())));
        }
    }
    if legacy.by_place {
        let mut places = txn.open_table(LEGACY_CHUNK_PLACES).context(WHAT)?;
        let mut data = txn.open_table(LEGACY_CHUNK_DATA).context(WHAT)?;
        while let Some((id, place)) = places.pop_first().context(WHAT)? {
            let (id, (place, len)) = (*id.value(), place.value());
            match data.remove(place).context(WHAT)? {
                Some(bytes) => return Ok(Some((id, bytes.value().to_vec()))),
                None => *dropped_bytes += len,
            }
        }
    }
    Ok(None)
}

/// The key for a pair of ids: `a ‖ b`, so keys sort by `a`, then `b`.
fn pair(a: &[u8; 32], b: &[u8; 32]) -> [u8; 64] {
    let mut key = [0; 64];
    key[..32].copy_from_slice(a);
    key[32..].copy_from_slice(b);
    key
}

/// The second id of a pair key.
fn second(key: &[u8; 64]) -> [u8; 32] {
    let mut id = [0; 32];
    id.copy_from_slice(&key[32..]);
    id
}

/// The range of pair keys whose first id is `a`.
fn pairs_of(a: &[u8; 32]) -> ([u8; 64], [u8; 64]) {
    (pair(a, &[0; 32]), pair(a, &[0xff; 32]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::id::InodeId;

    #[test]
    fn stats_count_what_is_held() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.stats().unwrap(), Stats::default());
        let a = b"aaaa".as_slice();
        let b = b"bbbbbbbb".as_slice();
        store
            .put_chunks(&[(ChunkId::of(a), a), (ChunkId::of(b), b)])
            .unwrap();
        let inode = InodeId([1; 32]);
        store
            .put_version(&inode, &VersionId::of(b"v1"), 1, b"v1")
            .unwrap();
        store
            .put_version(&inode, &VersionId::of(b"v2"), 2, b"v2")
            .unwrap();
        store
            .put_version(&InodeId([2; 32]), &VersionId::of(b"v1"), 1, b"v1")
            .unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(
            (
                stats.chunks,
                stats.chunk_bytes,
                stats.inodes,
                stats.versions
            ),
            (2, 12, 2, 3)
        );
        store.remove_chunk(&ChunkId::of(b)).unwrap();
        store.remove_version(&inode, &VersionId::of(b"v1")).unwrap();
        store.remove_version(&inode, &VersionId::of(b"v2")).unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(
            (
                stats.chunks,
                stats.chunk_bytes,
                stats.inodes,
                stats.versions
            ),
            (1, 4, 1, 1)
        );
    }

    /// A backend over memory that counts the bytes read.
    #[derive(Debug, Clone)]
    struct Counting(Arc<redb::backends::InMemoryBackend>, Arc<AtomicU64>);

    impl redb::StorageBackend for Counting {
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            self.1.fetch_add(len as u64, Ordering::Relaxed);
            self.0.read(offset, len)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
            self.0.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.write(offset, data)
        }
    }

    fn chunks_of(count: u8, len: usize) -> Vec<(ChunkId, Vec<u8>)> {
        (0..count)
            .map(|n| {
                let bytes = vec![n; len];
                (ChunkId::of(&bytes), bytes)
            })
            .collect()
    }

    #[test]
    fn listing_chunk_ids_does_not_read_the_chunks() {
        let disk = Counting(
            Arc::new(redb::backends::InMemoryBackend::new()),
            Arc::new(AtomicU64::new(0)),
        );
        let segments = Arc::new(MemSegments::default());
        let store = Store::with_backends(disk.clone(), segments.clone()).unwrap();
        let chunks = chunks_of(40, 100_000);
        let batch: Vec<(ChunkId, &[u8])> = chunks.iter().map(|(id, b)| (*id, &b[..])).collect();
        store.put_chunks(&batch).unwrap();
        drop(store);
        // Reopened: nothing in redb's cache.
        let store = Store::with_backends(disk.clone(), segments).unwrap();
        let before = disk.1.load(Ordering::Relaxed);
        let mut ids = store.chunk_ids(None, 1000).unwrap();
        assert!(ids.iter().all(|id| store.has_chunk(id).unwrap()));
        let read = disk.1.load(Ordering::Relaxed) - before;
        let mut expected: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        expected.sort();
        ids.sort();
        assert_eq!(ids, expected);
        // 4 MB stored; the ids and lengths are 1.6 KB and a few pages.
        assert!(read < 256 * 1024, "listing read {read} bytes");
    }

    /// Writes `chunks` the way format `old` kept them (4: as format 3 did, left by an
    /// upgrade a crash cut short), and marks the store so.
    fn as_legacy(store: &Store, old: u64, chunks: &[(ChunkId, Vec<u8>)]) {
        store
            .write("test", |txn| {
                if old <= 2 {
                    let mut legacy = txn.open_table(LEGACY_CHUNKS).context("test")?;
                    let mut index = txn.open_table(LEGACY_CHUNK_INDEX).context("test")?;
                    for (id, bytes) in chunks {
                        legacy.insert(id.as_bytes(), &bytes[..]).context("test")?;
                        index
                            .insert(id.as_bytes(), bytes.len() as u64)
                            .context("test")?;
                    }
                    drop((legacy, index));
                    if old == 1 {
                        txn.delete_table(LEGACY_CHUNK_INDEX).context("test")?;
                    }
                } else {
                    let mut data = txn.open_table(LEGACY_CHUNK_DATA).context("test")?;
                    let mut places = txn.open_table(LEGACY_CHUNK_PLACES).context("test")?;
                    for (place, (id, bytes)) in (7..).zip(chunks) {
                        data.insert(place, &bytes[..]).context("test")?;
                        places
                            .insert(id.as_bytes(), (place, bytes.len() as u64))
                            .context("test")?;
                    }
                    // A row whose bytes are gone (counted, but not there to move).
                    places.insert(&[0xee; 32], (1000, 10)).context("test")?;
                }
                let mut meta = txn.open_table(META).context("test")?;
                meta.insert(META_FORMAT, old).context("test")?;
                meta.insert(META_NEXT_PLACE, 99).context("test")?;
                let mut bytes: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
                if old >= 3 {
                    bytes += 10;
                }
                let held = meta
                    .get(META_CHUNK_BYTES)
                    .context("test")?
                    .map_or(0, |g| g.value());
                meta.insert(META_CHUNK_BYTES, held + bytes)
                    .context("test")?;
                Ok(((), true))
            })
            .unwrap();
    }

    #[test]
    fn stores_of_older_formats_are_moved_to_format_4() {
        for old in [1, 2, 3, 4] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.redb");
            let chunks = chunks_of(6, 30_000);
            let store = Store::open(&path).unwrap();
            // Two chunks already moved (an upgrade a crash cut short), four still to move;
            // from format 2, one of those also stored again at its new place, as an older
            // build could have done after a cut-short upgrade (its bytes then counted
            // twice).
            let already = if old == 2 { 3 } else { 2 };
            let moved: Vec<(ChunkId, &[u8])> = chunks[..already]
                .iter()
                .map(|(id, b)| (*id, &b[..]))
                .collect();
            store.put_chunks(&moved).unwrap();
            as_legacy(&store, old, &chunks[2..]);
            drop(store);

            let store = Store::open(&path).unwrap();
            let mut expected: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
            expected.sort();
            assert_eq!(
                store.chunk_ids(None, 100).unwrap(),
                expected,
                "format {old}"
            );
            for (id, bytes) in &chunks {
                assert_eq!(store.get_chunk(id).unwrap().as_ref(), Some(bytes));
            }
            assert_eq!(store.stats().unwrap().chunks, 6);
            assert_eq!(
                store.stats().unwrap().chunk_bytes,
                6 * 30_000,
                "format {old}"
            );
            assert_eq!(store.legacy_tables().unwrap(), Legacy::default());
            let txn = store.read("test").unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get(META_FORMAT).unwrap().unwrap().value(), FORMAT);
            assert!(meta.get(META_NEXT_PLACE).unwrap().is_none());
            drop((meta, txn));
            // The bytes are in the segment directory, not in the database.
            let in_segments: u64 = std::fs::read_dir(Store::segment_dir(&path))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert_eq!(in_segments, 6 * 30_000);
            // New chunks go after the moved ones; removing one frees its bytes.
            let more = chunks_of(8, 1000);
            let (id, bytes) = &more[7];
            assert!(store.put_chunk(id, bytes).unwrap());
            assert_eq!(store.get_chunk(id).unwrap().as_ref(), Some(bytes));
            assert_eq!(
                store.get_chunk(&chunks[5].0).unwrap().as_ref(),
                Some(&chunks[5].1)
            );
            assert!(store.remove_chunk(&expected[0]).unwrap());
            assert_eq!(store.stats().unwrap().chunk_bytes, 5 * 30_000 + 1000);
        }
    }

    /// Chunks on segments that take direct I/O are placed at their skew (the offset
    /// agrees with the buffer's address, see `Segments::skew`), through segments rolling
    /// over, removals and reopening; every chunk reads back, and a store opened again
    /// goes on after the recorded end.
    #[test]
    fn large_chunks_are_placed_at_their_skew_across_segments_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let open = || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            let backend = redb::backends::FileBackend::new(file).unwrap();
            let segments = DirSegments::open(&Store::segment_dir(&path)).unwrap();
            Store::with_backends_sized(backend, segments, 3 << 20).unwrap()
        };
        // Buffers whose chunk starts `shift` bytes in, so that addresses vary.
        let sizes = [
            (1 << 20) + 40,
            70_000,
            1000,
            MAX_CHUNK_BYTES,
            65_536,
            (1 << 20) - 4056,
        ];
        let buffers: Vec<(usize, Vec<u8>)> = (0..18)
            .map(|i| {
                let shift = i * 97 % 509;
                let len = sizes[i % sizes.len()];
                (
                    shift,
                    (0..shift + len).map(|b| (b * 13 + i) as u8).collect(),
                )
            })
            .collect();
        let chunk = |i: usize| &buffers[i].1[buffers[i].0..];
        let id = |i: usize| ChunkId::of(chunk(i));
        // Opened on its own to ask where each chunk should lie (its alignment is
        // probed when it first opens a segment).
        let probe = DirSegments::open(&Store::segment_dir(&path)).unwrap();
        let check_placed = |store: &Store, i: usize| {
            let (segment, offset, len) = store.location(&id(i), "test").unwrap().unwrap();
            assert_eq!(len, chunk(i).len() as u64);
            let _ = probe.read(segment, 0, 0);
            assert_eq!(
                probe.skew(offset, chunk(i)),
                0,
                "chunk {i} lies at its skew"
            );
            segment
        };
        let mut segments_used = BTreeSet::new();
        {
            let store = open();
            let mut gaps = 0;
            let mut end = (0, 0);
            for i in 0..12 {
                assert!(store.put_chunk(&id(i), chunk(i)).unwrap());
                segments_used.insert(check_placed(&store, i));
                let (segment, offset, len) = store.location(&id(i), "test").unwrap().unwrap();
                if (segment, offset) != end && offset != 0 {
                    gaps += 1;
                }
                end = (segment, offset + len);
            }
            if probe.direct_io() {
                assert!(gaps > 0, "some chunk was placed after a few unused bytes");
            }
            for i in [1, 4, 7] {
                assert!(store.remove_chunk(&id(i)).unwrap());
            }
        }
        assert!(segments_used.len() > 2, "the segments rolled over");
        let store = open();
        for i in 12..18 {
            assert!(store.put_chunk(&id(i), chunk(i)).unwrap());
            check_placed(&store, i);
        }
        for i in 0..18 {
            let got = store.get_chunk(&id(i)).unwrap();
            if [1, 4, 7].contains(&i) {
                assert_eq!(got, None);
            } else {
                assert_eq!(got.as_deref(), Some(chunk(i)), "chunk {i}");
            }
        }
    }

    /// What a crash leaves past the log's recorded end (bytes of a transaction that did
    /// not commit, a segment started by one) is cut when the store is opened.
    #[test]
    fn opening_cuts_what_a_crash_left_past_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let chunks = chunks_of(2, 5000);
        {
            let store = Store::open(&path).unwrap();
            store.put_chunk(&chunks[0].0, &chunks[0].1).unwrap();
        }
        let segments = DirSegments::open(&Store::segment_dir(&path)).unwrap();
        segments.write(0, 5000, &[1; 777]).unwrap();
        segments.create(1).unwrap();
        segments.write(1, 0, &[2; 10]).unwrap();
        drop(segments);
        let store = Store::open(&path).unwrap();
        let dir = Store::segment_dir(&path);
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        assert_eq!(files, vec![(format!("segment-{:020}", 0), 5000)]);
        store.put_chunk(&chunks[1].0, &chunks[1].1).unwrap();
        assert_eq!(
            store.location(&chunks[1].0, "test").unwrap(),
            Some((0, 5000, 5000))
        );
        assert_eq!(
            store.get_chunk(&chunks[0].0).unwrap().as_ref(),
            Some(&chunks[0].1)
        );
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        store
            .write("test", |txn| {
                let mut meta = txn.open_table(META).context("test")?;
                meta.insert(META_FORMAT, FORMAT + 1).context("test")?;
                Ok(((), true))
            })
            .unwrap();
        drop(store);
        match Store::open(&path) {
            Err(Error::Format { found, supported }) => {
                assert_eq!((found, supported), (FORMAT + 1, FORMAT));
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let bytes = vec![9; 100_000];
        let id = ChunkId::of(&bytes);
        {
            let store = Store::open(&path).unwrap();
            assert!(store.put_chunk(&id, &bytes).unwrap());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get_chunk(&id).unwrap(), Some(bytes));
        assert_eq!(store.stats().unwrap().chunk_bytes, 100_000);
    }

    #[test]
    fn pair_keys_split_back() {
        let key = pair(&[1; 32], &[2; 32]);
        assert_eq!(second(&key), [2; 32]);
        let (lo, hi) = pairs_of(&[1; 32]);
        assert!(lo <= key && key <= hi);
    }
}
