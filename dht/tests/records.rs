//! Path records and the record store: every kind of bad record is refused, good ones
//! persist across a restart.

#![allow(clippy::unwrap_used)]

use dht::{Inserted, PathRecord, RecordError, Store, StoreError, key_of};
use keys::limits::MAX_PATH_RECORD_BYTES;
use keys::{Chain, Path, Revocations, SigningKey, Validity, now};
use libp2p::kad::store::RecordStore;
use libp2p::kad::{KBucketDistance, KBucketKey, RecordKey};
use libp2p::{Multiaddr, PeerId};
use proptest::prelude::*;
use protocols::wire;

struct Fixture {
    root: SigningKey,
    node: SigningKey,
    chain: Chain,
    path: Path,
}

fn fixture() -> Fixture {
    let root = SigningKey::generate();
    let node = SigningKey::generate();
    let granted = Path::root_of(root.principal()).join("services").unwrap();
    let chain = Chain::root_grant(
        &root,
        node.principal(),
        granted.clone(),
        Validity::for_seconds(3600),
    );
    let path = granted.join("chat").unwrap();
    Fixture {
        root,
        node,
        chain,
        path,
    }
}

fn addr() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/4001".parse().unwrap()
}

fn record(f: &Fixture, sequence: u64) -> PathRecord {
    PathRecord::new(
        &f.node,
        f.path.clone(),
        vec![addr()],
        f.chain.clone(),
        sequence,
        now() + 600,
    )
}

fn refused(store: &mut Store, record: libp2p::kad::Record) -> RecordError {
    match store.insert(record.clone()) {
        Err(StoreError::Refused(e)) => {
            // Kademlia's own entry point refuses it too, and nothing is served.
            assert!(store.put(record.clone()).is_err());
            assert!(store.get(&record.key).is_none());
            e
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_valid_record_is_stored_and_served() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let kad = record(&f, 1).to_kad().unwrap();
    assert_eq!(store.insert(kad.clone()).unwrap(), Inserted::New);
    assert_eq!(store.insert(kad.clone()).unwrap(), Inserted::Unchanged);
    assert_eq!(store.get(&key_of(&f.path)).unwrap().value, kad.value);
    assert_eq!(store.path_record(&key_of(&f.path)).unwrap(), record(&f, 1));
    assert_eq!(store.records().count(), 1);
}

#[test]
fn forged_signature_is_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let mut kad = record(&f, 1).to_kad().unwrap();
    let n = kad.value.len();
    kad.value[n - 1] ^= 1; // inside the signature
    assert!(matches!(
        refused(&mut store, kad),
        RecordError::BadSignature { .. }
    ));
}

#[test]
fn chain_for_another_node_is_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let impostor = SigningKey::generate();
    let forged = PathRecord::new(
        &impostor,
        f.path.clone(),
        vec![addr()],
        f.chain.clone(),
        1,
        now() + 600,
    );
    assert!(matches!(
        refused(&mut store, forged.to_kad().unwrap()),
        RecordError::Writecap { .. }
    ));
    // A chain that the root never issued.
    let self_made = Chain::root_grant(
        &impostor,
        impostor.principal(),
        f.path.clone(),
        Validity::for_seconds(60),
    );
    let forged = PathRecord::new(
        &impostor,
        f.path.clone(),
        vec![addr()],
        self_made,
        1,
        now() + 600,
    );
    assert!(matches!(
        refused(&mut store, forged.to_kad().unwrap()),
        RecordError::Writecap { .. }
    ));
}

#[test]
fn path_outside_the_writecap_is_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let outside = Path::root_of(f.root.principal()).join("photos").unwrap();
    let forged = PathRecord::new(
        &f.node,
        outside,
        vec![addr()],
        f.chain.clone(),
        1,
        now() + 600,
    );
    assert!(matches!(
        refused(&mut store, forged.to_kad().unwrap()),
        RecordError::Writecap { .. }
    ));
}

#[test]
fn replayed_lower_sequence_is_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    store.insert(record(&f, 5).to_kad().unwrap()).unwrap();
    let old = record(&f, 4).to_kad().unwrap();
    assert!(matches!(
        store.insert(old),
        Err(StoreError::Refused(RecordError::Stale {
            have: 5,
            got: 4,
            ..
        }))
    ));
    // Same sequence, other content: also refused.
    let mut same = record(&f, 5);
    same = PathRecord::new(
        &f.node,
        same.path().clone(),
        vec![],
        f.chain.clone(),
        5,
        now() + 300,
    );
    assert!(matches!(
        store.insert(same.to_kad().unwrap()),
        Err(StoreError::Refused(RecordError::Stale { .. }))
    ));
    // The held record is still the one served.
    assert_eq!(store.path_record(&key_of(&f.path)).unwrap().sequence(), 5);
    store.insert(record(&f, 6).to_kad().unwrap()).unwrap();
    assert_eq!(store.path_record(&key_of(&f.path)).unwrap().sequence(), 6);
}

#[test]
fn expired_and_too_long_lived_records_are_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let expired = PathRecord::new(
        &f.node,
        f.path.clone(),
        vec![],
        f.chain.clone(),
        1,
        now() - 1,
    );
    assert!(matches!(
        refused(&mut store, expired.to_kad().unwrap()),
        RecordError::Expired { .. }
    ));
    let forever = PathRecord::new(
        &f.node,
        f.path.clone(),
        vec![],
        f.chain.clone(),
        1,
        now() + 10 * 365 * 86400,
    );
    assert!(matches!(
        refused(&mut store, forever.to_kad().unwrap()),
        RecordError::TooLongLived { .. }
    ));
}

#[test]
fn oversized_and_misfiled_records_are_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let mut kad = record(&f, 1).to_kad().unwrap();
    kad.value.resize(MAX_PATH_RECORD_BYTES + 1, 0);
    assert!(matches!(
        refused(&mut store, kad),
        RecordError::Decode(wire::DecodeError::TooLarge { .. })
    ));
    let too_many = PathRecord::new(
        &f.node,
        f.path.clone(),
        vec![addr(); 17],
        f.chain.clone(),
        1,
        now() + 60,
    );
    let bytes = wire::encode(&too_many);
    // Either the encoder refuses it, or every decoder does.
    if let Ok(bytes) = bytes {
        let kad = libp2p::kad::Record::new(key_of(&f.path), bytes);
        assert!(matches!(refused(&mut store, kad), RecordError::Decode(_)));
    }
    // A valid record under another path's key.
    let mut kad = record(&f, 1).to_kad().unwrap();
    kad.key = key_of(&f.path.parent().unwrap());
    assert!(matches!(
        refused(&mut store, kad),
        RecordError::WrongKey { .. }
    ));
}

#[test]
fn revoked_node_is_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let revocations = keys::SharedRevocations::default();
    store.set_revocations(revocations.clone());
    // Stored before the revocation list arrives: no longer served once it has.
    let key = key_of(&f.path);
    store.put(record(&f, 1).to_kad().unwrap()).unwrap();
    assert!(store.get(&key).is_some());
    revocations
        .insert(
            &keys::RevocationList::issue(&f.root, 1, now(), vec![], vec![f.node.principal()])
                .unwrap(),
        )
        .unwrap();
    assert!(store.get(&key).is_none());
    assert!(matches!(
        refused(&mut store, record(&f, 2).to_kad().unwrap()),
        RecordError::Writecap { .. }
    ));
}

/// A held record that no longer holds does not keep its path from the next holder,
/// whatever sequence it claimed: one whose node was revoked (a revoked writer had
/// numbered its record near `u64::MAX` and held the path for good), and one that
/// expired. A sequence further ahead of our clock than a day is refused outright.
#[test]
fn a_record_that_no_longer_holds_gives_way_and_one_from_the_future_is_refused() {
    let f = fixture();
    let mut store = Store::in_memory(100);
    let revocations = keys::SharedRevocations::default();
    store.set_revocations(revocations.clone());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(matches!(
        refused(&mut store, record(&f, u64::MAX).to_kad().unwrap()),
        RecordError::FromTheFuture { .. }
    ));
    assert!(matches!(
        refused(
            &mut store,
            record(&f, now_ms + 2 * 86_400_000).to_kad().unwrap()
        ),
        RecordError::FromTheFuture { .. }
    ));
    // Held with a high sequence, then its node revoked: another node's record for the
    // same path, numbered lower, takes its place.
    store
        .insert(record(&f, now_ms + 3_600_000).to_kad().unwrap())
        .unwrap();
    revocations
        .insert(
            &keys::RevocationList::issue(&f.root, 1, now(), vec![], vec![f.node.principal()])
                .unwrap(),
        )
        .unwrap();
    let next = SigningKey::generate();
    let granted = Path::root_of(f.root.principal()).join("services").unwrap();
    let chain = Chain::root_grant(
        &f.root,
        next.principal(),
        granted,
        Validity::for_seconds(3600),
    );
    let successor = PathRecord::new(
        &next,
        f.path.clone(),
        vec![addr()],
        chain.clone(),
        5,
        now() + 600,
    );
    assert_eq!(
        store.insert(successor.to_kad().unwrap()).unwrap(),
        Inserted::New
    );
    assert_eq!(store.path_record(&key_of(&f.path)).unwrap(), successor);
    // Held until it expired: a lower sequence takes its place after.
    let g = fixture();
    let short = PathRecord::new(
        &g.node,
        g.path.clone(),
        vec![],
        g.chain.clone(),
        100,
        now() + 2,
    );
    store.insert(short.to_kad().unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let later = PathRecord::new(
        &g.node,
        g.path.clone(),
        vec![],
        g.chain.clone(),
        50,
        now() + 600,
    );
    assert_eq!(
        store.insert(later.to_kad().unwrap()).unwrap(),
        Inserted::New
    );
    assert_eq!(store.path_record(&key_of(&g.path)).unwrap(), later);
}

#[test]
fn records_survive_a_restart_and_expired_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.redb");
    let f = fixture();
    let g = fixture();
    let kept = record(&f, 3);
    {
        let mut store = Store::open(&file, 100).unwrap();
        store.insert(kept.to_kad().unwrap()).unwrap();
        let short = PathRecord::new(
            &g.node,
            g.path.clone(),
            vec![],
            g.chain.clone(),
            1,
            // Two seconds: with one, a second that turns between signing and inserting
            // (a loaded machine) makes it expired already.
            now() + 2,
        );
        store.insert(short.to_kad().unwrap()).unwrap();
        assert_eq!(store.len(), 2);
    }
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let store = Store::open(&file, 100).unwrap();
    assert_eq!(store.len(), 1);
    assert_eq!(store.path_record(&key_of(&f.path)).unwrap(), kept);
    assert!(store.get(&key_of(&g.path)).is_none());
}

#[test]
fn a_full_store_says_so() {
    let mut store = Store::in_memory(1);
    store
        .insert(record(&fixture(), 1).to_kad().unwrap())
        .unwrap();
    assert!(matches!(
        store.insert(record(&fixture(), 1).to_kad().unwrap()),
        Err(StoreError::Full(1))
    ));
}

/// A full store makes room from records that no longer hold before it refuses one:
/// expired ones at every refusal, ones whose node was revoked at most once a minute
/// (each such check verifies a chain: offered record after record, a full store
/// verified everything it held for each).
#[test]
fn a_full_store_makes_room_from_what_no_longer_holds_and_checks_chains_once_a_minute() {
    let mut store = Store::in_memory(2);
    let revocations = keys::SharedRevocations::default();
    store.set_revocations(revocations.clone());
    let revoke = |f: &Fixture| {
        revocations
            .insert(
                &keys::RevocationList::issue(&f.root, 1, now(), vec![], vec![f.node.principal()])
                    .unwrap(),
            )
            .unwrap();
    };
    let (a, b, c) = (fixture(), fixture(), fixture());
    store.insert(record(&a, 1).to_kad().unwrap()).unwrap();
    store.insert(record(&b, 1).to_kad().unwrap()).unwrap();
    revoke(&a);
    // Full: the chains are checked, and the revoked node's record gives way.
    let short = PathRecord::new(
        &c.node,
        c.path.clone(),
        vec![],
        c.chain.clone(),
        1,
        now() + 2,
    );
    assert_eq!(
        store.insert(short.to_kad().unwrap()).unwrap(),
        Inserted::New
    );
    // Within the minute the chains are not checked again: b's record stays.
    revoke(&b);
    assert!(matches!(
        store.insert(record(&fixture(), 1).to_kad().unwrap()),
        Err(StoreError::Full(2))
    ));
    // An expired record gives way at once.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_eq!(
        store
            .insert(record(&fixture(), 1).to_kad().unwrap())
            .unwrap(),
        Inserted::New
    );
    assert_eq!(store.len(), 2);
}

/// The record of `f`'s node for the path `f.path/<name>`.
fn record_at(f: &Fixture, name: &str) -> libp2p::kad::Record {
    PathRecord::new(
        &f.node,
        f.path.join(name).unwrap(),
        vec![addr()],
        f.chain.clone(),
        1,
        now() + 600,
    )
    .to_kad()
    .unwrap()
}

fn distance(node: PeerId, key: &RecordKey) -> KBucketDistance {
    KBucketKey::from(node).distance(&KBucketKey::new(key.clone()))
}

/// The keys of `records` nearest `node`, `n` of them, sorted.
fn nearest(node: PeerId, records: &[libp2p::kad::Record], n: usize) -> Vec<RecordKey> {
    let mut keys: Vec<RecordKey> = records.iter().map(|r| r.key.clone()).collect();
    keys.sort_by_key(|k| distance(node, k));
    keys.truncate(n);
    keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    keys
}

fn held(store: &Store) -> Vec<RecordKey> {
    let mut keys: Vec<RecordKey> = store.records().map(|r| r.key.clone()).collect();
    keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    keys
}

/// Thirty records from other nodes, made once (each is a signature).
fn flood() -> &'static [libp2p::kad::Record] {
    static FLOOD: std::sync::LazyLock<Vec<libp2p::kad::Record>> = std::sync::LazyLock::new(|| {
        let f = fixture();
        (0..30)
            .map(|i| record_at(&f, &format!("flood-{i}")))
            .collect()
    });
    &FLOOD
}

/// A full store keeps the records nearest its node, whatever order they came in: a
/// nearer record takes the farthest one's place, a farther one is refused as before.
/// (Anyone can sign valid records under a root of their own: a store that refused every
/// new key once full was one peer's flood away from taking nothing else.)
#[test]
fn a_full_store_keeps_the_records_nearest_its_node() {
    let node = PeerId::random();
    let records = flood();
    let mut store = Store::in_memory(8);
    store.keep_nearest(node).unwrap();
    for record in records {
        let key = record.key.clone();
        let farther_than_all = store.len() == 8
            && held(&store)
                .iter()
                .all(|k| distance(node, k) < distance(node, &key));
        match store.insert(record.clone()) {
            Ok(Inserted::New) => assert!(!farther_than_all),
            Err(StoreError::Full(8)) => assert!(farther_than_all),
            other => panic!("{other:?}"),
        }
        assert!(store.len() <= 8);
    }
    assert_eq!(held(&store), nearest(node, records, 8));
    // A record held is served; one that gave way is not.
    let far = records
        .iter()
        .find(|r| !held(&store).contains(&r.key))
        .unwrap();
    assert!(store.get(&far.key).is_none());
}

/// The node's own record finds room in a store full of others' records nearer than it,
/// and takes the farthest one's place; its own records never give way.
#[test]
fn a_full_store_always_takes_its_own_nodes_records() {
    let own = fixture();
    let node = own.node.peer_id();
    let records = flood();
    let mut store = Store::in_memory(4);
    store.keep_nearest(node).unwrap();
    let ours: Vec<libp2p::kad::Record> = (0..6)
        .map(|i| record_at(&own, &format!("own-{i}")))
        .collect();
    for record in &records[..4] {
        store.insert(record.clone()).unwrap();
    }
    store.insert(ours[0].clone()).unwrap();
    let mut expected = nearest(node, &records[..4], 3);
    expected.push(ours[0].key.clone());
    expected.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    assert_eq!(held(&store), expected);
    // Others' records, near or far, never push it out.
    for record in records {
        let _ = store.insert(record.clone());
        assert!(store.get(&ours[0].key).is_some());
    }
    // Full of its own records, the store refuses even its own next one.
    for record in &ours[1..4] {
        store.insert(record.clone()).unwrap();
    }
    assert!(matches!(
        store.insert(ours[4].clone()),
        Err(StoreError::Full(4))
    ));
    assert!(matches!(
        store.insert(records[0].clone()),
        Err(StoreError::Full(4))
    ));
}

/// What gave way is gone from the file too, and a store opened again keeps the nearest.
#[test]
fn records_that_gave_way_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.redb");
    let node = PeerId::random();
    let records = flood();
    {
        let mut store = Store::open(&file, 5).unwrap();
        store.keep_nearest(node).unwrap();
        for record in &records[..12] {
            let _ = store.insert(record.clone());
        }
    }
    let mut store = Store::open(&file, 5).unwrap();
    store.keep_nearest(node).unwrap();
    assert_eq!(held(&store), nearest(node, &records[..12], 5));
    for record in &records[12..] {
        let _ = store.insert(record.clone());
    }
    assert_eq!(held(&store), nearest(node, records, 5));
}

/// The records that may give way follow every removal, and a held path whose record
/// becomes the node's own stops being one of them.
#[test]
fn what_may_give_way_follows_removals_and_new_publishers() {
    let node = PeerId::random();
    let records = flood();
    let mut store = Store::in_memory(8);
    store.keep_nearest(node).unwrap();
    for record in &records[..16] {
        let _ = store.insert(record.clone());
    }
    // Kademlia removes what it finds expired; the room is taken again by the nearest.
    let before = held(&store);
    for key in &before[..3] {
        store.remove(key);
    }
    let mut candidates: Vec<libp2p::kad::Record> = records[16..].to_vec();
    candidates.extend(
        records
            .iter()
            .filter(|r| before[3..].contains(&r.key))
            .cloned(),
    );
    for record in &records[16..] {
        let _ = store.insert(record.clone());
        assert!(store.len() <= 8);
    }
    assert_eq!(held(&store), nearest(node, &candidates, 8));

    // A path held for another node, then registered by this node: it no longer gives way.
    let f = fixture();
    let own = SigningKey::generate();
    let own_chain = Chain::root_grant(
        &f.root,
        own.principal(),
        Path::root_of(f.root.principal()).join("services").unwrap(),
        Validity::for_seconds(3600),
    );
    let theirs = record(&f, 1).to_kad().unwrap();
    let ours = PathRecord::new(
        &own,
        f.path.clone(),
        vec![addr()],
        own_chain,
        2,
        now() + 600,
    )
    .to_kad()
    .unwrap();
    let mut store = Store::in_memory(2);
    store.keep_nearest(own.peer_id()).unwrap();
    store.insert(theirs).unwrap();
    store.insert(records[0].clone()).unwrap();
    assert_eq!(store.insert(ours.clone()).unwrap(), Inserted::New);
    for record in records {
        let _ = store.insert(record.clone());
        assert_eq!(store.get(&ours.key).unwrap().value, ours.value);
    }
    assert_eq!(store.len(), 2);
}

/// A store opened with a lower limit than it was filled under keeps the nearest it may.
#[test]
fn a_lower_limit_lets_the_farthest_go_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.redb");
    let node = PeerId::random();
    let records = &flood()[..10];
    {
        let mut store = Store::open(&file, 10).unwrap();
        store.keep_nearest(node).unwrap();
        for record in records {
            store.insert(record.clone()).unwrap();
        }
    }
    let mut store = Store::open(&file, 4).unwrap();
    store.keep_nearest(node).unwrap();
    assert_eq!(held(&store), nearest(node, records, 4));
    drop(store);
    let store = Store::open(&file, 10).unwrap();
    assert_eq!(
        held(&store),
        nearest(node, records, 4),
        "gone from the file too"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever the order records come in, a full store ends with the nearest.
    #[test]
    fn a_full_store_keeps_the_nearest_in_any_order(
        order in Just((0..flood().len()).collect::<Vec<usize>>()).prop_shuffle(),
        room in 1usize..12,
    ) {
        let node = PeerId::random();
        let mut store = Store::in_memory(room);
        store.keep_nearest(node).unwrap();
        for &i in &order {
            let _ = store.insert(flood()[i].clone());
        }
        prop_assert_eq!(held(&store), nearest(node, flood(), room));
    }

    #[test]
    fn path_records_round_trip(sequence in any::<u64>(), ttl in 1u64..86_400, n in 0usize..16, port in any::<u16>()) {
        let f = fixture();
        let addrs: Vec<Multiaddr> = (0..n).map(|i| format!("/ip4/10.0.0.{i}/udp/{port}/quic-v1").parse().unwrap()).collect();
        let r = PathRecord::new(&f.node, f.path.clone(), addrs, f.chain.clone(), sequence, now() + ttl);
        let bytes = wire::encode(&r).unwrap();
        prop_assert_eq!(&wire::decode::<PathRecord>(&bytes).unwrap(), &r);
        let back = PathRecord::from_kad(&key_of(&f.path), &bytes, now(), &Revocations::default()).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = wire::decode::<PathRecord>(&bytes);
        let mut store = Store::in_memory(10);
        let _ = store.insert(libp2p::kad::Record::new(key_of(&fixture().path), bytes));
    }
}
