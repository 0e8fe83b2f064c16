//! The block protocol's wire format (`/blocktree/block/1.0.0`): how a node puts and gets
//! encrypted chunks and signed inode versions on replicas, and asks a replica what it
//! holds when repairing.
//!
//! Each exchange is one libp2p stream: the opener writes one [`Request`] frame, the
//! replica answers with one [`Response`] frame, and the stream is closed. A frame is a
//! 4-byte big-endian length followed by that many bytes of a [`crate::wire`] message.
//! [`encode_request`] and [`encode_response`] write whole frames; a reader takes the
//! 4-byte header to [`frame_len`] (which refuses an oversized frame before anything is
//! read or allocated), reads that many bytes and hands them to [`decode_request`] or
//! [`decode_response`].
//!
//! This module knows nothing of the file system's types: ids are 32-byte hashes and a
//! signed inode version is opaque bytes, which the fs layer verifies.
//!
//! ```
//! use protocols::block::{self, Request, Response};
//! use protocols::wire::Message;
//!
//! let frame = block::encode_request(&Request::GetChunk { id: [7; 32] }).unwrap();
//! let (header, body) = frame.split_at(4);
//! let len = block::frame_len(header.try_into().unwrap(), Request::MAX_BYTES).unwrap();
//! assert_eq!(len, body.len());
//! assert_eq!(block::decode_request(body).unwrap(), Request::GetChunk { id: [7; 32] });
//!
//! let frame = block::encode_response(&Response::NotFound).unwrap();
//! assert_eq!(block::decode_response(&frame[4..]).unwrap(), Response::NotFound);
//! ```

use keys::limits::{
    MAX_BLOCK_REQUEST_BYTES, MAX_BLOCK_RESPONSE_BYTES, MAX_CHUNK_BYTES, MAX_HAVE_ITEMS,
    MAX_INODE_BYTES, MAX_REASON_BYTES, MAX_VERSIONS_PER_INODE,
};
use serde::{Deserialize, Serialize};

use crate::wire::{self, DecodeError, EncodeError, Message};

/// The libp2p protocol name.
pub const PROTOCOL_NAME: &str = "/blocktree/block/1.0.0";

// Frame lengths are 32-bit, and every message kind must fit the frame it travels in.
const _: () = assert!(MAX_BLOCK_REQUEST_BYTES <= u32::MAX as usize);
const _: () = assert!(MAX_BLOCK_RESPONSE_BYTES <= u32::MAX as usize);
const _: () = assert!(MAX_INODE_BYTES <= MAX_CHUNK_BYTES);
const _: () = assert!(MAX_CHUNK_BYTES + 1024 <= MAX_BLOCK_RESPONSE_BYTES);

/// What a node asks a replica.
///
/// Every byte field, ids included, is a CBOR byte string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Store an encrypted chunk. Answered by [`Response::Stored`] or
    /// [`Response::Refused`] ([`Refusal::Mismatch`] if `data` does not hash to `id`).
    PutChunk {
        /// The chunk's id, the hash of `data`.
        #[serde(with = "serde_bytes")]
        id: [u8; 32],
        /// The inode the chunk belongs to (its encryption binds it to that inode): the
        /// replica collects the chunk once no kept version of that inode refers to it,
        /// unless another offer named another inode (all zero names none): then never.
        #[serde(with = "serde_bytes")]
        owner: [u8; 32],
        /// The encrypted chunk, at most [`MAX_CHUNK_BYTES`].
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Fetch a chunk. Answered by [`Response::Chunk`], [`Response::NotFound`] or
    /// [`Response::Refused`].
    GetChunk {
        /// The chunk's id.
        #[serde(with = "serde_bytes")]
        id: [u8; 32],
    },
    /// Store a signed version of an inode. Answered by [`Response::Stored`] or
    /// [`Response::Refused`].
    PutVersion {
        /// The inode.
        #[serde(with = "serde_bytes")]
        inode: [u8; 32],
        /// The signed version, at most [`MAX_INODE_BYTES`]; opaque here.
        #[serde(with = "serde_bytes")]
        signed: Vec<u8>,
    },
    /// Fetch the versions of an inode the replica holds. Answered by
    /// [`Response::Versions`], [`Response::NotFound`] or [`Response::Refused`].
    GetVersions {
        /// The inode.
        #[serde(with = "serde_bytes")]
        inode: [u8; 32],
    },
    /// For repair: which of these does the replica hold? Answered by [`Response::Have`]
    /// (check it with [`Response::check_have`]) or [`Response::Refused`].
    Have {
        /// Chunk ids.
        #[serde(with = "ids")]
        chunks: Vec<[u8; 32]>,
        /// `(inode, version id)` pairs.
        #[serde(with = "id_pairs")]
        versions: Vec<([u8; 32], [u8; 32])>,
    },
    /// The node's own public identity (its signing key and the X25519 key readcaps are
    /// sealed to), so that a file can be shared with it. Answered by
    /// [`Response::Identity`].
    Identity,
}

impl Message for Request {
    const NAME: &'static str = "block request";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_BLOCK_REQUEST_BYTES;

    fn validate(&self) -> Result<(), String> {
        match self {
            Request::PutChunk { data, .. } => at_most("chunk bytes", data.len(), MAX_CHUNK_BYTES),
            Request::PutVersion { signed, .. } => {
                at_most("signed inode bytes", signed.len(), MAX_INODE_BYTES)
            }
            Request::GetChunk { .. } | Request::GetVersions { .. } | Request::Identity => Ok(()),
            Request::Have { chunks, versions } => at_most(
                "ids asked about",
                chunks.len() + versions.len(),
                MAX_HAVE_ITEMS,
            ),
        }
    }
}

/// A replica's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Response {
    /// The chunk or version is durable on the replica (this is sent only after it is).
    Stored {
        /// False if the replica held it already.
        new: bool,
    },
    /// The chunk asked for.
    Chunk {
        /// Its bytes, at most [`MAX_CHUNK_BYTES`]; the asker checks them against the id.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The versions of the inode asked for.
    ///
    /// At most [`MAX_VERSIONS_PER_INODE`] entries of at most [`MAX_INODE_BYTES`] each,
    /// and the whole response at most [`MAX_BLOCK_RESPONSE_BYTES`] encoded: that is less
    /// than the first two limits allow together, so a replica holding more sends the
    /// [`Response::versions_that_fit`] it prefers (say the newest first), and
    /// [`encode_response`] refuses a response that does not fit with
    /// [`EncodeError::TooLarge`].
    Versions {
        /// Signed versions, opaque here.
        #[serde(with = "blobs")]
        signed: Vec<Vec<u8>>,
    },
    /// The replica holds no such chunk or inode.
    NotFound,
    /// Which of the ids of a [`Request::Have`] the replica holds, in the order asked.
    ///
    /// The lists must be as long as the request's, but the decoder sees only the
    /// response: check with [`Response::check_have`].
    Have {
        /// One answer per chunk id asked about.
        #[serde(with = "flags")]
        chunks: Vec<bool>,
        /// One answer per `(inode, version id)` pair asked about.
        #[serde(with = "flags")]
        versions: Vec<bool>,
    },
    /// The replica refused the request.
    Refused(Refusal),
    /// The answering node's wire-encoded public identity (`keys::PublicIdentity`); the
    /// asker checks that it verifies and names the principal it expected.
    Identity {
        /// At most `MAX_IDENTITY_BYTES`.
        #[serde(with = "serde_bytes")]
        identity: Vec<u8>,
    },
}

impl Message for Response {
    const NAME: &'static str = "block response";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_BLOCK_RESPONSE_BYTES;

    fn validate(&self) -> Result<(), String> {
        match self {
            Response::Stored { .. } | Response::NotFound => Ok(()),
            Response::Chunk { data } => at_most("chunk bytes", data.len(), MAX_CHUNK_BYTES),
            Response::Identity { identity } => at_most(
                "identity bytes",
                identity.len(),
                keys::limits::MAX_IDENTITY_BYTES,
            ),
            Response::Versions { signed } => {
                at_most("versions", signed.len(), MAX_VERSIONS_PER_INODE)?;
                match signed.iter().find(|s| s.len() > MAX_INODE_BYTES) {
                    Some(s) => at_most("signed inode bytes", s.len(), MAX_INODE_BYTES),
                    // The total is bounded by `MAX_BYTES`, which the decoder checks first.
                    None => Ok(()),
                }
            }
            Response::Have { chunks, versions } => {
                at_most("answers", chunks.len() + versions.len(), MAX_HAVE_ITEMS)
            }
            Response::Refused(refusal) => match refusal.reason() {
                Some(reason) => at_most("reason bytes", reason.len(), MAX_REASON_BYTES),
                None => Ok(()),
            },
        }
    }
}

impl Response {
    /// Checks that this answers the [`Request::Have`] `asked` with one answer per id.
    pub fn check_have(&self, asked: &Request) -> Result<(), HaveMismatch> {
        let (
            Request::Have {
                chunks: asked_chunks,
                versions: asked_versions,
            },
            Response::Have { chunks, versions },
        ) = (asked, self)
        else {
            return Err(HaveMismatch::NotHave);
        };
        if chunks.len() != asked_chunks.len() || versions.len() != asked_versions.len() {
            return Err(HaveMismatch::Lengths {
                asked_chunks: asked_chunks.len(),
                asked_versions: asked_versions.len(),
                chunks: chunks.len(),
                versions: versions.len(),
            });
        }
        Ok(())
    }

    /// How many of the leading entries of `signed` fit in one [`Response::Versions`]:
    /// at most [`MAX_VERSIONS_PER_INODE`], none past one over [`MAX_INODE_BYTES`], and
    /// the encoded response within [`MAX_BLOCK_RESPONSE_BYTES`].
    /// `Response::Versions { signed: signed[..n].to_vec() }` then encodes.
    pub fn versions_that_fit(signed: &[Vec<u8>]) -> usize {
        // The encoding of an empty list, whose one-byte array head is replaced below.
        let empty = Response::Versions { signed: Vec::new() };
        let Ok(base) = crate::wire::encoded_len(&(Response::VERSION, &empty)) else {
            return 0;
        };
        let mut entries = 0;
        let mut fitting = 0;
        for (n, s) in signed.iter().take(MAX_VERSIONS_PER_INODE).enumerate() {
            if s.len() > MAX_INODE_BYTES {
                break;
            }
            entries += cbor_head_len(s.len()) + s.len();
            if base - 1 + cbor_head_len(n + 1) + entries > Response::MAX_BYTES {
                break;
            }
            fitting = n + 1;
        }
        fitting
    }
}

/// Why a [`Response`] does not answer a [`Request::Have`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HaveMismatch {
    /// The request was not a `Have`, or the response neither a `Have`.
    #[error("not a Have request answered by a Have response")]
    NotHave,
    /// The answers are not one per id asked about.
    #[error(
        "asked about {asked_chunks} chunks and {asked_versions} versions, \
         answered for {chunks} and {versions}"
    )]
    Lengths {
        /// Chunk ids asked about.
        asked_chunks: usize,
        /// Versions asked about.
        asked_versions: usize,
        /// Chunk answers.
        chunks: usize,
        /// Version answers.
        versions: usize,
    },
}

/// Why a replica refused a request; sent back in [`Response::Refused`].
///
/// Reasons are at most [`MAX_REASON_BYTES`]; the constructors cut longer ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Refusal {
    /// The bytes do not hash to the id they were sent with.
    #[error("the bytes do not hash to their id")]
    Mismatch,
    /// The signed version (or another part of the request) is not valid.
    #[error("invalid: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// The sender may not store this here.
    #[error("not authorized: {reason}")]
    NotAuthorized {
        /// Why.
        reason: String,
    },
    /// The version is older than one the replica holds.
    #[error("stale: {reason}")]
    Stale {
        /// Why.
        reason: String,
    },
    /// The replica has no room.
    #[error("the replica is full")]
    Full,
    /// The replica is overloaded; try again later or elsewhere.
    #[error("the replica is busy")]
    Busy,
    /// The replica's copy was corrupt, and it has dropped it.
    #[error("the replica's copy was corrupt and has been dropped")]
    Corrupt,
    /// The replica failed.
    #[error("the replica failed: {reason}")]
    Internal {
        /// Why.
        reason: String,
    },
}

impl Refusal {
    /// [`Refusal::Invalid`], the reason cut to [`MAX_REASON_BYTES`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Refusal::Invalid {
            reason: bounded(reason.into()),
        }
    }

    /// [`Refusal::NotAuthorized`], the reason cut to [`MAX_REASON_BYTES`].
    pub fn not_authorized(reason: impl Into<String>) -> Self {
        Refusal::NotAuthorized {
            reason: bounded(reason.into()),
        }
    }

    /// [`Refusal::Stale`], the reason cut to [`MAX_REASON_BYTES`].
    pub fn stale(reason: impl Into<String>) -> Self {
        Refusal::Stale {
            reason: bounded(reason.into()),
        }
    }

    /// [`Refusal::Internal`], the reason cut to [`MAX_REASON_BYTES`].
    pub fn internal(reason: impl Into<String>) -> Self {
        Refusal::Internal {
            reason: bounded(reason.into()),
        }
    }

    /// The reason text, for the variants that carry one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Refusal::Invalid { reason }
            | Refusal::NotAuthorized { reason }
            | Refusal::Stale { reason }
            | Refusal::Internal { reason } => Some(reason),
            Refusal::Mismatch | Refusal::Full | Refusal::Busy | Refusal::Corrupt => None,
        }
    }
}

/// Cuts `reason` to at most [`MAX_REASON_BYTES`], on a character boundary.
fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn at_most(what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{n} {what}, at most {max}"));
    }
    Ok(())
}

/// Encodes `request` as a whole frame, length prefix included.
///
/// Refuses, with [`EncodeError::Failed`], a request that breaks a limit the receiver
/// would refuse it for. The frame is sized before it is written, so a chunk's bytes are
/// copied once.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, EncodeError> {
    encode_frame(request)
}

/// Encodes `response` as a whole frame, length prefix included.
///
/// Refuses, with [`EncodeError::Failed`], a response that breaks a limit the receiver
/// would refuse it for, and with [`EncodeError::TooLarge`] one that does not fit in
/// [`MAX_BLOCK_RESPONSE_BYTES`] (only [`Response::Versions`] can: see
/// [`Response::versions_that_fit`]), before writing anything.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, EncodeError> {
    encode_frame(response)
}

/// [`encode_request`] of a [`Request::PutChunk`] with borrowed bytes: the same frame,
/// without copying the chunk into a request first (a chunk sent to several replicas is
/// encoded once, and the chunk stays where it is for this node's own store).
pub fn encode_put_chunk(
    id: &[u8; 32],
    owner: &[u8; 32],
    data: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    /// [`Request`]'s encoding of its one variant, borrowed.
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    enum RequestRef<'a> {
        PutChunk {
            #[serde(with = "serde_bytes")]
            id: &'a [u8; 32],
            #[serde(with = "serde_bytes")]
            owner: &'a [u8; 32],
            #[serde(with = "serde_bytes")]
            data: &'a [u8],
        },
    }
    at_most("chunk bytes", data.len(), MAX_CHUNK_BYTES).map_err(|reason| EncodeError::Failed {
        what: Request::NAME,
        reason: format!("invalid: {reason}"),
    })?;
    frame_of(
        Request::NAME,
        Request::MAX_BYTES,
        &(Request::VERSION, RequestRef::PutChunk { id, owner, data }),
    )
}

fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, EncodeError> {
    message.validate().map_err(|reason| EncodeError::Failed {
        what: M::NAME,
        reason: format!("invalid: {reason}"),
    })?;
    frame_of(M::NAME, M::MAX_BYTES, &(M::VERSION, message))
}

/// The frame of `versioned` (a version and a message), sized before it is written.
fn frame_of<T: Serialize>(
    what: &'static str,
    max: usize,
    versioned: &T,
) -> Result<Vec<u8>, EncodeError> {
    let len = crate::wire::encoded_len(versioned)
        .map_err(|reason| EncodeError::Failed { what, reason })?;
    let header = match u32::try_from(len) {
        Ok(header) if len <= max => header,
        _ => return Err(EncodeError::TooLarge { what, len, max }),
    };
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&header.to_be_bytes());
    keys::cbor::append(&mut frame, versioned)
        .map_err(|e| EncodeError::Failed { what, reason: e.0 })?;
    debug_assert_eq!(frame.len(), 4 + len);
    Ok(frame)
}

/// The length of the frame whose 4-byte header is `header`, refused if over `max`
/// ([`Request::MAX_BYTES`] or [`Response::MAX_BYTES`]) before anything is read.
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(DecodeError::TooLarge {
            what: "block frame",
            len,
            max,
        });
    }
    Ok(len)
}

/// Decodes a request from a frame's body (the bytes after its header).
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    wire::decode(body)
}

/// Decodes a response from a frame's body (the bytes after its header).
///
/// A [`Response::Have`] still has to be checked against its request with
/// [`Response::check_have`].
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    wire::decode(body)
}

/// Length of the CBOR head announcing `n` (an integer, or a length).
fn cbor_head_len(n: usize) -> usize {
    match n {
        0..24 => 1,
        24..256 => 2,
        256..65_536 => 3,
        _ if n as u64 <= u64::from(u32::MAX) => 5,
        _ => 9,
    }
}

/// `Vec<[u8; 32]>` as a list of byte strings.
mod ids {
    use keys::limits::MAX_HAVE_ITEMS;
    use serde::{Deserializer, Serializer};
    use serde_bytes::{ByteArray, Bytes};

    pub(super) fn serialize<S: Serializer>(ids: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(|id| Bytes::new(id)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        crate::wire::bounded::seq(d, MAX_HAVE_ITEMS, "ids", ByteArray::<32>::into_array)
    }
}

/// `Vec<([u8; 32], [u8; 32])>` as a list of pairs of byte strings.
mod id_pairs {
    use keys::limits::MAX_HAVE_ITEMS;
    use serde::{Deserializer, Serializer};
    use serde_bytes::{ByteArray, Bytes};

    type Pair = ([u8; 32], [u8; 32]);

    pub(super) fn serialize<S: Serializer>(pairs: &[Pair], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pairs.iter().map(|(a, b)| (Bytes::new(a), Bytes::new(b))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pair>, D::Error> {
        crate::wire::bounded::seq(
            d,
            MAX_HAVE_ITEMS,
            "id pairs",
            |(a, b): (ByteArray<32>, ByteArray<32>)| (a.into_array(), b.into_array()),
        )
    }
}

/// `Vec<Vec<u8>>` as a list of byte strings.
mod blobs {
    use keys::limits::MAX_VERSIONS_PER_INODE;
    use serde::{Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(blobs: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(blobs.iter().map(|b| Bytes::new(b)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        crate::wire::bounded::seq(d, MAX_VERSIONS_PER_INODE, "versions", ByteBuf::into_vec)
    }
}

/// `Vec<bool>`, its length bounded while decoding.
mod flags {
    use keys::limits::MAX_HAVE_ITEMS;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(flags: &[bool], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(flags)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<bool>, D::Error> {
        crate::wire::bounded::seq(d, MAX_HAVE_ITEMS, "answers", |b: bool| b)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// `[version, value]` encoded without the checks of [`encode_frame`], to play a peer
    /// that breaks the limits.
    fn raw<T: Serialize>(version: u16, value: &T) -> Vec<u8> {
        keys::cbor::to_vec(&(version, value)).unwrap()
    }

    fn body(frame: &[u8]) -> &[u8] {
        &frame[4..]
    }

    /// Random bytes, or long runs up to `max` (the lengths matter more than the bytes).
    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..2000.min(max + 1)),
            1 => (0..=max, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            1 => Just(vec![0xa5; max]),
        ]
    }

    fn id() -> impl Strategy<Value = [u8; 32]> {
        any::<[u8; 32]>()
    }

    fn request() -> impl Strategy<Value = Request> {
        let have = prop::collection::vec(id(), 0..=MAX_HAVE_ITEMS).prop_flat_map(|chunks| {
            let room = MAX_HAVE_ITEMS - chunks.len();
            prop::collection::vec((id(), id()), 0..=room).prop_map(move |versions| Request::Have {
                chunks: chunks.clone(),
                versions,
            })
        });
        prop_oneof![
            (id(), id(), bytes(MAX_CHUNK_BYTES)).prop_map(|(id, owner, data)| Request::PutChunk {
                id,
                owner,
                data
            }),
            id().prop_map(|id| Request::GetChunk { id }),
            (id(), bytes(MAX_INODE_BYTES))
                .prop_map(|(inode, signed)| Request::PutVersion { inode, signed }),
            id().prop_map(|inode| Request::GetVersions { inode }),
            have,
            Just(Request::Identity),
        ]
    }

    fn reason() -> impl Strategy<Value = String> {
        // Up to 128 characters of up to 4 bytes: within MAX_REASON_BYTES.
        "\\PC{0,128}"
    }

    fn refusal() -> impl Strategy<Value = Refusal> {
        prop_oneof![
            Just(Refusal::Mismatch),
            reason().prop_map(|reason| Refusal::Invalid { reason }),
            reason().prop_map(|reason| Refusal::NotAuthorized { reason }),
            reason().prop_map(|reason| Refusal::Stale { reason }),
            Just(Refusal::Full),
            Just(Refusal::Busy),
            Just(Refusal::Corrupt),
            reason().prop_map(|reason| Refusal::Internal { reason }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        let have =
            prop::collection::vec(any::<bool>(), 0..=MAX_HAVE_ITEMS).prop_flat_map(|chunks| {
                let room = MAX_HAVE_ITEMS - chunks.len();
                prop::collection::vec(any::<bool>(), 0..=room).prop_map(move |versions| {
                    Response::Have {
                        chunks: chunks.clone(),
                        versions,
                    }
                })
            });
        let versions = prop_oneof![
            prop::collection::vec(
                prop::collection::vec(any::<u8>(), 0..300),
                0..=MAX_VERSIONS_PER_INODE
            ),
            // Few, large versions, together within the response limit.
            prop::collection::vec((0..=MAX_INODE_BYTES, any::<u8>()), 0..=3)
                .prop_map(|v| v.into_iter().map(|(n, b)| vec![b; n]).collect()),
        ];
        prop_oneof![
            any::<bool>().prop_map(|new| Response::Stored { new }),
            bytes(MAX_CHUNK_BYTES).prop_map(|data| Response::Chunk { data }),
            versions.prop_map(|signed| Response::Versions { signed }),
            Just(Response::NotFound),
            have,
            refusal().prop_map(Response::Refused),
            bytes(keys::limits::MAX_IDENTITY_BYTES)
                .prop_map(|identity| Response::Identity { identity }),
        ]
    }

    /// If `bytes` decode as a request or response, they encode back to the same value.
    fn decodes_and_round_trips(bytes: &[u8]) {
        if let Ok(request) = decode_request(bytes) {
            let frame = encode_request(&request).unwrap();
            assert_eq!(decode_request(body(&frame)).unwrap(), request);
        }
        if let Ok(response) = decode_response(bytes) {
            let frame = encode_response(&response).unwrap();
            assert_eq!(decode_response(body(&frame)).unwrap(), response);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn requests_round_trip(request in request()) {
            let frame = encode_request(&request).unwrap();
            // Sized up front: written without growing (and so without copying again).
            prop_assert_eq!(frame.capacity(), frame.len());
            let len = frame_len(frame[..4].try_into().unwrap(), Request::MAX_BYTES).unwrap();
            prop_assert_eq!(len, frame.len() - 4);
            prop_assert_eq!(decode_request(body(&frame)), Ok(request));
        }

        #[test]
        fn a_borrowed_put_chunk_is_the_same_frame(
            id in id(),
            owner in id(),
            data in bytes(MAX_CHUNK_BYTES + 1),
        ) {
            let borrowed = encode_put_chunk(&id, &owner, &data);
            let owned = encode_request(&Request::PutChunk { id, owner, data });
            match (borrowed, owned) {
                (Ok(borrowed), Ok(owned)) => {
                    prop_assert_eq!(borrowed.capacity(), borrowed.len());
                    prop_assert_eq!(borrowed, owned);
                }
                (Err(_), Err(_)) => {}
                (borrowed, owned) => prop_assert!(false, "{borrowed:?} against {owned:?}"),
            }
        }

        #[test]
        fn responses_round_trip(response in response()) {
            let frame = encode_response(&response).unwrap();
            prop_assert_eq!(frame.capacity(), frame.len());
            let len = frame_len(frame[..4].try_into().unwrap(), Response::MAX_BYTES).unwrap();
            prop_assert_eq!(len, frame.len() - 4);
            prop_assert_eq!(decode_response(body(&frame)), Ok(response));
        }

        #[test]
        fn truncated_and_extended_bodies_are_refused(
            request in request(),
            response in response(),
            cut in any::<prop::sample::Index>(),
            extra in prop::collection::vec(any::<u8>(), 1..16),
        ) {
            type Decode = fn(&[u8]) -> Option<DecodeError>;
            let request_frame = encode_request(&request).unwrap();
            let response_frame = encode_response(&response).unwrap();
            let kinds: [(&[u8], usize, Decode); 2] = [
                (body(&request_frame), Request::MAX_BYTES, |b| decode_request(b).err()),
                (body(&response_frame), Response::MAX_BYTES, |b| decode_response(b).err()),
            ];
            for (whole, max, decode) in kinds {
                let short = &whole[..cut.index(whole.len())];
                let refused = decode(short);
                prop_assert!(matches!(refused, Some(DecodeError::Malformed { .. })), "{:?}", refused);
                let mut long = whole.to_vec();
                long.extend_from_slice(&extra);
                let refused = decode(&long);
                if long.len() > max {
                    prop_assert!(matches!(refused, Some(DecodeError::TooLarge { .. })), "{:?}", refused);
                } else {
                    prop_assert!(
                        matches!(refused, Some(DecodeError::TrailingBytes { count, .. }) if count == extra.len()),
                        "{:?}", refused
                    );
                }
            }
        }

        #[test]
        fn other_versions_are_refused(request in request(), response in response(), version in 2u16..) {
            for version in [0, version] {
                let unknown = DecodeError::UnknownVersion { what: Request::NAME, found: version, expected: 1 };
                prop_assert_eq!(decode_request(&raw(version, &request)), Err(unknown));
                let unknown = DecodeError::UnknownVersion { what: Response::NAME, found: version, expected: 1 };
                prop_assert_eq!(decode_response(&raw(version, &response)), Err(unknown));
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Some(header) = bytes.get(..4) {
                let header: [u8; 4] = header.try_into().unwrap();
                let _ = frame_len(header, Request::MAX_BYTES);
                let _ = frame_len(header, Response::MAX_BYTES);
            }
            decodes_and_round_trips(&bytes);
        }

        #[test]
        fn damaged_messages_never_panic(
            request in request(),
            response in response(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            for frame in [encode_request(&request).unwrap(), encode_response(&response).unwrap()] {
                let mut damaged = body(&frame).to_vec();
                for (at, byte) in &damage {
                    let at = at.index(damaged.len());
                    damaged[at] = *byte;
                }
                decodes_and_round_trips(&damaged);
            }
        }
    }

    #[test]
    fn the_largest_messages_fit() {
        let requests = [
            Request::PutChunk {
                id: [1; 32],
                owner: [3; 32],
                data: vec![2; MAX_CHUNK_BYTES],
            },
            Request::PutVersion {
                inode: [1; 32],
                signed: vec![2; MAX_INODE_BYTES],
            },
            Request::Have {
                chunks: vec![],
                versions: vec![([3; 32], [4; 32]); MAX_HAVE_ITEMS],
            },
            Request::Have {
                chunks: vec![[3; 32]; MAX_HAVE_ITEMS],
                versions: vec![],
            },
        ];
        for request in requests {
            let frame = encode_request(&request).unwrap();
            assert_eq!(decode_request(body(&frame)).unwrap(), request);
        }
        let responses = [
            Response::Chunk {
                data: vec![2; MAX_CHUNK_BYTES],
            },
            Response::Versions {
                signed: vec![vec![5; 1000]; MAX_VERSIONS_PER_INODE],
            },
            Response::Versions {
                signed: vec![vec![5; MAX_INODE_BYTES]; 3],
            },
            Response::Have {
                chunks: vec![true; MAX_HAVE_ITEMS / 2],
                versions: vec![false; MAX_HAVE_ITEMS / 2],
            },
            Response::Refused(Refusal::Internal {
                reason: "x".repeat(MAX_REASON_BYTES),
            }),
        ];
        for response in responses {
            let frame = encode_response(&response).unwrap();
            assert_eq!(decode_response(body(&frame)).unwrap(), response);
        }
    }

    #[test]
    fn byte_fields_are_byte_strings() {
        let frame = encode_request(&Request::GetChunk { id: [9; 32] }).unwrap();
        // A byte string of 32 is announced by 0x58 0x20.
        let mut id = vec![0x58, 0x20];
        id.extend_from_slice(&[9; 32]);
        assert!(frame.windows(34).any(|w| w == id));
        let frame = encode_request(&Request::PutChunk {
            id: [9; 32],
            owner: [3; 32],
            data: vec![0xff; 1000],
        })
        .unwrap();
        assert!(frame.len() < 1000 + 128, "{} bytes", frame.len());
        let frame = encode_request(&Request::Have {
            chunks: vec![[1; 32]; 24],
            versions: vec![([2; 32], [3; 32]); 1000],
        })
        .unwrap();
        assert!(
            frame.len() < 24 * 34 + 1000 * 69 + 64,
            "{} bytes",
            frame.len()
        );
        let frame = encode_response(&Response::Versions {
            signed: vec![vec![0xff; 100]; 10],
        })
        .unwrap();
        assert!(frame.len() < 10 * 102 + 64, "{} bytes", frame.len());
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        for max in [Request::MAX_BYTES, Response::MAX_BYTES] {
            let at_max = u32::try_from(max).unwrap().to_be_bytes();
            assert_eq!(frame_len(at_max, max), Ok(max));
            let over = u32::try_from(max + 1).unwrap().to_be_bytes();
            assert_eq!(
                frame_len(over, max),
                Err(DecodeError::TooLarge {
                    what: "block frame",
                    len: max + 1,
                    max
                })
            );
            assert!(matches!(
                frame_len([0xff; 4], max),
                Err(DecodeError::TooLarge { len, .. }) if len == u32::MAX as usize
            ));
        }
        // A body over the limit is refused by its length, not by decoding it.
        let body = vec![0; Request::MAX_BYTES + 1];
        assert!(matches!(
            decode_request(&body),
            Err(DecodeError::TooLarge { .. })
        ));
        let body = vec![0; Response::MAX_BYTES + 1];
        assert!(matches!(
            decode_response(&body),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn fields_over_their_limits_are_invalid() {
        let requests = [
            Request::PutChunk {
                id: [1; 32],
                owner: [3; 32],
                data: vec![0; MAX_CHUNK_BYTES + 1],
            },
            Request::PutVersion {
                inode: [1; 32],
                signed: vec![0; MAX_INODE_BYTES + 1],
            },
            Request::Have {
                chunks: vec![[1; 32]; MAX_HAVE_ITEMS / 2 + 1],
                versions: vec![([1; 32], [2; 32]); MAX_HAVE_ITEMS / 2],
            },
        ];
        for request in requests {
            assert!(matches!(
                decode_request(&raw(1, &request)),
                Err(DecodeError::Invalid { .. })
            ));
            assert!(matches!(
                encode_request(&request),
                Err(EncodeError::Failed { .. })
            ));
        }
        let responses = [
            Response::Chunk {
                data: vec![0; MAX_CHUNK_BYTES + 1],
            },
            Response::Versions {
                signed: vec![vec![], vec![0; MAX_INODE_BYTES + 1]],
            },
            Response::Have {
                chunks: vec![true; MAX_HAVE_ITEMS],
                versions: vec![true],
            },
            Response::Refused(Refusal::Stale {
                reason: "x".repeat(MAX_REASON_BYTES + 1),
            }),
        ];
        for response in responses {
            assert!(matches!(
                decode_response(&raw(1, &response)),
                Err(DecodeError::Invalid { .. })
            ));
            assert!(matches!(
                encode_response(&response),
                Err(EncodeError::Failed { .. })
            ));
        }
    }

    #[test]
    fn lists_over_their_limits_are_refused_while_decoding() {
        let request = Request::Have {
            chunks: vec![[1; 32]; MAX_HAVE_ITEMS + 1],
            versions: vec![],
        };
        let versions = Response::Versions {
            signed: vec![vec![]; MAX_VERSIONS_PER_INODE + 1],
        };
        let have = Response::Have {
            chunks: vec![],
            versions: vec![true; MAX_HAVE_ITEMS + 1],
        };
        let refused = [
            decode_request(&raw(1, &request)).unwrap_err(),
            decode_response(&raw(1, &versions)).unwrap_err(),
            decode_response(&raw(1, &have)).unwrap_err(),
        ];
        for error in refused {
            assert!(
                matches!(&error, DecodeError::Malformed { reason, .. } if reason.contains("more than")),
                "{error}"
            );
        }
        assert!(matches!(
            encode_response(&versions),
            Err(EncodeError::Failed { .. })
        ));
        // A list announcing more elements than it holds is refused from its head: an
        // array of 2^32 - 1 ids, then nothing.
        let mut lying = raw(
            1,
            &Request::Have {
                chunks: vec![],
                versions: vec![],
            },
        );
        let at = lying.iter().position(|&b| b == 0x80).unwrap();
        lying.splice(at..=at, [0x9a, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_request(&lying),
            Err(DecodeError::Malformed { reason, .. }) if reason.contains("more than")
        ));
    }

    #[test]
    fn versions_that_do_not_fit_are_told_apart() {
        let big = vec![vec![7; MAX_INODE_BYTES]; 5];
        let too_many = Response::Versions {
            signed: big.clone(),
        };
        assert!(matches!(
            encode_response(&too_many),
            Err(EncodeError::TooLarge { max, .. }) if max == MAX_BLOCK_RESPONSE_BYTES
        ));
        assert!(matches!(
            decode_response(&raw(1, &too_many)),
            Err(DecodeError::TooLarge { .. })
        ));
        let n = Response::versions_that_fit(&big);
        assert_eq!(n, 3);
        encode_response(&Response::Versions {
            signed: big[..n].to_vec(),
        })
        .unwrap();

        // Exactly at the limit: fill the room left by three big versions.
        let three = encode_response(&Response::Versions {
            signed: big[..3].to_vec(),
        })
        .unwrap();
        let room = Response::MAX_BYTES - (three.len() - 4);
        let last = room - cbor_head_len(room);
        assert_eq!(cbor_head_len(last), cbor_head_len(room));
        for (len, fits) in [(last, true), (last + 1, false)] {
            let mut signed = big[..3].to_vec();
            signed.push(vec![1; len]);
            assert_eq!(
                Response::versions_that_fit(&signed),
                if fits { 4 } else { 3 }
            );
            let frame = encode_response(&Response::Versions { signed });
            assert_eq!(frame.is_ok(), fits, "{len}");
            if let Ok(frame) = frame {
                assert_eq!(frame.len() - 4, Response::MAX_BYTES);
            }
        }

        // Many small ones: the count limit; an oversized one stops the prefix.
        let small = vec![vec![1; 10]; MAX_VERSIONS_PER_INODE + 5];
        assert_eq!(Response::versions_that_fit(&small), MAX_VERSIONS_PER_INODE);
        let mut with_bad = vec![vec![1; 10]; 30];
        with_bad[20] = vec![0; MAX_INODE_BYTES + 1];
        assert_eq!(Response::versions_that_fit(&with_bad), 20);
        assert_eq!(Response::versions_that_fit(&[]), 0);
        // The array head grows from one byte to two at 24 entries.
        for n in [23, 24, 25] {
            let signed = vec![vec![1; 3]; n];
            assert_eq!(Response::versions_that_fit(&signed), n);
        }
    }

    #[test]
    fn have_answers_are_checked_against_the_question() {
        let asked = Request::Have {
            chunks: vec![[1; 32]; 3],
            versions: vec![([2; 32], [3; 32]); 2],
        };
        let answer = |chunks: usize, versions: usize| Response::Have {
            chunks: vec![true; chunks],
            versions: vec![false; versions],
        };
        assert_eq!(answer(3, 2).check_have(&asked), Ok(()));
        assert_eq!(
            answer(2, 3).check_have(&asked),
            Err(HaveMismatch::Lengths {
                asked_chunks: 3,
                asked_versions: 2,
                chunks: 2,
                versions: 3
            })
        );
        assert_eq!(
            Response::NotFound.check_have(&asked),
            Err(HaveMismatch::NotHave)
        );
        assert_eq!(
            answer(0, 0).check_have(&Request::GetChunk { id: [0; 32] }),
            Err(HaveMismatch::NotHave)
        );
    }

    #[test]
    fn refusals_read_well_and_stay_bounded() {
        assert_eq!(
            Refusal::Mismatch.to_string(),
            "the bytes do not hash to their id"
        );
        assert_eq!(
            Refusal::not_authorized("no writecap for /x").to_string(),
            "not authorized: no writecap for /x"
        );
        assert_eq!(
            Refusal::Corrupt.to_string(),
            "the replica's copy was corrupt and has been dropped"
        );
        // Cut on a character boundary: 170 three-byte characters.
        let long = Refusal::invalid("€".repeat(MAX_REASON_BYTES));
        assert_eq!(long.reason().unwrap().len(), 510);
        for refusal in [
            long,
            Refusal::stale("x".repeat(2 * MAX_REASON_BYTES)),
            Refusal::internal("disk"),
        ] {
            let response = Response::Refused(refusal);
            let frame = encode_response(&response).unwrap();
            assert_eq!(decode_response(body(&frame)).unwrap(), response);
        }
    }
}
