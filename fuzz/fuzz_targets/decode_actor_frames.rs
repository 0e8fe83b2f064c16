//! The actor protocol's stream (`protocols::actor`): arbitrary bytes through the frame
//! decoder as a hello and then frames: never a panic, never a frame over the limit, every
//! accepted message frame writes back to the same bytes (one encoding per message), every
//! other accepted frame encodes back to itself, and a channel's state takes in any
//! sequence of messages.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use protocols::actor::{
    ChannelState, Frame, FrameDecoder, FrameRef, Hello, Publication, decode_frame_ref,
    encode_frame, write_message,
};
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
    let mut channels: HashMap<u32, ChannelState<String>> = HashMap::new();
    while let Ok(Some(bytes)) = decoder.next_frame() {
        match decode_frame_ref(bytes) {
            Ok(FrameRef::Message(message)) => {
                let mut again = Vec::new();
                write_message(message, &mut again).expect("an accepted message writes");
                assert_eq!(&again[4..], bytes);
                let _ = channels
                    .entry(message.channel)
                    .or_default()
                    .expand(&message);
            }
            Ok(FrameRef::Other(frame)) => {
                let mut again = Vec::new();
                encode_frame(&*frame, &mut again).expect("an accepted frame encodes");
                let mut reread = FrameDecoder::new();
                reread.extend(&again);
                assert_eq!(
                    reread.next_message::<Frame>().ok().flatten().as_ref(),
                    Some(&*frame)
                );
            }
            Err(_) => break,
        }
    }
    // Pub-sub publications arrive as whole gossipsub messages.
    if let Ok(publication) = wire::decode::<Publication>(data) {
        let bytes = wire::encode(&publication).expect("an accepted publication encodes");
        assert_eq!(
            wire::decode::<Publication>(&bytes).as_ref(),
            Ok(&publication)
        );
    }
});
