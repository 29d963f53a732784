//! `[forward_auth]`: the decision endpoint for a front proxy (nginx `auth_request`,
//! Envoy `ext_authz`, Traefik `ForwardAuth`). Optional: without it, every path is proxied.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Checker;

/// The decision endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ForwardAuth {
    /// Path on the proxy listener that answers decisions instead of forwarding (this
    /// path, and any path under it: Envoy's `path_prefix` puts the original path after
    /// it). Canonical, starting with `/`.
    pub path: String,
    /// Peers (CIDRs, by the TCP connection's address, never `X-Forwarded-For`) whose
    /// `X-Original-Method`/`X-Original-URI` (nginx) or `X-Forwarded-Method`/
    /// `X-Forwarded-Uri` (Traefik) are believed. From anyone else those headers are
    /// ignored and the request is decided as itself.
    pub trusted_sources: Vec<String>,
    /// Parsed `trusted_sources`.
    #[serde(skip)]
    pub trusted: Vec<(IpAddr, u8)>,
}

impl Default for ForwardAuth {
    fn default() -> Self {
        Self {
            path: "/_auth".into(),
            trusted_sources: vec!["127.0.0.1/32".into(), "::1/128".into()],
            trusted: Vec::new(),
        }
    }
}

impl ForwardAuth {
    pub(super) fn validate(&mut self, c: &mut Checker<'_>) {
        let canonical = crate::path::canonical_path(&self.path).ok();
        if !self.path.starts_with('/')
            || self.path.len() < 2
            || canonical.as_deref() != Some(self.path.trim_end_matches('/'))
        {
            c.fail(format!(
                "forward_auth.path: `{}` must be a canonical path other than /",
                self.path
            ));
        }
        self.path = self.path.trim_end_matches('/').to_string();
        self.trusted.clear();
        for s in &self.trusted_sources {
            match parse_cidr(s) {
                Some(n) => self.trusted.push(n),
                None => c.fail(format!(
                    "forward_auth.trusted_sources: `{s}` is not a CIDR like 10.0.0.0/8"
                )),
            }
        }
    }

    /// Is `ip` one of the trusted sources?
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted
            .iter()
            .any(|(net, bits)| in_net(ip, *net, *bits))
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, b) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = a.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = if b.is_empty() {
        max
    } else {
        b.trim().parse().ok()?
    };
    (bits <= max).then_some((ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}
