//! Chains verified once and remembered: a receiver checks each peer's writecap chains
//! when a stream opens, then answers "may this peer speak for this path?" per message
//! without any cryptography.

use std::collections::HashMap;

use crate::path::Path;
use crate::principal::Principal;
use crate::revocation::{Revocations, SharedRevocations};
use crate::writecap::{Chain, Timestamp, WritecapError};

/// Most chains remembered per holder; older ones are dropped first.
pub const MAX_CHAINS_PER_HOLDER: usize = 64;

/// Most holders remembered; past it, holders whose grants all expired go first, then
/// arbitrary ones not pinned (they verify again when next seen).
pub const MAX_HOLDERS: usize = 16_384;

/// Memory one holder's grants may take, as [`held_bytes`] counts it; its oldest go
/// first. A chain of 8 links, each with a 4 KiB prefix of one-letter segments, takes
/// ~1 MB in memory: counting chains alone let one peer hold 64 of those.
pub const MAX_BYTES_PER_HOLDER: usize = 1 << 20;

/// Memory all grants may take; past it, holders whose grants all expired go first, then
/// arbitrary ones not pinned ([`VerifiedChains::pin`]), then pinned ones holding more
/// than [`PINNED_SHARE`], the largest first. A grant that finds no room is not
/// remembered ([`VerifiedChains::remember`] says so).
pub const MAX_BYTES: usize = 64 << 20;

/// What a pinned holder may hold and never be pushed out: [`MAX_BYTES`] shared among as
/// many peers as a node keeps connections with (256 by default). Honest nodes' chains
/// take a few KiB; peers that hold streams open with deep chains to fill the cache push
/// out one another.
pub const PINNED_SHARE: usize = MAX_BYTES / 256;

/// Why [`VerifiedChains::remember`] did not keep a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRemembered {
    /// The chain alone takes more than [`MAX_BYTES_PER_HOLDER`].
    TooLarge,
    /// No room was left among pinned holders.
    NoRoom,
}

/// About what `chain` takes in memory: each link's prefix (its text, and a string per
/// segment) and the rest of the link.
pub fn held_bytes(chain: &Chain) -> usize {
    chain
        .links()
        .iter()
        .map(|link| link.prefix().text_len() + link.prefix().segments().len() * 48 + 256)
        .sum::<usize>()
        * 2
}

#[derive(Debug, Clone)]
struct Grant {
    prefix: Path,
    not_before: Timestamp,
    expires: Timestamp,
    /// Kept to check it again under new revocation lists.
    chain: Chain,
    /// [`held_bytes`] of the grant (its prefix is counted with its chain's).
    bytes: usize,
}

/// A chain checked for its holder (by [`VerifiedChains::verify`], without the cache's
/// lock), to remember with [`VerifiedChains::remember`].
#[derive(Debug, Clone)]
pub struct CheckedChain {
    holder: Principal,
    grant: Grant,
}

impl CheckedChain {
    /// Whether the chain lets its holder speak for `path` at `now` (as
    /// [`VerifiedChains::authorizes`] would once it is remembered).
    pub fn authorizes(&self, path: &Path, now: Timestamp) -> bool {
        let g = &self.grant;
        g.not_before <= now && now < g.expires && path.starts_with(&g.prefix)
    }
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
    /// What `grants` takes, as [`held_bytes`] counts it.
    bytes: usize,
    /// Holders pushed out to make room only past [`PINNED_SHARE`], each with how many
    /// asked ([`VerifiedChains::pin`]).
    pinned: HashMap<Principal, usize>,
}

impl VerifiedChains {
    /// Verifies `chain` for `holder` (for its own prefix, at `now`) and remembers what it
    /// grants until it expires, if it may (see [`VerifiedChains::remember`]).
    pub fn insert(
        &mut self,
        holder: &Principal,
        chain: &Chain,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<(), WritecapError> {
        let checked = Self::verify(holder, chain, now, revocations)?;
        // Not kept is as if pushed out at once: it verifies again when next seen.
        let _ = self.remember(checked, now);
        Ok(())
    }

    /// Verifies `chain` for `holder` (for its own prefix, at `now`), touching no cache:
    /// the signatures are checked without holding the lock a shared cache sits behind.
    pub fn verify(
        holder: &Principal,
        chain: &Chain,
        now: Timestamp,
        revocations: &Revocations,
    ) -> Result<CheckedChain, WritecapError> {
        let prefix = chain
            .prefix()
            .ok_or_else(|| WritecapError::Malformed("the chain is empty".into()))?;
        // A link verified before in this process is not verified again (a peer's hellos
        // repeat the same chains on every stream).
        chain.verify_remembering(prefix, holder, now, revocations)?;
        let links = chain.links();
        Ok(CheckedChain {
            holder: *holder,
            grant: Grant {
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
                bytes: held_bytes(chain),
            },
        })
    }

    /// Keeps `holder`'s grants, up to [`PINNED_SHARE`], from being pushed out to make
    /// room for others' until as many [`VerifiedChains::unpin`]s: a peer whose streams
    /// are open, whose messages are authorized by what its hellos brought (and which does
    /// not present it again). Others making up holders and chains must not push it out
    /// and get its messages refused.
    pub fn pin(&mut self, holder: &Principal) {
        *self.pinned.entry(*holder).or_default() += 1;
    }

    /// Undoes one [`VerifiedChains::pin`]; true if that was the holder's last pin. Its
    /// grants stay until pushed out (or [`VerifiedChains::forget`]).
    pub fn unpin(&mut self, holder: &Principal) -> bool {
        let Some(count) = self.pinned.get_mut(holder) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.pinned.remove(holder);
            return true;
        }
        false
    }

    /// Remembers a chain [`VerifiedChains::verify`] checked, within the bounds above
    /// (what goes to make room verifies again when next seen), or says why not.
    pub fn remember(&mut self, checked: CheckedChain, now: Timestamp) -> Result<(), NotRemembered> {
        let CheckedChain { holder, grant } = checked;
        if grant.bytes > MAX_BYTES_PER_HOLDER {
            return Err(NotRemembered::TooLarge);
        }
        // Held already: kept once (a duplicate pushed out another grant of the holder).
        if self.holds(&holder, &grant.chain, now) {
            return Ok(());
        }
        if self.grants.len() >= MAX_HOLDERS && !self.grants.contains_key(&holder) {
            self.drop_holders(now, &holder, |cache| cache.grants.len() < MAX_HOLDERS);
            if self.grants.len() >= MAX_HOLDERS {
                return Err(NotRemembered::NoRoom);
            }
        }
        if self.bytes + grant.bytes > MAX_BYTES {
            let wanted = MAX_BYTES - grant.bytes;
            self.drop_holders(now, &holder, |cache| cache.bytes <= wanted);
            // The holder's own oldest grants may make the rest of the room (below).
            let own: usize = self
                .grants
                .get(&holder)
                .map_or(0, |grants| grants.iter().map(|g| g.bytes).sum());
            if self.bytes - own > wanted {
                return Err(NotRemembered::NoRoom);
            }
        }
        let grants = self.grants.entry(holder).or_default();
        let mut freed = 0;
        grants.retain(|g| {
            let keep = g.expires > now;
            if !keep {
                freed += g.bytes;
            }
            keep
        });
        let mut held: usize = grants.iter().map(|g| g.bytes).sum();
        let others = self.bytes - freed - held;
        while !grants.is_empty()
            && (grants.len() >= MAX_CHAINS_PER_HOLDER
                || held + grant.bytes > MAX_BYTES_PER_HOLDER
                || others + held + grant.bytes > MAX_BYTES)
        {
            let old = grants.remove(0);
            held -= old.bytes;
            freed += old.bytes;
        }
        self.bytes = self.bytes - freed + grant.bytes;
        grants.push(grant);
        Ok(())
    }

    /// Remembers chains [`VerifiedChains::verify`] checked against `revocations` as they
    /// were at generation `checked_at` or later (the generation read before the lists
    /// were). Where lists were taken since, every remembered grant is checked against them
    /// again: a chain one of them revokes is not kept, though the new list's own check of
    /// this cache ([`VerifiedChains::revalidate`]) ran before it was remembered (it stayed
    /// until it expired). An error if any was not remembered: [`NotRemembered::NoRoom`]
    /// if any found no room (see [`VerifiedChains::remember`]).
    pub fn remember_checked(
        &mut self,
        checked: impl IntoIterator<Item = CheckedChain>,
        checked_at: u64,
        revocations: &SharedRevocations,
        now: Timestamp,
    ) -> Result<(), NotRemembered> {
        let mut outcome = Ok(());
        for chain in checked {
            if let Err(why) = self.remember(chain, now)
                && outcome != Err(NotRemembered::NoRoom)
            {
                outcome = Err(why);
            }
        }
        if revocations.generation() != checked_at {
            self.revalidate(now, &revocations.read());
        }
        outcome
    }

    /// Drops holders other than `keep` until `enough`: those whose grants all expired
    /// first, then any not pinned.
    fn drop_holders(&mut self, now: Timestamp, keep: &Principal, enough: impl Fn(&Self) -> bool) {
        let expired: Vec<Principal> = self
            .grants
            .iter()
            .filter(|(holder, grants)| *holder != keep && grants.iter().all(|g| g.expires <= now))
            .map(|(holder, _)| *holder)
            .collect();
        if self.forget_until(expired, &enough) {
            return;
        }
        let unpinned: Vec<Principal> = self
            .grants
            .keys()
            .filter(|holder| *holder != keep && !self.pinned.contains_key(holder))
            .copied()
            .collect();
        if self.forget_until(unpinned, &enough) {
            return;
        }
        // Pinned holders beyond their share, the largest first.
        let mut large: Vec<(usize, Principal)> = self
            .grants
            .iter()
            .filter(|(holder, _)| *holder != keep)
            .map(|(holder, grants)| (grants.iter().map(|g| g.bytes).sum::<usize>(), *holder))
            .filter(|(bytes, _)| *bytes > PINNED_SHARE)
            .collect();
        large.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        self.forget_until(large.into_iter().map(|(_, holder)| holder), &enough);
    }

    /// Forgets `holders` in turn until `enough`; whether it was.
    fn forget_until(
        &mut self,
        holders: impl IntoIterator<Item = Principal>,
        enough: &impl Fn(&Self) -> bool,
    ) -> bool {
        for holder in holders {
            if enough(self) {
                return true;
            }
            self.forget(&holder);
        }
        enough(self)
    }

    /// Whether `chain` is remembered for `holder` (and not expired at `now`): presenting
    /// it again needs no second check.
    pub fn holds(&self, holder: &Principal, chain: &Chain, now: Timestamp) -> bool {
        self.grants
            .get(holder)
            .is_some_and(|grants| grants.iter().any(|g| g.expires > now && &g.chain == chain))
    }

    /// Whether `issuer` signed a link of a remembered chain rooted at one of `roots` (its
    /// revocation lists concern what is held here, in those trees).
    pub fn mentions_issuer(&self, issuer: &Principal, roots: &[Principal]) -> bool {
        self.grants.values().flatten().any(|g| {
            let links = g.chain.links();
            links
                .first()
                .is_some_and(|first| roots.contains(&first.issuer().principal()))
                && links
                    .iter()
                    .any(|link| link.issuer().principal() == *issuer)
        })
    }

    /// What the remembered grants take, as [`held_bytes`] counts it.
    pub fn bytes(&self) -> usize {
        self.bytes
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
        if let Some(grants) = self.grants.remove(holder) {
            self.bytes -= grants.iter().map(|g| g.bytes).sum::<usize>();
        }
    }

    /// Forgets every grant whose chain `revocations` revoke (new lists arrived); the
    /// others stay, so peers need not present their chains again.
    pub fn revalidate(&mut self, now: Timestamp, revocations: &Revocations) {
        let mut freed = 0;
        for (holder, grants) in &mut self.grants {
            grants.retain(|g| {
                let keep = matches!(
                    g.chain
                        .verify_remembering(&g.prefix, holder, now, revocations),
                    Ok(()) | Err(WritecapError::NotYetValid { .. } | WritecapError::Expired { .. })
                ) && g.expires > now;
                if !keep {
                    freed += g.bytes;
                }
                keep
            });
        }
        self.bytes -= freed;
        self.grants.retain(|_, grants| !grants.is_empty());
    }

    /// Forgets every grant (for instance when a new revocation list arrives); pins stay.
    pub fn clear(&mut self) {
        self.grants.clear();
        self.bytes = 0;
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

    /// A chain verified against the lists of one generation while a list revoking it
    /// was taken (and the cache checked against it) is not kept once remembered.
    #[test]
    fn a_chain_revoked_while_it_was_checked_is_not_kept() {
        let root = SigningKey::generate();
        let node = SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let chain = Chain::root_grant(
            &root,
            node.principal(),
            tree.clone(),
            Validity::for_seconds(3600),
        );
        let other = SigningKey::generate();
        let kept = Chain::root_grant(
            &root,
            other.principal(),
            tree.clone(),
            Validity::for_seconds(3600),
        );
        let holder = node.principal();
        let shared = SharedRevocations::default();
        let now = crate::now();
        let checked_at = shared.generation();
        let checked = [
            VerifiedChains::verify(&holder, &chain, now, &shared.read()).unwrap(),
            VerifiedChains::verify(&other.principal(), &kept, now, &shared.read()).unwrap(),
        ];
        // Meanwhile: a list revoking the first holder, and the cache's check against it.
        let list = crate::RevocationList::issue(&root, 1, now, Vec::new(), vec![holder]).unwrap();
        shared.insert(&list).unwrap();
        let mut cache = VerifiedChains::default();
        cache.revalidate(now, &shared.read());
        assert_eq!(
            cache.remember_checked(checked, checked_at, &shared, now),
            Ok(())
        );
        assert!(!cache.holds(&holder, &chain, now));
        assert!(!cache.authorizes(&holder, &tree, now));
        assert!(cache.holds(&other.principal(), &kept, now));
    }

    /// A chain presented again is kept once: a duplicate pushed out the holder's other
    /// grants (64 at most per holder), so a node that announced the same chain at every
    /// refresh lost the writecaps it held beside it.
    #[test]
    fn a_chain_remembered_again_is_kept_once() {
        let root = SigningKey::generate();
        let node = SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let validity = Validity::for_seconds(3600);
        let grant = |name: &str| {
            Chain::root_grant(&root, node.principal(), tree.join(name).unwrap(), validity)
        };
        let (holder, none) = (node.principal(), Revocations::default());
        let mut cache = VerifiedChains::default();
        let now = crate::now();
        cache.insert(&holder, &grant("kept"), now, &none).unwrap();
        let again = grant("again");
        for _ in 0..2 * MAX_CHAINS_PER_HOLDER {
            cache.insert(&holder, &again, now, &none).unwrap();
        }
        assert!(cache.holds(&holder, &again, now));
        assert!(cache.authorizes(&holder, &tree.join("kept").unwrap(), now));
        assert!(!cache.holds(&holder, &grant("other"), now));
    }

    /// A chain whose prefix is about 4 KiB of one-letter segments (~200 KB in memory).
    fn deep_chain(root: &SigningKey, holder: &SigningKey) -> (Chain, Path) {
        let top = Path::root_of(root.principal()).to_string();
        let segments = (crate::limits::MAX_PATH_LEN - top.len()) / 2;
        let prefix: Path = format!("{top}{}", "/a".repeat(segments)).parse().unwrap();
        let now = crate::now();
        let validity = Validity {
            not_before: now - 60,
            expires: now + 600,
        };
        let chain = Chain::root_grant(root, holder.principal(), prefix.clone(), validity);
        (chain, prefix)
    }

    /// Grants are held by what they take in memory, for each holder and in all: chains
    /// with deep prefixes from one peer, or from many, hold at most the bounds (a peer
    /// could make the cache hold gigabytes by counting chains alone). The newest grant is
    /// always remembered, and forgetting gives its bytes back.
    #[test]
    fn remembered_chains_are_bounded_by_what_they_take_in_memory() {
        let now = crate::now();
        let none = Revocations::default();
        let mut cache = VerifiedChains::default();
        let holder = SigningKey::generate();
        let mut last = None;
        for _ in 0..20 {
            let root = SigningKey::generate();
            let (chain, prefix) = deep_chain(&root, &holder);
            assert!(held_bytes(&chain) > 100_000);
            cache
                .insert(&holder.principal(), &chain, now, &none)
                .unwrap();
            last = Some(prefix);
            assert!(cache.bytes() <= MAX_BYTES_PER_HOLDER);
        }
        assert!(cache.authorizes(&holder.principal(), &last.unwrap(), now));
        cache.forget(&holder.principal());
        assert_eq!(cache.bytes(), 0);

        let root = SigningKey::generate();
        let per_chain = held_bytes(&deep_chain(&root, &holder).0);
        let holders = MAX_BYTES / per_chain + 3;
        for _ in 0..holders {
            let holder = SigningKey::generate();
            let (chain, prefix) = deep_chain(&root, &holder);
            cache
                .insert(&holder.principal(), &chain, now, &none)
                .unwrap();
            assert!(cache.bytes() <= MAX_BYTES);
            assert!(cache.authorizes(&holder.principal(), &prefix, now));
        }
        assert!(cache.bytes() > MAX_BYTES - 2 * per_chain);
        cache.clear();
        assert_eq!(cache.bytes(), 0);
    }

    /// Holders pinned (peers whose streams are open) within their share are never pushed
    /// out to make room for others' chains, however many others come: a flood of made-up
    /// holders with
    /// deep chains pushed out every honest peer, whose messages were then refused and
    /// held against it. A grant that finds no room among pinned holders is not
    /// remembered, and says so; the bounds still hold.
    #[test]
    fn pinned_holders_stay_whatever_others_bring() {
        let now = crate::now();
        let none = Revocations::default();
        let mut cache = VerifiedChains::default();
        let root = SigningKey::generate();
        let honest = SigningKey::generate();
        let apps = Path::root_of(root.principal()).join("apps").unwrap();
        let small = Chain::root_grant(
            &root,
            honest.principal(),
            apps.clone(),
            Validity::for_seconds(600),
        );
        cache.pin(&honest.principal());
        let checked = VerifiedChains::verify(&honest.principal(), &small, now, &none).unwrap();
        assert!(checked.authorizes(&apps.join("x").unwrap(), now));
        assert!(!checked.authorizes(&Path::root_of(root.principal()), now));
        assert_eq!(cache.remember(checked, now), Ok(()));
        let per_chain = held_bytes(&deep_chain(&root, &honest).0);
        assert!(per_chain <= PINNED_SHARE);
        let flood = 2 * (MAX_BYTES / per_chain) + 8;
        let mut pinned_flood = Vec::new();
        for i in 0..flood {
            let holder = SigningKey::generate();
            let (chain, _) = deep_chain(&root, &holder);
            let checked = VerifiedChains::verify(&holder.principal(), &chain, now, &none).unwrap();
            // Half the flood pins itself too (its streams stay open).
            if i % 2 == 0 {
                cache.pin(&holder.principal());
                pinned_flood.push((holder.principal(), chain.clone()));
            }
            let _ = cache.remember(checked, now);
            assert!(cache.bytes() <= MAX_BYTES);
            assert!(cache.authorizes(&honest.principal(), &apps, now), "{i}");
        }
        // Unpinned holders made room for pinned ones until only pinned were left.
        let kept = pinned_flood
            .iter()
            .filter(|(holder, chain)| cache.holds(holder, chain, now))
            .count();
        assert!(
            kept >= MAX_BYTES / per_chain - 2,
            "{kept} of the pinned flood kept"
        );
        // Full of pinned holders: a new one is not remembered, and says so.
        let late = SigningKey::generate();
        let (chain, prefix) = deep_chain(&root, &late);
        let checked = VerifiedChains::verify(&late.principal(), &chain, now, &none).unwrap();
        assert!(checked.authorizes(&prefix, now));
        assert_eq!(cache.remember(checked, now), Err(NotRemembered::NoRoom));
        assert!(!cache.authorizes(&late.principal(), &prefix, now));
        // Unpinned (its streams closed), a holder may go again.
        let (gone, gone_chain) = pinned_flood
            .iter()
            .find(|(holder, chain)| cache.holds(holder, chain, now))
            .unwrap()
            .clone();
        cache.unpin(&gone);
        let checked = VerifiedChains::verify(&late.principal(), &chain, now, &none).unwrap();
        cache.pin(&late.principal());
        assert_eq!(cache.remember(checked, now), Ok(()));
        assert!(cache.authorizes(&late.principal(), &prefix, now));
        assert!(!cache.holds(&gone, &gone_chain, now));
        assert!(cache.authorizes(&honest.principal(), &apps, now));
        assert!(cache.bytes() <= MAX_BYTES);
    }

    /// Pinned holders holding more than their share go when room is needed, the largest
    /// first: peers holding streams open with deep chains cannot lock the cache, while
    /// the small ones stay.
    #[test]
    fn pinned_holders_beyond_their_share_make_room_largest_first() {
        let now = crate::now();
        let none = Revocations::default();
        let mut cache = VerifiedChains::default();
        let root = SigningKey::generate();
        let per_chain = held_bytes(&deep_chain(&root, &root).0);
        // Pinned holders of three deep chains each (beyond the share), until full.
        let mut large = Vec::new();
        while cache.bytes() + 3 * per_chain <= MAX_BYTES {
            let holder = SigningKey::generate();
            cache.pin(&holder.principal());
            for _ in 0..3 {
                let other_root = SigningKey::generate();
                let (chain, _) = deep_chain(&other_root, &holder);
                let checked =
                    VerifiedChains::verify(&holder.principal(), &chain, now, &none).unwrap();
                assert_eq!(cache.remember(checked, now), Ok(()));
            }
            large.push(holder.principal());
        }
        // Small pinned holders (one deep chain each, within the share) still find room,
        // and push out only the large.
        let mut small = Vec::new();
        for _ in 0..large.len() {
            let holder = SigningKey::generate();
            cache.pin(&holder.principal());
            let (chain, prefix) = deep_chain(&root, &holder);
            let checked = VerifiedChains::verify(&holder.principal(), &chain, now, &none).unwrap();
            assert_eq!(cache.remember(checked, now), Ok(()));
            assert!(cache.bytes() <= MAX_BYTES);
            small.push((holder.principal(), prefix));
        }
        for (holder, prefix) in &small {
            assert!(cache.authorizes(holder, prefix, now));
        }
        assert!(large.iter().any(|h| !cache.grants.contains_key(h)));
    }

    #[test]
    fn the_issuers_of_remembered_chains_are_known() {
        let root = SigningKey::generate();
        let node = SigningKey::generate();
        let apps = Path::root_of(root.principal()).join("apps").unwrap();
        let chain = Chain::root_grant(&root, node.principal(), apps, Validity::for_seconds(60));
        let mut cache = VerifiedChains::default();
        let roots = [root.principal()];
        assert!(!cache.mentions_issuer(&root.principal(), &roots));
        cache
            .insert(
                &node.principal(),
                &chain,
                crate::now(),
                &Revocations::default(),
            )
            .unwrap();
        assert!(cache.mentions_issuer(&root.principal(), &roots));
        assert!(!cache.mentions_issuer(&node.principal(), &roots));
        assert!(!cache.mentions_issuer(&SigningKey::generate().principal(), &roots));
        // Only in the trees asked about: a chain of a tree of another's does not count.
        let other = [SigningKey::generate().principal()];
        assert!(!cache.mentions_issuer(&root.principal(), &other));
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
