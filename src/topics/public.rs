//! Anonymous viewers of public topics (`NOTIFYD_PUBLIC_TOPICS`): who the client is, for the
//! per-IP socket cap.

use std::net::IpAddr;

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
        .and_then(|hop| hop.trim().parse::<IpAddr>().ok());
    Some(forwarded.unwrap_or(peer))
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
}
