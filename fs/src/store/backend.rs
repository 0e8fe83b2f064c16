//! The storage backend wrapper every store runs on.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;

/// Makes every growth of the file durable before anything can refer to it.
///
/// redb 2.6 grows the file with `set_len` in the middle of a transaction and writes the
/// larger layout into the header when it commits; the only barrier between the two is the
/// commit's `fsync`. A crash during that `fsync` can keep the header but lose the growth,
/// and redb then panics on every later open (an assertion that the file is at least as
/// long as its layout): the store would be lost although its last commit was intact. Our
/// crash tests found it; redb 4.2 fixes it the same way, with a sync right after growing
/// (cberner/redb commit fd82ced, "Make file growth durable"). The cost is one extra sync
/// each time the file grows, which redb does in large steps.
///
/// It also fences the database once the store has failed (`fenced`, set when a chunk
/// segment could not be written or synced): every later write and sync fails. redb makes
/// its last commits durable when the database is dropped, and those could record chunks
/// whose bytes the failed sync lost.
#[derive(Debug)]
pub(super) struct SyncedGrowth<B> {
    pub(super) backend: B,
    pub(super) fenced: Arc<AtomicBool>,
}

impl<B: StorageBackend> SyncedGrowth<B> {
    fn check(&self) -> Result<(), io::Error> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "a chunk segment failed: the store takes no more writes until reopened",
            ));
        }
        Ok(())
    }
}

impl<B: StorageBackend> StorageBackend for SyncedGrowth<B> {
    fn len(&self) -> Result<u64, io::Error> {
        self.backend.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.backend.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        let grows = len > self.backend.len()?;
        self.backend.set_len(len)?;
        if grows {
            self.backend.sync_data(false)?;
        }
        Ok(())
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        self.check()?;
        self.backend.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.backend.write(offset, data)
    }
}
