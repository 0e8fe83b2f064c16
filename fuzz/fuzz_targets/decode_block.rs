//! The block protocol (`protocols::block`): arbitrary bytes as a frame header and as
//! request and response bodies: never a panic, never a length over the limit, and every
//! accepted message encodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::block::{
    Request, Response, decode_request, decode_response, encode_request, encode_response, frame_len,
};
use protocols::wire::{EncodeError, Message};

/// Decodes `body` with `decode` and, if it is accepted, encodes it again and checks that
/// the frame decodes to the same value. A message written with shorter keys than ours
/// (CBOR field indices) may grow past the limit when re-encoded; only then may encoding
/// refuse it.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(
    body: &[u8],
    decode: fn(&[u8]) -> Result<M, protocols::wire::DecodeError>,
    encode: fn(&M) -> Result<Vec<u8>, EncodeError>,
) {
    let Ok(message) = decode(body) else {
        return;
    };
    match encode(&message) {
        Ok(frame) => {
            let header: [u8; 4] = frame[..4].try_into().expect("a frame has a header");
            assert_eq!(frame_len(header, M::MAX_BYTES), Ok(frame.len() - 4));
            assert_eq!(decode(&frame[4..]).as_ref(), Ok(&message));
        }
        Err(EncodeError::TooLarge { .. }) if body.len() + 256 > M::MAX_BYTES => {}
        Err(e) => panic!("an accepted {} does not encode: {e}", M::NAME),
    }
}

fuzz_target!(|data: &[u8]| {
    // As a stream: a header, then a body of the length it announces, if it arrived.
    if let Some((header, rest)) = data.split_first_chunk::<4>() {
        for max in [Request::MAX_BYTES, Response::MAX_BYTES] {
            if let Ok(len) = frame_len(*header, max) {
                assert!(len <= max);
                if let Some(body) = rest.get(..len) {
                    round_trip(body, decode_request, encode_request);
                    round_trip(body, decode_response, encode_response);
                }
            }
        }
    }
    // As a whole body.
    round_trip(data, decode_request, encode_request);
    round_trip(data, decode_response, encode_response);
});
