//! The token-lifecycle sections of a config (`[refresh]`, `[initiate]`,
//! `[app_identity]`, `[response_tokens]`) for a sidecar in front of the mock token
//! service, and the secrets they name.

use std::collections::BTreeMap;

use super::config::q;
use super::token_service::TokenService;

/// The initiate API key the mock token service expects.
pub const API_KEY: &str = "itest-initiate-api-key-5f1e2d3c4b5a69788796a5b4c3d2";
/// The env var the config reads [`API_KEY`] from.
pub const API_KEY_ENV: &str = "TEST_INITIATE_API_KEY";
/// The app-identity token secret.
pub const APP_SECRET: &str = "itest-app-identity-secret-0a1b2c3d4e5f60718293a4b5c6";
/// The env var the config reads [`APP_SECRET`] from.
pub const APP_SECRET_ENV: &str = "TEST_APP_SECRET";

/// The lifecycle sections of a config: `[refresh]`, `[initiate]`, `[app_identity]`,
/// `[response_tokens]` (values are TOML literals).
#[derive(Clone, Default)]
pub struct Lc {
    pub refresh: Option<BTreeMap<String, String>>,
    pub initiate: Option<BTreeMap<String, String>>,
    pub app: Option<BTreeMap<String, String>>,
    pub tokens: BTreeMap<String, String>,
}

impl Lc {
    pub fn for_service(ts: &TokenService) -> Lc {
        let mut lc = Lc::default();
        lc.refresh("url", &q(&ts.refresh_url()))
            .refresh("timeout", "\"1s\"")
            .refresh("retry_after", "\"2s\"")
            .initiate("url", &q(&ts.initiate_url()))
            .initiate("api_key", &format!("{{ env = {} }}", q(API_KEY_ENV)))
            .initiate("timeout", "\"1s\"");
        lc.app = Some(BTreeMap::from([(
            "secret".to_string(),
            format!("{{ env = {} }}", q(APP_SECRET_ENV)),
        )]));
        lc
    }
    pub fn refresh(&mut self, k: &str, v: &str) -> &mut Lc {
        self.refresh
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }
    pub fn initiate(&mut self, k: &str, v: &str) -> &mut Lc {
        self.initiate
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }
    /// No `[initiate]` (and so no `[app_identity]`, which needs it).
    pub fn no_initiate(&mut self) -> &mut Lc {
        self.initiate = None;
        self.app = None;
        self
    }
    pub fn tokens(&mut self, k: &str, v: &str) -> &mut Lc {
        self.tokens.insert(k.into(), v.into());
        self
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, sec) in [
            ("refresh", &self.refresh),
            ("initiate", &self.initiate),
            ("app_identity", &self.app),
        ] {
            if let Some(m) = sec {
                out.push_str(&format!("[{name}]\n"));
                for (k, v) in m {
                    out.push_str(&format!("{k} = {v}\n"));
                }
                out.push('\n');
            }
        }
        if !self.tokens.is_empty() {
            out.push_str("[response_tokens]\n");
            for (k, v) in &self.tokens {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}
