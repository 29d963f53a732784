//! `inject::Stripper::strip` on arbitrary header names and values. Properties: no
//! header the sidecar owns survives in any spelling (prefix `x-auth-`, the identity
//! headers inside and outside it, the refresh and app-identity headers, `_` read as `-`,
//! any case); every other header survives with all its values, in order.
#![no_main]
use std::sync::OnceLock;

use auth_sidecar::config::Config;
use auth_sidecar::credentials::Stripper;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

struct S {
    stripper: Stripper,
    owned: Vec<String>,
}

fn s() -> &'static S {
    static X: OnceLock<S> = OnceLock::new();
    X.get_or_init(|| {
        let cfg: Config = auth_sidecar_fuzz::hs_config(
            "",
            "[identity]\nuser_id = \"x-user\"\nemail = \"x-auth-email\"\n[identity.claims]\nrole = \"x-role\"\n",
        );
        let rt = HeaderName::from_static("x-refresh-token");
        let app = HeaderName::from_static("x-app-identity");
        S {
            stripper: Stripper::new(&cfg, &[&rt, &app]),
            owned: ["x-user", "x-role", "x-refresh-token", "x-app-identity"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    })
}

fn norm(n: &str) -> String {
    n.to_ascii_lowercase().replace('_', "-")
}

fuzz_target!(|data: &[u8]| {
    let st = s();
    let mut h = HeaderMap::new();
    let mut kept: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for item in data.split(|b| *b == b'\n') {
        let (n, v) = match item.iter().position(|b| *b == b':') {
            Some(i) => (&item[..i], &item[i + 1..]),
            None => (item, &b""[..]),
        };
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) else {
            continue;
        };
        h.append(n.clone(), v.clone());
        let nn = norm(n.as_str());
        if !(nn.starts_with("x-auth-") || st.owned.contains(&nn)) {
            kept.push((n, v));
        }
    }
    st.stripper.strip(&mut h);
    for name in h.keys() {
        let nn = norm(name.as_str());
        assert!(!nn.starts_with("x-auth-"), "{name} survived");
        assert!(!st.owned.contains(&nn), "{name} survived");
    }
    for (n, _) in &kept {
        let want: Vec<&HeaderValue> = kept
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v)
            .collect();
        let got: Vec<&HeaderValue> = h.get_all(n).iter().collect();
        assert_eq!(want, got, "{n} changed");
    }
});
