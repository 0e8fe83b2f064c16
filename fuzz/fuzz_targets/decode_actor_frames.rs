//! The actor protocol's stream (`protocols::actor`): arbitrary bytes through the frame
//! decoder as a hello and then frames: never a panic, never a frame over the limit, every
//! accepted message encodes back to itself, and the hand-read message frames are what
//! serde reads.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::actor::{Frame, FrameDecoder, Hello, Publication, decode_frame, encode_frame};
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
    while let Ok(Some(frame)) = decoder.next_actor_frame() {
        let mut bytes = Vec::new();
        encode_frame(&frame, &mut bytes).expect("an accepted frame encodes");
        let mut again = FrameDecoder::new();
        again.extend(&bytes);
        assert_eq!(
            again.next_message::<Frame>().ok().flatten().as_ref(),
            Some(&frame)
        );
    }
    // The hand-written reader of message frames and serde agree on every input.
    assert_eq!(decode_frame(data), wire::decode::<Frame>(data));
    // Pub-sub publications arrive as whole gossipsub messages.
    if let Ok(publication) = wire::decode::<Publication>(data) {
        let bytes = wire::encode(&publication).expect("an accepted publication encodes");
        assert_eq!(wire::decode::<Publication>(&bytes).as_ref(), Ok(&publication));
    }
});
