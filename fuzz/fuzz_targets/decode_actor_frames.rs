//! The actor protocol's stream (`protocols::actor`): arbitrary bytes through the frame
//! decoder as hello and envelopes: never a panic, never a frame over the limit, and every
//! accepted message encodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::actor::{Envelope, FrameDecoder, Hello, encode_frame};
use protocols::wire;

fuzz_target!(|data: &[u8]| {
    // Feed in two pieces, split where the first byte says, as a network would.
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut decoder = FrameDecoder::new();
    decoder.extend(&data[..split]);
    decoder.extend(&data[split..]);
    if let Ok(Some(hello)) = decoder.next_message::<Hello>() {
        let bytes = wire::encode(&hello).expect("an accepted hello encodes");
        assert_eq!(wire::decode::<Hello>(&bytes).as_ref(), Ok(&hello));
    }
    while let Ok(Some(envelope)) = decoder.next_message::<Envelope>() {
        let mut frame = Vec::new();
        encode_frame(&envelope, &mut frame).expect("an accepted envelope encodes");
        let mut again = FrameDecoder::new();
        again.extend(&frame);
        assert_eq!(
            again.next_message::<Envelope>().ok().flatten().as_ref(),
            Some(&envelope)
        );
    }
});
