//! Secrets: a reference in the file (`{ env = "VAR" }` or `{ file = "/path" }`), the
//! bytes loaded from it at validation, and a `Debug` that never shows them.

use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Checker;

/// Secret material; its Debug never shows the value.
#[derive(Clone, Default)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from: exactly one of an environment variable or a file (a
/// trailing newline in the file is dropped). Inline values are refused so a secret
/// never lands in a ConfigMap. Serializes as the reference only, never the value.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "SecretRepr")]
pub struct Secret {
    /// Name of the environment variable holding the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Path of a file holding the secret (relative to the config file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The loaded bytes (empty until the config is validated).
    #[serde(skip)]
    pub value: SecretBytes,
}

/// The schema of a secret reference: what the file may hold.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct SecretReference {
    /// Name of the environment variable holding the secret.
    env: Option<String>,
    /// Path of a file holding the secret (relative to the config file).
    file: Option<PathBuf>,
}

impl JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        SecretReference::json_schema(generator)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("env", &self.env)
            .field("file", &self.file)
            .field("value", &self.value)
            .finish()
    }
}

/// `secret.0` reads the loaded bytes.
impl Deref for Secret {
    type Target = SecretBytes;
    fn deref(&self) -> &SecretBytes {
        &self.value
    }
}

impl Secret {
    /// Whether the file named a source at all (`env` or `file`).
    pub fn is_set(&self) -> bool {
        self.env.is_some() || self.file.is_some()
    }

    /// Loads the bytes from the env var or file; a problem is reported under `key`.
    pub(super) fn load(&mut self, key: &str, c: &mut Checker<'_>) -> bool {
        match (&self.env, &self.file) {
            (Some(var), None) => match c.env.get(var) {
                Some(v) if !v.is_empty() => {
                    self.value = SecretBytes(v.into_bytes());
                    true
                }
                _ => {
                    c.fail(format!(
                        "{key}: environment variable {var} is not set or empty"
                    ));
                    false
                }
            },
            (None, Some(path)) => match std::fs::read(path) {
                Ok(mut v) => {
                    // Files written by editors and Kubernetes Secrets often end in a newline.
                    while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        v.pop();
                    }
                    self.value = SecretBytes(v);
                    true
                }
                Err(e) => {
                    c.fail(format!("{key}: cannot read {}: {e}", path.display()));
                    false
                }
            },
            _ => {
                c.fail(format!("{key}: give exactly one of `env` or `file`"));
                false
            }
        }
    }
}

/// What the file may hold for a secret; an inline string is read only to refuse it
/// with an error that does not echo it.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretRepr {
    Reference {
        env: Option<String>,
        file: Option<PathBuf>,
    },
    Inline(#[allow(dead_code)] toml::Value),
}

impl TryFrom<SecretRepr> for Secret {
    type Error = String;
    fn try_from(r: SecretRepr) -> Result<Self, String> {
        match r {
            SecretRepr::Reference { env, file } => Ok(Secret {
                env,
                file,
                value: SecretBytes::default(),
            }),
            SecretRepr::Inline(_) => Err(
                "secrets are never inline: write { env = \"VAR\" } or { file = \"/path\" }".into(),
            ),
        }
    }
}
