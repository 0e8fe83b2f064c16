//! The FUSE adapter: shows a tree of the file system as an ordinary directory.
//!
//! It only translates: every operation goes to the [`Client`] core (tested without
//! mounting), and its [`Error`]s become errnos. Inode numbers come from inode ids, so they
//! stay the same across renames and remounts. An open file buffers writes in its
//! [`Handle`] and makes them a version at `flush`/`fsync`/close: close-to-open
//! consistency, like NFS. A version is durable once `fsync` (or `fsyncdir`) returns, as on
//! a local file system; the daemon also syncs every second. Attributes and entries are
//! cached by the kernel for [`ATTR_TTL`], which bounds how late another node's change
//! shows (a version published elsewhere is seen at the next lookup after that). Where the
//! client stages directory changes ([`crate::Config::stage_directories`], as the daemon's
//! does), a created or removed name is seen through this mount at once and by other
//! nodes once the client flushes (the daemon flushes every 250 ms, and at every
//! `fsync`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use keys::Path;

use crate::blocks::Blocks;
use crate::client::{Client, DirEntry, Error, Handle, Stat};
use crate::id::VersionId;
use crate::inode::Kind;

pub mod linger;

/// Files whose cached version a mount remembers (see `Mount::keep_cache`) at most.
const CACHED_VERSIONS: usize = 65_536;

/// How long the kernel may cache attributes and names.
pub const ATTR_TTL: Duration = Duration::from_secs(1);

/// The errno for a core error.
pub fn errno(error: &Error) -> Errno {
    match error {
        Error::NotFound { .. } => Errno::ENOENT,
        Error::PermissionDenied { .. } => Errno::EACCES,
        Error::NotAuthorized { .. } | Error::ReadOnly { .. } => Errno::EROFS,
        Error::NotADirectory { .. } => Errno::ENOTDIR,
        Error::IsADirectory { .. } => Errno::EISDIR,
        Error::Exists { .. } => Errno::EEXIST,
        Error::NotEmpty { .. } => Errno::ENOTEMPTY,
        Error::Invalid(_) => Errno::EINVAL,
        // As write(2) and truncate(2) past the largest file (dd and truncate said
        // "Invalid argument").
        Error::TooLarge { .. } => Errno::EFBIG,
        Error::DirectoryFull { .. } => Errno::ENOSPC,
        Error::Blocks { .. } | Error::Corrupt { .. } | Error::Io(_) => Errno::EIO,
    }
}

/// The errno for a name that makes no path: a name or a path too long is
/// `ENAMETOOLONG`, as on any file system; anything else (a NUL, `.` or `..` where the
/// kernel would not send them) `EINVAL`.
pub fn name_errno(error: &keys::PathError) -> Errno {
    match error {
        keys::PathError::SegmentTooLong { .. } | keys::PathError::TooLong(_) => Errno::ENAMETOOLONG,
        _ => Errno::EINVAL,
    }
}

struct Open {
    ino: u64,
    handle: tokio::sync::Mutex<Handle>,
    /// Whether the handle holds changes no version has yet, as of the last request that
    /// used it: read without its lock (which a request under way may hold).
    dirty: std::sync::atomic::AtomicBool,
    /// Whether storing its writes failed (it makes no version any more): a later open
    /// gets a handle of its own rather than this one's error.
    failed: std::sync::atomic::AtomicBool,
}

impl Open {
    /// Records whether `handle` (this open's, locked by the caller) has unsynced changes.
    fn note(&self, handle: &Handle) {
        self.dirty.store(handle.is_dirty(), Ordering::Relaxed);
        self.failed.store(handle.has_failed(), Ordering::Relaxed);
    }
}

/// One name of a directory listing: (inode number, type, name).
type Listed = (u64, FileType, String);

/// The inode number the kernel knows a file's handle by (a conflict copy has its own).
fn ino_of_stat(stat: &Stat) -> u64 {
    ino_of(&stat.inode, stat.conflict_copy.then_some(&stat.version))
}

/// A mounted tree: a [`Filesystem`] over a [`Client`].
pub struct Mount<B: Blocks> {
    client: Arc<Client<B>>,
    runtime: tokio::runtime::Handle,
    root: Path,
    /// Inode number → the path it was last seen at.
    paths: Mutex<HashMap<u64, Path>>,
    open: Mutex<HashMap<u64, Arc<Open>>>,
    /// Inode number → the version whose bytes the kernel may hold in its page cache (the
    /// version last opened or written here): an open of that same version keeps the cache,
    /// any other drops it (libfuse's `auto_cache`, by version rather than mtime).
    cached: Mutex<HashMap<u64, VersionId>>,
    next_fh: AtomicU64,
    /// Open directories' listings, by their handle: taken at the first read (and at a
    /// rewind), served from there by position, so that names added or removed meanwhile
    /// do not shift the positions the kernel asks from (a listing taken afresh at every
    /// read skipped names when earlier ones were removed between reads, as `rm -r` and
    /// `find -delete` do).
    listings: Mutex<HashMap<u64, Arc<Vec<Listed>>>>,
    uid: u32,
    gid: u32,
    /// A directory on the file system that holds this node's block store: `statfs`
    /// reports that file system's size and free space (see [`Mount::new`]).
    space: PathBuf,
    /// The session's `/dev/fuse`, watched for the next request after a reply.
    device: Arc<OnceLock<OwnedFd>>,
    window: Mutex<linger::Window>,
    /// Whether the FUSE thread watches for the next request after a reply, and keeps the
    /// requester's CPU awake meanwhile (see [`linger`]).
    spin: bool,
}

/// Watches for the next request when dropped (see [`Mount::request`]).
struct Lingering<'a, B: Blocks>(&'a Mount<B>);

impl<B: Blocks> Drop for Lingering<'_, B> {
    fn drop(&mut self) {
        let Some(device) = self.0.device.get().filter(|_| self.0.spin) else {
            return;
        };
        let window = match self.0.window.lock() {
            Ok(mut w) => w.replied(Instant::now()),
            Err(_) => return,
        };
        linger::watch(device, window);
    }
}

impl<B: Blocks> std::fmt::Debug for Mount<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("root", &self.root.to_string())
            .finish_non_exhaustive()
    }
}

/// The inode number of an inode id (1 is the mount's root; 0 is not used).
fn ino_of(id: &crate::id::InodeId, conflict: Option<&crate::id::VersionId>) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(id.as_bytes());
    if let Some(v) = conflict {
        hasher.update(v.as_bytes());
    }
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(bytes).max(2)
}

fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

impl<B: Blocks> Mount<B> {
    /// A mount of `root`, running the core's futures on `runtime`, with files owned by
    /// `uid`/`gid`. `space` is a directory on the file system that holds this node's
    /// block store: `statfs` (`df`) reports that file system's size and free space, the
    /// room this node has for what is written through the mount (its peers keep the
    /// other replicas in room of their own, which this node cannot see).
    pub fn new(
        client: Arc<Client<B>>,
        runtime: tokio::runtime::Handle,
        root: Path,
        uid: u32,
        gid: u32,
        space: PathBuf,
    ) -> Self {
        let mut paths = HashMap::new();
        paths.insert(1, root.clone());
        Mount {
            client,
            runtime,
            root,
            paths: Mutex::new(paths),
            open: Mutex::new(HashMap::new()),
            cached: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            listings: Mutex::new(HashMap::new()),
            uid,
            gid,
            space,
            device: Arc::new(OnceLock::new()),
            window: Mutex::new(linger::Window::default()),
            spin: true,
        }
    }

    /// Whether the FUSE thread spins between requests that come close together (on by
    /// default): it watches for the next request for up to [`linger::MAX_WINDOW`] after a
    /// reply, and a [`linger::Keepers`] thread keeps the requester's CPU from halting while
    /// it waits. Off, every request waits for the kernel to wake both sides: slower by
    /// tens of microseconds a request on a virtual machine, but never spinning.
    pub fn spinning(mut self, spin: bool) -> Self {
        self.spin = spin;
        self
    }

    fn path(&self, ino: INodeNo) -> Result<Path, Errno> {
        self.paths
            .lock()
            .map_err(|_| Errno::EIO)?
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<Path, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        self.path(parent)?.join(name).map_err(|e| name_errno(&e))
    }

    fn remember(&self, path: &Path, stat: &Stat, conflict: bool) -> u64 {
        let ino = if *path == self.root {
            1
        } else {
            ino_of(&stat.inode, conflict.then_some(&stat.version))
        };
        if let Ok(mut paths) = self.paths.lock() {
            paths.insert(ino, path.clone());
        }
        ino
    }

    fn attr(&self, ino: u64, stat: &Stat) -> FileAttr {
        let kind = file_type(stat.kind);
        let mode = if stat.mode == 0 {
            match stat.kind {
                Kind::Dir => 0o755,
                Kind::File => 0o644,
                Kind::Symlink => 0o777,
            }
        } else {
            stat.mode
        };
        // No access times are kept (as `noatime`); the status change time is when the
        // version was signed, or its modification time when that is later.
        let time = time_of(stat.mtime_ns);
        let changed = time_of(
            stat.mtime_ns
                .max(stat.changed_at.saturating_mul(1_000_000_000)),
        );
        FileAttr {
            ino: INodeNo(ino),
            size: stat.size,
            blocks: stat.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: changed,
            crtime: time,
            kind,
            perm: u16::try_from(mode & 0o7777).unwrap_or(0o644),
            nlink: if stat.kind == Kind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The listing of the directory `ino`: `.` and `..`, then its entries.
    fn list(&self, ino: INodeNo) -> Result<Vec<Listed>, Errno> {
        let path = self.path(ino)?;
        let entries: Vec<DirEntry> = self.run(self.client.readdir(&path))?;
        let mut all = Vec::with_capacity(entries.len() + 2);
        all.push((ino.0, FileType::Directory, ".".to_string()));
        all.push((1, FileType::Directory, "..".to_string()));
        for e in entries {
            all.push((
                ino_of(&e.inode, e.conflict.as_ref()),
                file_type(e.kind),
                e.name,
            ));
        }
        Ok(all)
    }

    fn run<T>(&self, f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Errno> {
        self.runtime.block_on(f).map_err(|e| {
            let errno = errno(&e);
            if errno == Errno::EIO {
                // Not the program's doing: the operator should see it.
                tracing::warn!(error = %e, "file system operation failed (EIO)");
            } else {
                tracing::debug!(error = %e, "file system operation failed");
            }
            errno
        })
    }

    /// The stat of `path`, preferring an open handle's size (unsynced writes).
    fn stat_path(&self, path: &Path) -> Result<(u64, Stat), Errno> {
        let stat = self.run(self.client.stat(path))?;
        let conflict = stat.conflict_copy;
        let ino = self.remember(path, &stat, conflict);
        Ok((ino, self.with_open_size(ino, stat)))
    }

    fn with_open_size(&self, ino: u64, mut stat: Stat) -> Stat {
        if let Some(open) = self.find_open(ino)
            && let Ok(h) = open.handle.try_lock()
            && h.is_dirty()
        {
            stat.size = h.size();
            stat.mode = h.mode();
            if let Some(mtime) = h.mtime_set() {
                stat.mtime_ns = mtime;
            }
        }
        stat
    }

    /// A file handle open on inode `ino` in this mount, if any, one with unsynced
    /// changes first: changes to an open file go through its handle, or the handle's
    /// next version would fork from them (a handle with only a new mode or time makes
    /// its version on the latest one).
    fn find_open(&self, ino: u64) -> Option<Arc<Open>> {
        let open: Vec<Arc<Open>> = self
            .open
            .lock()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        let mut clean = None;
        for o in open
            .into_iter()
            .filter(|o| o.ino == ino && !o.failed.load(Ordering::Relaxed))
        {
            if o.dirty.load(Ordering::Relaxed) {
                return Some(o);
            }
            clean.get_or_insert(o);
        }
        clean
    }

    /// A new file handle on `handle`, open on inode number `ino` (the kernel's: a
    /// conflict copy's is not its file's).
    fn add_open(&self, ino: u64, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                fh,
                Arc::new(Open {
                    ino,
                    dirty: std::sync::atomic::AtomicBool::new(handle.is_dirty()),
                    failed: std::sync::atomic::AtomicBool::new(handle.has_failed()),
                    handle: tokio::sync::Mutex::new(handle),
                }),
            );
        }
        fh
    }

    /// Another file handle on `shared`.
    fn share_open(&self, shared: Arc<Open>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(fh, shared);
        }
        fh
    }

    fn get_open(&self, fh: FileHandle) -> Result<Arc<Open>, Errno> {
        self.open
            .lock()
            .map_err(|_| Errno::EIO)?
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Writes a version of the file open as `fh` (as at close); its path.
    fn sync(&self, fh: FileHandle) -> Result<Path, Errno> {
        let open = self.get_open(fh)?;
        let (version, rebased, path) = self.run(async {
            let mut handle = open.handle.lock().await;
            let synced = self.client.fsync(&mut handle).await;
            open.note(&handle);
            synced.map(|()| {
                (
                    handle.stat().version,
                    handle.rebased(),
                    handle.path().clone(),
                )
            })
        })?;
        if rebased {
            // A new mode or time on bytes written elsewhere since this file was opened:
            // the kernel's pages of it are older than that version.
            self.forget_cache(open.ino);
        } else {
            // The kernel's pages of this file hold what was written through it: that
            // version.
            self.keep_cache(open.ino, version);
        }
        Ok(path)
    }

    /// The kernel's pages of `ino` are of no known version: the next open drops them.
    fn forget_cache(&self, ino: u64) {
        if let Ok(mut cached) = self.cached.lock() {
            cached.remove(&ino);
        }
    }

    /// Whether the kernel may keep its cached pages of `ino` at an open of `version`;
    /// `version` is what it caches from then on.
    fn keep_cache(&self, ino: u64, version: VersionId) -> bool {
        let Ok(mut cached) = self.cached.lock() else {
            return false;
        };
        if cached.len() >= CACHED_VERSIONS && !cached.contains_key(&ino) {
            // Forgetting costs only a re-read of pages the kernel may still hold.
            cached.clear();
        }
        cached.insert(ino, version) == Some(version)
    }

    /// After a rename, the moved entry and everything below it live at new paths.
    fn moved(&self, from: &Path, to: &Path) {
        if let Ok(mut paths) = self.paths.lock() {
            paths.retain(|_, path| {
                if !path.starts_with(from) {
                    return true;
                }
                let rest = &path.segments()[from.segments().len()..];
                let mut moved = to.clone();
                for segment in rest {
                    match moved.join(segment) {
                        Ok(p) => moved = p,
                        // Past the longest path: forgotten (the kernel's next use of
                        // the number is ESTALE), never kept as a shorter path that names
                        // an ancestor.
                        Err(_) => return false,
                    }
                }
                *path = moved;
                true
            });
        }
    }

    /// `unlink` (a file) and `rmdir` (a directory): the other kind is refused.
    fn remove(&self, parent: INodeNo, name: &OsStr, kind: Kind, reply: ReplyEmpty) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let removed = self.run(self.client.remove(&path, Some(kind)));
        match removed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Call first in every request: the returned guard, dropped once the method has
    /// replied, watches for the next request for a moment (see [`linger`]).
    fn request(&self, req: &Request) -> Lingering<'_, B> {
        if !self.spin {
            return Lingering(self);
        }
        let now = Instant::now();
        let pid = req.pid();
        let Some((look, window)) = self.window.lock().ok().map(|mut w| {
            w.arrived(now);
            (w.look_again(pid, now), w.current())
        }) else {
            return Lingering(self);
        };
        if !window.is_zero() {
            let finder = linger::CpuFinder::global();
            if look {
                finder.look(pid);
            }
            if let Some(cpu) = finder.cpu(pid) {
                linger::Keepers::global().keep(cpu, window);
            }
        }
        Lingering(self)
    }

    fn entry(&self, path: &Path, reply: ReplyEntry) {
        match self.stat_path(path) {
            Ok((ino, stat)) => reply.entry(&ATTR_TTL, &self.attr(ino, &stat), Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl<B: Blocks> Filesystem for Mount<B> {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _lingering = self.request(req);
        match self.child(parent, name) {
            Ok(path) => self.entry(&path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _lingering = self.request(req);
        let open_stat = |open: Arc<Open>| {
            self.runtime
                .block_on(async { open.handle.lock().await.stat() })
        };
        if let Some(open) = fh.and_then(|fh| self.get_open(fh).ok()) {
            return reply.attr(&ATTR_TTL, &self.attr(ino.0, &open_stat(open)));
        }
        let stat = match self.path(ino).and_then(|p| self.stat_path(&p)) {
            Ok((found, stat)) if found == ino.0 => stat,
            // The name names another file now (one renamed over it), or none (it was
            // removed): a handle still open on this one knows it (`fstat` asks by
            // number, without the handle). Else, as before, what the name holds now (a
            // directory shared meanwhile moved to an anchor, another inode, under it).
            found => match (self.find_open(ino.0), found) {
                (Some(open), _) => open_stat(open),
                (None, Ok((_, stat))) => stat,
                (None, Err(e)) => return reply.error(e),
            },
        };
        reply.attr(&ATTR_TTL, &self.attr(ino.0, &stat));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _lingering = self.request(req);
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // Size, mode and the modification time (in that order: a time set with a
        // truncation stays) change the file; owners are the mounting user's, and access
        // times are not kept.
        let mtime = match mtime.map(mtime_ns).transpose() {
            Ok(t) => t,
            Err(e) => return reply.error(e),
        };
        let open = fh
            .and_then(|fh| self.get_open(fh).ok())
            .or_else(|| self.find_open(ino.0));
        let result = self.runtime.block_on(async {
            match open {
                Some(open) => {
                    let mut handle = open.handle.lock().await;
                    let changed = async {
                        if let Some(size) = size {
                            self.client.truncate(&mut handle, size).await?;
                        }
                        if let Some(mode) = mode {
                            self.client.set_mode(&mut handle, mode)?;
                        }
                        if let Some(mtime) = mtime {
                            self.client.set_mtime(&mut handle, mtime)?;
                        }
                        Ok(())
                    }
                    .await;
                    open.note(&handle);
                    changed.map(|()| handle.stat())
                }
                None if size.is_none() && mode.is_none() && mtime.is_none() => {
                    self.client.stat(&path).await
                }
                None => {
                    if let Some(size) = size {
                        let mut handle = self.client.open(&path).await?;
                        self.client.truncate(&mut handle, size).await?;
                        self.client.fsync(&mut handle).await?;
                    }
                    if let Some(mode) = mode {
                        self.client.chmod(&path, mode).await?;
                    }
                    if let Some(mtime) = mtime {
                        self.client.set_times(&path, mtime).await?;
                    }
                    self.client.stat(&path).await
                }
            }
        });
        match result {
            Ok(stat) => reply.attr(&ATTR_TTL, &self.attr(ino.0, &stat)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _lingering = self.request(req);
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = self.run(async {
            self.client.mkdir(&path).await?;
            let wanted = mode & !umask & 0o7777;
            if wanted != 0o755 {
                self.client.chmod(&path, wanted).await?;
            }
            Ok(())
        });
        match made {
            Ok(()) => self.entry(&path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &FsPath,
        reply: ReplyEntry,
    ) {
        let _lingering = self.request(req);
        let path = match self.child(parent, link_name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        use std::os::unix::ffi::OsStrExt as _;
        match self.run(self.client.symlink(&path, target.as_os_str().as_bytes())) {
            Ok(_) => self.entry(&path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _lingering = self.request(req);
        match self
            .path(ino)
            .and_then(|p| self.run(self.client.readlink(&p)))
        {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _lingering = self.request(req);
        self.remove(parent, name, Kind::File, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _lingering = self.request(req);
        self.remove(parent, name, Kind::Dir, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _lingering = self.request(req);
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result = self.run(async {
            if noreplace {
                match self.client.stat(&to).await {
                    Ok(_) => {
                        return Err(Error::Exists {
                            path: to.to_string(),
                        });
                    }
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            // Over an existing name the core follows rename(2): a file replaces a file
            // in one directory write (atomic, as an editor's save needs), a directory an
            // empty directory; the rest is refused with the errno rename(2) gives.
            self.client.rename(&from, &to).await
        });
        match result {
            Ok(()) => {
                self.moved(&from, &to);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _lingering = self.request(req);
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let truncate = flags.0 & libc_o_trunc() != 0;
        // A file open here already is shared, as one inode's pages are on any file
        // system: what one descriptor wrote, another reads before it is closed, and two
        // appenders both keep their bytes (each open had a handle of its own, and the
        // last one closed replaced the other's writes).
        // The path may name another file by now (renamed over, elsewhere or here): the
        // kernel looks the name up again on ESTALE.
        let fresh = async || {
            let handle = self.client.open(&path).await?;
            Ok(handle)
        };
        let opened = match self.find_open(ino.0) {
            Some(shared) => self
                .run(async {
                    let mut handle = shared.handle.lock().await;
                    if !handle.is_dirty() {
                        // Nothing unsynced here: a fresh open sees versions written
                        // elsewhere.
                        let opened = fresh().await?;
                        if ino_of_stat(&opened.stat()) != ino.0 {
                            return Ok(None);
                        }
                        *handle = opened;
                    }
                    if truncate {
                        self.client.truncate(&mut handle, 0).await?;
                    }
                    shared.note(&handle);
                    Ok(Some((handle.stat().version, handle.is_dirty())))
                })
                .map(|found| found.map(|(v, dirty)| (self.share_open(shared), v, dirty))),
            None => self
                .run(async {
                    let mut handle = fresh().await?;
                    if truncate {
                        self.client.truncate(&mut handle, 0).await?;
                    }
                    Ok(handle)
                })
                .map(|handle| {
                    let stat = handle.stat();
                    (ino_of_stat(&stat) == ino.0).then(|| {
                        let dirty = handle.is_dirty();
                        (self.add_open(ino.0, handle), stat.version, dirty)
                    })
                }),
        };
        match opened {
            Ok(None) => reply.error(Errno::ESTALE),
            Ok(Some((fh, _, true))) => {
                // Writes no version holds yet: pages read now are of no version.
                self.forget_cache(ino.0);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(Some((fh, version, false))) => {
                let keep = !truncate && self.keep_cache(ino.0, version);
                let flags = if keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _lingering = self.request(req);
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // The new file is a version at once, so that other lookups see it before close.
        // A file that took the name since the kernel's lookup (another node's) is left
        // as it is: ESTALE has the kernel look the name up again and open what is there
        // as open(2) says (EEXIST for O_EXCL, emptied only for O_TRUNC).
        let created = self.run(async {
            let mut handle = self.client.create_new_file(&path).await?;
            self.client.set_mode(&mut handle, mode & !umask & 0o7777)?;
            self.client.fsync(&mut handle).await?;
            Ok(handle)
        });
        let created = match created {
            Err(Errno::EEXIST) => Err(Errno::ESTALE),
            other => other,
        };
        match created {
            Ok(handle) => {
                let stat = handle.stat();
                let ino = self.remember(&path, &stat, false);
                let attr = self.attr(ino, &stat);
                let fh = self.add_open(ino, handle);
                reply.created(
                    &ATTR_TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let _lingering = self.request(req);
        let open = match self.get_open(fh) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        match self.run(async {
            let mut handle = open.handle.lock().await;
            self.client
                .read_shared(&mut handle, offset, size as usize)
                .await
        }) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let _lingering = self.request(req);
        let open = match self.get_open(fh) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        // Until these bytes are a version, what the kernel caches is no version at all.
        self.forget_cache(open.ino);
        match self.run(async {
            let mut handle = open.handle.lock().await;
            let written = self.client.write(&mut handle, offset, data).await;
            open.note(&handle);
            written
        }) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        let _lingering = self.request(req);
        match self.sync(fh) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _lingering = self.request(req);
        // A version first (as at close), then durable with its name and the directories
        // above it: what `fsync` promises. Changes staged in other directories are
        // written too, but a directory that cannot be written fails the `fsync` of its
        // own files only.
        match self
            .sync(fh)
            .and_then(|path| self.run(self.client.sync_for(&[&path])))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _lingering = self.request(req);
        let synced = self.sync(fh);
        if let Ok(mut open) = self.open.lock() {
            open.remove(&fh.0);
        }
        match synced {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _lingering = self.request(req);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _lingering = self.request(req);
        let kept = (offset > 0)
            .then(|| {
                let listings = self.listings.lock().ok()?;
                listings.get(&fh.0).cloned()
            })
            .flatten();
        let listing = match kept {
            Some(listing) => listing,
            None => match self.list(ino) {
                Ok(listing) => {
                    let listing = Arc::new(listing);
                    // Handle 0: a directory opened before this mount answered opendir
                    // (never here); listed afresh at every read, as before.
                    if fh.0 != 0
                        && let Ok(mut listings) = self.listings.lock()
                    {
                        listings.insert(fh.0, listing.clone());
                    }
                    listing
                }
                Err(e) => return reply.error(e),
            },
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(start) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _lingering = self.request(req);
        if let Ok(mut listings) = self.listings.lock() {
            listings.remove(&fh.0);
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _lingering = self.request(req);
        let path = match self.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        // Staged directory changes are written and everything is durable from here; the
        // errors are those of this directory and the ones above and below it.
        match self.run(self.client.sync_for(&[&path])) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// No ioctls: what a regular file answers (a C library's `isatty` asks on every
    /// buffered open; fuser's default would log each one).
    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _lingering = self.request(req);
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _lingering = self.request(req);
        // The block store's file system (see `Mount::new`); names as the core allows.
        match rustix::fs::statvfs(&self.space) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(u32::MAX),
                keys::limits::MAX_SEGMENT_LEN as u32,
                u32::try_from(s.f_frsize).unwrap_or(u32::MAX),
            ),
            Err(e) => {
                tracing::warn!(space = %self.space.display(), error = %e, "statfs of the block store's file system failed");
                reply.error(Errno::from_i32(e.raw_os_error()));
            }
        }
    }

    fn access(&self, req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _lingering = self.request(req);
        // Readcaps and writecaps decide; each operation says EACCES or EROFS itself.
        reply.ok();
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// A time to set, in nanoseconds since the UNIX epoch: before it (or past 2554) is
/// `EINVAL`, as the inode keeps no such times.
fn mtime_ns(time: TimeOrNow) -> Result<u64, Errno> {
    let time = match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .ok_or(Errno::EINVAL)
}

const fn libc_o_trunc() -> i32 {
    0o1000
}

/// Mounts `mount` at `mountpoint` in the background; dropping the session unmounts.
/// A stale mount left by a killed process (`ENOTCONN`) is unmounted first.
pub fn spawn<B: Blocks>(
    mount: Mount<B>,
    mountpoint: &FsPath,
    read_only: bool,
) -> std::io::Result<fuser::BackgroundSession> {
    if let Err(e) = std::fs::metadata(mountpoint)
        && e.raw_os_error() == Some(107)
    {
        tracing::warn!(mountpoint = %mountpoint.display(), "cleaning a stale mount");
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(mountpoint)
            .status();
    }
    // mount(2) puts a directory over a file too, hiding it (it mounted over
    // /etc/hostname): only a directory is a mount point here.
    if !std::fs::metadata(mountpoint)?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory; mount on a directory",
        ));
    }
    // One thread serves requests (fuser's default), one at a time: `open` finds a
    // handle to share and adds its file handle in two steps, which relies on it.
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("blocktree:{}", mount.root)),
        fuser::MountOption::Subtype("blocktree".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    config.acl = fuser::SessionACL::All;
    let device = mount.device.clone();
    let session = fuser::Session::new(mount, mountpoint, &config)?;
    // The mount watches its own device between requests (see `linger`).
    let _ = device.set(session.as_fd().try_clone_to_owned()?);
    session.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Replica;

    fn mount(runtime: &tokio::runtime::Runtime) -> Mount<Replica> {
        let crate::testing::Owner { client, tree, .. } = crate::testing::owner();
        Mount::new(
            Arc::new(client),
            runtime.handle().clone(),
            tree,
            0,
            0,
            std::env::temp_dir(),
        )
    }

    /// A rename that would make a path below it longer than the longest path forgets
    /// that inode number (ESTALE at its next use) instead of keeping a prefix of the
    /// path, which named an ancestor: a `touch x` from a directory there made `x` in
    /// its parent.
    #[test]
    fn a_rename_past_the_longest_path_forgets_the_numbers_below_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mount = mount(&runtime);
        let top = mount.root.join("top").unwrap();
        let mut deep = top.clone();
        while deep.text_len() < keys::limits::MAX_PATH_LEN - 300 {
            deep = deep.join(&"d".repeat(100)).unwrap();
        }
        let near = top.join("near").unwrap();
        {
            let mut paths = mount.paths.lock().unwrap();
            paths.insert(7, deep.clone());
            paths.insert(8, near.clone());
        }
        let longer = mount.root.join(&"n".repeat(255)).unwrap();
        mount.moved(&top, &longer);
        assert_eq!(mount.path(INodeNo(7)), Err(Errno::ESTALE));
        assert_eq!(mount.path(INodeNo(8)), Ok(longer.join("near").unwrap()));
        assert_eq!(mount.path(INodeNo(1)), Ok(mount.root.clone()));
    }
}
