//! The actor protocol's wire format (`/blocktree/actor/1.0.0`): a long-lived stream per
//! peer pair that starts with a [`Hello`] (the sender's writecap chains, verified once and
//! cached by the receiver) and then carries length-framed [`Envelope`]s.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a
//! [`crate::wire`] message. [`FrameDecoder`] takes bytes as they arrive and hands
//! out whole frames, refusing a length over [`MAX_MESSAGE_BYTES`] before buffering it.

use keys::limits::{MAX_CHAIN_BYTES, MAX_MESSAGE_BYTES};
use keys::{Chain, Path};
use serde::{Deserialize, Serialize};

use crate::wire::{self, DecodeError, EncodeError, Message};

/// The libp2p protocol name.
pub const PROTOCOL_NAME: &str = "/blocktree/actor/1.0.0";

/// Most chains one hello may present.
pub const MAX_HELLO_CHAINS: usize = 64;

/// The first message on a stream: the chains that let the sender speak for its actors'
/// paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Writecap chains held by the sending node.
    pub chains: Vec<Chain>,
}

impl Message for Hello {
    const NAME: &'static str = "actor hello";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_HELLO_CHAINS * MAX_CHAIN_BYTES + 64;

    fn validate(&self) -> Result<(), String> {
        if self.chains.len() > MAX_HELLO_CHAINS {
            return Err(format!(
                "{} chains, at most {MAX_HELLO_CHAINS}",
                self.chains.len()
            ));
        }
        Ok(())
    }
}

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Fire and forget.
    Tell,
    /// A request; the reply echoes `id`.
    Ask {
        /// Chosen by the asker, unique among its open asks.
        id: u64,
    },
    /// The answer to the ask with this `id`.
    Reply {
        /// The ask's id.
        id: u64,
    },
    /// The receiver refused the envelope with this sequence number (the payload is the
    /// typed error).
    Refused {
        /// The refused envelope's sequence.
        sequence: u64,
    },
}

/// One message between actors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending actor's path.
    pub from: Path,
    /// The receiving actor's path.
    pub to: Path,
    /// The protocol the session follows.
    pub protocol: String,
    /// The session id, chosen by the session's initiator.
    pub session: u64,
    /// Per-stream sequence number, increasing by one per envelope.
    pub sequence: u64,
    /// Tell, ask, reply or refusal.
    pub kind: Kind,
    /// The message label in the protocol.
    pub label: String,
    /// The payload (CBOR chosen by the protocol).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message for Envelope {
    const NAME: &'static str = "actor envelope";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;
}

/// Appends one frame holding `message` to `out`.
pub fn encode_frame<M: Message>(message: &M, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let bytes = wire::encode(message)?;
    let len = u32::try_from(bytes.len()).map_err(|_| EncodeError::TooLarge {
        what: M::NAME,
        len: bytes.len(),
        max: MAX_MESSAGE_BYTES,
    })?;
    out.reserve(4 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Why a stream's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced more than [`MAX_MESSAGE_BYTES`].
    #[error("a frame of {0} bytes, over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    /// The frame's content is not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held but not yet handed out.
    pub fn pending(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The next whole frame's bytes, if one has arrived. A frame over the limit is an
    /// error as soon as its length is read; the stream should then be closed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let available = &self.buffer[self.start..];
        let Some(header) = available.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        if available.len() < 4 + len {
            return Ok(None);
        }
        let begin = self.start + 4;
        self.start = begin + len;
        Ok(Some(&self.buffer[begin..begin + len]))
    }

    /// The next whole frame, decoded as `M`.
    pub fn next_message<M: Message>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame()? {
            Some(bytes) => Ok(Some(wire::decode(bytes)?)),
            None => Ok(None),
        }
    }

    /// Drops bytes already handed out, keeping what is pending.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keys::{SigningKey, Validity};
    use proptest::prelude::*;

    fn path(name: &str) -> Path {
        Path::root_of(keys::Principal::from_bytes([3; 32]))
            .join(name)
            .unwrap()
    }

    fn envelope(sequence: u64, payload: Vec<u8>) -> Envelope {
        Envelope {
            from: path("a"),
            to: path("b"),
            protocol: "chat/1".into(),
            session: 7,
            sequence,
            kind: Kind::Ask { id: sequence },
            label: "post".into(),
            payload,
        }
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let sent: Vec<Envelope> = payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| envelope(i as u64, p))
                .collect();
            let mut bytes = Vec::new();
            for e in &sent {
                encode_frame(e, &mut bytes).unwrap();
            }
            let mut decoder = FrameDecoder::new();
            let mut received = Vec::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap().min(rest.len());
                decoder.extend(&rest[..n]);
                rest = &rest[n..];
                while let Some(e) = decoder.next_message::<Envelope>().unwrap() {
                    received.push(e);
                }
                decoder.compact();
            }
            prop_assert_eq!(received, sent);
            prop_assert_eq!(decoder.pending(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut decoder = FrameDecoder::new();
            decoder.extend(&bytes);
            while let Ok(Some(_)) = decoder.next_message::<Envelope>() {}
            let _ = wire::decode::<Hello>(&bytes);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_buffered() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&((MAX_MESSAGE_BYTES + 1) as u32).to_be_bytes());
        assert_eq!(
            decoder.next_frame().unwrap_err(),
            FrameError::TooLarge(MAX_MESSAGE_BYTES + 1)
        );
    }

    #[test]
    fn hello_round_trip_and_limit() {
        let root = SigningKey::generate();
        let chain = Chain::root_grant(
            &root,
            root.principal(),
            Path::root_of(root.principal()),
            Validity::for_seconds(60),
        );
        let hello = Hello {
            chains: vec![chain.clone(); 3],
        };
        let mut bytes = Vec::new();
        encode_frame(&hello, &mut bytes).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes);
        assert_eq!(decoder.next_message::<Hello>().unwrap(), Some(hello));
        let too_many = Hello {
            chains: vec![chain; MAX_HELLO_CHAINS + 1],
        };
        let bytes = keys::cbor::to_vec(&(1u16, &too_many)).unwrap();
        assert!(matches!(
            wire::decode::<Hello>(&bytes),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
