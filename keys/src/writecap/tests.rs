//! One test per way a chain can fail, plus the ways it succeeds.

use super::*;
use crate::revocation::RevocationList;

const NOW: Timestamp = 1_800_000_000;
const HOUR: u64 = 3600;

fn valid() -> Validity {
    Validity {
        not_before: NOW - HOUR,
        expires: NOW + HOUR,
    }
}

struct Tree {
    root: SigningKey,
    admin: SigningKey,
    node: SigningKey,
    base: Path,
}

impl Tree {
    fn new() -> Self {
        let root = SigningKey::generate();
        let base = Path::root_of(root.principal());
        Tree {
            root,
            admin: SigningKey::generate(),
            node: SigningKey::generate(),
            base,
        }
    }

    fn path(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|s| !s.is_empty())
            .fold(self.base.clone(), |p, s| p.join(s).unwrap())
    }

    /// root → admin (/apps) → node (/apps/chat)
    fn chain(&self) -> Chain {
        let first = Chain::root_grant(
            &self.root,
            self.admin.principal(),
            self.path("apps"),
            valid(),
        );
        first
            .delegate(
                &self.admin,
                self.node.principal(),
                self.path("apps/chat"),
                valid(),
                NOW,
            )
            .unwrap()
    }

    fn check(&self, chain: &Chain, path: &str) -> Result<(), WritecapError> {
        chain.verify(
            &self.path(path),
            &self.node.principal(),
            NOW,
            &Revocations::default(),
        )
    }
}

fn with_link(chain: &Chain, index: usize, f: impl FnOnce(&mut Writecap)) -> Chain {
    let mut links = chain.links().to_vec();
    f(&mut links[index]);
    Chain::from_links(links)
}

#[test]
fn valid_chains_verify() {
    let t = Tree::new();
    let chain = t.chain();
    t.check(&chain, "apps/chat").unwrap();
    t.check(&chain, "apps/chat/rooms/general").unwrap();
    assert_eq!(chain.holder(), Some(&t.node.principal()));
    assert_eq!(chain.prefix(), Some(&t.path("apps/chat")));
    // The root may grant its whole tree, and a holder may re-grant exactly what it holds.
    let whole = Chain::root_grant(&t.root, t.admin.principal(), t.base.clone(), valid());
    let same = whole
        .delegate(&t.admin, t.node.principal(), t.base.clone(), valid(), NOW)
        .unwrap();
    t.check(&same, "anything/at/all").unwrap();
}

#[test]
fn bad_signature() {
    let t = Tree::new();
    let chain = t.chain();
    // A widened prefix with the old signature.
    let forged = with_link(&chain, 1, |cap| cap.prefix = t.path("apps"));
    assert_eq!(
        t.check(&forged, "apps/chat"),
        Err(WritecapError::BadSignature { link: 1 })
    );
    // A flipped signature bit.
    let forged = with_link(&chain, 0, |cap| {
        let mut bytes = *cap.signature.as_bytes();
        bytes[10] ^= 1;
        cap.signature = Signature::from_bytes(bytes);
    });
    assert_eq!(
        t.check(&forged, "apps/chat"),
        Err(WritecapError::BadSignature { link: 0 })
    );
    // A later expiry with the old signature.
    let forged = with_link(&chain, 1, |cap| cap.validity.expires += HOUR);
    assert_eq!(
        t.check(&forged, "apps/chat"),
        Err(WritecapError::BadSignature { link: 1 })
    );
}

#[test]
fn prefix_outside_the_issuers() {
    let t = Tree::new();
    let first = Chain::root_grant(&t.root, t.admin.principal(), t.path("apps"), valid());
    // Signed honestly by admin, but for a sibling of what admin holds.
    let mut links = first.links().to_vec();
    links.push(Writecap::issue(
        &t.admin,
        t.node.principal(),
        t.path("photos"),
        valid(),
    ));
    let chain = Chain::from_links(links);
    assert_eq!(
        t.check(&chain, "photos"),
        Err(WritecapError::PrefixOutside {
            link: 1,
            prefix: t.path("photos")
        })
    );
    // Widening is outside too.
    let mut links = first.links().to_vec();
    links.push(Writecap::issue(
        &t.admin,
        t.node.principal(),
        t.base.clone(),
        valid(),
    ));
    assert!(matches!(
        t.check(&Chain::from_links(links), "apps"),
        Err(WritecapError::PrefixOutside { link: 1, .. })
    ));
    // `delegate` refuses to build such a chain at all.
    assert!(matches!(
        first.delegate(&t.admin, t.node.principal(), t.path("photos"), valid(), NOW),
        Err(WritecapError::PrefixOutside { link: 1, .. })
    ));
}

#[test]
fn root_grant_outside_the_roots_tree() {
    let t = Tree::new();
    let other = Tree::new();
    // The root grants a prefix in someone else's tree.
    let chain = Chain::root_grant(&t.root, t.node.principal(), other.path("x"), valid());
    assert!(matches!(
        chain.verify(
            &other.path("x"),
            &t.node.principal(),
            NOW,
            &Revocations::default()
        ),
        Err(WritecapError::NotRooted { .. })
    ));
    let links = vec![Writecap::issue(
        &t.root,
        t.node.principal(),
        other.path("x"),
        valid(),
    )];
    assert!(matches!(
        t.check(&Chain::from_links(links), "x"),
        Err(WritecapError::PrefixOutside { link: 0, .. })
    ));
}

#[test]
fn not_rooted_at_the_paths_root() {
    let t = Tree::new();
    let impostor = SigningKey::generate();
    // Someone else "grants" a prefix of t's tree.
    let chain = Chain::from_links(vec![Writecap::issue(
        &impostor,
        t.node.principal(),
        t.path("apps"),
        valid(),
    )]);
    assert_eq!(
        t.check(&chain, "apps"),
        Err(WritecapError::NotRooted {
            expected: t.root.principal(),
            found: impostor.principal()
        })
    );
}

#[test]
fn broken_link() {
    let t = Tree::new();
    let stranger = SigningKey::generate();
    let first = Chain::root_grant(&t.root, t.admin.principal(), t.path("apps"), valid());
    let mut links = first.links().to_vec();
    links.push(Writecap::issue(
        &stranger,
        t.node.principal(),
        t.path("apps/chat"),
        valid(),
    ));
    assert_eq!(
        t.check(&Chain::from_links(links), "apps/chat"),
        Err(WritecapError::BrokenLink {
            link: 1,
            issuer: stranger.principal()
        })
    );
}

#[test]
fn expired() {
    let t = Tree::new();
    let chain = t.chain();
    let later = NOW + HOUR;
    assert_eq!(
        chain.verify(
            &t.path("apps/chat"),
            &t.node.principal(),
            later,
            &Revocations::default()
        ),
        Err(WritecapError::Expired {
            link: 0,
            expires: NOW + HOUR,
            now: later
        })
    );
    // Only the middle link expired.
    let first = Chain::root_grant(&t.root, t.admin.principal(), t.path("apps"), valid());
    let short = Validity {
        not_before: NOW - 2 * HOUR,
        expires: NOW - HOUR,
    };
    let mut links = first.links().to_vec();
    links.push(Writecap::issue(
        &t.admin,
        t.node.principal(),
        t.path("apps/chat"),
        short,
    ));
    assert!(matches!(
        t.check(&Chain::from_links(links), "apps/chat"),
        Err(WritecapError::Expired { link: 1, .. })
    ));
}

#[test]
fn not_yet_valid() {
    let t = Tree::new();
    let future = Validity {
        not_before: NOW + 60,
        expires: NOW + HOUR,
    };
    let chain = Chain::root_grant(&t.root, t.node.principal(), t.path("apps"), future);
    assert_eq!(
        t.check(&chain, "apps"),
        Err(WritecapError::NotYetValid {
            link: 0,
            not_before: NOW + 60,
            now: NOW
        })
    );
}

#[test]
fn revoked_cap_and_revoked_principal() {
    let t = Tree::new();
    let chain = t.chain();
    let path = t.path("apps/chat");
    let mut revocations = Revocations::default();
    let list = RevocationList::issue(&t.root, 1, NOW, vec![chain.links()[1].id()], vec![]).unwrap();
    revocations.insert(&list).unwrap();
    assert_eq!(
        chain.verify(&path, &t.node.principal(), NOW, &revocations),
        Err(WritecapError::Revoked { link: 1 })
    );
    // Revoking the admin principal cuts everything it delegated.
    let list = RevocationList::issue(&t.root, 2, NOW, vec![], vec![t.admin.principal()]).unwrap();
    revocations.insert(&list).unwrap();
    assert_eq!(
        chain.verify(&path, &t.node.principal(), NOW, &revocations),
        Err(WritecapError::Revoked { link: 0 })
    );
    // A list from another root has no say over this tree, and a stale list is refused.
    let mut others = Revocations::default();
    let foreign = RevocationList::issue(
        &SigningKey::generate(),
        1,
        NOW,
        vec![chain.links()[0].id()],
        vec![],
    )
    .unwrap();
    others.insert(&foreign).unwrap();
    chain
        .verify(&path, &t.node.principal(), NOW, &others)
        .unwrap();
    let old = RevocationList::issue(&t.root, 1, NOW, vec![], vec![]).unwrap();
    assert!(matches!(
        revocations.insert(&old),
        Err(crate::RevocationError::Stale { have: 2, got: 1 })
    ));
}

#[test]
fn an_issuer_revokes_what_it_delegated_and_nothing_above_it() {
    let t = Tree::new();
    let chain = t.chain();
    let path = t.path("apps/chat");
    let node = t.node.principal();
    // The admin issued link 1: its list revokes it, by id or by subject.
    for (caps, principals) in [(vec![chain.links()[1].id()], vec![]), (vec![], vec![node])] {
        let mut revocations = Revocations::default();
        let list = RevocationList::issue(&t.admin, 1, NOW, caps, principals).unwrap();
        revocations.insert(&list).unwrap();
        assert_eq!(
            chain.verify(&path, &node, NOW, &revocations),
            Err(WritecapError::Revoked { link: 1 })
        );
    }
    // Nobody revokes a link above their own: the node's list naming the admin's link or
    // the admin, and the admin's naming its own link, change nothing.
    for (issuer, caps, principals) in [
        (
            &t.node,
            vec![chain.links()[0].id()],
            vec![t.admin.principal()],
        ),
        (
            &t.admin,
            vec![chain.links()[0].id()],
            vec![t.admin.principal()],
        ),
    ] {
        let mut revocations = Revocations::default();
        let list = RevocationList::issue(issuer, 1, NOW, caps, principals).unwrap();
        revocations.insert(&list).unwrap();
        chain.verify(&path, &node, NOW, &revocations).unwrap();
    }
    // A list is the newest of its issuer only: the root's and the admin's both hold.
    let mut revocations = Revocations::default();
    let admins = RevocationList::issue(&t.admin, 5, NOW, vec![], vec![node]).unwrap();
    let roots = RevocationList::issue(&t.root, 1, NOW, vec![], vec![]).unwrap();
    revocations.insert(&admins).unwrap();
    revocations.insert(&roots).unwrap();
    assert_eq!(revocations.lists().count(), 2);
    assert_eq!(revocations.get(&t.admin.principal()), Some(&admins));
    assert_eq!(
        chain.verify(&path, &node, NOW, &revocations),
        Err(WritecapError::Revoked { link: 1 })
    );
}

#[test]
fn shared_revocations_move_their_generation_only_when_a_list_is_taken() {
    let t = Tree::new();
    let shared = crate::SharedRevocations::default();
    assert_eq!(shared.generation(), 0);
    let list = RevocationList::issue(&t.root, 1, NOW, vec![], vec![t.node.principal()]).unwrap();
    shared.insert(&list).unwrap();
    assert_eq!(shared.generation(), 1);
    assert!(shared.insert(&list).is_err());
    assert_eq!(shared.generation(), 1);
    assert_eq!(
        t.chain().verify(
            &t.path("apps/chat"),
            &t.node.principal(),
            NOW,
            &shared.read()
        ),
        Err(WritecapError::Revoked { link: 1 })
    );
}

#[test]
fn forged_revocation_list_is_refused() {
    let t = Tree::new();
    let list = RevocationList::issue(&t.root, 1, NOW, vec![], vec![t.node.principal()]).unwrap();
    let mut bytes = cbor4ii::serde::to_vec(Vec::new(), &list).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1; // last byte of the signature
    let forged: RevocationList = cbor4ii::serde::from_slice(&bytes).unwrap();
    assert_eq!(
        Revocations::default().insert(&forged),
        Err(crate::RevocationError::BadSignature)
    );
}

#[test]
fn too_long() {
    let t = Tree::new();
    let mut keys = vec![SigningKey::generate()];
    let mut chain = Chain::root_grant(&t.root, keys[0].principal(), t.base.clone(), valid());
    for _ in 1..MAX_CHAIN_LEN {
        let next = SigningKey::generate();
        chain = chain
            .delegate(
                keys.last().unwrap(),
                next.principal(),
                t.base.clone(),
                valid(),
                NOW,
            )
            .unwrap();
        keys.push(next);
    }
    assert_eq!(chain.links().len(), MAX_CHAIN_LEN);
    let last = keys.last().unwrap();
    chain
        .verify(&t.base, &last.principal(), NOW, &Revocations::default())
        .unwrap();
    assert_eq!(
        chain.delegate(last, t.node.principal(), t.base.clone(), valid(), NOW),
        Err(WritecapError::TooLong {
            len: MAX_CHAIN_LEN + 1
        })
    );
}

#[test]
fn path_outside_the_grant() {
    let t = Tree::new();
    assert_eq!(
        t.check(&t.chain(), "apps/chatter"),
        Err(WritecapError::PathOutside {
            path: t.path("apps/chatter"),
            prefix: t.path("apps/chat")
        })
    );
    // A path in another tree is not rooted at this chain's root.
    let other = Tree::new();
    assert!(matches!(
        t.chain().verify(
            &other.path("apps/chat"),
            &t.node.principal(),
            NOW,
            &Revocations::default()
        ),
        Err(WritecapError::NotRooted { .. })
    ));
}

#[test]
fn wrong_holder() {
    let t = Tree::new();
    assert_eq!(
        t.chain().verify(
            &t.path("apps/chat"),
            &t.admin.principal(),
            NOW,
            &Revocations::default()
        ),
        Err(WritecapError::WrongHolder {
            subject: t.node.principal(),
            holder: t.admin.principal()
        })
    );
}

#[test]
fn malformed() {
    let t = Tree::new();
    assert!(matches!(
        t.check(&Chain::from_links(vec![]), "apps"),
        Err(WritecapError::Malformed(_))
    ));
    let inverted = Validity {
        not_before: NOW + 1,
        expires: NOW - 1,
    };
    let chain = Chain::root_grant(&t.root, t.node.principal(), t.path("apps"), inverted);
    assert!(matches!(
        t.check(&chain, "apps"),
        Err(WritecapError::Malformed(_))
    ));
}

#[test]
fn remembered_links_still_get_every_other_check_and_forgeries_are_refused() {
    let t = Tree::new();
    let chain = t.chain();
    let path = t.path("apps/chat");
    let holder = t.node.principal();
    let none = Revocations::default();
    // Twice: the second time the links' signatures come from the memo.
    for _ in 0..2 {
        chain
            .verify_remembering(&path, &holder, NOW, &none)
            .unwrap();
    }
    // A remembered link altered in any signed field, or its signature, is a new id: its
    // signature is checked and fails.
    let forged = with_link(&chain, 1, |cap| cap.prefix = t.path("apps"));
    assert_eq!(
        forged.verify_remembering(&path, &holder, NOW, &none),
        Err(WritecapError::BadSignature { link: 1 })
    );
    let forged = with_link(&chain, 0, |cap| cap.validity.expires += HOUR);
    assert_eq!(
        forged.verify_remembering(&path, &holder, NOW, &none),
        Err(WritecapError::BadSignature { link: 0 })
    );
    let forged = with_link(&chain, 1, |cap| {
        let mut bytes = *cap.signature.as_bytes();
        bytes[3] ^= 1;
        cap.signature = Signature::from_bytes(bytes);
    });
    assert_eq!(
        forged.verify_remembering(&path, &holder, NOW, &none),
        Err(WritecapError::BadSignature { link: 1 })
    );
    // Time, holder, path and revocations are checked every time.
    assert!(matches!(
        chain.verify_remembering(&path, &holder, NOW + HOUR, &none),
        Err(WritecapError::Expired { .. })
    ));
    assert!(matches!(
        chain.verify_remembering(&path, &t.admin.principal(), NOW, &none),
        Err(WritecapError::WrongHolder { .. })
    ));
    assert!(matches!(
        chain.verify_remembering(&t.path("apps/mail"), &holder, NOW, &none),
        Err(WritecapError::PathOutside { .. })
    ));
    let mut revoked = Revocations::default();
    let list = RevocationList::issue(&t.root, 1, NOW, vec![chain.links()[1].id()], vec![]).unwrap();
    revoked.insert(&list).unwrap();
    assert_eq!(
        chain.verify_remembering(&path, &holder, NOW, &revoked),
        Err(WritecapError::Revoked { link: 1 })
    );
}
