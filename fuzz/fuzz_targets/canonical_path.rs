//! `path::canonical_path` / `resolve_path` on arbitrary paths. Properties: no panic;
//! a canonical path is absolute, has no empty, `.`, `..`, control or `\` segment; and the
//! path forwarded to the backend, read again the same way, gives the same decision path
//! and the same forwarded bytes (the backend and the rule can never disagree).
#![no_main]
use auth_sidecar::path::{canonical_path, resolve_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = canonical_path(raw) {
        assert!(c.starts_with('/'), "{raw:?} -> {c:?}");
        let segs: Vec<&str> = c.split('/').skip(1).collect();
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            assert!(!s.is_empty() || last, "{raw:?} -> {c:?}: empty segment");
            assert!(*s != "." && *s != "..", "{raw:?} -> {c:?}: dot segment");
            assert!(
                !s.chars().any(|ch| ch.is_control() || ch == '\\'),
                "{raw:?} -> {c:?}"
            );
        }
    }
    if let Ok((canon, fwd)) = resolve_path(raw) {
        let again = resolve_path(&fwd)
            .unwrap_or_else(|e| panic!("{raw:?}: forwarded {fwd:?} no longer resolves: {e:?}"));
        assert_eq!(
            again.0, canon,
            "{raw:?}: forwarded {fwd:?} reads as another path"
        );
        assert_eq!(again.1, fwd, "{raw:?}: forwarding is not idempotent");
        if http::uri::PathAndQuery::try_from(raw).is_ok() {
            assert!(
                http::uri::PathAndQuery::try_from(fwd.as_str()).is_ok(),
                "{raw:?}: forwarded {fwd:?} is not a valid request target"
            );
        }
    }
});
