//! Blocktree paths: `/<root-principal>/<segment>/…`, self-certifying by their first segment.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_PATH_LEN, MAX_SEGMENT_LEN};
use crate::principal::{self, Principal};

/// A parsed, valid path. The first segment is the principal that owns the whole tree.
///
/// There is one parser ([`Path::from_str`]) and one error type ([`PathError`]); every
/// `Path` value satisfies the rules, so code that holds one never checks again.
///
/// ```
/// use keys::Path;
/// let root = keys::SigningKey::generate().principal();
/// let p: Path = format!("/{root}/photos/2026").parse().unwrap();
/// assert_eq!(p.root(), &root);
/// assert_eq!(p.segments(), ["photos", "2026"]);
/// assert!(p.starts_with(&Path::root_of(root)));
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path {
    root: Principal,
    segments: Vec<String>,
}

/// Why a string is not a path; one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The string is empty.
    #[error("a path cannot be empty")]
    Empty,
    /// The string does not start with `/`.
    #[error("a path starts with `/<root-principal>`")]
    NotAbsolute,
    /// The string is `/` alone: no tree is named.
    #[error("a path names its root principal first: `/<root-principal>/…`")]
    MissingRoot,
    /// The first segment is not a principal.
    #[error("a path's first segment must be its root principal")]
    NotRootedAtPrincipal(#[source] principal::ParseError),
    /// Two slashes in a row, or a trailing slash.
    #[error("segment {index} is empty (`//` or a trailing `/`)")]
    EmptySegment {
        /// Position of the segment, the root being 0.
        index: usize,
    },
    /// A segment is `.` or `..`.
    #[error("segment {index} is `.` or `..`, which paths do not allow")]
    DotSegment {
        /// Position of the segment, the root being 0.
        index: usize,
    },
    /// A segment contains a NUL byte.
    #[error("segment {index} contains a NUL byte")]
    Nul {
        /// Position of the segment, the root being 0.
        index: usize,
    },
    /// A segment contains `/` (only when building a path segment by segment).
    #[error("segment {index} contains `/`")]
    Slash {
        /// Position of the segment, the root being 0.
        index: usize,
    },
    /// A segment is longer than [`MAX_SEGMENT_LEN`] bytes.
    #[error("segment {index} is {len} bytes long; the limit is {MAX_SEGMENT_LEN}")]
    SegmentTooLong {
        /// Position of the segment, the root being 0.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// The whole path is longer than [`MAX_PATH_LEN`] bytes.
    #[error("the path is {0} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
}

impl Path {
    /// The path of a whole tree: `/<root>`.
    pub fn root_of(root: Principal) -> Self {
        Path {
            root,
            segments: Vec::new(),
        }
    }

    /// The principal that owns the tree this path lies in.
    pub fn root(&self) -> &Principal {
        &self.root
    }

    /// The segments after the root.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether `prefix` is this path or one of its ancestors (segment-wise, so
    /// `/r/ab` does not start with `/r/a`).
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.root == prefix.root && self.segments.starts_with(&prefix.segments)
    }

    /// This path with one more segment.
    pub fn join(&self, segment: &str) -> Result<Path, PathError> {
        let index = self.segments.len() + 1;
        check_segment(index, segment)?;
        let text_len = self.text_len() + 1 + segment.len();
        if text_len > MAX_PATH_LEN {
            return Err(PathError::TooLong(text_len));
        }
        let mut segments = self.segments.clone();
        segments.push(segment.to_owned());
        Ok(Path {
            root: self.root,
            segments,
        })
    }

    /// The parent path, or `None` for a root.
    pub fn parent(&self) -> Option<Path> {
        let (_, init) = self.segments.split_last()?;
        Some(Path {
            root: self.root,
            segments: init.to_vec(),
        })
    }

    /// Length of the text form in bytes.
    pub fn text_len(&self) -> usize {
        1 + principal::TEXT_LEN + self.segments.iter().map(|s| 1 + s.len()).sum::<usize>()
    }
}

fn check_segment(index: usize, segment: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError::EmptySegment { index });
    }
    if segment == "." || segment == ".." {
        return Err(PathError::DotSegment { index });
    }
    if segment.contains('\0') {
        return Err(PathError::Nul { index });
    }
    if segment.contains('/') {
        return Err(PathError::Slash { index });
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(PathError::SegmentTooLong {
            index,
            len: segment.len(),
        });
    }
    Ok(())
}

impl FromStr for Path {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(s.len()));
        }
        let rest = s.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Err(PathError::MissingRoot);
        }
        let mut parts = rest.split('/');
        let root = parts.next().unwrap_or_default();
        if root.is_empty() {
            return Err(PathError::EmptySegment { index: 0 });
        }
        let root = root
            .parse::<Principal>()
            .map_err(PathError::NotRootedAtPrincipal)?;
        let segments = parts
            .enumerate()
            .map(|(i, segment)| check_segment(i + 1, segment).map(|()| segment.to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Path { root, segments })
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.root)?;
        for segment in &self.segments {
            write!(f, "/{segment}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

impl Serialize for Path {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Path;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a blocktree path")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Path, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root() -> Principal {
        Principal::of_key(&[9; 32])
    }

    #[test]
    fn accept_reject_table() {
        let r = root();
        let long_segment = "s".repeat(MAX_SEGMENT_LEN);
        let too_long_segment = "s".repeat(MAX_SEGMENT_LEN + 1);
        let near_limit = {
            let mut p = format!("/{r}");
            while p.len() + 1 + MAX_SEGMENT_LEN <= MAX_PATH_LEN {
                p.push('/');
                p.push_str(&long_segment);
            }
            p
        };
        let over_limit = format!("{near_limit}/{long_segment}");
        let accept = [
            format!("/{r}"),
            format!("/{r}/a"),
            format!("/{r}/a/b/c"),
            format!("/{r}/.hidden"),
            format!("/{r}/..."),
            format!("/{r}/spaces are fine"),
            format!("/{r}/ünïcødé/日本"),
            format!("/{r}/{long_segment}"),
            near_limit,
        ];
        for text in &accept {
            let p: Path = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(&p.to_string(), text);
            assert_eq!(p.text_len(), text.len());
        }
        let reject: [(String, PathError); 13] = [
            (String::new(), PathError::Empty),
            ("relative/path".into(), PathError::NotAbsolute),
            (format!("{r}/a"), PathError::NotAbsolute),
            ("/".into(), PathError::MissingRoot),
            ("//a".into(), PathError::EmptySegment { index: 0 }),
            (
                "/not-a-principal/a".into(),
                PathError::NotRootedAtPrincipal(principal::ParseError::Character('-')),
            ),
            (format!("/{r}/"), PathError::EmptySegment { index: 1 }),
            (format!("/{r}/a//b"), PathError::EmptySegment { index: 2 }),
            (format!("/{r}/."), PathError::DotSegment { index: 1 }),
            (format!("/{r}/a/.."), PathError::DotSegment { index: 2 }),
            (format!("/{r}/a\0b"), PathError::Nul { index: 1 }),
            (
                format!("/{r}/{too_long_segment}"),
                PathError::SegmentTooLong {
                    index: 1,
                    len: MAX_SEGMENT_LEN + 1,
                },
            ),
            (over_limit.clone(), PathError::TooLong(over_limit.len())),
        ];
        for (text, err) in reject {
            assert_eq!(text.parse::<Path>(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn prefixes_are_segment_wise() {
        let r = root();
        let p: Path = format!("/{r}/ab/c").parse().unwrap();
        assert!(p.starts_with(&format!("/{r}/ab").parse().unwrap()));
        assert!(p.starts_with(&p));
        assert!(p.starts_with(&Path::root_of(r)));
        assert!(!p.starts_with(&format!("/{r}/a").parse().unwrap()));
        assert!(!p.starts_with(&Path::root_of(Principal::of_key(&[1; 32]))));
        assert_eq!(p.parent().unwrap().parent().unwrap(), Path::root_of(r));
        assert_eq!(Path::root_of(r).parent(), None);
    }

    #[test]
    fn join_applies_the_same_rules() {
        let base = Path::root_of(root());
        assert_eq!(base.join("a/b"), Err(PathError::Slash { index: 1 }));
        assert_eq!(base.join(".."), Err(PathError::DotSegment { index: 1 }));
        assert_eq!(base.join(""), Err(PathError::EmptySegment { index: 1 }));
        assert_eq!(
            base.join("x").unwrap().to_string(),
            format!("/{}/x", root())
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[^/\0]{1,40}".prop_filter("dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn text_round_trip(key in any::<[u8; 32]>(), segments in prop::collection::vec(segment(), 0..12)) {
            let mut p = Path::root_of(Principal::of_key(&key));
            for s in &segments {
                p = p.join(s).unwrap();
            }
            let text = p.to_string();
            prop_assert_eq!(text.parse::<Path>().unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = s.parse::<Path>();
        }

        #[test]
        fn parse_with_principal_never_panics(rest in "[a/.\0x]{0,40}") {
            let _ = format!("/{}{rest}", root()).parse::<Path>();
        }
    }
}
