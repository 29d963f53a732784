//! Self-parsing field types: serde `with` modules that read a config value straight
//! into its typed form (durations, addresses, header names, methods, URLs) and write it
//! back in the same notation, so `check-config` shows what a user would write. Each
//! error message is the part after `key: `; the key path is added by the loader.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses "250ms", "30s", "5m", "2h", "7d".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 5m, 2h, 7d)"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}` has no valid unit (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// The inverse of [`parse_duration`]: the largest unit that divides the value exactly.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 || d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s > 0 && s % size == 0 {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d)
}

/// `Duration` as "30s", "250ms", "5m", "2h", "7d".
pub mod duration {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&string(d)?).map_err(D::Error::custom)
    }
}

/// `Option<Duration>`: a duration, or "off" for `None`.
pub mod duration_or_off {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_str("off"),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v = string(d)?;
        if v == "off" {
            return Ok(None);
        }
        parse_duration(&v).map(Some).map_err(D::Error::custom)
    }
}

/// The proxy's listen address.
pub mod listen_addr {
    use super::*;
    use std::net::SocketAddr;
    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let v = string(d)?;
        v.parse()
            .map_err(|_| D::Error::custom(format!("`{v}` is not an address like 127.0.0.1:8080")))
    }
}

/// An optional listen address (the admin port).
pub mod opt_addr {
    use super::*;
    use std::net::SocketAddr;
    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let v = string(d)?;
        v.parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("`{v}` is not an address")))
    }
}

fn header_name<E: serde::de::Error>(v: &str) -> Result<HeaderName, E> {
    HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| E::custom(format!("`{v}` is not a valid header name")))
}

/// A header name (stored lowercase, as `http` does).
pub mod header {
    use super::*;
    pub fn serialize<S: Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
        header_name(&string(d)?)
    }
}

/// An optional header name.
pub mod opt_header {
    use super::*;
    pub fn serialize<S: Serializer>(h: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
        match h {
            Some(h) => s.serialize_str(h.as_str()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeaderName>, D::Error> {
        header_name(&string(d)?).map(Some)
    }
}

/// One header name as a map value, so that an error names its key.
struct HeaderDe(HeaderName);

impl<'de> Deserialize<'de> for HeaderDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        header_name(&string(d)?).map(HeaderDe)
    }
}

/// A map from a name (a claim) to a header name.
pub mod header_map {
    use super::*;
    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, HeaderName>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let plain: BTreeMap<&str, &str> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        plain.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, HeaderName>, D::Error> {
        let m = BTreeMap::<String, HeaderDe>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// A header value (a content type, say).
pub mod header_value {
    use super::*;
    pub fn serialize<S: Serializer>(h: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.to_str().unwrap_or_default())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderValue, D::Error> {
        HeaderValue::from_str(&string(d)?).map_err(|_| D::Error::custom("not a valid header value"))
    }
}

fn http_uri<E: serde::de::Error>(v: &str) -> Result<Uri, E> {
    match v.parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
            Ok(u)
        }
        _ => Err(E::custom(format!("`{v}` is not an http(s) URL"))),
    }
}

/// Whether a URL field was set (its default is an empty `Uri`, written as "").
pub fn is_set(u: &Uri) -> bool {
    u.authority().is_some()
}

/// An http(s) URL with an authority. Unset (the default) is written as "".
pub mod http_url {
    use super::*;
    pub fn serialize<S: Serializer>(u: &Uri, s: S) -> Result<S::Ok, S::Error> {
        if is_set(u) {
            s.collect_str(u)
        } else {
            s.serialize_str("")
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
        http_uri(&string(d)?)
    }
}

/// An optional http(s) URL.
pub mod opt_http_url {
    use super::*;
    pub fn serialize<S: Serializer>(u: &Option<Uri>, s: S) -> Result<S::Ok, S::Error> {
        match u {
            Some(u) => s.collect_str(u),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
        http_uri(&string(d)?).map(Some)
    }
}

/// An HTTP method, as written (methods are case-sensitive).
pub mod method {
    use super::*;
    pub fn serialize<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let v = string(d)?;
        Method::from_bytes(v.as_bytes())
            .map_err(|_| D::Error::custom(format!("`{v}` is not a method")))
    }
}

/// An optional HTTP method.
pub mod opt_method {
    use super::*;
    pub fn serialize<S: Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_str(m.as_str()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Method>, D::Error> {
        super::method::deserialize(d).map(Some)
    }
}

/// A list of HTTP methods, any case (upper-cased).
pub mod methods {
    use super::*;
    pub fn serialize<S: Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(Method::as_str))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| D::Error::custom(format!("`{m}` is not a method")))
            })
            .collect()
    }
}

/// The JWT algorithm allow-list.
pub mod algorithms {
    use super::*;
    use jsonwebtoken::Algorithm;
    pub fn serialize<S: Serializer>(a: &[Algorithm], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(a.iter().map(|a| format!("{a:?}")))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Algorithm>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|name| {
                name.parse::<Algorithm>().map_err(|_| {
                    D::Error::custom(format!(
                        "`{name}` is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                    ))
                })
            })
            .collect()
    }
}

/// A TOML table of string values as ordered (name, value) pairs.
pub mod string_pairs {
    use super::*;
    pub fn serialize<S: Serializer>(p: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(p.iter().map(|(k, v)| (k, v)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .collect())
    }
}
