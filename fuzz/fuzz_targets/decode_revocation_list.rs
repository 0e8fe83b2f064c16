//! `keys::RevocationList` from the wire: never a panic, every accepted list encodes back
//! to itself, and verifying and inserting it return, never panic.

#![no_main]

use keys::{RevocationError, RevocationList, Revocations};
use libfuzzer_sys::fuzz_target;
use protocols::wire;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = wire::decode::<RevocationList>(data) else {
        return;
    };
    let bytes = wire::encode(&list).expect("an accepted revocation list encodes");
    assert_eq!(wire::decode::<RevocationList>(&bytes).as_ref(), Ok(&list));

    let verified = list.verify();
    let mut revocations = Revocations::default();
    assert_eq!(revocations.insert(&list), verified);
    if verified.is_ok() {
        assert!(matches!(
            revocations.insert(&list),
            Err(RevocationError::Stale { .. })
        ));
    }
});
