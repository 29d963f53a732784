//! The double-decoding class: whatever a client spells under a public prefix, the path
//! that is forwarded stays under that prefix however many times the backend (or a
//! framework, or a second proxy) decodes it again, with dot segments resolved and `\`
//! read as `/` after each decoding.

use auth_sidecar::config::{Route, RouteMode};
use auth_sidecar::decide::route_for;
use auth_sidecar::path::resolve_path;
use percent_encoding::percent_decode_str;
use proptest::prelude::*;

/// How a lenient backend reads a path after `n` decodings.
fn backend_reading(forwarded: &str, n: usize) -> String {
    let mut p = forwarded.to_string();
    for _ in 0..n {
        p = percent_decode_str(&p)
            .decode_utf8_lossy()
            .replace('\\', "/");
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn raw_under_public() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        "admin",
        ".",
        "..",
        "%2e",
        "%2E",
        "%25",
        "%252e",
        "%252E",
        "%25%32%65",
        "%%32%65",
        "%2525",
        "%32%65",
        "%5c",
        "%255c",
        "%2f",
        "%252f",
        "%25%35%63",
        ";",
        "%3b",
        "x",
        "%41",
    ]);
    let seg = prop::collection::vec(piece, 1..4).prop_map(|p| p.concat());
    prop::collection::vec(seg, 1..6).prop_map(|segs| format!("/public/{}", segs.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn a_forwarded_public_path_never_leaves_its_prefix_however_often_it_is_decoded(
        raw in raw_under_public()
    ) {
        let routes = vec![
            Route { prefix: "/public".into(), mode: RouteMode::Public, methods: vec![], require_claims: vec![], limits: vec![] },
        ];
        if let Ok((canonical, forwarded)) = resolve_path(&raw) {
            let rule = route_for(&routes, &canonical).map(|r| r.mode);
            if rule == Some(RouteMode::Public) {
                for n in 0..=4 {
                    let seen = backend_reading(&forwarded, n);
                    prop_assert!(under(&seen, "/public"),
                        "{raw} -> forwarded {forwarded}, decoded {n}x reads {seen}");
                }
            }
        }
    }
}

#[test]
fn the_known_double_decoding_spellings_are_refused() {
    for raw in [
        "/public/%252e%252e/admin",
        "/public/%25%32%65%25%32%65/admin",
        "/public/%%32%65%%32%65/admin",
        "/public/%252e%252e%252fadmin",
    ] {
        assert!(resolve_path(raw).is_err(), "{raw}");
    }
}

mod common;
use common::*;

/// On the real binary: a double-encoded target is 400 on a public route and reaches
/// nothing; `server.allow_encoded_percent` forwards it as that literal text.
#[tokio::test]
async fn double_encoded_targets_are_400_on_public_routes_unless_allowed() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::builder()
            .cfg(|c| c.route("prefix = \"/public\"\nmode = \"public\""))
            .start()
            .await;
        for target in [
            "/public/%252e%252e/admin",
            "/public/%25%32%65%25%32%65/admin",
        ] {
            let r = raw(sc.addr, &raw_req("GET", target, &[])).await;
            r.assert_error(400, "invalid_request");
        }
        assert_eq!(backend.count(), 0, "nothing was forwarded");
        let r = raw(sc.addr, &raw_req("GET", "/public/100%25", &[])).await;
        assert_eq!(
            r.status, 200,
            "a decoded % that no decoding changes is fine"
        );
        drop(sc);

        let Rig { backend, sc, .. } = Rig::builder()
            .cfg(|c| {
                c.route("prefix = \"/public\"\nmode = \"public\"")
                    .server("allow_encoded_percent", "true")
            })
            .start()
            .await;
        let r = raw(sc.addr, &raw_req("GET", "/public/a%252eb", &[])).await;
        assert_eq!(r.status, 200);
        assert_eq!(backend.last().path, "/public/a%252eb");
    })
    .await
}
