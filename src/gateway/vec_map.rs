//! A map kept as a vector of pairs: for the few entries of one user's sessions (most users have
//! one), a linear scan beats hashing, and an entry costs its own size, not a hash table's four
//! buckets and control bytes (an idle node holds one such map per connected user).

pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: PartialEq + Copy, V> VecMap<K, V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.0.iter_mut().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    /// Inserts or replaces.
    pub fn insert(&mut self, k: K, v: V) {
        match self.get_mut(&k) {
            Some(old) => *old = v,
            None => {
                // One slot at a time: a Vec's first growth would make room for four.
                self.0.reserve_exact(1);
                self.0.push((k, v))
            }
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.0.iter().position(|(key, _)| key == k)?;
        let (_, v) = self.0.swap_remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new(); // give the slots back
        }
        Some(v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.0.iter_mut().map(|(k, v)| (&*k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;

    #[test]
    fn behaves_as_a_map() {
        let mut m = VecMap::default();
        assert!(m.is_empty());
        m.insert(1u64, "a");
        m.insert(2, "b");
        m.insert(1, "c");
        assert_eq!(m.get(&1), Some(&"c"));
        assert_eq!(m.keys().count(), 2);
        if let Some(v) = m.get_mut(&2) {
            *v = "d";
        }
        assert_eq!(m.remove(&2), Some("d"));
        assert_eq!(m.remove(&2), None);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(m.remove(&1), Some("c"));
        assert!(m.is_empty());
    }
}
