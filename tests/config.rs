//! Config loading: every problem listed, unknown keys refused, secrets never inline,
//! env overrides beat the file (env injected as a map, never set on the process).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use auth_sidecar::config::{parse_duration, reference, Config};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn minimal_config_loads_with_secret_from_env() {
    let e = env(&[("HS", SECRET)]);
    let cfg = Config::from_toml(
        "[auth]\nhmac_secret = { env = \"HS\" }\n",
        Path::new("."),
        &e,
    )
    .unwrap();
    assert_eq!(cfg.server.listen.port(), 8080);
    assert_eq!(cfg.auth.hmac_secret.unwrap().0, SECRET.as_bytes());
}

#[test]
fn every_problem_is_listed_including_unknown_keys() {
    let e = env(&[("HS", "short")]);
    let text = "[server]\nlisten = \"nope\"\nlistn = 1\n[auth]\nhmac_secret = { env = \"HS\" }\nalgorithm = [\"HS256\"]\n";
    let err = Config::from_toml(text, Path::new("."), &e).unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("unknown key `server.listn`"), "{all}");
    assert!(all.contains("unknown key `auth.algorithm`"), "{all}");
    assert!(all.contains("server.listen"), "{all}");
    assert!(all.contains("at least 32 bytes"), "{all}");
}

#[test]
fn inline_secret_is_refused() {
    let err = Config::from_toml(
        "[auth]\nhmac_secret = \"inline\"\n",
        Path::new("."),
        &env(&[]),
    )
    .unwrap_err();
    assert!(!err.0.is_empty());
    assert!(
        !err.to_string().contains("inline\""),
        "error must not echo the secret"
    );
}

#[test]
fn env_overrides_beat_the_file() {
    let e = env(&[
        ("HS", SECRET),
        ("AUTH_SIDECAR__BACKEND__URL", "http://127.0.0.1:4000"),
        ("AUTH_SIDECAR__SERVER__WORKER_THREADS", "1"),
        ("AUTH_SIDECAR__AUTH__HMAC_SECRET", "{ env = \"HS\" }"),
    ]);
    let cfg = Config::from_toml(
        "[backend]\nurl = \"http://127.0.0.1:3000\"\n",
        Path::new("."),
        &e,
    )
    .unwrap();
    assert_eq!(cfg.backend.authority.as_str(), "127.0.0.1:4000");
    assert_eq!(cfg.server.worker_threads, 1);
}

#[test]
fn env_override_with_unknown_key_is_an_error() {
    let e = env(&[("HS", SECRET), ("AUTH_SIDECAR__AUTH__ISSUR", "x")]);
    let err = Config::from_toml(
        "[auth]\nhmac_secret = { env = \"HS\" }\n",
        Path::new("."),
        &e,
    )
    .unwrap_err();
    assert!(
        err.0.iter().any(|p| p.contains("auth.issur")),
        "{:?}",
        err.0
    );
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(
        parse_duration("7d").unwrap(),
        Duration::from_secs(7 * 86400)
    );
    assert!(parse_duration("7 days").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn every_problem_is_listed_with_its_key_and_the_load_goes_on() {
    let e = env(&[("HS", SECRET)]);
    let text = r#"
[server]
listen = "nope"
worker_threads = "x"
[backend]
url = "ftp://x"
[auth]
hmac_secret = { env = "HS" }
algorithms = ["HS256", "XX999"]
leeway = "soon"
[identity.claims]
role = "bad header"
[[routes]]
prefix = "/a"
methods = ["GET", "BA D"]
[refresh]
url = "ftp://"
timout = "1s"
[log]
level = "[[["
"#;
    let err = Config::from_toml(text, Path::new("."), &e).unwrap_err();
    for want in [
        "unknown key `refresh.timout`",
        "server.listen: `nope` is not an address like 127.0.0.1:8080",
        "server.worker_threads: invalid type: string \"x\", expected usize",
        "backend.url: `ftp://x` is not an http(s) URL",
        "auth.algorithms: `XX999` is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)",
        "auth.leeway: `soon` is not a duration (e.g. 500ms, 30s, 5m, 2h, 7d)",
        "identity.claims.role: `bad header` is not a valid header name",
        "routes[0].methods: `BA D` is not a method",
        "refresh.url: `ftp://` is not an http(s) URL",
        "log.level: `[[[` is not a valid filter",
    ] {
        assert!(err.0.iter().any(|p| p == want), "`{want}` not in {:#?}", err.0);
    }
    assert_eq!(err.0.len(), 10, "{:#?}", err.0);
}

#[test]
fn new_keys_have_todays_defaults() {
    let e = env(&[("HS", SECRET), ("K", SECRET)]);
    let cfg = Config::from_toml(
        "[auth]\nhmac_secret = { env = \"HS\" }\n[refresh]\nurl = \"http://127.0.0.1:1/r\"\n[initiate]\nurl = \"http://127.0.0.1:1/i\"\napi_key = { env = \"K\" }\n[app_identity]\nsecret = { env = \"K\" }\n",
        Path::new("."),
        &e,
    )
    .unwrap();
    let (r, i, a) = (
        cfg.refresh.as_ref().unwrap(),
        cfg.initiate.as_ref().unwrap(),
        cfg.app_identity.as_ref().unwrap(),
    );
    assert_eq!(r.cache_capacity, 100_000);
    assert_eq!(i.cache_capacity, 100_000);
    assert_eq!(i.grace, Duration::from_secs(30));
    assert_eq!(i.max_response_bytes, 65_536);
    assert_eq!(i.retry_after, Duration::from_secs(5));
    assert_eq!(a.leeway, Duration::from_secs(30));
    assert_eq!(cfg.auth.expired_cache_capacity, 10_000);
    assert_eq!(cfg.auth.expired_cache_ttl, Duration::from_secs(60));
    assert_eq!(cfg.auth.jwks_max_bytes, 524_288);
    assert_eq!(i.api_key.header.as_str(), "x-api-key");
    assert_eq!(i.api_key.secret.0, SECRET.as_bytes());
    let shown = cfg.redacted_toml();
    for key in [
        "cache_capacity = 100000",
        "grace = \"30s\"",
        "expired_cache_ttl = \"1m\"",
        "jwks_max_bytes = 524288",
        "env = \"K\"",
    ] {
        assert!(
            shown.contains(key),
            "`{key}` not in check-config output:\n{shown}"
        );
    }
    assert!(!shown.contains(SECRET), "a secret value is shown:\n{shown}");
}

#[test]
fn the_effective_config_reads_back_as_itself() {
    let e = env(&[("HS", SECRET)]);
    let text = "[auth]\nhmac_secret = { env = \"HS\" }\n[[routes]]\nprefix = \"/\"\nmode = \"public\"\n[[routes]]\nprefix = \"/api\"\nmethods = [\"get\"]\n[routes.require_claims]\nrole = \"admin\"\n";
    let first = Config::from_toml(text, Path::new("."), &e).unwrap();
    let shown = first.redacted_toml();
    let again = Config::from_toml(&shown, Path::new("."), &e).unwrap();
    assert_eq!(again.redacted_toml(), shown);
}

// ---------------------------------------------------------------------------
// The reference cannot drift from the field docs.
// ---------------------------------------------------------------------------

const START: &str = "<!-- config-reference:start -->";
const END: &str = "<!-- config-reference:end -->";

#[test]
fn every_key_has_a_doc() {
    let rows = reference::rows();
    assert!(rows.len() > 100, "only {} keys found", rows.len());
    for r in &rows {
        assert!(
            !r.doc.trim().is_empty(),
            "config key `{}` has no `///` doc on its field",
            r.key
        );
    }
}

#[test]
fn the_readme_reference_is_generated_from_the_field_docs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        panic!("README.md has no {START} … {END} markers");
    };
    let body_start = start + START.len();
    let current = readme[body_start..end].trim();
    let generated = reference::markdown();
    if current == generated.trim() {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}\n{}{}", &readme[..body_start], generated, &readme[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "README.md's configuration reference differs from the field docs in src/config/; \
         run `UPDATE_DOCS=1 cargo test --test config` to regenerate it"
    );
}

/// Every key a TOML document sets, as the reference names it (`routes[].prefix`); a
/// table stops at a documented leaf key (a secret reference, a claim map).
fn keys_of(leaves: &[String], prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    if leaves.iter().any(|l| l == prefix) {
        out.push(prefix.to_string());
        return;
    }
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys_of(leaves, &key, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(|e| e.is_table()) && !a.is_empty() => {
            for e in a {
                keys_of(leaves, &format!("{prefix}[]"), e, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_key_in_config_toml_is_a_documented_key_and_it_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rows = reference::rows();
    let documented: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    let leaves: Vec<String> = rows
        .iter()
        .filter(|r| !r.container)
        .map(|r| r.key.clone())
        .collect();
    let mut keys = Vec::new();
    keys_of(
        &leaves,
        "",
        &toml::from_str::<toml::Value>(&text).unwrap(),
        &mut keys,
    );
    assert!(!keys.is_empty());
    for k in &keys {
        assert!(
            documented.contains(k),
            "config.toml sets `{k}`, which is not a documented key"
        );
    }
    // The env var its header comment tells the user to export.
    let e = env(&[("AUTH_SIDECAR_HMAC_SECRET", SECRET)]);
    let cfg = Config::load(&path, &e).unwrap_or_else(|e| panic!("config.toml: {e}"));
    assert!(cfg.admin.listen.is_some());
}

#[test]
fn durations_write_back_as_they_read() {
    use auth_sidecar::config::types::format_duration;
    for s in ["250ms", "30s", "90s", "5m", "2h", "7d", "0s", "1500ms"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
    assert_eq!(format_duration(parse_duration("60s").unwrap()), "1m");
}

#[test]
fn token_endpoint_and_vendor_keys_are_checked() {
    let e = env(&[("HS", SECRET), ("KEY", "k")]);
    let text = r#"
[auth]
hmac_secret = { env = "HS" }
[refresh]
url = "http://127.0.0.1:1/refresh"
headers = { "x-api-key" = "no", "bad header" = "x" }
api_key_header = "x-api-key"
api_key = { env = "KEY" }
[initiate]
url = "http://127.0.0.1:1/initiate"
api_key = { env = "KEY" }
headers = { "content-type" = "text/plain", "x-platform-code" = "rt" }
opaque_lifetime = "0s"
[forward_auth]
path = "/_auth"
[token_endpoint]
path = "/_auth/tokens"
accept = ["app_identity"]
fields = { jwt = "login_jwt" }
"#;
    let err = Config::from_toml(text, Path::new("."), &e).unwrap_err();
    for want in [
        "refresh.headers: `x-api-key` is set by the sidecar itself",
        "refresh.headers: `bad header` is not a valid header name and value",
        "initiate.headers: `content-type` is set by the sidecar itself",
        "initiate.opaque_lifetime: must be greater than zero",
        "token_endpoint.path: must not overlap forward_auth.path",
        "token_endpoint: a `login_jwt` field and [token_endpoint.login_jwt] go together",
        "token_endpoint.accept: app_identity needs an [app_identity] section",
    ] {
        assert!(
            err.0.iter().any(|p| p == want),
            "`{want}` not in {:#?}",
            err.0
        );
    }
    assert_eq!(err.0.len(), 7, "{:#?}", err.0);

    // Session fields need [initiate]; a minting endpoint alone does not.
    let text = r#"
[auth]
hmac_secret = { env = "HS" }
[token_endpoint]
fields = { accessToken = "access_token" }
"#;
    let err = Config::from_toml(text, Path::new("."), &e).unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|p| p.contains("need an [initiate] section")),
        "{:#?}",
        err.0
    );
    let text = r#"
[auth]
hmac_secret = { env = "HS" }
[app_identity]
secret = { env = "HS" }
[token_endpoint]
path = "/tokens/"
fields = { jwt = "login_jwt", userId = "user_id" }
[token_endpoint.login_jwt]
secret = { env = "HS" }
claims = ["externalId", "email"]
"#;
    let cfg = Config::from_toml(text, Path::new("."), &e).unwrap();
    let te = cfg.token_endpoint.unwrap();
    assert_eq!(te.path, "/tokens");
    assert_eq!(te.fields.len(), 2);
}
