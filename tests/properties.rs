//! Property tests for the pure parts of the request path: path canonicalisation, route
//! matching, token extraction, header stripping and config parsing.

use std::collections::BTreeMap;
use std::path::Path;

use auth_sidecar::config::{Config, Route, RouteMode};
use auth_sidecar::credentials::Stripper;
use auth_sidecar::decide::route_for;
use auth_sidecar::path::{canonical_path, encode_path, resolve_path};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use proptest::prelude::*;

fn cfg(extra: &str) -> Config {
    let env: BTreeMap<String, String> = [("HS".to_string(), "k".repeat(40))].into();
    let text = format!("[auth]\nhmac_secret = {{ env = \"HS\" }}\n{extra}");
    Config::from_toml(&text, Path::new("."), &env).expect("config loads")
}

/// Every `section.key` of the config reference, computed once.
fn known_keys() -> &'static Vec<String> {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        auth_sidecar::config::reference::rows()
            .into_iter()
            .map(|r| r.key)
            .collect()
    })
}

/// A minimal valid config (HS256, secret in `HS`) with `line` added to `[section]`.
fn with_key(section: &str, line: &str) -> String {
    if section == "auth" {
        format!("[auth]\nhmac_secret = {{ env = \"HS\" }}\n{line}\n")
    } else {
        format!("[auth]\nhmac_secret = {{ env = \"HS\" }}\n[{section}]\n{line}\n")
    }
}

/// Path-ish strings: segments from a small alphabet heavy in the characters that matter.
fn raw_path() -> impl Strategy<Value = String> {
    let seg = prop::collection::vec(
        prop::sample::select(vec![
            "a", "b", "public", "admin", ".", "..", "%2e", "%2E%2e", "%2f", "%5c", "%25", "%252e",
            ";x", "%3b", "", "%00", "%c0%ae", "é", "%C3%A9", "?", "#", " ", "~", "%41",
        ]),
        0..5,
    )
    .prop_map(|parts| parts.concat());
    prop::collection::vec(seg, 0..6).prop_map(|segs| format!("/{}", segs.join("/")))
}

fn routes() -> Vec<Route> {
    let r = |p: &str, mode| Route {
        prefix: p.into(),
        mode,
        methods: vec![],
        require_claims: vec![],
        limits: vec![],
    };
    let mut v = vec![
        r("/public", RouteMode::Public),
        r("/public/admin", RouteMode::Required),
        r("/a/b", RouteMode::Optional),
    ];
    v.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A canonical path is a fixed point, and forwarding it re-encoded means the backend
    /// decodes exactly what was matched.
    #[test]
    fn canonical_paths_are_fixed_points(raw in raw_path()) {
        if let Ok(c) = canonical_path(&raw) {
            prop_assert!(c.starts_with('/'));
            prop_assert!(!c.contains("//"));
            prop_assert!(!c.split('/').any(|s| s == "." || s == ".."));
            let forwarded = encode_path(&c);
            let again = canonical_path(&forwarded);
            prop_assert_eq!(again.as_ref(), Ok(&c));
            let (c2, f2) = resolve_path(&forwarded).unwrap();
            prop_assert_eq!(&c2, &c);
            prop_assert_eq!(&f2, &forwarded);
        }
    }

    /// No input reaches a different rule through the backend's reading of the forwarded
    /// path than the one the sidecar decided on.
    #[test]
    fn the_rule_decided_is_the_rule_the_backend_path_gets(raw in raw_path()) {
        let rs = routes();
        if let Ok((canonical, forwarded)) = resolve_path(&raw) {
            let decided = route_for(&rs, &canonical).map(|r| r.prefix.clone());
            let backend_view = canonical_path(&forwarded).unwrap();
            let again = route_for(&rs, &backend_view).map(|r| r.prefix.clone());
            prop_assert_eq!(decided, again);
        }
    }

    /// An encoded slash or backslash is always refused, wherever it sits.
    #[test]
    fn encoded_separators_are_refused(prefix in raw_path(), sep in prop::sample::select(vec!["%2f", "%2F", "%5c", "%5C", "\\"])) {
        let raw = format!("{prefix}/x{sep}y");
        prop_assert!(canonical_path(&raw).is_err());
    }

    /// Whatever owned headers a client sends, in whatever spelling, none survives the strip,
    /// and headers the sidecar does not own are untouched.
    #[test]
    fn stripping_removes_every_spelling_of_owned_headers(
        names in prop::collection::vec(
            prop::sample::select(vec![
                "x-auth-user-id", "X-Auth-User-Id", "X_AUTH_USER_ID", "x_auth_email", "X-AUTH-anything",
                "x-auth-", "x-refresh-token", "X_Refresh_Token", "x-authorization", "x-author", "accept",
            ]),
            0..8,
        )
    ) {
        let c = cfg("[refresh]\nurl = \"http://127.0.0.1:1/r\"\n");
        let refresh = HeaderName::from_static("x-refresh-token");
        let stripper = Stripper::new(&c, &[&refresh]);
        let mut h = HeaderMap::new();
        for n in &names {
            if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                h.append(name, HeaderValue::from_static("spoof"));
            }
        }
        stripper.strip(&mut h);
        for k in h.keys() {
            let norm = k.as_str().replace('_', "-");
            prop_assert!(!norm.starts_with("x-auth-"), "{} survived", k);
            prop_assert!(norm != "x-refresh-token", "{} survived", k);
        }
        let kept = names.iter().filter(|n| matches!(**n, "x-authorization" | "x-author" | "accept")).count();
        prop_assert_eq!(h.len(), kept);
    }

    /// Extraction never panics, and a token is only ever returned from one place.
    #[test]
    fn extraction_is_total_and_single_sourced(
        authz in prop::collection::vec("[ -~]{0,40}", 0..3),
        cookie in prop::option::of("[ -~]{0,40}"),
    ) {
        let c = cfg("");
        let mut auth = c.auth.clone();
        auth.cookie = Some("tok".into());
        let mut b = Request::builder().uri("/x");
        for a in &authz {
            b = b.header("authorization", a.as_str());
        }
        if let Some(v) = &cookie {
            b = b.header("cookie", format!("tok={v}"));
        }
        if let Ok(req) = b.body(()) {
            let (parts, _) = req.into_parts();
            match auth_sidecar::credentials::extract(&parts, &auth, false) {
                Ok(Some(cred)) => {
                    prop_assert!(!cred.token.is_empty());
                    prop_assert!(authz.len() <= 1);
                }
                // Another scheme (Basic, garbage) is not a credential of ours.
                Ok(None) => {
                    let no_bearer = authz.iter().all(|a| {
                        let scheme = a.split_once(' ').map(|x| x.0).unwrap_or(a);
                        !scheme.eq_ignore_ascii_case("bearer")
                    });
                    prop_assert!(no_bearer);
                }
                Err(_) => {}
            }
        }
    }

    /// Config parsing never panics on arbitrary TOML-ish text and reports unknown keys:
    /// a key that is not in the config reference (`config::reference::rows`) is refused
    /// with a problem naming it (`unknown key `section.key``), in whichever section it
    /// sits; a known key is never reported as unknown.
    #[test]
    fn config_parsing_is_total(
        section in prop::sample::select(vec!["server", "backend", "auth", "identity", "log", "response_tokens"]),
        key in "[a-z_]{1,12}",
        value in "[ -~]{0,20}",
    ) {
        let text = with_key(section, &format!("{key} = \"{}\"", value.replace(['"', '\\'], "")));
        let env: BTreeMap<String, String> = [("HS".to_string(), "k".repeat(40))].into();
        let path = format!("{section}.{key}");
        let known = known_keys().contains(&path);
        let wanted = format!("unknown key `{path}`");
        match Config::from_toml(&text, Path::new("."), &env) {
            Ok(_) => prop_assert!(known, "{} was accepted", path),
            Err(e) => {
                let named = e.0.iter().any(|p| p == &wanted);
                if known {
                    prop_assert!(!named, "known key {} reported unknown: {:?}", path, e.0);
                } else {
                    prop_assert!(named, "{} not reported as unknown: {:?}", path, e.0);
                }
            }
        }
    }

    /// The same for keys that are certainly unknown, so every case checks the report
    /// (the alphabet above rarely spells a real key, but may).
    #[test]
    fn unknown_keys_are_reported_by_name(
        section in prop::sample::select(vec!["server", "admin", "backend", "auth", "identity", "log"]),
        key in "zz[a-z_]{0,10}",
    ) {
        let text = with_key(section, &format!("{key} = 1"));
        let env: BTreeMap<String, String> = [("HS".to_string(), "k".repeat(40))].into();
        let err = Config::from_toml(&text, Path::new("."), &env).err();
        let problems = err.map(|e| e.0).unwrap_or_default();
        let wanted = format!("unknown key `{section}.{key}`");
        prop_assert!(problems.contains(&wanted), "wanted {:?} in {:?}", wanted, problems);
    }
}

#[test]
fn a_cookie_and_a_header_together_are_refused() {
    let c = cfg("");
    let mut auth = c.auth.clone();
    auth.cookie = Some("tok".into());
    let req = Request::builder()
        .uri("/x")
        .header("authorization", "Bearer abc.def.ghi")
        .header("cookie", "tok=abc.def.ghi")
        .body(())
        .unwrap();
    let (parts, _) = req.into_parts();
    assert!(auth_sidecar::credentials::extract(&parts, &auth, false).is_err());
}
