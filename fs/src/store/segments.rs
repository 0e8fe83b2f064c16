//! Where a store keeps the bytes of its chunks: numbered, append-only segment files.
//!
//! The store appends each new chunk at the end of the newest segment and records where it
//! went in redb; nothing is ever written over. A removed chunk's bytes are given back to
//! the file system by punching a hole where they were (`fallocate`), and a segment left
//! with no chunk in it is deleted. See the store's module docs for the order of writes and
//! syncs that keeps the two consistent through a crash.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Storage for segment files, numbered from 0. The store writes each segment only at
/// offsets past what it wrote before, and reads only ranges it wrote.
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
}

/// Segment files in a directory: `segment-<n>` (twenty digits, so they sort).
pub struct DirSegments {
    dir: PathBuf,
    /// Open files, by number.
    open: RwLock<HashMap<u64, Arc<File>>>,
    /// Set when the file system refused to punch a hole (logged once).
    no_holes: AtomicBool,
}

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
        })
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{n:020}"))
    }

    /// The open file of segment `n`, opened now if it was not.
    fn file(&self, n: u64) -> io::Result<Arc<File>> {
        if let Some(file) = self.open.read().map_err(poisoned)?.get(&n) {
            return Ok(file.clone());
        }
        // Opened under the write lock, as `remove` deletes under it: a handle opened just
        // before a deletion would otherwise be kept, and keep the deleted file's space.
        let mut open = self.open.write().map_err(poisoned)?;
        if let Some(file) = open.get(&n) {
            return Ok(file.clone());
        }
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(n))?,
        );
        open.insert(n, file.clone());
        Ok(file)
    }

    /// Makes the directory's entries (a segment created or deleted) durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
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
        self.open
            .write()
            .map_err(poisoned)?
            .insert(n, Arc::new(file));
        Ok(())
    }

    fn write(&self, n: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(n)?.write_all_at(data, offset)
    }

    fn read(&self, n: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        // Read into the vector's spare capacity: zeroing a chunk first cost as much as a
        // fifth of its decryption.
        let file = self.file(n)?;
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let at = offset + bytes.len() as u64;
            let read = rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut bytes), at)?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The spare capacity may be larger than asked for, and read into.
        bytes.truncate(len);
        Ok(bytes)
    }

    fn sync(&self, n: u64) -> io::Result<()> {
        self.file(n)?.sync_data()
    }

    fn truncate(&self, n: u64, len: u64) -> io::Result<()> {
        let file = self.file(n)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn punch(&self, n: u64, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 || self.no_holes.load(Ordering::Relaxed) {
            return Ok(());
        }
        use rustix::fs::{FallocateFlags, fallocate};
        let file = self.file(n)?;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match fallocate(&*file, flags, offset, len) {
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
}
