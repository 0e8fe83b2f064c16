//! Where a store keeps the bytes of its chunks: numbered, append-only segment files.
//!
//! The store appends each new chunk at the end of the newest segment and records where it
//! went in redb; nothing is ever written over. A removed chunk's bytes are given back to
//! the file system by punching a hole where they were (`fallocate`), and a segment left
//! with no chunk in it is deleted. See the store's module docs for the order of writes and
//! syncs that keeps the two consistent through a crash.
//!
//! [`DirSegments`] moves the bytes of large chunks with direct I/O (`O_DIRECT`) where the
//! file system takes it: the whole blocks inside a chunk go between the process and the
//! disk without the page cache, and only the partial blocks at its two ends are written
//! (and read) through it. Copying every chunk into the page cache was most of what storing
//! cost, and the cache held ciphertext that the file system client above keeps as
//! plaintext anyway. A block here is at least a page and a file system block, so that
//! appended chunks never have one block written both ways: a block lies wholly inside one
//! chunk's direct range, or holds the ends of chunks, which are always written buffered.
//! Bytes written again after a transaction that did not commit (see the store's `Log`)
//! may land at other offsets; there, as for a direct read over a cached dirty block, the
//! kernel writes cached blocks back and drops them around each direct call, so what is
//! read is what was written last.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// Storage for segment files, numbered from 0. The store appends to a segment past what
/// it last committed (writing again over bytes a transaction wrote but did not commit),
/// and reads only ranges it wrote.
///
/// [`Store::with_backends`](super::Store::with_backends) takes one; tests implement it to
/// inject I/O errors and crashes.
pub trait Segments: Send + Sync + fmt::Debug + 'static {
    /// The segments that exist, in any order.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates segment `n` empty (emptying it if it exists), durably: after this returns,
    /// a crash keeps the (empty) file.
    fn create(&self, n: u64) -> io::Result<()>;
    /// Writes `data` at `offset` of segment `n`.
    fn write(&self, n: u64, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads exactly `len` bytes at `offset` of segment `n`;
    /// [`io::ErrorKind::UnexpectedEof`] if the segment is shorter, and
    /// [`io::ErrorKind::NotFound`] if it does not exist.
    fn read(&self, n: u64, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Makes every write to segment `n` so far durable.
    fn sync(&self, n: u64) -> io::Result<()>;
    /// Cuts segment `n` to `len` bytes (durably, like [`Segments::sync`]).
    fn truncate(&self, n: u64, len: u64) -> io::Result<()>;
    /// Gives the bytes at `offset..offset + len` of segment `n` back; they read as zeros
    /// afterwards (or as anything: the store never reads them again).
    fn punch(&self, n: u64, offset: u64, len: u64) -> io::Result<()>;
    /// Deletes segment `n`, if it exists.
    fn remove(&self, n: u64) -> io::Result<()>;
    /// Bytes to leave unused before writing `data` at `offset`, so that it is written
    /// more cheaply there (see [`DirSegments`]); 0 by default.
    fn skew(&self, offset: u64, data: &[u8]) -> u64 {
        let _ = (offset, data);
        0
    }
}

impl<S: Segments> Segments for Arc<S> {
    fn list(&self) -> io::Result<Vec<u64>> {
        (**self).list()
    }
    fn create(&self, n: u64) -> io::Result<()> {
        (**self).create(n)
    }
    fn write(&self, n: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write(n, offset, data)
    }
    fn read(&self, n: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        (**self).read(n, offset, len)
    }
    fn sync(&self, n: u64) -> io::Result<()> {
        (**self).sync(n)
    }
    fn truncate(&self, n: u64, len: u64) -> io::Result<()> {
        (**self).truncate(n, len)
    }
    fn punch(&self, n: u64, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch(n, offset, len)
    }
    fn remove(&self, n: u64) -> io::Result<()> {
        (**self).remove(n)
    }
    fn skew(&self, offset: u64, data: &[u8]) -> u64 {
        (**self).skew(offset, data)
    }
}

/// Segment files in a directory: `segment-<n>` (twenty digits, so they sort).
pub struct DirSegments {
    dir: PathBuf,
    /// Open files, by number.
    open: RwLock<HashMap<u64, Arc<Segment>>>,
    /// Set when the file system refused to punch a hole (logged once).
    no_holes: AtomicBool,
    /// How direct I/O must be aligned here, found at the first segment opened; `None` if
    /// the file system does not take it.
    direct: OnceLock<Option<Alignment>>,
    /// Set when a direct write or read failed in a way buffered I/O may not (logged once).
    direct_failed: AtomicBool,
}

/// An open segment: the file, and a second descriptor of it opened for direct I/O.
#[derive(Debug)]
struct Segment {
    file: File,
    direct: Option<File>,
}

/// What direct I/O needs on a file system (`statx`'s `STATX_DIOALIGN`): file offsets and
/// lengths in multiples of `block`, memory at multiples of `memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alignment {
    /// At least a page and a file system block, so that a page the page cache holds, or
    /// a block the file system writes whole, is never half direct.
    block: u64,
    memory: usize,
}

/// Chunks shorter than this are written and read through the page cache only: their few
/// whole blocks are not worth a second system call.
pub(crate) const DIRECT_MIN: usize = 64 * 1024;

/// Direct blocks larger than this are not used (a file system block or page this large
/// would leave little of a chunk direct): such file systems go through the page cache.
const MAX_BLOCK: u64 = 64 * 1024;

impl fmt::Debug for DirSegments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirSegments")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const PREFIX: &str = "segment-";

impl DirSegments {
    /// Segments in `dir`, created (with its parents) if missing.
    pub fn open(dir: &Path) -> io::Result<DirSegments> {
        std::fs::create_dir_all(dir)?;
        Ok(DirSegments {
            dir: dir.to_path_buf(),
            open: RwLock::default(),
            no_holes: AtomicBool::new(false),
            direct: OnceLock::new(),
            direct_failed: AtomicBool::new(false),
        })
    }

    /// Whether chunk bytes go to and from the disk with direct I/O (large chunks only).
    pub fn direct_io(&self) -> bool {
        self.alignment().is_some()
    }

    fn alignment(&self) -> Option<Alignment> {
        if self.direct_failed.load(Ordering::Relaxed) {
            return None;
        }
        self.direct.get().copied().flatten()
    }

    /// Stops using direct I/O after it failed where it should not have (logged once).
    fn direct_failed(&self, doing: &str, e: &io::Error) {
        if !self.direct_failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.dir.display(),
                error = %e,
                "{doing} a segment with direct I/O failed; chunks go through the page cache from now on"
            );
        }
    }

    /// Opens segment `n` (its file, and a direct descriptor if direct I/O is possible).
    fn open_segment(&self, file: File, n: u64) -> Segment {
        let alignment = *self.direct.get_or_init(|| probe_alignment(&file));
        let direct = match alignment {
            Some(_) if !self.direct_failed.load(Ordering::Relaxed) => {
                match open_direct(&self.path(n)) {
                    Ok(direct) => Some(direct),
                    Err(e) if refuses_direct(&e) => {
                        self.direct_failed("opening", &e);
                        None
                    }
                    // Out of descriptors or memory, say: this segment goes through the
                    // page cache, and the next is tried again.
                    Err(e) => {
                        tracing::debug!(segment = n, error = %e, "no direct descriptor for a segment");
                        None
                    }
                }
            }
            _ => None,
        };
        Segment { file, direct }
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{n:020}"))
    }

    /// The open file of segment `n`, opened now if it was not.
    fn file(&self, n: u64) -> io::Result<Arc<Segment>> {
        if let Some(file) = self.open.read().map_err(poisoned)?.get(&n) {
            return Ok(file.clone());
        }
        // Opened under the write lock, as `remove` deletes under it: a handle opened just
        // before a deletion would otherwise be kept, and keep the deleted file's space.
        let mut open = self.open.write().map_err(poisoned)?;
        if let Some(file) = open.get(&n) {
            return Ok(file.clone());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(n))?;
        let segment = Arc::new(self.open_segment(file, n));
        open.insert(n, segment.clone());
        Ok(segment)
    }

    /// Writes `data` (whole blocks, at a block's start) with direct I/O, through this
    /// thread's aligned buffer.
    fn write_direct(
        direct: &File,
        alignment: Alignment,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        // Bytes placed where their address and their offset agree (see `skew`) go from
        // where they lie; others through this thread's aligned buffer.
        if (data.as_ptr() as usize).is_multiple_of(alignment.memory) {
            return direct.write_all_at(data, offset);
        }
        with_aligned(alignment.memory, data.len(), |buffer| {
            buffer.copy_from_slice(data);
            direct.write_all_at(buffer, offset)
        })
    }

    /// Reads `len` bytes at `offset` with direct I/O: the blocks around them into this
    /// thread's aligned buffer, and the bytes asked for from there into a new vector.
    fn read_direct(
        direct: &File,
        alignment: Alignment,
        offset: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        let block = alignment.block;
        let start = offset / block * block;
        let end = (offset + len as u64).div_ceil(block) * block;
        let span = usize::try_from(end - start).map_err(io::Error::other)?;
        let skip = (offset - start) as usize;
        with_aligned(alignment.memory, span, |buffer| {
            let mut filled = 0;
            loop {
                let read = direct.read_at(&mut buffer[filled..], start + filled as u64)?;
                filled += read;
                if filled >= skip + len {
                    return Ok(buffer[skip..skip + len].to_vec());
                }
                // A read ends inside a block only at the end of the file (and reading on
                // from there would not be aligned).
                if read == 0 || !(filled as u64).is_multiple_of(block) {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        })
    }

    /// Makes the directory's entries (a segment created or deleted) durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// How direct I/O must be aligned on `file`'s file system, if it takes direct I/O.
fn probe_alignment(file: &File) -> Option<Alignment> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let found = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if found.stx_mask & StatxFlags::DIOALIGN.bits() == 0
        || found.stx_dio_offset_align == 0
        || found.stx_dio_mem_align == 0
    {
        return None;
    }
    let (offset, memory) = (
        u64::from(found.stx_dio_offset_align),
        found.stx_dio_mem_align as usize,
    );
    let page = rustix::param::page_size() as u64;
    let block = offset.max(page).max(u64::from(found.stx_blksize));
    if !block.is_power_of_two() || !memory.is_power_of_two() || block > MAX_BLOCK {
        return None;
    }
    Some(Alignment { block, memory })
}

/// Whether `e` says the file system, or this call's alignment, does not take direct I/O.
fn refuses_direct(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::INVAL.raw_os_error())
        || code == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
}

/// Refuses a range that no segment can hold (its end past what a file offset can be),
/// before it reaches a system call whose `EINVAL` would read as "no direct I/O".
fn check_range(offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes at {offset} lie past the largest segment"),
        )),
    }
}

/// `path` opened for direct reads and writes.
fn open_direct(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, open};
    let fd = open(
        path,
        OFlags::RDWR | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Aligned buffers larger than this are not kept between calls.
const KEEP_ALIGNED: usize = 8 << 20;

thread_local! {
    /// Each thread's buffer for direct I/O, kept so that its pages stay mapped (a first
    /// touch of fresh memory is what made copying into the page cache slow). A thread
    /// keeps at most the largest chunk it moved (under [`KEEP_ALIGNED`]) plus two blocks;
    /// the threads are tokio's blocking pool's, which end after 10 s idle.
    static ALIGNED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with `len` bytes of this thread's buffer starting at an address that is a
/// multiple of `align`. The bytes hold whatever was there before.
fn with_aligned<T>(
    align: usize,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> io::Result<T>,
) -> io::Result<T> {
    let within = |buffer: &mut Vec<u8>| {
        if buffer.len() < len + align {
            buffer.resize(len + align, 0);
        }
        let at = (align - buffer.as_ptr() as usize % align) % align;
        f(&mut buffer[at..at + len])
    };
    if len + align > KEEP_ALIGNED {
        return within(&mut Vec::new());
    }
    ALIGNED.with(|buffer| match buffer.try_borrow_mut() {
        Ok(mut buffer) => within(&mut buffer),
        // Not re-entered, but a fresh buffer would do.
        Err(_) => within(&mut Vec::new()),
    })
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> io::Error {
    io::Error::other("a thread panicked while holding the segment table")
}

impl Segments for DirSegments {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|name| name.strip_prefix(PREFIX))
                .and_then(|n| n.parse().ok());
            match number {
                Some(n) => found.push(n),
                None => tracing::warn!(
                    file = %self.dir.join(&name).display(),
                    "a file that is not a segment in the segment directory"
                ),
            }
        }
        Ok(found)
    }

    fn create(&self, n: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(n))?;
        file.sync_all()?;
        self.sync_dir()?;
        let segment = Arc::new(self.open_segment(file, n));
        self.open.write().map_err(poisoned)?.insert(n, segment);
        Ok(())
    }

    fn write(&self, n: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        check_range(offset, data.len())?;
        let segment = self.file(n)?;
        if let (Some(direct), Some(alignment)) = (&segment.direct, self.alignment())
            && data.len() >= DIRECT_MIN
        {
            // Whole blocks directly; the partial blocks at the two ends buffered.
            let block = alignment.block;
            let end = offset + data.len() as u64;
            let (first, last) = (offset.div_ceil(block) * block, end / block * block);
            if first < last {
                let (head, rest) = data.split_at((first - offset) as usize);
                let (middle, tail) = rest.split_at((last - first) as usize);
                segment.file.write_all_at(head, offset)?;
                match Self::write_direct(direct, alignment, first, middle) {
                    Ok(()) => {}
                    // Rewritten through the page cache: the same bytes at the same place.
                    Err(e) if refuses_direct(&e) => {
                        self.direct_failed("writing", &e);
                        segment.file.write_all_at(middle, first)?;
                    }
                    Err(e) => return Err(e),
                }
                return segment.file.write_all_at(tail, last);
            }
        }
        segment.file.write_all_at(data, offset)
    }

    fn read(&self, n: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        check_range(offset, len)?;
        let segment = self.file(n)?;
        if let (Some(direct), Some(alignment)) = (&segment.direct, self.alignment())
            && len >= DIRECT_MIN
        {
            match Self::read_direct(direct, alignment, offset, len) {
                Err(e) if refuses_direct(&e) => {
                    self.direct_failed("reading", &e);
                }
                done => return done,
            }
        }
        // Read into the vector's spare capacity: zeroing a chunk first cost as much as a
        // fifth of its decryption.
        let file = &segment.file;
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let at = offset + bytes.len() as u64;
            let read = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut bytes), at)?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The spare capacity may be larger than asked for, and read into.
        bytes.truncate(len);
        Ok(bytes)
    }

    fn sync(&self, n: u64) -> io::Result<()> {
        self.file(n)?.file.sync_data()
    }

    fn truncate(&self, n: u64, len: u64) -> io::Result<()> {
        let file = &self.file(n)?.file;
        file.set_len(len)?;
        file.sync_all()
    }

    fn punch(&self, n: u64, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 || self.no_holes.load(Ordering::Relaxed) {
            return Ok(());
        }
        use rustix::fs::{FallocateFlags, fallocate};
        let file = &self.file(n)?.file;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match fallocate(file, flags, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                // The space comes back when the whole segment is deleted.
                self.no_holes.store(true, Ordering::Relaxed);
                tracing::warn!(
                    dir = %self.dir.display(),
                    "the file system cannot punch holes: removed chunks keep their space \
                     until their whole segment is deleted"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remove(&self, n: u64) -> io::Result<()> {
        let mut open = self.open.write().map_err(poisoned)?;
        open.remove(&n);
        let removed = std::fs::remove_file(self.path(n));
        drop(open);
        match removed {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A chunk written with direct I/O is placed where its offset and its address in
    /// memory agree modulo the memory alignment direct I/O needs: its whole blocks then
    /// lie at an aligned address and go to the disk from where they are, instead of
    /// being copied into an aligned buffer first (a copy of the chunk for every chunk
    /// stored). At most `memory - 1` bytes (511 here) are left unused before the chunk,
    /// and none where the memory alignment does not divide the block (the whole blocks'
    /// start could not be aligned then).
    fn skew(&self, offset: u64, data: &[u8]) -> u64 {
        match self.alignment() {
            Some(alignment)
                if data.len() >= DIRECT_MIN
                    && alignment.block.is_multiple_of(alignment.memory as u64) =>
            {
                let memory = alignment.memory as u64;
                (data.as_ptr() as u64).wrapping_sub(offset) % memory
            }
            _ => 0,
        }
    }
}

/// Segments in memory (the simulator's and tests' stores): gone when dropped.
#[derive(Debug, Default)]
pub struct MemSegments {
    files: RwLock<BTreeMap<u64, Vec<u8>>>,
}

impl MemSegments {
    fn with<T>(&self, n: u64, f: impl FnOnce(&mut Vec<u8>) -> io::Result<T>) -> io::Result<T> {
        let mut files = self.files.write().map_err(poisoned)?;
        let file = files
            .get_mut(&n)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no segment {n}")))?;
        f(file)
    }
}

impl Segments for MemSegments {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self
            .files
            .read()
            .map_err(poisoned)?
            .keys()
            .copied()
            .collect())
    }

    fn create(&self, n: u64) -> io::Result<()> {
        self.files.write().map_err(poisoned)?.insert(n, Vec::new());
        Ok(())
    }

    fn write(&self, n: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(n, |file| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let end = start
                .checked_add(data.len())
                .ok_or_else(|| io::Error::other("a write past the end of memory"))?;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[start..end].copy_from_slice(data);
            Ok(())
        })
    }

    fn read(&self, n: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let files = self.files.read().map_err(poisoned)?;
        let file = files
            .get(&n)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no segment {n}")))?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        file.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn sync(&self, n: u64) -> io::Result<()> {
        self.with(n, |_| Ok(()))
    }

    fn truncate(&self, n: u64, len: u64) -> io::Result<()> {
        self.with(n, |file| {
            file.resize(usize::try_from(len).map_err(io::Error::other)?, 0);
            Ok(())
        })
    }

    fn punch(&self, n: u64, offset: u64, len: u64) -> io::Result<()> {
        self.with(n, |file| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let end = start.saturating_add(usize::try_from(len).map_err(io::Error::other)?);
            let end = end.min(file.len());
            if start < end {
                file[start..end].fill(0);
            }
            Ok(())
        })
    }

    fn remove(&self, n: u64) -> io::Result<()> {
        self.files.write().map_err(poisoned)?.remove(&n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn exercise(segments: &dyn Segments) {
        assert!(segments.list().unwrap().is_empty());
        segments.create(3).unwrap();
        segments.write(3, 0, b"hello").unwrap();
        segments.write(3, 5, b" world").unwrap();
        segments.sync(3).unwrap();
        assert_eq!(segments.read(3, 0, 11).unwrap(), b"hello world");
        assert_eq!(segments.read(3, 11, 0).unwrap(), b"");
        assert_eq!(
            segments.read(3, 9, 4).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            segments.read(4, 0, 4).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        segments.punch(3, 2, 3).unwrap();
        assert_eq!(
            segments.read(3, 5, 6).unwrap(),
            b" world",
            "a hole leaves its neighbours alone"
        );
        assert_eq!(segments.read(3, 0, 5).unwrap()[..2], *b"he");
        segments.truncate(3, 5).unwrap();
        assert!(segments.read(3, 5, 1).is_err());
        segments.create(10).unwrap();
        let mut listed = segments.list().unwrap();
        listed.sort();
        assert_eq!(listed, vec![3, 10]);
        segments.remove(3).unwrap();
        segments.remove(3).unwrap();
        assert_eq!(segments.list().unwrap(), vec![10]);
    }

    #[test]
    fn segments_in_memory() {
        exercise(&MemSegments::default());
    }

    #[test]
    fn segments_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let segments = DirSegments::open(&dir.path().join("chunks")).unwrap();
        exercise(&segments);
        std::fs::write(dir.path().join("chunks").join("stray"), b"x").unwrap();
        assert_eq!(segments.list().unwrap(), vec![10]);
    }

    /// Chunks of sizes around the direct threshold and the block size, appended one after
    /// another as the store does, in segments opened anew between writes: each reads back
    /// whole, through both paths, from a handle that opened the files again too.
    fn appended_chunks_read_back(sizes: &[usize], reopen_every: usize) {
        appended_chunks_read_back_in(&tempfile::tempdir().unwrap(), sizes, reopen_every, false);
    }

    /// Writes chunks one after another (each placed after its `skew` if `skewed`, as
    /// the store places them, from buffers at addresses of every remainder), and reads
    /// them back.
    fn appended_chunks_read_back_in(
        dir: &tempfile::TempDir,
        sizes: &[usize],
        reopen_every: usize,
        skewed: bool,
    ) {
        let path = dir.path().join("chunks");
        let segments = DirSegments::open(&path).unwrap();
        segments.create(0).unwrap();
        let direct = segments.direct_io();
        let mut placed = Vec::new();
        let mut offset = 0u64;
        for (i, &size) in sizes.iter().enumerate() {
            // The chunk lies `shift` bytes into its buffer, so that its address varies.
            let shift = if skewed { i * 37 % 601 } else { 0 };
            let buffer: Vec<u8> = (0..size + shift).map(|b| (b * 31 + i * 7) as u8).collect();
            let bytes = &buffer[shift..];
            if skewed {
                let skew = segments.skew(offset, bytes);
                match segments.alignment() {
                    Some(alignment) if size >= DIRECT_MIN => {
                        assert!(skew < alignment.memory as u64);
                        assert!(
                            (bytes.as_ptr() as u64)
                                .wrapping_sub(offset + skew)
                                .is_multiple_of(alignment.memory as u64),
                            "placed where its address and offset agree"
                        );
                    }
                    _ => assert_eq!(skew, 0, "only chunks written directly are placed"),
                }
                offset += skew;
            }
            segments.write(0, offset, bytes).unwrap();
            placed.push((offset, bytes.to_vec()));
            offset += size as u64;
            if reopen_every > 0 && i % reopen_every == 0 {
                segments.open.write().unwrap().clear();
            }
        }
        segments.sync(0).unwrap();
        let again = DirSegments::open(&path).unwrap();
        let plain = buffered(&path);
        for (offset, bytes) in &placed {
            assert_eq!(&segments.read(0, *offset, bytes.len()).unwrap(), bytes);
            assert_eq!(&again.read(0, *offset, bytes.len()).unwrap(), bytes);
            assert_eq!(&plain.read(0, *offset, bytes.len()).unwrap(), bytes);
        }
        assert_eq!(
            std::fs::metadata(path.join(format!("{PREFIX}{:020}", 0)))
                .unwrap()
                .len(),
            offset,
            "the segment ends where the last chunk does"
        );
        if let Some(&(offset, ref bytes)) = placed.last() {
            assert_eq!(
                segments
                    .read(0, offset, bytes.len() + 1)
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::UnexpectedEof
            );
        }
        assert_eq!(
            segments.direct_io(),
            direct,
            "nothing here makes direct I/O fail"
        );
    }

    #[test]
    fn large_chunks_at_any_offset_read_back() {
        let page = 4096;
        appended_chunks_read_back(
            &[
                10,
                DIRECT_MIN,
                1 << 20,
                (1 << 20) + 40,
                3,
                DIRECT_MIN - 1,
                2 * page + DIRECT_MIN + 1,
                4 * page,
                (1 << 20) + 40,
            ],
            3,
        );
    }

    #[test]
    fn chunks_placed_at_their_skew_go_from_where_they_lie_and_read_back() {
        let page = 4096;
        appended_chunks_read_back_in(
            &tempfile::tempdir().unwrap(),
            &[
                10,
                DIRECT_MIN,
                (1 << 20) + 40,
                3,
                DIRECT_MIN - 1,
                2 * page + DIRECT_MIN + 1,
                (1 << 20) - 4096 + 40,
                (1 << 20) + 40,
                4 * page,
            ],
            4,
            true,
        );
    }

    #[test]
    fn a_file_system_without_direct_io_goes_through_the_page_cache() {
        // tmpfs reports no direct I/O alignment (this kernel's does not; newer ones may).
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let segments = DirSegments::open(dir.path()).unwrap();
        segments.create(0).unwrap();
        if segments.direct_io() {
            return;
        }
        appended_chunks_read_back_in(&dir, &[10, 1 << 20, (1 << 20) + 40, 3], 1, true);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn appended_chunks_of_any_size_read_back(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![0usize..9000, DIRECT_MIN - 4096..DIRECT_MIN + 70_000],
                1..12,
            ),
            reopen_every in 0usize..4,
        ) {
            appended_chunks_read_back(&sizes, reopen_every);
        }
    }

    /// Segments in `dir` that never use direct I/O.
    fn buffered(dir: &Path) -> DirSegments {
        let segments = DirSegments::open(dir).unwrap();
        segments.direct.set(None).unwrap();
        segments
    }

    #[test]
    fn direct_and_buffered_writes_over_each_other_read_back() {
        // What a transaction that did not commit leaves: the next writer writes over its
        // bytes, at other offsets, so blocks written directly are written again through
        // the page cache and the other way round.
        let dir = tempfile::tempdir().unwrap();
        let segments = DirSegments::open(dir.path()).unwrap();
        segments.create(0).unwrap();
        let first = vec![1u8; 300_000];
        segments.write(0, 100, &first).unwrap();
        let second: Vec<u8> = (0..250_000).map(|i| (i % 251) as u8).collect();
        segments.write(0, 2100, &second).unwrap();
        let third = vec![3u8; 5000];
        segments.write(0, 2100 + 250_000, &third).unwrap();
        segments.sync(0).unwrap();
        let mut model = vec![0u8; 300_100];
        model[100..300_100].copy_from_slice(&first);
        model[2100..252_100].copy_from_slice(&second);
        model[252_100..257_100].copy_from_slice(&third);
        let plain = buffered(dir.path());
        for reader in [&segments, &plain] {
            assert_eq!(reader.read(0, 2100, 250_000).unwrap(), second);
            assert_eq!(reader.read(0, 100, 300_000).unwrap(), model[100..300_100]);
            assert_eq!(reader.read(0, 252_100, 5000).unwrap(), third);
        }
        // And the other way: written through the page cache, read directly.
        plain.write(0, 4096, &first).unwrap();
        assert_eq!(segments.read(0, 4096, first.len()).unwrap(), first);
    }

    #[test]
    fn ranges_past_any_file_are_refused_without_giving_up_direct_io() {
        let dir = tempfile::tempdir().unwrap();
        let segments = DirSegments::open(dir.path()).unwrap();
        segments.create(0).unwrap();
        let direct = segments.direct_io();
        for offset in [u64::MAX - 10, i64::MAX as u64] {
            let e = segments.read(0, offset, DIRECT_MIN).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{offset}");
            let e = segments.write(0, offset, &[0; DIRECT_MIN]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{offset}");
        }
        assert_eq!(segments.direct_io(), direct);
    }

    #[test]
    fn a_punched_large_chunk_leaves_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let segments = DirSegments::open(dir.path()).unwrap();
        segments.create(1).unwrap();
        let sizes = [DIRECT_MIN + 100, 200_003, DIRECT_MIN + 5000];
        let mut offset = 0;
        let mut placed = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let bytes = vec![i as u8 + 1; size];
            segments.write(1, offset, &bytes).unwrap();
            placed.push((offset, bytes));
            offset += size as u64;
        }
        let (middle, bytes) = &placed[1];
        segments.punch(1, *middle, bytes.len() as u64).unwrap();
        for (offset, bytes) in [&placed[0], &placed[2]] {
            assert_eq!(&segments.read(1, *offset, bytes.len()).unwrap(), bytes);
        }
    }
}
