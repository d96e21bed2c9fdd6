//! A sorted set of `u64` keys kept in blocks, for the placement's host index.
//!
//! A search is two binary searches (over the blocks' last keys, then inside one block) and a
//! move shifts at most one block, so the cost stays logarithmic in searches and bounded in
//! moves however many hosts there are. A flat sorted `Vec` searched as fast but shifted the
//! whole list when `spread` moved a host past thousands of equal ones; a `BTreeSet` stays
//! logarithmic but walks its nodes key by key, which under a plugin's fuel or epoch checks
//! costs one check per step (docs/performance.md, session 7).

/// Where a key sits: its block and its place in that block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    block: usize,
    at: usize,
}

impl Slot {
    /// The slot `n` keys further in the same block.
    pub(crate) fn plus(self, n: usize) -> Self {
        Self { block: self.block, at: self.at + n }
    }
}

/// Distinct `u64` keys in ascending order, in blocks of at most `2 * BLOCK - 1` keys: built
/// `BLOCK` to a block, a block splits in two when it reaches `2 * BLOCK` and is dropped when
/// emptied. 512 keys (4 KiB) to a block keep a shift under a microsecond and the blocks few.
#[derive(Debug, Default)]
pub(crate) struct SortedBlocks<const BLOCK: usize = 512> {
    blocks: Vec<Vec<u64>>,
    /// The last (greatest) key of each block.
    lasts: Vec<u64>,
    len: usize,
}

impl<const BLOCK: usize> SortedBlocks<BLOCK> {
    /// The set of `keys` (any order, repeats dropped).
    pub(crate) fn new(mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        let blocks: Vec<Vec<u64>> = keys.chunks(BLOCK).map(<[u64]>::to_vec).collect();
        let lasts = blocks.iter().filter_map(|b| b.last().copied()).collect();
        Self { blocks, lasts, len: keys.len() }
    }

    /// How many keys.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot of the first key not below `key` (past the end when there is none).
    #[inline(always)]
    pub(crate) fn lower_bound(&self, key: u64) -> Slot {
        let block = self.lasts.partition_point(|&last| last < key);
        let at = self.blocks.get(block).map_or(0, |b| b.partition_point(|&k| k < key));
        Slot { block, at }
    }

    /// The keys from `from` upwards, block by block: each run with the slot of its first key.
    pub(crate) fn runs_upward(&self, from: Slot) -> impl Iterator<Item = (Slot, &[u64])> + '_ {
        self.blocks.iter().enumerate().skip(from.block).map(move |(block, keys)| {
            let at = if block == from.block { from.at } else { 0 };
            (Slot { block, at }, &keys[at..])
        })
    }

    /// The keys from `to` upwards, block by block from the last one: each run with the slot
    /// of its first key (walk a run from its end to go downwards).
    pub(crate) fn runs_downward(&self, to: Slot) -> impl Iterator<Item = (Slot, &[u64])> + '_ {
        self.blocks.iter().enumerate().skip(to.block).rev().map(move |(block, keys)| {
            let at = if block == to.block { to.at } else { 0 };
            (Slot { block, at }, &keys[at..])
        })
    }

    /// Puts `key` in place of the key at `slot` (a slot this set gave out since its last
    /// change): one shift inside the block when the key stays in it.
    pub(crate) fn replace(&mut self, slot: Slot, key: u64) {
        let above = slot.block.checked_sub(1).map(|b| self.lasts[b]);
        let below = self.blocks.get(slot.block + 1).map(|b| b[0]);
        if above.is_some_and(|a| key <= a) || below.is_some_and(|b| key >= b) {
            self.remove(slot);
            self.insert(key);
            return;
        }
        let keys = &mut self.blocks[slot.block];
        let to = keys.partition_point(|&k| k < key);
        if to <= slot.at {
            keys.copy_within(to..slot.at, to + 1);
            keys[to] = key;
        } else {
            keys.copy_within(slot.at + 1..to, slot.at);
            keys[to - 1] = key;
        }
        self.lasts[slot.block] = keys[keys.len() - 1];
    }

    /// Removes the key at `slot` (a slot this set gave out since its last change).
    pub(crate) fn remove(&mut self, slot: Slot) -> u64 {
        let keys = &mut self.blocks[slot.block];
        let key = keys.remove(slot.at);
        match keys.last() {
            None => {
                self.blocks.remove(slot.block);
                self.lasts.remove(slot.block);
            }
            Some(&last) => self.lasts[slot.block] = last,
        }
        self.len -= 1;
        key
    }

    /// Adds `key`; false if it was there already.
    pub(crate) fn insert(&mut self, key: u64) -> bool {
        // The first block whose last key is not below `key`, or the last block.
        let block = self.lasts.partition_point(|&last| last < key).min(self.blocks.len().saturating_sub(1));
        let Some(keys) = self.blocks.get_mut(block) else {
            self.blocks.push(vec![key]);
            self.lasts.push(key);
            self.len = 1;
            return true;
        };
        let Err(at) = keys.binary_search(&key) else { return false };
        keys.insert(at, key);
        self.lasts[block] = self.lasts[block].max(key);
        if keys.len() >= 2 * BLOCK {
            let upper = keys.split_off(BLOCK);
            self.lasts[block] = keys[BLOCK - 1];
            self.lasts.insert(block + 1, upper[upper.len() - 1]);
            self.blocks.insert(block + 1, upper);
        }
        self.len += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest};
    use std::collections::BTreeSet;

    /// Small blocks, so a few keys split and drop blocks.
    type Small = SortedBlocks<4>;

    fn upward<const B: usize>(set: &SortedBlocks<B>, from: Slot) -> Vec<(Slot, u64)> {
        set.runs_upward(from)
            .flat_map(|(first, keys)| keys.iter().enumerate().map(move |(i, &k)| (first.plus(i), k)))
            .collect()
    }

    fn downward<const B: usize>(set: &SortedBlocks<B>, to: Slot) -> Vec<(Slot, u64)> {
        set.runs_downward(to)
            .flat_map(|(first, keys)| keys.iter().enumerate().rev().map(move |(i, &k)| (first.plus(i), k)))
            .collect()
    }

    fn check<const B: usize>(set: &SortedBlocks<B>) {
        assert_eq!(set.lasts.len(), set.blocks.len());
        for (keys, &last) in set.blocks.iter().zip(&set.lasts) {
            assert!(!keys.is_empty() && keys.len() < 2 * B, "block of {} keys", keys.len());
            assert_eq!(keys.last(), Some(&last));
        }
        let all: Vec<u64> = upward(set, set.lower_bound(0)).into_iter().map(|(_, k)| k).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "ascending and distinct");
        assert_eq!(all.len(), set.len());
    }

    #[test]
    fn blocks_split_and_vanish_and_the_order_holds() {
        let mut set = Small::new((0..12).map(|k| k * 10).collect());
        assert_eq!(set.blocks.len(), 3);
        for k in [1, 2, 3, 4] {
            assert!(set.insert(k));
        }
        assert!(!set.insert(1), "a key already there is not added twice");
        assert_eq!((set.len(), set.blocks.len()), (16, 4), "the first block split");
        check(&set);
        // Emptying a block drops it.
        for _ in 0..set.blocks[0].len() {
            set.remove(set.lower_bound(0));
        }
        assert_eq!(set.blocks.len(), 3);
        check(&set);
        // A key moved within its block and across blocks.
        let slot = set.lower_bound(40);
        set.replace(slot, 45);
        set.replace(set.lower_bound(45), 115);
        check(&set);
        assert_eq!(upward(&set, set.lower_bound(41)).first().map(|&(_, k)| k), Some(50));
        assert_eq!(downward(&set, set.lower_bound(0)).first().map(|&(_, k)| k), Some(115));
        let past_end = set.lower_bound(u64::MAX);
        assert!(upward(&set, past_end).is_empty() && downward(&set, past_end).is_empty());
    }

    proptest! {
        #[test]
        fn behaves_like_a_btree_set(
            start in prop::collection::vec(0u64..200, 0..60),
            ops in prop::collection::vec((0u8..4, 0u64..200, 0u64..200), 0..300),
        ) {
            let mut set = Small::new(start.clone());
            let mut model: BTreeSet<u64> = start.into_iter().collect();
            for (op, key, other) in ops {
                match op {
                    0 => prop_assert_eq!(set.insert(key), model.insert(key)),
                    1 | 2 => {
                        // Remove (1) or replace with `other` (2) the first key not below `key`.
                        let found = upward(&set, set.lower_bound(key)).first().copied();
                        prop_assert_eq!(found.map(|(_, k)| k), model.range(key..).next().copied());
                        if let Some((slot, k)) = found {
                            if op == 1 {
                                prop_assert_eq!(set.remove(slot), k);
                                model.remove(&k);
                            } else if k == other || !model.contains(&other) {
                                set.replace(slot, other);
                                model.remove(&k);
                                model.insert(other);
                            }
                        }
                    }
                    _ => {
                        let slot = set.lower_bound(key);
                        let up = upward(&set, slot);
                        let down = downward(&set, slot);
                        prop_assert_eq!(up.iter().map(|&(_, k)| k).collect::<Vec<_>>(), model.range(key..).copied().collect::<Vec<_>>());
                        prop_assert_eq!(down.iter().map(|&(_, k)| k).collect::<Vec<_>>(), model.range(key..).rev().copied().collect::<Vec<_>>());
                        // Every slot handed out points at its key.
                        for (slot, k) in up {
                            prop_assert!(set.blocks[slot.block][slot.at] == k);
                        }
                    }
                }
                prop_assert_eq!(set.len(), model.len());
                check(&set);
            }
        }
    }
}
