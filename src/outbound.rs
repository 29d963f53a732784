//! Outbound TLS settings (web PKI roots plus an optional CA bundle and client
//! certificate) and the HTTP client the token lifecycle calls the token service with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ClientTls;
use crate::token::call::{Answer, Call, CallError, TokenHttp};

/// The rustls provider everything uses (shared with jsonwebtoken's aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Client TLS config: Mozilla's roots plus `ca_file`, and a client certificate when set.
/// A certificate that does not verify fails the call; there is no silent fallback.
pub fn client_tls(cfg: &ClientTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no certificates found", path.display()));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&cfg.client_cert_file, &cfg.client_key_pem) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = rustls_pemfile::private_key(&mut key.0.as_slice())
                .map_err(|_| "client key: not a PEM private key".to_string())?
                .ok_or_else(|| "client key: no private key found".to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = Vec::new();
    Ok(config)
}

/// Calls the token service: every call has a timeout and a cap on the answer's size.
pub struct HyperTokenHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HyperTokenHttp {
    pub fn new(tls: rustls::ClientConfig) -> HyperTokenHttp {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector);
        HyperTokenHttp { client }
    }
}

impl TokenHttp for HyperTokenHttp {
    fn call(&self, call: Call) -> Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let mut req = http::Request::builder().method(call.method).uri(call.uri);
            for (k, v) in call.headers {
                req = req.header(k, v);
            }
            let req = req.body(Full::new(call.body)).map_err(|_| CallError::Io)?;
            let max = call.max_response_bytes;
            let work = async move {
                let resp = client.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        CallError::Connect
                    } else {
                        CallError::Io
                    }
                })?;
                let status = resp.status().as_u16();
                let max_age = resp
                    .headers()
                    .get_all(http::header::CACHE_CONTROL)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
                    .map(std::time::Duration::from_secs);
                // Delay-seconds only; an HTTP-date is read as absent (the config's default applies).
                let retry_after = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(std::time::Duration::from_secs);
                let body = Limited::new(resp.into_body(), max)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            CallError::TooLarge
                        } else {
                            CallError::Io
                        }
                    })?;
                Ok(Answer {
                    status,
                    body: body.to_bytes(),
                    max_age,
                    retry_after,
                })
            };
            tokio::time::timeout(call.timeout, work)
                .await
                .unwrap_or(Err(CallError::Timeout))
        })
    }
}
