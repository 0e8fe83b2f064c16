//! Versioned, size-limited CBOR messages.
//!
//! Every top-level type that crosses a trust boundary implements [`Message`]: it has a
//! name, a version and a size limit. [`encode`] writes it as the CBOR array
//! `[version, value]`; [`decode`] refuses, with a typed [`DecodeError`], input over the
//! limit (before looking at it), an unknown version (before decoding the value),
//! malformed values, values that break the type's own rules ([`Message::validate`]) and
//! trailing bytes.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};

/// A versioned top-level type of the wire or disk format.
pub trait Message: Serialize + DeserializeOwned {
    /// Name used in errors and logs.
    const NAME: &'static str;
    /// The version this code writes and the only one it reads.
    const VERSION: u16;
    /// Largest accepted encoding, from [`crate::limits`].
    const MAX_BYTES: usize;

    /// Checks the rules of the type that serde cannot express (lengths, ranges).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why bytes were refused as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the type's limit.
    #[error("{what}: {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The type.
        what: &'static str,
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The version is not the one this code reads.
    #[error("{what}: unknown version {found} (this node reads version {expected})")]
    UnknownVersion {
        /// The type.
        what: &'static str,
        /// The version in the input.
        found: u16,
        /// The version understood.
        expected: u16,
    },
    /// Bytes remain after the message.
    #[error("{what}: {count} trailing bytes")]
    TrailingBytes {
        /// The type.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// The bytes are not a valid encoding.
    #[error("{what}: malformed: {reason}")]
    Malformed {
        /// The type.
        what: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// The value decodes but breaks the type's rules.
    #[error("{what}: invalid: {reason}")]
    Invalid {
        /// The type.
        what: &'static str,
        /// Which rule.
        reason: String,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoding is larger than the type's limit, so no peer would accept it.
    #[error("{what}: encodes to {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The type.
        what: &'static str,
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer failed.
    #[error("{what}: {reason}")]
    Failed {
        /// The type.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Encodes `message` as `[version, value]`.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, EncodeError> {
    let bytes = keys::cbor::to_vec(&(M::VERSION, message)).map_err(|e| EncodeError::Failed {
        what: M::NAME,
        reason: e.0,
    })?;
    if bytes.len() > M::MAX_BYTES {
        return Err(EncodeError::TooLarge {
            what: M::NAME,
            len: bytes.len(),
            max: M::MAX_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes one message of type `M` from all of `bytes`.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    let found_version = Cell::new(None);
    let seed = VersionedSeed::<M> {
        found_version: &found_version,
        marker: PhantomData,
    };
    let message = keys::cbor::from_slice_seed(seed, bytes, M::MAX_BYTES).map_err(|e| match e {
        keys::cbor::DecodeError::TooLarge { len, max } => DecodeError::TooLarge {
            what: M::NAME,
            len,
            max,
        },
        keys::cbor::DecodeError::TrailingBytes(count) => DecodeError::TrailingBytes {
            what: M::NAME,
            count,
        },
        other => match found_version.get() {
            Some(found) if found != M::VERSION => DecodeError::UnknownVersion {
                what: M::NAME,
                found,
                expected: M::VERSION,
            },
            _ => DecodeError::Malformed {
                what: M::NAME,
                reason: match other {
                    keys::cbor::DecodeError::Malformed(reason) => reason,
                    other => other.to_string(),
                },
            },
        },
    })?;
    message.validate().map_err(|reason| DecodeError::Invalid {
        what: M::NAME,
        reason,
    })?;
    Ok(message)
}

/// Reads `[version, value]`, refusing an unknown version before touching the value.
struct VersionedSeed<'c, M> {
    found_version: &'c Cell<Option<u16>>,
    marker: PhantomData<M>,
}

impl<'de, M: Message> DeserializeSeed<'de> for VersionedSeed<'_, M> {
    type Value = M;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<M, D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de, M: Message> Visitor<'de> for VersionedSeed<'_, M> {
    type Value = M;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[version, {}]", M::NAME)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<M, A::Error> {
        use serde::de::Error;
        let version: u16 = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("missing version"))?;
        self.found_version.set(Some(version));
        if version != M::VERSION {
            return Err(A::Error::custom(format_args!("unknown version {version}")));
        }
        let message: M = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom(format_args!("missing {}", M::NAME)))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("more than [version, value]"));
        }
        Ok(message)
    }
}

/// The length of `value`'s CBOR encoding, found without writing it.
pub(crate) fn encoded_len<T: Serialize>(value: &T) -> Result<usize, String> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    cbor4ii::serde::to_writer(&mut counter, value).map_err(|e| e.to_string())?;
    Ok(counter.0)
}

/// Lists whose length is checked as they are decoded, so a list longer than its limit
/// is refused before its elements are, and no more than the limit is allocated.
pub(crate) mod bounded {
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    pub(crate) fn seq<'de, D, W, T>(
        deserializer: D,
        max: usize,
        what: &'static str,
        convert: fn(W) -> T,
    ) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        W: Deserialize<'de>,
    {
        deserializer.deserialize_seq(Bounded { max, what, convert })
    }

    struct Bounded<W, T> {
        max: usize,
        what: &'static str,
        convert: fn(W) -> T,
    }

    impl<'de, W: Deserialize<'de>, T> Visitor<'de> for Bounded<W, T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {} {}", self.max, self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let too_many =
                || A::Error::custom(format_args!("more than {} {}", self.max, self.what));
            let announced = seq.size_hint().unwrap_or(0);
            if announced > self.max {
                return Err(too_many());
            }
            let mut items = Vec::with_capacity(announced);
            while let Some(item) = seq.next_element::<W>()? {
                if items.len() == self.max {
                    return Err(too_many());
                }
                items.push((self.convert)(item));
            }
            Ok(items)
        }
    }
}
