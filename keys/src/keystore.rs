//! Key stores: where a node's private keys live at rest.
//!
//! Every store implements [`KeyStore`]: it seals a secret into a blob that only it can
//! open, binding a label (the secret's purpose) into the blob so that blobs cannot be
//! swapped between files. [`SealedFile`] puts such a blob on disk, atomically and with
//! mode 0600. Stores:
//!
//! - [`SoftwareStore`]: XChaCha20-Poly1305 under a key derived with Argon2id from a
//!   passphrase.
//! - [`PlaintextStore`]: an explicit development mode that keeps the secret in clear.
//! - [`TpmStore`]: sealed by a TPM 2.0; the blob is useless without that TPM.

mod file;
mod software;
mod tpm;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use file::{FileError, SealedFile};
pub use software::{Argon2Params, Passphrase, PlaintextStore, SoftwareStore};
pub use tpm::{TpmStore, default_tcti};

/// Which kind of store sealed a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StoreKind {
    /// Encrypted under a passphrase ([`SoftwareStore`]).
    Software,
    /// In clear, for development only ([`PlaintextStore`]).
    Plaintext,
    /// Sealed by a TPM 2.0 ([`TpmStore`]).
    Tpm,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Software => "software",
            StoreKind::Plaintext => "plaintext",
            StoreKind::Tpm => "tpm",
        })
    }
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "software" => Ok(StoreKind::Software),
            "plaintext" => Ok(StoreKind::Plaintext),
            "tpm" => Ok(StoreKind::Tpm),
            other => Err(format!(
                "unknown key store {other:?}: expected software, plaintext or tpm"
            )),
        }
    }
}

/// Why a store could not seal or unseal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The passphrase does not open this blob.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase is right but the encrypted secret was altered.
    #[error("the sealed secret was altered (authentication failed)")]
    Tampered,
    /// The blob is not in the store's format, or its parameters are out of bounds.
    #[error("the sealed blob is malformed: {0}")]
    Malformed(String),
    /// The blob was sealed for another purpose than the one asked for.
    #[error("the sealed blob is for {found:?}, not {expected:?}")]
    WrongLabel {
        /// The label asked for.
        expected: String,
        /// The label in the blob.
        found: String,
    },
    /// The blob was sealed by another TPM, or by this TPM before it was cleared.
    #[error("the blob was not sealed by this TPM (TPM integrity check failed)")]
    WrongTpm,
    /// The TPM could not be reached or refused an operation.
    #[error("TPM ({tcti}): {message}")]
    Tpm {
        /// The TCTI that was used.
        tcti: String,
        /// What went wrong.
        message: String,
    },
    /// No passphrase was provided to a store that needs one.
    #[error("no passphrase: {0}")]
    NoPassphrase(String),
    /// Randomness or key derivation failed.
    #[error("{0}")]
    Crypto(String),
}

/// Seals and unseals secrets. Implementations: [`SoftwareStore`], [`PlaintextStore`],
/// [`TpmStore`].
pub trait KeyStore: fmt::Debug + Send {
    /// The kind of this store, recorded beside every blob it seals.
    fn kind(&self) -> StoreKind;

    /// Seals `secret` for `label` (its purpose, such as `"node-key"`).
    fn seal(&mut self, label: &str, secret: &[u8]) -> Result<Vec<u8>, KeyStoreError>;

    /// Opens a blob that [`KeyStore::seal`] made for the same `label`.
    fn unseal(&mut self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError>;
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), KeyStoreError> {
    getrandom::getrandom(buf).map_err(|e| KeyStoreError::Crypto(format!("no randomness: {e}")))
}
