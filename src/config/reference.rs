//! The configuration reference, generated from the section structs' `///` field docs
//! (through their JSON schema) and their `Default` values. README's "Configuration
//! reference" table is this output; `tests/config.rs` fails when they differ or when a
//! key has no doc.

use serde_json::Value as Json;

use super::{
    AppIdentity, Config, Initiate, Introspection, Limit, PublicKey, Refresh, Route, Signature, Tls,
};

/// One row of the reference: a key, its default as written in TOML, and its doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `section.key`, `section.table.key` or `section[].key` for arrays of tables.
    pub key: String,
    /// The default in TOML notation, `required`, or `—` when unset.
    pub default: String,
    /// The field's doc comment, on one line.
    pub doc: String,
    /// Whether the key is a table or array of tables whose keys follow as rows.
    pub container: bool,
}

/// Sections in the order the reference lists them (any other section follows).
const ORDER: [&str; 12] = [
    "server",
    "admin",
    "backend",
    "auth",
    "identity",
    "routes",
    "refresh",
    "initiate",
    "app_identity",
    "introspection",
    "response_tokens",
    "log",
];

/// Keys that have no default: the file must set them when their table is present.
const REQUIRED: [&str; 12] = [
    "server.tls.cert_file",
    "server.tls.key_file",
    "auth.public_keys[].file",
    "routes[].prefix",
    "refresh.url",
    "initiate.url",
    "initiate.api_key",
    "initiate.signature.secret",
    "routes[].limits[].claims",
    "routes[].limits[].methods",
    "app_identity.secret",
    "introspection.url",
];

/// Every key of the config, section by section.
pub fn rows() -> Vec<Row> {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default();
    let defaults = defaults();
    let Some(props) = schema.get("properties").and_then(Json::as_object) else {
        return Vec::new();
    };
    let mut names: Vec<&String> = props.keys().collect();
    names.sort_by_key(|n| ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()));
    let mut out = Vec::new();
    for name in names {
        walk(&schema, &props[name], name, &defaults, true, &mut out);
    }
    out
}

/// The README table: a header and one line per key.
pub fn markdown() -> String {
    let mut s = String::from("| key | default | meaning |\n|---|---|---|\n");
    for r in rows() {
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            r.key,
            r.default,
            r.doc.replace('|', "\\|")
        ));
    }
    s
}

/// A config with every optional table present and one element in every array of
/// tables, as TOML, to read defaults from.
fn defaults() -> toml::Value {
    let mut c = Config::default();
    c.server.tls = Some(Tls::default());
    c.auth.public_keys = vec![PublicKey::default()];
    c.routes = vec![Route {
        limits: vec![Limit::default()],
        ..Route::default()
    }];
    c.refresh = Some(Refresh::default());
    c.initiate = Some(Initiate {
        signature: Some(Signature::default()),
        ..Initiate::default()
    });
    c.app_identity = Some(AppIdentity::default());
    c.introspection = Some(Introspection::default());
    toml::Value::try_from(&c).unwrap_or(toml::Value::Table(toml::Table::new()))
}

/// The definition a property refers to (through `$ref`, or `anyOf` for an `Option`).
fn target<'a>(root: &'a Json, s: &'a Json) -> Option<(&'a str, &'a Json)> {
    if let Some(r) = s.get("$ref").and_then(Json::as_str) {
        let name = r.rsplit('/').next()?;
        return Some((name, root.get("$defs")?.get(name)?));
    }
    s.get("anyOf")
        .or_else(|| s.get("allOf"))
        .and_then(Json::as_array)?
        .iter()
        .find_map(|v| target(root, v))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn walk(
    root: &Json,
    prop: &Json,
    key: &str,
    defaults: &toml::Value,
    top: bool,
    out: &mut Vec<Row>,
) {
    let doc = one_line(prop.get("description").and_then(Json::as_str).unwrap_or(""));
    let default_here = defaults.get(key.rsplit(['.', ']']).next().unwrap_or(key));
    let optional = prop
        .get("anyOf")
        .and_then(Json::as_array)
        .is_some_and(|v| v.iter().any(|t| t.get("type") == Some(&Json::from("null"))));
    // An array of tables: a row for the array, then its element's keys as `key[].x`.
    if let Some(items) = prop.get("items") {
        if let Some((_, def)) = target(root, items) {
            if let Some(fields) = def.get("properties").and_then(Json::as_object) {
                out.push(Row {
                    key: key.to_string(),
                    default: "`[]`".into(),
                    doc,
                    container: true,
                });
                let element = default_here
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.first())
                    .cloned()
                    .unwrap_or(toml::Value::Table(toml::Table::new()));
                for (name, p) in fields {
                    walk(root, p, &format!("{key}[].{name}"), &element, false, out);
                }
                return;
            }
        }
    }
    if let Some((name, def)) = target(root, prop) {
        if let (true, Some(fields)) = (
            name != "Secret",
            def.get("properties").and_then(Json::as_object),
        ) {
            if optional || !top {
                out.push(Row {
                    key: key.to_string(),
                    default: "—".into(),
                    doc,
                    container: true,
                });
            }
            let inner = default_here
                .cloned()
                .unwrap_or(toml::Value::Table(toml::Table::new()));
            for (f, p) in fields {
                walk(root, p, &format!("{key}.{f}"), &inner, false, out);
            }
            return;
        }
    }
    let default = if REQUIRED.contains(&key) {
        "required".to_string()
    } else {
        match default_here {
            None => "—".into(),
            Some(toml::Value::String(s)) if s.is_empty() => "—".into(),
            Some(toml::Value::String(s)) => format!("`{s}`"),
            Some(toml::Value::Table(t)) if t.is_empty() && target(root, prop).is_some() => {
                "—".into()
            }
            Some(v) => format!("`{v}`"),
        }
    };
    out.push(Row {
        key: key.to_string(),
        default,
        doc,
        container: false,
    });
}
