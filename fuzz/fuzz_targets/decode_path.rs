//! `keys::Path` from the wire (CBOR) and from text: never a panic, and every accepted
//! path prints, parses and encodes back to itself.

#![no_main]

use keys::Path;
use libfuzzer_sys::fuzz_target;
use protocols::wire;

fuzz_target!(|data: &[u8]| {
    let decoded = wire::decode::<Path>(data).ok();
    let parsed = std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.parse::<Path>().ok());
    for path in decoded.iter().chain(&parsed) {
        let text = path.to_string();
        assert_eq!(text.len(), path.text_len());
        assert_eq!(text.parse::<Path>().as_ref(), Ok(path));
        let bytes = wire::encode(path).expect("an accepted path encodes");
        assert_eq!(wire::decode::<Path>(&bytes).as_ref(), Ok(path));
    }
});
