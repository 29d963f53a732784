//! Config loading: every problem listed, unknown keys refused, secrets never inline,
//! env overrides beat the file (env injected as a map, never set on the process).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use auth_sidecar::config::{parse_duration, Config};

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
