//! Chunks and the pins that keep them.

use std::ops::Bound;

use redb::{ReadableTable, WriteTransaction};

use super::{
    CHUNK_DATA, CHUNK_PLACES, Context, Error, META, META_CHUNK_BYTES, OWNERS, PINS, Store,
    next_place, pair, pairs_of, second, set_next_place,
};
use crate::chunk::Sealed;
use crate::id::{ChunkId, InodeId, VersionId};

impl Store {
    /// Stores chunks in one transaction; returns how many were new.
    ///
    /// Every chunk is first checked against its id: if one does not match, nothing is
    /// written and the result is [`Error::Mismatch`] naming it. A chunk already held is left
    /// alone, unless the stored copy is corrupt: then the good bytes replace it (logged,
    /// counted in [`Stats::corrupt_found`](super::Stats::corrupt_found), and counted here as
    /// new). Chunks already held are read and compared, not written: offering the store what
    /// it holds costs no commit. Writing many chunks in one call is one commit, so it is much
    /// faster than a call per chunk.
    pub fn put_chunks(&self, chunks: &[(ChunkId, &[u8])]) -> Result<usize, Error> {
        self.put_chunks_inner(None, chunks)
    }

    /// [`put_chunks`](Self::put_chunks), recording in the same transaction that the
    /// chunks belong to the inode `owner` (see [`owner`](Self::owner)).
    pub fn put_chunks_of(
        &self,
        owner: &InodeId,
        chunks: &[(ChunkId, &[u8])],
    ) -> Result<usize, Error> {
        self.put_chunks_inner(Some(owner), chunks)
    }

    /// [`put_chunks_of`](Self::put_chunks_of) for chunks this process sealed: their ids
    /// are their hashes already (only [`crate::chunk::seal`] makes a [`Sealed`]), so they
    /// are not hashed again.
    pub fn put_sealed_of(&self, owner: &InodeId, chunks: &[Sealed]) -> Result<usize, Error> {
        let items: Vec<(ChunkId, &[u8])> = chunks.iter().map(|c| (c.id(), c.bytes())).collect();
        self.put_checked(Some(owner), &items)
    }

    /// The inode a stored chunk belongs to, if it was stored with one.
    pub fn owner(&self, chunk: &ChunkId) -> Result<Option<InodeId>, Error> {
        const WHAT: &str = "looking up a chunk's owner";
        let txn = self.read(WHAT)?;
        let owners = txn.open_table(OWNERS).context(WHAT)?;
        Ok(owners
            .get(chunk.as_bytes())
            .context(WHAT)?
            .map(|g| InodeId(*g.value())))
    }

    fn put_chunks_inner(
        &self,
        owner: Option<&InodeId>,
        chunks: &[(ChunkId, &[u8])],
    ) -> Result<usize, Error> {
        if let Some((id, _)) = chunks.iter().find(|(id, bytes)| ChunkId::of(bytes) != *id) {
            return Err(Error::Mismatch { id: *id });
        }
        self.put_checked(owner, chunks)
    }

    /// Stores chunks whose ids match their bytes.
    fn put_checked(
        &self,
        owner: Option<&InodeId>,
        chunks: &[(ChunkId, &[u8])],
    ) -> Result<usize, Error> {
        // Which need writing: found in a read transaction, which leaves writers alone.
        const WHAT: &str = "storing chunks";
        let mut missing = Vec::new();
        let mut unowned = Vec::new();
        {
            let txn = self.read(WHAT)?;
            let data = txn.open_table(CHUNK_DATA).context(WHAT)?;
            let places = txn.open_table(CHUNK_PLACES).context(WHAT)?;
            if owner.is_some() {
                let owners = txn.open_table(OWNERS).context(WHAT)?;
                for (id, _) in chunks {
                    if owners.get(id.as_bytes()).context(WHAT)?.is_none() {
                        unowned.push(*id);
                    }
                }
            }
            for (id, bytes) in chunks {
                let Some(place) = places.get(id.as_bytes()).context(WHAT)? else {
                    missing.push((id, bytes));
                    continue;
                };
                match data.get(place.value().0).context(WHAT)? {
                    Some(held) if held.value() == *bytes => {}
                    _ => {
                        self.found_corrupt(id);
                        missing.push((id, bytes));
                    }
                }
            }
        }
        if missing.is_empty() && unowned.is_empty() {
            return Ok(0);
        }
        self.write(WHAT, |txn| {
            if let Some(owner) = owner {
                let mut owners = txn.open_table(OWNERS).context(WHAT)?;
                for id in &unowned {
                    owners
                        .insert(id.as_bytes(), owner.as_bytes())
                        .context(WHAT)?;
                }
            }
            let mut data = txn.open_table(CHUNK_DATA).context(WHAT)?;
            let mut places = txn.open_table(CHUNK_PLACES).context(WHAT)?;
            let mut next = next_place(txn, WHAT)?;
            let (mut new, mut added, mut removed) = (0, 0, 0);
            for (id, bytes) in missing {
                let held = places.get(id.as_bytes()).context(WHAT)?.map(|g| g.value());
                let place = match held {
                    // Held since the read, or twice in `chunks`, or a corrupt copy (the
                    // good bytes go where it was).
                    Some((place, len)) => {
                        let same = data
                            .get(place)
                            .context(WHAT)?
                            .is_some_and(|held| held.value() == *bytes);
                        if same {
                            continue;
                        }
                        removed += len;
                        place
                    }
                    None => {
                        next += 1;
                        next - 1
                    }
                };
                data.insert(place, *bytes).context(WHAT)?;
                places
                    .insert(id.as_bytes(), (place, bytes.len() as u64))
                    .context(WHAT)?;
                added += bytes.len() as u64;
                new += 1;
            }
            drop((data, places));
            set_next_place(txn, next, WHAT)?;
            add_chunk_bytes(txn, added, removed, WHAT)?;
            Ok((new, new > 0 || !unowned.is_empty()))
        })
    }

    /// Stores one chunk (see [`put_chunks`](Self::put_chunks)); true if it was new.
    pub fn put_chunk(&self, id: &ChunkId, bytes: &[u8]) -> Result<bool, Error> {
        Ok(self.put_chunks(&[(*id, bytes)])? == 1)
    }

    /// Reads a chunk and checks it against its id.
    ///
    /// A stored chunk whose bytes no longer hash to its id gives [`Error::Corrupt`]; it is
    /// logged and counted in [`Stats::corrupt_found`](super::Stats::corrupt_found), and left
    /// in place: the caller removes it ([`remove_chunk`](Self::remove_chunk)) or stores a
    /// good copy over it.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, Error> {
        const WHAT: &str = "reading a chunk";
        let txn = self.read(WHAT)?;
        let places = txn.open_table(CHUNK_PLACES).context(WHAT)?;
        let Some(place) = places.get(id.as_bytes()).context(WHAT)? else {
            return Ok(None);
        };
        let data = txn.open_table(CHUNK_DATA).context(WHAT)?;
        let guard = data.get(place.value().0).context(WHAT)?;
        let bytes = guard.as_ref().map_or(&[][..], |g| g.value());
        if guard.is_none() || ChunkId::of(bytes) != *id {
            self.found_corrupt(id);
            return Err(Error::Corrupt { id: *id });
        }
        Ok(Some(bytes.to_vec()))
    }

    /// Whether a chunk is stored (without reading or checking its bytes).
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, Error> {
        const WHAT: &str = "looking up a chunk";
        let txn = self.read(WHAT)?;
        let table = txn.open_table(CHUNK_PLACES).context(WHAT)?;
        Ok(table.get(id.as_bytes()).context(WHAT)?.is_some())
    }

    /// Removes a chunk, pinned or not; true if it was stored. Its pins stay.
    pub fn remove_chunk(&self, id: &ChunkId) -> Result<bool, Error> {
        const WHAT: &str = "removing a chunk";
        self.write(WHAT, |txn| {
            let removed = remove_chunk(txn, id, WHAT)?;
            Ok((removed.is_some(), removed.is_some()))
        })
    }

    /// Removes a chunk only if its stored bytes still do not hash to its id, in one
    /// transaction; true if it removed it. A reader that found a chunk corrupt calls this,
    /// so that a good copy stored since (a repair, or a writer offering the chunk again)
    /// is not removed with it.
    pub fn remove_corrupt_chunk(&self, id: &ChunkId) -> Result<bool, Error> {
        const WHAT: &str = "removing a corrupt chunk";
        self.write(WHAT, |txn| {
            let place = txn
                .open_table(CHUNK_PLACES)
                .context(WHAT)?
                .get(id.as_bytes())
                .context(WHAT)?
                .map(|g| g.value().0);
            let Some(place) = place else {
                return Ok((false, false));
            };
            let good = txn
                .open_table(CHUNK_DATA)
                .context(WHAT)?
                .get(place)
                .context(WHAT)?
                .is_some_and(|bytes| ChunkId::of(bytes.value()) == *id);
            if good {
                return Ok((false, false));
            }
            let removed = remove_chunk(txn, id, WHAT)?;
            Ok((removed.is_some(), removed.is_some()))
        })
    }

    /// Stored chunk ids in id order, starting after `after` (all if `None`), at most `limit`.
    pub fn chunk_ids(&self, after: Option<&ChunkId>, limit: usize) -> Result<Vec<ChunkId>, Error> {
        const WHAT: &str = "listing chunks";
        let txn = self.read(WHAT)?;
        let table = txn.open_table(CHUNK_PLACES).context(WHAT)?;
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_bytes()));
        table
            .range::<&[u8; 32]>((start, Bound::Unbounded))
            .context(WHAT)?
            .take(limit)
            .map(|entry| Ok(ChunkId(*entry.context(WHAT)?.0.value())))
            .collect()
    }

    /// Records that version `by` references `chunk` (whether or not the chunk is stored yet).
    pub fn pin(&self, chunk: &ChunkId, by: &VersionId) -> Result<(), Error> {
        const WHAT: &str = "pinning a chunk";
        let key = pair(chunk.as_bytes(), by.as_bytes());
        self.write(WHAT, |txn| {
            let mut pins = txn.open_table(PINS).context(WHAT)?;
            let new = pins.insert(&key, ()).context(WHAT)?.is_none();
            Ok(((), new))
        })
    }

    /// Drops the pin of `chunk` by version `by`, if any.
    pub fn unpin(&self, chunk: &ChunkId, by: &VersionId) -> Result<(), Error> {
        const WHAT: &str = "unpinning a chunk";
        let key = pair(chunk.as_bytes(), by.as_bytes());
        self.write(WHAT, |txn| {
            let mut pins = txn.open_table(PINS).context(WHAT)?;
            let removed = pins.remove(&key).context(WHAT)?.is_some();
            Ok(((), removed))
        })
    }

    /// The versions pinning `chunk`, in id order.
    pub fn pins(&self, chunk: &ChunkId) -> Result<Vec<VersionId>, Error> {
        const WHAT: &str = "listing pins";
        let txn = self.read(WHAT)?;
        let pins = txn.open_table(PINS).context(WHAT)?;
        let (lo, hi) = pairs_of(chunk.as_bytes());
        pins.range::<&[u8; 64]>(&lo..=&hi)
            .context(WHAT)?
            .map(|entry| Ok(VersionId(second(entry.context(WHAT)?.0.value()))))
            .collect()
    }

    /// Removes those of `candidates` that are stored and pinned by no version, in one
    /// transaction; returns how many it removed. A pinned chunk is never removed.
    pub fn collect_unpinned(&self, candidates: &[ChunkId]) -> Result<usize, Error> {
        const WHAT: &str = "collecting chunks";
        self.write(WHAT, |txn| {
            let pins = txn.open_table(PINS).context(WHAT)?;
            let mut removed = 0;
            for id in candidates {
                let (lo, hi) = pairs_of(id.as_bytes());
                if pins
                    .range::<&[u8; 64]>(&lo..=&hi)
                    .context(WHAT)?
                    .next()
                    .is_some()
                {
                    continue;
                }
                if remove_chunk(txn, id, WHAT)?.is_some() {
                    removed += 1;
                }
            }
            Ok((removed, removed > 0))
        })
    }
}

/// Removes a chunk in `txn`, keeping the byte count; its length if it was stored.
fn remove_chunk(
    txn: &WriteTransaction,
    id: &ChunkId,
    what: &'static str,
) -> Result<Option<u64>, Error> {
    let place = txn
        .open_table(CHUNK_PLACES)
        .context(what)?
        .remove(id.as_bytes())
        .context(what)?
        .map(|g| g.value());
    let len = match place {
        Some((place, len)) => {
            txn.open_table(CHUNK_DATA)
                .context(what)?
                .remove(place)
                .context(what)?;
            Some(len)
        }
        None => None,
    };
    txn.open_table(OWNERS)
        .context(what)?
        .remove(id.as_bytes())
        .context(what)?;
    if let Some(len) = len {
        add_chunk_bytes(txn, 0, len, what)?;
    }
    Ok(len)
}

/// Adds `added` and takes `removed` from the stored byte count, in `txn`.
pub(super) fn add_chunk_bytes(
    txn: &WriteTransaction,
    added: u64,
    removed: u64,
    what: &'static str,
) -> Result<(), Error> {
    if added == removed {
        return Ok(());
    }
    let mut meta = txn.open_table(META).context(what)?;
    let old = meta
        .get(META_CHUNK_BYTES)
        .context(what)?
        .map_or(0, |g| g.value());
    let new = old.saturating_add(added).saturating_sub(removed);
    meta.insert(META_CHUNK_BYTES, new).context(what)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn chunk(n: u8, len: usize) -> (ChunkId, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect();
        (ChunkId::of(&bytes), bytes)
    }

    #[test]
    fn only_a_chunk_still_corrupt_is_removed_as_corrupt() {
        let store = Store::in_memory().unwrap();
        let (id, bytes) = chunk(9, 2000);
        assert!(!store.remove_corrupt_chunk(&id).unwrap());
        store.put_chunk(&id, &bytes).unwrap();
        // A good copy (stored again after a reader saw a bad one) stays.
        assert!(!store.remove_corrupt_chunk(&id).unwrap());
        assert_eq!(store.get_chunk(&id).unwrap(), Some(bytes.clone()));
        // A bad one goes, with its bytes.
        store
            .write("test", |txn| {
                let place = txn
                    .open_table(CHUNK_PLACES)
                    .context("test")?
                    .get(id.as_bytes())
                    .context("test")?
                    .map(|g| g.value().0)
                    .unwrap();
                txn.open_table(CHUNK_DATA)
                    .context("test")?
                    .insert(place, &b"rotten"[..])
                    .context("test")?;
                Ok(((), true))
            })
            .unwrap();
        assert!(matches!(store.get_chunk(&id), Err(Error::Corrupt { .. })));
        assert!(store.remove_corrupt_chunk(&id).unwrap());
        assert!(!store.has_chunk(&id).unwrap());
        assert_eq!(store.stats().unwrap().chunk_bytes, 0);
    }

    #[test]
    fn sealed_chunks_are_stored_with_their_owner_once() {
        let store = Store::in_memory().unwrap();
        let key = keys::DataKey::generate();
        let owner = InodeId([4; 32]);
        let sealed: Vec<Sealed> = (0..3)
            .map(|i| crate::chunk::seal(&key, &owner, i, &[i as u8; 5000]).unwrap())
            .collect();
        assert_eq!(store.put_sealed_of(&owner, &sealed).unwrap(), 3);
        assert_eq!(store.put_sealed_of(&owner, &sealed).unwrap(), 0);
        for s in &sealed {
            assert_eq!(
                store.get_chunk(&s.id()).unwrap().as_deref(),
                Some(s.bytes())
            );
            assert_eq!(store.owner(&s.id()).unwrap(), Some(owner));
        }
        assert_eq!(store.chunk_ids(None, 10).unwrap().len(), 3);
    }

    #[test]
    fn chunks_round_trip() {
        let store = Store::in_memory().unwrap();
        let (a, a_bytes) = chunk(1, 10);
        let (b, b_bytes) = chunk(2, 300_000);
        assert_eq!(store.get_chunk(&a).unwrap(), None);
        assert!(!store.has_chunk(&a).unwrap());
        assert_eq!(
            store
                .put_chunks(&[(a, &a_bytes), (b, &b_bytes), (a, &a_bytes)])
                .unwrap(),
            2
        );
        assert!(!store.put_chunk(&a, &a_bytes).unwrap());
        assert_eq!(store.put_chunks(&[]).unwrap(), 0);
        assert!(store.has_chunk(&b).unwrap());
        assert_eq!(store.get_chunk(&a).unwrap(), Some(a_bytes));
        assert_eq!(store.get_chunk(&b).unwrap(), Some(b_bytes));
        assert!(store.remove_chunk(&b).unwrap());
        assert!(!store.remove_chunk(&b).unwrap());
        assert_eq!(store.get_chunk(&b).unwrap(), None);
    }

    #[test]
    fn a_mismatched_chunk_writes_nothing() {
        let store = Store::in_memory().unwrap();
        let (a, a_bytes) = chunk(1, 10);
        let (b, _) = chunk(2, 10);
        match store.put_chunks(&[(a, &a_bytes), (b, &a_bytes)]) {
            Err(Error::Mismatch { id }) => assert_eq!(id, b),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(!store.has_chunk(&a).unwrap());
        assert_eq!(store.stats().unwrap().chunks, 0);
    }

    #[test]
    fn chunk_ids_page_in_order() {
        let store = Store::in_memory().unwrap();
        let mut ids: Vec<ChunkId> = (0..10)
            .map(|n| {
                let (id, bytes) = chunk(n, 5);
                store.put_chunk(&id, &bytes).unwrap();
                id
            })
            .collect();
        ids.sort();
        assert_eq!(store.chunk_ids(None, 100).unwrap(), ids);
        assert_eq!(store.chunk_ids(None, 0).unwrap(), vec![]);
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.chunk_ids(after.as_ref(), 3).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            paged.extend(page);
        }
        assert_eq!(paged, ids);
    }

    #[test]
    fn pinned_chunks_are_not_collected() {
        let store = Store::in_memory().unwrap();
        let (a, a_bytes) = chunk(1, 10);
        let (b, b_bytes) = chunk(2, 10);
        let (c, _) = chunk(3, 10);
        store.put_chunks(&[(a, &a_bytes), (b, &b_bytes)]).unwrap();
        let (v1, v2) = (VersionId([1; 32]), VersionId([2; 32]));
        store.pin(&a, &v1).unwrap();
        store.pin(&a, &v2).unwrap();
        store.pin(&a, &v2).unwrap();
        assert_eq!(store.pins(&a).unwrap(), vec![v1, v2]);
        assert_eq!(store.collect_unpinned(&[a, b, c, b]).unwrap(), 1);
        assert!(store.has_chunk(&a).unwrap() && !store.has_chunk(&b).unwrap());
        store.unpin(&a, &v1).unwrap();
        assert_eq!(store.collect_unpinned(&[a]).unwrap(), 0);
        store.unpin(&a, &v2).unwrap();
        store.unpin(&a, &v2).unwrap();
        assert_eq!(store.pins(&a).unwrap(), vec![]);
        assert_eq!(store.collect_unpinned(&[a]).unwrap(), 1);
        assert_eq!(store.stats().unwrap().chunk_bytes, 0);
    }
}
