//! The client's IP address: the TCP peer, unless the peer is a proxy listed in
//! `TRUSTED_PROXIES`; then `X-Forwarded-For` is read from the right, skipping our
//! own proxies, and the first address they did not add is the client. Entries left
//! of that one are the client's own claims and are never believed.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|net| net.contains(&ip))
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A garbled hop ends the chain: what lies left of it cannot be trusted.
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as plain IPv4, so one client is
/// one principal whichever socket family reached us.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let ip = proxies(&["10.0.0.0/8"]).client_ip("203.0.113.9".parse().unwrap(), &with_xff(&["1.1.1.1"]));
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_proxy_chain_is_walked_from_the_right() {
        let p = proxies(&["10.0.0.0/8"]);
        let peer = "10.0.0.2".parse().unwrap();
        // The client claims 6.6.6.6; the first proxy saw 198.51.100.7.
        let ip = p.client_ip(peer, &with_xff(&["6.6.6.6, 198.51.100.7", "10.0.0.1"]));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(p.client_ip(peer, &HeaderMap::new()), peer, "no header: the proxy itself");
        assert_eq!(p.client_ip(peer, &with_xff(&["garbage"])), peer);
    }

    #[test]
    fn mapped_ipv6_peers_are_their_ipv4_address() {
        let ip = proxies(&[]).client_ip("::ffff:192.0.2.1".parse().unwrap(), &HeaderMap::new());
        assert_eq!(ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
