//! Micro-benchmarks of the per-request steps (criterion):
//!
//! - `extract`: finding the bearer token in a request's headers;
//! - `resolve_path`: path canonicalisation (the plain fast path and the slow path);
//! - `verify/cache_hit`: `Verifier::verify` on a token it has already verified (HS256, RS256),
//!   and `verify/hash_token`, the SHA-256 cache key that every lookup computes;
//! - `verify_uncached`: full verification by algorithm (HS256, RS256, ES256, EdDSA);
//! - `inject`: `Stripper::strip` (with and without client-sent identity headers) and
//!   `set_identity`;
//! - `pipeline/cached`: extract + resolve_path + strip + verify (cache hit) + set_identity
//!   on one request, i.e. the sidecar's own work per request before forwarding.
//!
//!   cargo bench --bench hot_path                      # full run (~2 min after the build)
//!   cargo bench --bench hot_path -- --quick           # shorter
//!   cargo bench --bench hot_path -- verify_uncached   # one group
//!
//! Keys and signing keys come from tests/fixtures (read only).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use auth_sidecar::config::Config;
use auth_sidecar::inject;
use auth_sidecar::token::cache::hash_token;
use auth_sidecar::token::now_secs;
use auth_sidecar::token::{self, Verdict, Verified, Verifier};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::request::Parts;
use http::{HeaderMap, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const HS_SECRET: &str = "bench-hs256-secret-0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://issuer.bench.local";
const AUDIENCE: &str = "bench-api";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).expect("tests/fixtures file")
}

/// A config allowing only `alg`, with the matching fixture key.
fn config(alg: Algorithm) -> Config {
    let keys = match alg {
        Algorithm::HS256 => r#"hmac_secret = { env = "BENCH_HS" }"#,
        Algorithm::RS256 => r#"public_keys = [{ file = "rsa2048_public.pem", kid = "rs1" }]"#,
        Algorithm::ES256 => r#"public_keys = [{ file = "ec_p256_public.pem", kid = "ec1" }]"#,
        Algorithm::EdDSA => r#"public_keys = [{ file = "ed25519_public.pem", kid = "ed1" }]"#,
        other => panic!("no fixture key for {other:?}"),
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
worker_threads = 1

[backend]
url = "http://127.0.0.1:9"

[auth]
algorithms = ["{alg:?}"]
{keys}
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]

[log]
level = "warn"
"#
    );
    let env: BTreeMap<String, String> = [("BENCH_HS".to_string(), HS_SECRET.to_string())].into();
    Config::from_toml(&text, &fixtures(), &env).unwrap_or_else(|e| panic!("config: {e}"))
}

fn verifier(cfg: &Config) -> Verifier {
    let keys = token::load_keys(cfg).unwrap_or_else(|p| panic!("keys: {p:?}"));
    Verifier::new(
        &cfg.auth,
        keys,
        std::sync::Arc::new(inject::IdentityHeaders(cfg.identity.clone())),
    )
}

/// A typical access token: sub, email, name, iss, aud, iat, exp (+1 h); `n` varies jti.
fn mint(alg: Algorithm, n: u64) -> String {
    let (key, kid) = match alg {
        Algorithm::HS256 => (EncodingKey::from_secret(HS_SECRET.as_bytes()), None),
        Algorithm::RS256 => (
            EncodingKey::from_rsa_pem(&fixture("rsa2048_private.pem")).unwrap(),
            Some("rs1"),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&fixture("ec_p256_private.pem")).unwrap(),
            Some("ec1"),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap(),
            Some("ed1"),
        ),
        other => panic!("no fixture key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let now = now_secs();
    let claims = json!({
        "sub": "user-42",
        "email": "user-42@example.com",
        "name": "Bench User",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "jti": n.to_string(),
    });
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

/// Request head as a browser-ish client sends it through an ingress.
fn parts(token: &str, spoof: bool) -> Parts {
    let mut b = Request::builder()
        .method("GET")
        .uri("/api/v1/conversations/123/messages?limit=50")
        .header("host", "chat.example.com")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-US,en;q=0.9")
        .header("authorization", format!("Bearer {token}"))
        .header("x-request-id", "0f6c2a1e9b7d4c3a")
        .header("x-forwarded-for", "203.0.113.7");
    if spoof {
        b = b
            .header("x-auth-user-id", "spoofed")
            .header("X_Auth_Email", "spoofed@example.com");
    }
    b.body(()).unwrap().into_parts().0
}

fn valid(v: Result<Verdict, token::VerifyError>) -> std::sync::Arc<Verified> {
    match v {
        Ok(Verdict::Valid(v)) => v,
        other => panic!("token did not verify: {other:?}"),
    }
}

fn bench_extract(c: &mut Criterion) {
    let cfg = config(Algorithm::HS256);
    let p = parts(&mint(Algorithm::HS256, 0), false);
    c.bench_function("extract/authorization", |b| {
        b.iter(|| auth_sidecar::credentials::extract(black_box(&p), &cfg.auth, false).unwrap())
    });
}

fn bench_resolve_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("resolve_path");
    g.bench_function("plain", |b| {
        b.iter(|| {
            auth_sidecar::path::resolve_path(black_box("/api/v1/conversations/123/messages"))
                .unwrap()
        })
    });
    g.bench_function("dot_segments_and_escapes", |b| {
        b.iter(|| {
            auth_sidecar::path::resolve_path(black_box(
                "/api/v1/../v1/./conversations//123/%6Dessages",
            ))
            .unwrap()
        })
    });
    g.finish();
}

fn bench_verify_cached(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for alg in [Algorithm::HS256, Algorithm::RS256] {
        let cfg = config(alg);
        let v = verifier(&cfg);
        let t = mint(alg, 0);
        valid(v.verify(&t)); // the first call verifies and caches
        g.bench_function(format!("cache_hit/{alg:?}"), |b| {
            b.iter(|| valid(v.verify(black_box(&t))))
        });
    }
    let t = mint(Algorithm::HS256, 0);
    g.bench_function("hash_token", |b| b.iter(|| hash_token(black_box(&t))));
    g.finish();
}

fn bench_verify_uncached(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_uncached");
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let cfg = config(alg);
        let v = verifier(&cfg);
        let t = mint(alg, 0);
        let now = now_secs();
        g.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| valid(v.verify_uncached(black_box(&t), now)))
        });
    }
    g.finish();
}

fn bench_inject(c: &mut Criterion) {
    let cfg = config(Algorithm::HS256);
    let stripper = auth_sidecar::credentials::Stripper::new(&cfg, &[]);
    let v = verifier(&cfg);
    let t = mint(Algorithm::HS256, 0);
    let who = valid(v.verify(&t));
    let clean = parts(&t, false).headers;
    let spoofed = parts(&t, true).headers;
    let mut g = c.benchmark_group("inject");
    for (name, h) in [("strip/clean", &clean), ("strip/spoofed", &spoofed)] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || h.clone(),
                |h: &mut HeaderMap| stripper.strip(h),
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("set_identity", |b| {
        b.iter_batched_ref(
            || clean.clone(),
            |h: &mut HeaderMap| inject::set_identity(h, &who),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_pipeline(c: &mut Criterion) {
    let cfg = config(Algorithm::RS256);
    let stripper = auth_sidecar::credentials::Stripper::new(&cfg, &[]);
    let v = verifier(&cfg);
    let t = mint(Algorithm::RS256, 0);
    valid(v.verify(&t));
    let template = parts(&t, false);
    c.bench_function("pipeline/cached_RS256", |b| {
        b.iter_batched_ref(
            || {
                let mut p = Request::new(()).into_parts().0;
                p.method = template.method.clone();
                p.uri = template.uri.clone();
                p.headers = template.headers.clone();
                p
            },
            |p: &mut Parts| {
                stripper.strip(&mut p.headers);
                let path = auth_sidecar::path::resolve_path(p.uri.path()).unwrap();
                let cred = auth_sidecar::credentials::extract(p, &cfg.auth, false)
                    .unwrap()
                    .unwrap();
                let who = valid(v.verify(&cred.token));
                inject::set_identity(&mut p.headers, &who);
                path
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    bench_extract,
    bench_resolve_path,
    bench_verify_cached,
    bench_verify_uncached,
    bench_inject,
    bench_pipeline
);
criterion_main!(benches);
