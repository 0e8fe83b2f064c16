//! Bounded memos: of results that never change for their key (a directory's contents for
//! a set of version ids, the key a readcap opens), kept until a weight budget pushes the
//! oldest out; and [`Generations`], for many small entries of which the recently used
//! should stay.

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

/// A map of at most `2 × capacity` entries (and, made [`Generations::with_budget`], at
/// most twice its budget in weight, beyond one entry) that keeps what was used lately:
/// entries go into the current generation; when it is full, it becomes the old one (the
/// one before is dropped), and an entry found in the old generation moves back into the
/// current. What was used within the last `capacity` insertions stays. (A map emptied
/// when full would start over, every entry lost at once, each time a working set a little
/// larger than it went round.)
#[derive(Debug)]
pub(crate) struct Generations<K, V> {
    current: HashMap<K, (V, usize)>,
    old: HashMap<K, (V, usize)>,
    capacity: usize,
    /// Weight one generation may hold.
    budget: usize,
    /// Weight the current generation holds.
    weight: usize,
}

impl<K: Eq + Hash, V> Generations<K, V> {
    /// An empty map whose generations hold `capacity` entries each.
    #[cfg(test)]
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, usize::MAX)
    }

    /// An empty map whose generations hold `capacity` entries each, and entries of at
    /// most `budget` in weight ([`Generations::insert_weighing`]); an entry heavier than
    /// that is not kept.
    pub(crate) fn with_budget(capacity: usize, budget: usize) -> Self {
        Generations {
            current: HashMap::new(),
            old: HashMap::new(),
            capacity: capacity.max(1),
            budget,
            weight: 0,
        }
    }

    /// The entry for `key`, kept for another generation.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        if !self.current.contains_key(key) {
            let (key, (value, weight)) = self.old.remove_entry(key)?;
            self.insert_weighing(key, value, weight);
        }
        self.current.get(key).map(|(value, _)| value)
    }

    /// Sets the entry for `key`, of no weight.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.insert_weighing(key, value, 0);
    }

    /// Sets the entry for `key`, weighing `weight` (what it takes in memory, say).
    pub(crate) fn insert_weighing(&mut self, key: K, value: V, weight: usize) {
        if weight > self.budget {
            self.current.remove(&key).inspect(|(_, w)| self.weight -= w);
            self.old.remove(&key);
            return;
        }
        // Weighed again in place: the old weight goes first, and the new one may turn the
        // generation over as a new entry would.
        if let Some((_, replaced)) = self.current.remove(&key) {
            self.weight -= replaced;
        }
        if self.current.len() >= self.capacity || self.weight.saturating_add(weight) > self.budget {
            self.old = std::mem::take(&mut self.current);
            self.weight = 0;
        }
        self.old.remove(&key);
        self.current.insert(key, (value, weight));
        self.weight += weight;
    }

    /// Entries held, in both generations.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.old.len()
    }

    /// Weight held, in both generations.
    #[cfg(test)]
    pub(crate) fn weight(&self) -> usize {
        self.weight + self.old.values().map(|(_, w)| w).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weighed entries: a generation holds at most its budget, so the map at most
    /// twice it; one heavier than a generation is not kept; what was used lately stays.
    #[test]
    fn generations_hold_at_most_twice_their_budget() {
        let mut g = Generations::with_budget(1000, 100);
        for k in 0..50 {
            g.insert_weighing(k, k, 30);
            assert!(g.weight() <= 200, "{}", g.weight());
        }
        // The last three (90 of the current generation's 100) and the three before.
        assert!(g.get(&49).is_some() && g.get(&47).is_some());
        assert!(g.get(&40).is_none());
        g.insert_weighing(100, 100, 101);
        assert!(g.get(&100).is_none());
        // Weighed again in place, lighter and heavier: still within the bound.
        g.insert_weighing(49, 49, 10);
        assert!(g.weight() <= 200);
        assert_eq!(g.get(&49), Some(&49));
        for k in 0..50 {
            g.insert_weighing(k, k, 1);
        }
        for k in 0..50 {
            g.get(&k);
            g.insert_weighing(k, k, 90);
            assert!(g.weight() <= 200, "{}", g.weight());
        }
    }

    #[test]
    fn generations_keep_what_was_used_within_a_generation() {
        let mut g = Generations::new(3);
        for k in 0..3 {
            g.insert(k, k * 10);
        }
        // Full: the next insertion starts a generation; 0..3 are old, still found.
        g.insert(3, 30);
        assert_eq!(g.len(), 4);
        assert_eq!(g.get(&0), Some(&0), "an old entry is found, and kept");
        g.insert(4, 40);
        // Current {3, 0, 4} is full: 5 starts another, and what was old and unused (1, 2)
        // is gone.
        g.insert(5, 50);
        assert_eq!(g.get(&1), None);
        assert_eq!(g.get(&2), None);
        for k in [0, 3, 4, 5] {
            assert_eq!(g.get(&k), Some(&(k * 10)), "{k}");
        }
        assert!(g.len() <= 6, "at most two generations");
        // Setting a key again keeps one entry for it.
        g.insert(5, 55);
        assert_eq!(g.get(&5), Some(&55));
    }

    #[test]
    fn what_is_used_often_stays_while_one_off_entries_pass_through() {
        // 50 keys used in every round among 40 new ones: a map emptied when full would
        // lose the 50 each time it filled; here none is missed after the first round.
        let mut g = Generations::new(100);
        let mut fresh = 1000;
        for round in 0..20 {
            for k in 0..50 {
                if g.get(&k).is_none() {
                    assert_eq!(round, 0, "key {k} lost in round {round}");
                    g.insert(k, ());
                }
            }
            for _ in 0..40 {
                g.insert(fresh, ());
                fresh += 1;
            }
            assert!(g.len() <= 200);
        }
    }

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
