//! Chains verified once and remembered: a receiver checks each peer's writecap chains
//! when a stream opens, then answers "may this peer speak for this path?" per message
//! without any cryptography.

use std::collections::HashMap;

use crate::path::Path;
use crate::principal::Principal;
use crate::revocation::Revocations;
use crate::writecap::{Chain, Timestamp, WritecapError};

/// Most chains remembered per holder; older ones are dropped first.
pub const MAX_CHAINS_PER_HOLDER: usize = 64;

/// Most holders remembered; past it, holders whose grants all expired go first, then
/// arbitrary ones (they verify again when next seen).
pub const MAX_HOLDERS: usize = 16_384;

#[derive(Debug, Clone)]
struct Grant {
    prefix: Path,
    not_before: Timestamp,
    expires: Timestamp,
    /// Kept to check it again under new revocation lists.
    chain: Chain,
}

/// The verified grants of each holder.
///
/// ```
/// use keys::{Chain, Path, Revocations, SigningKey, Validity, VerifiedChains, now};
/// let root = SigningKey::generate();
/// let node = SigningKey::generate();
/// let apps = Path::root_of(root.principal()).join("apps").unwrap();
/// let chain = Chain::root_grant(&root, node.principal(), apps.clone(), Validity::for_seconds(60));
/// let mut cache = VerifiedChains::default();
/// cache.insert(&node.principal(), &chain, now(), &Revocations::default()).unwrap();
/// assert!(cache.authorizes(&node.principal(), &apps.join("chat").unwrap(), now()));
/// assert!(!cache.authorizes(&root.principal(), &apps, now()));
/// ```
#[derive(Debug, Default, Clone)]
pub struct VerifiedChains {
    grants: HashMap<Principal, Vec<Grant>>,
}

impl VerifiedChains {
    /// Verifies `chain` for `holder` (for its own prefix, at `now`) and remembers what it
    /// grants until it expires.
    pub fn insert(
        &mut self,
        holder: &Principal,
        chain: &Chain,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<(), WritecapError> {
        let prefix = chain
            .prefix()
            .ok_or_else(|| WritecapError::Malformed("the chain is empty".into()))?;
        chain.verify(prefix, holder, now, revocations)?;
        let links = chain.links();
        let grant = Grant {
            prefix: prefix.clone(),
            not_before: links
                .iter()
                .map(|c| c.validity().not_before)
                .max()
                .unwrap_or(0),
            expires: links
                .iter()
                .map(|c| c.validity().expires)
                .min()
                .unwrap_or(0),
            chain: chain.clone(),
        };
        if self.grants.len() >= MAX_HOLDERS && !self.grants.contains_key(holder) {
            self.grants
                .retain(|_, grants| grants.iter().any(|g| g.expires > now));
            if self.grants.len() >= MAX_HOLDERS
                && let Some(victim) = self.grants.keys().next().copied()
            {
                self.grants.remove(&victim);
            }
        }
        let grants = self.grants.entry(*holder).or_default();
        grants.retain(|g| g.expires > now);
        if grants.len() >= MAX_CHAINS_PER_HOLDER {
            grants.remove(0);
        }
        grants.push(grant);
        Ok(())
    }

    /// Whether a remembered chain lets `holder` speak for `path` at `now`.
    pub fn authorizes(&self, holder: &Principal, path: &Path, now: Timestamp) -> bool {
        self.authorized_until(holder, path, now).is_some()
    }

    /// Until when (exclusive) a remembered chain lets `holder` speak for `path`, if one
    /// does at `now`: a caller may then skip asking again until that time.
    pub fn authorized_until(
        &self,
        holder: &Principal,
        path: &Path,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.grants.get(holder).and_then(|grants| {
            grants
                .iter()
                .filter(|g| g.not_before <= now && now < g.expires && path.starts_with(&g.prefix))
                .map(|g| g.expires)
                .max()
        })
    }

    /// Forgets everything about `holder` (its connection closed, or revocations changed).
    pub fn forget(&mut self, holder: &Principal) {
        self.grants.remove(holder);
    }

    /// Forgets every grant whose chain `revocations` revoke (new lists arrived); the
    /// others stay, so peers need not present their chains again.
    pub fn revalidate(&mut self, now: Timestamp, revocations: &Revocations) {
        for (holder, grants) in &mut self.grants {
            grants.retain(|g| {
                matches!(
                    g.chain
                        .verify_remembering(&g.prefix, holder, now, revocations),
                    Ok(()) | Err(WritecapError::NotYetValid { .. } | WritecapError::Expired { .. })
                ) && g.expires > now
            });
        }
        self.grants.retain(|_, grants| !grants.is_empty());
    }

    /// Forgets everything (for instance when a new revocation list arrives).
    pub fn clear(&mut self) {
        self.grants.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SigningKey, Validity};

    #[test]
    fn grants_expire_and_are_scoped() {
        let root = SigningKey::generate();
        let node = SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let apps = tree.join("apps").unwrap();
        let validity = Validity {
            not_before: 100,
            expires: 200,
        };
        let chain = Chain::root_grant(&root, node.principal(), apps.clone(), validity);
        let mut cache = VerifiedChains::default();
        let holder = node.principal();
        cache
            .insert(&holder, &chain, 150, &Revocations::default())
            .unwrap();
        assert!(cache.authorizes(&holder, &apps, 150));
        assert!(cache.authorizes(&holder, &apps.join("x").unwrap(), 199));
        assert!(!cache.authorizes(&holder, &apps, 200), "expired");
        assert!(!cache.authorizes(&holder, &apps, 99), "not yet valid");
        assert!(!cache.authorizes(&holder, &tree.join("other").unwrap(), 150));
        assert_eq!(cache.authorized_until(&holder, &apps, 150), Some(200));
        cache.forget(&holder);
        assert!(!cache.authorizes(&holder, &apps, 150));
    }

    #[test]
    fn revalidating_drops_revoked_grants_and_keeps_the_rest() {
        let root = SigningKey::generate();
        let (alice, bob) = (SigningKey::generate(), SigningKey::generate());
        let apps = Path::root_of(root.principal()).join("apps").unwrap();
        let now = crate::now();
        let mut cache = VerifiedChains::default();
        for node in [&alice, &bob] {
            let chain = Chain::root_grant(
                &root,
                node.principal(),
                apps.clone(),
                Validity::for_seconds(60),
            );
            cache
                .insert(&node.principal(), &chain, now, &Revocations::default())
                .unwrap();
        }
        let mut revocations = Revocations::default();
        revocations
            .insert(
                &crate::RevocationList::issue(&root, 1, now, vec![], vec![alice.principal()])
                    .unwrap(),
            )
            .unwrap();
        cache.revalidate(now, &revocations);
        assert!(!cache.authorizes(&alice.principal(), &apps, now));
        assert!(cache.authorizes(&bob.principal(), &apps, now));
    }

    #[test]
    fn a_chain_for_someone_else_is_not_remembered() {
        let root = SigningKey::generate();
        let node = SigningKey::generate();
        let impostor = SigningKey::generate();
        let apps = Path::root_of(root.principal()).join("apps").unwrap();
        let chain = Chain::root_grant(
            &root,
            node.principal(),
            apps.clone(),
            Validity::for_seconds(60),
        );
        let mut cache = VerifiedChains::default();
        let now = crate::now();
        assert!(matches!(
            cache.insert(&impostor.principal(), &chain, now, &Revocations::default()),
            Err(WritecapError::WrongHolder { .. })
        ));
        assert!(!cache.authorizes(&impostor.principal(), &apps, now));
    }

    #[test]
    fn the_number_of_holders_is_bounded() {
        let root = SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let mut cache = VerifiedChains::default();
        let mut last = None;
        for _ in 0..MAX_HOLDERS + 3 {
            let node = SigningKey::generate();
            let chain = Chain::root_grant(
                &root,
                node.principal(),
                tree.clone(),
                Validity::for_seconds(60),
            );
            cache
                .insert(
                    &node.principal(),
                    &chain,
                    crate::now(),
                    &Revocations::default(),
                )
                .unwrap();
            last = Some(node.principal());
        }
        assert_eq!(cache.grants.len(), MAX_HOLDERS);
        let now = crate::now();
        assert!(
            cache.authorizes(&last.unwrap(), &tree, now),
            "the newest stays"
        );
    }

    #[test]
    fn the_number_of_chains_per_holder_is_bounded() {
        let root = SigningKey::generate();
        let node = SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let mut cache = VerifiedChains::default();
        let now = crate::now();
        for i in 0..MAX_CHAINS_PER_HOLDER + 5 {
            let prefix = tree.join(&format!("p{i}")).unwrap();
            let chain =
                Chain::root_grant(&root, node.principal(), prefix, Validity::for_seconds(60));
            cache
                .insert(&node.principal(), &chain, now, &Revocations::default())
                .unwrap();
        }
        let held = &cache.grants[&node.principal()];
        assert_eq!(held.len(), MAX_CHAINS_PER_HOLDER);
        assert!(!cache.authorizes(&node.principal(), &tree.join("p0").unwrap(), now));
        let last = format!("p{}", MAX_CHAINS_PER_HOLDER + 4);
        assert!(cache.authorizes(&node.principal(), &tree.join(&last).unwrap(), now));
    }
}
