//! A small builder for the sidecar's config.toml. Keys are exactly the serde field names
//! of `src/config.rs` (RawConfig and its sections). Values are TOML literals.

use std::collections::BTreeMap;

use super::tokens::{HS_ENV, HS_SECRET};

/// Absolute path of a file in `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p.to_string_lossy().into_owned()
}

/// `s` as a TOML string literal (quoted and escaped).
pub fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// One config file, section by section. Starts as an HS256 config with the secret in the
/// env var [`HS_ENV`], both listeners on port 0, JSON logs.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub server: BTreeMap<String, String>,
    pub admin: bool,
    pub backend: BTreeMap<String, String>,
    pub auth: BTreeMap<String, String>,
    pub identity: BTreeMap<String, String>,
    pub identity_claims: BTreeMap<String, String>,
    pub routes: Vec<String>,
    pub log_level: String,
    /// Verbatim text appended at the end (extra sections, deliberate mistakes).
    pub extra: String,
    /// Environment variables given to the child process.
    pub env: Vec<(String, String)>,
}

impl Cfg {
    /// HS256 with the standard test secret, forwarding to `backend_url`.
    pub fn new(backend_url: &str) -> Cfg {
        let mut c = Cfg {
            server: BTreeMap::new(),
            admin: true,
            backend: BTreeMap::new(),
            auth: BTreeMap::new(),
            identity: BTreeMap::new(),
            identity_claims: BTreeMap::new(),
            routes: Vec::new(),
            log_level: "info".into(),
            extra: String::new(),
            env: vec![(HS_ENV.to_string(), HS_SECRET.to_string())],
        };
        c.server.insert("listen".into(), q("127.0.0.1:0"));
        c.server.insert("worker_threads".into(), "2".into());
        c.backend.insert("url".into(), q(backend_url));
        c.auth.insert("algorithms".into(), r#"["HS256"]"#.into());
        c.auth
            .insert("hmac_secret".into(), format!("{{ env = {} }}", q(HS_ENV)));
        c
    }

    /// Sets `[server] key = value` (value is a TOML literal).
    pub fn server(mut self, key: &str, value: &str) -> Cfg {
        self.server.insert(key.into(), value.into());
        self
    }

    /// Sets `[backend] key = value`.
    pub fn backend(mut self, key: &str, value: &str) -> Cfg {
        self.backend.insert(key.into(), value.into());
        self
    }

    /// Sets `[auth] key = value`.
    pub fn auth(mut self, key: &str, value: &str) -> Cfg {
        self.auth.insert(key.into(), value.into());
        self
    }

    /// Removes `[auth] key`.
    pub fn no_auth_key(mut self, key: &str) -> Cfg {
        self.auth.remove(key);
        self
    }

    /// Sets `[identity] key = value`.
    pub fn identity(mut self, key: &str, value: &str) -> Cfg {
        self.identity.insert(key.into(), value.into());
        self
    }

    /// Maps a claim to a header in `[identity.claims]`.
    pub fn claim_header(mut self, claim: &str, header: &str) -> Cfg {
        self.identity_claims.insert(claim.into(), q(header));
        self
    }

    /// Adds a `[[routes]]` entry; `body` is the table's lines, e.g.
    /// `prefix = "/public"\nmode = "public"`.
    pub fn route(mut self, body: &str) -> Cfg {
        self.routes.push(body.to_string());
        self
    }

    pub fn log_level(mut self, level: &str) -> Cfg {
        self.log_level = level.into();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cfg {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn extra(mut self, text: &str) -> Cfg {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// Only `alg` allowed, with the fixture key for it (kid rs1 / ec1 / ed1, or the HMAC
    /// secret for HS*): the usual single-algorithm deployment.
    pub fn only(self, alg: jsonwebtoken::Algorithm) -> Cfg {
        use jsonwebtoken::Algorithm as A;
        let name = super::tokens::alg_name(alg);
        let c = self.auth("algorithms", &format!("[{}]", q(name)));
        let (file, kid) = match alg {
            A::HS256 | A::HS384 | A::HS512 => return c,
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                ("rsa2048_public.pem", "rs1")
            }
            A::ES256 | A::ES384 => ("ec_p256_public.pem", "ec1"),
            A::EdDSA => ("ed25519_public.pem", "ed1"),
        };
        c.no_auth_key("hmac_secret").auth(
            "public_keys",
            &format!("[{{ file = {}, kid = {} }}]", q(&fixture(file)), q(kid)),
        )
    }

    /// All algorithms the fixtures can sign with, each with its key: the HMAC secret,
    /// RSA 2048 (kid rs1, for RS* and PS*), EC P-256 (kid ec1) and Ed25519 (kid ed1).
    pub fn all_algorithms(self) -> Cfg {
        self.auth(
            "algorithms",
            r#"["HS256", "RS256", "PS256", "ES256", "EdDSA"]"#,
        )
        .auth(
            "public_keys",
            &format!(
                "[{{ file = {}, kid = \"rs1\" }}, {{ file = {}, kid = \"ec1\" }}, {{ file = {}, kid = \"ed1\" }}]",
                q(&fixture("rsa2048_public.pem")),
                q(&fixture("ec_p256_public.pem")),
                q(&fixture("ed25519_public.pem")),
            ),
        )
    }

    /// The config file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let section = |out: &mut String, name: &str, map: &BTreeMap<String, String>| {
            out.push_str(&format!("[{name}]\n"));
            for (k, v) in map {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        };
        section(&mut out, "server", &self.server);
        if self.admin {
            out.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n\n");
        }
        section(&mut out, "backend", &self.backend);
        section(&mut out, "auth", &self.auth);
        section(&mut out, "identity", &self.identity);
        if !self.identity_claims.is_empty() {
            out.push_str("[identity.claims]\n");
            for (k, v) in &self.identity_claims {
                out.push_str(&format!("{} = {v}\n", q(k)));
            }
            out.push('\n');
        }
        for r in &self.routes {
            out.push_str("[[routes]]\n");
            out.push_str(r.trim());
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "[log]\nformat = \"json\"\nlevel = {}\n\n",
            q(&self.log_level)
        ));
        out.push_str(&self.extra);
        out
    }
}
