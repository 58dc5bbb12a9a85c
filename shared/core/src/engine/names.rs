//! Interning of merchant and customer ids: the hot path hashes each id once per row and
//! then works with dense `u32` indices.

use rustc_hash::FxHashMap;

/// A table of distinct names, each with a dense index in first-seen order.
#[derive(Debug, Default, Clone)]
pub struct Names {
    index: FxHashMap<Box<[u8]>, u32>,
    names: Vec<Box<str>>,
}

impl Names {
    /// The index of the id `bytes`, adding it if new; `None` if it is new and not valid
    /// UTF-8. Known ids were checked when first added, so the hot path skips the check.
    pub fn intern_bytes(&mut self, bytes: &[u8]) -> Option<u32> {
        if let Some(&i) = self.index.get(bytes) {
            return Some(i);
        }
        let name = std::str::from_utf8(bytes).ok()?;
        Some(self.intern(name))
    }

    /// The index of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name.as_bytes()) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.into());
        self.index.insert(name.as_bytes().into(), i);
        i
    }

    /// The index of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name.as_bytes()).copied()
    }

    /// The name at `index`.
    pub fn name(&self, index: u32) -> &str {
        &self.names[index as usize]
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Names from index `from` on, in index order.
    pub fn since(&self, from: usize) -> impl Iterator<Item = &str> {
        self.names[from..].iter().map(|n| n.as_ref())
    }
}
