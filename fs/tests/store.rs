//! Behaviour of `fs::store::Store`: round trips, corruption on disk, injected I/O errors,
//! crashes, and random operation sequences against a `BTreeMap` model.
//!
//! Randomness comes from one seed, printed by each test that uses it; set `STORE_TEST_SEED`
//! to replay one.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, LazyLock, Mutex};

use fs::id::{ChunkId, InodeId, VersionId};
use fs::store::{Error, MemSegments, Segments, Store, StoredVersion};
use proptest::prelude::*;
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

// ---------------------------------------------------------------------------------------
// Operations, and the model they are checked against.

/// Chunks, inodes and versions the operations pick from (by index). Random operations use
/// the first [`SMALL`] chunks; the last is 1 MiB, to make the file grow.
struct Pool {
    chunks: Vec<(ChunkId, Vec<u8>)>,
    inodes: Vec<InodeId>,
    versions: Vec<(VersionId, Vec<u8>)>,
}

/// How many of the pool's chunks random operations use.
const SMALL: usize = 8;

static POOL: LazyLock<Pool> = LazyLock::new(|| Pool {
    // Empty, small, a page, several pages, a few spanning many pages; then 1 MiB.
    chunks: [0, 1, 100, 4096, 5000, 20_000, 70_000, 300_000]
        .into_iter()
        .chain([1 << 20])
        .enumerate()
        .map(|(n, len)| {
            let bytes = pattern(n as u64, len);
            (ChunkId::of(&bytes), bytes)
        })
        .collect(),
    inodes: (1..=3).map(|n| InodeId([n; 32])).collect(),
    versions: (0..6)
        .map(|n| {
            let signed = format!("signed bytes of version {n}").into_bytes();
            (VersionId::of(&signed), signed)
        })
        .collect(),
});

/// `len` bytes that depend on `n` and do not repeat within a chunk.
fn pattern(n: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(Rng(n).next());
    (0..len).map(|_| rng.next() as u8).collect()
}

#[derive(Debug, Clone)]
enum Op {
    PutChunks(Vec<usize>),
    PutChunk(usize),
    RemoveChunk(usize),
    PutVersion {
        inode: usize,
        version: usize,
        seq: u64,
    },
    RemoveVersion {
        inode: usize,
        version: usize,
    },
    Pin {
        chunk: usize,
        version: usize,
    },
    Unpin {
        chunk: usize,
        version: usize,
    },
    Collect(Vec<usize>),
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Count(usize),
    Flag(bool),
    Done,
}

/// Runs `op` on the store.
fn apply(store: &Store, op: &Op) -> Result<Outcome, Error> {
    let pool = &*POOL;
    let chunk = |i: usize| &pool.chunks[i];
    Ok(match *op {
        Op::PutChunks(ref chunks) => {
            let batch: Vec<(ChunkId, &[u8])> = chunks
                .iter()
                .map(|&i| (chunk(i).0, chunk(i).1.as_slice()))
                .collect();
            Outcome::Count(store.put_chunks(&batch)?)
        }
        Op::PutChunk(i) => Outcome::Flag(store.put_chunk(&chunk(i).0, &chunk(i).1)?),
        Op::RemoveChunk(i) => Outcome::Flag(store.remove_chunk(&chunk(i).0)?),
        Op::PutVersion {
            inode,
            version,
            seq,
        } => {
            let (id, signed) = &pool.versions[version];
            Outcome::Flag(store.put_version(&pool.inodes[inode], id, seq, signed)?)
        }
        Op::RemoveVersion { inode, version } => {
            Outcome::Flag(store.remove_version(&pool.inodes[inode], &pool.versions[version].0)?)
        }
        Op::Pin { chunk: c, version } => {
            store.pin(&chunk(c).0, &pool.versions[version].0)?;
            Outcome::Done
        }
        Op::Unpin { chunk: c, version } => {
            store.unpin(&chunk(c).0, &pool.versions[version].0)?;
            Outcome::Done
        }
        Op::Collect(ref chunks) => {
            let ids: Vec<ChunkId> = chunks.iter().map(|&i| chunk(i).0).collect();
            Outcome::Count(store.collect_unpinned(&ids)?)
        }
    })
}

/// What the store should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    chunks: BTreeMap<ChunkId, Vec<u8>>,
    versions: BTreeMap<(InodeId, VersionId), (u64, Vec<u8>)>,
    pins: BTreeSet<(ChunkId, VersionId)>,
}

impl Model {
    /// Runs `op` on the model.
    fn apply(&mut self, op: &Op) -> Outcome {
        let pool = &*POOL;
        match *op {
            Op::PutChunks(ref chunks) => Outcome::Count(
                chunks
                    .iter()
                    .filter(|&&i| {
                        let (id, bytes) = &pool.chunks[i];
                        self.chunks.insert(*id, bytes.clone()).is_none()
                    })
                    .count(),
            ),
            Op::PutChunk(i) => {
                let (id, bytes) = &pool.chunks[i];
                Outcome::Flag(self.chunks.insert(*id, bytes.clone()).is_none())
            }
            Op::RemoveChunk(i) => Outcome::Flag(self.chunks.remove(&pool.chunks[i].0).is_some()),
            Op::PutVersion {
                inode,
                version,
                seq,
            } => {
                let (id, signed) = &pool.versions[version];
                let key = (pool.inodes[inode], *id);
                let new = !self.versions.contains_key(&key);
                if new {
                    self.versions.insert(key, (seq, signed.clone()));
                }
                Outcome::Flag(new)
            }
            Op::RemoveVersion { inode, version } => Outcome::Flag(
                self.versions
                    .remove(&(pool.inodes[inode], pool.versions[version].0))
                    .is_some(),
            ),
            Op::Pin { chunk, version } => {
                self.pins
                    .insert((pool.chunks[chunk].0, pool.versions[version].0));
                Outcome::Done
            }
            Op::Unpin { chunk, version } => {
                self.pins
                    .remove(&(pool.chunks[chunk].0, pool.versions[version].0));
                Outcome::Done
            }
            Op::Collect(ref chunks) => Outcome::Count(
                chunks
                    .iter()
                    .filter(|&&i| {
                        let id = pool.chunks[i].0;
                        let pinned = self.pins.range((id, VersionId([0; 32]))..).next();
                        let pinned = pinned.is_some_and(|(chunk, _)| *chunk == id);
                        !pinned && self.chunks.remove(&id).is_some()
                    })
                    .count(),
            ),
        }
    }

    /// Everything the store holds, read through its API (pins of the pool's chunks), after
    /// checking that its statistics agree.
    fn read(store: &Store) -> Model {
        let mut model = Model::default();
        let mut after = None;
        loop {
            let page = store.chunk_ids(after.as_ref(), 3).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(*last);
            for id in page {
                model
                    .chunks
                    .insert(id, store.get_chunk(&id).unwrap().unwrap());
            }
        }
        let mut after = None;
        loop {
            let page = store.inode_ids(after.as_ref(), 2).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(*last);
            for inode in page {
                let versions = store.versions(&inode).unwrap();
                assert!(
                    !versions.is_empty(),
                    "inode {inode} listed without versions"
                );
                for v in versions {
                    model.versions.insert((inode, v.id), (v.seq, v.signed));
                }
            }
        }
        for (chunk, _) in &POOL.chunks {
            for version in store.pins(chunk).unwrap() {
                model.pins.insert((*chunk, version));
            }
        }
        let stats = store.stats().unwrap();
        let inodes: BTreeSet<InodeId> = model.versions.keys().map(|(inode, _)| *inode).collect();
        let bytes: usize = model.chunks.values().map(Vec::len).sum();
        assert_eq!(
            (
                stats.chunks,
                stats.chunk_bytes,
                stats.inodes,
                stats.versions
            ),
            (
                model.chunks.len() as u64,
                bytes as u64,
                inodes.len() as u64,
                model.versions.len() as u64
            ),
            "statistics disagree with the contents"
        );
        model
    }

    /// The model without the bytes, for failure messages.
    fn summary(&self) -> String {
        let chunks: Vec<String> = self
            .chunks
            .iter()
            .map(|(id, bytes)| format!("{id:?} ({} bytes)", bytes.len()))
            .collect();
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|((inode, id), (seq, _))| format!("{inode:?}/{id:?} (seq {seq})"))
            .collect();
        format!(
            "chunks {chunks:?}\nversions {versions:?}\npins {:?}",
            self.pins
        )
    }

    /// The versions of `inode` as [`Store::versions`] should list them.
    fn versions_of(&self, inode: InodeId) -> Vec<StoredVersion> {
        let mut versions: Vec<StoredVersion> = self
            .versions
            .range((inode, VersionId([0; 32]))..=(inode, VersionId([0xff; 32])))
            .map(|(&(_, id), (seq, signed))| StoredVersion {
                id,
                seq: *seq,
                signed: signed.clone(),
            })
            .collect();
        versions.sort_by(|a, b| b.seq.cmp(&a.seq).then(a.id.cmp(&b.id)));
        versions
    }
}

// ---------------------------------------------------------------------------------------
// Randomness: one seed per test, printed, replayable.

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn indices(&mut self, n: usize, max_len: usize) -> Vec<usize> {
        (0..1 + self.below(max_len))
            .map(|_| self.below(n))
            .collect()
    }
}

/// The test's seed: `STORE_TEST_SEED` if set, else from the clock; printed either way.
fn seed(test: &str) -> Rng {
    let seed = match std::env::var("STORE_TEST_SEED") {
        Ok(s) => s.parse().expect("STORE_TEST_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("{test}: STORE_TEST_SEED={seed}");
    Rng(seed)
}

fn random_ops(rng: &mut Rng, n: usize) -> Vec<Op> {
    let (chunks, inodes, versions) = (SMALL, POOL.inodes.len(), POOL.versions.len());
    (0..n)
        .map(|_| match rng.below(8) {
            0 | 1 => Op::PutChunks(rng.indices(chunks, 4)),
            2 => Op::PutChunk(rng.below(chunks)),
            3 => Op::RemoveChunk(rng.below(chunks)),
            4 => Op::PutVersion {
                inode: rng.below(inodes),
                version: rng.below(versions),
                seq: rng.below(4) as u64,
            },
            5 => Op::RemoveVersion {
                inode: rng.below(inodes),
                version: rng.below(versions),
            },
            6 if rng.below(3) > 0 => Op::Pin {
                chunk: rng.below(chunks),
                version: rng.below(versions),
            },
            6 => Op::Unpin {
                chunk: rng.below(chunks),
                version: rng.below(versions),
            },
            _ => Op::Collect(rng.indices(chunks, 4)),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// A disk that fails and crashes on request.

/// What the backend does wrong, counted in mutating operations (`write`, `set_len`,
/// `sync_data`) since the disk was made.
#[derive(Debug, Clone, Copy, Default)]
enum Fault {
    #[default]
    None,
    /// Operation `n` fails; later ones succeed.
    FailOnce(u64),
    /// Operation `n` and every later one fails: the disk died, or the machine crashed.
    FailFrom(u64),
}

/// A write not yet made durable by `sync_data`.
#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// One file: what the running store sees, what a crash keeps for sure, and what it may.
#[derive(Debug, Default)]
struct FileState {
    /// The file as seen through the page cache.
    live: Vec<u8>,
    /// The file as of its last successful sync.
    durable: Vec<u8>,
    /// Mutations since then, in order.
    unsynced: Vec<Unsynced>,
}

impl FileState {
    fn holding(image: &[u8]) -> FileState {
        FileState {
            live: image.to_vec(),
            durable: image.to_vec(),
            unsynced: Vec::new(),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let write = Unsynced::Write {
            offset,
            data: data.to_vec(),
        };
        apply_unsynced(&mut self.live, &write);
        self.unsynced.push(write);
    }

    fn sync(&mut self) {
        for write in self.unsynced.drain(..) {
            apply_unsynced(&mut self.durable, &write);
        }
    }

    /// Some of the unsynced writes (chosen by `rng`), each whole.
    fn torn(&self, rng: &mut Rng) -> Vec<u8> {
        let mut image = self.durable.clone();
        for write in &self.unsynced {
            if rng.below(2) == 0 {
                apply_unsynced(&mut image, write);
            }
        }
        image
    }

    /// Every unsynced write, but only within the synced length.
    fn without_growth(&self) -> Vec<u8> {
        let mut image = self.durable.clone();
        for write in &self.unsynced {
            if let Unsynced::Write { offset, data } = write {
                let start = (*offset as usize).min(image.len());
                let end = (*offset as usize + data.len()).min(image.len());
                image[start..end].copy_from_slice(&data[..end - start]);
            }
        }
        image
    }
}

/// What a disk holds: the database file and the segment files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Image {
    db: Vec<u8>,
    segments: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug, Default)]
struct DiskState {
    /// The database file (its live contents are [`Disk::live`]).
    db: FileState,
    /// The segment files. A segment's creation and removal are durable at once (the
    /// store syncs the directory).
    segments: BTreeMap<u64, FileState>,
    ops: u64,
    syncs: u64,
    fault: Fault,
    faults_hit: u64,
    /// What the operations that faulted were doing.
    faulted: Vec<&'static str>,
}

/// A disk: the running database reads and writes `live` (the disk as seen through the page
/// cache); `state` remembers what a crash would keep.
#[derive(Debug, Default)]
struct Disk {
    live: InMemoryBackend,
    state: Mutex<DiskState>,
}

impl Disk {
    /// A disk holding `image`, all of it durable.
    fn with_image(image: &Image) -> Arc<Disk> {
        let disk = Disk::default();
        disk.live.set_len(image.db.len() as u64).unwrap();
        disk.live.write(0, &image.db).unwrap();
        {
            let mut state = disk.state.lock().unwrap();
            state.db = FileState::holding(&image.db);
            for (n, bytes) in &image.segments {
                state.segments.insert(*n, FileState::holding(bytes));
            }
        }
        Arc::new(disk)
    }

    /// Arms `fault`, counting from now (`FailOnce(0)`: the next mutation fails).
    fn arm(&self, fault: Fault) {
        let mut state = self.state.lock().unwrap();
        let now = state.ops;
        state.fault = match fault {
            Fault::None => Fault::None,
            Fault::FailOnce(n) => Fault::FailOnce(now + n),
            Fault::FailFrom(n) => Fault::FailFrom(now + n),
        };
    }

    fn ops(&self) -> u64 {
        self.state.lock().unwrap().ops
    }

    fn syncs(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    fn faults_hit(&self) -> u64 {
        self.state.lock().unwrap().faults_hit
    }

    /// The image built from the database file and each segment by `each`.
    fn image(&self, db: Vec<u8>, mut each: impl FnMut(&FileState) -> Vec<u8>) -> Image {
        let state = self.state.lock().unwrap();
        Image {
            db,
            segments: state
                .segments
                .iter()
                .map(|(n, file)| (*n, each(file)))
                .collect(),
        }
    }

    /// What the disk holds if the power stays on: every write that succeeded.
    fn live_image(&self) -> Image {
        let len = self.live.len().unwrap();
        let db = self.live.read(0, len as usize).unwrap();
        self.image(db, |file| file.live.clone())
    }

    /// What a crash keeps if nothing since the last sync of each file reached the disk.
    fn durable_image(&self) -> Image {
        let db = self.state.lock().unwrap().db.durable.clone();
        self.image(db, |file| file.durable.clone())
    }

    /// What a crash keeps if some of the writes since the last sync of each file (chosen
    /// by `rng`) reached the disk, each whole.
    fn torn_image(&self, rng: &mut Rng) -> Image {
        let db = self.state.lock().unwrap().db.torn(rng);
        self.image(db, |file| file.torn(rng))
    }

    /// What a crash keeps if every write since the last sync reached the disk but no file
    /// grew: writes past each file's synced length are lost.
    fn image_without_growth(&self) -> Image {
        let db = self.state.lock().unwrap().db.without_growth();
        self.image(db, FileState::without_growth)
    }

    /// Counts a mutation and fails it if a fault says so; else runs `op`.
    fn mutate<T>(
        &self,
        kind: &'static str,
        op: impl FnOnce(&mut DiskState) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.state.lock().unwrap();
        let n = state.ops;
        state.ops += 1;
        let fail = match state.fault {
            Fault::None => false,
            Fault::FailOnce(k) => n == k,
            Fault::FailFrom(k) => n >= k,
        };
        if fail {
            state.faults_hit += 1;
            state.faulted.push(kind);
            return Err(io::Error::other(format!("injected fault at operation {n}")));
        }
        op(&mut state)
    }
}

fn apply_unsynced(image: &mut Vec<u8>, write: &Unsynced) {
    match write {
        Unsynced::Write { offset, data } => {
            let start = *offset as usize;
            resize(image, image.len().max(start + data.len()));
            image[start..start + data.len()].copy_from_slice(data);
        }
        Unsynced::SetLen(len) => resize(image, *len as usize),
    }
}

/// `Vec::resize`, fast in a debug build.
fn resize(image: &mut Vec<u8>, len: usize) {
    if len > image.len() {
        image.extend_from_slice(&vec![0; len - image.len()]);
    } else {
        image.truncate(len);
    }
}

/// redb's view of a [`Disk`].
#[derive(Debug, Clone)]
struct FaultyBackend(Arc<Disk>);

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.0.live.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.0.live.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.mutate("set_len", |state| {
            self.0.live.set_len(len)?;
            state.db.unsynced.push(Unsynced::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.0.mutate("sync_data", |state| {
            state.db.sync();
            state.syncs += 1;
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.mutate("write", |state| {
            self.0.live.write(offset, data)?;
            state.db.unsynced.push(Unsynced::Write {
                offset,
                data: data.to_vec(),
            });
            Ok(())
        })
    }
}

/// The store's segments on a [`Disk`].
#[derive(Debug, Clone)]
struct FaultySegments(Arc<Disk>);

fn no_segment(n: u64) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no segment {n}"))
}

impl Segments for FaultySegments {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self
            .0
            .state
            .lock()
            .unwrap()
            .segments
            .keys()
            .copied()
            .collect())
    }

    fn create(&self, n: u64) -> io::Result<()> {
        self.0.mutate("create", |state| {
            state.segments.insert(n, FileState::default());
            Ok(())
        })
    }

    fn write(&self, n: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.mutate("write", |state| {
            let file = state.segments.get_mut(&n).ok_or_else(|| no_segment(n))?;
            file.write(offset, data);
            Ok(())
        })
    }

    fn read(&self, n: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let state = self.0.state.lock().unwrap();
        let file = state.segments.get(&n).ok_or_else(|| no_segment(n))?;
        file.live
            .get(offset as usize..offset as usize + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn sync(&self, n: u64) -> io::Result<()> {
        self.0.mutate("sync", |state| {
            state
                .segments
                .get_mut(&n)
                .ok_or_else(|| no_segment(n))?
                .sync();
            state.syncs += 1;
            Ok(())
        })
    }

    fn truncate(&self, n: u64, len: u64) -> io::Result<()> {
        self.0.mutate("truncate", |state| {
            let file = state.segments.get_mut(&n).ok_or_else(|| no_segment(n))?;
            let cut = Unsynced::SetLen(len);
            apply_unsynced(&mut file.live, &cut);
            file.unsynced.push(cut);
            file.sync();
            Ok(())
        })
    }

    fn punch(&self, n: u64, offset: u64, len: u64) -> io::Result<()> {
        self.0.mutate("punch", |state| {
            let file = state.segments.get_mut(&n).ok_or_else(|| no_segment(n))?;
            let end = (offset + len).min(file.live.len() as u64);
            if offset < end {
                file.write(offset, &vec![0; (end - offset) as usize]);
            }
            Ok(())
        })
    }

    fn remove(&self, n: u64) -> io::Result<()> {
        self.0.mutate("remove", |state| {
            state.segments.remove(&n);
            Ok(())
        })
    }

    /// A few bytes left unused before most chunks, as real segments do before chunks
    /// they write directly (`DirSegments`): crashes and rollovers then meet chunks that
    /// do not follow each other back to back.
    fn skew(&self, offset: u64, data: &[u8]) -> u64 {
        (offset.wrapping_mul(31) ^ data.len() as u64) % 17
    }
}

/// Segments this small fill after a few of the pool's chunks: runs roll over to new
/// segments and delete emptied ones (at 400 kB, random runs seldom rolled over at all).
const TEST_SEGMENT_BYTES: u64 = 100_000;

/// A store on `disk`: its database file and its segments.
fn open_on(disk: &Arc<Disk>) -> Result<Store, Error> {
    Store::with_backends_sized(
        FaultyBackend(disk.clone()),
        FaultySegments(disk.clone()),
        TEST_SEGMENT_BYTES,
    )
}

/// Runs `ops` until one fails; the model of what was acknowledged, and the failed op.
fn run_until_error<'a>(store: &Store, ops: &'a [Op]) -> (Model, Option<&'a Op>) {
    let mut model = Model::default();
    for op in ops {
        match apply(store, op) {
            Ok(outcome) => assert_eq!(outcome, model.apply(op), "{op:?}"),
            Err(Error::Io(_)) => {
                // The store goes on answering (errors, most likely) without panicking.
                let _ = store.stats();
                let _ = store.get_chunk(&POOL.chunks[7].0);
                let _ = store.versions(&POOL.inodes[0]);
                return (model, Some(op));
            }
            Err(e) => panic!("{op:?} failed with {e:?}, not an I/O error"),
        }
    }
    (model, None)
}

/// Opens a store on `image` (no faults) and checks it holds what was acknowledged, plus
/// `in_flight` entirely or not at all; then that it takes writes again.
fn check_restart(image: &Image, acked: &Model, in_flight: Option<&Op>, what: &str) {
    let store = open_on(&Disk::with_image(image))
        .unwrap_or_else(|e| panic!("{what}: reopening failed: {e}"));
    let held = Model::read(&store);
    let mut complete = acked.clone();
    if let Some(op) = in_flight {
        complete.apply(op);
    }
    assert!(
        held == *acked || held == complete,
        "{what}: after the restart the store holds\n{}\nnot the acknowledged\n{}\nnor that plus \
         {in_flight:?}",
        held.summary(),
        acked.summary(),
    );
    let bytes = b"written after the restart";
    assert!(store.put_chunk(&ChunkId::of(bytes), bytes).unwrap());
}

/// How many backend mutations `ops` make on a fresh store, after opening it.
fn mutations(ops: &[Op]) -> u64 {
    let disk = Arc::new(Disk::default());
    let store = open_on(&disk).unwrap();
    let start = disk.ops();
    let (_, failed) = run_until_error(&store, ops);
    assert!(failed.is_none());
    disk.ops() - start
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn round_trips_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let pool = &*POOL;
    let mut model = Model::default();
    let ops = [
        Op::PutChunks((0..pool.chunks.len()).collect()),
        Op::PutVersion {
            inode: 0,
            version: 0,
            seq: 1,
        },
        Op::PutVersion {
            inode: 0,
            version: 1,
            seq: 2,
        },
        Op::PutVersion {
            inode: 2,
            version: 1,
            seq: 2,
        },
        Op::Pin {
            chunk: 3,
            version: 1,
        },
        Op::RemoveChunk(2),
    ];
    {
        let store = Store::open(&path).unwrap();
        for op in &ops {
            assert_eq!(apply(&store, op).unwrap(), model.apply(op));
        }
    }
    let store = Store::open(&path).unwrap();
    let held = Model::read(&store);
    assert!(
        held == model,
        "{}\nnot\n{}",
        held.summary(),
        model.summary()
    );
    assert_eq!(
        store.versions(&pool.inodes[0]).unwrap(),
        model.versions_of(pool.inodes[0])
    );
}

#[test]
fn mismatched_chunks_are_refused() {
    let store = Store::in_memory().unwrap();
    let (id, bytes) = &POOL.chunks[5];
    let mut forged = bytes.clone();
    forged[100] ^= 1;
    assert!(matches!(
        store.put_chunk(id, &forged),
        Err(Error::Mismatch { id: got }) if got == *id
    ));
    assert!(!store.has_chunk(id).unwrap());
    assert!(store.put_chunk(id, bytes).unwrap());
}

/// Flips a byte inside every copy of `needle` in the files of `dir` (the store's
/// segments); returns how many copies there were.
fn flip_in_dir(dir: &std::path::Path, needle: &[u8]) -> usize {
    let mut hits = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut file = std::fs::read(&path).unwrap();
        let found: Vec<usize> = file
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect();
        for &at in &found {
            file[at + needle.len() / 2] ^= 0x5a;
        }
        std::fs::write(&path, &file).unwrap();
        hits += found.len();
    }
    hits
}

#[test]
fn corrupt_chunks_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (a, a_bytes) = &POOL.chunks[6];
    let (b, b_bytes) = &POOL.chunks[5];
    let (c, c_bytes) = &POOL.chunks[7];
    {
        let store = Store::open(&path).unwrap();
        store
            .put_chunks(&[(*a, a_bytes), (*b, b_bytes), (*c, c_bytes)])
            .unwrap();
    }
    assert!(flip_in_dir(&Store::segment_dir(&path), &a_bytes[1000..1064]) > 0);
    assert!(flip_in_dir(&Store::segment_dir(&path), &b_bytes[5000..5064]) > 0);

    let store = Store::open(&path).unwrap();
    let before = store.stats().unwrap();
    for id in [a, b] {
        assert!(matches!(
            store.get_chunk(id),
            Err(Error::Corrupt { id: got }) if got == *id
        ));
        assert!(
            store.has_chunk(id).unwrap(),
            "a corrupt chunk stays until removed"
        );
    }
    assert_eq!(store.stats().unwrap().corrupt_found, 2);
    assert_eq!(store.get_chunk(c).unwrap().as_ref(), Some(c_bytes));

    // A good copy stored over a corrupt one replaces it.
    assert!(store.put_chunk(a, a_bytes).unwrap());
    assert_eq!(store.get_chunk(a).unwrap().as_ref(), Some(a_bytes));
    // Or the caller removes it and stores a good copy later.
    assert!(store.remove_chunk(b).unwrap());
    assert!(store.put_chunk(b, b_bytes).unwrap());
    assert_eq!(store.get_chunk(b).unwrap().as_ref(), Some(b_bytes));

    let after = store.stats().unwrap();
    assert_eq!(
        (after.chunks, after.chunk_bytes),
        (before.chunks, before.chunk_bytes)
    );
    assert_eq!(after.corrupt_found, 3, "found again when overwritten");
}

#[test]
fn a_bulk_write_is_one_commit() {
    let disk = Arc::new(Disk::default());
    let store =
        Store::with_backends(FaultyBackend(disk.clone()), FaultySegments(disk.clone())).unwrap();
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..16)
        .map(|n| {
            let bytes = pattern(1000 + n, 1 << 20);
            (ChunkId::of(&bytes), bytes)
        })
        .collect();
    let batch: Vec<(ChunkId, &[u8])> = chunks.iter().map(|(id, b)| (*id, b.as_slice())).collect();
    let syncs = || disk.state.lock().unwrap().syncs;
    let before = syncs();
    assert_eq!(store.put_chunks(&batch).unwrap(), 16);
    // Two syncs for the commit and one each time the file grows: not a commit per chunk.
    let used = syncs() - before;
    assert!(used < 8, "{used} syncs for one bulk write");
    let stats = store.stats().unwrap();
    assert_eq!((stats.chunks, stats.chunk_bytes), (16, 16 << 20));
    assert_eq!(store.put_chunks(&batch).unwrap(), 0);
}

/// Chunks of several owners, one of them bad: the good ones are stored in one commit,
/// each with its owner, and the bad one alone is refused.
#[test]
fn chunks_of_several_owners_are_checked_each_and_stored_in_one_commit() {
    let disk = Arc::new(Disk::default());
    let store = open_on(&disk).unwrap();
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..6)
        .map(|n| {
            let bytes = pattern(3000 + n, 200_000);
            (ChunkId::of(&bytes), bytes)
        })
        .collect();
    let owners: Vec<InodeId> = (0..6).map(|n| InodeId([n + 40; 32])).collect();
    let mut offered: Vec<(InodeId, ChunkId, &[u8])> = chunks
        .iter()
        .zip(&owners)
        .map(|((id, bytes), owner)| (*owner, *id, bytes.as_slice()))
        .collect();
    offered[2].2 = &chunks[3].1;
    let syncs = disk.syncs();
    let results = store.put_chunks_each(&offered).unwrap();
    assert!(disk.syncs() - syncs < 8, "{} syncs", disk.syncs() - syncs);
    for (n, result) in results.iter().enumerate() {
        match (n, result) {
            (2, Err(Error::Mismatch { id })) => assert_eq!(*id, chunks[2].0),
            (2, other) => panic!("the bad chunk gave {other:?}"),
            (_, Ok(new)) => assert!(*new, "chunk {n} was not new"),
            (_, Err(e)) => panic!("chunk {n} failed: {e}"),
        }
    }
    for (n, (id, bytes)) in chunks.iter().enumerate() {
        let held = store.get_chunk(id).unwrap();
        assert_eq!(held.as_ref(), (n != 2).then_some(bytes), "chunk {n}");
        let owner = store.owner(id).unwrap();
        assert_eq!(owner, (n != 2).then_some(owners[n]), "chunk {n}");
    }
    // Offered again: nothing new, nothing written.
    let ops = disk.ops();
    let again = store.put_chunks_each(&offered).unwrap();
    assert!(
        again
            .iter()
            .enumerate()
            .all(|(n, r)| n == 2 || matches!(r, Ok(false)))
    );
    assert_eq!(disk.ops(), ops);
}

/// A segment sync that fails is not retried into a success: the bytes it did not write
/// may be gone (Linux marks them clean), so the store refuses every write until it is
/// reopened, and the chunk is never recorded durable without its bytes.
#[test]
fn a_failed_segment_sync_is_not_retried_into_a_false_durable() {
    let disk = Arc::new(Disk::default());
    let store = open_on(&disk).unwrap();
    let deferred = store.deferred();
    let (id, bytes) = &POOL.chunks[6];
    assert!(deferred.put_chunk(id, bytes).unwrap());
    disk.arm(Fault::FailOnce(0));
    assert!(matches!(store.sync(), Err(Error::Io(_))));
    assert_eq!(disk.state.lock().unwrap().faulted, vec!["sync"]);
    assert!(matches!(store.sync(), Err(Error::Io(_))), "a retried sync");
    let (other, other_bytes) = &POOL.chunks[5];
    assert!(matches!(
        store.put_chunk(other, other_bytes),
        Err(Error::Io(_))
    ));
    drop((store, deferred));
    for (image, what) in [
        (disk.durable_image(), "durable"),
        (disk.live_image(), "live"),
    ] {
        let reopened = open_on(&Disk::with_image(&image)).unwrap();
        // Never acknowledged: there whole, or not at all.
        match reopened.get_chunk(id) {
            Ok(None) => {}
            Ok(Some(held)) => assert_eq!(&held, bytes),
            Err(e) => panic!("{what}: the unsynced chunk reads back as {e:?}"),
        }
        assert!(reopened.put_chunk(other, other_bytes).unwrap());
    }
}

/// A durable write that finds a chunk already held (stored by a deferred write, not yet
/// synced) makes it durable before it reports it stored: a peer's put acknowledged by
/// this replica survives a crash. Fails if such a put returns without a commit.
#[test]
fn a_durable_put_of_a_chunk_held_by_a_deferred_write_makes_it_durable() {
    let disk = Arc::new(Disk::default());
    let store = open_on(&disk).unwrap();
    let deferred = store.deferred();
    let (id, bytes) = &POOL.chunks[5];
    assert!(deferred.put_chunk(id, bytes).unwrap());
    assert!(store.has_deferred());
    // Already held: nothing new to write, but it must not stay only deferred.
    store.put_chunk(id, bytes).unwrap();
    assert!(!store.has_deferred());
    let reopened = open_on(&Disk::with_image(&disk.durable_image())).unwrap();
    assert_eq!(reopened.get_chunk(id).unwrap().as_deref(), Some(&bytes[..]));
}

/// What a [`Gate`] holds: whether syncs are held, whether one waits, whether it may go.
#[derive(Debug, Default)]
struct GateState {
    armed: bool,
    waiting: bool,
    open: bool,
}

/// An in-memory backend whose next `sync_data` can be held until the test lets it go.
#[derive(Debug, Clone, Default)]
struct Gate {
    backend: Arc<InMemoryBackend>,
    state: Arc<(Mutex<GateState>, std::sync::Condvar)>,
}

impl Gate {
    fn arm(&self) {
        self.state.0.lock().unwrap().armed = true;
    }

    fn wait_for_a_held_sync(&self) {
        let (lock, signal) = &*self.state;
        let mut state = lock.lock().unwrap();
        while !state.waiting {
            state = signal.wait(state).unwrap();
        }
    }

    fn open(&self) {
        let (lock, signal) = &*self.state;
        lock.lock().unwrap().open = true;
        signal.notify_all();
    }
}

impl StorageBackend for Gate {
    fn len(&self) -> io::Result<u64> {
        self.backend.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.backend.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.backend.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        let (lock, signal) = &*self.state;
        let mut state = lock.lock().unwrap();
        if state.armed {
            state.waiting = true;
            signal.notify_all();
            while !state.open {
                state = signal.wait(state).unwrap();
            }
        }
        drop(state);
        self.backend.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.backend.write(offset, data)
    }
}

/// `sync` returns only once a durable commit that followed the deferred writes has
/// returned, not while one is still under way: a commit begun by another writer (a
/// peer's put, a second `fsync`) and stopped in its disk sync keeps `sync` waiting.
/// Fails if `sync` trusts a flag the other commit cleared before it finished.
#[test]
fn sync_waits_for_a_durable_commit_under_way() {
    let gate = Gate::default();
    let store = Store::with_backends(gate.clone(), MemSegments::default()).unwrap();
    let deferred = store.deferred();
    let (id, bytes) = &POOL.chunks[4];
    assert!(deferred.put_chunk(id, bytes).unwrap());
    gate.arm();
    let (other, other_bytes) = POOL.chunks[5].clone();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || store.put_chunk(&other, &other_bytes))
    };
    gate.wait_for_a_held_sync();
    let (done, synced) = std::sync::mpsc::sync_channel(1);
    let syncer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let result = store.sync();
            let _ = done.send(());
            result
        })
    };
    assert!(
        synced
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "sync returned while the commit it relies on was still syncing"
    );
    assert!(store.has_deferred());
    gate.open();
    assert!(writer.join().unwrap().unwrap());
    syncer.join().unwrap().unwrap();
    assert!(!store.has_deferred());
}

/// An empty chunk keeps no segment alive, and reads back after its segment is gone.
#[test]
fn empty_chunks_outlive_their_segment() {
    let disk = Arc::new(Disk::default());
    let store = open_on(&disk).unwrap();
    let (empty, nothing) = &POOL.chunks[0];
    assert!(nothing.is_empty());
    let (big, big_bytes) = &POOL.chunks[7];
    let (next, next_bytes) = &POOL.chunks[SMALL];
    store.put_chunk(big, big_bytes).unwrap();
    store.put_chunk(empty, nothing).unwrap();
    // The next chunk does not fit: segment 1 starts; removing the big chunk empties 0.
    store.put_chunk(next, next_bytes).unwrap();
    store.remove_chunk(big).unwrap();
    assert!(!disk.state.lock().unwrap().segments.contains_key(&0));
    assert_eq!(store.get_chunk(empty).unwrap().as_deref(), Some(&[][..]));
    assert_eq!(store.get_chunk(next).unwrap().as_ref(), Some(next_bytes));
}

#[test]
fn reads_proceed_during_writes() {
    fn shareable<T: Send + Sync + Clone + std::fmt::Debug>() {}
    shareable::<Store>();
    let store = Store::in_memory().unwrap();
    let (id, bytes) = &POOL.chunks[4];
    store.put_chunk(id, bytes).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 0..20 {
                let bytes = pattern(2000 + n, 50_000);
                store.put_chunk(&ChunkId::of(&bytes), &bytes).unwrap();
            }
        })
    };
    for _ in 0..50 {
        assert_eq!(store.get_chunk(id).unwrap().as_ref(), Some(bytes));
    }
    writer.join().unwrap();
    assert_eq!(store.stats().unwrap().chunks, 21);
}

/// An I/O error at every point of a run (a passing one or a dead disk, by the seed): the
/// call that meets it returns `Err`, nothing panics, and a restart on what the disk holds
/// finds every acknowledged write and the failed one whole or not at all.
#[test]
fn io_errors_never_tear_a_write() {
    let mut rng = seed("io_errors_never_tear_a_write");
    let ops = random_ops(&mut rng, 20);
    let total = mutations(&ops);
    for at in 0..total {
        let fault = if rng.below(2) == 0 {
            Fault::FailOnce(at)
        } else {
            Fault::FailFrom(at)
        };
        let disk = Arc::new(Disk::default());
        let store = open_on(&disk).unwrap();
        disk.arm(fault);
        let (acked, failed) = run_until_error(&store, &ops);
        // Giving a removed chunk's space back happens after its removal is durable; a
        // failure there only leaks the space, and is logged, not returned. (Closing the
        // store may meet the fault too, after every call returned.)
        let faulted = disk.state.lock().unwrap().faulted.clone();
        drop(store);
        assert!(disk.faults_hit() > 0, "{fault:?} of {total} was never hit");
        assert!(
            failed.is_some() || faulted.iter().all(|k| ["punch", "remove"].contains(k)),
            "{fault:?}: the fault was hit ({faulted:?}) but every call succeeded"
        );
        check_restart(&disk.live_image(), &acked, failed, &format!("{fault:?}"));
    }
}

/// A crash at every point of a run; the restart sees what was synced, and then what was
/// synced plus some of the later writes: every acknowledged write is there, the one in
/// flight whole or not at all.
#[test]
fn crashes_lose_no_acknowledged_write() {
    let mut rng = seed("crashes_lose_no_acknowledged_write");
    let ops = random_ops(&mut rng, 20);
    let total = mutations(&ops);
    for at in 0..total {
        let disk = Arc::new(Disk::default());
        let store = open_on(&disk).unwrap();
        disk.arm(Fault::FailFrom(at));
        let (acked, in_flight) = run_until_error(&store, &ops);
        drop(store);
        let what = format!("crash at mutation {at} of {total}");
        check_restart(&disk.durable_image(), &acked, in_flight, &what);
        let what = format!("{what}, some unsynced writes kept");
        check_restart(&disk.torn_image(&mut rng), &acked, in_flight, &what);
    }
}

/// A crash at every point of a run that grows the file, where the disk keeps the writes
/// but not the growth (the header can then describe a file longer than the one on disk).
#[test]
fn crashes_while_the_file_grows_lose_nothing() {
    let mut rng = seed("crashes_while_the_file_grows_lose_nothing");
    let ops = [Op::PutChunk(2), Op::PutChunks(vec![3, SMALL])];
    let total = mutations(&ops);
    for at in 0..total {
        let disk = Arc::new(Disk::default());
        let store = open_on(&disk).unwrap();
        disk.arm(Fault::FailFrom(at));
        let (acked, in_flight) = run_until_error(&store, &ops);
        drop(store);
        let what = format!("crash at mutation {at} of {total}");
        check_restart(&disk.image_without_growth(), &acked, in_flight, &what);
        let what = format!("{what}, some unsynced writes kept");
        check_restart(&disk.torn_image(&mut rng), &acked, in_flight, &what);
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let chunk = 0..SMALL;
    let inode = 0..POOL.inodes.len();
    let version = 0..POOL.versions.len();
    let chunks = prop::collection::vec(chunk.clone(), 0..5);
    prop_oneof![
        chunks.clone().prop_map(Op::PutChunks),
        chunk.clone().prop_map(Op::PutChunk),
        chunk.clone().prop_map(Op::RemoveChunk),
        (inode.clone(), version.clone(), 0..4u64).prop_map(|(inode, version, seq)| {
            Op::PutVersion {
                inode,
                version,
                seq,
            }
        }),
        (inode, version.clone()).prop_map(|(inode, version)| Op::RemoveVersion { inode, version }),
        (chunk.clone(), version.clone()).prop_map(|(chunk, version)| Op::Pin { chunk, version }),
        (chunk, version).prop_map(|(chunk, version)| Op::Unpin { chunk, version }),
        chunks.prop_map(Op::Collect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Failing cases go to tests/store.proptest-regressions, to be committed.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let store = Store::in_memory().unwrap();
        let mut model = Model::default();
        for op in &ops {
            let want = model.apply(op);
            prop_assert_eq!(apply(&store, op).unwrap(), want, "{:?}", op);
        }
        let held = Model::read(&store);
        prop_assert!(held == model, "{}\nnot\n{}", held.summary(), model.summary());
        for inode in &POOL.inodes {
            prop_assert_eq!(store.versions(inode).unwrap(), model.versions_of(*inode));
        }
    }
}

/// Deferred writes (a mount's, before `fsync`): a crash at every point of a run that syncs
/// after every third write keeps every write acknowledged before the last sync, and of the
/// later ones a prefix: the store as it was after some write, never part of one, never a
/// later write without an earlier one.
#[test]
fn a_crash_loses_only_deferred_writes_after_the_last_sync() {
    let mut rng = seed("a_crash_loses_only_deferred_writes_after_the_last_sync");
    let ops = random_ops(&mut rng, 24);
    // Runs the ops, a sync after every third; the states after each op (`states[0]` is
    // the empty store) and how many ops the last successful sync covered.
    let run = |store: &Store| -> (Vec<Model>, usize) {
        let deferred = store.deferred();
        let mut states = vec![Model::default()];
        let mut synced = 0;
        for (i, op) in ops.iter().enumerate() {
            let mut next = states[states.len() - 1].clone();
            match apply(&deferred, op) {
                Ok(outcome) => assert_eq!(outcome, next.apply(op), "{op:?}"),
                Err(Error::Io(_)) => {
                    // In flight: it may or may not have been committed.
                    next.apply(op);
                    states.push(next);
                    return (states, synced);
                }
                Err(e) => panic!("{op:?} failed with {e:?}, not an I/O error"),
            }
            states.push(next);
            if (i + 1) % 3 == 0 {
                match store.sync() {
                    Ok(()) => synced = i + 1,
                    Err(Error::Io(_)) => return (states, synced),
                    Err(e) => panic!("sync failed with {e:?}, not an I/O error"),
                }
            }
        }
        (states, synced)
    };
    let syncs_of = |deferred: bool| {
        let disk = Arc::new(Disk::default());
        let store = open_on(&disk).unwrap();
        let start = disk.syncs();
        let states = if deferred {
            run(&store).0
        } else {
            run_until_error(&store, &ops);
            Vec::new()
        };
        (disk.syncs() - start, states)
    };
    let (durable_syncs, _) = syncs_of(false);
    let (deferred_syncs, _) = syncs_of(true);
    assert!(
        deferred_syncs < durable_syncs,
        "deferred writes waited for the disk {deferred_syncs} times, durable ones \
         {durable_syncs}"
    );
    let disk = Arc::new(Disk::default());
    let store = open_on(&disk).unwrap();
    let start = disk.ops();
    let (states, _) = run(&store);
    let total = disk.ops() - start;
    // Without a crash, everything is there after reopening (dropping the store syncs).
    drop(store);
    let reopened = open_on(&Disk::with_image(&disk.durable_image())).unwrap();
    assert!(Model::read(&reopened) == states[states.len() - 1]);
    for at in 0..total {
        let disk = Arc::new(Disk::default());
        let store = open_on(&disk).unwrap();
        disk.arm(Fault::FailFrom(at));
        let (states, synced) = run(&store);
        drop(store);
        for (image, kept) in [
            (disk.durable_image(), "nothing unsynced kept"),
            (disk.torn_image(&mut rng), "some unsynced writes kept"),
        ] {
            let what = format!("crash at mutation {at} of {total}, {kept}");
            let store = open_on(&Disk::with_image(&image))
                .unwrap_or_else(|e| panic!("{what}: reopening failed: {e}"));
            let held = Model::read(&store);
            assert!(
                states[synced..].contains(&held),
                "{what}: the store holds\n{}\nwhich is no state from the last sync (after op \
                 {synced}) on",
                held.summary()
            );
        }
    }
}
