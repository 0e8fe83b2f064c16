//! Writecaps: signed grants "issuer lets subject write under prefix P, from T0 until T1",
//! chained from a tree's root principal.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_CHAIN_LEN;
use crate::path::Path;
use crate::principal::Principal;
use crate::revocation::Revocations;
use crate::sign::{PublicKey, Signature, SigningKey};

const CONTEXT: &str = "blocktree 2026-11 writecap v1";

/// Seconds since the UNIX epoch, the time unit of every credential.
pub type Timestamp = u64;

/// The current time as a [`Timestamp`].
pub fn now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When a writecap holds: from `not_before` (inclusive) to `expires` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    /// First second in which the grant holds.
    pub not_before: Timestamp,
    /// First second in which it no longer holds.
    pub expires: Timestamp,
}

impl Validity {
    /// From now for `seconds`.
    pub fn for_seconds(seconds: u64) -> Self {
        let now = now();
        Validity {
            not_before: now,
            expires: now.saturating_add(seconds),
        }
    }
}

/// One signed grant.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writecap {
    issuer: PublicKey,
    subject: Principal,
    prefix: Path,
    validity: Validity,
    signature: Signature,
}

/// The identifier of a writecap (BLAKE3 of its signed content), used by revocations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CapId(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl fmt::Debug for CapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapId({})", data_encoding::HEXLOWER.encode(&self.0[..8]))
    }
}

/// Ids of links whose signature verified, in this process. Bounded: emptied when full.
static VERIFIED_LINKS: VerifiedLinks = VerifiedLinks(std::sync::Mutex::new(None));

/// Links remembered as verified at most.
const VERIFIED_LINKS_MAX: usize = 4096;

struct VerifiedLinks(std::sync::Mutex<Option<std::collections::HashSet<CapId>>>);

impl VerifiedLinks {
    fn contains(&self, id: &CapId) -> bool {
        self.0
            .lock()
            .is_ok_and(|set| set.as_ref().is_some_and(|s| s.contains(id)))
    }

    fn insert(&self, id: CapId) {
        if let Ok(mut set) = self.0.lock() {
            let set = set.get_or_insert_with(Default::default);
            if set.len() >= VERIFIED_LINKS_MAX {
                set.clear();
            }
            set.insert(id);
        }
    }
}

#[derive(Serialize)]
struct Signed<'a> {
    issuer: &'a PublicKey,
    subject: &'a Principal,
    prefix: &'a Path,
    validity: &'a Validity,
}

fn signed_bytes(
    issuer: &PublicKey,
    subject: &Principal,
    prefix: &Path,
    validity: &Validity,
) -> Vec<u8> {
    let signed = Signed {
        issuer,
        subject,
        prefix,
        validity,
    };
    // Serialising plain structs into a Vec cannot fail.
    cbor4ii::serde::to_vec(Vec::new(), &signed).unwrap_or_default()
}

impl Writecap {
    /// Signs a grant from `issuer` to `subject` for everything under `prefix`.
    pub fn issue(
        issuer: &SigningKey,
        subject: Principal,
        prefix: Path,
        validity: Validity,
    ) -> Self {
        let issuer_key = issuer.public_key();
        let signature = issuer.sign(
            CONTEXT,
            &signed_bytes(&issuer_key, &subject, &prefix, &validity),
        );
        Writecap {
            issuer: issuer_key,
            subject,
            prefix,
            validity,
            signature,
        }
    }

    /// The issuer's public key.
    pub fn issuer(&self) -> &PublicKey {
        &self.issuer
    }

    /// Who the grant is for.
    pub fn subject(&self) -> &Principal {
        &self.subject
    }

    /// Where it lets the subject write.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// When it holds.
    pub fn validity(&self) -> &Validity {
        &self.validity
    }

    /// Its identifier.
    pub fn id(&self) -> CapId {
        let mut hasher = blake3::Hasher::new_derive_key(CONTEXT);
        hasher.update(&signed_bytes(
            &self.issuer,
            &self.subject,
            &self.prefix,
            &self.validity,
        ));
        hasher.update(self.signature.as_bytes());
        CapId(*hasher.finalize().as_bytes())
    }

    fn verify_signature(&self, remember: bool) -> bool {
        // The same few links come with every write a node accepts. A link's id hashes its
        // signed bytes and its signature, and a signature check always gives the same
        // answer for the same bytes: an id seen to verify needs no second check.
        let id = remember.then(|| self.id());
        if let Some(id) = &id
            && VERIFIED_LINKS.contains(id)
        {
            return true;
        }
        let ok = self
            .issuer
            .verify(
                CONTEXT,
                &signed_bytes(&self.issuer, &self.subject, &self.prefix, &self.validity),
                &self.signature,
            )
            .is_ok();
        if ok && let Some(id) = id {
            VERIFIED_LINKS.insert(id);
        }
        ok
    }
}

impl fmt::Debug for Writecap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Writecap({} -> {} under {})",
            self.issuer.principal(),
            self.subject,
            self.prefix
        )
    }
}

/// A chain of writecaps from a tree's root principal to the holder, root grant first.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Chain(Vec<Writecap>);

/// Why a chain does not let its holder write at a path. `link` counts from 0, the root
/// grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WritecapError {
    /// A link's signature does not verify.
    #[error("link {link}: bad signature")]
    BadSignature {
        /// The link.
        link: usize,
    },
    /// A link grants a prefix outside the prefix its issuer holds (for the root grant:
    /// outside the root's own tree).
    #[error("link {link}: grants {prefix}, outside what its issuer holds")]
    PrefixOutside {
        /// The link.
        link: usize,
        /// The prefix it grants.
        prefix: Path,
    },
    /// The first link is not issued by the root principal of the path.
    #[error("the chain is rooted at {found}, not at the path's root {expected}")]
    NotRooted {
        /// The path's root principal.
        expected: Principal,
        /// The first issuer's principal.
        found: Principal,
    },
    /// A link's issuer is not the subject of the link before it.
    #[error("link {link}: issued by {issuer}, who is not the previous link's subject")]
    BrokenLink {
        /// The link.
        link: usize,
        /// Its issuer.
        issuer: Principal,
    },
    /// A link has expired.
    #[error("link {link}: expired at {expires} (now {now})")]
    Expired {
        /// The link.
        link: usize,
        /// When it expired.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// A link is not valid yet.
    #[error("link {link}: not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The link.
        link: usize,
        /// When it becomes valid.
        not_before: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// A link, or its subject, is revoked by its issuer or an issuer above it.
    #[error("link {link}: revoked")]
    Revoked {
        /// The link.
        link: usize,
    },
    /// The chain has more links than [`MAX_CHAIN_LEN`].
    #[error("the chain has {len} links; at most {MAX_CHAIN_LEN} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The path lies outside what the last link grants.
    #[error("{path} lies outside the granted prefix {prefix}")]
    PathOutside {
        /// The path.
        path: Path,
        /// The last link's prefix.
        prefix: Path,
    },
    /// The last link is for someone else than the holder.
    #[error("the chain grants {subject}, not {holder}")]
    WrongHolder {
        /// The last subject.
        subject: Principal,
        /// Who presented the chain.
        holder: Principal,
    },
    /// The chain is structurally invalid: empty, or a link's validity is inverted.
    #[error("malformed chain: {0}")]
    Malformed(String),
}

impl Chain {
    /// A chain of one root grant. `root` must be the root principal's key.
    pub fn root_grant(
        root: &SigningKey,
        subject: Principal,
        prefix: Path,
        validity: Validity,
    ) -> Self {
        Chain(vec![Writecap::issue(root, subject, prefix, validity)])
    }

    /// A chain from its links, root grant first. Nothing is checked until
    /// [`Chain::verify`].
    pub fn from_links(links: Vec<Writecap>) -> Self {
        Chain(links)
    }

    /// The links, root grant first.
    pub fn links(&self) -> &[Writecap] {
        &self.0
    }

    /// The principal that the chain grants to (its last subject).
    pub fn holder(&self) -> Option<&Principal> {
        self.0.last().map(|cap| &cap.subject)
    }

    /// The prefix that the chain grants (its last prefix).
    pub fn prefix(&self) -> Option<&Path> {
        self.0.last().map(|cap| &cap.prefix)
    }

    /// Extends the chain: `holder` (the current last subject) grants `subject` a prefix
    /// inside its own. The new chain is checked as a whole before it is returned.
    pub fn delegate(
        &self,
        holder: &SigningKey,
        subject: Principal,
        prefix: Path,
        validity: Validity,
        now: Timestamp,
    ) -> Result<Chain, WritecapError> {
        let mut links = self.0.clone();
        links.push(Writecap::issue(holder, subject, prefix.clone(), validity));
        let chain = Chain(links);
        chain.verify(&prefix, &subject, now, &Revocations::default())?;
        Ok(chain)
    }

    /// Checks that the chain lets `holder` write at `path` at time `now`: it is rooted at
    /// the path's root principal, every signature verifies, every link's issuer is the
    /// previous subject and its prefix lies inside the previous prefix, no link is
    /// expired, premature or revoked (by the list of its issuer or of an issuer before it),
    /// and `path` lies under the last prefix.
    pub fn verify(
        &self,
        path: &Path,
        holder: &Principal,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<(), WritecapError> {
        self.check(path, holder, now, revocations, false)
    }

    /// [`Chain::verify`], but a link whose signature verified before in this process
    /// (by its [`CapId`], which hashes everything signed and the signature) is not
    /// verified again; every other check is made each time. For paths that see the same
    /// chains with every message (a replica accepting writes, a writer signing them).
    pub fn verify_remembering(
        &self,
        path: &Path,
        holder: &Principal,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<(), WritecapError> {
        self.check(path, holder, now, revocations, true)
    }

    fn check(
        &self,
        path: &Path,
        holder: &Principal,
        now: Timestamp,
        revocations: &Revocations,
        remember: bool,
    ) -> Result<(), WritecapError> {
        let links = &self.0;
        if links.len() > MAX_CHAIN_LEN {
            return Err(WritecapError::TooLong { len: links.len() });
        }
        let Some(first) = links.first() else {
            return Err(WritecapError::Malformed("the chain is empty".into()));
        };
        let root = path.root();
        let first_issuer = first.issuer.principal();
        if &first_issuer != root {
            return Err(WritecapError::NotRooted {
                expected: *root,
                found: first_issuer,
            });
        }
        let mut held = Path::root_of(*root);
        let mut holder_of_held = *root;
        // The issuers so far: each may revoke its own link and every link after it.
        let mut authorities: Vec<Principal> = Vec::with_capacity(links.len());
        for (link, cap) in links.iter().enumerate() {
            if cap.validity.not_before >= cap.validity.expires {
                return Err(WritecapError::Malformed(format!(
                    "link {link}: valid from {} until {}",
                    cap.validity.not_before, cap.validity.expires
                )));
            }
            let issuer = cap.issuer.principal();
            if issuer != holder_of_held {
                return Err(WritecapError::BrokenLink { link, issuer });
            }
            if !cap.prefix.starts_with(&held) {
                return Err(WritecapError::PrefixOutside {
                    link,
                    prefix: cap.prefix.clone(),
                });
            }
            if now < cap.validity.not_before {
                return Err(WritecapError::NotYetValid {
                    link,
                    not_before: cap.validity.not_before,
                    now,
                });
            }
            if now >= cap.validity.expires {
                return Err(WritecapError::Expired {
                    link,
                    expires: cap.validity.expires,
                    now,
                });
            }
            authorities.push(issuer);
            if !revocations.is_empty() && authorities.iter().any(|a| revocations.revokes(a, cap)) {
                return Err(WritecapError::Revoked { link });
            }
            if !cap.verify_signature(remember) {
                return Err(WritecapError::BadSignature { link });
            }
            held = cap.prefix.clone();
            holder_of_held = cap.subject;
        }
        if &holder_of_held != holder {
            return Err(WritecapError::WrongHolder {
                subject: holder_of_held,
                holder: *holder,
            });
        }
        if !path.starts_with(&held) {
            return Err(WritecapError::PathOutside {
                path: path.clone(),
                prefix: held,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

#[cfg(test)]
mod tests;
