//! Who the client is: the socket peer, or, behind trusted proxies, the address they report.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client's IP: the peer, unless the peer is a trusted proxy, in which case the right-most
/// address in X-Forwarded-For that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(list) = value.to_str() else {
            return client;
        };
        for entry in list.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client; // garbage: stop at the last address we could vouch for
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    client
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = client_ip(
            "198.51.100.7".parse().unwrap(),
            &headers(&["1.2.3.4"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_wins() {
        let h = headers(&["6.6.6.6, 203.0.113.5", "10.0.0.2"]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(ip.to_string(), "203.0.113.5");
    }

    #[test]
    fn all_trusted_gives_the_leftmost_and_garbage_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            &headers(&["10.9.9.9, 10.0.0.3"]),
            &trusted,
        );
        assert_eq!(ip.to_string(), "10.9.9.9");
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            &headers(&["1.1.1.1, bogus, 10.0.0.3"]),
            &trusted,
        );
        assert_eq!(ip.to_string(), "10.0.0.3");
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        assert!(is_trusted(
            "::ffff:10.1.1.1".parse().unwrap(),
            &nets(&["10.0.0.0/8"])
        ));
    }
}
