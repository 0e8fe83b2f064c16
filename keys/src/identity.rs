//! A principal's keys: ed25519 to sign, X25519 to receive readcaps.

use std::fmt;

use hpke::{Deserializable, Kem as _, Serializable};
use rand_core::TryRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::principal::Principal;
use crate::sign::{PublicKey, Signature, SignatureError, SigningKey};

pub(crate) type Kem = hpke::kem::X25519HkdfSha256;
type EncryptionSecret = <Kem as hpke::Kem>::PrivateKey;
pub(crate) type EncryptionPublic = <Kem as hpke::Kem>::PublicKey;

const SECRET_VERSION: u16 = 1;
const PUBLIC_VERSION: u16 = 1;
const BINDING_CONTEXT: &str = "blocktree 2026-11 encryption key binding v1";

/// The secret half of a principal: an ed25519 signing key and an X25519 key that readcaps
/// are sealed to.
pub struct Identity {
    signing: SigningKey,
    encryption: EncryptionSecret,
}

/// The public half of a principal, self-signed: the X25519 key is bound to the signing
/// key (whose hash is the principal) by a signature, so nobody can substitute their own
/// encryption key for someone else's principal.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    version: u16,
    signing: PublicKey,
    #[serde(with = "serde_bytes")]
    encryption: [u8; 32],
    signature: Signature,
}

/// Why secret key bytes or a public identity were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The encoded secret keys are not in the expected format.
    #[error("malformed secret keys: {0}")]
    Malformed(String),
    /// The public identity's version is unknown.
    #[error("unknown identity version {0}")]
    UnknownVersion(u16),
    /// The binding signature does not verify.
    #[error("the encryption key is not signed by the principal's key")]
    BadBinding(#[from] SignatureError),
}

#[derive(Serialize, Deserialize)]
struct SecretKeys {
    version: u16,
    #[serde(with = "serde_bytes")]
    signing: [u8; 32],
    #[serde(with = "serde_bytes")]
    encryption: [u8; 32],
}

impl Identity {
    /// Fresh keys from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let (encryption, _) = Kem::gen_keypair(&mut rand_core::OsRng.unwrap_err());
        Identity {
            signing: SigningKey::generate(),
            encryption,
        }
    }

    /// The identity whose signing key is `signing` and whose X25519 key is derived from
    /// it, for a principal that already has its signing key (a node's, a simulated
    /// user's): the same signing key always gives the same identity.
    pub fn from_signing_key(signing: SigningKey) -> Self {
        let mut ikm = blake3::derive_key(
            "blocktree 2026-11 encryption key from signing key v1",
            signing.to_bytes().as_ref(),
        );
        let (encryption, _) = Kem::derive_keypair(&ikm);
        zeroize::Zeroize::zeroize(&mut ikm);
        Identity {
            signing,
            encryption,
        }
    }

    /// The first data key of the anchor `anchor` (a tree's root, named by its inode id)
    /// when this principal creates it. Derived rather than drawn: two clients of one
    /// principal that each find the root missing (its replicas out of reach) and create
    /// it write versions that open with the same key, so a reader merges them instead of
    /// failing on one. Only the principal's secret key gives it.
    pub fn anchor_key(&self, anchor: &[u8]) -> crate::DataKey {
        let mut hasher = blake3::Hasher::new_derive_key("blocktree 2026-11 anchor data key v1");
        hasher.update(self.signing.to_bytes().as_ref());
        hasher.update(anchor);
        crate::DataKey::from_bytes(*hasher.finalize().as_bytes())
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The principal.
    pub fn principal(&self) -> Principal {
        self.signing.principal()
    }

    /// The self-signed public identity.
    pub fn public(&self) -> PublicIdentity {
        let encryption: [u8; 32] = Kem::sk_to_pk(&self.encryption).to_bytes().into();
        let signature = self.signing.sign(BINDING_CONTEXT, &encryption);
        PublicIdentity {
            version: PUBLIC_VERSION,
            signing: self.signing.public_key(),
            encryption,
            signature,
        }
    }

    pub(crate) fn encryption_secret(&self) -> &EncryptionSecret {
        &self.encryption
    }

    /// The secret keys, encoded for a [`KeyStore`](crate::keystore::KeyStore) to seal.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let keys = SecretKeys {
            version: SECRET_VERSION,
            signing: *self.signing.to_bytes(),
            encryption: self.encryption.to_bytes().into(),
        };
        // Encoding a fixed-size struct into a Vec cannot fail.
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &keys).unwrap_or_default();
        let SecretKeys {
            mut signing,
            mut encryption,
            ..
        } = keys;
        zeroize::Zeroize::zeroize(&mut signing);
        zeroize::Zeroize::zeroize(&mut encryption);
        Zeroizing::new(bytes)
    }

    /// Secret keys from [`Identity::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let mut keys: SecretKeys = crate::cbor::from_slice(bytes, 128)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?;
        let result = if keys.version != SECRET_VERSION {
            Err(IdentityError::Malformed(format!(
                "unknown version {}",
                keys.version
            )))
        } else {
            EncryptionSecret::from_bytes(&keys.encryption)
                .map(|encryption| Identity {
                    signing: SigningKey::from_bytes(&keys.signing),
                    encryption,
                })
                .map_err(|e| IdentityError::Malformed(format!("X25519 key: {e}")))
        };
        zeroize::Zeroize::zeroize(&mut keys.signing);
        zeroize::Zeroize::zeroize(&mut keys.encryption);
        result
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.principal())
    }
}

impl PublicIdentity {
    /// Checks the version and the signature binding the encryption key.
    pub fn verify(&self) -> Result<(), IdentityError> {
        if self.version != PUBLIC_VERSION {
            return Err(IdentityError::UnknownVersion(self.version));
        }
        self.signing
            .verify(BINDING_CONTEXT, &self.encryption, &self.signature)?;
        Ok(())
    }

    /// The principal.
    pub fn principal(&self) -> Principal {
        self.signing.principal()
    }

    /// The signing public key.
    pub fn signing_key(&self) -> &PublicKey {
        &self.signing
    }

    pub(crate) fn encryption_key(&self) -> Result<EncryptionPublic, IdentityError> {
        EncryptionPublic::from_bytes(&self.encryption)
            .map_err(|e| IdentityError::Malformed(format!("X25519 key: {e}")))
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({})", self.principal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_round_trip() {
        let id = Identity::generate();
        let back = Identity::from_secret_bytes(&id.to_secret_bytes()).unwrap();
        assert_eq!(back.principal(), id.principal());
        assert_eq!(back.public().encryption, id.public().encryption);
        assert!(Identity::from_secret_bytes(b"junk").is_err());
    }

    #[test]
    fn an_identity_from_a_signing_key_is_that_keys_and_always_the_same() {
        let key = SigningKey::generate();
        let a = Identity::from_signing_key(key.clone());
        let b = Identity::from_signing_key(key.clone());
        assert_eq!(a.principal(), key.principal());
        assert_eq!(a.public().encryption, b.public().encryption);
        a.public().verify().unwrap();
        let other = Identity::from_signing_key(SigningKey::generate());
        assert_ne!(a.public().encryption, other.public().encryption);
    }

    #[test]
    fn anchor_keys_are_the_principals_own_and_per_anchor() {
        let id = Identity::generate();
        assert_eq!(
            id.anchor_key(b"a").as_bytes(),
            id.anchor_key(b"a").as_bytes()
        );
        assert_ne!(
            id.anchor_key(b"a").as_bytes(),
            id.anchor_key(b"b").as_bytes()
        );
        let other = Identity::generate();
        assert_ne!(
            id.anchor_key(b"a").as_bytes(),
            other.anchor_key(b"a").as_bytes()
        );
    }

    #[test]
    fn binding_is_checked() {
        let id = Identity::generate();
        id.public().verify().unwrap();
        let mut forged = id.public();
        forged.encryption = Identity::generate().public().encryption;
        assert!(matches!(forged.verify(), Err(IdentityError::BadBinding(_))));
    }
}
