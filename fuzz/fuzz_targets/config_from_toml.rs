//! `config::Config::from_toml` on arbitrary text. Properties: no panic; an accepted
//! config's redacted rendering never contains the secret values given through the
//! environment. Inputs naming device or proc files are skipped (a `{ file = "/dev/zero" }`
//! secret would read forever, by design of the file reference, not a parser bug).
#![no_main]
use std::collections::BTreeMap;

use auth_sidecar::config::Config;
use libfuzzer_sys::fuzz_target;

const SECRETS: [(&str, &str); 3] = [
    ("FUZZ_HS", "fuzz-hs256-secret-0123456789abcdef0123456789"),
    (
        "FUZZ_API_KEY",
        "fuzz-api-key-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ),
    ("AUTH_SIDECAR__LOG__LEVEL", "debug"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "\\\\", "//"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let env: BTreeMap<String, String> = SECRETS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let dir = std::env::temp_dir().join("auth-sidecar-fuzz-empty");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(cfg) = Config::from_toml(text, &dir, &env) {
        let shown = cfg.redacted_toml();
        for (_, secret) in &SECRETS[..2] {
            assert!(!shown.contains(secret), "a secret value is shown:\n{shown}");
        }
    }
});
