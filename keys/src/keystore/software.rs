//! Passphrase-encrypted and plaintext (development) key stores.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeyStore, KeyStoreError, StoreKind, random_bytes};
use crate::limits::MAX_SEALED_FILE_BYTES;

/// Argon2id cost parameters, recorded in every blob so that they can change later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Params {
    /// The default: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended setting,
    /// with one lane for small machines). About a quarter second here.
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Upper bounds accepted from a file, so a crafted blob cannot make us allocate
    /// gigabytes or spin for minutes.
    const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_PARALLELISM: u32 = 16;

    fn argon2(&self) -> Result<argon2::Argon2<'static>, KeyStoreError> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(KeyStoreError::Malformed(format!(
                "Argon2 parameters out of bounds: {self:?}"
            )));
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(64))
                .map_err(|e| {
                    KeyStoreError::Malformed(format!("Argon2 parameters {self:?}: {e}"))
                })?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A passphrase, wiped from memory when dropped.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// A passphrase from its bytes. A trailing newline (as a file usually has) is kept;
    /// callers that read files strip it first.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Passphrase(Zeroizing::new(bytes.into()))
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

const BLOB_VERSION: u16 = 1;
const CHECK_CONTEXT: &str = "blocktree 2026-11 passphrase check v1";
const SALT_LEN: usize = 16;

#[derive(Serialize, Deserialize)]
struct SoftwareBlob {
    version: u16,
    params: Argon2Params,
    #[serde(with = "serde_bytes")]
    salt: [u8; SALT_LEN],
    /// A keyed hash of the derived key: tells a wrong passphrase from a tampered blob.
    #[serde(with = "serde_bytes")]
    check: [u8; 16],
    #[serde(with = "serde_bytes")]
    nonce: [u8; 24],
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

/// Keeps secrets encrypted with XChaCha20-Poly1305 under a key derived from a passphrase
/// with Argon2id. The label is the AEAD's associated data.
///
/// ```
/// use keys::keystore::{Argon2Params, KeyStore, Passphrase, SoftwareStore};
/// let cheap = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };
/// let mut store = SoftwareStore::new(Passphrase::new("correct horse")).with_params(cheap);
/// let blob = store.seal("node-key", b"secret").unwrap();
/// assert_eq!(&store.unseal("node-key", &blob).unwrap()[..], b"secret");
/// ```
#[derive(Debug)]
pub struct SoftwareStore {
    passphrase: Passphrase,
    params: Argon2Params,
}

impl SoftwareStore {
    /// A store that seals under `passphrase` with [`Argon2Params::DEFAULT`].
    pub fn new(passphrase: Passphrase) -> Self {
        SoftwareStore {
            passphrase,
            params: Argon2Params::DEFAULT,
        }
    }

    /// Uses other Argon2 parameters for new blobs (existing blobs carry their own).
    pub fn with_params(mut self, params: Argon2Params) -> Self {
        self.params = params;
        self
    }

    /// Derives (encryption key, check value) from the passphrase.
    fn derive(
        &self,
        params: &Argon2Params,
        salt: &[u8; SALT_LEN],
    ) -> Result<(Zeroizing<[u8; 32]>, [u8; 16]), KeyStoreError> {
        let mut okm = Zeroizing::new([0u8; 64]);
        params
            .argon2()?
            .hash_password_into(self.passphrase.as_bytes(), salt, &mut okm[..])
            .map_err(|e| KeyStoreError::Crypto(format!("Argon2id: {e}")))?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&okm[..32]);
        let mut check_key = Zeroizing::new([0u8; 32]);
        check_key.copy_from_slice(&okm[32..]);
        let hash = blake3::keyed_hash(&check_key, CHECK_CONTEXT.as_bytes());
        let mut check = [0u8; 16];
        check.copy_from_slice(&hash.as_bytes()[..16]);
        Ok((key, check))
    }
}

impl KeyStore for SoftwareStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Software
    }

    fn seal(&mut self, label: &str, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce)?;
        let (key, check) = self.derive(&self.params, &salt)?;
        let ciphertext = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| KeyStoreError::Crypto("encryption failed".into()))?;
        let blob = SoftwareBlob {
            version: BLOB_VERSION,
            params: self.params,
            salt,
            check,
            nonce,
            ciphertext,
        };
        cbor4ii::serde::to_vec(Vec::new(), &blob)
            .map_err(|e| KeyStoreError::Crypto(format!("encoding the blob: {e}")))
    }

    fn unseal(&mut self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let blob: SoftwareBlob = crate::cbor::from_slice(blob, MAX_SEALED_FILE_BYTES)
            .map_err(|e| KeyStoreError::Malformed(format!("not a software-store blob: {e}")))?;
        if blob.version != BLOB_VERSION {
            return Err(KeyStoreError::Malformed(format!(
                "unknown software-store blob version {}",
                blob.version
            )));
        }
        let (key, check) = self.derive(&blob.params, &blob.salt)?;
        if !constant_time_eq(&check, &blob.check) {
            return Err(KeyStoreError::WrongPassphrase);
        }
        XChaCha20Poly1305::new(key.as_ref().into())
            .decrypt(
                XNonce::from_slice(&blob.nonce),
                Payload {
                    msg: &blob.ciphertext,
                    aad: label.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyStoreError::Tampered)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Development mode: keeps secrets in clear (the file is still mode 0600), and says so
/// with a warning every time it is used. Never the default.
#[derive(Debug, Default)]
pub struct PlaintextStore;

#[derive(Serialize, Deserialize)]
struct PlaintextBlob<'a> {
    version: u16,
    label: &'a str,
    #[serde(with = "serde_bytes")]
    secret: Vec<u8>,
}

impl KeyStore for PlaintextStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Plaintext
    }

    fn seal(&mut self, label: &str, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        tracing::warn!(
            label,
            "storing a private key IN CLEAR (plaintext development key store)"
        );
        let blob = PlaintextBlob {
            version: BLOB_VERSION,
            label,
            secret: secret.to_vec(),
        };
        cbor4ii::serde::to_vec(Vec::new(), &blob)
            .map_err(|e| KeyStoreError::Crypto(format!("encoding the blob: {e}")))
    }

    fn unseal(&mut self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        tracing::warn!(
            label,
            "reading a private key stored IN CLEAR (plaintext development key store)"
        );
        let blob: PlaintextBlob<'_> = crate::cbor::from_slice(blob, MAX_SEALED_FILE_BYTES)
            .map_err(|e| KeyStoreError::Malformed(format!("not a plaintext-store blob: {e}")))?;
        if blob.version != BLOB_VERSION {
            return Err(KeyStoreError::Malformed(format!(
                "unknown plaintext-store blob version {}",
                blob.version
            )));
        }
        if blob.label != label {
            return Err(KeyStoreError::WrongLabel {
                expected: label.to_owned(),
                found: blob.label.to_owned(),
            });
        }
        Ok(Zeroizing::new(blob.secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn store(pass: &str) -> SoftwareStore {
        SoftwareStore::new(Passphrase::new(pass)).with_params(CHEAP)
    }

    #[test]
    fn round_trip() {
        let blob = store("pw").seal("node-key", b"0123456789").unwrap();
        assert_eq!(
            &store("pw").unseal("node-key", &blob).unwrap()[..],
            b"0123456789"
        );
    }

    #[test]
    fn wrong_passphrase_is_told_apart() {
        let blob = store("pw").seal("node-key", b"secret").unwrap();
        assert!(matches!(
            store("not pw").unseal("node-key", &blob),
            Err(KeyStoreError::WrongPassphrase)
        ));
    }

    #[test]
    fn tampered_ciphertext_and_label_fail() {
        let blob = store("pw").seal("node-key", b"secret").unwrap();
        let mut parsed: SoftwareBlob = cbor4ii::serde::from_slice(&blob).unwrap();
        parsed.ciphertext[0] ^= 1;
        let tampered = cbor4ii::serde::to_vec(Vec::new(), &parsed).unwrap();
        assert!(matches!(
            store("pw").unseal("node-key", &tampered),
            Err(KeyStoreError::Tampered)
        ));
        assert!(matches!(
            store("pw").unseal("other-key", &blob),
            Err(KeyStoreError::Tampered)
        ));
    }

    #[test]
    fn hostile_parameters_are_refused_before_work() {
        let blob = store("pw").seal("k", b"s").unwrap();
        let mut parsed: SoftwareBlob = cbor4ii::serde::from_slice(&blob).unwrap();
        parsed.params.memory_kib = u32::MAX;
        let hostile = cbor4ii::serde::to_vec(Vec::new(), &parsed).unwrap();
        assert!(matches!(
            store("pw").unseal("k", &hostile),
            Err(KeyStoreError::Malformed(_))
        ));
        assert!(matches!(
            store("pw").unseal("k", b"\xff\x00garbage"),
            Err(KeyStoreError::Malformed(_))
        ));
    }

    #[test]
    fn plaintext_store_checks_label() {
        let blob = PlaintextStore.seal("a", b"s").unwrap();
        assert_eq!(&PlaintextStore.unseal("a", &blob).unwrap()[..], b"s");
        assert!(matches!(
            PlaintextStore.unseal("b", &blob),
            Err(KeyStoreError::WrongLabel { .. })
        ));
    }
}
