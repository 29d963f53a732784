//! The route a path is decided on must be the route a servlet-style backend (Tomcat,
//! Jetty, Spring: `;params` dropped per segment, then dot segments resolved) reads from
//! the forwarded path. decide.rs itself ignores `;params` "because servlet containers drop
//! them". This target finds `/public/..;/admin` (a public decision, /admin served) at
//! once; it is kept as the regression check for that fix.
#![no_main]
use auth_sidecar::config::{Route, RouteMode};
use auth_sidecar::decide::route_for;
use auth_sidecar::path::resolve_path;
use libfuzzer_sys::fuzz_target;

fn servlet_reading(fwd: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for seg in fwd.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        let seg = percent_decode(seg);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    format!("/{}", out.join("/"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let route = |p: &str, mode| Route {
        prefix: p.to_string(),
        mode,
        methods: vec![],
        require_claims: vec![],
        limits: vec![],
    };
    let routes = [
        route("/public", RouteMode::Public),
        route("/admin", RouteMode::Required),
    ];
    let Ok((canon, fwd)) = resolve_path(raw) else {
        return;
    };
    let decided = route_for(&routes, &canon).map(|r| r.prefix.clone());
    let servlet = servlet_reading(&fwd);
    let served = route_for(&routes, &servlet).map(|r| r.prefix.clone());
    assert_eq!(
        decided, served,
        "{raw:?}: decided under {decided:?} on {canon:?}, but a servlet backend serves {servlet:?} from {fwd:?}"
    );
});
