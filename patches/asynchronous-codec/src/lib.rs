//! `asynchronous-codec` 0.7's API (`Framed`, `FramedRead`, `FramedWrite`, `Encoder`,
//! `Decoder` and three small codecs), without a buffer zeroed at every read.
//!
//! libp2p frames every Noise connection with this crate, and Kademlia's, identify's and
//! gossipsub's messages on their streams. The crates.io version reads into an 8 KiB array
//! on the stack that it zeroes at every `poll_next` that finds no whole frame buffered,
//! including every poll that then finds nothing to read (libp2p/rust-asynchronous-codec#12,
//! open since 2025). On the node's connections that was ~1.1–1.7 µs of `memset` per
//! round trip of one small message each way (a profile of the actors benchmark's asks,
//! 4 % of all samples), on a round trip of ~26 µs.
//!
//! Here a read goes into a buffer zeroed once and kept on the thread (`io::SCRATCH`), and
//! the bytes read are appended to the frame buffer, as the crates.io version appends
//! from its array, and then zeroed again (so each read is handed zeros, and no
//! connection's bytes stay behind for another's reader): the cost of zeroing follows the
//! bytes read, not the polls. No `unsafe` (reading into a `BytesMut`'s spare capacity
//! would need it). A read asks for the room the frame buffer has, at least 8 KiB (what
//! the crates.io version always asked for) and at most 64 KiB, so a decoder that reserved
//! room for a large frame gets it in fewer reads while idle buffers stay small.
//!
//! The workspace patches this crate in for crates.io's `asynchronous-codec` 0.7 (same
//! name and version). Differences a caller could see: a writer that accepts no bytes
//! fails with `WriteZero` (was `UnexpectedEof`); a reader or writer that reports more
//! bytes than it was given fails with `InvalidData` (the crates.io version panicked); a
//! send high water mark of 0 writes what is buffered (the crates.io version failed with
//! `UnexpectedEof` once its buffer was empty); the optional `cbor` and `json` codecs are
//! not provided (nothing in the dependency graph asks for them).

mod codec;
mod framed;
mod io;

pub use bytes::{Bytes, BytesMut};
pub use codec::{BytesCodec, LengthCodec, LinesCodec};
pub use framed::{Framed, FramedParts, FramedRead, FramedReadParts, FramedWrite, FramedWriteParts};

/// Decodes frames from bytes read.
pub trait Decoder {
    /// What one frame decodes to.
    type Item;
    /// Why decoding failed; reading errors become it too.
    type Error: From<std::io::Error>;

    /// Takes one whole frame off the front of `src`, or `None` (leaving `src` as it
    /// is, or with more room reserved) while it holds no whole frame.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error>;

    /// Like [`Decoder::decode`], once the reader has reached its end with bytes still
    /// buffered.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        self.decode(src)
    }
}

/// Encodes items into bytes to write.
pub trait Encoder {
    /// What is encoded (may borrow).
    type Item<'a>;
    /// Why encoding failed; writing errors become it too.
    type Error: From<std::io::Error>;

    /// Appends `item`'s encoding to `dst`.
    fn encode(&mut self, item: Self::Item<'_>, dst: &mut BytesMut) -> Result<(), Self::Error>;
}
