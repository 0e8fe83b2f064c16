//! The actor protocol's wire format (`/blocktree/actor/3.0.0`): a long-lived stream per
//! peer pair that starts with a [`Hello`] (the sender's writecap chains, verified once and
//! cached by the receiver) and then carries length-framed messages and [`Frame`]s.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes: the [`Hello`] first
//! (a [`crate::wire`] message), then message frames ([`MessageRef`], the hot path, written
//! by hand) and other [`Frame`]s (CBOR). [`FrameDecoder`] takes bytes as they arrive and
//! hands out whole frames, refusing a length over [`MAX_MESSAGE_BYTES`] before buffering it.

use keys::limits::{MAX_CHAIN_BYTES, MAX_MESSAGE_BYTES};
use keys::{Chain, Path};
use serde::{Deserialize, Serialize};

use crate::session::Violation;
use crate::wire::{self, DecodeError, EncodeError, Message};

/// The libp2p protocol name.
///
/// Version 3 numbers each stream (in its [`Hello`]) and names that number in every
/// [`Frame::Refused`]; version 2 sent messages in compact frames ([`MessageRef`]) but left
/// a refusal to be matched with whichever stream to the peer was open when it came;
/// version 1 sent each message as a CBOR array with its session, sequence number and label.
pub const PROTOCOL_NAME: &str = "/blocktree/actor/3.0.0";

/// The one byte a receiver answers a hello with, once it has taken the stream: until it
/// comes, the opener sends nothing else, so a stream dropped unread loses nothing.
pub const WELCOME: u8 = 0x57;

/// Most chains one hello may present.
pub const MAX_HELLO_CHAINS: usize = 64;

/// The first message on a stream: the chains that let the sender speak for its actors'
/// paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The opener's number for this stream, unique among its streams to this peer: a
    /// refusal of a message sent on it names it, so a refusal that comes back after the
    /// stream was replaced is still read against the channels of the stream it is about.
    /// A later hello on the same stream repeats it.
    pub stream: u64,
    /// Writecap chains held by the sending node (at most [`MAX_HELLO_CHAINS`], counted as
    /// they are decoded: a hello of millions of empty chains held a hundred times its
    /// size in memory before its count was checked).
    #[serde(deserialize_with = "hello_chains")]
    pub chains: Vec<Chain>,
}

fn hello_chains<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Chain>, D::Error> {
    wire::bounded::seq(d, MAX_HELLO_CHAINS, "chains", |c: Chain| c)
}

impl Message for Hello {
    const NAME: &'static str = "actor hello";
    const VERSION: u16 = 2;
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

/// Longest reason a [`Refusal::Failed`] carries: see [`failure_reason`].
pub const MAX_REASON_BYTES: usize = 1024;

/// Largest [`Refusal`] a [`Frame::Refused`] carries (CBOR-encoded). The largest honest
/// one, a violation naming [`crate::session::MAX_EXPECTED`] expected messages, takes
/// about 17 KiB; a refusal of megabytes was logged and queued whole for subscribers.
pub const MAX_REFUSAL_BYTES: usize = 64 * 1024;

/// `reason` cut to [`MAX_REASON_BYTES`] (on a character's boundary), as a
/// [`Refusal::Failed`] carries it.
pub fn failure_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

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

/// Every frame after the first [`Hello`] on an actor stream but messages, which travel in
/// compact frames of their own ([`MessageRef`]).
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
    /// The receiver refused the message `sequence` (the count of messages before it on
    /// its stream) that came on `channel` of the *other* direction's stream `stream`.
    Refused {
        /// The stream the refused message came on (its opener's number, from its hello).
        stream: u64,
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
    const VERSION: u16 = 3;
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
            Frame::Refused {
                channel, refusal, ..
            } => {
                let len = wire::encoded_len(refusal)?;
                if len > MAX_REFUSAL_BYTES {
                    return Err(format!(
                        "a refusal of {len} bytes, at most {MAX_REFUSAL_BYTES}"
                    ));
                }
                (*channel, &[])
            }
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

/// One message, as its sender means it: on `channel`, in `session`, with `label`.
///
/// Its sequence number is not written: the receiver counts the messages before it on the
/// stream, and a [`Frame::Refused`] names it by that count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeRef<'a> {
    /// The channel (its `from`, `to`, protocol and role were bound by [`Frame::Open`]).
    pub channel: u32,
    /// The session, chosen by its initiator.
    pub session: u64,
    /// Tell, ask or reply.
    pub kind: Kind,
    /// The message label in the protocol.
    pub label: &'a str,
    /// The payload (CBOR chosen by the protocol).
    pub payload: &'a [u8],
}

/// One message frame as it travels: the session and the label only when they differ
/// from the channel's previous message's (see [`ChannelState`]).
///
/// The frame's bytes: one tag byte `0000 L S K K` (`KK` the kind: 0 tell, 1 ask, 2 reply;
/// `S` a session follows; `L` a label follows), then, as CBOR unsigned integers in their
/// shortest form, the channel, the session if `S`, the ask id for an ask or a reply;
/// then the label if `L` (a CBOR text string); then the payload, the rest of the frame.
/// Every other frame is CBOR `[version, frame]` and begins with `0x82`, which is no tag.
/// For a 100-byte tell on a steady channel that is 102 bytes, 106 with the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// The channel.
    pub channel: u32,
    /// Tell, ask or reply.
    pub kind: Kind,
    /// The session, when it is not the channel's previous message's.
    pub session: Option<u64>,
    /// The label, when it is not the channel's previous message's.
    pub label: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
}

const TAG_KIND: u8 = 0b0011;
const TAG_SESSION: u8 = 0b0100;
const TAG_LABEL: u8 = 0b1000;

/// What a channel's previous message said, as either end tracks it: the session and
/// label the next message leaves out when they are the same. `L` holds a label (`String`,
/// or a shared string on the receiving side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState<L> {
    session: Option<u64>,
    label: Option<L>,
}

impl<L> Default for ChannelState<L> {
    fn default() -> Self {
        ChannelState {
            session: None,
            label: None,
        }
    }
}

/// A message frame that leaves out what its channel never said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message on channel {channel} without a {what}, and none before it on the channel")]
pub struct MissingContext {
    /// The channel.
    pub channel: u32,
    /// "session" or "label".
    pub what: &'static str,
}

impl<L: AsRef<str> + for<'s> From<&'s str>> ChannelState<L> {
    /// The frame that says `envelope` after what this channel said so far.
    pub fn compact<'a>(&self, envelope: EnvelopeRef<'a>) -> MessageRef<'a> {
        MessageRef {
            channel: envelope.channel,
            kind: envelope.kind,
            session: (self.session != Some(envelope.session)).then_some(envelope.session),
            label: (self.label.as_ref().map(AsRef::as_ref) != Some(envelope.label))
                .then_some(envelope.label),
            payload: envelope.payload,
        }
    }

    /// Takes in what `message` changed, and gives its session and label.
    pub fn expand(&mut self, message: &MessageRef<'_>) -> Result<(u64, &L), MissingContext> {
        let missing = |what| MissingContext {
            channel: message.channel,
            what,
        };
        if let Some(session) = message.session {
            self.session = Some(session);
        }
        if let Some(label) = message.label {
            self.label = Some(L::from(label));
        }
        let session = self.session.ok_or_else(|| missing("session"))?;
        let label = self.label.as_ref().ok_or_else(|| missing("label"))?;
        Ok((session, label))
    }
}

/// Appends one message frame for `envelope` to `out`, leaving out what `state` (the
/// channel's, on this stream) says already, and notes what it said in `state`. On an
/// error nothing is written and `state` is as it was.
pub fn encode_message<L: AsRef<str> + for<'s> From<&'s str>>(
    state: &mut ChannelState<L>,
    envelope: EnvelopeRef<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let message = state.compact(envelope);
    write_message(message, out)?;
    // Cannot fail: `compact` filled in whatever `state` lacked.
    let _ = state.expand(&message);
    Ok(())
}

/// Everything a message frame holds besides its label and payload, at most: the
/// frame's length, its tag and four CBOR heads.
const MESSAGE_HEAD_BYTES: usize = 4 + 1 + 4 * 9;

fn check_label(label: &[u8]) -> Result<(), EncodeError> {
    if label.len() > MAX_NAME_BYTES {
        return Err(EncodeError::Failed {
            what: Frame::NAME,
            reason: format!("a label of {} bytes, at most {MAX_NAME_BYTES}", label.len()),
        });
    }
    Ok(())
}

/// Whether a message with `label` and a payload of `payload` bytes fits a message frame:
/// the limits [`write_message`] holds every message to. Messages between actors on one
/// node, which never become frames, are held to them too, so that what one node takes
/// from its own actors it would also take from the network.
pub fn check_fits(label: &str, payload: usize) -> Result<(), EncodeError> {
    check_label(label.as_bytes())?;
    let len = MESSAGE_HEAD_BYTES - 4 + label.len() + payload;
    if len > Frame::MAX_BYTES {
        return Err(EncodeError::TooLarge {
            what: Frame::NAME,
            len,
            max: Frame::MAX_BYTES,
        });
    }
    Ok(())
}

/// Appends the frame of `message` to `out`.
pub fn write_message(message: MessageRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let refuse = |reason: String| EncodeError::Failed {
        what: Frame::NAME,
        reason,
    };
    if message.channel >= MAX_CHANNELS {
        return Err(refuse(format!(
            "channel {}, at most {}",
            message.channel,
            MAX_CHANNELS - 1
        )));
    }
    let label = message.label.unwrap_or("").as_bytes();
    check_label(label)?;
    let start = out.len();
    // Everything before the label and the payload: length, tag, four CBOR heads (a small
    // array: it is zeroed for every message).
    let mut head = [0u8; MESSAGE_HEAD_BYTES];
    let (kind, id) = match message.kind {
        Kind::Tell => (0, None),
        Kind::Ask { id } => (1, Some(id)),
        Kind::Reply { id } => (2, Some(id)),
    };
    let mut tag = kind;
    if message.session.is_some() {
        tag |= TAG_SESSION;
    }
    if message.label.is_some() {
        tag |= TAG_LABEL;
    }
    head[4] = tag;
    let mut at = put_head(&mut head, 5, 0, u64::from(message.channel));
    if let Some(session) = message.session {
        at = put_head(&mut head, at, 0, session);
    }
    if let Some(id) = id {
        at = put_head(&mut head, at, 0, id);
    }
    if message.label.is_some() {
        at = put_head(&mut head, at, 3, label.len() as u64);
    }
    out.reserve(at + label.len() + message.payload.len());
    out.extend_from_slice(&head[..at]);
    if message.label.is_some() {
        out.extend_from_slice(label);
    }
    out.extend_from_slice(message.payload);
    close_frame(Frame::NAME, Frame::MAX_BYTES, start, out)
}

/// Writes a CBOR head of major type `major` with argument `value` into `buf` at `at`, in
/// the shortest form; returns where it ends. `buf` has room for 9 bytes at `at`.
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

/// Reads a CBOR head of major type `major` at the front of `bytes`, in its shortest form
/// only (so a frame has one encoding): its argument and the bytes after it.
fn read_head(bytes: &[u8], major: u8) -> Result<(u64, &[u8]), &'static str> {
    let (&first, rest) = bytes.split_first().ok_or("truncated")?;
    if first >> 5 != major {
        return Err("not the expected CBOR type");
    }
    let (value, rest, least) = match first & 0x1f {
        small @ 0..24 => return Ok((u64::from(small), rest)),
        24 => {
            let (&v, rest) = rest.split_first().ok_or("truncated")?;
            (u64::from(v), rest, 24)
        }
        25 => {
            let (v, rest) = rest.split_first_chunk::<2>().ok_or("truncated")?;
            (u64::from(u16::from_be_bytes(*v)), rest, 0x100)
        }
        26 => {
            let (v, rest) = rest.split_first_chunk::<4>().ok_or("truncated")?;
            (u64::from(u32::from_be_bytes(*v)), rest, 0x1_0000)
        }
        27 => {
            let (v, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
            (u64::from_be_bytes(*v), rest, 0x1_0000_0000)
        }
        _ => return Err("not a definite CBOR integer"),
    };
    if value < least {
        return Err("an integer not in its shortest form");
    }
    Ok((value, rest))
}

/// A decoded frame: a message (the hot case) borrows its label and payload from the
/// bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// A message frame.
    Message(MessageRef<'a>),
    /// Any other frame. Boxed: frames are large, and the hot case should not move their
    /// size around per message.
    Other(Box<Frame>),
}

/// Decodes a frame: a message frame by its tag byte, anything else as CBOR
/// ([`wire::decode`]).
pub fn decode_frame_ref(bytes: &[u8]) -> Result<FrameRef<'_>, DecodeError> {
    match bytes.first() {
        Some(&tag) if tag & !(TAG_KIND | TAG_SESSION | TAG_LABEL) == 0 => decode_message(bytes)
            .map(FrameRef::Message)
            .map_err(|reason| DecodeError::Malformed {
                what: "actor message",
                reason: reason.to_string(),
            }),
        _ => wire::decode(bytes).map(|frame| FrameRef::Other(Box::new(frame))),
    }
}

/// Reads a message frame, checking what [`write_message`] checks.
fn decode_message(bytes: &[u8]) -> Result<MessageRef<'_>, &'static str> {
    if bytes.len() > Frame::MAX_BYTES {
        return Err("over the frame limit");
    }
    let (&tag, rest) = bytes.split_first().ok_or("empty")?;
    let (channel, mut rest) = read_head(rest, 0)?;
    let channel = u32::try_from(channel)
        .ok()
        .filter(|&c| c < MAX_CHANNELS)
        .ok_or("a channel number over the limit")?;
    let mut session = None;
    if tag & TAG_SESSION != 0 {
        let (value, after) = read_head(rest, 0)?;
        session = Some(value);
        rest = after;
    }
    let kind = match tag & TAG_KIND {
        0 => Kind::Tell,
        kind => {
            let (id, after) = read_head(rest, 0)?;
            rest = after;
            match kind {
                1 => Kind::Ask { id },
                2 => Kind::Reply { id },
                _ => return Err("no such message kind"),
            }
        }
    };
    let mut label = None;
    if tag & TAG_LABEL != 0 {
        let (len, after) = read_head(rest, 3)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= MAX_NAME_BYTES)
            .ok_or("a label over the limit")?;
        let (text, after) = after.split_at_checked(len).ok_or("truncated")?;
        label = Some(std::str::from_utf8(text).map_err(|_| "a label that is not UTF-8")?);
        rest = after;
    }
    Ok(MessageRef {
        channel,
        kind,
        session,
        label,
        payload: rest,
    })
}

/// Appends one frame holding `message` to `out`.
pub fn encode_frame<M: Message>(message: &M, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    append_frame(M::NAME, M::VERSION, M::MAX_BYTES, message, out)
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

    /// The next whole frame, a message borrowed from the decoder's buffer (see
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
    use std::collections::HashMap;

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
            (any::<u64>(), 0..MAX_CHANNELS, any::<u64>(), kind()).prop_map(
                |(stream, channel, sequence, kind)| Frame::Refused {
                    stream,
                    channel,
                    sequence,
                    kind,
                    refusal: Refusal::NoSuchActor {
                        path: path("x").to_string(),
                    },
                }
            ),
        ]
    }

    /// A message as its sender means it, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Sent {
        channel: u32,
        session: u64,
        kind: Kind,
        label: String,
        payload: Vec<u8>,
    }

    impl Sent {
        fn envelope(&self) -> EnvelopeRef<'_> {
            EnvelopeRef {
                channel: self.channel,
                session: self.session,
                kind: self.kind,
                label: &self.label,
                payload: &self.payload,
            }
        }
    }

    /// Messages on a few channels, where sessions and labels often repeat (as they do),
    /// sometimes not.
    fn sent() -> impl Strategy<Value = Sent> {
        (
            prop_oneof![0..4u32, 0..MAX_CHANNELS],
            prop_oneof![0..3u64, any::<u64>()],
            kind(),
            prop_oneof![Just("get".to_string()), "[a-z]{0,30}", "é{0,64}"],
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(channel, session, kind, label, payload)| Sent {
                channel,
                session,
                kind,
                label,
                payload,
            })
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Item {
        Frame(Frame),
        Message(Sent),
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            1 => frame().prop_map(Item::Frame),
            3 => sent().prop_map(Item::Message),
        ]
    }

    proptest! {
        #[test]
        fn streams_survive_any_split(
            items in prop::collection::vec(item(), 1..24),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let mut bytes = Vec::new();
            let mut sending: HashMap<u32, ChannelState<String>> = HashMap::new();
            for item in &items {
                match item {
                    Item::Frame(f) => encode_frame(f, &mut bytes).unwrap(),
                    Item::Message(m) => encode_message(
                        sending.entry(m.channel).or_default(),
                        m.envelope(),
                        &mut bytes,
                    )
                    .unwrap(),
                }
            }
            let mut decoder = FrameDecoder::new();
            let mut receiving: HashMap<u32, ChannelState<String>> = HashMap::new();
            let mut received = Vec::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap().min(rest.len());
                decoder.extend(&rest[..n]);
                rest = &rest[n..];
                while let Some(f) = decoder.next_actor_frame_ref().unwrap() {
                    received.push(match f {
                        FrameRef::Other(frame) => Item::Frame(*frame),
                        FrameRef::Message(m) => {
                            let state = receiving.entry(m.channel).or_default();
                            let (session, label) = state.expand(&m).unwrap();
                            Item::Message(Sent {
                                channel: m.channel,
                                session,
                                kind: m.kind,
                                label: label.clone(),
                                payload: m.payload.to_vec(),
                            })
                        }
                    });
                }
                decoder.compact();
            }
            prop_assert_eq!(received, items);
            prop_assert_eq!(decoder.pending(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut decoder = FrameDecoder::new();
            decoder.extend(&bytes);
            while let Ok(Some(_)) = decoder.next_actor_frame_ref() {}
            let _ = decode_frame_ref(&bytes);
            let _ = wire::decode::<Hello>(&bytes);
            let _ = wire::decode::<Publication>(&bytes);
        }

        /// Whatever message frame the decoder takes (written, then perhaps damaged) is
        /// written back to the same bytes: one encoding per message, nothing unchecked.
        #[test]
        fn a_message_frame_has_one_encoding(
            m in sent(),
            state in prop_oneof![
                Just(None),
                (any::<u64>(), "[a-z]{0,4}").prop_map(Some),
            ],
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut channel = ChannelState::<String>::default();
            if let Some((session, label)) = state {
                let earlier = MessageRef {
                    channel: m.channel,
                    kind: Kind::Tell,
                    session: Some(session),
                    label: Some(&label),
                    payload: &[],
                };
                channel.expand(&earlier).unwrap();
            }
            let mut frame = Vec::new();
            encode_message(&mut channel, m.envelope(), &mut frame).unwrap();
            prop_assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes());
            let mut bytes = frame[4..].to_vec();
            let untouched = edits.is_empty() && !truncate;
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            match decode_frame_ref(&bytes) {
                Ok(FrameRef::Message(read)) => {
                    let mut again = Vec::new();
                    write_message(read, &mut again).unwrap();
                    prop_assert_eq!(&again[4..], &bytes[..]);
                }
                Ok(FrameRef::Other(_)) => prop_assert!(!untouched),
                Err(_) => prop_assert!(!untouched),
            }
        }
    }

    proptest! {
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
    fn a_steady_tell_is_compact() {
        let mut channel = ChannelState::<String>::default();
        let tell = EnvelopeRef {
            channel: 1,
            session: 0x1234_5678_9abc_def0,
            kind: Kind::Tell,
            label: "get",
            payload: &[0xaa; 100],
        };
        let mut first = Vec::new();
        encode_message(&mut channel, tell, &mut first).unwrap();
        // Length, tag, channel, session (9), label (4), payload.
        assert_eq!(first.len(), 4 + 1 + 1 + 9 + 4 + 100);
        let mut next = Vec::new();
        encode_message(&mut channel, tell, &mut next).unwrap();
        assert_eq!(next.len(), 4 + 1 + 1 + 100);
        let ask = EnvelopeRef {
            kind: Kind::Ask { id: 7 },
            label: "put",
            ..tell
        };
        let mut third = Vec::new();
        encode_message(&mut channel, ask, &mut third).unwrap();
        assert_eq!(third[4], 0b1001, "an ask with a new label, same session");
        assert_eq!(third.len(), 4 + 1 + 1 + 1 + 4 + 100);
    }

    #[test]
    fn a_message_without_what_its_channel_never_said_is_refused() {
        let mut channel = ChannelState::<String>::default();
        let bare = MessageRef {
            channel: 3,
            kind: Kind::Tell,
            session: None,
            label: Some("x"),
            payload: b"p",
        };
        assert_eq!(
            channel.expand(&bare),
            Err(MissingContext {
                channel: 3,
                what: "session"
            })
        );
        let mut channel = ChannelState::<String>::default();
        let no_label = MessageRef {
            session: Some(1),
            label: None,
            ..bare
        };
        assert_eq!(channel.expand(&no_label).unwrap_err().what, "label");
    }

    #[test]
    fn oversized_or_out_of_range_messages_are_refused_and_leave_buffer_and_state() {
        let payload = vec![0; MAX_MESSAGE_BYTES];
        let long_label = "l".repeat(MAX_NAME_BYTES + 1);
        let ok = EnvelopeRef {
            channel: 0,
            session: 0,
            kind: Kind::Tell,
            label: "x",
            payload: b"",
        };
        for bad in [
            EnvelopeRef {
                payload: &payload,
                ..ok
            },
            EnvelopeRef {
                label: &long_label,
                ..ok
            },
            EnvelopeRef {
                channel: MAX_CHANNELS,
                ..ok
            },
        ] {
            let mut channel = ChannelState::<String>::default();
            let mut out = vec![1, 2, 3];
            assert!(encode_message(&mut channel, bad, &mut out).is_err());
            assert_eq!(out, [1, 2, 3]);
            assert_eq!(channel, ChannelState::default());
        }
        let mut at_limit = Vec::new();
        let label = "l".repeat(MAX_NAME_BYTES);
        let mut channel = ChannelState::<String>::default();
        encode_message(
            &mut channel,
            EnvelopeRef {
                label: &label,
                channel: MAX_CHANNELS - 1,
                session: u64::MAX,
                kind: Kind::Reply { id: u64::MAX },
                ..ok
            },
            &mut at_limit,
        )
        .unwrap();
        assert!(matches!(
            decode_frame_ref(&at_limit[4..]),
            Ok(FrameRef::Message(MessageRef {
                label: Some(l),
                ..
            })) if l == label
        ));
    }

    #[test]
    fn message_frames_and_cbor_frames_do_not_overlap() {
        // Every CBOR frame is `[version, frame]`: 0x82, never a message tag.
        let refused = Frame::Refused {
            stream: 7,
            channel: 0,
            sequence: 0,
            kind: Kind::Tell,
            refusal: Refusal::NoSuchActor { path: "x".into() },
        };
        let bytes = wire::encode(&refused).unwrap();
        assert_eq!(bytes[0], 0x82);
        assert_eq!(
            decode_frame_ref(&bytes),
            Ok(FrameRef::Other(Box::new(refused)))
        );
        // An ask with a session and a label: channel 0, session 0, id 0, label "".
        assert!(matches!(
            decode_frame_ref(&[0b1101, 0, 0, 0, 0x60]),
            Ok(FrameRef::Message(MessageRef {
                kind: Kind::Ask { id: 0 },
                session: Some(0),
                label: Some(""),
                ..
            }))
        ));
        // Kind 3, and a tag with high bits, are neither.
        for tag in [0b0011, 0b0111, 0b1111, 0x10, 0x40] {
            // Long enough for every field such a tag could ask for.
            assert!(
                decode_frame_ref(&[tag, 0, 0, 0, 0x60]).is_err(),
                "tag {tag:#x}"
            );
        }
        // An integer not in its shortest form.
        assert!(decode_frame_ref(&[0b0000, 24, 5]).is_err());
        assert!(decode_frame_ref(&[0b0000, 5]).is_ok());
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
            let bytes = keys::cbor::to_vec(&(Frame::VERSION, &bad)).unwrap();
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
            stream: u64::MAX,
            chains: vec![chain.clone(); 3],
        };
        let mut bytes = Vec::new();
        encode_frame(&hello, &mut bytes).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes);
        assert_eq!(decoder.next_message::<Hello>().unwrap(), Some(hello));
        let too_many = Hello {
            stream: 1,
            chains: vec![chain; MAX_HELLO_CHAINS + 1],
        };
        let bytes = keys::cbor::to_vec(&(Hello::VERSION, &too_many)).unwrap();
        // Refused while decoding, at the list's head (see `hello_chains`).
        assert!(matches!(
            wire::decode::<Hello>(&bytes),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
