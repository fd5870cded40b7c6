//! Client addresses (pure): who a request is from when it came through trusted proxies, and
//! the grouping of addresses that limits apply to (an IPv6 host owns a whole /64).
//!
//! The client address is used for rate limits, the engine's per-client history and the audit
//! log; never for authorisation.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The address limits are keyed by: IPv4 as is, IPv6 by its /64 (IPv4-mapped as IPv4).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// The older `trust_forwarded_for` switch: every peer's headers are believed, so the last
    /// entry is the client.
    any_peer: bool,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            any_peer: false,
        }
    }

    /// The proxies of a configuration (built once per configuration, not per request).
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            nets: server.trusted_proxies.clone(),
            any_peer: server.trust_forwarded_for,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let mapped = limit_key(ip);
        self.nets
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&mapped))
    }

    /// Whether forwarding headers from `peer` are believed.
    pub fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        self.any_peer || peer.is_none_or(|p| self.contains(p))
    }

    /// The client of a request that arrived from `peer` (`None`: a unix socket, which only a
    /// local proxy can reach, so it counts as trusted) with these `Forwarded` (RFC 7239) and
    /// `X-Forwarded-For` field lines. Headers are believed only from a trusted peer; then the
    /// hops are read from the right, and the first one that is not a trusted proxy is the
    /// client. `Forwarded` wins when both are present. An obfuscated or unknown hop (RFC 7239
    /// §6) ends the walk: its client cannot be known, and the last known hop is used.
    pub fn client(
        &self,
        peer: Option<IpAddr>,
        forwarded: &[&str],
        x_forwarded_for: &[&str],
    ) -> Option<IpAddr> {
        if !self.trusts_peer(peer) {
            return peer;
        }
        let hops = if forwarded.is_empty() {
            x_forwarded_for
                .iter()
                .flat_map(|l| l.split(','))
                .map(|h| parse_hop(h.trim()))
                .collect::<Vec<_>>()
        } else {
            forwarded
                .iter()
                .flat_map(|l| rfc7239::parse(l))
                .map(|n| match n {
                    Ok(node) => match node.forwarded_for {
                        Some(rfc7239::NodeIdentifier {
                            name: rfc7239::NodeName::Ip(ip),
                            ..
                        }) => Some(ip),
                        _ => None,
                    },
                    Err(_) => None,
                })
                .collect::<Vec<_>>()
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.contains(*ip) => client = Some(*ip),
                Some(ip) => return Some(*ip),
                None => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(h: &str) -> Option<IpAddr> {
    if let Ok(ip) = h.parse() {
        return Some(ip);
    }
    if let Ok(sa) = h.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    h.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let p = proxies();
        let c = p.client(Some(ip("203.0.113.9")), &[], &["198.51.100.1"]);
        assert_eq!(c, Some(ip("203.0.113.9")));
        let c = p.client(Some(ip("203.0.113.9")), &["for=198.51.100.1"], &[]);
        assert_eq!(c, Some(ip("203.0.113.9")));
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let p = proxies();
        // A spoofed first entry is not believed: the proxy appended the real address.
        let c = p.client(
            Some(ip("127.0.0.1")),
            &[],
            &["6.6.6.6, 198.51.100.7, 10.1.2.3"],
        );
        assert_eq!(c, Some(ip("198.51.100.7")));
        // Several field lines form one list, in order.
        let c = p.client(Some(ip("10.0.0.1")), &[], &["6.6.6.6", "198.51.100.8"]);
        assert_eq!(c, Some(ip("198.51.100.8")));
    }

    #[test]
    fn forwarded_wins_and_understands_ipv6_and_ports() {
        let p = proxies();
        let c = p.client(
            Some(ip("::1")),
            &[r#"for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711""#],
            &["198.51.100.1"],
        );
        assert_eq!(c, Some(ip("2001:db8:cafe::17")));
        let c = p.client(Some(ip("::1")), &[], &["[2001:db8::5]:443", "192.0.2.1:80"]);
        assert_eq!(c, Some(ip("192.0.2.1")));
    }

    #[test]
    fn all_hops_trusted_or_obfuscated_fall_back_to_the_last_known() {
        let p = proxies();
        let c = p.client(Some(ip("127.0.0.1")), &[], &["10.0.0.5, 10.0.0.6"]);
        assert_eq!(c, Some(ip("10.0.0.5")));
        let c = p.client(Some(ip("127.0.0.1")), &["for=_hidden, for=10.0.0.9"], &[]);
        assert_eq!(c, Some(ip("10.0.0.9")));
        let c = p.client(Some(ip("127.0.0.1")), &[], &["garbage"]);
        assert_eq!(c, Some(ip("127.0.0.1")));
        // A unix-socket peer is a local proxy: its headers are believed.
        let c = p.client(None, &[], &["198.51.100.3"]);
        assert_eq!(c, Some(ip("198.51.100.3")));
        assert_eq!(p.client(None, &[], &[]), None);
    }

    #[test]
    fn the_older_switch_believes_every_peer_s_last_entry() {
        let cfg = crate::config::ServerConfig {
            trust_forwarded_for: true,
            ..Default::default()
        };
        let p = TrustedProxies::from_config(&cfg);
        let c = p.client(Some(ip("203.0.113.9")), &[], &["6.6.6.6, 198.51.100.4"]);
        assert_eq!(c, Some(ip("198.51.100.4")));
    }

    #[test]
    fn ipv6_hosts_are_grouped_by_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }
}
