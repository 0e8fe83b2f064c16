//! The crate's three small codecs.

use std::io::{Error, ErrorKind};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Decoder, Encoder};

/// Bytes as they come: a frame is whatever is buffered.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Encoder for BytesCodec {
    type Item<'a> = Bytes;
    type Error = Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        if src.is_empty() {
            return Ok(None);
        }
        Ok(Some(src.split().freeze()))
    }
}

/// Frames behind their length as a big-endian `u64`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LengthCodec;

const LENGTH: usize = size_of::<u64>();

impl Encoder for LengthCodec {
    type Item<'a> = Bytes;
    type Error = Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        dst.reserve(LENGTH + item.len());
        dst.put_u64(item.len() as u64);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

impl Decoder for LengthCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        let Some(header) = src.get(..LENGTH) else {
            return Ok(None);
        };
        let mut length = [0; LENGTH];
        length.copy_from_slice(header);
        let length = u64::from_be_bytes(length);
        // Beyond the address space is beyond what is buffered.
        let Ok(length) = usize::try_from(length) else {
            return Ok(None);
        };
        if src.len() - LENGTH < length {
            return Ok(None);
        }
        src.advance(LENGTH);
        Ok(Some(src.split_to(length).freeze()))
    }
}

/// UTF-8 lines: a frame ends with `\n`, which it keeps; encoding writes the string as
/// it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinesCodec;

impl Encoder for LinesCodec {
    type Item<'a> = String;
    type Error = Error;

    fn encode(&mut self, item: String, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for LinesCodec {
    type Item = String;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, Error> {
        let Some(end) = memchr::memchr(b'\n', src) else {
            return Ok(None);
        };
        let line = src.split_to(end + 1);
        String::from_utf8(line.to_vec())
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::InvalidData, e))
    }
}
