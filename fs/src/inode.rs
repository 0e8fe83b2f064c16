//! Inodes: signed records of a file's or directory's version.
//!
//! An inode is named by its [`Binding`]: the path that authorised its creation and a
//! random nonce (zero for an *anchor*, the inode that any holder of a writecap for a path
//! can find from the path alone: the root of a tree, or a shared directory). A version is
//! accepted only when it is signed by a writer whose writecap chain covers the binding's
//! path, so a replica decides authorisation from the record alone — it cannot read the
//! encrypted directories above it, and needs not.
//!
//! Versions are numbered: a writer takes the highest sequence it has seen plus one and
//! names the versions it supersedes (`parents`). Two versions that name neither the other
//! are a fork; both are kept (see [`winner`]).

use std::cmp::Ordering;

use keys::{
    Chain, Path, PublicIdentity, PublicKey, Readcap, Revocations, Signature, SigningKey, Timestamp,
};
use protocols::wire::{self, Message};
use serde::{Deserialize, Serialize};

use crate::chunk::MAX_CHUNK_SIZE;
use crate::id::{ChunkId, InodeId, VersionId};

const SIGNING_CONTEXT: &str = "blocktree 2026-11 inode v1";
const BINDING_CONTEXT: &str = "blocktree 2026-11 inode binding v1";

/// Largest signed inode, in bytes: what the block protocol carries. The body leaves room
/// for the signature and framing within it, so every version that can be signed can be
/// stored, served and repaired.
pub const MAX_INODE_BYTES: usize = protocols::limits::MAX_INODE_BYTES;
/// Room in a signed inode for the signature and framing around the body.
const SIGNED_OVERHEAD: usize = 256;
/// Most chunks in one inode (a 16 GiB file at the default chunk size).
pub const MAX_CHUNKS: usize = 16_384;
/// Most readcaps in one inode.
pub const MAX_READCAPS: usize = 64;
/// Most writecap grants kept in one anchor.
pub const MAX_GRANTS: usize = 16;
/// Most parents one version names.
pub const MAX_PARENTS: usize = 16;
/// The highest sequence number: far beyond any real history, low enough that no
/// arithmetic on it overflows.
pub const MAX_SEQ: u64 = 1 << 48;
/// How far in the future a version's signing time may lie, in seconds.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// What authorised an inode's creation; its hash is the inode's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The path the inode was created at. Later versions must be signed under a writecap
    /// that covers it.
    pub path: Path,
    /// Random for ordinary inodes, zero for anchors.
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
}

impl Binding {
    /// A new ordinary inode at `path`.
    pub fn new(path: Path) -> Result<Self, getrandom::Error> {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce)?;
        Ok(Binding { path, nonce })
    }

    /// The anchor of `path`: the inode found from the path alone.
    pub fn anchor(path: Path) -> Self {
        Binding {
            path,
            nonce: [0; 16],
        }
    }

    /// Whether this is an anchor.
    pub fn is_anchor(&self) -> bool {
        self.nonce == [0; 16]
    }

    /// The inode's id.
    pub fn id(&self) -> InodeId {
        let mut hasher = blake3::Hasher::new_derive_key(BINDING_CONTEXT);
        // The path's text, hashed as it is written out (which cannot fail: the sink
        // takes everything, and a path's and a principal's `Display` fail only on it).
        let written =
            std::fmt::Write::write_fmt(&mut HashText(&mut hasher), format_args!("{}", self.path));
        debug_assert!(written.is_ok());
        hasher.update(&[0]);
        hasher.update(&self.nonce);
        InodeId(*hasher.finalize().as_bytes())
    }
}

/// Text written into a hash.
struct HashText<'a>(&'a mut blake3::Hasher);

impl std::fmt::Write for HashText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// Whether an inode is a file, a directory or a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory: its contents are an encrypted [`Directory`](crate::dir::Directory).
    Dir,
    /// A symbolic link: its contents are the target, encrypted like a file's (at most
    /// [`MAX_LINK_TARGET`] bytes), never followed by the file system itself.
    Symlink,
}

/// The longest target of a symbolic link: Linux's `PATH_MAX` less its NUL.
pub const MAX_LINK_TARGET: usize = 4095;

/// One chunk of the contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The sealed chunk's name.
    pub id: ChunkId,
    /// Bytes of plaintext in it.
    pub len: u32,
}

/// One version of an inode, as its writer signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// What the inode is bound to; its hash is the id.
    pub binding: Binding,
    /// The version number: one more than the highest the writer saw.
    pub seq: u64,
    /// The versions this one supersedes.
    pub parents: Vec<VersionId>,
    /// File or directory.
    pub kind: Kind,
    /// Bytes of contents.
    pub size: u64,
    /// Permission bits, as in `st_mode & 0o7777`.
    pub mode: u32,
    /// Last modification, nanoseconds since the UNIX epoch.
    pub mtime_ns: u64,
    /// Plaintext bytes per chunk (every chunk but the last is full).
    pub chunk_size: u32,
    /// The contents, in order.
    pub chunks: Vec<ChunkRef>,
    /// The epochs of the anchors above when this inode's data key was made (see
    /// [`Inode::epoch`]); an anchor not listed counts as epoch 0.
    pub key_epochs: Vec<(InodeId, u64)>,
    /// For anchors: bumped at every revocation; the keys of inodes below made in an older
    /// epoch of this anchor are replaced on their next write.
    pub epoch: u64,
    /// Who may read from here down: their public identities (so that a new data key can
    /// be sealed to them again)…
    pub readers: Vec<PublicIdentity>,
    /// …and the data key sealed to each of them, in the same order.
    pub readcaps: Vec<Readcap>,
    /// For anchors: writecaps handed to others for this path, picked up by their nodes.
    pub grants: Vec<Chain>,
    /// The writer's key.
    pub writer: PublicKey,
    /// The writer's writecap chain; it must cover the binding's path.
    pub chain: Chain,
    /// When the writer signed, seconds since the UNIX epoch; the chain must hold then.
    pub signed_at: Timestamp,
}

impl Message for Inode {
    const NAME: &'static str = "inode";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_INODE_BYTES - SIGNED_OVERHEAD;

    fn validate(&self) -> Result<(), String> {
        if self.seq == 0 || self.seq > MAX_SEQ {
            return Err(format!(
                "sequence number {} out of range (1 to {MAX_SEQ})",
                self.seq
            ));
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(format!(
                "{} parents (at most {MAX_PARENTS})",
                self.parents.len()
            ));
        }
        if self.chunks.len() > MAX_CHUNKS {
            return Err(format!(
                "{} chunks (at most {MAX_CHUNKS})",
                self.chunks.len()
            ));
        }
        if self.readcaps.len() > MAX_READCAPS {
            return Err(format!(
                "{} readcaps (at most {MAX_READCAPS})",
                self.readcaps.len()
            ));
        }
        if self.readers.len() != self.readcaps.len()
            || self
                .readers
                .iter()
                .zip(&self.readcaps)
                .any(|(reader, cap)| &reader.principal() != cap.recipient())
        {
            return Err("readers and readcaps do not match".into());
        }
        if self.key_epochs.len() > MAX_PARENTS {
            return Err(format!(
                "{} key epochs (at most {MAX_PARENTS})",
                self.key_epochs.len()
            ));
        }
        if self.grants.len() > MAX_GRANTS {
            return Err(format!(
                "{} grants (at most {MAX_GRANTS})",
                self.grants.len()
            ));
        }
        if self.chunk_size == 0 || self.chunk_size as usize > MAX_CHUNK_SIZE {
            return Err(format!("chunk size {} out of range", self.chunk_size));
        }
        let mut total = 0u64;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let last = i + 1 == self.chunks.len();
            if chunk.len > self.chunk_size || (!last && chunk.len != self.chunk_size) {
                return Err(format!("chunk {i} has {} bytes", chunk.len));
            }
            total += u64::from(chunk.len);
        }
        if total != self.size {
            return Err(format!("size {} but chunks hold {total}", self.size));
        }
        if self.mode > 0o7777 {
            return Err(format!("mode {:o} has bits beyond 0o7777", self.mode));
        }
        if self.epoch > MAX_SEQ {
            return Err(format!(
                "key epoch {} out of range (0 to {MAX_SEQ})",
                self.epoch
            ));
        }
        if !self.binding.is_anchor() && (!self.grants.is_empty() || self.epoch != 0) {
            return Err("only anchors carry grants or an epoch".into());
        }
        Ok(())
    }
}

impl Inode {
    /// The inode's id.
    pub fn id(&self) -> InodeId {
        self.binding.id()
    }
}

/// An inode version with its writer's signature: what replicas store and serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The wire-encoded [`Inode`].
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    signature: Signature,
}

impl Message for Signed {
    const NAME: &'static str = "signed inode";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_INODE_BYTES;
}

/// Why an inode version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InodeError {
    /// Not a well-formed signed inode.
    #[error("malformed inode: {0}")]
    Malformed(#[from] wire::DecodeError),
    /// The signature does not verify under the writer's key.
    #[error("the inode's signature does not verify")]
    BadSignature,
    /// The writer's chain does not cover the inode's binding.
    #[error("the writer {writer} holds no writecap for {path}: {reason}")]
    NotAuthorized {
        /// The writer.
        writer: keys::Principal,
        /// The binding's path.
        path: Path,
        /// What the chain check said.
        reason: String,
    },
    /// The writer's chain covers the binding, but a link of it is revoked.
    #[error("the writecap of {writer} for {path} is revoked: {reason}")]
    Revoked {
        /// The writer.
        writer: keys::Principal,
        /// The binding's path.
        path: Path,
        /// What the chain check said.
        reason: String,
    },
    /// Signed too far in the future.
    #[error("signed at {signed_at}, more than {MAX_CLOCK_SKEW} s after now ({now})")]
    FromTheFuture {
        /// The claimed signing time.
        signed_at: Timestamp,
        /// This node's clock.
        now: Timestamp,
    },
    /// The inode is not the one it was asked as.
    #[error("expected inode {expected}, got {found}")]
    WrongInode {
        /// What was asked for.
        expected: InodeId,
        /// What arrived.
        found: InodeId,
    },
    /// Encoding failed.
    #[error("cannot encode the inode: {0}")]
    Encode(String),
}

/// A version that verified. Cheap to clone (contents and bytes are shared): versions pass
/// through caches and listings on every walk and stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The inode's id.
    pub id: InodeId,
    /// The version's id.
    pub version: VersionId,
    /// Its contents.
    pub inode: std::sync::Arc<Inode>,
    /// The signed bytes, as stored and served.
    pub signed: std::sync::Arc<[u8]>,
}

impl Signed {
    /// Signs `inode` with the writer's key (which must be `inode.writer`) and encodes it.
    pub fn sign(inode: &Inode, key: &SigningKey) -> Result<Vec<u8>, InodeError> {
        let body = wire::encode(inode).map_err(|e| InodeError::Encode(e.to_string()))?;
        let signature = key.sign(SIGNING_CONTEXT, &body);
        wire::encode(&Signed { body, signature }).map_err(|e| InodeError::Encode(e.to_string()))
    }

    /// Checks signed bytes: well formed, signed by the writer, the writer's chain covers
    /// the binding at signing time and is not revoked, and not signed in the future.
    pub fn verify(
        bytes: &[u8],
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<Verified, InodeError> {
        let signed: Signed = wire::decode(bytes)?;
        let inode: Inode = wire::decode(&signed.body)?;
        inode
            .writer
            .verify(SIGNING_CONTEXT, &signed.body, &signed.signature)
            .map_err(|_| InodeError::BadSignature)?;
        if inode.signed_at > now + MAX_CLOCK_SKEW {
            return Err(InodeError::FromTheFuture {
                signed_at: inode.signed_at,
                now,
            });
        }
        let writer = inode.writer.principal();
        inode
            .chain
            .verify_remembering(&inode.binding.path, &writer, inode.signed_at, revocations)
            .map_err(|e| match e {
                keys::WritecapError::Revoked { .. } => InodeError::Revoked {
                    writer,
                    path: inode.binding.path.clone(),
                    reason: e.to_string(),
                },
                e => InodeError::NotAuthorized {
                    writer,
                    path: inode.binding.path.clone(),
                    reason: e.to_string(),
                },
            })?;
        Ok(Verified {
            id: inode.id(),
            version: VersionId::of(bytes),
            inode: inode.into(),
            signed: bytes.into(),
        })
    }

    /// [`Signed::verify`], and the inode must be `expected`.
    pub fn verify_as(
        bytes: &[u8],
        expected: &InodeId,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<Verified, InodeError> {
        let verified = Self::verify(bytes, now, revocations)?;
        if &verified.id != expected {
            return Err(InodeError::WrongInode {
                expected: *expected,
                found: verified.id,
            });
        }
        Ok(verified)
    }
}

/// Versions verified before, by version id: checking a signature and a writecap chain
/// costs a few ed25519 verifications, and the same versions are read again and again.
/// A version id is the hash of the signed bytes, so a hit is the same bytes. Bounded: two
/// generations of [`VERIFIED_CACHE_ENTRIES`] and of [`VERIFIED_CACHE_BYTES`], so what
/// was used lately stays.
#[derive(Debug)]
pub struct VerifiedCache {
    entries: std::sync::Mutex<crate::memo::Generations<VersionId, Verified>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache {
            entries: std::sync::Mutex::new(crate::memo::Generations::with_budget(
                VERIFIED_CACHE_ENTRIES,
                VERIFIED_CACHE_BYTES,
            )),
        }
    }
}

/// Entries of one generation of a [`VerifiedCache`] (it holds at most twice as many).
pub const VERIFIED_CACHE_ENTRIES: usize = 16_384;
/// Memory one generation of a [`VerifiedCache`] may take, as [`Verified::weight`] counts
/// it (it holds at most twice as much): a version may be 1 MB, and 16 384 of those held
/// gigabytes.
pub const VERIFIED_CACHE_BYTES: usize = 32 << 20;

impl Verified {
    /// About what it takes in memory: its signed bytes and the decoded inode beside them.
    pub fn weight(&self) -> usize {
        2 * self.signed.len() + 512
    }
}

impl VerifiedCache {
    /// Forgets everything (new revocation lists: a hit is not checked against them).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            *entries =
                crate::memo::Generations::with_budget(VERIFIED_CACHE_ENTRIES, VERIFIED_CACHE_BYTES);
        }
    }

    /// [`Signed::verify_as`], remembering what verified. (The chain is checked at signing
    /// time, so a verified version stays verified; revocation lists are not consulted
    /// again for a cached version.)
    pub fn verify_as(
        &self,
        bytes: &[u8],
        expected: &InodeId,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<Verified, InodeError> {
        self.verify_trusting(bytes, expected, now, revocations, None)
    }

    /// [`VerifiedCache::verify_as`], taking as verified what `also` verified before (a
    /// cache whose checks were as strict or stricter: a replica's, with its revocations).
    pub fn verify_trusting(
        &self,
        bytes: &[u8],
        expected: &InodeId,
        now: Timestamp,
        revocations: &Revocations,
        also: Option<&VerifiedCache>,
    ) -> Result<Verified, InodeError> {
        let id = VersionId::of(bytes);
        for cache in std::iter::once(self).chain(also) {
            if let Ok(mut entries) = cache.entries.lock()
                && let Some(v) = entries.get(&id)
            {
                if &v.id != expected {
                    return Err(InodeError::WrongInode {
                        expected: *expected,
                        found: v.id,
                    });
                }
                return Ok(v.clone());
            }
        }
        let verified = Signed::verify_as(bytes, expected, now, revocations)?;
        if let Ok(mut entries) = self.entries.lock() {
            let weight = verified.weight();
            entries.insert_weighing(id, verified.clone(), weight);
        }
        Ok(verified)
    }
}

/// The versions to show under `revocations`. None signed through a revoked writecap is
/// shown; and where any is held, only the heads among the rest, each version that a shown
/// one descends from (through any versions held, revoked ones too) left out: so what a
/// revoked version superseded on the way to a shown one stays superseded (a re-signed
/// copy names only the version it replaces), while one that no shown version descends
/// from supersedes nothing (a revoked writer cannot hide versions by naming them as
/// parents).
pub fn drop_revoked(versions: Vec<Verified>, revocations: &Revocations) -> Vec<Verified> {
    if revocations.is_empty() {
        return versions;
    }
    let revoked: std::collections::HashSet<VersionId> = versions
        .iter()
        .filter(|v| is_revoked(v, revocations))
        .map(|v| v.version)
        .collect();
    if revoked.is_empty() {
        return versions;
    }
    let by_id: std::collections::HashMap<VersionId, &Verified> =
        versions.iter().map(|v| (v.version, v)).collect();
    let mut superseded = std::collections::HashSet::new();
    let mut pending: Vec<VersionId> = versions
        .iter()
        .filter(|v| !revoked.contains(&v.version))
        .flat_map(|v| v.inode.parents.iter().copied())
        .collect();
    while let Some(id) = pending.pop() {
        if superseded.insert(id)
            && let Some(v) = by_id.get(&id)
        {
            pending.extend(v.inode.parents.iter().copied());
        }
    }
    versions
        .into_iter()
        .filter(|v| !revoked.contains(&v.version) && !superseded.contains(&v.version))
        .collect()
}

/// Whether `revocations` revoke a link of the chain `v` was signed through.
pub fn is_revoked(v: &Verified, revocations: &Revocations) -> bool {
    matches!(
        v.inode.chain.verify_remembering(
            &v.inode.binding.path,
            &v.inode.writer.principal(),
            v.inode.signed_at,
            revocations,
        ),
        Err(keys::WritecapError::Revoked { .. })
    )
}

/// Orders versions for showing: the higher key epoch (only anchors have one), then the
/// higher sequence, then the later signing time, then the higher version id. Every node
/// picks the same winner of a fork. The epoch comes first because an anchor's readers,
/// grants and key are taken from its winner: a revocation (which bumps the epoch) that
/// forked with another writer's version made from before it lost to that version when
/// its sequence was lower, and the revoked reader came back with readcaps for the new
/// key. A share made at the same time on the older epoch loses instead (shown by
/// `stat`, and made again).
pub fn order(a: &Verified, b: &Verified) -> Ordering {
    (a.inode.epoch, a.inode.seq, a.inode.signed_at, a.version).cmp(&(
        b.inode.epoch,
        b.inode.seq,
        b.inode.signed_at,
        b.version,
    ))
}

/// The heads among `versions`: those no other version names as a parent, winner first
/// (by [`order`]). More than one head is a fork.
pub fn heads(versions: &[Verified]) -> Vec<&Verified> {
    // Most inodes have a version or two: a scan beats hashing every parent.
    let mut heads: Vec<&Verified> = if versions.len() <= 8 {
        versions
            .iter()
            .filter(|v| {
                !versions
                    .iter()
                    .any(|o| o.inode.parents.contains(&v.version))
            })
            .collect()
    } else {
        let superseded: std::collections::HashSet<&VersionId> = versions
            .iter()
            .flat_map(|v| v.inode.parents.iter())
            .collect();
        versions
            .iter()
            .filter(|v| !superseded.contains(&v.version))
            .collect()
    };
    heads.sort_by(|a, b| order(b, a));
    heads.dedup_by(|a, b| a.version == b.version);
    heads
}

/// The version shown for an inode: the first of [`heads`].
pub fn winner(versions: &[Verified]) -> Option<&Verified> {
    heads(versions).into_iter().next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keys::{Identity, Validity};

    fn setup() -> (Identity, Chain, Path) {
        let root = Identity::generate();
        let tree = Path::root_of(root.principal());
        let chain = Chain::root_grant(
            root.signing_key(),
            root.principal(),
            tree.clone(),
            Validity::for_seconds(3600),
        );
        (root, chain, tree)
    }

    fn inode(writer: &Identity, chain: &Chain, path: Path, seq: u64) -> Inode {
        Inode {
            binding: Binding::anchor(path),
            seq,
            parents: vec![],
            kind: Kind::File,
            size: 5,
            mode: 0o644,
            mtime_ns: 1,
            chunk_size: 4,
            chunks: vec![
                ChunkRef {
                    id: ChunkId([1; 32]),
                    len: 4,
                },
                ChunkRef {
                    id: ChunkId([2; 32]),
                    len: 1,
                },
            ],
            key_epochs: vec![],
            epoch: 0,
            readers: vec![],
            readcaps: vec![],
            grants: vec![],
            writer: writer.signing_key().public_key(),
            chain: chain.clone(),
            signed_at: keys::now(),
        }
    }

    #[test]
    fn an_inode_id_hashes_its_path_as_text() {
        let root = Identity::generate();
        let path: Path = format!("/{}/a/bé/c", root.principal()).parse().unwrap();
        for binding in [
            Binding::anchor(path.clone()),
            Binding::new(path.clone()).unwrap(),
        ] {
            let mut hasher = blake3::Hasher::new_derive_key(BINDING_CONTEXT);
            hasher.update(path.to_string().as_bytes());
            hasher.update(&[0]);
            hasher.update(&binding.nonce);
            assert_eq!(binding.id(), InodeId(*hasher.finalize().as_bytes()));
        }
    }

    /// Versions written by the owner (o) and a writer (w) whose writecap is then revoked:
    /// o1 ← w2 ← w3 ← o4 (o4 a re-signed copy of w3), and w5, a revoked version naming
    /// o4 as its parent. Shown: o4 alone (not o1 back as a head, and w5 hides nothing).
    #[test]
    fn revoked_versions_are_left_out_without_bringing_back_what_they_superseded() {
        let (root, chain, tree) = setup();
        let path = tree.join("shared").unwrap();
        let writer = Identity::generate();
        let grant = chain
            .delegate(
                root.signing_key(),
                writer.principal(),
                path.clone(),
                Validity::for_seconds(3600),
                keys::now(),
            )
            .unwrap();
        let mut versions: Vec<Verified> = Vec::new();
        let mut add = |who: &Identity, chain: &Chain, seq: u64, parents: Vec<VersionId>| {
            let mut i = inode(who, chain, path.clone(), seq);
            i.parents = parents;
            let signed = Signed::sign(&i, who.signing_key()).unwrap();
            let v = Signed::verify(&signed, keys::now(), &Revocations::default()).unwrap();
            versions.push(v.clone());
            v.version
        };
        let o1 = add(&root, &chain, 1, vec![]);
        let w2 = add(&writer, &grant, 2, vec![o1]);
        let w3 = add(&writer, &grant, 3, vec![w2]);
        let o4 = add(&root, &chain, 4, vec![w3]);
        let _w5 = add(&writer, &grant, 5, vec![o4]);
        // Before the revocation: the writer's latest is the head.
        assert_eq!(heads(&versions).len(), 1);
        assert_eq!(heads(&versions)[0].inode.seq, 5);
        let mut revocations = Revocations::default();
        let list = keys::RevocationList::issue(
            root.signing_key(),
            1,
            keys::now(),
            vec![grant.links().last().unwrap().id()],
            vec![],
        )
        .unwrap();
        revocations.insert(&list).unwrap();
        let shown = drop_revoked(versions.clone(), &revocations);
        let shown: Vec<VersionId> = shown.iter().map(|v| v.version).collect();
        assert_eq!(shown, vec![o4]);
        // Without lists, nothing is left out.
        assert_eq!(
            drop_revoked(versions.clone(), &Revocations::default()).len(),
            5
        );
        // A revoked version naming the owner's head: the owner's head stays.
        let only_owner_and_attacker: Vec<Verified> = versions
            .iter()
            .filter(|v| v.version == o1 || v.inode.seq == 5)
            .cloned()
            .collect();
        let mut attack = only_owner_and_attacker[1].clone();
        let mut forged = (*attack.inode).clone();
        forged.parents = vec![o1];
        let signed = Signed::sign(&forged, writer.signing_key()).unwrap();
        attack = Signed::verify(&signed, keys::now(), &Revocations::default()).unwrap();
        let shown = drop_revoked(
            vec![only_owner_and_attacker[0].clone(), attack],
            &revocations,
        );
        assert_eq!(
            shown.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![o1]
        );
    }

    #[test]
    fn signed_by_a_holder_verifies() {
        let (root, chain, tree) = setup();
        let path = tree.join("a").unwrap();
        let body = inode(&root, &chain, path.clone(), 1);
        let bytes = Signed::sign(&body, root.signing_key()).unwrap();
        let verified = Signed::verify_as(
            &bytes,
            &Binding::anchor(path).id(),
            keys::now(),
            &Revocations::default(),
        )
        .unwrap();
        assert_eq!(*verified.inode, body);
        assert_eq!(verified.version, VersionId::of(&bytes));
    }

    #[test]
    fn refuses_outsiders_forgeries_and_bad_shapes() {
        let (root, chain, tree) = setup();
        let path = tree.join("a").unwrap();
        let now = keys::now();
        let none = Revocations::default();
        // A writer without a writecap for the tree, presenting the root's chain.
        let mallory = Identity::generate();
        let forged = inode(&mallory, &chain, path.clone(), 2);
        let bytes = Signed::sign(&forged, mallory.signing_key()).unwrap();
        assert!(matches!(
            Signed::verify(&bytes, now, &none),
            Err(InodeError::NotAuthorized { .. })
        ));
        // Claiming the root's key but signing with another.
        let mut claimed = inode(&root, &chain, path.clone(), 2);
        claimed.size = 5;
        let bytes = Signed::sign(&claimed, mallory.signing_key()).unwrap();
        assert_eq!(
            Signed::verify(&bytes, now, &none),
            Err(InodeError::BadSignature)
        );
        // Sizes that do not add up, and chunks not full.
        let mut odd = inode(&root, &chain, path.clone(), 2);
        odd.size = 6;
        let bytes = Signed::sign(&odd, root.signing_key()).unwrap();
        assert!(matches!(
            Signed::verify(&bytes, now, &none),
            Err(InodeError::Malformed(_))
        ));
        let mut ragged = inode(&root, &chain, path.clone(), 2);
        ragged.chunks[0].len = 3;
        ragged.size = 4;
        let bytes = Signed::sign(&ragged, root.signing_key()).unwrap();
        assert!(matches!(
            Signed::verify(&bytes, now, &none),
            Err(InodeError::Malformed(_))
        ));
        // A key epoch no revocation can follow (a co-writer's attempt to stop re-keys).
        let mut last_epoch = inode(&root, &chain, path.clone(), 2);
        last_epoch.epoch = u64::MAX;
        let bytes = Signed::sign(&last_epoch, root.signing_key()).unwrap();
        assert!(matches!(
            Signed::verify(&bytes, now, &none),
            Err(InodeError::Malformed(_))
        ));
        // From the future.
        let mut future = inode(&root, &chain, path.clone(), 2);
        future.signed_at = now + 3 * MAX_CLOCK_SKEW;
        let bytes = Signed::sign(&future, root.signing_key()).unwrap();
        assert!(matches!(
            Signed::verify(&bytes, now, &none),
            Err(InodeError::FromTheFuture { .. })
        ));
        // Asked as another inode.
        let good = Signed::sign(&inode(&root, &chain, path, 2), root.signing_key()).unwrap();
        let other = Binding::anchor(tree.join("b").unwrap()).id();
        assert!(matches!(
            Signed::verify_as(&good, &other, now, &none),
            Err(InodeError::WrongInode { .. })
        ));
        // Altered bytes.
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(Signed::verify(&bad, now, &none).is_err(), "byte {i}");
        }
    }

    #[test]
    fn the_largest_body_signed_fits_the_block_protocol() {
        let (root, _, _) = setup();
        let body = vec![7u8; <Inode as Message>::MAX_BYTES];
        let signature = root.signing_key().sign(SIGNING_CONTEXT, &body);
        let bytes = wire::encode(&Signed { body, signature }).unwrap();
        assert!(bytes.len() <= protocols::limits::MAX_INODE_BYTES);
    }

    #[test]
    fn forks_have_one_deterministic_winner() {
        let (root, chain, tree) = setup();
        let path = tree.join("a").unwrap();
        let now = keys::now();
        let none = Revocations::default();
        let v1 = Signed::verify(
            &Signed::sign(&inode(&root, &chain, path.clone(), 1), root.signing_key()).unwrap(),
            now,
            &none,
        )
        .unwrap();
        let mut a = inode(&root, &chain, path.clone(), 2);
        a.parents = vec![v1.version];
        a.mtime_ns = 10;
        let mut b = a.clone();
        b.mtime_ns = 11;
        let a = Signed::verify(&Signed::sign(&a, root.signing_key()).unwrap(), now, &none).unwrap();
        let b = Signed::verify(&Signed::sign(&b, root.signing_key()).unwrap(), now, &none).unwrap();
        let all = vec![v1.clone(), a.clone(), b.clone()];
        let heads = heads(&all);
        assert_eq!(heads.len(), 2);
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(
            winner(&all).unwrap().version,
            winner(&reversed).unwrap().version
        );
        assert!(heads.iter().all(|h| h.version != v1.version));
    }

    #[test]
    fn heads_are_the_same_from_a_few_versions_or_many() {
        let (root, chain, tree) = setup();
        let path = tree.join("a").unwrap();
        let (now, none) = (keys::now(), Revocations::default());
        let verify = |body: &Inode| {
            Signed::verify(&Signed::sign(body, root.signing_key()).unwrap(), now, &none).unwrap()
        };
        // Eleven versions in a line, then two that both follow the last: a fork.
        let mut all = vec![verify(&inode(&root, &chain, path.clone(), 1))];
        for seq in 2..=11 {
            let mut body = inode(&root, &chain, path.clone(), seq);
            body.parents = vec![all[all.len() - 1].version];
            all.push(verify(&body));
        }
        let mut fork = inode(&root, &chain, path.clone(), 12);
        fork.parents = vec![all[10].version];
        let mut other = fork.clone();
        other.mtime_ns += 1;
        all.push(verify(&fork));
        all.push(verify(&other));
        let versions =
            |heads: Vec<&Verified>| -> Vec<VersionId> { heads.iter().map(|h| h.version).collect() };
        let many = versions(heads(&all));
        assert_eq!(many.len(), 2);
        // The last few alone (scanned, not hashed) have the same heads, in the same order.
        assert_eq!(versions(heads(&all[all.len() - 4..])), many);
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(versions(heads(&reversed)), many);
        assert_eq!(versions(heads(&reversed[..3])), many);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_verifies_or_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            proptest::prop_assert!(Signed::verify(&bytes, keys::now(), &Revocations::default()).is_err());
        }

        #[test]
        fn signed_versions_round_trip_and_resist_alteration(
            seq in 1u64..1000,
            sizes in proptest::collection::vec(1u32..=64, 0..20),
            mode in 0u32..=0o7777,
            kind in proptest::prop_oneof![
                proptest::strategy::Just(Kind::File),
                proptest::strategy::Just(Kind::Dir),
                proptest::strategy::Just(Kind::Symlink),
            ],
            mtime_ns in proptest::prelude::any::<u64>(),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let (root, chain, tree) = setup();
            let mut body = inode(&root, &chain, tree.join("p").unwrap(), seq);
            let n = sizes.len();
            body.chunk_size = 64;
            body.chunks = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| ChunkRef { id: ChunkId([i as u8; 32]), len: if i + 1 == n { *s } else { 64 } })
                .collect();
            body.size = body.chunks.iter().map(|c| u64::from(c.len)).sum();
            body.mode = mode;
            body.kind = kind;
            body.mtime_ns = mtime_ns;
            let bytes = Signed::sign(&body, root.signing_key()).unwrap();
            let verified = Signed::verify(&bytes, keys::now(), &Revocations::default()).unwrap();
            proptest::prop_assert_eq!(&*verified.inode, &body);
            let mut bad = bytes.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x10;
            proptest::prop_assert!(Signed::verify(&bad, keys::now(), &Revocations::default()).map(|v| (*v.inode).clone()) != Ok(body));
        }
    }
}
