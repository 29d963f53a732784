//! TLS test material and clients: the fixtures in `tests/fixtures/tls/` (a test CA, two
//! server certificates for 127.0.0.1 + localhost signed by it, an unrelated CA), rustls
//! client/server configs (aws-lc-rs, TLS 1.2/1.3), a one-shot HTTPS request over a fresh
//! connection with a chosen ALPN (hyper client conn, h1 or h2), and [`TlsFront`], a TLS
//! terminator that puts any plain test server behind HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// Absolute path of a file in `tests/fixtures/tls/`.
pub fn tls_fixture(name: &str) -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("tls")
        .join(name);
    assert!(p.is_file(), "missing TLS fixture {}", p.display());
    p
}

/// `tls_fixture(name)` as a string (for TOML).
pub fn tls_path(name: &str) -> String {
    tls_fixture(name).to_string_lossy().into_owned()
}

/// The certificates of a PEM fixture.
pub fn certs(name: &str) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(tls_fixture(name)).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// The private key of a PEM fixture.
pub fn private_key(name: &str) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(tls_fixture(name)).unwrap();
    rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap()
        .expect("no private key in the fixture")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting only the CA in fixture `ca` (e.g. "ca.pem"), offering `alpn`,
/// speaking the given protocol versions.
pub fn client_config_with(
    ca: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS 1.2 + 1.3 client config trusting only `ca`, offering `alpn`.
pub fn client_config(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config_with(
        ca,
        alpn,
        &[&rustls::version::TLS12, &rustls::version::TLS13],
    )
}

/// A server config for the fixture pair `cert`/`key`, ALPN http/1.1 only.
pub fn server_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs(cert), private_key(key))
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A server config like [`server_config`] that requires a client certificate signed by
/// the CA in fixture `client_ca` (a backend that demands mTLS).
pub fn mtls_server_config(cert: &str, key: &str, client_ca: &str) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(client_ca) {
        roots.add(c).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert), private_key(key))
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Opens a TLS connection to `addr` (SNI/name checked: `server_name`), 5 s bound.
pub async fn connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), async move {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("TLS connect timed out")))
}

/// What one HTTPS exchange saw.
#[derive(Debug)]
pub struct TlsExchange {
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The server's leaf certificate (DER).
    pub peer_cert: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The HTTP version of the response.
    pub http_version: http::Version,
}

impl TlsExchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The negotiated ALPN, version and leaf certificate of an open connection.
pub fn session_facts(
    s: &TlsStream<TcpStream>,
) -> (Option<Vec<u8>>, Option<rustls::ProtocolVersion>, Vec<u8>) {
    let (_, conn) = s.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    (
        conn.alpn_protocol().map(|p| p.to_vec()),
        conn.protocol_version(),
        leaf,
    )
}

/// One GET over a fresh TLS connection: h2 when the server picked `h2` by ALPN, HTTP/1.1
/// otherwise. Host / :authority is `localhost:PORT`. 10 s bound.
pub async fn https_get(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> TlsExchange {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = connect(addr, cfg, "localhost")
            .await
            .expect("TLS handshake with the sidecar");
        let (alpn, version, peer_cert) = session_facts(&stream);
        let h2 = alpn.as_deref() == Some(b"h2".as_slice());
        let mut req = http::Request::builder().method("GET").uri(format!(
            "https://localhost:{}{}",
            addr.port(),
            path
        ));
        if !h2 {
            req = req.header("host", format!("localhost:{}", addr.port()));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let io = TokioIo::new(stream);
        let resp = if h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            send.send_request(req).await.expect("h2 request")
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http/1.1 handshake");
            tokio::spawn(conn);
            send.send_request(req).await.expect("http/1.1 request")
        };
        let status = resp.status().as_u16();
        let http_version = resp.version();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes()
            .to_vec();
        TlsExchange {
            alpn,
            version,
            peer_cert,
            status,
            headers,
            body,
            http_version,
        }
    })
    .await
    .expect("HTTPS exchange timed out")
}

/// A TLS terminator: accepts TLS on 127.0.0.1:0 with a fixture certificate and pipes the
/// plaintext to `target`. Puts any plain test server (token service, JWKS, introspection)
/// behind HTTPS. Stops on Drop.
pub struct TlsFront {
    pub addr: SocketAddr,
    handshakes_ok: Arc<AtomicUsize>,
    handshakes_failed: Arc<AtomicUsize>,
    client_certs: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// In front of `target`, serving `server.pem` / `server.key`.
    pub async fn start(target: SocketAddr) -> TlsFront {
        Self::start_with(target, server_config("server.pem", "server.key")).await
    }

    pub async fn start_with(target: SocketAddr, cfg: Arc<rustls::ServerConfig>) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let (ok2, failed2) = (ok.clone(), failed.clone());
        let client_certs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let certs2 = client_certs.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (ok, failed) = (ok2.clone(), failed2.clone());
                let seen = certs2.clone();
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp));
                    let mut tls = match hs.await {
                        Ok(Ok(s)) => s,
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    if let Some(leaf) = leaf {
                        seen.lock().unwrap().push(leaf.as_ref().to_vec());
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            handshakes_ok: ok,
            handshakes_failed: failed,
            client_certs,
            task,
        }
    }

    /// `https://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// Completed TLS handshakes.
    pub fn handshakes_ok(&self) -> usize {
        self.handshakes_ok.load(Ordering::SeqCst)
    }

    /// The leaf client certificate (DER) of each completed handshake that presented one.
    pub fn client_certs(&self) -> Vec<Vec<u8>> {
        self.client_certs.lock().unwrap().clone()
    }

    /// Handshakes that failed (e.g. the client did not trust the certificate).
    pub fn handshakes_failed(&self) -> usize {
        self.handshakes_failed.load(Ordering::SeqCst)
    }
}
