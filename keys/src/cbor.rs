//! Strict CBOR primitives (cbor4ii with serde) under every Blocktree format.
//!
//! [`from_slice`] refuses inputs over a size limit before decoding and refuses trailing
//! bytes after the value; cbor4ii itself bounds nesting depth. `protocols::wire` builds
//! the versioned, named messages of every protocol on these two functions.

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the limit for its type.
    #[error("{len} bytes, over the limit of {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes remain after the value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The bytes are not a valid encoding of the type.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Why a value did not encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(pub String);

/// Encodes `value` as CBOR.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| EncodeError(e.to_string()))
}

/// Appends the CBOR encoding of `value` to `out`; on failure `out` is left as it was.
pub fn append<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    let start = out.len();
    cbor4ii::serde::to_writer(&mut *out, value).map_err(|e| {
        out.truncate(start);
        EncodeError(e.to_string())
    })
}

/// Decodes exactly one value of `T` from all of `bytes`, which may be at most `max`
/// bytes long.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8], max: usize) -> Result<T, DecodeError> {
    from_slice_seed(std::marker::PhantomData::<T>, bytes, max)
}

/// [`from_slice`] with a [`DeserializeSeed`], for decoders that carry state.
pub fn from_slice_seed<'a, S: DeserializeSeed<'a>>(
    seed: S,
    bytes: &'a [u8],
    max: usize,
) -> Result<S::Value, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut deserializer =
        cbor4ii::serde::Deserializer::new(cbor4ii::core::utils::SliceReader::new(bytes));
    let value = seed
        .deserialize(&mut deserializer)
        .map_err(|e| DecodeError::Malformed(describe(&e)))?;
    let mut reader = deserializer.into_inner();
    // A slice reader hands out everything that is left in one piece.
    let rest = match cbor4ii::core::dec::Read::fill(&mut reader, usize::MAX) {
        Ok(reference) => reference.as_ref().len(),
        Err(never) => match never {},
    };
    if rest > 0 {
        return Err(DecodeError::TrailingBytes(rest));
    }
    Ok(value)
}

fn describe<E: std::fmt::Debug>(e: &cbor4ii::serde::DecodeError<E>) -> String {
    match e {
        cbor4ii::serde::DecodeError::Custom(msg) => msg.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_and_limits() {
        let bytes = to_vec(&(1u8, "x")).unwrap();
        assert_eq!(
            from_slice::<(u8, String)>(&bytes, 64).unwrap(),
            (1, "x".into())
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            from_slice::<(u8, String)>(&longer, 64),
            Err(DecodeError::TrailingBytes(3))
        );
        assert!(matches!(
            from_slice::<(u8, String)>(&bytes, 2),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            from_slice::<(u8, String)>(&bytes[..bytes.len() - 1], 64),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = vec![0x81u8; 100_000]; // arrays of one element, nested
        assert!(from_slice::<serde::de::IgnoredAny>(&deep, usize::MAX).is_err());
    }
}
