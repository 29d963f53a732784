//! `decide::extract` on arbitrary header values: Authorization (0-3 of them), Cookie,
//! Sec-WebSocket-Protocol and the query, upgrade or not. Properties: no panic; a token
//! that is returned is non-empty, token68 only, within max_token_bytes; two credential
//! sources never yield one.
#![no_main]
use std::sync::OnceLock;

use auth_sidecar::config::Auth;
use auth_sidecar::credentials::extract;
use libfuzzer_sys::fuzz_target;

fn auth() -> &'static Auth {
    static A: OnceLock<Auth> = OnceLock::new();
    A.get_or_init(|| {
        auth_sidecar_fuzz::hs_config(
            "cookie = \"access_token\"\nquery_param = \"access_token\"\nwebsocket_protocol_prefix = \"bearer.\"\nmax_token_bytes = 256",
            "",
        )
        .auth
    })
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let upgrade = data[0] & 1 == 1;
    let fields: Vec<&[u8]> = data[1..].split(|b| *b == 0xff).collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(b"");
    let mut b = http::Request::builder().method("GET");
    let query = String::from_utf8_lossy(get(4)).into_owned();
    let uri = format!("/ws?{}", query.replace(['#', ' '], ""));
    b = b.uri(http::Uri::try_from(uri.as_str()).unwrap_or_else(|_| http::Uri::from_static("/ws")));
    let n_auth = (data[0] >> 1) as usize % 4;
    let mut sources = 0;
    for i in 0..n_auth {
        if let Ok(v) = http::HeaderValue::from_bytes(get(i.min(1))) {
            b = b.header(http::header::AUTHORIZATION, v);
            sources += 1;
        }
    }
    if let Ok(v) = http::HeaderValue::from_bytes(get(2)) {
        b = b.header(http::header::COOKIE, v);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(get(3)) {
        b = b.header(http::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    let (parts, ()) = req.into_parts();
    if let Ok(Some(c)) = extract(&parts, auth(), upgrade) {
        let t: &str = &c.token;
        assert!(!t.is_empty());
        assert!(t.len() <= auth().max_token_bytes, "{} bytes", t.len());
        let body = t.trim_end_matches('=');
        assert!(!body.is_empty());
        assert!(
            body.bytes().all(|b| b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')),
            "not token68: {t:?}"
        );
        assert!(sources <= 1, "{sources} Authorization headers gave a token");
    }
});
