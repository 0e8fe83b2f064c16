//! Revocation lists: writecaps and principals an issuer of writecaps no longer vouches
//! for.
//!
//! Whoever issues writecaps may revoke them: a list signed by a principal revokes, in
//! every chain that passes through that principal (it issued a link of the chain), the
//! links it names at or after the principal's own, by their [`CapId`] or by their
//! subject. A tree's root thus revokes anything in its tree, and a node that delegated a
//! writecap (a `share --write`) revokes what it delegated, but nobody revokes a link
//! above their own. Revocation does not look at time: a revoked link fails every check,
//! whenever what it signed was signed (a revoked holder could backdate); whoever revokes
//! re-signs first what should outlive it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::limits::MAX_REVOCATIONS;
use crate::principal::Principal;
use crate::sign::{PublicKey, Signature, SigningKey};
use crate::writecap::{CapId, Timestamp, Writecap};

const CONTEXT: &str = "blocktree 2026-11 revocation list v1";

/// A list signed by an issuer of writecaps: every writecap in `caps`, and every writecap
/// whose subject is in `principals`, is revoked in the chains that pass through the
/// issuer (see the module's documentation). A list replaces all lists of lower sequence
/// from the same issuer.
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
    /// Signs a list as `issuer`.
    pub fn issue(
        issuer: &SigningKey,
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
        let signature = issuer.sign(
            CONTEXT,
            &Self::signed_bytes(
                &issuer.public_key(),
                sequence,
                issued_at,
                &caps,
                &principals,
            ),
        );
        Ok(RevocationList {
            issuer: issuer.public_key(),
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

    /// The principal that signed the list.
    pub fn issuer(&self) -> Principal {
        self.issuer.principal()
    }

    /// When it was issued (the issuer's clock).
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// The writecaps it revokes by id.
    pub fn caps(&self) -> &[CapId] {
        &self.caps
    }

    /// The principals whose writecaps it revokes.
    pub fn principals(&self) -> &[Principal] {
        &self.principals
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
            .field("issuer", &self.issuer())
            .field("sequence", &self.sequence)
            .field("caps", &self.caps.len())
            .field("principals", &self.principals.len())
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Revoked {
    list: RevocationList,
    caps: BTreeSet<CapId>,
    principals: BTreeSet<Principal>,
}

/// The verified revocation lists a node holds, the newest per issuer (each shared, so
/// that a copy of the whole copies no list).
#[derive(Debug, Default, Clone)]
pub struct Revocations {
    by_issuer: BTreeMap<Principal, Arc<Revoked>>,
}

impl Revocations {
    /// Verifies `list` and makes it the one in force for its issuer, unless a list of the
    /// same or a later sequence is already held.
    pub fn insert(&mut self, list: &RevocationList) -> Result<(), RevocationError> {
        list.verify()?;
        let issuer = list.issuer();
        if let Some(held) = self.by_issuer.get(&issuer)
            && held.list.sequence >= list.sequence
        {
            return Err(RevocationError::Stale {
                have: held.list.sequence,
                got: list.sequence,
            });
        }
        self.by_issuer.insert(
            issuer,
            Arc::new(Revoked {
                list: list.clone(),
                caps: list.caps.iter().copied().collect(),
                principals: list.principals.iter().copied().collect(),
            }),
        );
        Ok(())
    }

    /// Whether `authority`'s list revokes `cap` (by its id or its subject). A chain's
    /// link is revoked when this holds for the issuer of that link or of any link before
    /// it ([`crate::Chain::verify`]).
    pub fn revokes(&self, authority: &Principal, cap: &Writecap) -> bool {
        self.by_issuer
            .get(authority)
            .is_some_and(|r| r.principals.contains(cap.subject()) || r.caps.contains(&cap.id()))
    }

    /// Whether no list is held.
    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// How many issuers' lists are held.
    pub fn len(&self) -> usize {
        self.by_issuer.len()
    }

    /// The list in force for `issuer`.
    pub fn get(&self, issuer: &Principal) -> Option<&RevocationList> {
        self.by_issuer.get(issuer).map(|r| &r.list)
    }

    /// Every list held, one per issuer.
    pub fn lists(&self) -> impl Iterator<Item = &RevocationList> {
        self.by_issuer.values().map(|r| &r.list)
    }
}

/// Revocation lists shared by every part of a node that checks writecaps, with a
/// generation that moves at every list taken, so that caches of checks made before
/// (verified chains, verified inode versions) know to forget them. Reading takes a
/// reference-counted copy of the lists in force (no copying, no lock held while it is
/// used); taking a list copies them once.
#[derive(Clone, Default)]
pub struct SharedRevocations(Arc<Shared>);

#[derive(Default)]
struct Shared {
    lists: RwLock<Arc<Revocations>>,
    generation: AtomicU64,
}

impl SharedRevocations {
    /// The lists in force now.
    pub fn read(&self) -> Arc<Revocations> {
        self.0
            .lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`Revocations::insert`]; the generation moves when the list is taken.
    pub fn insert(&self, list: &RevocationList) -> Result<(), RevocationError> {
        // Stale lists (most of what arrives more than once) cost no copy and no write
        // lock.
        if let Some(held) = self.read().get(&list.issuer())
            && held.sequence >= list.sequence
        {
            return Err(RevocationError::Stale {
                have: held.sequence,
                got: list.sequence,
            });
        }
        let mut lists = self.0.lists.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Revocations::clone(&lists);
        next.insert(list)?;
        *lists = Arc::new(next);
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// How many lists were taken so far: a cache filled at an older generation may hold
    /// checks a list taken since would fail.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}

impl fmt::Debug for SharedRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRevocations")
            .field("lists", &self.read().by_issuer.len())
            .field("generation", &self.generation())
            .finish()
    }
}
