//! Message labels: shared strings, so that the runtime hands an actor the label of a
//! message without allocating one per message (a stream's reader keeps the last label
//! of each channel and reuses it while it repeats).

use std::sync::Arc;

/// A message's label. Reads as a `&str` (it derefs to one) and compares with strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(Arc<str>);

impl Label {
    /// The label `text`.
    pub fn new(text: &str) -> Self {
        Label(Arc::from(text))
    }

    /// The label as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self` when it reads `text`, else a new label: for runs of equal labels.
    pub(crate) fn reuse(slot: &mut Option<Label>, text: &str) -> Label {
        match slot {
            Some(label) if label.as_str() == text => label.clone(),
            _ => slot.insert(Label::new(text)).clone(),
        }
    }
}

impl std::ops::Deref for Label {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Label {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Label {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Label {
    fn from(text: &str) -> Self {
        Label::new(text)
    }
}

impl From<String> for Label {
    fn from(text: String) -> Self {
        Label(Arc::from(text))
    }
}

impl From<Label> for String {
    fn from(label: Label) -> Self {
        label.as_str().to_owned()
    }
}

impl PartialEq<str> for Label {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Label {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Label {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Label> for str {
    fn eq(&self, other: &Label) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Label> for &str {
    fn eq(&self, other: &Label) -> bool {
        *self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_label_is_shared_and_a_new_one_replaces_it() {
        let mut last = None;
        let a = Label::reuse(&mut last, "get");
        let b = Label::reuse(&mut last, "get");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let c = Label::reuse(&mut last, "put");
        assert_eq!(c, "put");
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        assert_eq!(format!("{a} {c:?}"), "get \"put\"");
    }
}
