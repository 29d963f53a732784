//! Path canonicalisation and route matching, case by case (tests/properties.rs holds
//! the properties; this file pins the examples).

use auth_sidecar::config::{Route, RouteMode};
use auth_sidecar::credentials::query_without;
use auth_sidecar::decide::{mode_of, route_for};
use auth_sidecar::path::{canonical_path, canonical_path_with, encode_path, PathError};

#[test]
fn canonical_resolves_dots_and_merges_slashes() {
    assert_eq!(canonical_path("/a/./b/../c").unwrap(), "/a/c");
    assert_eq!(canonical_path("//a///b/").unwrap(), "/a/b/");
    assert_eq!(canonical_path("/a/%2e%2e/b").unwrap(), "/b");
    assert_eq!(canonical_path("/../../x").unwrap(), "/x");
    assert_eq!(canonical_path("/").unwrap(), "/");
    assert_eq!(canonical_path("/a/..").unwrap(), "/");
}

#[test]
fn ambiguous_paths_are_refused() {
    assert_eq!(canonical_path("/a%2fb"), Err(PathError::Ambiguous));
    assert_eq!(canonical_path("/a%5Cb"), Err(PathError::Ambiguous));
    assert_eq!(canonical_path("/a\\b"), Err(PathError::Ambiguous));
    assert_eq!(canonical_path("/a%00b"), Err(PathError::Ambiguous));
    assert_eq!(canonical_path("/%c0%ae%c0%ae/x"), Err(PathError::Malformed));
}

#[test]
fn double_encoding_is_ambiguous_unless_allowed() {
    // A second decoding (by the backend, a framework, another proxy) would read `..`.
    for raw in [
        "/a/%252e%252e/b",
        "/a/%25%32%65/b",
        "/a/%%32%65/b",
        "/a/%2541",
    ] {
        assert_eq!(canonical_path(raw), Err(PathError::Ambiguous), "{raw}");
    }
    // A decoded `%` that no second decoding changes is fine.
    assert_eq!(canonical_path("/100%25").unwrap(), "/100%");
    assert_eq!(canonical_path("/a/%25zz").unwrap(), "/a/%zz");
    // `server.allow_encoded_percent`: decoded once, forwarded as that literal text.
    let c = canonical_path_with("/a/%252e%252e/b", true).unwrap();
    assert_eq!(c, "/a/%2e%2e/b");
    assert_eq!(encode_path(&c), "/a/%252e%252e/b");
}

#[test]
fn routes_match_on_segment_boundaries_and_ignore_params() {
    let r = |p: &str, mode| Route {
        prefix: p.into(),
        mode,
        methods: vec![],
        require_claims: vec![],
        limits: vec![],
    };
    let routes = vec![
        r("/public/x", RouteMode::Required),
        r("/public", RouteMode::Public),
    ];
    assert_eq!(mode_of(route_for(&routes, "/public/a")), RouteMode::Public);
    assert_eq!(
        mode_of(route_for(&routes, "/publicity")),
        RouteMode::Required
    );
    assert_eq!(
        mode_of(route_for(&routes, "/public;a/x/y")),
        RouteMode::Required
    );
    assert_eq!(mode_of(route_for(&routes, "/public")), RouteMode::Public);
}

#[test]
fn query_parameter_is_removed() {
    assert_eq!(
        query_without("a=1&access_token=x&b=2", "access_token").as_deref(),
        Some("a=1&b=2")
    );
    assert_eq!(query_without("access_token=x", "access_token"), None);
}
