//! Writecaps this node granted with `fs share --write`, kept in `grants.cbor` of the data
//! directory, so that `fs revoke` revokes every one of them: a share again replaces the
//! grant in the shared directory, but the older writecap stays valid until revoked, and
//! a directory keeps only its recent versions.

use std::path::Path as FsPath;
use std::sync::Mutex;

use anyhow::Context;
use keys::{CapId, Path, Principal};
use serde::{Deserialize, Serialize};

const FILE: &str = "grants.cbor";

/// Largest grants file read.
const MAX_BYTES: u64 = 64 << 20;

/// One read-modify-write of the file at a time.
static WRITING: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Granted {
    principal: Principal,
    path: Path,
    cap: CapId,
}

fn read(data_dir: &FsPath) -> anyhow::Result<Vec<Granted>> {
    let file = data_dir.join(FILE);
    let len = match std::fs::metadata(&file) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    if len > MAX_BYTES {
        anyhow::bail!(
            "{} holds {len} bytes, more than {MAX_BYTES}",
            file.display()
        );
    }
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    keys::cbor::from_slice(&bytes, MAX_BYTES as usize)
        .with_context(|| format!("{} is not a list of granted writecaps", file.display()))
}

/// Keeps that this node granted `principal` the writecap `cap` for `path`.
pub(crate) fn record(
    data_dir: &FsPath,
    principal: Principal,
    path: Path,
    cap: CapId,
) -> anyhow::Result<()> {
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let mut grants = read(data_dir)?;
    let granted = Granted {
        principal,
        path,
        cap,
    };
    if grants.contains(&granted) {
        return Ok(());
    }
    grants.push(granted);
    let file = data_dir.join(FILE);
    let bytes = keys::cbor::to_vec(&grants)?;
    crate::atomic::write(&file, &bytes).with_context(|| format!("cannot write {}", file.display()))
}

/// The writecaps this node granted `principal` at or below `path`.
pub(crate) fn issued(
    data_dir: &FsPath,
    principal: &Principal,
    path: &Path,
) -> anyhow::Result<Vec<CapId>> {
    Ok(read(data_dir)?
        .into_iter()
        .filter(|g| &g.principal == principal && g.path.starts_with(path))
        .map(|g| g.cap)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_found_at_and_below_a_path_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = keys::SigningKey::generate().principal();
        let (alice, bob) = (
            keys::SigningKey::generate().principal(),
            keys::SigningKey::generate().principal(),
        );
        let tree = Path::root_of(root);
        let docs = tree.join("docs").unwrap();
        let deep = docs.join("deep").unwrap();
        let photos = tree.join("photos").unwrap();
        assert!(issued(dir.path(), &alice, &docs).unwrap().is_empty());
        for (who, path, n) in [
            (alice, &docs, 1),
            (alice, &deep, 2),
            (alice, &photos, 3),
            (bob, &docs, 4),
        ] {
            record(dir.path(), who, path.clone(), CapId([n; 32])).unwrap();
        }
        record(dir.path(), alice, docs.clone(), CapId([1; 32])).unwrap();
        let mut found = issued(dir.path(), &alice, &docs).unwrap();
        found.sort();
        assert_eq!(found, vec![CapId([1; 32]), CapId([2; 32])]);
        assert_eq!(issued(dir.path(), &alice, &tree).unwrap().len(), 3);
        std::fs::write(dir.path().join(FILE), b"\xff\xff").unwrap();
        let error = issued(dir.path(), &alice, &docs).unwrap_err();
        assert!(format!("{error:#}").contains("grants.cbor"), "{error:#}");
    }
}
