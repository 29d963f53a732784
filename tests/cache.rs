//! The verified-token map: what a user counts on is that it never holds more than
//! `auth.cache_capacity` entries, never answers for a token past its deadline, and
//! gives expired entries back on a sweep.

use auth_sidecar::token::cache::hash_token;
use auth_sidecar::token::cache::TokenCache;

fn key(i: u64) -> [u8; 32] {
    hash_token(&format!("token-{i}"))
}

#[test]
fn never_holds_more_than_its_capacity() {
    for cap in [1u64, 16, 1000, 5000] {
        let c: TokenCache<u64> = TokenCache::new(cap);
        for i in 0..cap * 3 {
            c.insert(key(i), i, 100, 10);
            assert!(c.len() as u64 <= cap, "cap {cap}: {} entries", c.len());
        }
        // Full, with live entries only: new tokens still get in (something else went).
        let last = cap * 3 - 1;
        assert_eq!(
            c.get(&key(last), 10),
            Some(last),
            "cap {cap}: the newest entry"
        );
        if cap < 1024 {
            // One shard: the capacity is exact.
            assert_eq!(c.len() as u64, cap);
        }
    }
}

#[test]
fn answers_until_the_deadline_and_not_after() {
    let c: TokenCache<&str> = TokenCache::new(100);
    c.insert(key(1), "alice", 50, 10);
    assert_eq!(c.get(&key(1), 10), Some("alice"));
    assert_eq!(
        c.get(&key(1), 50),
        Some("alice"),
        "the deadline second itself"
    );
    assert_eq!(c.get(&key(1), 51), None);
    // A lookup past the deadline dropped it.
    assert_eq!(c.len(), 0);
    assert_eq!(c.get(&key(2), 10), None, "never inserted");
}

#[test]
fn a_full_cache_drops_expired_entries_before_live_ones() {
    let c: TokenCache<u64> = TokenCache::new(10);
    for i in 0..5 {
        c.insert(key(i), i, 20, 10); // expire at 20
    }
    for i in 5..10 {
        c.insert(key(i), i, 1000, 10); // live for long
    }
    // At t=30 the first five are expired; five new ones must displace exactly those.
    for i in 10..15 {
        c.insert(key(i), i, 1000, 30);
    }
    for i in 5..15 {
        assert_eq!(c.get(&key(i), 30), Some(i), "live entry {i} was evicted");
    }
}

#[test]
fn sweep_removes_what_expired_and_keeps_the_rest() {
    let c: TokenCache<u64> = TokenCache::new(100_000);
    for i in 0..20_000 {
        let until = if i % 2 == 0 { 100 } else { 10_000 };
        c.insert(key(i), i, until, 50);
    }
    assert_eq!(c.len(), 20_000);
    assert_eq!(c.sweep(99), 0, "nothing expired yet");
    assert_eq!(c.sweep(101), 10_000);
    assert_eq!(c.len(), 10_000);
    assert_eq!(c.get(&key(1), 101), Some(1));
    assert_eq!(c.get(&key(0), 101), None);
    c.clear();
    assert!(c.is_empty());
    assert_eq!(c.get(&key(1), 101), None);
}

#[test]
fn reinserting_a_key_replaces_it_without_evicting_others() {
    let c: TokenCache<u64> = TokenCache::new(3);
    for i in 0..3 {
        c.insert(key(i), i, 100, 10);
    }
    c.insert(key(1), 42, 200, 10);
    assert_eq!(c.len(), 3);
    assert_eq!(c.get(&key(0), 10), Some(0));
    assert_eq!(c.get(&key(1), 150), Some(42));
    assert_eq!(c.get(&key(2), 10), Some(2));
}

#[test]
fn a_cached_tokens_identity_headers_hold_no_spare_room() {
    // Every valid token keeps its identity headers for its whole life in the cache: with
    // 100 000 cached tokens, each unused slot of that list costs 7 MB.
    use auth_sidecar::inject::IdentityHeaders;
    use auth_sidecar::token::Project;
    let p = IdentityHeaders(auth_sidecar::config::Identity::default());
    let mut claims = serde_json::Map::new();
    for (claims_set, want) in [(0, 1), (1, 2), (2, 3)] {
        if claims_set >= 1 {
            claims.insert("email".into(), "a@example.com".into());
        }
        if claims_set >= 2 {
            claims.insert("name".into(), "Alice".into());
        }
        let h = p.project("alice", &claims).expect("project");
        assert_eq!(h.len(), want);
        assert_eq!(h.capacity(), h.len(), "spare capacity with {want} headers");
    }
}
