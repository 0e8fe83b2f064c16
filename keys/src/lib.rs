//! Names, credentials and key storage for Blocktree.
//!
//! - [`Principal`]: the BLAKE3 hash of an ed25519 public key, the name of a node, user or
//!   service; [`Path`]: `/<root-principal>/<segment>/…`, one parser, one error type.
//! - [`SigningKey`] / [`PublicKey`]: ed25519 with domain separation; [`Identity`]: a
//!   principal's signing key plus the X25519 key that [`Readcap`]s are sealed to.
//! - [`Chain`] of [`Writecap`]s: who may write where, rooted at a tree's root principal,
//!   checked against [`Revocations`].
//! - [`keystore`]: private keys at rest, encrypted under a passphrase or sealed by a TPM.
//!
//! ```
//! use keys::{Chain, Identity, Path, Revocations, Validity, now};
//!
//! let root = Identity::generate();
//! let node = Identity::generate();
//! let tree = Path::root_of(root.principal());
//! let services = tree.join("services").unwrap();
//! let chain = Chain::root_grant(root.signing_key(), node.principal(), services.clone(), Validity::for_seconds(3600));
//! let chat = services.join("chat").unwrap();
//! chain.verify(&chat, &node.principal(), now(), &Revocations::default()).unwrap();
//! assert!(chain.verify(&tree.join("other").unwrap(), &node.principal(), now(), &Revocations::default()).is_err());
//! ```

pub mod cbor;
pub mod identity;
pub mod keystore;
pub mod limits;
pub mod path;
pub mod principal;
pub mod readcap;
pub mod revocation;
pub mod sign;
pub mod swtpm;
pub mod verified;
pub mod writecap;

pub use identity::{Identity, IdentityError, PublicIdentity};
pub use path::{Path, PathError};
pub use principal::Principal;
pub use readcap::{DataKey, Readcap, ReadcapError};
pub use revocation::{RevocationError, RevocationList, Revocations, SharedRevocations};
pub use sign::{PublicKey, Signature, SignatureError, SigningKey};
pub use verified::{CheckedChain, NotRemembered, VerifiedChains};
pub use writecap::{CapId, Chain, Timestamp, Validity, Writecap, WritecapError, now};
