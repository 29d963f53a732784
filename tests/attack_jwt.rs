//! Hostile tokens against the real binary: the public record's JWT attacks (RFC 8725,
//! jwt_tool's playbook, the CVEs of JWT libraries and auth proxies), ported as payloads.
//! Every attack asserts the status and code, and that the backend saw nothing. The
//! Wycheproof ECDSA/EdDSA/RSA vectors run through the same `jsonwebtoken` verification
//! primitive the sidecar uses, with the same key types.
//!
//! Each test collects every failing payload before it fails, so one run shows the whole
//! picture of a class.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn req_with_auth(value: &str) -> String {
    format!(
        "GET /echo HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: {value}\r\nConnection: close\r\n\r\n"
    )
}

/// Sends `token` as `Authorization: Bearer <token>`, bytes as they are.
async fn send_bearer(sc: &Sidecar, token: &str) -> Resp {
    raw(sc.addr, &req_with_auth(&format!("Bearer {token}"))).await
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(HS_SECRET.as_bytes())
}

/// Signs the exact header and payload *texts* (duplicates, odd spacing kept).
fn sign_raw(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let msg = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    sign_msg(&msg, alg, key)
}

/// Signs an already-encoded `header.payload`.
fn sign_msg(msg: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).expect("sign");
    format!("{msg}.{sig}")
}

fn hs(header: Value, claims: &Value) -> String {
    sign_with_header(&header, claims, Algorithm::HS256, &hs_key())
}

fn hs_claims(claims: &Value) -> String {
    hs(json!({"alg": "HS256", "typ": "JWT"}), claims)
}

/// Collects the payloads of one attack class that did not get the expected answer.
#[derive(Default)]
struct Expect {
    failures: Vec<String>,
    checked: usize,
}

impl Expect {
    /// `resp` must be the sidecar's `status` with `code`.
    fn refused(&mut self, what: &str, resp: &Resp, status: u16, code: &str) {
        self.checked += 1;
        let ok = resp.status == status
            && resp.header("x-auth-error") == Some(code)
            && resp.header("x-backend").is_none();
        if !ok {
            self.failures.push(format!(
                "{what}: wanted {status} {code}, got {} x-auth-error={:?} body={}",
                resp.status,
                resp.header("x-auth-error"),
                resp.text()
            ));
        }
    }

    /// `resp` must be a 400 or 401 from the sidecar (either refusal is fine).
    fn refused_any(&mut self, what: &str, resp: &Resp) {
        self.checked += 1;
        let ok = matches!(resp.status, 400 | 401) && resp.header("x-backend").is_none();
        if !ok {
            self.failures.push(format!(
                "{what}: wanted 400/401 from the sidecar, got {} {:?} {}",
                resp.status,
                resp.header("x-auth-error"),
                resp.text()
            ));
        }
    }

    fn passed(&mut self, what: &str, resp: &Resp) {
        self.checked += 1;
        if resp.status != 200 || resp.header("x-backend") != Some("test") {
            self.failures.push(format!(
                "{what}: wanted 200 from the backend, got {} {:?} {}",
                resp.status,
                resp.header("x-auth-error"),
                resp.text()
            ));
        }
    }

    fn finish(self, class: &str) {
        assert!(self.checked > 0, "{class}: nothing was checked");
        assert!(
            self.failures.is_empty(),
            "{class}: {} of {} payloads got the wrong answer:\n  {}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n  ")
        );
    }
}

/// The backend must not have been reached.
fn untouched(backend: &Backend, class: &str) {
    assert_eq!(
        backend.count(),
        0,
        "{class}: a refused token reached the backend: {:?}",
        backend.seen().iter().map(|e| &e.path).collect::<Vec<_>>()
    );
}

/// Waits until the current second has just begun, so a time-boundary token minted now is
/// checked within the same second (the sidecar reads whole seconds).
async fn at_second_start() {
    loop {
        let sub = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if sub < 50 {
            return;
        }
        tokio::time::sleep(Duration::from_millis((1000 - sub as u64).min(200))).await;
    }
}

/// Base64url with the unused low bits of the last character set (a non-canonical
/// encoding of the same bytes). `None` when the length leaves no unused bits.
fn with_trailing_bits(seg: &str) -> Option<String> {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let unused = match seg.len() % 4 {
        2 => 4,
        3 => 2,
        _ => return None,
    };
    let last = *seg.as_bytes().last()?;
    let v = ALPHA.iter().position(|c| *c == last)? as u8;
    let nv = v | ((1u8 << unused) - 1);
    if nv == v {
        return None;
    }
    let mut s = seg[..seg.len() - 1].to_string();
    s.push(ALPHA[nv as usize] as char);
    Some(s)
}

// ---------------------------------------------------------------------------
// alg: none
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_in_every_spelling_with_or_without_a_signature_is_refused() {
    bounded(async {
        for alg_cfg in [Algorithm::HS256, Algorithm::RS256] {
            let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(alg_cfg)).await;
            let mut x = Expect::default();
            let claims = claims(SUB);
            for spelling in [
                json!("none"),
                json!("None"),
                json!("NONE"),
                json!("nOnE"),
                json!(""),
                json!("none "),
                json!(null),
                json!(["none"]),
            ] {
                let header = json!({"alg": spelling, "typ": "JWT"});
                let msg = format!("{}.{}", b64_json(&header), b64_json(&claims));
                // Empty signature, and a signature that is present (an HS256 MAC and
                // garbage), as jwt_tool's "none" family sends them.
                let mac = jsonwebtoken::crypto::sign(msg.as_bytes(), &hs_key(), Algorithm::HS256)
                    .unwrap();
                for sig in ["", mac.as_str(), "AAAA", "bm9uZQ"] {
                    let t = format!("{msg}.{sig}");
                    let r = send_bearer(&sc, &t).await;
                    x.refused(
                        &format!("{alg_cfg:?} cfg, alg {spelling}, sig {sig:?}"),
                        &r,
                        401,
                        "invalid_token",
                    );
                }
            }
            // No alg at all.
            let t = format!(
                "{}.{}.",
                b64_json(&json!({"typ": "JWT"})),
                b64_json(&claims)
            );
            x.refused(
                "no alg member",
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
            x.finish("alg none");
            untouched(&backend, "alg none");
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Algorithm confusion: HS256 keyed with the public key
// ---------------------------------------------------------------------------

fn pem_body_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let b: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    STANDARD.decode(b).unwrap()
}

/// Every encoding of a public key that a confused verifier might use as an HMAC secret.
fn public_key_encodings() -> Vec<(String, Vec<u8>)> {
    let rsa_pem = read("rsa2048_public.pem");
    let ec_pem = read("ec_p256_public.pem");
    let ed_pem = read("ed25519_public.pem");
    let jwks: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    let rs1 = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "rs1")
        .unwrap()
        .clone();
    let n = URL_SAFE_NO_PAD.decode(rs1["n"].as_str().unwrap()).unwrap();
    let pkcs1 = DecodingKey::from_rsa_pem(&rsa_pem)
        .unwrap()
        .as_bytes()
        .to_vec();
    let ec_point = DecodingKey::from_ec_pem(&ec_pem)
        .unwrap()
        .as_bytes()
        .to_vec();
    let trim = |v: &[u8]| String::from_utf8_lossy(v).trim_end().as_bytes().to_vec();
    vec![
        ("RSA PEM (file bytes)".into(), rsa_pem.clone()),
        ("RSA PEM (no trailing newline)".into(), trim(&rsa_pem)),
        (
            "RSA PEM (CRLF)".into(),
            String::from_utf8_lossy(&rsa_pem)
                .replace('\n', "\r\n")
                .into_bytes(),
        ),
        ("RSA SPKI DER".into(), pem_body_der(&rsa_pem)),
        ("RSA PKCS#1 DER".into(), pkcs1),
        ("RSA JWK JSON".into(), serde_json::to_vec(&rs1).unwrap()),
        (
            "RSA JWK JSON (pretty)".into(),
            serde_json::to_vec_pretty(&rs1).unwrap(),
        ),
        ("RSA JWKS document".into(), read("jwks.json")),
        ("RSA modulus n bytes".into(), n),
        (
            "RSA modulus n base64url text".into(),
            rs1["n"].as_str().unwrap().as_bytes().to_vec(),
        ),
        ("EC PEM".into(), ec_pem.clone()),
        ("EC SPKI DER".into(), pem_body_der(&ec_pem)),
        ("EC uncompressed point".into(), ec_point),
        ("Ed25519 PEM".into(), ed_pem.clone()),
        ("Ed25519 SPKI DER".into(), pem_body_der(&ed_pem)),
        ("empty secret".into(), Vec::new()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_in_any_encoding_is_refused() {
    bounded(async {
        let encodings = public_key_encodings();
        // An asymmetric-only deployment (HS256 not even allowed), and the mixed one
        // (HS256 with its own secret beside RSA, EC and Ed25519 keys).
        for (label, mixed) in [
            ("RS256-only", false),
            ("ES256-only", false),
            ("all families", true),
        ] {
            let Rig { backend, sc, .. } = Rig::start_with(|c| {
                if mixed {
                    c.all_algorithms()
                } else if label.starts_with("RS") {
                    c.only(Algorithm::RS256)
                } else {
                    c.only(Algorithm::ES256)
                }
            })
            .await;
            let mut x = Expect::default();
            for (name, secret) in &encodings {
                for kid in [None, Some("rs1"), Some("ec1"), Some("ed1")] {
                    let mut h = json!({"alg": "HS256", "typ": "JWT"});
                    if let Some(k) = kid {
                        h["kid"] = json!(k);
                    }
                    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                        h["alg"] = json!(alg_name(alg));
                        let t = sign_with_header(
                            &h,
                            &claims(SUB),
                            alg,
                            &EncodingKey::from_secret(secret),
                        );
                        let r = send_bearer(&sc, &t).await;
                        x.refused(
                            &format!("{label}: {alg:?} keyed with {name}, kid {kid:?}"),
                            &r,
                            401,
                            "invalid_token",
                        );
                    }
                }
            }
            x.finish(&format!("key confusion ({label})"));
            untouched(&backend, "key confusion");
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Same-family algorithm switches
// ---------------------------------------------------------------------------

fn relabel(token: &str, alg: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).unwrap()).unwrap();
    h["alg"] = json!(alg);
    parts[0] = b64_json(&h);
    parts.join(".")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_relabelled_to_another_algorithm_of_the_same_family_is_refused() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth(
                "algorithms",
                r#"["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]"#,
            )
            .no_auth_key("hmac_secret")
            .auth(
                "public_keys",
                &format!(
                    "[{{ file = {}, kid = \"rs1\" }}]",
                    q(&fixture("rsa2048_public.pem"))
                ),
            )
        })
        .await;
        let mut x = Expect::default();
        for signed in [Algorithm::RS256, Algorithm::PS256, Algorithm::RS512] {
            let t = mint(signed, &claims(SUB));
            x.passed(
                &format!("control: a real {signed:?} token"),
                &send_bearer(&sc, &t).await,
            );
            for label in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
                if label == alg_name(signed) {
                    continue;
                }
                let r = send_bearer(&sc, &relabel(&t, label)).await;
                x.refused(
                    &format!("{signed:?} signature relabelled {label}"),
                    &r,
                    401,
                    "invalid_token",
                );
            }
        }
        let controls = 3;
        x.finish("RSA family switch");
        assert_eq!(
            backend.count(),
            controls,
            "only the controls reach the backend"
        );

        // HMAC and EC families.
        let Rig { backend, sc, .. } =
            Rig::start_with(|c| c.auth("algorithms", r#"["HS256", "HS384", "HS512"]"#)).await;
        let mut x = Expect::default();
        let t = mint(Algorithm::HS256, &claims(SUB));
        for label in ["HS384", "HS512"] {
            x.refused(
                &format!("HS256 relabelled {label}"),
                &send_bearer(&sc, &relabel(&t, label)).await,
                401,
                "invalid_token",
            );
        }
        x.finish("HMAC family switch");
        untouched(&backend, "HMAC family switch");

        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.only(Algorithm::ES256)
                .auth("algorithms", r#"["ES256", "ES384"]"#)
        })
        .await;
        let mut x = Expect::default();
        let t = mint(Algorithm::ES256, &claims(SUB));
        x.refused(
            "ES256 relabelled ES384",
            &send_bearer(&sc, &relabel(&t, "ES384")).await,
            401,
            "invalid_token",
        );
        x.finish("EC family switch");
        untouched(&backend, "EC family switch");
    })
    .await
}

// ---------------------------------------------------------------------------
// Header abuse: kid, jku, x5u, jwk, x5c, crit, b64
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_jku_x5u_jwk_x5c_crit_and_b64_header_abuse_is_refused_and_never_fetched() {
    bounded(async {
        let (addr, fetched, _task) = counting_listener().await;
        let url = format!("http://{addr}");
        let attacker_jwk: Value = serde_json::from_slice(&read("attacker_jwk.json")).unwrap();
        let attacker = attacker_rsa_key();
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(Algorithm::RS256)).await;
        let mut x = Expect::default();
        let long_kid = "k".repeat(4000);
        // kid: path traversal, SQL-ish, NUL, empty, huge, wrong types; signed with the
        // attacker's key (and so never verifiable with rs1).
        for kid in [
            json!("../../../../../../dev/null"),
            json!("/dev/null"),
            json!("../../../../etc/passwd"),
            json!("rs1/../../../dev/null"),
            json!("' OR '1'='1"),
            json!("rs1' UNION SELECT 'attacker-key' --"),
            json!("rs1\u{0000}"),
            json!("rs1 "),
            json!("RS1"),
            json!(""),
            json!(long_kid),
            json!("|id"),
            json!(["rs1"]),
            json!({"kid": "rs1"}),
            json!(1),
        ] {
            let h = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
            let t = sign_with_header(&h, &claims(SUB), Algorithm::RS256, &attacker);
            x.refused(&format!("attacker key, kid {kid}"), &send_bearer(&sc, &t).await, 401, "invalid_token");
        }
        // The attacker's key embedded in the header (jwk), or pointed to (jku, x5u), or a
        // certificate chain (x5c), each signed with the attacker's key.
        let abuse = [
            ("embedded jwk", json!({"alg": "RS256", "jwk": attacker_jwk})),
            ("embedded jwk + kid rs1", json!({"alg": "RS256", "kid": "rs1", "jwk": attacker_jwk})),
            ("jku", json!({"alg": "RS256", "kid": "attacker", "jku": format!("{url}/jwks.json")})),
            ("jku + kid rs1", json!({"alg": "RS256", "kid": "rs1", "jku": format!("{url}/jwks.json")})),
            ("x5u", json!({"alg": "RS256", "x5u": format!("{url}/cert.pem")})),
            ("x5c", json!({"alg": "RS256", "x5c": [STANDARD.encode(b"not really a certificate")]})),
        ];
        for (what, h) in &abuse {
            let t = sign_with_header(h, &claims(SUB), Algorithm::RS256, &attacker);
            x.refused(what, &send_bearer(&sc, &t).await, 401, "invalid_token");
        }
        // crit in every shape, with a *valid* signature: RFC 7515 §4.1.11, nothing understood.
        let key = signing_key(Algorithm::RS256).0;
        for crit in [json!(["exp"]), json!([]), json!(["b64"]), json!(["http://example.com/x"])] {
            let h = json!({"alg": "RS256", "kid": "rs1", "crit": crit, "b64": false, "exp": 1});
            let t = sign_with_header(&h, &claims(SUB), Algorithm::RS256, &key);
            x.refused(&format!("crit {crit}"), &send_bearer(&sc, &t).await, 401, "invalid_token");
        }
        // RFC 7797 unencoded payload (b64: false), properly signed over the raw payload.
        let h = json!({"alg": "RS256", "kid": "rs1", "b64": false, "crit": ["b64"]});
        let payload = serde_json::to_string(&claims(SUB)).unwrap();
        let msg = format!("{}.{}", b64_json(&h), payload);
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::RS256).unwrap();
        let r = raw(sc.addr, &req_with_auth(&format!("Bearer {msg}.{sig}"))).await;
        x.refused_any("b64:false with a raw JSON payload", &r);
        x.finish("header abuse");
        untouched(&backend, "header abuse");

        // A *valid* token carrying jku/x5u/jwk is accepted on its signature alone: the
        // header members are never used, and never fetched.
        for h in [
            json!({"alg": "RS256", "kid": "rs1", "jku": format!("{url}/jwks.json"), "x5u": format!("{url}/c.pem")}),
            json!({"alg": "RS256", "kid": "rs1", "jwk": attacker_jwk}),
        ] {
            let t = sign_with_header(&h, &claims(SUB), Algorithm::RS256, &key);
            let r = send_bearer(&sc, &t).await;
            assert_eq!(r.ok_echo().header("x-auth-user-id"), Some(SUB));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            fetched.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the sidecar connected to a URL named in a token header (jku/x5u)"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_tricks_against_an_hmac_deployment_are_refused() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let mut x = Expect::default();
        // jwt_tool's kid injections: point the key at /dev/null (empty key) or at a file
        // whose content is known, or inject SQL that returns a chosen key.
        for (kid, secret) in [
            ("../../../../../../dev/null", &b""[..]),
            ("/dev/null", b"\n"),
            ("/proc/sys/kernel/randomize_va_space", b"2\n"),
            ("x' UNION SELECT 'secret' --", b"secret"),
            ("key1' OR '1'='1", b"key1"),
        ] {
            let h = json!({"alg": "HS256", "kid": kid});
            let t = sign_with_header(
                &h,
                &claims(SUB),
                Algorithm::HS256,
                &EncodingKey::from_secret(secret),
            );
            x.refused(
                &format!("kid {kid:?}"),
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        x.finish("kid tricks (HMAC)");
        untouched(&backend, "kid tricks");
    })
    .await
}

// ---------------------------------------------------------------------------
// Claims of the wrong type, duplicated claims
// ---------------------------------------------------------------------------

const ISS: &str = "https://issuer.example";
const AUD: &str = "chat-api";

fn strict(c: Cfg) -> Cfg {
    c.auth("issuer", &q(ISS))
        .auth("audience", &format!("[{}]", q(AUD)))
}

fn good_claims() -> Value {
    claims_with(json!({"iss": ISS, "aud": AUD}))
}

fn with(mut base: Value, k: &str, v: Value) -> Value {
    if v.is_null() && k != "exp" && k != "sub" && k != "aud" && k != "iss" {
        base.as_object_mut().unwrap().remove(k);
    } else {
        base[k] = v;
    }
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_the_wrong_type_are_refused() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(strict).await;
        let mut x = Expect::default();
        x.passed(
            "control",
            &send_bearer(&sc, &hs_claims(&good_claims())).await,
        );
        let far = now() + 600;
        let cases: Vec<(&str, Value)> = vec![
            ("exp", json!(far.to_string())),
            ("exp", json!(null)),
            ("exp", json!(-1)),
            ("exp", json!(true)),
            ("exp", json!([far])),
            ("exp", json!({"$date": far})),
            ("exp", json!("")),
            ("nbf", json!("0")),
            ("nbf", json!(-5)),
            ("nbf", json!([0])),
            ("iat", json!("yesterday")),
            ("iat", json!(-1)),
            ("sub", json!(42)),
            ("sub", json!(["alice"])),
            ("sub", json!({"id": "alice"})),
            ("sub", json!(null)),
            ("sub", json!(true)),
            ("sub", json!("")),
            ("aud", json!(42)),
            ("aud", json!({"aud": AUD})),
            ("aud", json!([42])),
            ("aud", json!(null)),
            ("aud", json!(true)),
            ("iss", json!(42)),
            ("iss", json!(null)),
        ];
        for (k, v) in cases {
            let t = hs_claims(&with(good_claims(), k, v.clone()));
            x.refused(
                &format!("{k} = {v}"),
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        // A number too large for any integer type (serde refuses it, or it is not a date).
        // The exp of these very claims (a second may have ticked since `far`).
        let base = good_claims();
        let text = serde_json::to_string(&base)
            .unwrap()
            .replace(&format!("\"exp\":{}", base["exp"]), "\"exp\":1e400");
        assert!(text.contains("1e400"), "the exp was not replaced: {text}");
        let t = sign_raw(r#"{"alg":"HS256"}"#, &text, Algorithm::HS256, &hs_key());
        x.refused(
            "exp = 1e400",
            &send_bearer(&sc, &t).await,
            401,
            "invalid_token",
        );
        x.finish("wrong claim types");
        assert_eq!(backend.count(), 1, "only the control reaches the backend");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iss_must_be_one_string_not_an_array_that_merely_contains_ours() {
    bounded(async {
        // RFC 7519 §4.1.1: `iss` is a single StringOrURI. jsonwebtoken also accepts an
        // array and passes it when *any* element matches the configured issuer.
        let Rig { backend, sc, .. } = Rig::start_with(strict).await;
        let mut x = Expect::default();
        for iss in [
            json!([ISS]),
            json!(["https://attacker.example", ISS]),
            json!([ISS, "https://attacker.example"]),
        ] {
            let t = hs_claims(&with(good_claims(), "iss", iss.clone()));
            x.refused(
                &format!("iss = {iss}"),
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        x.finish("iss as an array");
        untouched(&backend, "iss as an array");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_claims_are_refused_or_read_as_the_last_one_everywhere() {
    bounded(async {
        // RFC 7519 §4 lets a verifier reject duplicates or take the lexically last one.
        // The sidecar rejects: any duplicate top-level member name in the JOSE header or
        // the claims set is 401 invalid_token, so no two readers of a token (the
        // signature check, the route rule, the injected header, the backend) can disagree
        // about its `sub`, `exp`, `alg` or a role. Every case below, whichever order the
        // values come in, is refused and never reaches the backend.
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.claim_header("role", "x-auth-role")
                .route("prefix = \"/admin\"\nrequire_claims = { role = \"admin\" }")
        })
        .await;
        let exp = now() + 600;
        let past = now() - 3600;
        let mut x = Expect::default();
        let hs256 = r#"{"alg":"HS256"}"#;
        let dup_sub = format!(r#"{{"sub":"alice","exp":{exp},"sub":"admin"}}"#);
        let dup_sub_same = format!(r#"{{"sub":"alice","exp":{exp},"sub":"alice"}}"#);
        let dup_exp_valid_last = format!(r#"{{"sub":"alice","exp":{past},"exp":{exp}}}"#);
        let dup_exp_expired_last = format!(r#"{{"sub":"alice","exp":{exp},"exp":{past}}}"#);
        let dup_role_user_last =
            format!(r#"{{"sub":"alice","exp":{exp},"role":"admin","role":"user"}}"#);
        let dup_role_admin_last =
            format!(r#"{{"sub":"alice","exp":{exp},"role":"user","role":"admin"}}"#);
        let one = format!(r#"{{"sub":"alice","exp":{exp},"role":"admin"}}"#);
        for (what, path, header, payload) in [
            ("duplicate sub", "/echo", hs256, dup_sub.as_str()),
            ("duplicate sub, same value", "/echo", hs256, dup_sub_same.as_str()),
            ("duplicate exp (valid last)", "/echo", hs256, dup_exp_valid_last.as_str()),
            ("duplicate exp (expired last)", "/echo", hs256, dup_exp_expired_last.as_str()),
            ("duplicate alg in the header", "/echo", r#"{"alg":"HS256","alg":"none"}"#, one.as_str()),
            ("duplicate alg in the header, same value", "/echo", r#"{"alg":"HS256","alg":"HS256"}"#, one.as_str()),
            ("duplicate typ in the header", "/echo", r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#, one.as_str()),
            ("duplicate role (user last) on /admin", "/admin/x", hs256, dup_role_user_last.as_str()),
            ("duplicate role (admin last) on /admin", "/admin/x", hs256, dup_role_admin_last.as_str()),
            ("duplicate role (admin last) on /echo", "/echo", hs256, dup_role_admin_last.as_str()),
        ] {
            let t = sign_raw(header, payload, Algorithm::HS256, &hs_key());
            let r = raw(
                sc.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            x.refused(what, &r, 401, "invalid_token");
        }
        x.finish("duplicate claims");
        untouched(&backend, "duplicate claims");
        // Control: the same claims without the duplicate pass, on both routes, so the
        // refusals above are the duplicates' doing.
        let t = sign_raw(hs256, &one, Algorithm::HS256, &hs_key());
        for path in ["/echo", "/admin/x"] {
            let r = raw(
                sc.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            let e = r.ok_echo();
            assert_eq!(e.header("x-auth-user-id"), Some("alice"), "control {path}");
            assert_eq!(e.header("x-auth-role"), Some("admin"), "control {path}");
        }
        assert_eq!(backend.count(), 2, "only the two controls reached the backend");
    })
    .await
}

// ---------------------------------------------------------------------------
// Time claims at the leeway boundary (leeway 30 s)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exp_and_nbf_are_enforced_exactly_at_the_30s_leeway_boundary() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.auth("leeway", "\"30s\"")).await;
        let mut x = Expect::default();
        for (what, extra, want_ok, code) in [
            ("exp = now-29", "exp-29", true, ""),
            ("exp = now-31", "exp-31", false, "token_expired"),
            ("nbf = now+29", "nbf+29", true, ""),
            ("nbf = now+31", "nbf+31", false, "invalid_token"),
            ("exp = now-30 (edge: still inside)", "exp-30", true, ""),
            ("nbf = now+30 (edge: still inside)", "nbf+30", true, ""),
        ] {
            at_second_start().await;
            let n = now();
            let c = match extra {
                "exp-29" => claims_with(json!({"exp": n - 29, "iat": n - 600})),
                "exp-31" => claims_with(json!({"exp": n - 31, "iat": n - 600})),
                "exp-30" => claims_with(json!({"exp": n - 30, "iat": n - 600})),
                "nbf+29" => claims_with(json!({"nbf": n + 29})),
                "nbf+31" => claims_with(json!({"nbf": n + 31})),
                "nbf+30" => claims_with(json!({"nbf": n + 30})),
                _ => unreachable!(),
            };
            let r = send_bearer(&sc, &hs_claims(&c)).await;
            if want_ok {
                x.passed(what, &r);
            } else {
                x.refused(what, &r, 401, code);
            }
        }
        x.finish("leeway boundary");
        assert_eq!(backend.count(), 4);
    })
    .await
}

// ---------------------------------------------------------------------------
// aud / iss shapes, and token-type confusion
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aud_may_be_a_string_or_an_array_and_must_name_us() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth("issuer", &q(ISS))
                .auth("audience", &format!("[{}, \"chat-admin\"]", q(AUD)))
        })
        .await;
        let mut x = Expect::default();
        let base = claims_with(json!({"iss": ISS}));
        let mut ok = 0;
        for aud in [
            json!(AUD),
            json!([AUD]),
            json!(["someone-else", AUD]),
            json!("chat-admin"),
        ] {
            x.passed(
                &format!("aud {aud}"),
                &send_bearer(&sc, &hs_claims(&with(base.clone(), "aud", aud))).await,
            );
            ok += 1;
        }
        for aud in [
            json!("someone-else"),
            json!(["someone-else"]),
            json!([]),
            json!(""),
            json!("CHAT-API"),
            json!("chat-api "),
            json!(format!("{AUD},someone-else")),
        ] {
            let r = send_bearer(&sc, &hs_claims(&with(base.clone(), "aud", aud.clone()))).await;
            x.refused(&format!("aud {aud}"), &r, 401, "invalid_token");
        }
        let no_aud = claims_with(json!({"iss": ISS}));
        x.refused(
            "no aud",
            &send_bearer(&sc, &hs_claims(&no_aud)).await,
            401,
            "invalid_token",
        );
        for iss in [
            format!("{ISS}/"),
            ISS.to_uppercase(),
            format!(" {ISS}"),
            "https://issuer.example.evil".into(),
        ] {
            let c = claims_with(json!({"iss": iss, "aud": AUD}));
            x.refused(
                &format!("iss {iss:?}"),
                &send_bearer(&sc, &hs_claims(&c)).await,
                401,
                "invalid_token",
            );
        }
        x.finish("aud / iss");
        assert_eq!(backend.count(), ok);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_and_refresh_tokens_signed_by_the_same_issuer_are_refused_by_audience() {
    bounded(async {
        // RFC 8725 §2.8/§3.11: cross-JWT confusion. The issuer signs ID tokens (aud = the
        // client id) and JWT refresh tokens (aud = the token service) with the same key.
        let Rig { backend, sc, .. } = Rig::start_with(strict).await;
        let mut x = Expect::default();
        let id_token = hs(
            json!({"alg": "HS256", "typ": "JWT"}),
            &claims_with(json!({"iss": ISS, "aud": "mobile-client-id", "nonce": "n-0S6_WzA2Mj", "azp": "mobile-client-id"})),
        );
        x.refused("OIDC ID token (aud = client id)", &send_bearer(&sc, &id_token).await, 401, "invalid_token");
        let refresh_jwt = hs(
            json!({"alg": "HS256", "typ": "refresh+jwt"}),
            &claims_with(json!({"iss": ISS, "aud": "token-service", "token_use": "refresh", "exp": now() + 86400 * 30})),
        );
        x.refused("JWT refresh token (aud = token service)", &send_bearer(&sc, &refresh_jwt).await, 401, "invalid_token");
        let logout = hs(
            json!({"alg": "HS256", "typ": "logout+jwt"}),
            &claims_with(json!({"iss": ISS, "aud": "mobile-client-id", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})),
        );
        x.refused("logout token", &send_bearer(&sc, &logout).await, 401, "invalid_token");
        x.finish("token-type confusion");
        untouched(&backend, "token-type confusion");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typ_header_alone_does_not_separate_token_types_so_aud_must() {
    bounded(async {
        // Pins today's behaviour: `typ` is not checked (README lists no typ rule), so a
        // token of another type that carries *our* audience is accepted. Deployments must
        // give other token types another `aud` (see docs/security.md).
        let Rig {
            backend: _backend,
            sc,
            ..
        } = Rig::start_with(strict).await;
        for typ in [
            "JWT",
            "at+jwt",
            "application/at+jwt",
            "refresh+jwt",
            "id_token",
        ] {
            let t = hs(json!({"alg": "HS256", "typ": typ}), &good_claims());
            let r = send_bearer(&sc, &t).await;
            assert_eq!(r.status, 200, "typ {typ}: {}", r.text());
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Encoding and structure
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_base64url_is_refused_even_when_signed() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let mut x = Expect::default();
        let header = json!({"alg": "HS256", "typ": "JWT"});
        // A payload whose standard-alphabet encoding differs from base64url.
        let mut c = claims(SUB);
        let mut pad = String::new();
        let payload_json = loop {
            c["pad"] = json!(pad);
            let j = serde_json::to_vec(&c).unwrap();
            let s = STANDARD_NO_PAD.encode(&j);
            if s.contains('+') && s.contains('/') && j.len() % 3 != 0 {
                break j;
            }
            pad.push(if pad.len() % 2 == 0 { '?' } else { '~' });
        };
        let mut header = header;
        let mut filler = String::new();
        let hj = loop {
            header["x"] = json!(filler);
            let j = serde_json::to_vec(&header).unwrap();
            if j.len() % 3 != 0 {
                break j;
            }
            filler.push('a');
        };
        let h64 = URL_SAFE_NO_PAD.encode(&hj);
        let p64 = URL_SAFE_NO_PAD.encode(&payload_json);
        x.passed(
            "control",
            &send_bearer(
                &sc,
                &sign_msg(&format!("{h64}.{p64}"), Algorithm::HS256, &hs_key()),
            )
            .await,
        );

        let padded = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
        let variants = [
            (
                "standard alphabet (+/) payload",
                format!("{h64}.{}", STANDARD_NO_PAD.encode(&payload_json)),
            ),
            ("padded payload", format!("{h64}.{}", padded(&payload_json))),
            ("padded header", format!("{}.{p64}", padded(&hj))),
            (
                "standard padded payload",
                format!("{h64}.{}", STANDARD.encode(&payload_json)),
            ),
        ];
        for (what, msg) in variants.iter() {
            let t = sign_msg(msg, Algorithm::HS256, &hs_key());
            x.refused_any(what, &send_bearer(&sc, &t).await);
        }
        // Trailing bits: the same bytes, a different string (malleability).
        if let Some(p) = with_trailing_bits(&p64) {
            let t = sign_msg(&format!("{h64}.{p}"), Algorithm::HS256, &hs_key());
            x.refused(
                "payload with non-zero trailing bits",
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        let hj2 = br#"{"alg":"HS256","typ":"JWT","x":1}"#;
        let h2 = URL_SAFE_NO_PAD.encode(hj2);
        if let Some(h) = with_trailing_bits(&h2) {
            let t = sign_msg(&format!("{h}.{p64}"), Algorithm::HS256, &hs_key());
            x.refused(
                "header with non-zero trailing bits",
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        // The signature of a valid token, re-encoded with its unused bits set.
        let good = sign_msg(&format!("{h64}.{p64}"), Algorithm::HS256, &hs_key());
        let (msg, sig) = good.rsplit_once('.').unwrap();
        let sig2 = with_trailing_bits(sig).expect("a 32-byte MAC leaves unused bits");
        x.refused(
            "valid MAC with non-zero trailing bits",
            &send_bearer(&sc, &format!("{msg}.{sig2}")).await,
            401,
            "invalid_token",
        );
        x.refused_any(
            "valid MAC, base64 padding",
            &send_bearer(&sc, &format!("{msg}.{sig}=")).await,
        );
        if sig.contains(['-', '_']) {
            x.refused_any(
                "valid MAC, standard alphabet",
                &send_bearer(
                    &sc,
                    &format!("{msg}.{}", sig.replace('-', "+").replace('_', "/")),
                )
                .await,
            );
        }
        x.finish("non-canonical base64url");
        assert_eq!(backend.count(), 1, "only the control: {:?}", backend.seen());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_structure_and_trailing_garbage_are_refused() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        let t = valid();
        let (msg, sig) = t.rsplit_once('.').unwrap();
        let mut x = Expect::default();
        let jwe = format!(
            "{}.{}.{}.{}.{}",
            b64_json(&json!({"alg": "RSA-OAEP", "enc": "A256GCM"})),
            b64(b"encrypted-key"),
            b64(b"iv-123456789"),
            b64(&serde_json::to_vec(&claims(SUB)).unwrap()),
            b64(b"tag-0123456789ab")
        );
        let jwe_dir = format!(
            "{}..{}.{}.{}",
            b64_json(&json!({"alg": "dir", "enc": "A128GCM"})),
            b64(b"iv-123456789"),
            b64(b"ciphertext"),
            b64(b"tag-0123456789ab")
        );
        let nested = hs(json!({"alg": "HS256", "cty": "JWT"}), &json!(valid()));
        let cases: Vec<(&str, String)> = vec![
            ("four segments", format!("{t}.{sig}")),
            ("trailing dot", format!("{t}.")),
            ("leading dot", format!(".{t}")),
            ("doubled dots", t.replace('.', "..")),
            ("two segments", msg.to_string()),
            ("one segment", msg.split('.').next().unwrap().to_string()),
            ("only dots", "..".into()),
            ("four dots", "....".into()),
            ("trailing bytes after the signature", format!("{t}AAAA")),
            ("one trailing byte", format!("{t}A")),
            ("signature cut short", t[..t.len() - 2].to_string()),
            ("space inside", format!("{msg} .{sig}")),
            ("tab inside", format!("{msg}\t.{sig}")),
            ("comma-joined second token", format!("{t},{t}")),
            ("JWE (5 segments) as JWS", jwe),
            ("JWE dir (empty key segment)", jwe_dir),
            ("nested JWT as payload string", nested),
            (
                "JSON instead of compact",
                serde_json::to_string(&json!({"payload": msg, "signature": sig})).unwrap(),
            ),
        ];
        for (what, tok) in &cases {
            x.refused_any(
                what,
                &raw(sc.addr, &req_with_auth(&format!("Bearer {tok}"))).await,
            );
        }
        x.finish("structure");
        untouched(&backend, "structure");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_are_not_objects_or_nest_10k_deep_are_refused_without_harm() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.auth("max_token_bytes", "65536")
                .server("max_header_bytes", "262144")
        })
        .await;
        let mut x = Expect::default();
        for p in [
            json!(["alice"]),
            json!("alice"),
            json!(42),
            json!(null),
            json!(true),
            json!([claims(SUB)]),
        ] {
            let t = sign_raw(
                r#"{"alg":"HS256"}"#,
                &p.to_string(),
                Algorithm::HS256,
                &hs_key(),
            );
            x.refused(
                &format!("payload {p}"),
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        for text in [
            "",
            " ",
            "{",
            "{\"sub\":\"alice\",\"exp\":99999999999",
            "\u{feff}{}",
            "{}garbage",
        ] {
            let t = sign_raw(r#"{"alg":"HS256"}"#, text, Algorithm::HS256, &hs_key());
            x.refused(
                &format!("payload text {text:?}"),
                &send_bearer(&sc, &t).await,
                401,
                "invalid_token",
            );
        }
        // 10 000 levels of nesting in a claim, validly signed, and in the header.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let payload = format!(r#"{{"sub":"alice","exp":{},"x":{deep}}}"#, now() + 600);
        let t = sign_raw(r#"{"alg":"HS256"}"#, &payload, Algorithm::HS256, &hs_key());
        assert!(t.len() < 65536, "{}", t.len());
        x.refused(
            "payload nested 10k deep",
            &send_bearer(&sc, &t).await,
            401,
            "invalid_token",
        );
        let objs = format!("{}1{}", "{\"a\":".repeat(8_000), "}".repeat(8_000));
        let payload = format!(r#"{{"sub":"alice","exp":{},"x":{objs}}}"#, now() + 600);
        let t = sign_raw(r#"{"alg":"HS256"}"#, &payload, Algorithm::HS256, &hs_key());
        x.refused(
            "payload objects nested 8k deep",
            &send_bearer(&sc, &t).await,
            401,
            "invalid_token",
        );
        let header = format!(r#"{{"alg":"HS256","x":{deep}}}"#);
        let t = sign_raw(
            &header,
            &serde_json::to_string(&claims(SUB)).unwrap(),
            Algorithm::HS256,
            &hs_key(),
        );
        x.refused(
            "header nested 10k deep",
            &send_bearer(&sc, &t).await,
            401,
            "invalid_token",
        );
        x.finish("non-object payloads");
        untouched(&backend, "non-object payloads");
        // Still alive and serving.
        let r = send_bearer(&sc, &valid()).await;
        assert_eq!(r.ok_echo().header("x-auth-user-id"), Some(SUB));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_tokens_are_refused_before_decoding_and_huge_heads_get_431() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c).await;
        // A valid token of exactly max_token_bytes (8192) passes.
        let mut n = 8000;
        let exact = loop {
            let t = hs256_with(json!({"pad": "x".repeat(n)}));
            match t.len().cmp(&8192) {
                std::cmp::Ordering::Equal => break t,
                std::cmp::Ordering::Less => n += 1,
                std::cmp::Ordering::Greater => n -= 1,
            }
        };
        let r = send_bearer(&sc, &exact).await;
        assert_eq!(r.status, 200, "a token of exactly 8192 bytes: {}", r.text());
        // One byte over: refused as too large, without being decoded (the message says
        // so, whatever the bytes are).
        let over = hs256_with(json!({"pad": "x".repeat(n + 1)}));
        assert!(over.len() > 8192);
        let r = send_bearer(&sc, &over).await;
        r.assert_error(401, "invalid_token");
        assert!(r.text().contains("too large"), "{}", r.text());
        let junk = "A".repeat(9000);
        let r = send_bearer(&sc, &junk).await;
        r.assert_error(401, "invalid_token");
        assert!(r.text().contains("too large"), "{}", r.text());
        // Over max_header_bytes (16 KiB): hyper answers 431 before the sidecar runs.
        for len in [17 * 1024, 64 * 1024, 1024 * 1024] {
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
                use tokio::io::AsyncWriteExt;
                let req = req_with_auth(&format!("Bearer {}", "A".repeat(len)));
                let _ = s.write_all(req.as_bytes()).await;
                common::http::read_response(&mut s).await
            })
            .await
            .expect("no answer to an oversized head");
            assert_eq!(r.status, 431, "{len}-byte token: {} {}", r.status, r.text());
        }
        assert_eq!(
            backend.count(),
            1,
            "only the exact-size token reaches the backend"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// ECDSA signatures: zero, out of range, wrong encoding (CVE-2022-21449 family)
// ---------------------------------------------------------------------------

/// The order n of P-256.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn sub_be(a: &[u8; 32], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = a[i] as i16 - b[i] as i16 - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = d as u8;
    }
    out
}

fn der_int(v: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
    if v.is_empty() {
        v.push(0);
    }
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_out_of_range_and_mis_encoded_ecdsa_signatures_are_refused() {
    bounded(async {
        let Rig { backend, sc, .. } = Rig::start_with(|c| c.only(Algorithm::ES256)).await;
        let t = mint(Algorithm::ES256, &claims(SUB));
        let (msg, sig) = t.rsplit_once('.').unwrap();
        let raw_sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert_eq!(raw_sig.len(), 64);
        let (r, s) = raw_sig.split_at(32);
        let zero = [0u8; 32];
        let mut one = [0u8; 32];
        one[31] = 1;
        let cat = |a: &[u8], b: &[u8]| [a, b].concat();
        let mut der = vec![0x30];
        let body = [der_int(r), der_int(s)].concat();
        der.push(body.len() as u8);
        der.extend(body);
        let mut x = Expect::default();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("r = s = 0 (psychic signature)", vec![0u8; 64]),
            ("r = 0, s = 1", cat(&zero, &one)),
            ("r = 1, s = 0", cat(&one, &zero)),
            ("r = s = 1", cat(&one, &one)),
            ("r = s = n", cat(&P256_N, &P256_N)),
            ("r = n, s = valid s", cat(&P256_N, s)),
            ("r + n overflow: all 0xff", vec![0xff; 64]),
            ("DER-encoded valid signature", der),
            ("63 bytes", raw_sig[..63].to_vec()),
            ("65 bytes", [raw_sig.as_slice(), &[0]].concat()),
            ("r and s swapped", cat(s, r)),
            ("empty", Vec::new()),
            ("32 bytes (r only)", r.to_vec()),
            (
                "ES384-sized (96 bytes)",
                [raw_sig.as_slice(), &[0u8; 32]].concat(),
            ),
        ];
        for (what, bytes) in &cases {
            let tok = format!("{msg}.{}", b64(bytes));
            x.refused(what, &send_bearer(&sc, &tok).await, 401, "invalid_token");
        }
        x.finish("malformed ECDSA");
        untouched(&backend, "malformed ECDSA");
        // High-S (n - s): the same signature, malleated. JWS has no low-S rule and
        // aws-lc-rs enforces none, so it is accepted (pinned in docs/security.md
        // "Stances"): it proves nothing new (same claims, same user), and it is forwarded
        // exactly once with that user.
        let high = cat(r, &sub_be(&P256_N, s));
        let resp = send_bearer(&sc, &format!("{msg}.{}", b64(&high))).await;
        assert_eq!(resp.ok_echo().header("x-auth-user-id"), Some(SUB));
        assert_eq!(backend.count(), 1, "high-S: forwarded once");
    })
    .await
}

// ---------------------------------------------------------------------------
// Wycheproof vectors through jsonwebtoken's verification primitive
// ---------------------------------------------------------------------------

fn pad_to(v: &[u8], n: usize) -> Vec<u8> {
    let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
    let mut out = vec![0u8; n.saturating_sub(v.len())];
    out.extend(v);
    out
}

#[test]
fn wycheproof_ecdsa_p1363_eddsa_and_rsa_vectors_verify_as_expected() {
    use wycheproof::TestResult;
    let mut failures = Vec::new();
    let mut counted = 0usize;
    let mut judge = |what: String, result: TestResult, ok: bool| {
        counted += 1;
        let bad = match result {
            TestResult::Valid => !ok,
            TestResult::Invalid => ok,
            TestResult::Acceptable => false,
        };
        if bad {
            failures.push(format!("{what}: expected {result:?}, verified = {ok}"));
        }
    };
    for (name, alg, size) in [
        (
            wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
            Algorithm::ES256,
            32,
        ),
        (
            wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363,
            Algorithm::ES384,
            48,
        ),
    ] {
        let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
        for g in &set.test_groups {
            let x = pad_to(&g.key.affine_x, size);
            let y = pad_to(&g.key.affine_y, size);
            let key = match DecodingKey::from_ec_components(&b64(&x), &b64(&y)) {
                Ok(k) => k,
                Err(_) => continue,
            };
            for t in &g.tests {
                let ok =
                    jsonwebtoken::crypto::verify(&b64(&t.sig), &t.msg, &key, alg).unwrap_or(false);
                judge(
                    format!("{name:?} tc {} ({})", t.tc_id, t.comment),
                    t.result,
                    ok,
                );
            }
        }
    }
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    for g in &set.test_groups {
        let key = DecodingKey::from_ed_components(&b64(&g.key.pk)).unwrap();
        for t in &g.tests {
            let ok = jsonwebtoken::crypto::verify(&b64(&t.sig), &t.msg, &key, Algorithm::EdDSA)
                .unwrap_or(false);
            judge(
                format!("Ed25519 tc {} ({})", t.tc_id, t.comment),
                t.result,
                ok,
            );
        }
    }
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(
        wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256,
    )
    .unwrap();
    for g in &set.test_groups {
        let n: Vec<u8> = g.key.n.iter().copied().skip_while(|b| *b == 0).collect();
        let e: Vec<u8> = g.key.e.iter().copied().skip_while(|b| *b == 0).collect();
        let key = DecodingKey::from_rsa_raw_components(&n, &e);
        for t in &g.tests {
            let ok = jsonwebtoken::crypto::verify(&b64(&t.sig), &t.msg, &key, Algorithm::RS256)
                .unwrap_or(false);
            judge(
                format!("RSA PKCS#1 2048 SHA-256 tc {} ({})", t.tc_id, t.comment),
                t.result,
                ok,
            );
        }
    }
    assert!(counted > 900, "only {counted} vectors ran");
    assert!(
        failures.is_empty(),
        "{} of {counted} Wycheproof vectors disagree:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Weak keys refused at load
// ---------------------------------------------------------------------------

/// n and e of the 1024-bit fixture key, as base64url (from its PKCS#1 DER).
fn rsa1024_jwk(kid: &str) -> Value {
    let pem = read("rsa1024_public.pem");
    let der = DecodingKey::from_rsa_pem(&pem).unwrap().as_bytes().to_vec();
    // SEQUENCE { INTEGER n, INTEGER e }
    fn len(b: &[u8], i: &mut usize) -> usize {
        let f = b[*i];
        *i += 1;
        if f < 0x80 {
            return f as usize;
        }
        let mut l = 0;
        for _ in 0..(f & 0x7f) {
            l = (l << 8) | b[*i] as usize;
            *i += 1;
        }
        l
    }
    let mut i = 1;
    len(&der, &mut i);
    assert_eq!(der[i], 2);
    i += 1;
    let nl = len(&der, &mut i);
    let n = &der[i..i + nl];
    i += nl;
    assert_eq!(der[i], 2);
    i += 1;
    let el = len(&der, &mut i);
    let e = &der[i..i + el];
    let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
    assert_eq!(n.len(), 128, "the fixture is a 1024-bit key");
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": b64(e)})
}

/// Tokens for `alice` (exp 2100-01-01) signed with `rsa1024_private.pem` by
/// `openssl dgst -sha256 -sign` (aws-lc refuses to sign with a 1024-bit key).
const WEAK_SIGNED: [(Option<&str>, &str); 3] = [
    (Some("weak"), "eyJhbGciOiJSUzI1NiIsImtpZCI6IndlYWsifQ.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20iLCJuYW1lIjoiQWxpY2UgRXhhbXBsZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.KpjaKyY2CuSFO9VfE746DJOC44VzQF-CPpfPnYHwB5pFGrifZHDzHrFUKjA1jwh-UzxiL--XPha7DTEtFa7G-XmiayUP785DVs6RaigyeDhq9F9FeH5UIg6DKi2KeQspwZaBeXShFZAKV40O3rF5MHbUVgRyXd1RicUcV0iZtYU"),
    (None, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20iLCJuYW1lIjoiQWxpY2UgRXhhbXBsZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.JiTpClVPfNQ2-BOJxikq-FLxZcgWEQWgHtjM-xYftCT3QWCK-bbmZrCwNKKKrygumkReUMsTSS-z0Ym4ox5hHleTwGzpNNiTaQK_iHTAH8uda7rrHc-TiHRmraioLy7SJFChalUd6lfwN2RBKtuyMhF6wFbia3ctXLACqe4zNKU"),
    (Some("rs1"), "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzMSJ9.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20iLCJuYW1lIjoiQWxpY2UgRXhhbXBsZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.y62lwkvatm46CNkxyzz4mse4KLMEXZmKbyBTuMASoGqRoSUND7xW4Nm9__AHN4iv6XzJWQw_pYXFYQ6ySrXMfssNuCBf_edmeWwMfINAgeMs23TbC5ITuOx9bXQQQKwH3B72CH7lbY9QpA-B-BFNSkThTSjSmZyBHV6GC235iwo"),
];

fn write_temp(dir: &tempfile::TempDir, name: &str, v: &Value) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_keys_are_refused_at_load() {
    bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        let base = || Cfg::new("http://127.0.0.1:9");
        // RSA 1024 in PEM.
        let c = base().only(Algorithm::RS256).auth(
            "public_keys",
            &format!(
                "[{{ file = {}, kid = \"weak\" }}]",
                q(&fixture("rsa1024_public.pem"))
            ),
        );
        let out = check_config(&c).await;
        assert_ne!(
            out.status.code(),
            Some(0),
            "RSA-1024 PEM accepted:\n{}",
            out.all()
        );
        assert!(
            out.all().contains("1024") || out.all().contains("bits"),
            "{}",
            out.all()
        );

        // A JWKS file whose only key is RSA 1024: no usable key.
        let jwks = write_temp(&tmp, "weak.json", &json!({"keys": [rsa1024_jwk("weak")]}));
        let c = base()
            .only(Algorithm::RS256)
            .no_auth_key("public_keys")
            .auth("jwks_file", &q(&jwks));
        let out = check_config(&c).await;
        assert_ne!(
            out.status.code(),
            Some(0),
            "a JWKS of one RSA-1024 key accepted:\n{}",
            out.all()
        );

        // Only an oct key in the JWKS: never an HMAC key.
        let c = base()
            .auth("algorithms", r#"["RS256"]"#)
            .no_auth_key("hmac_secret")
            .auth("jwks_file", &q(&fixture("jwks_oct_only.json")));
        let out = check_config(&c).await;
        assert_ne!(
            out.status.code(),
            Some(0),
            "an oct-only JWKS accepted:\n{}",
            out.all()
        );

        // HMAC secret of 31 bytes: refused; 32 bytes: fine.
        let c = base().env(HS_ENV, &"s".repeat(31));
        let out = check_config(&c).await;
        assert_ne!(
            out.status.code(),
            Some(0),
            "a 31-byte HMAC secret accepted:\n{}",
            out.all()
        );
        assert!(out.all().contains("32"), "{}", out.all());
        let c = base().env(HS_ENV, &"s".repeat(32));
        let out = check_config(&c).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "a 32-byte HMAC secret refused:\n{}",
            out.all()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_key_mixed_into_a_jwks_is_skipped_and_never_verifies() {
    bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        let strong: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
        let rs1 = strong["keys"][0].clone();
        let jwks = write_temp(
            &tmp,
            "mixed.json",
            &json!({"keys": [rs1, rsa1024_jwk("weak")]}),
        );
        let Rig { backend, sc, .. } = Rig::start_with(|c| {
            c.only(Algorithm::RS256)
                .no_auth_key("public_keys")
                .auth("jwks_file", &q(&jwks))
        })
        .await;
        let mut x = Expect::default();
        for (kid, t) in WEAK_SIGNED {
            x.refused(
                &format!("RSA-1024 signature, kid {kid:?}"),
                &send_bearer(&sc, t).await,
                401,
                "invalid_token",
            );
        }
        x.passed(
            "control: rs1",
            &send_bearer(&sc, &mint(Algorithm::RS256, &claims(SUB))).await,
        );
        x.finish("weak JWKS key");
        assert_eq!(backend.count(), 1);
    })
    .await
}
