//! Readcaps: a 32-byte data key sealed to a principal with HPKE (RFC 9180).
//!
//! The suite is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, in base
//! mode, from the `hpke` crate. The recipient's principal and a caller-chosen context
//! (such as the id of the inode the key opens) are the associated data, so a readcap
//! cannot be moved to another file or re-labelled for another recipient.

use std::fmt;

use hpke::{Deserializable, Serializable};
use rand_core::{RngCore, TryRngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity::{Identity, IdentityError, Kem, PublicIdentity};
use crate::principal::Principal;

type Aead = hpke::aead::ChaCha20Poly1305;
type Kdf = hpke::kdf::HkdfSha256;

const INFO: &[u8] = b"blocktree 2026-11 readcap v1";

/// A symmetric key that encrypts a file's or directory's contents.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.unwrap_err().fill_bytes(&mut key[..]);
        DataKey(key)
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key sealed to one principal.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readcap {
    recipient: Principal,
    #[serde(with = "serde_bytes")]
    encapped_key: [u8; 32],
    /// 32 bytes of key and a 16-byte tag.
    #[serde(with = "serde_bytes")]
    ciphertext: [u8; 48],
}

/// Why a readcap could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadcapError {
    /// The readcap is for another principal.
    #[error("this readcap is for {recipient}, not {us}")]
    WrongRecipient {
        /// Whom it is sealed to.
        recipient: Principal,
        /// Who tried to open it.
        us: Principal,
    },
    /// HPKE refused to open it: another recipient's key, another context, or altered.
    #[error("the readcap does not open with this key and context (wrong recipient or altered)")]
    OpenFailed,
    /// The recipient's public identity does not verify.
    #[error("the recipient's identity does not verify")]
    Identity(#[from] IdentityError),
    /// HPKE failed while sealing.
    #[error("sealing failed: {0}")]
    Seal(String),
}

fn aad(recipient: &Principal, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + context.len());
    aad.extend_from_slice(recipient.as_bytes());
    aad.extend_from_slice(context);
    aad
}

impl Readcap {
    /// Seals `key` to `recipient`, bound to `context`.
    pub fn seal(
        key: &DataKey,
        recipient: &PublicIdentity,
        context: &[u8],
    ) -> Result<Readcap, ReadcapError> {
        recipient.verify()?;
        let principal = recipient.principal();
        let (encapped, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
            &hpke::OpModeS::Base,
            &recipient.encryption_key()?,
            INFO,
            key.as_bytes(),
            &aad(&principal, context),
            &mut rand_core::OsRng.unwrap_err(),
        )
        .map_err(|e| ReadcapError::Seal(e.to_string()))?;
        let ciphertext: [u8; 48] = ciphertext
            .try_into()
            .map_err(|_| ReadcapError::Seal("unexpected ciphertext length".into()))?;
        Ok(Readcap {
            recipient: principal,
            encapped_key: encapped.to_bytes().into(),
            ciphertext,
        })
    }

    /// Opens the readcap with the recipient's identity, for the same `context`.
    pub fn open(&self, identity: &Identity, context: &[u8]) -> Result<DataKey, ReadcapError> {
        let us = identity.principal();
        if us != self.recipient {
            return Err(ReadcapError::WrongRecipient {
                recipient: self.recipient,
                us,
            });
        }
        self.open_unchecked(identity, context)
    }

    fn open_unchecked(&self, identity: &Identity, context: &[u8]) -> Result<DataKey, ReadcapError> {
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&self.encapped_key)
            .map_err(|_| ReadcapError::OpenFailed)?;
        let plaintext = Zeroizing::new(
            hpke::single_shot_open::<Aead, Kdf, Kem>(
                &hpke::OpModeR::Base,
                identity.encryption_secret(),
                &encapped,
                INFO,
                &self.ciphertext,
                &aad(&self.recipient, context),
            )
            .map_err(|_| ReadcapError::OpenFailed)?,
        );
        let key: [u8; 32] = plaintext[..]
            .try_into()
            .map_err(|_| ReadcapError::OpenFailed)?;
        Ok(DataKey::from_bytes(key))
    }

    /// The principal this readcap is sealed to.
    pub fn recipient(&self) -> &Principal {
        &self.recipient
    }
}

impl fmt::Debug for Readcap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Readcap(to {})", self.recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let alice = Identity::generate();
        let key = DataKey::generate();
        let cap = Readcap::seal(&key, &alice.public(), b"inode 1").unwrap();
        assert_eq!(cap.open(&alice, b"inode 1").unwrap(), key);
        assert_eq!(cap.recipient(), &alice.principal());
    }

    #[test]
    fn wrong_recipient_fails() {
        let alice = Identity::generate();
        let mallory = Identity::generate();
        let cap = Readcap::seal(&DataKey::generate(), &alice.public(), b"ctx").unwrap();
        assert!(matches!(
            cap.open(&mallory, b"ctx"),
            Err(ReadcapError::WrongRecipient { .. })
        ));
        // Even a relabelled readcap does not open with another key: HPKE itself fails.
        let relabelled = Readcap {
            recipient: mallory.principal(),
            ..cap.clone()
        };
        assert_eq!(
            relabelled.open(&mallory, b"ctx"),
            Err(ReadcapError::OpenFailed)
        );
        assert_eq!(
            cap.open_unchecked(&mallory, b"ctx"),
            Err(ReadcapError::OpenFailed)
        );
    }

    #[test]
    fn context_and_tampering_fail() {
        let alice = Identity::generate();
        let cap = Readcap::seal(&DataKey::generate(), &alice.public(), b"inode 1").unwrap();
        assert_eq!(cap.open(&alice, b"inode 2"), Err(ReadcapError::OpenFailed));
        let mut tampered = cap.clone();
        tampered.ciphertext[3] ^= 1;
        assert_eq!(
            tampered.open(&alice, b"inode 1"),
            Err(ReadcapError::OpenFailed)
        );
        let mut tampered = cap;
        tampered.encapped_key[0] ^= 1;
        assert_eq!(
            tampered.open(&alice, b"inode 1"),
            Err(ReadcapError::OpenFailed)
        );
    }

    #[test]
    fn sealing_to_a_forged_identity_is_refused() {
        let alice = Identity::generate();
        let mut bytes = cbor4ii::serde::to_vec(Vec::new(), &alice.public()).unwrap();
        // Flip a bit inside the encryption key: it precedes the 64-byte signature, its
        // 2-byte header and the 10-byte key "signature".
        let n = bytes.len();
        bytes[n - 80] ^= 1;
        let forged: PublicIdentity = cbor4ii::serde::from_slice(&bytes).unwrap();
        assert!(matches!(
            Readcap::seal(&DataKey::generate(), &forged, b""),
            Err(ReadcapError::Identity(_))
        ));
    }
}
