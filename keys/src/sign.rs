//! ed25519 signatures with domain separation.

use std::fmt;

use rand_core::{RngCore, TryRngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::principal::Principal;

/// An ed25519 signing key. Every signature is bound to a context string naming what is
/// signed, so a signature over one kind of object never verifies as another. The secret
/// is wiped from memory when the key (or any clone of it) is dropped.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

/// An ed25519 public key, checked to be a valid point when it is made or decoded.
#[derive(Clone, Copy)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The bytes are not an ed25519 public key.
    #[error("not an ed25519 public key")]
    BadKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
}

fn framed(context: &str, message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(2 + context.len() + message.len());
    framed.extend_from_slice(&(context.len() as u16).to_be_bytes());
    framed.extend_from_slice(context.as_bytes());
    framed.extend_from_slice(message);
    framed
}

impl SigningKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.unwrap_err().fill_bytes(&mut seed[..]);
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The key with this 32-byte secret seed.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(secret))
    }

    /// The 32-byte secret seed.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The principal this key speaks for.
    pub fn principal(&self) -> Principal {
        self.public_key().principal()
    }

    /// Signs `message` in `context`.
    pub fn sign(&self, context: &str, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.0.sign(&framed(context, message)).to_bytes())
    }

    /// The libp2p keypair made of the same secret, so a node's PeerId and its principal
    /// name the same key.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        let mut seed = self.0.to_bytes();
        // `ed25519_from_bytes` zeroes its input; it fails only on a wrong length.
        libp2p_identity::Keypair::ed25519_from_bytes(&mut seed)
            .expect("a 32-byte ed25519 seed is always accepted")
    }

    /// The libp2p PeerId of this key.
    pub fn peer_id(&self) -> libp2p_identity::PeerId {
        self.to_libp2p().public().to_peer_id()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.principal())
    }
}

impl PublicKey {
    /// Parses 32 bytes as a public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SignatureError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| SignatureError::BadKey)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The principal of this key.
    pub fn principal(&self) -> Principal {
        Principal::of_key(self.0.as_bytes())
    }

    /// The libp2p PeerId of this key.
    pub fn peer_id(&self) -> libp2p_identity::PeerId {
        match libp2p_identity::ed25519::PublicKey::try_from_bytes(self.as_bytes()) {
            Ok(key) => libp2p_identity::PublicKey::from(key).to_peer_id(),
            // A valid ed25519-dalek key is always a valid libp2p ed25519 key.
            Err(_) => unreachable!("ed25519 key accepted by dalek but not by libp2p"),
        }
    }

    /// The ed25519 key a PeerId embeds, if it is one (libp2p inlines ed25519 keys in the
    /// PeerId, so the key of an authenticated connection's peer is known without asking).
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Option<Self> {
        let multihash = peer.as_ref();
        // 0x00: the identity "hash", which holds the protobuf-encoded key itself.
        if multihash.code() != 0 {
            return None;
        }
        let key = libp2p_identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
        let key = key.try_into_ed25519().ok()?;
        Self::from_bytes(&key.to_bytes()).ok()
    }

    /// Verifies `signature` over `message` in `context` (strict: no malleable
    /// signatures, no small-order keys).
    pub fn verify(
        &self,
        context: &str,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(&framed(context, message), &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(of {})", self.principal())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(self.as_bytes()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(deserializer)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

impl Signature {
    /// A signature from its 64 bytes.
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }

    /// The 64 bytes.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<64> = Deserialize::deserialize(deserializer)?;
        Ok(Signature(bytes.into_array()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_context_separation() {
        let key = SigningKey::generate();
        let sig = key.sign("a", b"message");
        key.public_key().verify("a", b"message", &sig).unwrap();
        assert_eq!(
            key.public_key().verify("b", b"message", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key.public_key().verify("a", b"messagf", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            SigningKey::generate()
                .public_key()
                .verify("a", b"message", &sig),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn peer_id_and_principal_come_from_one_key() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let again = SigningKey::from_bytes(&key.to_bytes());
        assert_eq!(key.peer_id(), again.peer_id());
        assert_eq!(key.principal(), again.principal());
        let libp2p_public = key.to_libp2p().public().try_into_ed25519().unwrap();
        assert_eq!(&libp2p_public.to_bytes(), key.public_key().as_bytes());
        assert_eq!(key.public_key().peer_id(), key.peer_id());
        assert_eq!(
            PublicKey::from_peer_id(&key.peer_id()),
            Some(key.public_key())
        );
        // A PeerId that is a SHA-256 hash of some key carries no key.
        let mut hashed = vec![0x12, 0x20];
        hashed.extend_from_slice(&[7; 32]);
        let hashed = libp2p_identity::PeerId::from_bytes(&hashed).unwrap();
        assert_eq!(PublicKey::from_peer_id(&hashed), None);
    }
}
