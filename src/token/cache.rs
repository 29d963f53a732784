//! The verified-token map: SHA-256 of a token → what verification concluded, kept until
//! a deadline (the token's expiry). Purpose-built rather than moka because nothing here
//! needs an admission policy (only well-signed tokens are ever inserted), a lookup is one
//! uncontended lock and one probe, and an entry costs one 48-byte slot instead of moka's
//! ~420 bytes of bookkeeping: the difference between 100 000 live sessions fitting in
//! 64 MiB or not.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// SHA-256 of a token: the key of every token cache, so tokens themselves are not kept
/// in memory.
pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Shards keep the lock of one worker thread out of another's way.
const SHARDS: usize = 16;

/// A bounded map with a deadline per entry. At capacity, expired entries go first, then an
/// arbitrary one (keys are uniform hashes, so that is a random eviction).
pub struct TokenCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
}

struct Shard<V> {
    map: HashMap<Key, (u64, V), BuildHasherDefault<TakeHash>>,
    /// When this shard was last swept on insert (seconds): a full shard of live entries
    /// must not be scanned on every insert.
    swept_at: u64,
}

/// The key is already a SHA-256 digest, and only tokens whose signature verified become
/// keys, so its own bytes are the hash: no second hashing, and nothing to flood.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(TokenHash);

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let [a, b, c, d, e, f, g, i, ..] = self.0;
        h.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, i]));
    }
}

#[derive(Default)]
struct TakeHash(u64);

impl Hasher for TakeHash {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `Key`; a plain fold keeps the trait honest.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl<V: Clone> TokenCache<V> {
    pub fn new(capacity: u64) -> TokenCache<V> {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        // Small caches get one shard so that their capacity is exact.
        let n = if capacity >= 64 * SHARDS { SHARDS } else { 1 };
        TokenCache {
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        swept_at: 0,
                    })
                })
                .collect(),
            // Rounded down: the shards together never exceed the capacity.
            per_shard: capacity / n,
        }
    }

    fn shard(&self, key: &TokenHash) -> MutexGuard<'_, Shard<V>> {
        // Bytes 8.. pick the shard; bytes 0..8 are the table's hash.
        lock(&self.shards[usize::from(key[8]) % self.shards.len()])
    }

    /// The value, while `now` (seconds) has not passed its deadline.
    pub fn get(&self, key: &TokenHash, now: u64) -> Option<V> {
        let mut s = self.shard(key);
        match s.map.get(&Key(*key)) {
            Some((until, v)) if now <= *until => Some(v.clone()),
            Some(_) => {
                s.map.remove(&Key(*key));
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: TokenHash, value: V, until: u64, now: u64) {
        let per_shard = self.per_shard;
        let mut s = self.shard(&key);
        if s.map.len() >= per_shard && !s.map.contains_key(&Key(key)) {
            if s.swept_at != now {
                s.swept_at = now;
                s.map.retain(|_, (u, _)| now <= *u);
            }
            if s.map.len() >= per_shard {
                if let Some(k) = s.map.keys().next().copied() {
                    s.map.remove(&k);
                }
            }
        }
        s.map.insert(Key(key), (until, value));
    }

    /// Drops every entry whose deadline has passed; returns how many went. Tables that
    /// emptied out are shrunk so their memory goes back too.
    pub fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            let before = s.map.len();
            s.map.retain(|_, (u, _)| now <= *u);
            removed += before - s.map.len();
            if s.map.capacity() > 4 * s.map.len().max(64) {
                s.map.shrink_to_fit();
            }
        }
        removed
    }

    pub fn clear(&self) {
        for shard in self.shards.iter() {
            lock(shard).map = HashMap::default();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shard's lock; a panic elsewhere while holding it leaves a usable map (entries are
/// written whole), so poisoning is not an error here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Hands freed heap pages back to the kernel. glibc keeps small freed chunks in its
/// arenas indefinitely; after a sweep that dropped many cached tokens this is what makes
/// RSS come back down.
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers of ours.
        unsafe {
            malloc_trim(0);
        }
    }
}
