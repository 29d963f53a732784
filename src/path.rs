//! Path canonicalisation: one reading of a request path, used both to match route rules
//! and to build the request line sent to the backend. Pure functions; depends on nothing
//! else in the crate (config validates route prefixes with it).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// Characters re-encoded when a canonical path segment is forwarded.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// An encoded `/` or `\`, a raw `\`, NUL or a control character: the path could be
    /// read two ways by whatever sits behind us.
    Ambiguous,
    /// Not an origin-form path, or not UTF-8 after decoding.
    Malformed,
}

/// Decodes once, resolves dot segments, merges `//`, keeps a trailing slash. The result
/// is both what rules are matched on and (re-encoded) what is forwarded, so the two
/// can never disagree. Canonical paths are fixed points of this function.
///
/// A path that still holds `%` and two hex digits after that one decoding (`%252e`,
/// `%%32%65`, however spelled) is ambiguous: a backend, framework or second proxy that
/// decodes again would read another path than the one decided on.
pub fn canonical_path(raw: &str) -> Result<String, PathError> {
    canonical_path_with(raw, false)
}

/// [`canonical_path`], with `allow_encoded_percent` letting a decoded `%XX` through (for
/// backends that never decode twice; `server.allow_encoded_percent`).
pub fn canonical_path_with(raw: &str, allow_encoded_percent: bool) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::Malformed);
    }
    let mut out: Vec<String> = Vec::new();
    let mut trailing = false;
    for seg in raw.split('/').skip(1) {
        if seg.contains('\\') {
            return Err(PathError::Ambiguous);
        }
        let decoded = percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| PathError::Malformed)?;
        if decoded.contains(['/', '\\']) || decoded.chars().any(|c| c.is_control()) {
            return Err(PathError::Ambiguous);
        }
        if !allow_encoded_percent && has_percent_hex(&decoded) {
            return Err(PathError::Ambiguous);
        }
        // Servlet containers drop `;params` before resolving dots: `..;x` would climb
        // out of a prefix there, and `;x` alone would be an empty segment.
        if let Some((head, _)) = decoded.split_once(';') {
            if matches!(head, "" | "." | "..") {
                return Err(PathError::Ambiguous);
            }
        }
        trailing = true;
        match decoded.as_ref() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s.to_string());
                trailing = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if trailing || path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The canonical path encoded for the request line sent to the backend.
pub fn encode_path(canonical: &str) -> String {
    let mut out = String::with_capacity(canonical.len() + 8);
    for (i, seg) in canonical.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.extend(utf8_percent_encode(seg, SEGMENT));
    }
    out
}

/// True when a raw path needs no canonicalisation work: the common case, kept cheap.
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.first() == Some(&b'/')
        && !b.windows(2).any(|w| w == b"//" || w == b"/.")
        && b.iter()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'%' | b'\\' | b';'))
}

/// `%` followed by two hex digits: what a second decoding would turn into something else.
fn has_percent_hex(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Returns (canonical path, path to forward). Plain paths are returned as they are.
pub fn resolve_path(raw: &str) -> Result<(String, String), PathError> {
    resolve_path_with(raw, false)
}

/// [`resolve_path`] with the `allow_encoded_percent` switch of [`canonical_path_with`].
pub fn resolve_path_with(
    raw: &str,
    allow_encoded_percent: bool,
) -> Result<(String, String), PathError> {
    if is_plain(raw) {
        return Ok((raw.to_string(), raw.to_string()));
    }
    let canonical = canonical_path_with(raw, allow_encoded_percent)?;
    let forward = encode_path(&canonical);
    Ok((canonical, forward))
}
