//! Parsers for the kinds of values settings take. Each answers a message that says what was
//! expected, never echoing a value it cannot know to be harmless (the caller adds the value
//! for settings that are not secret).

use std::net::IpAddr;
use std::time::Duration;

/// `90`, `90s`, `15m`, `1h`, `7d`, `250ms`. Also used by `notifyd token --ttl`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a duration: {raw:?} (use e.g. 250ms, 90s, 15m, 1h, 7d)"))?;
    let per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "unknown duration unit in {raw:?} (use ms, s, m, h or d)"
            ))
        }
    };
    // A huge number times its unit must not overflow (a panic in a debug build).
    n.checked_mul(per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {raw:?} is too long"))
}

/// The shortest exact form of `d` in the units `parse_duration` reads (`1h`, not `3600s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.is_zero() {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    for (unit, per) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s.is_multiple_of(per) {
            return format!("{}{unit}", s / per);
        }
    }
    format!("{s}s")
}

/// A duration within `min..=max`; `zero_unsets`: `0` is accepted as well (and means "not set").
pub fn duration_in(
    raw: &str,
    min: Duration,
    max: Duration,
    zero_unsets: bool,
) -> Result<Duration, String> {
    let d = parse_duration(raw)?;
    if (zero_unsets && d.is_zero()) || (min..=max).contains(&d) {
        Ok(d)
    } else {
        Err(format!("must be {}", duration_range(min, max, zero_unsets)))
    }
}

pub fn duration_range(min: Duration, max: Duration, zero_unsets: bool) -> String {
    let range = format!("{} to {}", format_duration(min), format_duration(max));
    if zero_unsets {
        format!("0 (not set) or {range}")
    } else {
        range
    }
}

/// A whole number within `min..=max`.
pub fn count_in(raw: &str, min: u64, max: u64) -> Result<u64, String> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
}

/// An address to listen on, `IP:port`, in its canonical form; `example` goes into the error.
pub fn listen_addr(raw: &str, example: &str) -> Result<String, String> {
    raw.trim()
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.to_string())
        .map_err(|_| format!("must be an IP address and port, e.g. {example}"))
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
pub fn switch(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err("must be on or off".into()),
    }
}

/// Non-empty items of a comma-separated list, trimmed.
pub fn comma_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Visible ASCII only (no spaces, no control characters): safe in logs, keys and labels.
pub fn visible_ascii(raw: &str) -> bool {
    raw.bytes().all(|b| b.is_ascii_graphic())
}

/// At most this many service keys: each name is a metric label value.
pub const MAX_SERVICES: usize = 100;
/// The `service` label of metrics whose caller is not a service; no service may be named so.
pub const NO_SERVICE: &str = "none";

/// `name:key,name:key`. Names label metrics and logs, so they are short and plain; keys are
/// secrets and never appear in a message.
pub fn service_keys(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = vec![];
    for (i, pair) in comma_list(raw).iter().enumerate() {
        let n = i + 1;
        let Some((name, key)) = pair.split_once(':') else {
            return Err(format!("pair {n} is not name:key"));
        };
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(format!(
                "pair {n}: a service name is 1 to 64 of A-Z a-z 0-9 _ . -"
            ));
        }
        if name == NO_SERVICE {
            return Err(format!(
                "pair {n}: the service name {NO_SERVICE:?} is reserved"
            ));
        }
        if !(1..=1024).contains(&key.len()) || !visible_ascii(key) {
            return Err(format!(
                "service {name:?}: a key is 1 to 1024 visible ASCII characters"
            ));
        }
        if out.iter().any(|(other, _)| other == name) {
            return Err(format!("service {name:?} is listed twice"));
        }
        if out.iter().any(|(_, other)| other == key) {
            return Err(format!(
                "service {name:?} has the same key as another service"
            ));
        }
        out.push((name.to_string(), key.to_string()));
    }
    if out.len() > MAX_SERVICES {
        return Err(format!("at most {MAX_SERVICES} services"));
    }
    Ok(out)
}

/// `NOTIFYD_TRUSTED_PROXIES`: comma-separated IP addresses (`none` = trust no proxy).
pub fn ips(raw: &str) -> Result<Vec<IpAddr>, String> {
    if raw.trim() == "none" {
        return Ok(vec![]);
    }
    let list = comma_list(raw);
    if list.len() > 100 {
        return Err("at most 100 addresses".into());
    }
    list.iter()
        .map(|ip| {
            ip.parse()
                .map_err(|_| format!("{ip:?} is not an IP address"))
        })
        .collect()
}

/// `NOTIFYD_ALLOWED_ORIGINS`: `*`, or origins `scheme://host[:port]` (no path), compared as
/// browsers send them (a trailing `/` is dropped).
pub fn origins(raw: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = comma_list(raw)
        .into_iter()
        .map(|o| o.trim_end_matches('/').to_string())
        .collect();
    if list.len() > 100 {
        return Err("at most 100 origins".into());
    }
    for o in &list {
        if o == "*" {
            continue;
        }
        let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#'])
                && visible_ascii(rest)
        });
        if !ok {
            return Err(format!(
                "{o:?} is not an origin (scheme://host[:port], e.g. https://app.example.com)"
            ));
        }
    }
    Ok(list)
}

/// Whether `origin` (an `Origin` header's value) is one of `allowed` (`NOTIFYD_ALLOWED_ORIGINS`
/// as `origins` read it; `*` allows any): the one comparison both the WebSocket handshake
/// (`gateway::ws`) and CORS (`api::cors`) make, so a page is never let through by one and refused
/// by the other. Scheme and host are compared without regard to case: browsers serialise them
/// lowercase (RFC 6454 §6.1), while an operator may write `https://App.Example` and a
/// non-browser client may send any case; the port is digits, compared as they are. A trailing `/`
/// is dropped, as `origins` drops it from the list.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// A PostgreSQL URL (`postgres://` or `postgresql://`) that the driver can read.
pub fn postgres_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let scheme_ok = raw.starts_with("postgres://") || raw.starts_with("postgresql://");
    let usage = "must be a postgres:// URL (postgres://user:password@host:5432/db)";
    if !scheme_ok {
        return Err(usage.into());
    }
    // libpq's TLS parameters are read by `database_url::Ssl` (tokio-postgres knows only some of them).
    let rest = match super::database_url::Ssl::split(raw) {
        Ok((rest, _)) => rest,
        Err(e) => return Err(format!("{usage}: {e:#}")),
    };
    if rest.parse::<tokio_postgres::Config>().is_err() {
        return Err(usage.into());
    }
    Ok(raw.to_string())
}

/// A Redis URL (`redis://`, `rediss://`, `redis+unix://`, `unix://`) that the client can read,
/// or a cluster's seed list (`redis+cluster://h1:p1,h2:p2`, see [`cluster_seeds`]).
pub fn redis_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if let Some(seeds) = cluster_seeds(raw) {
        for seed in seeds? {
            one_redis_url(&seed)?;
        }
        return Ok(raw.to_string());
    }
    one_redis_url(raw)?;
    Ok(raw.to_string())
}

/// The schemes that name a Redis Cluster, and the scheme each seed then gets.
const CLUSTER_SCHEMES: [(&str, &str); 2] = [
    ("redis+cluster://", "redis://"),
    ("rediss+cluster://", "rediss://"),
];

/// `redis+cluster://[user:password@]h1:p1,h2:p2,...[/0][?query]` (`rediss+cluster://` for TLS):
/// the seed nodes as one URL each (`redis://[user:password@]h1:p1[?query]`), all with the
/// credentials and query given once. `None` when `raw` names no cluster. A cluster has only
/// database 0: any other is refused.
pub fn cluster_seeds(raw: &str) -> Option<Result<Vec<String>, String>> {
    let (rest, scheme) = CLUSTER_SCHEMES
        .iter()
        .find_map(|(cluster, one)| Some((raw.strip_prefix(cluster)?, *one)))?;
    Some(split_seeds(rest, scheme))
}

fn split_seeds(rest: &str, scheme: &str) -> Result<Vec<String>, String> {
    let usage = "must be redis+cluster://[user:password@]host:port,host:port,... \
                 (rediss+cluster:// for TLS)";
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let (rest, path) = match rest.split_once('/') {
        Some((r, p)) => (r, p),
        None => (rest, ""),
    };
    if !matches!(path, "" | "0") {
        return Err(format!("{usage}: a cluster has only database 0"));
    }
    let (creds, hosts) = match rest.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}{creds}{h}{query}"))
        .collect();
    if seeds.is_empty() {
        return Err(format!("{usage}: no seed node"));
    }
    Ok(seeds)
}

/// One server's URL, as the redis crate reads it.
fn one_redis_url(raw: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    match raw.into_connection_info() {
        Err(_) => {
            return Err(
                "must be a redis:// URL, or rediss:// for TLS (redis://:password@host:6379/0)"
                    .into(),
            )
        }
        // TLS without checking the certificate is not offered (contract §11).
        Ok(info)
            if matches!(
                info.addr(),
                redis::ConnectionAddr::TcpTls { insecure: true, .. }
            ) =>
        {
            return Err(
                "`#insecure` (TLS without a certificate check) is not supported: give \
                        the CA in NOTIFYD_REDIS_CA_FILE"
                    .into(),
            )
        }
        Ok(_) => {}
    }
    Ok(())
}

/// At most this many public topic patterns; each as long as a topic may be.
const MAX_PATTERNS: usize = 100;
const MAX_PATTERN_CHARS: usize = 200;

/// `NOTIFYD_PUBLIC_TOPICS`: topic globs.
pub fn topic_patterns(raw: &str) -> Result<Vec<String>, String> {
    let list = comma_list(raw);
    if list.len() > MAX_PATTERNS {
        return Err(format!("at most {MAX_PATTERNS} patterns"));
    }
    if let Some(p) = list.iter().find(|p| p.chars().count() > MAX_PATTERN_CHARS) {
        return Err(format!(
            "pattern {p:?} is longer than {MAX_PATTERN_CHARS} characters"
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("-5s").is_err());
        // Overflowed (a panic in debug builds) before.
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn durations_format_in_their_largest_exact_unit() {
        for s in ["250ms", "1s", "90s", "15m", "1h", "7d", "0ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn listen_addresses_are_ip_and_port_in_canonical_form() {
        assert_eq!(
            listen_addr(" 0.0.0.0:8080 ", "x").as_deref(),
            Ok("0.0.0.0:8080")
        );
        assert_eq!(listen_addr("[::1]:8081", "x").as_deref(), Ok("[::1]:8081"));
        assert_eq!(
            listen_addr("localhost:8080", "10.0.0.5:8081"),
            Err("must be an IP address and port, e.g. 10.0.0.5:8081".to_string())
        );
        assert!(listen_addr("0.0.0.0", "x").is_err());
    }

    #[test]
    fn trusted_proxies_are_ip_addresses() {
        assert_eq!(ips("10.0.0.1, ::1").unwrap().len(), 2);
        assert!(ips("none").unwrap().is_empty());
        assert!(ips("proxy.local").is_err());
    }

    #[test]
    fn service_keys_need_a_plain_name_and_a_key_each_distinct() {
        assert_eq!(
            service_keys("a:1, b:2").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        for bad in [
            "nokey", ":k", "a:", "a b:k", "a:1,a:2", "a:k,b:k", "none:k", "a:k y",
        ] {
            assert!(service_keys(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn service_key_errors_never_show_a_key() {
        for bad in ["a:sekrit,b:sekrit", "a:sek rit", "bad name:sekrit"] {
            let e = service_keys(bad).unwrap_err();
            assert!(!e.contains("sekrit") && !e.contains("sek rit"), "{e}");
        }
    }

    #[test]
    fn origins_are_scheme_and_host() {
        assert_eq!(
            origins("https://a.example.com/, http://localhost:3000, *").unwrap(),
            vec!["https://a.example.com", "http://localhost:3000", "*"]
        );
        assert!(origins("a.example.com").is_err());
        assert!(origins("https://a.example.com/path").is_err());
    }

    #[test]
    fn origins_match_without_case_in_scheme_and_host_but_not_by_port_or_suffix() {
        let allowed = origins("https://App.Example, http://localhost:3000").unwrap();
        for yes in [
            "https://app.example",
            "HTTPS://APP.EXAMPLE",
            "https://app.example/",
            "http://LOCALHOST:3000",
        ] {
            assert!(origin_allowed(&allowed, yes), "{yes}");
        }
        for no in [
            "http://app.example",
            "https://app.example:8443",
            "https://app.example.evil",
            "http://localhost:30000",
            "null",
            "",
        ] {
            assert!(!origin_allowed(&allowed, no), "{no}");
        }
        assert!(origin_allowed(&["*".to_string()], "https://any.example"));
    }

    #[test]
    fn urls_are_checked_by_their_clients_parsers() {
        assert!(postgres_url("postgres://u:p@127.0.0.1:5432/db").is_ok());
        assert!(postgres_url("mysql://x/y").is_err());
        assert!(postgres_url("postgres://h:notaport/db").is_err());
        assert!(redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(redis_url("http://127.0.0.1").is_err());
    }

    #[test]
    fn a_cluster_url_gives_one_seed_url_per_node_with_the_credentials() {
        let seeds = cluster_seeds("redis+cluster://u:p@h1:7000,h2:7001/0?protocol=resp3")
            .expect("a cluster")
            .expect("valid");
        assert_eq!(
            seeds,
            [
                "redis://u:p@h1:7000?protocol=resp3",
                "redis://u:p@h2:7001?protocol=resp3"
            ]
        );
        let tls = cluster_seeds("rediss+cluster://h1:7000").expect("a cluster");
        assert_eq!(tls.expect("valid"), ["rediss://h1:7000"]);
        assert!(cluster_seeds("redis://h1:7000").is_none());
        assert!(redis_url("redis+cluster://h1:7000,h2:7001").is_ok());
        assert!(redis_url("redis+cluster://").is_err());
        assert!(redis_url("redis+cluster://h1:7000/3").is_err());
        assert!(redis_url("rediss+cluster://h1:7000/#insecure").is_err());
    }

    #[test]
    fn rediss_is_tls_and_an_unchecked_certificate_is_refused() {
        assert!(redis_url("rediss://cache.example.com:6380/0").is_ok());
        let e = redis_url("rediss://cache.example.com:6380/#insecure").expect_err("refused");
        assert!(e.contains("#insecure"), "{e}");
    }
}
