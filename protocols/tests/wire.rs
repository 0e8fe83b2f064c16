//! Round trips for every message type, and every way `decode` refuses input.

#![allow(clippy::unwrap_used)]

use keys::limits::{MAX_CHAIN_LEN, MAX_PATH_BYTES};
use keys::{
    Chain, DataKey, Identity, Path, Principal, PublicIdentity, Readcap, RevocationList, SigningKey,
    Validity, Writecap,
};
use proptest::prelude::*;
use protocols::wire::{self, DecodeError, Message};

fn principal() -> impl Strategy<Value = Principal> {
    any::<[u8; 32]>().prop_map(Principal::from_bytes)
}

fn segment() -> impl Strategy<Value = String> {
    "[^/\0]{1,24}".prop_filter("dot segments", |s| s != "." && s != "..")
}

fn path_under(root: Principal) -> impl Strategy<Value = Path> {
    prop::collection::vec(segment(), 0..6).prop_map(move |segments| {
        segments
            .iter()
            .fold(Path::root_of(root), |p, s| p.join(s).unwrap())
    })
}

fn path() -> impl Strategy<Value = Path> {
    principal().prop_flat_map(path_under)
}

fn validity() -> impl Strategy<Value = Validity> {
    (any::<u64>(), any::<u64>()).prop_map(|(not_before, expires)| Validity {
        not_before,
        expires,
    })
}

fn key() -> impl Strategy<Value = SigningKey> {
    any::<[u8; 32]>().prop_map(|seed| SigningKey::from_bytes(&seed))
}

fn writecap() -> impl Strategy<Value = Writecap> {
    (key(), principal(), path(), validity()).prop_map(|(issuer, subject, prefix, validity)| {
        Writecap::issue(&issuer, subject, prefix, validity)
    })
}

fn chain() -> impl Strategy<Value = Chain> {
    prop::collection::vec(writecap(), 1..=MAX_CHAIN_LEN).prop_map(Chain::from_links)
}

fn revocation_list() -> impl Strategy<Value = RevocationList> {
    (
        key(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(writecap(), 0..8),
        prop::collection::vec(principal(), 0..32),
    )
        .prop_map(|(root, sequence, at, caps, principals)| {
            let ids = caps.iter().map(Writecap::id).collect();
            RevocationList::issue(&root, sequence, at, ids, principals).unwrap()
        })
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(value: &M) -> Result<(), TestCaseError> {
    let bytes = wire::encode(value).unwrap();
    prop_assert!(bytes.len() <= M::MAX_BYTES);
    prop_assert_eq!(&wire::decode::<M>(&bytes).unwrap(), value);
    // Any truncation is refused, never a panic.
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        prop_assert!(wire::decode::<M>(&bytes[..cut]).is_err());
    }
    let mut trailing = bytes.clone();
    trailing.push(0xf6);
    prop_assert_eq!(
        wire::decode::<M>(&trailing),
        Err(DecodeError::TrailingBytes {
            what: M::NAME,
            count: 1
        })
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn principals(p in principal()) { round_trip(&p)?; }

    #[test]
    fn paths(p in path()) { round_trip(&p)?; }

    #[test]
    fn writecaps(w in writecap()) { round_trip(&w)?; }

    #[test]
    fn chains(c in chain()) { round_trip(&c)?; }

    #[test]
    fn revocation_lists(r in revocation_list()) { round_trip(&r)?; }

    #[test]
    fn readcaps(context in prop::collection::vec(any::<u8>(), 0..64)) {
        let recipient = Identity::generate();
        let readcap = Readcap::seal(&DataKey::generate(), &recipient.public(), &context).unwrap();
        round_trip(&readcap)?;
    }

    #[test]
    fn public_identities(_ in Just(())) {
        let public = Identity::generate().public();
        let bytes = wire::encode(&public).unwrap();
        let back = wire::decode::<PublicIdentity>(&bytes).unwrap();
        back.verify().unwrap();
        prop_assert_eq!(back.principal(), public.principal());
        prop_assert_eq!(wire::encode(&back).unwrap(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode::<Principal>(&bytes);
        let _ = wire::decode::<Path>(&bytes);
        let _ = wire::decode::<Chain>(&bytes);
        let _ = wire::decode::<RevocationList>(&bytes);
        let _ = wire::decode::<Readcap>(&bytes);
        let _ = wire::decode::<PublicIdentity>(&bytes);
    }
}

fn some_path() -> Path {
    Path::root_of(SigningKey::generate().principal())
        .join("a")
        .unwrap()
}

#[test]
fn unknown_version_is_refused_before_the_value() {
    // Version 2 followed by garbage: the version is what gets reported.
    let mut bytes = keys::cbor::to_vec(&(2u16, "not even a path")).unwrap();
    assert_eq!(
        wire::decode::<Path>(&bytes),
        Err(DecodeError::UnknownVersion {
            what: "path",
            found: 2,
            expected: 1
        })
    );
    bytes = keys::cbor::to_vec(&(0u16, some_path())).unwrap();
    assert!(matches!(
        wire::decode::<Path>(&bytes),
        Err(DecodeError::UnknownVersion { found: 0, .. })
    ));
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let bytes = vec![0u8; MAX_PATH_BYTES + 1];
    assert_eq!(
        wire::decode::<Path>(&bytes),
        Err(DecodeError::TooLarge {
            what: "path",
            len: MAX_PATH_BYTES + 1,
            max: MAX_PATH_BYTES
        })
    );
}

#[test]
fn invalid_values_are_refused() {
    // A path string that breaks the parser's rules.
    let bytes = keys::cbor::to_vec(&(1u16, "/relative/../path")).unwrap();
    assert!(matches!(
        wire::decode::<Path>(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
    // An empty chain, and one link too many.
    let bytes = keys::cbor::to_vec(&(1u16, Vec::<Writecap>::new())).unwrap();
    assert!(matches!(
        wire::decode::<Chain>(&bytes),
        Err(DecodeError::Invalid { .. })
    ));
    let root = SigningKey::generate();
    let cap = Writecap::issue(
        &root,
        root.principal(),
        Path::root_of(root.principal()),
        Validity::for_seconds(60),
    );
    let long = Chain::from_links(vec![cap; MAX_CHAIN_LEN + 1]);
    let bytes = keys::cbor::to_vec(&(1u16, &long)).unwrap();
    assert!(matches!(
        wire::decode::<Chain>(&bytes),
        Err(DecodeError::Invalid { .. })
    ));
    // Extra elements after [version, value].
    let bytes = keys::cbor::to_vec(&(1u16, some_path(), 7u8)).unwrap();
    assert!(matches!(
        wire::decode::<Path>(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
    // A principal of the wrong length.
    let bytes = keys::cbor::to_vec(&(1u16, serde_bytes::Bytes::new(&[1; 31]))).unwrap();
    assert!(matches!(
        wire::decode::<Principal>(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn revocation_list_at_the_entry_limit_fits_the_byte_limit() {
    let root = SigningKey::generate();
    let list = RevocationList::issue(
        &root,
        1,
        0,
        vec![],
        numbered_principals(keys::limits::MAX_REVOCATIONS),
    )
    .unwrap();
    // At the entry limit it still fits the byte limit.
    let bytes = wire::encode(&list).unwrap();
    assert_eq!(wire::decode::<RevocationList>(&bytes).unwrap(), list);
    // One more entry cannot even be signed.
    assert!(
        RevocationList::issue(
            &root,
            2,
            0,
            vec![],
            numbered_principals(keys::limits::MAX_REVOCATIONS + 1)
        )
        .is_err()
    );
}

fn numbered_principals(n: usize) -> Vec<Principal> {
    (0..n as u32)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            Principal::from_bytes(b)
        })
        .collect()
}
