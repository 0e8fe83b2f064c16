//! The storage backend wrapper every store runs on.

use std::io;

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
#[derive(Debug)]
pub(super) struct SyncedGrowth<B>(pub(super) B);

impl<B: StorageBackend> StorageBackend for SyncedGrowth<B> {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.0.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let grows = len > self.0.len()?;
        self.0.set_len(len)?;
        if grows {
            self.0.sync_data(false)?;
        }
        Ok(())
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        self.0.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }
}
