//! Push endpoints are URLs a browser hands us, so a user could name any address: checked
//! against server-side request forgery (contract §10). An endpoint must be `https:` and must not
//! be, or resolve to, a loopback, private, link-local (or unspecified, multicast) address. It
//! is checked when subscribed (`check` and `resolve_public`) and again whenever a push opens a
//! connection: the push client resolves host names only through `PublicOnly`, so a name that
//! was public when subscribed and points inside later (DNS rebinding) is refused then.
//! `NOTIFYD_PUSH_ALLOW_INSECURE=1` lifts all of it (tests with a local endpoint).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// Why a host is refused once resolved (also how the push client's error is recognised).
pub const REFUSED: &str = "must not resolve to a loopback, private or link-local address";
/// Longest endpoint accepted (push services' URLs are a few hundred characters).
pub const MAX_ENDPOINT_BYTES: usize = 2048;
/// How long resolving an endpoint's host may take at subscription.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// The endpoint as a URL, if its form is allowed (scheme, no credentials, no inside IP literal).
pub fn check(endpoint: &str, allow_insecure: bool) -> Result<Url, String> {
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(format!("must be at most {MAX_ENDPOINT_BYTES} bytes"));
    }
    let url = Url::parse(endpoint).map_err(|e| format!("is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        _ => return Err("must be an https: URL".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let Some(host) = url.host() else {
        return Err("must name a host".into());
    };
    if !allow_insecure {
        let ip = match host {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(d)
                if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
            {
                return Err("must not be a loopback host".into())
            }
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = ip.filter(|ip| !is_public(*ip)) {
            return Err(format!(
                "must not be a loopback, private or link-local address ({ip})"
            ));
        }
    }
    Ok(url)
}

/// Resolves the endpoint's host (bounded) and refuses it unless every address is public.
pub async fn resolve_public(url: &Url, allow_insecure: bool) -> Result<(), String> {
    if allow_insecure {
        return Ok(());
    }
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(()); // an IP literal: `check` looked at it
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::time::timeout(RESOLVE_WAIT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| "its host could not be resolved in time".to_string())?
        .map_err(|_| "its host does not resolve".to_string())?;
    public_only(addrs.collect()).map(|_| ())
}

fn public_only(addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    if addrs.is_empty() {
        return Err("its host does not resolve".into());
    }
    match addrs.iter().find(|a| !is_public(a.ip())) {
        Some(a) => Err(format!("{REFUSED} ({})", a.ip())),
        None => Ok(addrs),
    }
}

/// Whether an address is one a push service may have: not loopback, private, link-local,
/// unspecified, multicast, broadcast, shared (100.64/10) or documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [b0, b1, ..] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_documentation()
                || b0 == 0
                || b0 >= 240 // reserved
                || (b0 == 100 && (64..128).contains(&b1)) // shared (CGNAT)
                || (b0 == 198 && (18..20).contains(&b1)) // benchmarking
                || (b0 == 192 && b1 == 0 && a.octets()[2] == 0)) // IETF protocol assignments
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = a.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // Addresses that carry an IPv4 one: NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4
            // (2002::/16) and the deprecated IPv4-compatible ::a.b.c.d: as public as it is.
            if seg[0] == 0x64 && seg[1] == 0xff9b {
                return is_public(embedded(seg[6], seg[7]));
            }
            if seg[0] == 0x2002 {
                return is_public(embedded(seg[1], seg[2]));
            }
            if seg[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified() {
                return is_public(embedded(seg[6], seg[7]));
            }
            let s0 = seg[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00 // unique local (private)
                || (s0 & 0xffc0) == 0xfe80 // link-local
                || (s0 & 0xffc0) == 0xfec0 // site-local
                || (s0 == 0x2001 && seg[1] == 0x0db8)) // documentation
        }
    }
}

/// The push client's resolver: a host name that resolves to any address inside is refused
/// at connection time, whatever it resolved to when it was subscribed.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = tokio::time::timeout(RESOLVE_WAIT, tokio::net::lookup_host((host, 0)))
                .await
                .map_err(|_| -> Box<dyn std::error::Error + Send + Sync> {
                    "resolving timed out".into()
                })??;
            let addrs = public_only(addrs.collect()).map_err(
                |e| -> Box<dyn std::error::Error + Send + Sync> {
                    metrics::counter!("notifyd_push_failed_total", "reason" => "endpoint_refused")
                        .increment(1);
                    e.into()
                },
            )?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_endpoints_outside_are_accepted() {
        for ok in [
            "https://fcm.googleapis.com/fcm/send/abc",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://8.8.8.8/x",
            "https://[2001:4860:4860::8888]/x",
            "https://[64:ff9b::808:808]/x",
        ] {
            assert!(check(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://push.example.com/x",
            "ftp://push.example.com/x",
            "https://user:pw@push.example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://172.16.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://0.0.0.0/x",
            "https://100.64.0.1/x",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[64:ff9b::a00:1]/x",
            "https://[2002:a00:1::]/x",
            "https://[::10.0.0.1]/x",
            "https://[fec0::1]/x",
            "https://240.0.0.1/x",
            "https://198.18.0.1/x",
            "https://2130706433/x",
            "https://0x7f.1/x",
            "https://localhost/x",
            "https://a.localhost/x",
            "not a url",
        ] {
            assert!(check(bad, false).is_err(), "{bad}");
        }
        assert!(check("http://127.0.0.1:9/x", true).is_ok());
        assert!(check(&format!("https://x.com/{}", "a".repeat(3000)), false).is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused() {
        let url = check("https://localhost.:1/x", false);
        // `localhost.` (a trailing dot) passes the name check but resolves to loopback.
        if let Ok(url) = url {
            assert!(resolve_public(&url, false).await.is_err());
        }
        assert!(public_only(vec!["127.0.0.1:443".parse().unwrap()]).is_err());
        assert!(public_only(vec![
            "8.8.8.8:443".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap()
        ])
        .is_err());
        assert!(public_only(vec!["8.8.8.8:443".parse().unwrap()]).is_ok());
    }
}
