//! Sealed secrets on disk.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeyStore, KeyStoreError, StoreKind};
use crate::limits::MAX_SEALED_FILE_BYTES;

const FILE_VERSION: u16 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    version: u16,
    store: StoreKind,
    label: String,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
}

/// Why a sealed file could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read key file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write key file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a sealed key file of a known version.
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was sealed by another kind of store than the one at hand.
    #[error(
        "key file {path} was sealed by the {found} key store, but the {expected} store was asked to open it"
    )]
    WrongStore {
        /// The file.
        path: PathBuf,
        /// The store at hand.
        expected: StoreKind,
        /// The store recorded in the file.
        found: StoreKind,
    },
    /// The store refused to seal or unseal.
    #[error("key file {path}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The store's error.
        source: KeyStoreError,
    },
}

/// A secret sealed by a [`KeyStore`], in a file of its own.
///
/// Writes are atomic (temporary file, fsync, rename, fsync of the directory) and the
/// file has mode 0600 in a directory of mode 0700.
#[derive(Debug, Clone)]
pub struct SealedFile {
    path: PathBuf,
}

impl SealedFile {
    /// The sealed file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SealedFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether something exists at the path.
    pub fn exists(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    /// Reads the kind of store that sealed the file, without unsealing it.
    pub fn store_kind(&self) -> Result<StoreKind, FileError> {
        Ok(self.read_header()?.store)
    }

    /// Seals `secret` with `store` and writes it, replacing any previous file.
    pub fn write(
        &self,
        store: &mut dyn KeyStore,
        label: &str,
        secret: &[u8],
    ) -> Result<(), FileError> {
        let blob = store
            .seal(label, secret)
            .map_err(|source| FileError::Store {
                path: self.path.clone(),
                source,
            })?;
        let header = Header {
            version: FILE_VERSION,
            store: store.kind(),
            label: label.to_owned(),
            blob,
        };
        let bytes =
            cbor4ii::serde::to_vec(Vec::new(), &header).map_err(|e| FileError::Corrupt {
                path: self.path.clone(),
                reason: format!("encoding: {e}"),
            })?;
        self.write_atomic(&bytes)
            .map_err(|source| FileError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads and unseals the file with `store`.
    pub fn read(
        &self,
        store: &mut dyn KeyStore,
        label: &str,
    ) -> Result<Zeroizing<Vec<u8>>, FileError> {
        let header = self.read_header()?;
        if header.store != store.kind() {
            return Err(FileError::WrongStore {
                path: self.path.clone(),
                expected: store.kind(),
                found: header.store,
            });
        }
        if header.label != label {
            return Err(FileError::Store {
                path: self.path.clone(),
                source: KeyStoreError::WrongLabel {
                    expected: label.to_owned(),
                    found: header.label,
                },
            });
        }
        store
            .unseal(label, &header.blob)
            .map_err(|source| FileError::Store {
                path: self.path.clone(),
                source,
            })
    }

    fn read_header(&self) -> Result<Header, FileError> {
        let read_err = |source| FileError::Read {
            path: self.path.clone(),
            source,
        };
        let corrupt = |reason: String| FileError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let len = fs::metadata(&self.path).map_err(read_err)?.len();
        if len > MAX_SEALED_FILE_BYTES as u64 {
            return Err(corrupt(format!(
                "{len} bytes, more than a key file can hold ({MAX_SEALED_FILE_BYTES})"
            )));
        }
        let bytes = fs::read(&self.path).map_err(read_err)?;
        let header: Header = crate::cbor::from_slice(&bytes, MAX_SEALED_FILE_BYTES)
            .map_err(|e| corrupt(format!("not a sealed key file: {e}")))?;
        if header.version != FILE_VERSION {
            return Err(corrupt(format!("unknown version {}", header.version)));
        }
        Ok(header)
    }

    fn write_atomic(&self, bytes: &[u8]) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &self.path)?;
        fs::File::open(&dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{Argon2Params, Passphrase, PlaintextStore, SoftwareStore};

    fn software(pass: &str) -> SoftwareStore {
        SoftwareStore::new(Passphrase::new(pass)).with_params(Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
    }

    #[test]
    fn write_read_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = SealedFile::new(dir.path().join("keys/node.key"));
        file.write(&mut software("pw"), "node-key", b"s3cret")
            .unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.path().join("keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            &file.read(&mut software("pw"), "node-key").unwrap()[..],
            b"s3cret"
        );
        assert_eq!(file.store_kind().unwrap(), StoreKind::Software);
        let raw = fs::read(file.path()).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"s3cret"));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = SealedFile::new(dir.path().join("node.key"));
        let err = file.read(&mut software("pw"), "node-key").unwrap_err();
        assert!(matches!(err, FileError::Read { .. }));
        assert!(err.to_string().contains("node.key"), "{err}");

        fs::write(file.path(), b"this is not cbor").unwrap();
        let err = file.read(&mut software("pw"), "node-key").unwrap_err();
        assert!(matches!(err, FileError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("node.key"), "{err}");

        file.write(&mut software("pw"), "node-key", b"s").unwrap();
        let err = file.read(&mut software("wrong"), "node-key").unwrap_err();
        assert!(
            matches!(
                err,
                FileError::Store {
                    source: KeyStoreError::WrongPassphrase,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("node.key"), "{err}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(cause, "wrong passphrase");

        let err = file.read(&mut PlaintextStore, "node-key").unwrap_err();
        assert!(matches!(err, FileError::WrongStore { .. }), "{err}");
    }

    #[test]
    fn tampered_file_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let file = SealedFile::new(dir.path().join("node.key"));
        file.write(&mut software("pw"), "node-key", b"0123456789abcdef")
            .unwrap();
        let mut bytes = fs::read(file.path()).unwrap();
        // The ciphertext is the last field: flip a bit of its tag.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(file.path(), &bytes).unwrap();
        let err = file.read(&mut software("pw"), "node-key").unwrap_err();
        assert!(
            matches!(
                err,
                FileError::Store {
                    source: KeyStoreError::Tampered,
                    ..
                }
            ),
            "{err}"
        );
        // Truncation is reported as corruption, never a panic.
        fs::write(file.path(), &bytes[..bytes.len() / 2]).unwrap();
        let err = file.read(&mut software("pw"), "node-key").unwrap_err();
        assert!(matches!(err, FileError::Corrupt { .. }), "{err}");
    }
}
