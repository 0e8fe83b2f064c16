//! Message payloads: CBOR, as every protocol here carries them, and the JSON the command
//! line shows and takes.
//!
//! ```
//! let bytes = btnode::payload::from_json(&serde_json::json!({"key": null})).unwrap();
//! assert_eq!(btnode::payload::to_json(&bytes), serde_json::json!({"key": null}));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use keys::cbor::{DecodeError, EncodeError};

/// Encodes `value` as a CBOR payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    keys::cbor::to_vec(value)
}

/// Decodes a CBOR payload (at most [`keys::limits::MAX_MESSAGE_BYTES`]).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    keys::cbor::from_slice(payload, keys::limits::MAX_MESSAGE_BYTES)
}

/// The CBOR encoding of a JSON value (JSON's `null` as CBOR's null).
pub fn from_json(value: &serde_json::Value) -> Result<Vec<u8>, EncodeError> {
    keys::cbor::to_vec(&Json(value))
}

/// A payload as JSON: its CBOR value when it is CBOR that JSON can show, else its bytes
/// in hex (`{"hex": "…"}`); nothing at all is `null`.
pub fn to_json(payload: &[u8]) -> serde_json::Value {
    if payload.is_empty() {
        return serde_json::Value::Null;
    }
    match decode::<serde_json::Value>(payload) {
        Ok(value) => value,
        Err(_) => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "hex": hex })
        }
    }
}

/// A JSON value as CBOR: like `serde_json::Value`'s own `Serialize`, except that `null`
/// becomes CBOR null (cbor4ii writes serde's unit as an empty array).
struct Json<'a>(&'a serde_json::Value);

impl Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde_json::Value;
        match self.0 {
            Value::Null => serializer.serialize_none(),
            Value::Array(items) => serializer.collect_seq(items.iter().map(Json)),
            Value::Object(map) => serializer.collect_map(map.iter().map(|(k, v)| (k, Json(v)))),
            other => other.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            "[a-z0-9 ]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// What the CLI sends shows again as the same JSON, null included.
        #[test]
        fn json_payloads_survive_cbor(value in json()) {
            let bytes = from_json(&value).unwrap();
            prop_assert_eq!(to_json(&bytes), value);
        }
    }

    #[test]
    fn null_is_cbor_null_and_bytes_show_as_hex() {
        assert_eq!(from_json(&serde_json::Value::Null).unwrap(), [0xf6]);
        assert_eq!(to_json(&[0xff, 0x00]), serde_json::json!({ "hex": "ff00" }));
    }
}
