//! Anonymous viewers of public topics (`NOTIFYD_PUBLIC_TOPICS`): who the client is, for the
//! per-IP socket cap.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::HttpRequest;

/// The client's address: the TCP peer, or, when the peer is a trusted proxy
/// (`NOTIFYD_TRUSTED_PROXIES`), the last hop of `X-Forwarded-For` — the one that proxy wrote
/// itself. Earlier hops are whatever the client sent and are never trusted.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .last()
        .and_then(|v| v.rsplit(',').next())
        .and_then(parse_hop);
    Some(forwarded.unwrap_or(peer))
}

/// One `X-Forwarded-For` hop: an address, with or without a port, IPv6 with or without
/// brackets (`10.0.0.9`, `10.0.0.9:4711`, `2001:db8::7`, `[2001:db8::7]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })
}

/// The key an anonymous client is counted under: an IPv4 address (also when written as
/// IPv4-mapped IPv6, `::ffff:a.b.c.d`), or an IPv6 address's /64. One IPv6 client (a home, a
/// phone) holds a whole /64 and may pick any address in it, so counting each /128 would not
/// cap it at all.
pub fn client_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn req(peer: &str, xff: Option<&str>) -> HttpRequest {
        let mut r = TestRequest::default().peer_addr(peer.parse().expect("addr"));
        if let Some(x) = xff {
            r = r.insert_header(("x-forwarded-for", x));
        }
        r.to_http_request()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = vec![IpAddr::from([127, 0, 0, 1])];
        let ip = |p, x| client_ip(&req(p, x), &trusted).map(|i| i.to_string());
        assert_eq!(
            ip("127.0.0.1:1", Some("6.6.6.6, 10.0.0.9")),
            Some("10.0.0.9".into())
        );
        assert_eq!(ip("10.1.1.1:1", Some("10.0.0.9")), Some("10.1.1.1".into()));
        assert_eq!(ip("127.0.0.1:1", None), Some("127.0.0.1".into()));
        assert_eq!(ip("127.0.0.1:1", Some("garbage")), Some("127.0.0.1".into()));
    }

    /// Proxies may write a port, or brackets around IPv6 (nginx's `$remote_addr:$remote_port`,
    /// RFC 7239 style): the hop still names the client, not the proxy.
    #[test]
    fn forwarded_hops_with_ports_or_brackets_name_the_client() {
        let trusted = vec![IpAddr::from([127, 0, 0, 1])];
        let ip = |x| client_ip(&req("127.0.0.1:1", Some(x)), &trusted).map(|i| i.to_string());
        assert_eq!(ip("10.0.0.9:4711"), Some("10.0.0.9".into()));
        assert_eq!(ip("[2001:db8::7]:4711"), Some("2001:db8::7".into()));
        assert_eq!(ip("[2001:db8::7]"), Some("2001:db8::7".into()));
        assert_eq!(ip("6.6.6.6, 10.0.0.9:80"), Some("10.0.0.9".into()));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_by_the_ipv4() {
        let key = |s: &str| client_key(s.parse().expect("ip"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(key("10.0.0.1"), "10.0.0.1");
    }
}
