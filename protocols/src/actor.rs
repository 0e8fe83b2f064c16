//! The actor protocol's wire format (`/blocktree/actor/1.0.0`): a long-lived stream per
//! peer pair that starts with a [`Hello`] (the sender's writecap chains, verified once and
//! cached by the receiver) and then carries length-framed [`Frame`]s.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a
//! [`crate::wire`] message: the [`Hello`] first, then [`Frame`]s. [`FrameDecoder`] takes bytes as they arrive and hands
//! out whole frames, refusing a length over [`MAX_MESSAGE_BYTES`] before buffering it.

use keys::limits::{MAX_CHAIN_BYTES, MAX_MESSAGE_BYTES};
use keys::{Chain, Path};
use serde::{Deserialize, Serialize};

use crate::session::Violation;
use crate::wire::{self, DecodeError, EncodeError, Message};

/// The libp2p protocol name.
pub const PROTOCOL_NAME: &str = "/blocktree/actor/1.0.0";

/// The one byte a receiver answers a hello with, once it has taken the stream: until it
/// comes, the opener sends nothing else, so a stream dropped unread loses nothing.
pub const WELCOME: u8 = 0x57;

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

/// What a message is.
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
}

/// Most channels one stream may open.
pub const MAX_CHANNELS: u32 = 4096;

/// Longest protocol name or message label.
pub const MAX_NAME_BYTES: usize = 128;

/// Why a receiver refused a message; sent back to the sender in [`Frame::Refused`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The message breaks the session's protocol.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// The receiving actor does not speak the protocol.
    #[error("{actor} does not speak protocol {protocol:?}")]
    UnknownProtocol {
        /// The receiving actor.
        actor: String,
        /// The protocol asked for.
        protocol: String,
    },
    /// No actor lives at the path.
    #[error("no actor at {path}")]
    NoSuchActor {
        /// The path.
        path: String,
    },
    /// The sending node showed no valid writecap for the sender's path.
    #[error("peer {peer} holds no valid writecap for {path}")]
    NotAuthorized {
        /// The claimed sender path.
        path: String,
        /// The peer.
        peer: String,
    },
    /// The actor has too many sessions open.
    #[error("{actor} has too many open sessions")]
    TooManySessions {
        /// The actor.
        actor: String,
    },
    /// The actor failed while handling the ask.
    #[error("{actor} failed: {reason}")]
    Failed {
        /// The actor.
        actor: String,
        /// What it said.
        reason: String,
    },
    /// The actor dropped the ask without replying.
    #[error("{actor} did not reply")]
    NoReply {
        /// The actor.
        actor: String,
    },
}

/// Everything after the first [`Hello`] on an actor stream.
///
/// Paths and protocol names travel once per *channel*: [`Frame::Open`] binds a channel
/// number to `(from, to, protocol)` for the rest of the stream, and every message names
/// its channel. The receiver checks `from` against the sender's verified chains once, at
/// `Open`; a message then costs a table lookup, not a path parse or a signature check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Frame {
    /// More chains (a node that received a new writecap after the stream opened).
    Hello(Hello),
    /// Binds `channel` (the next unused number, starting at 0).
    Open {
        /// The channel number.
        channel: u32,
        /// The sending actor's path.
        from: Path,
        /// The receiving actor's path.
        to: Path,
        /// The protocol of the channel's sessions (empty: untyped).
        protocol: String,
        /// The role the sender plays in them.
        role: String,
    },
    /// One message.
    Message(Envelope),
    /// The receiver refused the message `sequence` that came on `channel` of the
    /// *other* direction's stream.
    Refused {
        /// The channel of the refused message (the refused sender's numbering).
        channel: u32,
        /// Its sequence number.
        sequence: u64,
        /// Its kind (an ask's id lets the asker fail the ask at once).
        kind: Kind,
        /// Why.
        refusal: Refusal,
    },
}

impl Message for Frame {
    const NAME: &'static str = "actor frame";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    fn validate(&self) -> Result<(), String> {
        let (channel, names): (u32, &[&str]) = match self {
            Frame::Hello(hello) => return hello.validate(),
            Frame::Open {
                channel,
                protocol,
                role,
                ..
            } => (*channel, &[protocol.as_str(), role.as_str()]),
            Frame::Message(e) => (e.channel, &[e.label.as_str()]),
            Frame::Refused { channel, .. } => (*channel, &[]),
        };
        if channel >= MAX_CHANNELS {
            return Err(format!("channel {channel}, at most {}", MAX_CHANNELS - 1));
        }
        match names.iter().find(|n| n.len() > MAX_NAME_BYTES) {
            Some(name) => Err(format!(
                "a name of {} bytes, at most {MAX_NAME_BYTES}",
                name.len()
            )),
            None => Ok(()),
        }
    }
}

/// A pub-sub message, as gossipsub carries it: the publishing actor's path with the
/// chain that lets the publishing node (gossipsub's signed source) speak for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The publishing actor.
    pub from: Path,
    /// A chain granting the publishing node a prefix of `from`.
    pub chain: Chain,
    /// The protocol (empty: untyped).
    pub protocol: String,
    /// The role the publisher plays.
    pub role: String,
    /// The session, chosen by the publisher.
    pub session: u64,
    /// The label.
    pub label: String,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message for Publication {
    const NAME: &'static str = "publication";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    fn validate(&self) -> Result<(), String> {
        for name in [&self.protocol, &self.role, &self.label] {
            if name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "a name of {} bytes, at most {MAX_NAME_BYTES}",
                    name.len()
                ));
            }
        }
        Ok(())
    }
}

/// One message on a channel: the hot path, encoded as a CBOR array (no field names) of
/// `[channel, session, sequence, kind, ask id, label, payload]`, kind 0 tell, 1 ask,
/// 2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The channel (its `from`, `to`, protocol and role were bound by [`Frame::Open`]).
    pub channel: u32,
    /// The session, chosen by its initiator.
    pub session: u64,
    /// Per-stream sequence number: 0 for the first message, then one more each time.
    pub sequence: u64,
    /// Tell, ask or reply.
    pub kind: Kind,
    /// The message label in the protocol.
    pub label: String,
    /// The payload (CBOR chosen by the protocol).
    pub payload: Vec<u8>,
}

/// The encoding side of [`Envelope`], borrowing label and payload, so a sender writes
/// straight into its stream buffer without copying the payload first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeRef<'a> {
    /// The channel.
    pub channel: u32,
    /// The session.
    pub session: u64,
    /// Per-stream sequence number.
    pub sequence: u64,
    /// Tell, ask or reply.
    pub kind: Kind,
    /// The label.
    pub label: &'a str,
    /// The payload.
    pub payload: &'a [u8],
}

impl Envelope {
    /// The borrowing form.
    pub fn as_ref(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            channel: self.channel,
            session: self.session,
            sequence: self.sequence,
            kind: self.kind,
            label: &self.label,
            payload: &self.payload,
        }
    }
}

impl Serialize for EnvelopeRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let (tag, id) = kind_parts(self.kind);
        let mut t = serializer.serialize_tuple(7)?;
        t.serialize_element(&self.channel)?;
        t.serialize_element(&self.session)?;
        t.serialize_element(&self.sequence)?;
        t.serialize_element(&tag)?;
        t.serialize_element(&id)?;
        t.serialize_element(self.label)?;
        t.serialize_element(serde_bytes::Bytes::new(self.payload))?;
        t.end()
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seven;
        impl<'de> serde::de::Visitor<'de> for Seven {
            type Value = Envelope;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[channel, session, sequence, kind, id, label, payload]")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Envelope, A::Error> {
                use serde::de::Error;
                let missing = |what: &str| A::Error::custom(format_args!("missing {what}"));
                let channel: u32 = seq.next_element()?.ok_or_else(|| missing("channel"))?;
                let session: u64 = seq.next_element()?.ok_or_else(|| missing("session"))?;
                let sequence: u64 = seq.next_element()?.ok_or_else(|| missing("sequence"))?;
                let tag: u8 = seq.next_element()?.ok_or_else(|| missing("kind"))?;
                let id: u64 = seq.next_element()?.ok_or_else(|| missing("id"))?;
                let kind = match (tag, id) {
                    (0, 0) => Kind::Tell,
                    (1, id) => Kind::Ask { id },
                    (2, id) => Kind::Reply { id },
                    (tag, id) => {
                        return Err(A::Error::custom(format_args!(
                            "no message kind {tag} (with id {id})"
                        )));
                    }
                };
                let label: String = seq.next_element()?.ok_or_else(|| missing("label"))?;
                let payload: serde_bytes::ByteBuf =
                    seq.next_element()?.ok_or_else(|| missing("payload"))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::custom("more than seven fields"));
                }
                Ok(Envelope {
                    channel,
                    session,
                    sequence,
                    kind,
                    label,
                    payload: payload.into_vec(),
                })
            }
        }
        deserializer.deserialize_tuple(7, Seven)
    }
}

/// [`Frame::Message`] borrowing its envelope, encoded by serde (what [`encode_message`]
/// writes by hand; the tests compare them).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "kebab-case")]
enum MessageRef<'a> {
    Message(EnvelopeRef<'a>),
}

/// Appends one frame holding `message` to `out`.
pub fn encode_frame<M: Message>(message: &M, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    append_frame(M::NAME, M::VERSION, M::MAX_BYTES, message, out)
}

/// Appends one [`Frame::Message`] to `out` without copying the payload first.
///
/// Written by hand: the bytes serde would write for the same frame (a test checks they are
/// the same), without serde's per-field calls, on the path every message takes.
pub fn encode_message(envelope: EnvelopeRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    // Everything before the payload, at most: length, prefix, five integers, two string
    // heads, and a label of at most `MAX_NAME_BYTES` (a longer one is written
    // separately and refused below).
    let mut head = [0u8; 4 + MESSAGE_PREFIX.len() + 7 * 9 + MAX_NAME_BYTES];
    let mut at = 4;
    head[at..at + MESSAGE_PREFIX.len()].copy_from_slice(MESSAGE_PREFIX);
    at += MESSAGE_PREFIX.len();
    let (tag, id) = kind_parts(envelope.kind);
    at = put_head(&mut head, at, 0, u64::from(envelope.channel));
    at = put_head(&mut head, at, 0, envelope.session);
    at = put_head(&mut head, at, 0, envelope.sequence);
    at = put_head(&mut head, at, 0, u64::from(tag));
    at = put_head(&mut head, at, 0, id);
    at = put_head(&mut head, at, 3, envelope.label.len() as u64);
    let label = envelope.label.as_bytes();
    let inline = label.len() <= MAX_NAME_BYTES;
    if inline {
        head[at..at + label.len()].copy_from_slice(label);
        at += label.len();
    }
    out.reserve(at + label.len() + 9 + envelope.payload.len());
    out.extend_from_slice(&head[..at]);
    if !inline {
        out.extend_from_slice(label);
    }
    let mut payload_head = [0u8; 9];
    let n = put_head(&mut payload_head, 0, 2, envelope.payload.len() as u64);
    out.extend_from_slice(&payload_head[..n]);
    out.extend_from_slice(envelope.payload);
    close_frame(Frame::NAME, Frame::MAX_BYTES, start, out)
}

/// Writes a CBOR head of major type `major` with argument `value` into `buf` at `at`, in
/// the shortest form (as cbor4ii writes it); returns where it ends. `buf` has room for
/// 9 bytes at `at`.
fn put_head(buf: &mut [u8], at: usize, major: u8, value: u64) -> usize {
    let major = major << 5;
    let (first, len) = if value < 24 {
        (major | value as u8, 0)
    } else if value <= u64::from(u8::MAX) {
        (major | 24, 1)
    } else if value <= u64::from(u16::MAX) {
        (major | 25, 2)
    } else if value <= u64::from(u32::MAX) {
        (major | 26, 4)
    } else {
        (major | 27, 8)
    };
    buf[at] = first;
    buf[at + 1..at + 1 + len].copy_from_slice(&value.to_be_bytes()[8 - len..]);
    at + 1 + len
}

/// How a [`Frame::Message`] of version 1 begins: `[1, {"message": [` + seven fields.
const MESSAGE_PREFIX: &[u8] = b"\x82\x01\xa1\x67message\x87";

fn kind_parts(kind: Kind) -> (u8, u64) {
    match kind {
        Kind::Tell => (0, 0),
        Kind::Ask { id } => (1, id),
        Kind::Reply { id } => (2, id),
    }
}

/// Reads a CBOR head of major type `major` at the front of `bytes`: its argument and the
/// bytes after it. `None` for anything else (another type, an indefinite length).
fn read_head(bytes: &[u8], major: u8) -> Option<(u64, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    if first >> 5 != major {
        return None;
    }
    match first & 0x1f {
        small @ 0..24 => Some((u64::from(small), rest)),
        24 => {
            let (&v, rest) = rest.split_first()?;
            Some((u64::from(v), rest))
        }
        25 => {
            let (v, rest) = rest.split_first_chunk::<2>()?;
            Some((u64::from(u16::from_be_bytes(*v)), rest))
        }
        26 => {
            let (v, rest) = rest.split_first_chunk::<4>()?;
            Some((u64::from(u32::from_be_bytes(*v)), rest))
        }
        27 => {
            let (v, rest) = rest.split_first_chunk::<8>()?;
            Some((u64::from_be_bytes(*v), rest))
        }
        _ => None,
    }
}

/// Reads a definite-length byte or text string of major type `major`.
fn read_string(bytes: &[u8], major: u8) -> Option<(&[u8], &[u8])> {
    let (len, rest) = read_head(bytes, major)?;
    let len = usize::try_from(len).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// A decoded frame whose message, the hot case, borrows its label and payload from the
/// bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// A [`Frame::Message`], borrowed.
    Message(EnvelopeRef<'a>),
    /// Any other frame (a message only when serde had to read it). Boxed: frames are
    /// large, and the hot case should not move their size around per message.
    Owned(Box<Frame>),
}

impl FrameRef<'_> {
    /// The owned frame.
    pub fn into_owned(self) -> Frame {
        match self {
            FrameRef::Message(e) => Frame::Message(Envelope {
                channel: e.channel,
                session: e.session,
                sequence: e.sequence,
                kind: e.kind,
                label: e.label.to_owned(),
                payload: e.payload.to_vec(),
            }),
            FrameRef::Owned(frame) => *frame,
        }
    }
}

/// Decodes a frame; the hot [`Frame::Message`] is read by hand when it is in the form
/// [`encode_message`] writes, anything else goes through serde ([`wire::decode`]). Both
/// accept and refuse the same bytes (a property test checks it).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, DecodeError> {
    decode_frame_ref(bytes).map(FrameRef::into_owned)
}

/// [`decode_frame`] without copying a message's label and payload out of `bytes`.
pub fn decode_frame_ref(bytes: &[u8]) -> Result<FrameRef<'_>, DecodeError> {
    match decode_message(bytes) {
        Some(envelope) => Ok(FrameRef::Message(envelope)),
        None => wire::decode(bytes).map(|frame| FrameRef::Owned(Box::new(frame))),
    }
}

/// The hand-read [`Frame::Message`]: `None` if `bytes` are not exactly one, in the form
/// [`encode_message`] writes, that passes [`Frame::validate`].
fn decode_message(bytes: &[u8]) -> Option<EnvelopeRef<'_>> {
    if bytes.len() > Frame::MAX_BYTES {
        return None;
    }
    let rest = bytes.strip_prefix(MESSAGE_PREFIX)?;
    let (channel, rest) = read_head(rest, 0)?;
    let (session, rest) = read_head(rest, 0)?;
    let (sequence, rest) = read_head(rest, 0)?;
    let (tag, rest) = read_head(rest, 0)?;
    let (id, rest) = read_head(rest, 0)?;
    let (label, rest) = read_string(rest, 3)?;
    let (payload, rest) = read_string(rest, 2)?;
    let kind = match (tag, id) {
        (0, 0) => Kind::Tell,
        (1, id) => Kind::Ask { id },
        (2, id) => Kind::Reply { id },
        _ => return None,
    };
    if !rest.is_empty() {
        return None;
    }
    // What `Frame::validate` checks of a message.
    let channel = u32::try_from(channel).ok().filter(|&c| c < MAX_CHANNELS)?;
    if label.len() > MAX_NAME_BYTES {
        return None;
    }
    Some(EnvelopeRef {
        channel,
        session,
        sequence,
        kind,
        label: std::str::from_utf8(label).ok()?,
        payload,
    })
}

fn append_frame<T: Serialize>(
    what: &'static str,
    version: u16,
    max: usize,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = keys::cbor::append(out, &(version, value)) {
        out.truncate(start);
        return Err(EncodeError::Failed { what, reason: e.0 });
    }
    close_frame(what, max, start, out)
}

/// Writes the length of the frame begun at `start` (4 bytes kept there) into its header,
/// or takes the frame back out if it is over `max`.
fn close_frame(
    what: &'static str,
    max: usize,
    start: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let len = out.len() - start - 4;
    if len > max {
        out.truncate(start);
        return Err(EncodeError::TooLarge { what, len, max });
    }
    // len ≤ max ≤ MAX_MESSAGE_BYTES < u32::MAX.
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
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
    /// Initialised bytes: `[start, end)` holds what is not handed out yet, the rest is
    /// room to read into.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

/// Room kept after a large frame has gone; more is given back.
const KEEP_BYTES: usize = 256 * 1024;

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.unfilled(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Room for at least `min` more bytes, to read into directly; then say how many
    /// arrived with [`FrameDecoder::filled`].
    pub fn unfilled(&mut self, min: usize) -> &mut [u8] {
        self.compact();
        if self.buffer.len() - self.end < min {
            self.buffer.resize(self.end + min, 0);
        }
        &mut self.buffer[self.end..]
    }

    /// Takes `n` bytes written into [`FrameDecoder::unfilled`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buffer.len());
    }

    /// Bytes held but not yet handed out.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next whole frame's bytes, if one has arrived. A frame over the limit is an
    /// error as soon as its length is read; the stream should then be closed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let available = &self.buffer[self.start..self.end];
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

    /// The next whole [`Frame`] (see [`decode_frame`]).
    pub fn next_actor_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        Ok(self.next_actor_frame_ref()?.map(FrameRef::into_owned))
    }

    /// The next whole [`Frame`], a message borrowed from the decoder's buffer (see
    /// [`decode_frame_ref`]).
    pub fn next_actor_frame_ref(&mut self) -> Result<Option<FrameRef<'_>>, FrameError> {
        match self.next_frame()? {
            Some(bytes) => Ok(Some(decode_frame_ref(bytes)?)),
            None => Ok(None),
        }
    }

    /// Moves what is pending to the front, giving back room a large frame took.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buffer.len() > KEEP_BYTES && self.end < KEEP_BYTES {
            self.buffer.truncate(KEEP_BYTES);
            self.buffer.shrink_to_fit();
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

    /// One chain for every generated publication (signing is slow, its shape is not
    /// what these tests vary).
    fn chain() -> &'static Chain {
        static CHAIN: std::sync::OnceLock<Chain> = std::sync::OnceLock::new();
        CHAIN.get_or_init(|| {
            let root = SigningKey::generate();
            Chain::root_grant(
                &root,
                root.principal(),
                Path::root_of(root.principal()),
                Validity::for_seconds(60),
            )
        })
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Tell),
            any::<u64>().prop_map(|id| Kind::Ask { id }),
            any::<u64>().prop_map(|id| Kind::Reply { id }),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (0..MAX_CHANNELS, "[a-z]{1,8}", "[a-z/0-9.]{0,20}").prop_map(
                |(channel, to, protocol)| {
                    Frame::Open {
                        channel,
                        from: path("a"),
                        to: path(&to),
                        protocol,
                        role: "client".into(),
                    }
                }
            ),
            (
                0..MAX_CHANNELS,
                any::<u64>(),
                any::<u64>(),
                kind(),
                "[a-z]{0,12}",
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(channel, session, sequence, kind, label, payload)| {
                    Frame::Message(Envelope {
                        channel,
                        session,
                        sequence,
                        kind,
                        label,
                        payload,
                    })
                }),
            (0..MAX_CHANNELS, any::<u64>(), kind()).prop_map(|(channel, sequence, kind)| {
                Frame::Refused {
                    channel,
                    sequence,
                    kind,
                    refusal: Refusal::NoSuchActor {
                        path: path("x").to_string(),
                    },
                }
            }),
        ]
    }

    fn encode_any(frame: &Frame, out: &mut Vec<u8>) {
        match frame {
            // Messages go through the borrowing encoder, as senders write them.
            Frame::Message(envelope) => encode_message(envelope.as_ref(), out).unwrap(),
            other => encode_frame(other, out).unwrap(),
        }
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            sent in prop::collection::vec(frame(), 1..8),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let mut bytes = Vec::new();
            for f in &sent {
                encode_any(f, &mut bytes);
            }
            let mut decoder = FrameDecoder::new();
            let mut received = Vec::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap().min(rest.len());
                decoder.extend(&rest[..n]);
                rest = &rest[n..];
                while let Some(f) = decoder.next_message::<Frame>().unwrap() {
                    received.push(f);
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
            while let Ok(Some(_)) = decoder.next_message::<Frame>() {}
            let _ = wire::decode::<Hello>(&bytes);
            let _ = wire::decode::<Publication>(&bytes);
        }

        #[test]
        fn publications_round_trip(
            name in "[a-z]{1,8}",
            protocol in "[a-z/0-9]{0,12}",
            role in "[a-z]{0,8}",
            session in any::<u64>(),
            label in "[a-z]{0,12}",
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let publication = Publication {
                from: path(&name),
                chain: chain().clone(),
                protocol,
                role,
                session,
                label,
                payload,
            };
            let bytes = wire::encode(&publication).unwrap();
            prop_assert_eq!(wire::decode::<Publication>(&bytes), Ok(publication));
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
    fn an_oversized_payload_is_refused_by_the_encoder_and_leaves_the_buffer() {
        let payload = vec![0; MAX_MESSAGE_BYTES];
        let mut out = vec![1, 2, 3];
        let message = EnvelopeRef {
            channel: 0,
            session: 0,
            sequence: 0,
            kind: Kind::Tell,
            label: "x",
            payload: &payload,
        };
        assert!(matches!(
            encode_message(message, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(out, [1, 2, 3]);
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            prop_oneof![0..30u32, 0..MAX_CHANNELS, Just(u32::MAX)],
            prop_oneof![0..300u64, any::<u64>()],
            prop_oneof![0..70_000u64, any::<u64>()],
            kind(),
            prop_oneof!["[a-z]{0,30}", "é{0,70}"],
            prop::collection::vec(any::<u8>(), 0..400),
        )
            .prop_map(
                |(channel, session, sequence, kind, label, payload)| Envelope {
                    channel,
                    session,
                    sequence,
                    kind,
                    label,
                    payload,
                },
            )
    }

    proptest! {
        #[test]
        fn messages_written_by_hand_are_what_serde_writes(e in envelope()) {
            let mut by_hand = Vec::new();
            encode_message(e.as_ref(), &mut by_hand).unwrap();
            let mut by_serde = Vec::new();
            append_frame(
                Frame::NAME,
                Frame::VERSION,
                Frame::MAX_BYTES,
                &MessageRef::Message(e.as_ref()),
                &mut by_serde,
            )
            .unwrap();
            prop_assert_eq!(by_hand, by_serde);
        }

        #[test]
        fn messages_read_by_hand_are_what_serde_reads(
            e in envelope(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut frame = Vec::new();
            encode_message(e.as_ref(), &mut frame).unwrap();
            let mut bytes = frame[4..].to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let by_hand = decode_frame(&bytes);
            let by_serde = wire::decode::<Frame>(&bytes);
            prop_assert_eq!(&by_hand, &by_serde);
            if decode_message(&bytes).is_some() {
                prop_assert!(by_serde.is_ok());
            }
        }
    }

    #[test]
    fn a_message_is_a_compact_array() {
        let mut out = Vec::new();
        let envelope = EnvelopeRef {
            channel: 1,
            session: 2,
            sequence: 3,
            kind: Kind::Ask { id: 4 },
            label: "get",
            payload: &[0xaa; 100],
        };
        encode_message(envelope, &mut out).unwrap();
        // 4 length bytes, [1, {"message": [1, 2, 3, 1, 4, "get", h'aa…']}].
        assert!(out.len() < 4 + 100 + 24, "{} bytes", out.len());
        // An unknown kind is refused.
        let bad = keys::cbor::to_vec(&(
            1u16,
            MessageRef::Message(EnvelopeRef {
                kind: Kind::Tell,
                ..envelope
            }),
        ))
        .unwrap();
        let tell_with_id = {
            let mut b = bad.clone();
            // The id of a tell must be 0: patch the encoded id (the 5th element).
            let at = b.iter().position(|&x| x == 0x87).unwrap() + 5;
            b[at] = 9;
            b
        };
        assert!(wire::decode::<Frame>(&bad).is_ok());
        assert!(matches!(
            wire::decode::<Frame>(&tell_with_id),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn channels_and_names_are_bounded() {
        let open = |channel, protocol: &str| Frame::Open {
            channel,
            from: path("a"),
            to: path("b"),
            protocol: protocol.into(),
            role: "r".into(),
        };
        for bad in [
            open(MAX_CHANNELS, "p"),
            open(0, &"p".repeat(MAX_NAME_BYTES + 1)),
        ] {
            let bytes = keys::cbor::to_vec(&(1u16, &bad)).unwrap();
            assert!(matches!(
                wire::decode::<Frame>(&bytes),
                Err(DecodeError::Invalid { .. })
            ));
        }
        let good = open(MAX_CHANNELS - 1, &"p".repeat(MAX_NAME_BYTES));
        assert_eq!(
            wire::decode::<Frame>(&wire::encode(&good).unwrap()),
            Ok(good)
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
