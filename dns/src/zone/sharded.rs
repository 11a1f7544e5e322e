//! A hash map split into a fixed number of shards behind `Arc`s, so that a copy costs the
//! shard pointers, and changing a copy copies only the shards it touches: what lets
//! [`Snapshot::patch`](super::Snapshot::patch) cost what changed, not the table.
//!
//! Keys are hashed with the fast path's [`NameHasher`]: the shard is picked from bits that
//! the shard's own table does not use (it takes its bucket from the low bits and its tag from
//! the top 7), so keys in one shard still spread over its buckets and tags.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::sync::Arc;

use super::wire::NameHasher;

/// Shards per map: with 100k names over 12,500 services, about 12 services per shard.
const SHARDS: usize = 1024;

type Shard<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;

#[derive(Debug)]
pub(crate) struct Sharded<K, V> {
    shards: Vec<Arc<Shard<K, V>>>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
        }
    }
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
        }
    }
}

fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let hash = BuildHasherDefault::<NameHasher>::default().hash_one(key);
    // Bits 32.. (below the tag bits), masked to the shard count (a power of two).
    (hash >> 32) as usize & (SHARDS - 1)
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = shard_of(key.borrow());
        Arc::make_mut(&mut self.shards[shard]).insert(key, value)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = &mut self.shards[shard_of(key)];
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).remove(key)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_every_shard_until_one_is_changed() {
        let mut a: Sharded<Arc<str>, u32> = Sharded::default();
        for i in 0..5000u32 {
            a.insert(Arc::from(format!("s{i}/ns")), i);
        }
        let mut b = a.clone();
        assert_eq!(b.insert(Arc::from("s7/ns"), 70), Some(7));
        assert_eq!(b.remove("s8/ns"), Some(8));
        assert_eq!(b.remove("nope"), None);
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "{shared}");
        assert_eq!(a.get("s7/ns"), Some(&7));
        assert_eq!(b.get("s7/ns"), Some(&70));
        assert_eq!(a.get("s8/ns"), Some(&8));
        assert_eq!(b.get("s8/ns"), None);
        assert_eq!(a.values().count(), 5000);
        assert_eq!(b.values().count(), 4999);
        // Keys spread over the shards.
        let used = a.shards.iter().filter(|s| !s.is_empty()).count();
        assert!(used > SHARDS * 9 / 10, "{used}");
    }
}
