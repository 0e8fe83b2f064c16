//! Path records: "the node with this key serves this path at these addresses", signed
//! by the node and carrying the writecap chain that lets it.

use std::fmt;

use keys::limits::{
    MAX_ADDRESS_BYTES, MAX_PATH_RECORD_BYTES, MAX_RECORD_ADDRESSES, MAX_RECORD_TTL_SECS,
};
use keys::{Chain, Path, PublicKey, Revocations, Signature, SigningKey, Timestamp, WritecapError};
use libp2p::{Multiaddr, PeerId, kad};
use protocols::wire::{self, Message};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const CONTEXT: &str = "blocktree 2026-11 path record v1";
const KEY_CONTEXT: &str = "blocktree 2026-11 path record key v1";

/// A signed claim that a node serves `path`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    path: Path,
    node: PublicKey,
    #[serde(with = "addresses")]
    addresses: Vec<Multiaddr>,
    chain: Chain,
    sequence: u64,
    expires: Timestamp,
    signature: Signature,
}

/// Why a path record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not a path record.
    #[error("undecodable path record")]
    Decode(#[from] wire::DecodeError),
    /// The node's signature does not verify.
    #[error("path record for {path}: bad signature")]
    BadSignature {
        /// The record's path.
        path: Path,
    },
    /// The writecap chain does not let the node hold the path.
    #[error("path record for {path}: the node holds no valid writecap")]
    Writecap {
        /// The record's path.
        path: Path,
        /// Why the chain fails.
        #[source]
        source: Box<WritecapError>,
    },
    /// The record has expired.
    #[error("path record for {path}: expired at {expires} (now {now})")]
    Expired {
        /// The record's path.
        path: Path,
        /// When it expired.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// The record claims to live longer than [`MAX_RECORD_TTL_SECS`].
    #[error("path record for {path}: expiry {expires} is too far in the future (now {now})")]
    TooLongLived {
        /// The record's path.
        path: Path,
        /// Its expiry.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// Too many or too long addresses.
    #[error("path record for {path}: {reason}")]
    Addresses {
        /// The record's path.
        path: Path,
        /// What is wrong.
        reason: String,
    },
    /// The Kademlia key is not the hash of the record's path.
    #[error("path record for {path} stored under the wrong key")]
    WrongKey {
        /// The record's path.
        path: Path,
    },
    /// The record's sequence (its writer's clock, in milliseconds) is further ahead of
    /// ours than clocks drift: a record numbered near `u64::MAX` would otherwise hold the
    /// path against every later one.
    #[error(
        "path record for {path}: sequence {sequence} is ahead of this node's clock ({now_ms} ms)"
    )]
    FromTheFuture {
        /// The record's path.
        path: Path,
        /// Its sequence.
        sequence: u64,
        /// This node's clock, in milliseconds since the epoch.
        now_ms: u64,
    },
    /// A record with this sequence or a later one is already held.
    #[error("path record for {path}: sequence {got} is not newer than {have}")]
    Stale {
        /// The record's path.
        path: Path,
        /// The sequence held.
        have: u64,
        /// The sequence offered.
        got: u64,
    },
}

/// The Kademlia key of a path's record.
pub fn key_of(path: &Path) -> kad::RecordKey {
    kad::RecordKey::new(&blake3_key(path))
}

fn blake3_key(path: &Path) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    hasher.update(path.to_string().as_bytes());
    *hasher.finalize().as_bytes()
}

#[derive(Serialize)]
struct Signed<'a> {
    path: &'a Path,
    node: &'a PublicKey,
    #[serde(with = "addresses")]
    addresses: &'a Vec<Multiaddr>,
    chain: &'a Chain,
    sequence: u64,
    expires: Timestamp,
}

impl PathRecord {
    /// Signs a record for `path`, held by `node` through `chain`.
    pub fn new(
        node: &SigningKey,
        path: Path,
        addresses: Vec<Multiaddr>,
        chain: Chain,
        sequence: u64,
        expires: Timestamp,
    ) -> Self {
        let public = node.public_key();
        let signature = node.sign(
            CONTEXT,
            &signed_bytes(&path, &public, &addresses, &chain, sequence, expires),
        );
        PathRecord {
            path,
            node: public,
            addresses,
            chain,
            sequence,
            expires,
            signature,
        }
    }

    /// Decodes and fully checks a record found under `key` (see [`PathRecord::verify`]).
    pub fn from_kad(
        key: &kad::RecordKey,
        value: &[u8],
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<Self, RecordError> {
        let record: PathRecord = wire::decode(value)?;
        if &key_of(&record.path) != key {
            return Err(RecordError::WrongKey { path: record.path });
        }
        record.verify(now, revocations)?;
        Ok(record)
    }

    /// Checks everything a record must satisfy on its own: addresses within limits,
    /// not expired nor too long-lived, the chain lets the node hold the path, and the
    /// node's signature.
    pub fn verify(&self, now: Timestamp, revocations: &Revocations) -> Result<(), RecordError> {
        let path = || self.path.clone();
        if self.addresses.len() > MAX_RECORD_ADDRESSES {
            return Err(RecordError::Addresses {
                path: path(),
                reason: format!(
                    "{} addresses, at most {MAX_RECORD_ADDRESSES}",
                    self.addresses.len()
                ),
            });
        }
        if now >= self.expires {
            return Err(RecordError::Expired {
                path: path(),
                expires: self.expires,
                now,
            });
        }
        if self.expires > now.saturating_add(MAX_RECORD_TTL_SECS) {
            return Err(RecordError::TooLongLived {
                path: path(),
                expires: self.expires,
                now,
            });
        }
        self.chain
            .verify(&self.path, &self.node.principal(), now, revocations)
            .map_err(|source| RecordError::Writecap {
                path: path(),
                source: Box::new(source),
            })?;
        let bytes = signed_bytes(
            &self.path,
            &self.node,
            &self.addresses,
            &self.chain,
            self.sequence,
            self.expires,
        );
        self.node
            .verify(CONTEXT, &bytes, &self.signature)
            .map_err(|_| RecordError::BadSignature { path: path() })
    }

    /// Encodes the record as a Kademlia record under its path's key.
    pub fn to_kad(&self) -> Result<kad::Record, wire::EncodeError> {
        let mut record = kad::Record::new(key_of(&self.path), wire::encode(self)?);
        record.publisher = Some(self.peer_id());
        record.expires = Some(instant_of(self.expires));
        Ok(record)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node's public key.
    pub fn node(&self) -> &PublicKey {
        &self.node
    }

    /// The node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// The node's addresses.
    pub fn addresses(&self) -> &[Multiaddr] {
        &self.addresses
    }

    /// The writecap chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The sequence number: a newer record of the same path has a higher one.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// When the record expires.
    pub fn expires(&self) -> Timestamp {
        self.expires
    }
}

/// The monotonic-clock instant of a wall-clock expiry.
pub(crate) fn instant_of(expires: Timestamp) -> std::time::Instant {
    let now = keys::now();
    let left = std::time::Duration::from_secs(expires.saturating_sub(now));
    std::time::Instant::now()
        .checked_add(left)
        .unwrap_or_else(std::time::Instant::now)
}

fn signed_bytes(
    path: &Path,
    node: &PublicKey,
    addresses: &Vec<Multiaddr>,
    chain: &Chain,
    sequence: u64,
    expires: Timestamp,
) -> Vec<u8> {
    keys::cbor::to_vec(&Signed {
        path,
        node,
        addresses,
        chain,
        sequence,
        expires,
    })
    .unwrap_or_default()
}

impl fmt::Debug for PathRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathRecord")
            .field("path", &self.path)
            .field("peer", &self.peer_id())
            .field("addresses", &self.addresses)
            .field("sequence", &self.sequence)
            .field("expires", &self.expires)
            .finish()
    }
}

impl Message for PathRecord {
    const NAME: &'static str = "path record";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_PATH_RECORD_BYTES;
    // The address list's own decoder refuses more than MAX_RECORD_ADDRESSES.
}

/// Multiaddrs as CBOR byte strings, whatever the serializer's human-readable flag.
mod addresses {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        addresses: &Vec<Multiaddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(addresses.len()))?;
        for address in addresses {
            seq.serialize_element(serde_bytes::Bytes::new(&address.to_vec()))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Multiaddr>, D::Error> {
        use serde::de::Error;
        let raw: Vec<serde_bytes::ByteBuf> = Deserialize::deserialize(deserializer)?;
        if raw.len() > MAX_RECORD_ADDRESSES {
            return Err(D::Error::custom(format!(
                "more than {MAX_RECORD_ADDRESSES} addresses"
            )));
        }
        raw.into_iter()
            .map(|bytes| {
                if bytes.len() > MAX_ADDRESS_BYTES {
                    return Err(D::Error::custom("address too long"));
                }
                Multiaddr::try_from(bytes.into_vec()).map_err(D::Error::custom)
            })
            .collect()
    }
}
