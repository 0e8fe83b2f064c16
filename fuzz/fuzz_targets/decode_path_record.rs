//! `dht::PathRecord` from the network (Kademlia PUT requests and GET answers): never a
//! panic, every accepted record encodes back to itself, verifying it returns, and the
//! record store refuses or accepts the same bytes as a Kademlia record without panicking,
//! whichever key they arrive under.

#![no_main]

use std::cell::RefCell;

use dht::{Inserted, PathRecord, Store, key_of};
use keys::{Path, Principal, Revocations};
use libfuzzer_sys::fuzz_target;
use libp2p::kad::{self, store::RecordStore};
use protocols::wire;

thread_local! {
    // One store for the whole run, emptied after every input: opening a redb database
    // costs far more than checking a record, and would set the fuzzer's pace.
    static STORE: RefCell<Store> =
        RefCell::new(Store::in_memory(16));
}

fuzz_target!(|data: &[u8]| {
    let none = Revocations::default();
    let decoded = wire::decode::<PathRecord>(data).ok();
    if let Some(record) = &decoded {
        let bytes = wire::encode(record).expect("an accepted path record encodes");
        assert_eq!(wire::decode::<PathRecord>(&bytes).as_ref(), Ok(record));
        let _ = record.verify(record.expires().saturating_sub(1), &none);
    }

    // The same bytes as a Kademlia record value, under a fixed key and under the key of
    // the decoded record's own path (the only one that gets past the key check).
    let mut keys_to_try = vec![key_of(&Path::root_of(Principal::from_bytes([7; 32])))];
    if let Some(record) = &decoded {
        keys_to_try.push(key_of(record.path()));
    }
    // Just before the record expires, so that a record stale by the clock still reaches
    // the chain and signature checks.
    let now = decoded
        .as_ref()
        .map_or_else(keys::now, |r| r.expires().saturating_sub(1));
    STORE.with_borrow_mut(|store| {
        let mut stored = Vec::new();
        for key in &keys_to_try {
            let _ = PathRecord::from_kad(key, data, now, &none);
            let _ = PathRecord::from_kad(key, data, keys::now(), &none);
            // Twice: the second time is a republication of a record the store now holds.
            for _ in 0..2 {
                let inserted = store.insert(kad::Record::new(key.clone(), data.to_vec()));
                if let Ok(Inserted::New) = inserted {
                    assert!(store.get(key).is_some(), "a stored record is served");
                    stored.push(key.clone());
                }
            }
        }
        for key in &stored {
            store.remove(key);
        }
        assert!(store.is_empty(), "every stored record was removed");
    });
});
