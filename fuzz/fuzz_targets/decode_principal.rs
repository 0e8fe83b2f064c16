//! `keys::Principal` from the wire (CBOR) and from text: never a panic, and every
//! accepted principal prints, parses and encodes back to itself.

#![no_main]

use keys::Principal;
use libfuzzer_sys::fuzz_target;
use protocols::wire;

fuzz_target!(|data: &[u8]| {
    let decoded = wire::decode::<Principal>(data).ok();
    let parsed = std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.parse::<Principal>().ok());
    for principal in decoded.iter().chain(&parsed) {
        let text = principal.to_string();
        assert_eq!(text.parse::<Principal>().as_ref(), Ok(principal));
        let bytes = wire::encode(principal).expect("an accepted principal encodes");
        assert_eq!(wire::decode::<Principal>(&bytes).as_ref(), Ok(principal));
    }
});
