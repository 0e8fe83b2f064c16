//! Blocktree's wire formats: versioned CBOR messages with limits, and the protocol
//! definitions built on them.
//!
//! Every top-level type implements [`wire::Message`]; [`wire::encode`] and
//! [`wire::decode`] are the only way bytes become values, and every limit lives in
//! [`limits`].
//!
//! ```
//! use keys::{Path, SigningKey};
//! use protocols::wire;
//!
//! let path: Path = format!("/{}/photos", SigningKey::generate().principal()).parse().unwrap();
//! let bytes = wire::encode(&path).unwrap();
//! assert_eq!(wire::decode::<Path>(&bytes).unwrap(), path);
//! let mut trailing = bytes.clone();
//! trailing.push(0);
//! assert!(matches!(wire::decode::<Path>(&trailing), Err(wire::DecodeError::TrailingBytes { .. })));
//! ```

pub mod actor;
pub mod block;
pub mod messages;
pub mod session;
pub mod wire;

pub use keys::limits;
