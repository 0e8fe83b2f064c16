//! Directories: a map from names to child inodes and their data keys, stored encrypted as
//! the directory inode's contents (keys follow the tree: whoever reads a directory can
//! open its children).

use std::collections::BTreeMap;

use keys::DataKey;
use protocols::wire::{self, Message};
use serde::{Deserialize, Serialize};

use crate::id::{InodeId, VersionId};
use crate::inode::Kind;

/// Most names a client puts in one directory (a new name past them is refused).
pub const MAX_ENTRIES: usize = 65_536;
/// Largest directory, encoded, a client lets new names make (about: see
/// [`estimated_size`]).
pub const MAX_DIRECTORY_BYTES: usize = 16 << 20;
/// Most entries a directory is read (and written) with: twice [`MAX_ENTRIES`], so that
/// the merge of two forks of full directories can still be written and read back.
pub const MAX_DECODED_ENTRIES: usize = 2 * MAX_ENTRIES;
/// Largest encoded directory read (and written): twice [`MAX_DIRECTORY_BYTES`], for the
/// same reason.
pub const MAX_DECODED_BYTES: usize = 2 * MAX_DIRECTORY_BYTES;

/// About what a directory's encoding takes: its names and a bound on each entry's rest
/// (an inode id, a key, a previous key, a kind, and CBOR's heads).
pub fn estimated_size(dir: &Directory) -> usize {
    let entries: usize = dir
        .entries
        .keys()
        .map(|name| name.len() + ENTRY_BYTES)
        .sum();
    // A removed directory's id: 32 bytes and a head.
    entries + dir.removed.len() * 34
}

/// A bound on what an entry's encoding takes besides its name: CBOR's map of field
/// names (`inode`, `key`, `kind`, `previous`) and values takes 137 bytes at most, and
/// the name's head 2.
pub const ENTRY_BYTES: usize = 160;

/// One name in a directory.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The child.
    pub inode: InodeId,
    /// The child's data key.
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
    /// What the child is.
    pub kind: Kind,
    /// The child's key before it was last replaced (a revocation): kept until the child's
    /// version under the new key is written, so that a crash between the two loses
    /// nothing. A reader tries `key`, then this.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub previous: Option<[u8; 32]>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("inode", &self.inode)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// The child's data key.
    pub fn data_key(&self) -> DataKey {
        DataKey::from_bytes(self.key)
    }
}

/// A directory's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Entries by name.
    pub entries: BTreeMap<String, Entry>,
    /// Directories removed from this one lately, oldest first, at most [`MAX_REMOVED`]:
    /// a writer that made names in one of them, unseen by the node that removed it (it
    /// looked empty there), links it back instead of losing them. Directories written by
    /// builds before it have none, and those builds drop it when they write one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<InodeId>,
}

/// Most removed directories a directory remembers (see [`Directory::removed`]).
pub const MAX_REMOVED: usize = 256;
/// Most removed directories a directory is read with: more than any writer keeps, so a
/// later build that keeps more does not make every name in its directories unreadable.
pub const MAX_DECODED_REMOVED: usize = 16 * MAX_REMOVED;

impl Directory {
    /// Takes `name` out, remembering a directory it named as removed (see
    /// [`Directory::removed`]).
    pub fn remove_name(&mut self, name: &str) -> Option<Entry> {
        let gone = self.entries.remove(name)?;
        if gone.kind == Kind::Dir {
            self.note_removed(gone.inode);
        }
        Some(gone)
    }

    /// Notes that the directory `inode` was removed from this one (see
    /// [`Directory::removed`]).
    pub fn note_removed(&mut self, inode: InodeId) {
        self.removed.retain(|i| *i != inode);
        self.removed.push(inode);
        let over = self.removed.len().saturating_sub(MAX_REMOVED);
        self.removed.drain(..over);
    }
}

impl Message for Directory {
    const NAME: &'static str = "directory";
    const VERSION: u16 = 1;
    const MAX_BYTES: usize = MAX_DECODED_BYTES;

    fn validate(&self) -> Result<(), String> {
        if self.removed.len() > MAX_DECODED_REMOVED {
            return Err(format!(
                "{} removed directories (at most {MAX_DECODED_REMOVED})",
                self.removed.len()
            ));
        }
        if self.entries.len() > MAX_DECODED_ENTRIES {
            return Err(format!(
                "{} entries (at most {MAX_DECODED_ENTRIES})",
                self.entries.len()
            ));
        }
        for name in self.entries.keys() {
            check_name(name)?;
        }
        Ok(())
    }
}

/// Checks a name as a path segment: not empty, `.` or `..`, no `/` or NUL, at most 255 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} is not a name"));
    }
    if name.len() > keys::limits::MAX_SEGMENT_LEN {
        return Err(format!(
            "a name is at most {} bytes",
            keys::limits::MAX_SEGMENT_LEN
        ));
    }
    if name.contains(['/', '\0']) {
        return Err(format!("{name:?} holds '/' or NUL"));
    }
    Ok(())
}

/// Three-way merge of two directory versions that both descend from `base` (empty when
/// the common ancestor is unknown): a name changed on one side only takes that side; a
/// name changed differently on both sides keeps `ours` under the name and `theirs` under
/// a conflict name, so nothing is lost.
pub fn merge(base: &Directory, ours: &Directory, theirs: &Directory) -> Directory {
    let mut merged = Directory::default();
    let names: std::collections::BTreeSet<&String> = base
        .entries
        .keys()
        .chain(ours.entries.keys())
        .chain(theirs.entries.keys())
        .collect();
    for name in names {
        let b = base.entries.get(name);
        let o = ours.entries.get(name);
        let t = theirs.entries.get(name);
        let pick = if o == t {
            o
        } else if o == b {
            t
        } else if t == b {
            o
        } else {
            // Both sides changed it: keep both, unless one side removed it (then keep the
            // side that still has it, so a removal never wins over new data).
            match (o, t) {
                (Some(o), Some(t)) => {
                    merged
                        .entries
                        .insert(conflict_name(name, &t.inode), t.clone());
                    Some(o)
                }
                (Some(o), None) => Some(o),
                (None, t) => t,
            }
        };
        if let Some(entry) = pick {
            merged.entries.insert(name.clone(), entry.clone());
        }
    }
    // Removed on either side, three ways as the entries: what one side took off the
    // list (a directory linked back) stays off, and a directory named again is not
    // listed as removed.
    if !ours.removed.is_empty() || !theirs.removed.is_empty() {
        use std::collections::HashSet;
        let named: HashSet<&InodeId> = merged.entries.values().map(|e| &e.inode).collect();
        let (in_base, in_ours, in_theirs): (HashSet<_>, HashSet<_>, HashSet<_>) = (
            base.removed.iter().collect(),
            ours.removed.iter().collect(),
            theirs.removed.iter().collect(),
        );
        let dropped = |id: &InodeId| {
            in_base.contains(id) && !(in_ours.contains(id) && in_theirs.contains(id))
        };
        let mut seen = HashSet::new();
        for removed in ours.removed.iter().chain(&theirs.removed) {
            if !dropped(removed) && !named.contains(removed) && seen.insert(removed) {
                merged.removed.push(*removed);
            }
        }
        let over = merged.removed.len().saturating_sub(MAX_REMOVED);
        merged.removed.drain(..over);
    }
    merged
}

/// The name a conflicting copy of `name` is shown under.
pub fn conflict_name(name: &str, id: &InodeId) -> String {
    format!(
        "{}.conflict-{}",
        conflict_copy_base(name),
        &id.to_string()[..8]
    )
}

/// The name the losing head `version` of a forked file `name` is shown under:
/// `name.conflict-<the version's first 8 hex digits>`.
pub fn conflict_copy_name(name: &str, version: &VersionId) -> String {
    format!(
        "{}.conflict-{}",
        conflict_copy_base(name),
        &version.to_string()[..8]
    )
}

/// What of `name` its conflict copies' names begin with (see [`conflict_copy_name`]):
/// all of it, or as much as leaves room for the suffix (cut on a character's boundary):
/// a longer name could be listed but never opened.
pub fn conflict_copy_base(name: &str) -> &str {
    let room = keys::limits::MAX_SEGMENT_LEN - COPY_SUFFIX_LEN;
    let mut end = name.len().min(room);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The length of `.conflict-<8 hex digits>`.
const COPY_SUFFIX_LEN: usize = ".conflict-".len() + 8;

/// The name of the file, and the tag of the version, that `name` would show as a conflict
/// copy of: `None` when it is not such a name. The base is cut short for a long name.
pub fn parse_conflict_copy_name(name: &str) -> Option<(&str, &str)> {
    let (base, tag) = name.rsplit_once(".conflict-")?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (tag.len() == 8 && tag.bytes().all(hex)).then_some((base, tag))
}

impl Directory {
    /// Encodes the directory; one that breaks the rules [`Directory::decode`] holds it
    /// to (too many entries, a bad name) is refused, as no node could read it back.
    pub fn encode(&self) -> Result<Vec<u8>, wire::EncodeError> {
        self.validate()
            .map_err(|reason| wire::EncodeError::Failed {
                what: Self::NAME,
                reason,
            })?;
        wire::encode(self)
    }

    /// Decodes a directory.
    pub fn decode(bytes: &[u8]) -> Result<Self, wire::DecodeError> {
        wire::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(n: u8) -> Entry {
        Entry {
            inode: InodeId([n; 32]),
            key: [n; 32],
            kind: Kind::File,
            previous: None,
        }
    }

    fn dir(items: &[(&str, u8)]) -> Directory {
        Directory {
            entries: items
                .iter()
                .map(|(n, i)| (n.to_string(), entry(*i)))
                .collect(),
            ..Directory::default()
        }
    }

    #[test]
    fn remembers_the_directories_removed_from_it() {
        let mut d = dir(&[("a", 1)]);
        for i in 0..=MAX_REMOVED as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            d.note_removed(InodeId(id));
        }
        d.note_removed(InodeId([7; 32]));
        d.note_removed(InodeId([7; 32]));
        // A name taken out is remembered only if it named a directory.
        let mut one = dir(&[("f", 5)]);
        one.entries.insert(
            "sub".into(),
            Entry {
                kind: Kind::Dir,
                ..entry(6)
            },
        );
        assert_eq!(one.remove_name("f"), Some(entry(5)));
        assert!(one.removed.is_empty());
        assert!(one.remove_name("sub").is_some());
        assert_eq!(one.removed, [InodeId([6; 32])]);
        assert_eq!(one.remove_name("sub"), None);
        assert_eq!(d.removed.len(), MAX_REMOVED);
        assert_eq!(d.removed.last(), Some(&InodeId([7; 32])));
        assert_eq!(
            d.removed.iter().filter(|i| **i == InodeId([7; 32])).count(),
            1
        );
        assert_eq!(Directory::decode(&d.encode().unwrap()).unwrap(), d);
        assert!(estimated_size(&d) >= d.encode().unwrap().len());
        // More than any writer keeps is read (a later build may keep more), far more is
        // refused when decoding.
        let id = |i: u32| {
            let mut id = [0xff; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            InodeId(id)
        };
        let mut more = d.clone();
        more.removed.extend((0..MAX_REMOVED as u32).map(id));
        assert_eq!(
            Directory::decode(&wire::encode(&more).unwrap()).unwrap(),
            more
        );
        more.removed
            .extend((0..MAX_DECODED_REMOVED as u32).map(|i| id(i + 1_000_000)));
        assert!(Directory::decode(&wire::encode(&more).unwrap()).is_err());
        // A merge keeps what either side removed, the newest at most; not what one side
        // took off the list (linked back), nor what the merge names.
        let base = dir(&[("a", 1)]);
        let mut ours = base.clone();
        ours.note_removed(InodeId([11; 32]));
        let mut theirs = base.clone();
        theirs.note_removed(InodeId([12; 32]));
        theirs.note_removed(InodeId([11; 32]));
        assert_eq!(
            merge(&base, &ours, &theirs).removed,
            [InodeId([11; 32]), InodeId([12; 32])]
        );
        assert_eq!(merge(&base, &d, &theirs).removed.len(), MAX_REMOVED);
        let mut relinked = theirs.clone();
        relinked.removed.retain(|r| *r != InodeId([12; 32]));
        let mut removed_more = theirs.clone();
        removed_more.note_removed(InodeId([13; 32]));
        assert_eq!(
            merge(&theirs, &relinked, &removed_more).removed,
            [InodeId([11; 32]), InodeId([13; 32])]
        );
        let mut named = theirs.clone();
        named.entries.insert(
            "back".into(),
            Entry {
                inode: InodeId([11; 32]),
                ..entry(1)
            },
        );
        assert_eq!(merge(&theirs, &named, &theirs).removed, [InodeId([12; 32])]);
        // A directory of a build before the list reads with none.
        #[derive(Serialize, Deserialize)]
        struct Old {
            entries: BTreeMap<String, Entry>,
        }
        impl Message for Old {
            const NAME: &'static str = "directory";
            const VERSION: u16 = 1;
            const MAX_BYTES: usize = MAX_DECODED_BYTES;
        }
        let old = Old {
            entries: dir(&[("a", 1)]).entries,
        };
        assert_eq!(
            Directory::decode(&wire::encode(&old).unwrap()).unwrap(),
            dir(&[("a", 1)])
        );
    }

    #[test]
    fn merges_three_ways_without_loss() {
        let base = dir(&[("a", 1), ("b", 2), ("c", 3)]);
        let ours = dir(&[("a", 1), ("b", 20), ("d", 4)]); // changed b, removed c, added d
        let theirs = dir(&[("a", 1), ("b", 2), ("c", 3), ("e", 5)]); // added e
        let merged = merge(&base, &ours, &theirs);
        assert_eq!(merged, dir(&[("a", 1), ("b", 20), ("d", 4), ("e", 5)]));
        // Both changed b: both kept.
        let theirs = dir(&[("a", 1), ("b", 21), ("c", 3)]);
        let merged = merge(&base, &ours, &theirs);
        assert_eq!(merged.entries["b"], entry(20));
        assert_eq!(
            merged.entries[&conflict_name("b", &InodeId([21; 32]))],
            entry(21)
        );
        // One removed what the other changed: the change stays.
        let theirs = dir(&[("a", 1), ("c", 30)]);
        let merged = merge(&base, &ours, &theirs);
        assert_eq!(merged.entries["c"], entry(30));
    }

    #[test]
    fn round_trips_and_checks_names() {
        let d = dir(&[("a", 1), ("b", 2)]);
        assert_eq!(Directory::decode(&d.encode().unwrap()).unwrap(), d);
        // Bad names are refused when decoding (written here past `encode`'s own check).
        for bad in ["a/b", ".."] {
            assert!(Directory::decode(&wire::encode(&dir(&[(bad, 1)])).unwrap()).is_err());
            assert!(dir(&[(bad, 1)]).encode().is_err());
        }
        assert!(conflict_name(&"x".repeat(255), &InodeId([1; 32])).len() <= 255);
    }

    #[test]
    fn a_directory_that_could_not_be_read_back_is_not_encoded() {
        let mut full = Directory::default();
        for i in 0..MAX_DECODED_ENTRIES {
            full.entries.insert(format!("{i}"), entry(1));
        }
        let bytes = full.encode().unwrap();
        assert_eq!(Directory::decode(&bytes).unwrap(), full);
        assert!(estimated_size(&full) >= bytes.len());
        // The estimate bounds the largest entries too: the longest kind, a previous key,
        // the longest names.
        let mut big = Directory::default();
        for i in 0..1000u32 {
            let name = format!("{i:0>255}");
            let e = Entry {
                kind: Kind::Symlink,
                previous: Some([9; 32]),
                ..entry(4)
            };
            big.entries.insert(name, e);
        }
        assert!(estimated_size(&big) >= big.encode().unwrap().len());
        full.entries.insert("one more".into(), entry(2));
        assert!(full.encode().is_err());

        // A copy's name is its file's base and the suffix, whatever the characters' widths.
        let version = VersionId([0xab; 32]);
        for name in [
            "short".to_string(),
            "x".repeat(237),
            "x".repeat(238),
            "é".repeat(125),
            format!("x{}", "€".repeat(84)),
            format!("xy{}", "😀".repeat(63)),
        ] {
            let copy = conflict_copy_name(&name, &version);
            assert!(copy.len() <= 255, "{} bytes", copy.len());
            assert_eq!(
                parse_conflict_copy_name(&copy),
                Some((conflict_copy_base(&name), "abababab"))
            );
            assert!(name.starts_with(conflict_copy_base(&name)));
        }
        assert_eq!(parse_conflict_copy_name("a.conflict-ABABABAB"), None);
        assert_eq!(parse_conflict_copy_name("a.conflict-abab"), None);
        assert_eq!(parse_conflict_copy_name("a.conflict-"), None);
        assert_eq!(parse_conflict_copy_name("a"), None);
    }
}
