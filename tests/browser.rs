//! A real browser against the sidecar: headless Chromium driven through chromedriver's
//! W3C WebDriver HTTP API (spoken with reqwest). A page served on `http://localhost:P`
//! talks to sidecars on `http://127.0.0.1:S`: another origin *and* another site (the
//! browser applies its real cross-site rules: preflights, exposed headers, third-party
//! cookies with `SameSite=None; Secure`, the `Origin` of WebSocket handshakes).
//! `127.0.0.1` and `localhost` are potentially trustworthy origins to Chromium, so
//! `Secure` cookies are set and sent over plain http there.
//!
//! Every assertion is on what the page's JavaScript saw (statuses, readable headers,
//! bodies, WebSocket events), plus a few server-side counts.
//!
//! Skipped (with a printed line) only when chromium / chromedriver are missing or the
//! browser does not start, and never when `CI` is set: then that is a failure.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::token_service::TokenService;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The browser is unusable here: fail under CI, skip (loudly) elsewhere.
fn unavailable(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("browser test cannot run under CI: {why}");
    }
    println!("SKIPPED browser test: {why} (set CI=1 to make this a failure)");
}

/// Serves a blank HTML page for every path: the page's origin is the listener's.
async fn page_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body =
                    "<!doctype html><html><head><title>page</title></head><body>page</body></html>";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Result<Driver, String> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !std::path::Path::new(bin).exists() {
                return Err(format!(
                    "{bin} is not installed (apt-get install chromium chromium-driver)"
                ));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {CHROMEDRIVER}: {e}"))?;
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            _profile: tempfile::tempdir().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = d
                .http
                .get(format!("{}/status", d.base))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(v) = ready {
                if v.await.ok().is_some_and(|v| v["value"]["ready"] == true) {
                    return Ok(d);
                }
            }
            if Instant::now() > deadline {
                return Err("chromedriver did not become ready in 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("webdriver {path}: {e}"))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("webdriver {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("webdriver {path}: {status} {v}"));
        }
        Ok(v["value"].clone())
    }

    /// A new headless Chromium session; its id.
    async fn session(&self) -> Result<String, String> {
        let profile = self._profile.path().to_string_lossy().into_owned();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={profile}"),
                ],
            },
        }}});
        let v = self.call(reqwest::Method::POST, "/session", caps).await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {v}"))?
            .to_string();
        self.call(
            reqwest::Method::POST,
            &format!("/session/{id}/timeouts"),
            json!({"script": 60000, "pageLoad": 20000}),
        )
        .await?;
        Ok(id)
    }

    async fn goto(&self, id: &str, url: &str) -> Result<(), String> {
        self.call(
            reqwest::Method::POST,
            &format!("/session/{id}/url"),
            json!({ "url": url }),
        )
        .await
        .map(|_| ())
    }

    /// Runs `script` (an async function body; `args` as `arguments`, the callback last)
    /// in the page; the JSON string it passes to the callback, parsed.
    async fn run(&self, id: &str, script: &str, args: Value) -> Result<Value, String> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/session/{id}/execute/async"),
                json!({ "script": script, "args": args }),
            )
            .await?;
        let s = v.as_str().ok_or_else(|| format!("script returned {v}"))?;
        serde_json::from_str(s).map_err(|e| format!("script result {s}: {e}"))
    }

    async fn close(&self, id: &str) {
        let _ = self
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{id}"),
                json!({}),
            )
            .await;
    }
}

/// Helpers every script starts with: `wsTry(url, protocols)` resolves with what the page
/// saw of a WebSocket (opened, negotiated protocol, the echo of a message, close code).
const PRELUDE: &str = r#"
const done = arguments[arguments.length - 1];
const wsTry = (url, protocols) => new Promise((resolve) => {
  const seen = { opened: false, protocol: null, echo: null, error: false, code: null };
  let ws;
  try { ws = new WebSocket(url, protocols); } catch (e) { seen.thrown = String(e); return resolve(seen); }
  const timer = setTimeout(() => { seen.timeout = true; try { ws.close(); } catch (e) {} resolve(seen); }, 8000);
  ws.onopen = () => { seen.opened = true; seen.protocol = ws.protocol; ws.send("hello from the page"); };
  ws.onmessage = (ev) => { seen.echo = String(ev.data); clearTimeout(timer); ws.close(); resolve(seen); };
  ws.onerror = () => { seen.error = true; };
  ws.onclose = (ev) => { seen.code = ev.code; clearTimeout(timer); resolve(seen); };
});
const body = async (r) => { const t = await r.text(); try { return JSON.parse(t); } catch (e) { return t; } };
const attempt = async (f) => { try { return await f(); } catch (e) { return { thrown: String(e) }; } };
"#;

/// On the allowed page.
const ALLOWED_SCRIPT: &str = r#"
const [A, B, tok, oldA, oldB] = arguments;
(async () => {
  const out = {};
  out.bearer = await attempt(async () => {
    const r = await fetch(A + "/api/me", { headers: { "Authorization": "Bearer " + tok } });
    return { status: r.status, body: await body(r) };
  });
  out.renewed = await attempt(async () => {
    const r = await fetch(A + "/api/me", { headers: {
      "Authorization": "Bearer " + oldA.access, "X-Refresh-Token": oldA.refresh } });
    return { status: r.status, access: r.headers.get("X-Auth-Access-Token"),
             refresh: r.headers.get("X-Auth-Refresh-Token"), body: await body(r) };
  });
  out.unauthorized = await attempt(async () => {
    const r = await fetch(A + "/api/me");
    return { status: r.status, error: r.headers.get("X-Auth-Error"), body: await body(r) };
  });
  out.expired = await attempt(async () => {
    const r = await fetch(A + "/api/me", { headers: { "Authorization": "Bearer " + oldA.access } });
    return { status: r.status, error: r.headers.get("X-Auth-Error") };
  });
  // Cookie mode: the first call renews with headers and gets HttpOnly cookies back,
  // later calls authenticate with those cookies alone.
  out.cookieLogin = await attempt(async () => {
    const r = await fetch(B + "/api/me", { credentials: "include", headers: {
      "Authorization": "Bearer " + oldB.access, "X-Refresh-Token": oldB.refresh } });
    return { status: r.status, accessHeader: r.headers.get("X-Auth-Access-Token"),
             body: await body(r) };
  });
  out.cookie = await attempt(async () => {
    const r = await fetch(B + "/api/me", { credentials: "include" });
    return { status: r.status, error: r.headers.get("X-Auth-Error"), body: await body(r) };
  });
  out.cookieOmitted = await attempt(async () => {
    const r = await fetch(B + "/api/me", { credentials: "omit" });
    return { status: r.status, error: r.headers.get("X-Auth-Error") };
  });
  out.documentCookie = document.cookie;
  out.wsProtocol = await wsTry(A.replace("http", "ws") + "/ws", ["access_token." + tok, "chat"]);
  out.wsCookie = await wsTry(B.replace("http", "ws") + "/ws", ["chat"]);
  done(JSON.stringify(out));
})();
"#;

/// On the disallowed page.
const DISALLOWED_SCRIPT: &str = r#"
const [A, B, tok] = arguments;
(async () => {
  const out = {};
  out.fetch = await attempt(async () => {
    const r = await fetch(A + "/api/me", { headers: { "Authorization": "Bearer " + tok } });
    return { status: r.status };
  });
  out.wsProtocol = await wsTry(A.replace("http", "ws") + "/ws", ["access_token." + tok, "chat"]);
  out.wsCookie = await wsTry(B.replace("http", "ws") + "/ws", ["chat"]);
  done(JSON.stringify(out));
})();
"#;

fn cors_section(page: &str) -> String {
    format!(
        "[cors]\nmode = \"policy\"\nallowed_origins = [{}]\n\
         allowed_methods = [\"GET\", \"HEAD\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\n\
         allowed_headers = [\"authorization\", \"content-type\", \"x-refresh-token\", \"x-request-id\"]\n\
         max_age = \"10m\"\nallow_credentials = true\nwebsocket_origin_check_all = true\n",
        q(page)
    )
}

/// The echo body's value of header `name`, as the page read it.
fn echoed<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body["headers"]
        .as_array()?
        .iter()
        .find(|kv| kv[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .and_then(|kv| kv[1].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_site_uses_the_sidecar() {
    bounded_for(Duration::from_secs(180), async {
        let driver = match Driver::start().await {
            Ok(d) => d,
            Err(e) => return unavailable(&e),
        };
        let session = match driver.session().await {
            Ok(s) => s,
            Err(e) => return unavailable(&format!("chromium did not start: {e}")),
        };

        let (allowed, _p1) = page_server().await;
        let (disallowed, _p2) = page_server().await;
        let page = format!("http://localhost:{}", allowed.port());
        let evil_page = format!("http://localhost:{}", disallowed.port());

        // A: tokens in headers, the token of WebSocket upgrades in Sec-WebSocket-Protocol.
        let text = cors_section(&page);
        let a = Rig::builder()
            .token_service(TokenService::start(API_KEY).await)
            .lifecycle(|_| {})
            .cfg(move |c| {
                c.auth("websocket_protocol_prefix", "\"access_token.\"")
                    .extra(&text)
            })
            .start()
            .await;
        // B: cookie mode, the cookies a cross-site page can use (SameSite=None; Secure).
        let text = cors_section(&page);
        let b = Rig::builder()
            .token_service(TokenService::start(API_KEY).await)
            .lifecycle(|lc| {
                lc.refresh("cookie", "\"refresh_token\"")
                    .tokens("cookies", "true")
                    .tokens("cookie_same_site", "\"None\"")
                    .tokens("cookie_secure", "true")
                    .tokens("cookie_partitioned", "true")
                    .tokens("refresh_cookie_path", "\"/api\"");
            })
            .cfg(move |c| c.auth("cookie", "\"access_token\"").extra(&text))
            .start()
            .await;
        let a_url = format!("http://{}", a.sc.addr);
        let b_url = format!("http://{}", b.sc.addr);
        let tok = valid_for("alice");
        let old_a = a.ts.expired_pair("alice");
        let old_b = b.ts.expired_pair("bob");
        let pair =
            |p: &common::token_service::Pair| json!({"access": p.access, "refresh": p.refresh});

        let run = async {
            driver.goto(&session, &format!("{page}/app")).await?;
            let seen = driver
                .run(
                    &session,
                    &format!("{PRELUDE}{ALLOWED_SCRIPT}"),
                    json!([a_url, b_url, tok, pair(&old_a), pair(&old_b)]),
                )
                .await?;
            driver.goto(&session, &format!("{evil_page}/evil")).await?;
            let evil = driver
                .run(
                    &session,
                    &format!("{PRELUDE}{DISALLOWED_SCRIPT}"),
                    json!([a_url, b_url, tok]),
                )
                .await?;
            Ok::<_, String>((seen, evil))
        };
        let result = run.await;
        driver.close(&session).await;
        drop(driver);
        let (seen, evil) = result.unwrap_or_else(|e| panic!("driving the browser: {e}"));
        println!("the allowed page saw: {seen:#}");
        println!("the disallowed page saw: {evil:#}");

        // A fetch with Authorization passed its preflight and reached the backend as alice.
        assert_eq!(seen["bearer"]["status"], 200, "{seen:#}");
        assert_eq!(
            echoed(&seen["bearer"]["body"], "x-auth-user-id"),
            Some("alice")
        );
        assert_eq!(
            echoed(&seen["bearer"]["body"], "origin"),
            Some(page.as_str())
        );

        // Expired token + refresh token: the new pair is readable from JavaScript.
        let issued = a.ts.last_issued().expect("A renewed a pair");
        assert_eq!(seen["renewed"]["status"], 200, "{seen:#}");
        assert_eq!(seen["renewed"]["access"], issued.access.as_str());
        assert_eq!(seen["renewed"]["refresh"], issued.refresh.as_str());
        assert_eq!(
            echoed(&seen["renewed"]["body"], "x-auth-user-id"),
            Some("alice")
        );

        // The sidecar's 401s expose X-Auth-Error (and the JSON body) to the page.
        assert_eq!(seen["unauthorized"]["status"], 401, "{seen:#}");
        assert_eq!(seen["unauthorized"]["error"], "missing_token");
        assert_eq!(seen["unauthorized"]["body"]["error"], "missing_token");
        assert_eq!(seen["expired"]["status"], 401);
        assert_eq!(seen["expired"]["error"], "token_expired");

        // Cookie mode with credentials: "include".
        assert_eq!(seen["cookieLogin"]["status"], 200, "{seen:#}");
        assert_eq!(
            echoed(&seen["cookieLogin"]["body"], "x-auth-user-id"),
            Some("bob")
        );
        assert_eq!(
            seen["cookieLogin"]["accessHeader"],
            Value::Null,
            "cookie mode: no token header"
        );
        assert_eq!(
            seen["cookie"]["status"], 200,
            "cookies sent back cross-site: {seen:#}"
        );
        assert_eq!(
            echoed(&seen["cookie"]["body"], "x-auth-user-id"),
            Some("bob")
        );
        assert!(
            !echoed(&seen["cookie"]["body"], "cookie")
                .unwrap_or("")
                .contains("refresh_token="),
            "the backend never sees the refresh cookie: {seen:#}"
        );
        assert_eq!(seen["cookieOmitted"]["status"], 401);
        assert_eq!(seen["cookieOmitted"]["error"], "missing_token");
        assert_eq!(
            seen["documentCookie"], "",
            "HttpOnly cookies are not readable by the page"
        );
        assert_eq!(b.ts.refresh_calls(), 1, "one renewal, then the cookies");

        // WebSockets from the allowed origin: the token in Sec-WebSocket-Protocol, and
        // the cookie; both open, negotiate `chat` (the token entry is removed), echo.
        for k in ["wsProtocol", "wsCookie"] {
            assert_eq!(seen[k]["opened"], true, "{k}: {seen:#}");
            assert_eq!(seen[k]["protocol"], "chat", "{k}");
            assert_eq!(seen[k]["echo"], "hello from the page", "{k}");
        }

        // The disallowed page: its preflight is refused, so fetch rejects; its
        // WebSockets (protocol token: websocket_origin_check_all; cookie: always) never
        // open.
        assert!(
            evil["fetch"]["thrown"]
                .as_str()
                .is_some_and(|t| t.contains("TypeError")),
            "{evil:#}"
        );
        for k in ["wsProtocol", "wsCookie"] {
            assert_eq!(evil[k]["opened"], false, "{k}: {evil:#}");
            assert_eq!(evil[k]["code"], 1006, "{k}: {evil:#}");
        }
        let a_ws = a.backend.seen().iter().filter(|e| e.path == "/ws").count();
        let b_ws = b.backend.seen().iter().filter(|e| e.path == "/ws").count();
        assert_eq!(
            (a_ws, b_ws),
            (1, 1),
            "only the allowed page's tunnels reached the backends"
        );
        for logs in [a.sc.logs(), b.sc.logs()] {
            assert!(
                logs.contains("origin_not_allowed"),
                "refused for its origin: {logs}"
            );
        }
    })
    .await
}
