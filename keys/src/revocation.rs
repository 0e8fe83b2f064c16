//! Revocation lists: writecaps and principals a tree's root no longer vouches for.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_REVOCATIONS;
use crate::principal::Principal;
use crate::sign::{PublicKey, Signature, SigningKey};
use crate::writecap::{CapId, Timestamp, Writecap};

const CONTEXT: &str = "blocktree 2026-11 revocation list v1";

/// A list signed by a tree's root: every writecap in `caps`, and every writecap whose
/// subject is in `principals`, is revoked in that tree. A list replaces all lists of
/// lower sequence from the same root.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    issuer: PublicKey,
    sequence: u64,
    issued_at: Timestamp,
    caps: Vec<CapId>,
    principals: Vec<Principal>,
    signature: Signature,
}

/// Why a revocation list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The signature does not verify.
    #[error("revocation list: bad signature")]
    BadSignature,
    /// More than [`MAX_REVOCATIONS`] entries.
    #[error("revocation list has {0} entries; at most {MAX_REVOCATIONS} are allowed")]
    TooLarge(usize),
    /// A list with this sequence or a later one is already held.
    #[error("revocation list sequence {got} is not newer than {have}")]
    Stale {
        /// The sequence held.
        have: u64,
        /// The sequence offered.
        got: u64,
    },
}

#[derive(Serialize)]
struct Signed<'a> {
    issuer: &'a PublicKey,
    sequence: u64,
    issued_at: Timestamp,
    caps: &'a [CapId],
    principals: &'a [Principal],
}

impl RevocationList {
    /// Signs a list. `root` is the key of the tree's root principal.
    pub fn issue(
        root: &SigningKey,
        sequence: u64,
        issued_at: Timestamp,
        mut caps: Vec<CapId>,
        mut principals: Vec<Principal>,
    ) -> Result<Self, RevocationError> {
        caps.sort_unstable();
        caps.dedup();
        principals.sort_unstable();
        principals.dedup();
        let len = caps.len() + principals.len();
        if len > MAX_REVOCATIONS {
            return Err(RevocationError::TooLarge(len));
        }
        let issuer = root.public_key();
        let signature = root.sign(
            CONTEXT,
            &Self::signed_bytes(&issuer, sequence, issued_at, &caps, &principals),
        );
        Ok(RevocationList {
            issuer,
            sequence,
            issued_at,
            caps,
            principals,
            signature,
        })
    }

    fn signed_bytes(
        issuer: &PublicKey,
        sequence: u64,
        issued_at: Timestamp,
        caps: &[CapId],
        principals: &[Principal],
    ) -> Vec<u8> {
        let signed = Signed {
            issuer,
            sequence,
            issued_at,
            caps,
            principals,
        };
        cbor4ii::serde::to_vec(Vec::new(), &signed).unwrap_or_default()
    }

    /// The root principal that signed the list.
    pub fn root(&self) -> Principal {
        self.issuer.principal()
    }

    /// The list's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// How many caps and principals it revokes.
    pub fn len(&self) -> usize {
        self.caps.len() + self.principals.len()
    }

    /// Whether it revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the size and the signature.
    pub fn verify(&self) -> Result<(), RevocationError> {
        let len = self.caps.len() + self.principals.len();
        if len > MAX_REVOCATIONS {
            return Err(RevocationError::TooLarge(len));
        }
        let bytes = Self::signed_bytes(
            &self.issuer,
            self.sequence,
            self.issued_at,
            &self.caps,
            &self.principals,
        );
        self.issuer
            .verify(CONTEXT, &bytes, &self.signature)
            .map_err(|_| RevocationError::BadSignature)
    }
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("root", &self.root())
            .field("sequence", &self.sequence)
            .field("caps", &self.caps.len())
            .field("principals", &self.principals.len())
            .finish()
    }
}

#[derive(Debug, Default, Clone)]
struct Revoked {
    sequence: u64,
    caps: BTreeSet<CapId>,
    principals: BTreeSet<Principal>,
}

/// The verified revocation lists a node holds, the newest per root.
#[derive(Debug, Default, Clone)]
pub struct Revocations {
    by_root: BTreeMap<Principal, Revoked>,
}

impl Revocations {
    /// Verifies `list` and makes it the one in force for its root, unless a list of the
    /// same or a later sequence is already held.
    pub fn insert(&mut self, list: &RevocationList) -> Result<(), RevocationError> {
        list.verify()?;
        let root = list.root();
        if let Some(held) = self.by_root.get(&root)
            && held.sequence >= list.sequence
        {
            return Err(RevocationError::Stale {
                have: held.sequence,
                got: list.sequence,
            });
        }
        self.by_root.insert(
            root,
            Revoked {
                sequence: list.sequence,
                caps: list.caps.iter().copied().collect(),
                principals: list.principals.iter().copied().collect(),
            },
        );
        Ok(())
    }

    /// Whether `cap`, in the tree of `root`, is revoked.
    pub fn is_revoked(&self, root: &Principal, cap: &Writecap) -> bool {
        self.by_root
            .get(root)
            .is_some_and(|r| r.principals.contains(cap.subject()) || r.caps.contains(&cap.id()))
    }
}
