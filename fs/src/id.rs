//! Names of stored items: chunks by the hash of their ciphertext, inodes by the hash of
//! their binding, versions by the hash of their signed bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(#[serde(with = "serde_bytes")] pub [u8; 32]);

        impl $name {
            /// The id's bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({})"), &data_encoding::HEXLOWER.encode(&self.0[..6]))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                let bytes = data_encoding::HEXLOWER_PERMISSIVE
                    .decode(s.as_bytes())
                    .map_err(|e| format!("not a hex id: {e}"))?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| "an id is 32 bytes (64 hex digits)".to_string())?;
                Ok($name(bytes))
            }
        }
    };
}

id_type!(
    /// A chunk's name: the BLAKE3 hash of its ciphertext, so anyone can check a chunk
    /// against its name without keys.
    ChunkId,
    "ChunkId"
);

id_type!(
    /// An inode's name: the hash of the binding it was created with.
    InodeId,
    "InodeId"
);

id_type!(
    /// One signed version of an inode: the hash of its signed bytes.
    VersionId,
    "VersionId"
);

impl ChunkId {
    /// The id of `ciphertext`.
    pub fn of(ciphertext: &[u8]) -> Self {
        ChunkId(*blake3::hash(ciphertext).as_bytes())
    }
}

impl VersionId {
    /// The id of a signed inode's bytes.
    pub fn of(signed: &[u8]) -> Self {
        VersionId(*blake3::hash(signed).as_bytes())
    }
}

/// Anything placed on the peers closest to it: its 32-byte key in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemId {
    /// A chunk.
    Chunk(ChunkId),
    /// All versions of an inode.
    Inode(InodeId),
}

impl ItemId {
    /// The 32 bytes that place the item.
    pub fn key(&self) -> &[u8; 32] {
        match self {
            ItemId::Chunk(id) => &id.0,
            ItemId::Inode(id) => &id.0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_round_trip() {
        let id = ChunkId::of(b"ciphertext");
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert!("zz".parse::<ChunkId>().is_err());
        assert!("abcd".parse::<ChunkId>().is_err());
    }
}
