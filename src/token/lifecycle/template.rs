//! The initiate body template, filled from the verified identity a new session is for:
//! `{sub}`, `{email}`, `{name}`, `{external_id}` (JSON string content), and any claim of
//! the proving token: `{claim:NAME}` (its text, JSON-escaped; empty when absent),
//! `{bool:NAME}` (`true` when the claim is `true` or `"true"`, else `false`: LikeMinds'
//! `is_guest`), `{json:NAME}` (the claim's JSON value as is; `null` when absent).
//! Unknown `{…}` text is left alone: the template is JSON and has braces of its own.

use serde_json::Value;

use super::exchange::escape;
use super::initiate::Subject;

/// The body for `s`, one pass over the template (a value is never read as a
/// placeholder, whatever it contains).
pub(super) fn render(template: &str, s: &Subject) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name = after.find('}').map(|close| &after[..close]);
        match name.and_then(|n| value(n, s).map(|v| (n, v))) {
            Some((n, v)) => {
                out.push_str(&v);
                rest = &after[n.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text a placeholder stands for, or `None` when `name` is not one.
fn value(name: &str, s: &Subject) -> Option<String> {
    let text = |v: &str| Some(escape(v, true));
    match name {
        "sub" => return text(&s.sub),
        "email" => return text(&s.email),
        "name" => return text(&s.name),
        "external_id" => return text(&s.external_id),
        // Renewing an opaque session: the confirmed login and the client's app token.
        "login" => return s.opaque.as_ref().and_then(|o| text(&o.login)),
        "app_token" => return s.opaque.as_ref().and_then(|o| text(&o.app_token)),
        _ => {}
    }
    let (kind, claim) = name.split_once(':')?;
    let v = s.claims.get(claim);
    match kind {
        "claim" => text(&match v {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => String::new(),
        }),
        "bool" => {
            let yes = matches!(v, Some(Value::Bool(true)))
                || matches!(v, Some(Value::String(t)) if t == "true");
            Some(yes.to_string())
        }
        "json" => Some(v.map(Value::to_string).unwrap_or_else(|| "null".into())),
        _ => None,
    }
}
