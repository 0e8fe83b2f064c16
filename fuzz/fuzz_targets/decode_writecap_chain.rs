//! `keys::Chain` from the wire: never a panic, every accepted chain encodes back to
//! itself, and verifying it (with values taken from its own links) returns, never panics.

#![no_main]

use keys::{Chain, Path, Revocations};
use libfuzzer_sys::fuzz_target;
use protocols::wire;

fuzz_target!(|data: &[u8]| {
    let Ok(chain) = wire::decode::<Chain>(data) else {
        return;
    };
    let bytes = wire::encode(&chain).expect("an accepted chain encodes");
    assert_eq!(wire::decode::<Chain>(&bytes).as_ref(), Ok(&chain));

    let (Some(first), Some(last)) = (chain.links().first(), chain.links().last()) else {
        return;
    };
    let holder = *chain.holder().expect("a non-empty chain has a holder");
    let now = last.validity().not_before;
    let none = Revocations::default();
    let _ = chain.verify(last.prefix(), &holder, now, &none);
    // The same segments under the first issuer's tree get past the root check.
    let rooted = last
        .prefix()
        .segments()
        .iter()
        .try_fold(Path::root_of(first.issuer().principal()), |p, s| p.join(s));
    if let Ok(path) = rooted {
        let _ = chain.verify(&path, &holder, now, &none);
    }
});
