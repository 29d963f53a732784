//! Shared set-up for the fuzz targets: configs built through the real
//! `Config::from_toml`, keys from the repository's test fixtures.

use std::collections::BTreeMap;
use std::path::PathBuf;

use auth_sidecar::config::Config;

/// The HMAC secret the fuzz configs use (≥ 32 bytes), given through `FUZZ_HS`.
pub const HS_SECRET: &str = "fuzz-hs256-secret-0123456789abcdef0123456789";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("FUZZ_HS".to_string(), HS_SECRET.to_string())])
}

/// A config from `[auth]` lines (plus optional extra sections), backend on a refusing port.
pub fn config(auth: &str, extra: &str) -> Config {
    let text = format!("[backend]\nurl = \"http://127.0.0.1:9\"\n[auth]\n{auth}\n{extra}\n");
    Config::from_toml(&text, &fixtures(), &env())
        .unwrap_or_else(|e| panic!("fuzz config does not load: {:?}\n{text}", e.0))
}

pub fn hs_config(extra_auth: &str, extra: &str) -> Config {
    config(
        &format!("algorithms = [\"HS256\", \"HS384\", \"HS512\"]\nhmac_secret = {{ env = \"FUZZ_HS\" }}\n{extra_auth}"),
        extra,
    )
}
