//! Writecaps this node granted with `fs share --write`, kept in `grants.cbor` of the data
//! directory, so that `fs revoke` revokes every one of them: a share again replaces the
//! grant in the shared directory, but the older writecap stays valid until revoked, and
//! a directory keeps only its recent versions. Each grant keeps when its writecap
//! expires, so that revocation lists can drop it once no clock could still take it (see
//! [`expired`]).

use std::path::Path as FsPath;
use std::sync::Mutex;

use anyhow::Context;
use keys::{CapId, Path, Principal, Timestamp};
use serde::{Deserialize, Serialize};

const FILE: &str = "grants.cbor";

/// Largest grants file read.
const MAX_BYTES: u64 = 64 << 20;

/// How long after a writecap expires its revocation is still kept: a verifier whose clock
/// is behind would still take the writecap for that long.
pub(crate) const EXPIRY_MARGIN: u64 = 24 * 3600;

/// One read-modify-write of the file at a time.
static WRITING: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Granted {
    principal: Principal,
    path: Path,
    cap: CapId,
    /// When the writecap expires (seconds since the UNIX epoch); none in files written
    /// before it was kept, whose grants are never taken for expired.
    #[serde(default)]
    expires: Option<Timestamp>,
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

/// Keeps that this node granted `principal` the writecap `cap` for `path`, which expires
/// at `expires`. (Expired grants stay: [`expired`] is what tells the next revocation
/// list which of its entries to drop.)
pub(crate) fn record(
    data_dir: &FsPath,
    principal: Principal,
    path: Path,
    cap: CapId,
    expires: Timestamp,
) -> anyhow::Result<()> {
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let mut grants = read(data_dir)?;
    if grants.iter().any(|g| g.cap == cap) {
        return Ok(());
    }
    grants.push(Granted {
        principal,
        path,
        cap,
        expires: Some(expires),
    });
    write(data_dir, &grants)
}

fn write(data_dir: &FsPath, grants: &[Granted]) -> anyhow::Result<()> {
    let file = data_dir.join(FILE);
    let tmp = file.with_extension("cbor.tmp");
    let bytes = keys::cbor::to_vec(&grants)?;
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &file))
        .with_context(|| format!("cannot write {}", file.display()))
}

fn is_expired(granted: &Granted, now: Timestamp) -> bool {
    granted
        .expires
        .is_some_and(|e| e.saturating_add(EXPIRY_MARGIN) <= now)
}

/// The writecaps this node granted that expired more than [`EXPIRY_MARGIN`] before `now`:
/// no verifier takes them any more, so revocation lists need not name them.
pub(crate) fn expired(
    data_dir: &FsPath,
    now: Timestamp,
) -> anyhow::Result<std::collections::HashSet<CapId>> {
    Ok(read(data_dir)?
        .into_iter()
        .filter(|g| is_expired(g, now))
        .map(|g| g.cap)
        .collect())
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
            record(dir.path(), who, path.clone(), CapId([n; 32]), u64::MAX).unwrap();
        }
        record(dir.path(), alice, docs.clone(), CapId([1; 32]), u64::MAX).unwrap();
        let mut found = issued(dir.path(), &alice, &docs).unwrap();
        found.sort();
        assert_eq!(found, vec![CapId([1; 32]), CapId([2; 32])]);
        assert_eq!(issued(dir.path(), &alice, &tree).unwrap().len(), 3);
        std::fs::write(dir.path().join(FILE), b"\xff\xff").unwrap();
        let error = issued(dir.path(), &alice, &docs).unwrap_err();
        assert!(format!("{error:#}").contains("grants.cbor"), "{error:#}");
    }

    #[test]
    fn grants_expire_a_margin_after_their_writecaps_and_old_files_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Path::root_of(keys::SigningKey::generate().principal());
        let alice = keys::SigningKey::generate().principal();
        // A file written before grants kept their expiry.
        #[derive(Serialize)]
        struct Before {
            principal: Principal,
            path: Path,
            cap: CapId,
        }
        let before = vec![Before {
            principal: alice,
            path: tree.clone(),
            cap: CapId([9; 32]),
        }];
        std::fs::write(dir.path().join(FILE), keys::cbor::to_vec(&before).unwrap()).unwrap();
        assert_eq!(
            issued(dir.path(), &alice, &tree).unwrap(),
            vec![CapId([9; 32])]
        );
        assert!(expired(dir.path(), u64::MAX).unwrap().is_empty());

        let now = keys::now();
        let long_ago = now - EXPIRY_MARGIN - 10;
        let lately = now - 10;
        record(dir.path(), alice, tree.clone(), CapId([1; 32]), long_ago).unwrap();
        record(dir.path(), alice, tree.clone(), CapId([2; 32]), lately).unwrap();
        record(dir.path(), alice, tree.clone(), CapId([3; 32]), now + 3600).unwrap();
        assert_eq!(
            expired(dir.path(), now).unwrap(),
            [CapId([1; 32])].into_iter().collect()
        );
        // Within the margin a verifier's clock may still be before the expiry.
        assert_eq!(
            expired(dir.path(), lately + EXPIRY_MARGIN - 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            expired(dir.path(), lately + EXPIRY_MARGIN).unwrap().len(),
            2
        );
        // A grant recorded again keeps its first record.
        record(dir.path(), alice, tree.clone(), CapId([1; 32]), now + 3600).unwrap();
        assert_eq!(expired(dir.path(), now).unwrap().len(), 1);
        assert_eq!(issued(dir.path(), &alice, &tree).unwrap().len(), 4);
    }
}
