//! Inode versions.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use redb::ReadableTable;

use super::{
    Context, Error, INODES, Store, StoredVersion, VERSIONS, epoch_stripe, pair, pairs_of, second,
};
use crate::id::{InodeId, VersionId};

impl Store {
    /// A number that changes whenever the versions stored for `inode` may have changed:
    /// after every commit that stores or removes one (and after a failed attempt to). A
    /// cache of what [`Store::versions`] gave holds while this stays what it was before
    /// that read began.
    pub fn versions_epoch(&self, inode: &InodeId) -> u64 {
        self.inner.versions_epochs[epoch_stripe(inode)].load(Ordering::Acquire)
    }

    fn versions_changed(&self, inode: &InodeId) {
        self.inner.versions_epochs[epoch_stripe(inode)].fetch_add(1, Ordering::AcqRel);
    }

    /// Stores a version of an inode: its sequence number and signed bytes, under
    /// `(inode, version)`. True if it was new; storing a version already held changes
    /// nothing (even if `seq` or `signed` differ) and gives false.
    pub fn put_version(
        &self,
        inode: &InodeId,
        version: &VersionId,
        seq: u64,
        signed: &[u8],
    ) -> Result<bool, Error> {
        self.put_version_replacing(inode, version, seq, signed, &[])
    }

    /// [`Store::put_version`], and removes the versions `replaced` of the same inode in
    /// the same transaction (one commit, where a put and then removals took several). A
    /// version already held changes nothing, removes nothing and gives false.
    pub fn put_version_replacing(
        &self,
        inode: &InodeId,
        version: &VersionId,
        seq: u64,
        signed: &[u8],
        replaced: &[VersionId],
    ) -> Result<bool, Error> {
        const WHAT: &str = "storing a version";
        let key = pair(inode.as_bytes(), version.as_bytes());
        let written = self.write(WHAT, |txn| {
            let mut versions = txn.open_table(VERSIONS).context(WHAT)?;
            if versions.get(&key).context(WHAT)?.is_some() {
                return Ok((false, false));
            }
            versions.insert(&key, (seq, signed)).context(WHAT)?;
            let mut removed = 0;
            for old in replaced.iter().filter(|old| *old != version) {
                let old_key = pair(inode.as_bytes(), old.as_bytes());
                if versions.remove(&old_key).context(WHAT)?.is_some() {
                    removed += 1;
                }
            }
            let mut inodes = txn.open_table(INODES).context(WHAT)?;
            let count = inodes
                .get(inode.as_bytes())
                .context(WHAT)?
                .map_or(0, |g| g.value());
            inodes
                .insert(
                    inode.as_bytes(),
                    count.saturating_add(1).saturating_sub(removed).max(1),
                )
                .context(WHAT)?;
            Ok((true, true))
        });
        if !matches!(written, Ok(false)) {
            self.versions_changed(inode);
        }
        written
    }

    /// Every stored version of an inode, highest `seq` first, equal `seq`s in id order.
    pub fn versions(&self, inode: &InodeId) -> Result<Vec<StoredVersion>, Error> {
        const WHAT: &str = "reading versions";
        let txn = self.read(WHAT)?;
        let table = txn.open_table(VERSIONS).context(WHAT)?;
        let (lo, hi) = pairs_of(inode.as_bytes());
        let mut versions = table
            .range::<&[u8; 64]>(&lo..=&hi)
            .context(WHAT)?
            .map(|entry| {
                let (key, value) = entry.context(WHAT)?;
                let (seq, signed) = value.value();
                Ok(StoredVersion {
                    id: VersionId(second(key.value())),
                    seq,
                    signed: signed.to_vec(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        versions.sort_by(|a, b| b.seq.cmp(&a.seq).then_with(|| a.id.cmp(&b.id)));
        Ok(versions)
    }

    /// Whether a version of an inode is stored.
    pub fn has_version(&self, inode: &InodeId, version: &VersionId) -> Result<bool, Error> {
        const WHAT: &str = "looking up a version";
        let txn = self.read(WHAT)?;
        let table = txn.open_table(VERSIONS).context(WHAT)?;
        let key = pair(inode.as_bytes(), version.as_bytes());
        Ok(table.get(&key).context(WHAT)?.is_some())
    }

    /// Removes a version of an inode; true if it was stored. Pins by it stay.
    pub fn remove_version(&self, inode: &InodeId, version: &VersionId) -> Result<bool, Error> {
        const WHAT: &str = "removing a version";
        let key = pair(inode.as_bytes(), version.as_bytes());
        let removed = self.write(WHAT, |txn| {
            let mut versions = txn.open_table(VERSIONS).context(WHAT)?;
            if versions.remove(&key).context(WHAT)?.is_none() {
                return Ok((false, false));
            }
            let mut inodes = txn.open_table(INODES).context(WHAT)?;
            let count = inodes
                .get(inode.as_bytes())
                .context(WHAT)?
                .map_or(0, |g| g.value());
            if count > 1 {
                inodes.insert(inode.as_bytes(), count - 1).context(WHAT)?;
            } else {
                inodes.remove(inode.as_bytes()).context(WHAT)?;
            }
            Ok((true, true))
        });
        if !matches!(removed, Ok(false)) {
            self.versions_changed(inode);
        }
        removed
    }

    /// Ids of inodes with stored versions, in id order, starting after `after` (all if
    /// `None`), at most `limit`.
    pub fn inode_ids(&self, after: Option<&InodeId>, limit: usize) -> Result<Vec<InodeId>, Error> {
        const WHAT: &str = "listing inodes";
        let txn = self.read(WHAT)?;
        let table = txn.open_table(INODES).context(WHAT)?;
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_bytes()));
        table
            .range::<&[u8; 32]>((start, Bound::Unbounded))
            .context(WHAT)?
            .take(limit)
            .map(|entry| Ok(InodeId(*entry.context(WHAT)?.0.value())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn versions_come_highest_seq_first() {
        let store = Store::in_memory().unwrap();
        let inode = InodeId([5; 32]);
        let other = InodeId([6; 32]);
        let put = |inode: &InodeId, seq: u64, signed: &[u8]| {
            store
                .put_version(inode, &VersionId::of(signed), seq, signed)
                .unwrap()
        };
        assert!(put(&inode, 1, b"one"));
        assert!(put(&inode, 3, b"three"));
        assert!(put(&inode, 2, b"two a"));
        assert!(put(&inode, 2, b"two b"));
        assert!(put(&other, 9, b"other"));
        assert!(!put(&inode, 7, b"one"));
        let got = store.versions(&inode).unwrap();
        let seqs: Vec<u64> = got.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, [3, 2, 2, 1]);
        assert!(got[1].id < got[2].id);
        assert_eq!(got[0].signed, b"three");
        assert_eq!(got[3].id, VersionId::of(b"one"));
        assert!(store.has_version(&inode, &VersionId::of(b"one")).unwrap());
        assert!(!store.has_version(&other, &VersionId::of(b"one")).unwrap());
        assert!(
            store
                .remove_version(&inode, &VersionId::of(b"one"))
                .unwrap()
        );
        assert!(
            !store
                .remove_version(&inode, &VersionId::of(b"one"))
                .unwrap()
        );
        assert_eq!(store.versions(&inode).unwrap().len(), 3);
        assert_eq!(store.versions(&InodeId([0; 32])).unwrap(), vec![]);
    }

    #[test]
    fn a_put_replaces_old_versions_in_one_commit() {
        let store = Store::in_memory().unwrap();
        let inode = InodeId([5; 32]);
        let id = |b: &[u8]| VersionId::of(b);
        for (seq, signed) in [(1, &b"one"[..]), (2, b"two")] {
            store.put_version(&inode, &id(signed), seq, signed).unwrap();
        }
        // Replacing one held version and one never held; the new one stays either way.
        assert!(
            store
                .put_version_replacing(
                    &inode,
                    &id(b"three"),
                    3,
                    b"three",
                    &[id(b"one"), id(b"none")]
                )
                .unwrap()
        );
        let seqs: Vec<u64> = store
            .versions(&inode)
            .unwrap()
            .iter()
            .map(|v| v.seq)
            .collect();
        assert_eq!(seqs, [3, 2]);
        // A version already held changes nothing, and removes nothing.
        assert!(
            !store
                .put_version_replacing(&inode, &id(b"three"), 3, b"three", &[id(b"two")])
                .unwrap()
        );
        assert_eq!(store.versions(&inode).unwrap().len(), 2);
        // The inode stays listed while it has versions, and goes with the last one.
        assert_eq!(store.inode_ids(None, 10).unwrap(), [inode]);
        store.remove_version(&inode, &id(b"two")).unwrap();
        assert_eq!(store.inode_ids(None, 10).unwrap(), [inode]);
        store.remove_version(&inode, &id(b"three")).unwrap();
        assert_eq!(store.inode_ids(None, 10).unwrap(), []);
    }

    #[test]
    fn inode_ids_page_in_order() {
        let store = Store::in_memory().unwrap();
        for n in [3u8, 1, 2] {
            store
                .put_version(&InodeId([n; 32]), &VersionId([n; 32]), 0, b"s")
                .unwrap();
        }
        let all = store.inode_ids(None, 10).unwrap();
        assert_eq!(all, [InodeId([1; 32]), InodeId([2; 32]), InodeId([3; 32])]);
        assert_eq!(store.inode_ids(Some(&all[0]), 1).unwrap(), [all[1]]);
        store
            .remove_version(&InodeId([2; 32]), &VersionId([2; 32]))
            .unwrap();
        assert_eq!(
            store.inode_ids(Some(&all[0]), 10).unwrap(),
            [InodeId([3; 32])]
        );
    }
}
