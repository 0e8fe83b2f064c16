//! Names of stored items: chunks by the hash of their ciphertext, inodes by the hash of
//! their binding, versions by the hash of their signed bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        /// 32 bytes on the wire and on disk (CBOR); hex where people read it (the JSON
        /// of the command line and of reports).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    serde_bytes::Bytes::new(&self.0).serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    return text.parse().map_err(serde::de::Error::custom);
                }
                let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(deserializer)?;
                Ok($name(bytes.into_array()))
            }
        }

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

    proptest::proptest! {
        /// JSON carries ids as hex text (they were arrays of 32 numbers); CBOR, on the
        /// wire and on disk, as 32 bytes, as before.
        #[test]
        fn json_is_hex_and_cbor_the_bytes(bytes in proptest::prelude::any::<[u8; 32]>()) {
            let id = InodeId(bytes);
            let json = serde_json::to_string(&id).unwrap();
            proptest::prop_assert_eq!(&json, &format!("\"{id}\""));
            proptest::prop_assert_eq!(serde_json::from_str::<InodeId>(&json).unwrap(), id);
            let cbor = cbor4ii::serde::to_vec(Vec::new(), &id).unwrap();
            proptest::prop_assert_eq!(&cbor[..2], &[0x58, 32][..]);
            proptest::prop_assert_eq!(&cbor[2..], &bytes[..]);
            proptest::prop_assert_eq!(cbor4ii::serde::from_slice::<InodeId>(&cbor).unwrap(), id);
            proptest::prop_assert!(serde_json::from_str::<ChunkId>("\"zz\"").is_err());
        }
    }
}
