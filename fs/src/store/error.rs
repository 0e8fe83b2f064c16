//! The store's error type, and how redb's errors become text.

use crate::id::ChunkId;

/// What can go wrong in the [`Store`](super::Store).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes offered for a chunk do not hash to the id they were offered under. Nothing was
    /// written.
    #[error("chunk bytes do not hash to their id {id}")]
    Mismatch {
        /// The id the bytes were offered under.
        id: ChunkId,
    },
    /// A chunk larger than [`MAX_CHUNK_BYTES`](super::MAX_CHUNK_BYTES) was offered. Nothing
    /// was written.
    #[error(
        "chunk {id} has {len} bytes, more than the {} a chunk may have",
        super::MAX_CHUNK_BYTES
    )]
    TooLarge {
        /// The chunk's id.
        id: ChunkId,
        /// Its length.
        len: usize,
    },
    /// A stored chunk's bytes no longer hash to its id (disk corruption or tampering). The
    /// caller decides what to do: usually [`remove_chunk`](super::Store::remove_chunk) and
    /// fetch a good copy, or store a good copy over it with
    /// [`put_chunk`](super::Store::put_chunk).
    #[error("stored chunk {id} is corrupt: its bytes no longer hash to its id")]
    Corrupt {
        /// The corrupt chunk.
        id: ChunkId,
    },
    /// The database was written by a newer (or unknown) version of the store.
    #[error("store format {found} is not supported (this build reads format {supported})")]
    Format {
        /// The format recorded in the database.
        found: u64,
        /// The format this build reads and writes.
        supported: u64,
    },
    /// The storage failed: an I/O error, a corrupt database file, or an earlier I/O error
    /// that left the database unusable until it is reopened. The text says what the store
    /// was doing and what the database reported.
    #[error("store I/O error while {0}")]
    Io(String),
}

/// Turns a redb result into ours, naming what the store was doing.
pub(super) trait Context<T> {
    /// Flattens the error to [`Error::Io`], prefixed by `what` ("reading a chunk").
    fn context(self, what: &'static str) -> Result<T, Error>;
}

impl<T, E: Into<redb::Error>> Context<T> for Result<T, E> {
    fn context(self, what: &'static str) -> Result<T, Error> {
        self.map_err(|e| Error::Io(format!("{what}: {}", e.into())))
    }
}
