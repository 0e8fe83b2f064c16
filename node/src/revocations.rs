//! Revocation lists on a node's disk: the lists in force, one file per issuer in
//! `revocations/` of the data directory, read at start and written whenever a newer list
//! is taken (issued here or received on the overlay).

use std::path::{Path as FsPath, PathBuf};

use anyhow::Context;
use keys::{CapId, Principal, RevocationList, Revocations, SigningKey};
use protocols::wire;

const DIR: &str = "revocations";

fn file_of(data_dir: &FsPath, issuer: &Principal) -> PathBuf {
    let name = blake3::hash(issuer.to_string().as_bytes()).to_hex();
    data_dir.join(DIR).join(format!("{}.list", &name[..16]))
}

/// Every list kept in `data_dir`, checked. A file that does not hold a list signed by its
/// issuer stops the node with an error naming it: starting without a list would let
/// revoked writecaps write again.
pub(crate) fn load(data_dir: &FsPath) -> anyhow::Result<Vec<RevocationList>> {
    let dir = data_dir.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut lists = Vec::new();
    for entry in entries {
        let file = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if file.extension().is_none_or(|e| e != "list") {
            continue;
        }
        let len = std::fs::metadata(&file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        if len > keys::limits::MAX_REVOCATION_LIST_BYTES as u64 {
            anyhow::bail!(
                "{} holds {len} bytes, more than a revocation list may ({})",
                file.display(),
                keys::limits::MAX_REVOCATION_LIST_BYTES
            );
        }
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let list: RevocationList = wire::decode(&bytes)
            .with_context(|| format!("{} is not a revocation list", file.display()))?;
        list.verify().with_context(|| {
            format!("the revocation list in {} does not verify", file.display())
        })?;
        lists.push(list);
    }
    Ok(lists)
}

/// Writes `list` as its issuer's list in force (replacing the older one), durably.
pub(crate) fn save(data_dir: &FsPath, list: &RevocationList) -> anyhow::Result<()> {
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = file_of(data_dir, &list.issuer());
    let bytes = wire::encode(list)?;
    crate::atomic::write(&file, &bytes).with_context(|| format!("cannot write {}", file.display()))
}

/// The list that follows `key`'s list in force in `held`: everything it revoked, and
/// `caps` and `principals` too.
pub(crate) fn next(
    held: &Revocations,
    key: &SigningKey,
    caps: &[CapId],
    principals: &[Principal],
) -> anyhow::Result<RevocationList> {
    let current = held.get(&key.principal());
    let mut all_caps: Vec<CapId> = current.map(|l| l.caps().to_vec()).unwrap_or_default();
    all_caps.extend_from_slice(caps);
    let mut all_principals: Vec<Principal> =
        current.map(|l| l.principals().to_vec()).unwrap_or_default();
    all_principals.extend_from_slice(principals);
    let sequence = current.map_or(1, |l| l.sequence() + 1);
    RevocationList::issue(key, sequence, keys::now(), all_caps, all_principals)
        .context("cannot issue the revocation list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_kept_per_issuer_and_a_bad_file_stops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (SigningKey::generate(), SigningKey::generate());
        let victim = SigningKey::generate().principal();
        assert!(load(dir.path()).unwrap().is_empty());
        let mut held = Revocations::default();
        let first = next(&held, &a, &[], &[victim]).unwrap();
        held.insert(&first).unwrap();
        save(dir.path(), &first).unwrap();
        let second = next(&held, &a, &[], &[b.principal()]).unwrap();
        assert_eq!(second.sequence(), 2);
        assert_eq!(
            second.principals().len(),
            2,
            "the first list's entry is kept"
        );
        save(dir.path(), &second).unwrap();
        save(
            dir.path(),
            &next(&Revocations::default(), &b, &[], &[victim]).unwrap(),
        )
        .unwrap();
        let mut loaded = load(dir.path()).unwrap();
        loaded.sort_by_key(|l| l.sequence());
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[1], second);

        std::fs::write(file_of(dir.path(), &b.principal()), b"not a list").unwrap();
        let error = load(dir.path()).unwrap_err();
        assert!(
            format!("{error:#}").contains("is not a revocation list"),
            "{error:#}"
        );
    }
}
