//! Principals: who may speak for a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// BLAKE3 key-derivation context for principals; changing it changes every name.
const CONTEXT: &str = "blocktree 2026-11 principal v1";

/// Length of a principal's text form: 32 bytes in unpadded base32.
pub const TEXT_LEN: usize = 52;

/// The name of a public signing key: BLAKE3-256 of it, domain separated.
///
/// Nodes, users and services are principals. The one text form is lowercase base32
/// without padding (52 characters); [`Principal::from_str`] accepts nothing else, so a
/// principal prints and parses back to the same string.
///
/// ```
/// use keys::{Principal, SigningKey};
/// let key = SigningKey::generate();
/// let p = key.principal();
/// assert_eq!(p.to_string().parse::<Principal>().unwrap(), p);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal([u8; 32]);

/// Why a string is not a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is not 52 characters long.
    #[error("a principal is {TEXT_LEN} characters of base32, got {0}")]
    Length(usize),
    /// A character is outside lowercase base32 (`a`–`z`, `2`–`7`).
    #[error("a principal is lowercase base32 (a-z, 2-7); found {0:?}")]
    Character(char),
    /// The last character carries bits that a 32-byte value cannot have.
    #[error("a principal's last character is not canonical")]
    NotCanonical,
}

impl Principal {
    /// The principal of an ed25519 public key.
    pub fn of_key(public_key: &[u8; 32]) -> Self {
        Principal(blake3::derive_key(CONTEXT, public_key))
    }

    /// A principal from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Principal(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Encoded on the stack: this runs for every path a file system operation hashes.
        let mut text = [0u8; TEXT_LEN];
        data_encoding::BASE32_NOPAD.encode_mut(&self.0, &mut text);
        text.make_ascii_lowercase();
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({self})")
    }
}

impl FromStr for Principal {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(c) = s.chars().find(|c| !matches!(c, 'a'..='z' | '2'..='7')) {
            return Err(ParseError::Character(c));
        }
        if s.len() != TEXT_LEN {
            return Err(ParseError::Length(s.len()));
        }
        let upper = s.to_ascii_uppercase();
        let bytes = data_encoding::BASE32_NOPAD
            .decode(upper.as_bytes())
            .map_err(|_| ParseError::NotCanonical)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| ParseError::NotCanonical)?;
        Ok(Principal(bytes))
    }
}

/// 32 bytes on the wire and on disk (CBOR); the text form where people read it (the
/// JSON of the command line and of reports).
impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serde_bytes::Bytes::new(&self.0).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            return text.parse().map_err(|e| {
                serde::de::Error::custom(format!("{text:?} is not a principal: {e}"))
            });
        }
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(deserializer)?;
        Ok(Principal(bytes.into_array()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_round_trip(bytes in any::<[u8; 32]>()) {
            let p = Principal::from_bytes(bytes);
            let text = p.to_string();
            prop_assert_eq!(text.len(), TEXT_LEN);
            prop_assert_eq!(text.parse::<Principal>().unwrap(), p);
        }

        #[test]
        fn json_is_the_text_form_and_cbor_the_bytes(bytes in any::<[u8; 32]>()) {
            let p = Principal::from_bytes(bytes);
            let json = serde_json::to_string(&p).unwrap();
            prop_assert_eq!(&json, &format!("\"{p}\""));
            prop_assert_eq!(serde_json::from_str::<Principal>(&json).unwrap(), p);
            let cbor = cbor4ii::serde::to_vec(Vec::new(), &p).unwrap();
            prop_assert_eq!(&cbor[..2], &[0x58, 32][..]);
            prop_assert_eq!(&cbor[2..], &bytes[..]);
            prop_assert_eq!(cbor4ii::serde::from_slice::<Principal>(&cbor).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Principal>();
        }
    }

    #[test]
    fn rejects_other_forms() {
        let p = Principal::of_key(&[7; 32]).to_string();
        assert_eq!(
            p.to_uppercase().parse::<Principal>(),
            Err(ParseError::Character(
                p.to_uppercase()
                    .chars()
                    .find(|c| c.is_ascii_uppercase())
                    .unwrap()
            ))
        );
        assert_eq!(p[1..].parse::<Principal>(), Err(ParseError::Length(51)));
        assert_eq!(
            format!("{p}a").parse::<Principal>(),
            Err(ParseError::Length(53))
        );
        assert!(matches!(
            "1".repeat(52).parse::<Principal>(),
            Err(ParseError::Character('1'))
        ));
        // 52 base32 characters carry 260 bits; the last 4 must be zero.
        let mut bad = p.clone().into_bytes();
        bad[51] = b'7';
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(bad.parse::<Principal>(), Err(ParseError::NotCanonical));
    }

    #[test]
    fn distinct_keys_distinct_principals() {
        assert_ne!(Principal::of_key(&[1; 32]), Principal::of_key(&[2; 32]));
    }
}
