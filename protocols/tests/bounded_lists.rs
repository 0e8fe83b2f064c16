//! Lists in frames are counted as they are decoded: a frame of millions of empty elements
//! is refused at the list's head, by the decoder (`Malformed`), before its elements take
//! memory. A 4 MiB hello of empty chains took about 200 MB before it was refused (by the
//! check after decoding, `Invalid`), and a violation's list of alternatives had no bound.

#![allow(clippy::unwrap_used)]

use protocols::actor::{Frame, Hello, Kind, MAX_REFUSAL_BYTES, Refusal, failure_reason};
use protocols::session::{MAX_EXPECTED, Violation};
use protocols::wire::{self, DecodeError};

/// `bytes` with the first `pattern` replaced by `with`.
fn replace(bytes: &[u8], pattern: &[u8], with: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("pattern in the encoding");
    [&bytes[..at], with, &bytes[at + pattern.len()..]].concat()
}

/// A CBOR array of `n` copies of the one-byte `item`.
fn array_of(n: u32, item: u8) -> Vec<u8> {
    let mut out = vec![0x9a];
    out.extend_from_slice(&n.to_be_bytes());
    out.resize(out.len() + n as usize, item);
    out
}

const MANY: u32 = 4_000_000;

#[test]
fn a_hello_of_millions_of_empty_chains_is_refused_at_the_lists_head() {
    let empty = wire::encode(&Hello {
        stream: 1,
        chains: Vec::new(),
    })
    .unwrap();
    // `"chains": []` becomes four million empty chains (0x80 each).
    let hostile = replace(
        &empty,
        b"chains\x80",
        &[b"chains", &array_of(MANY, 0x80)[..]].concat(),
    );
    assert!(hostile.len() > MANY as usize);
    let decoded = wire::decode::<Hello>(&hostile);
    assert!(
        matches!(&decoded, Err(DecodeError::Malformed { reason, .. }) if reason.contains("more than 64 chains")),
        "{decoded:?}"
    );
}

fn unexpected(expected: Vec<String>) -> Frame {
    let violation = Violation::WrongRole {
        protocol: "p/1".into(),
        role: "server".into(),
        label: "x".into(),
        got: "client".into(),
        expected,
    };
    Frame::Refused {
        stream: 1,
        channel: 0,
        sequence: 0,
        kind: Kind::Tell,
        refusal: Refusal::Violation(violation),
    }
}

#[test]
fn a_refusal_naming_millions_of_alternatives_is_refused_at_the_lists_head() {
    let empty = wire::encode(&unexpected(Vec::new())).unwrap();
    // `"expected": []` becomes four million empty strings (0x60 each).
    let hostile = replace(
        &empty,
        b"expected\x80",
        &[b"expected", &array_of(MANY, 0x60)[..]].concat(),
    );
    let decoded = wire::decode::<Frame>(&hostile);
    assert!(
        matches!(&decoded, Err(DecodeError::Malformed { reason, .. }) if reason.contains("more than 64 expected")),
        "{decoded:?}"
    );
    // As many as a violation names decode; one more does not.
    let most = vec!["client".to_string(); MAX_EXPECTED];
    let bytes = wire::encode(&unexpected(most.clone())).unwrap();
    assert_eq!(wire::decode::<Frame>(&bytes).unwrap(), unexpected(most));
    let over = vec!["client".to_string(); MAX_EXPECTED + 1];
    let bytes = wire::encode(&unexpected(over)).unwrap();
    assert!(wire::decode::<Frame>(&bytes).is_err());
}

#[test]
fn a_refusal_is_held_to_its_size_and_a_failure_reason_to_its_length() {
    let failed = |reason: String| Frame::Refused {
        stream: 1,
        channel: 0,
        sequence: 0,
        kind: Kind::Ask { id: 7 },
        refusal: Refusal::Failed {
            actor: "/a/b".into(),
            reason,
        },
    };
    let long = "x".repeat(MAX_REFUSAL_BYTES);
    let bytes = wire::encode(&failed(long.clone())).unwrap();
    assert!(matches!(
        wire::decode::<Frame>(&bytes),
        Err(DecodeError::Invalid { .. })
    ));
    // What our actors fail with is cut to fit, on a character's boundary.
    let cut = failure_reason(&"é".repeat(MAX_REFUSAL_BYTES));
    assert!(cut.len() <= protocols::actor::MAX_REASON_BYTES && cut.len() > 1000);
    assert!(cut.chars().all(|c| c == 'é'));
    let bytes = wire::encode(&failed(cut.clone())).unwrap();
    assert_eq!(wire::decode::<Frame>(&bytes).unwrap(), failed(cut));
    assert_eq!(failure_reason("short"), "short");
}
