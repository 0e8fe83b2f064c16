//! A bounded memo of results that never change for their key (a directory's contents for
//! a set of version ids, the key a readcap opens): kept until a weight budget pushes the
//! oldest out.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

/// Values by key, at most `budget` in total weight; the oldest go first.
#[derive(Debug)]
pub(crate) struct Memo<K, V> {
    inner: Mutex<Inner<K, V>>,
    budget: usize,
}

#[derive(Debug)]
struct Inner<K, V> {
    values: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    weight: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> Memo<K, V> {
    /// An empty memo holding at most `budget` in total weight.
    pub(crate) fn new(budget: usize) -> Self {
        Memo {
            inner: Mutex::new(Inner {
                values: HashMap::new(),
                order: VecDeque::new(),
                weight: 0,
            }),
            budget,
        }
    }

    /// The value remembered for `key`.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let inner = self.inner.lock().ok()?;
        inner.values.get(key).map(|(v, _)| v.clone())
    }

    /// Remembers `value` for `key` with the given weight; a value heavier than the whole
    /// budget is not kept.
    pub(crate) fn put(&self, key: K, value: V, weight: usize) {
        if weight > self.budget {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some((_, old)) = inner.values.remove(&key) {
            inner.weight -= old;
            inner.order.retain(|k| k != &key);
        }
        while inner.weight + weight > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = inner.values.remove(&oldest) {
                inner.weight -= w;
            }
        }
        inner.weight += weight;
        inner.order.push_back(key.clone());
        inner.values.insert(key, (value, weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_budget_and_drops_the_oldest_first() {
        let memo = Memo::new(10);
        memo.put(1, "a", 4);
        memo.put(2, "b", 4);
        assert_eq!(memo.get(&1), Some("a"));
        memo.put(3, "c", 4);
        assert_eq!(memo.get(&1), None, "the oldest made room");
        assert_eq!(memo.get(&2), Some("b"));
        assert_eq!(memo.get(&3), Some("c"));
        memo.put(4, "too heavy", 11);
        assert_eq!(memo.get(&4), None);
        assert_eq!(
            memo.get(&3),
            Some("c"),
            "a value over budget evicts nothing"
        );
    }

    #[test]
    fn replacing_a_key_does_not_count_it_twice() {
        let memo = Memo::new(8);
        memo.put(1, "a", 4);
        memo.put(1, "a2", 4);
        memo.put(2, "b", 4);
        assert_eq!(memo.get(&1), Some("a2"));
        assert_eq!(memo.get(&2), Some("b"));
    }
}
