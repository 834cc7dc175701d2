//! Typed configuration, read from the environment in one place (contract §1).

use std::time::Duration;

use anyhow::{bail, Context};

/// The secret used by `serve --dev` only. Logged loudly at start-up.
pub const DEV_JWT_SECRET: &str = "notifyd-dev-secret-do-not-use-in-production";

/// Upper bound of `NOTIFYD_BROADCAST_BATCH`: one batch's transaction must stay short.
pub const MAX_BROADCAST_BATCH: i64 = 10_000;

#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: String,
    /// `None` = single-node mode with the in-process broker.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel this deployment uses (lets tests and tenants share a Redis).
    pub redis_prefix: String,
    pub bind: String,
    pub jwt_secret: String,
    /// `(service name, key)` pairs accepted on the internal API.
    pub service_keys: Vec<(String, String)>,
    pub node_id: String,
    pub relay_enabled: bool,
    /// `None` = any origin may open a WebSocket and any origin is echoed by CORS on the user API
    /// (dev only: start-up logs a warning).
    pub allowed_origins: Option<Vec<String>>,
    pub event_retention: Duration,
    pub heartbeat: Duration,
    /// `NOTIFYD_MAX_SOCKETS_PER_USER`: WebSockets one user may hold on one node (contract §7).
    pub max_sockets_per_user: usize,
    /// `NOTIFYD_WS_MAX_JOINING`: WebSocket handshakes this node takes at once, each counted from
    /// its request until its `hello` was sent (auth, actor, catch-up read). Beyond it a handshake
    /// is closed at once with 1013 and a `retry_after`, before any auth or database work.
    pub ws_max_joining: usize,
    pub dev: bool,
    pub db_pool_size: usize,
    pub max_body_bytes: usize,
    /// How often the relay polls the outbox when nothing woke it.
    pub relay_poll: Duration,
    /// How often a gateway compares its users' seqs with the database (catches a lost last event).
    pub audit_interval: Duration,
    /// `NOTIFYD_RELAY_BATCH`: outbox entries per relay transaction (one PUBLISH pipeline).
    pub relay_batch: i64,
    /// `NOTIFYD_RELAY_PARTITIONS`: the outbox is relayed in this many partitions by user (topic)
    /// hash, each with its own leader; every process must use the same number.
    pub relay_partitions: u32,
    pub log_json: bool,
    /// Server-side `statement_timeout` on every pooled/background connection.
    pub db_statement_timeout: Duration,
    /// Server-side `lock_timeout` on every pooled/background connection.
    pub db_lock_timeout: Duration,
    /// Server-side `idle_in_transaction_session_timeout` on every connection.
    pub db_idle_in_transaction_timeout: Duration,
    /// Bound on every database call of the relay (leader and stand-by); the leader's session
    /// also gets a server-side `idle_session_timeout` derived from it (see outbox::relay).
    pub relay_db_timeout: Duration,
    /// `NOTIFYD_DB_REQUEST_TIMEOUT`: bound on one request's (or WebSocket command's) database
    /// work, checked on our side: a silent connection (half-open) answers 503 and is discarded.
    pub db_request_timeout: Duration,
    /// How often the housekeeper prunes expired events and idempotency keys.
    pub housekeeping_interval: Duration,
    /// Rows per housekeeping DELETE.
    pub housekeeping_batch: i64,
    /// `NOTIFYD_PUBLIC_TOPICS`: glob patterns anyone may subscribe to, also without a token
    /// (contract §8). Empty = no anonymous sockets.
    pub public_topics: Vec<String>,
    /// `NOTIFYD_TOPIC_RETAIN`: how long a topic's retained value is kept unless replaced.
    pub topic_retain: Duration,
    /// `NOTIFYD_MAX_ANON_SOCKETS_PER_IP`: anonymous WebSockets one client IP may hold per node.
    pub max_anon_sockets_per_ip: usize,
    /// `NOTIFYD_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` (last hop) names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `NOTIFYD_BROADCAST_BATCH`: recipients per announcement batch (one transaction, which
    /// holds those users' counter rows until it commits).
    pub broadcast_batch: i64,
    /// `NOTIFYD_MAX_RUNNING_BROADCASTS`: announcements one service may have running at once.
    pub max_running_broadcasts: i64,
}

impl Settings {
    /// Defaults for everything, pointed at the given database (used by tests and as the base of `from_env`).
    pub fn new(database_url: impl Into<String>) -> Self {
        Settings {
            database_url: database_url.into(),
            redis_url: None,
            redis_prefix: "notifyd:".into(),
            bind: "127.0.0.1:8080".into(),
            jwt_secret: DEV_JWT_SECRET.into(),
            service_keys: vec![],
            node_id: default_node_id(),
            relay_enabled: true,
            allowed_origins: None,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            heartbeat: Duration::from_secs(25),
            max_sockets_per_user: 32,
            ws_max_joining: 256,
            dev: false,
            db_pool_size: 16,
            max_body_bytes: 32 * 1024 * 1024,
            relay_poll: Duration::from_millis(500),
            audit_interval: Duration::from_secs(10),
            // 2,000, not 500: draining a 200k backlog, back to back on the same (loaded) machine,
            // 1.2-1.5x the events/s and ~30% less relay CPU per event (docs/benchmarks.md).
            relay_batch: 2000,
            relay_partitions: 1,
            log_json: false,
            db_statement_timeout: Duration::from_secs(30),
            db_lock_timeout: Duration::from_secs(10),
            db_idle_in_transaction_timeout: Duration::from_secs(60),
            relay_db_timeout: Duration::from_secs(10),
            db_request_timeout: Duration::from_secs(10),
            housekeeping_interval: Duration::from_secs(10),
            housekeeping_batch: 50_000,
            public_topics: vec![],
            topic_retain: Duration::from_secs(24 * 3600),
            max_anon_sockets_per_ip: 64,
            // A reverse proxy on the same host (the usual nginx in front): its peer address is
            // loopback, and only it can have written the last X-Forwarded-For hop.
            trusted_proxies: vec![
                std::net::IpAddr::from([127, 0, 0, 1]),
                std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            // 500: the same rows/s as 2,000 or 10,000 in the benchmark, with the shortest stall of
            // other writers (docs/benchmarks.md, Announcements).
            broadcast_batch: 500,
            max_running_broadcasts: 16,
        }
    }

    /// Reads the environment. `dev` = `serve --dev`: a fixed secret and the `dev:dev` service key.
    pub fn from_env(dev: bool, need_secret: bool) -> anyhow::Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut s = Settings::new(
            env("DATABASE_URL").unwrap_or_else(|| "postgres://localhost/notifyd".into()),
        );
        s.dev = dev;
        s.redis_url = env("REDIS_URL");
        if let Some(p) = env("NOTIFYD_REDIS_PREFIX") {
            s.redis_prefix = p;
        }
        if let Some(b) = env("NOTIFYD_BIND") {
            s.bind = b;
        }
        match env("NOTIFYD_JWT_SECRET") {
            // Dev mode signs anyone's tokens at `/demo/token`: with a real secret that would be
            // a token mint for production. Only the public dev secret (already in `s`) is used;
            // `cli` warns when one was set and ignored (`dev_ignores_env_secret`).
            Some(_) if dev => {}
            Some(secret) => s.jwt_secret = secret,
            None if dev || !need_secret => {}
            None => bail!("NOTIFYD_JWT_SECRET is not set: refusing to start (use `serve --dev` for a local demo)"),
        }
        if let Some(keys) = env("NOTIFYD_SERVICE_KEYS") {
            s.service_keys = parse_service_keys(&keys)?;
        }
        if dev && !s.service_keys.iter().any(|(n, _)| n == "dev") {
            s.service_keys.push(("dev".into(), "dev".into()));
        }
        if let Some(n) = env("NOTIFYD_NODE_ID") {
            s.node_id = n;
        }
        if let Some(r) = env("NOTIFYD_RELAY") {
            s.relay_enabled = match r.as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                other => bail!("NOTIFYD_RELAY must be on or off, not {other:?}"),
            };
        }
        if let Some(o) = env("NOTIFYD_ALLOWED_ORIGINS") {
            s.allowed_origins = Some(
                o.split(',')
                    .map(|x| x.trim().trim_end_matches('/').to_string())
                    .filter(|x| !x.is_empty())
                    .collect(),
            );
        }
        if let Some(r) = env("NOTIFYD_EVENT_RETENTION") {
            s.event_retention = parse_duration(&r).context("NOTIFYD_EVENT_RETENTION")?;
        }
        if let Some(h) = env("NOTIFYD_HEARTBEAT") {
            s.heartbeat = parse_duration(&h).context("NOTIFYD_HEARTBEAT")?;
        }
        if let Some(n) = env("NOTIFYD_MAX_SOCKETS_PER_USER") {
            s.max_sockets_per_user = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("NOTIFYD_MAX_SOCKETS_PER_USER must be a positive integer")?;
        }
        if let Some(n) = env("NOTIFYD_WS_MAX_JOINING") {
            s.ws_max_joining = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("NOTIFYD_WS_MAX_JOINING must be a positive integer")?;
        }
        if let Some(a) = env("NOTIFYD_AUDIT_INTERVAL") {
            s.audit_interval = parse_duration(&a).context("NOTIFYD_AUDIT_INTERVAL")?;
        }
        if let Some(p) = env("NOTIFYD_DB_POOL_SIZE") {
            s.db_pool_size = p.parse().context("NOTIFYD_DB_POOL_SIZE")?;
        }
        if let Some(m) = env("NOTIFYD_MAX_BODY_BYTES") {
            s.max_body_bytes = m.parse().context("NOTIFYD_MAX_BODY_BYTES")?;
        }
        s.log_json = env("NOTIFYD_LOG_FORMAT").is_some_and(|f| f == "json");
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                bail!("{name} must be more than 0");
            }
            Ok(d)
        };
        // 0 = do not set it (the server's own default applies; e.g. behind a pooler that
        // refuses the `options` startup parameter).
        for (name, field) in [
            ("NOTIFYD_DB_STATEMENT_TIMEOUT", &mut s.db_statement_timeout),
            ("NOTIFYD_DB_LOCK_TIMEOUT", &mut s.db_lock_timeout),
            (
                "NOTIFYD_DB_IDLE_IN_TRANSACTION_TIMEOUT",
                &mut s.db_idle_in_transaction_timeout,
            ),
        ] {
            if let Some(v) = env(name) {
                *field = parse_duration(&v).context(name.to_string())?;
            }
        }
        for (name, field) in [
            ("NOTIFYD_RELAY_DB_TIMEOUT", &mut s.relay_db_timeout),
            ("NOTIFYD_DB_REQUEST_TIMEOUT", &mut s.db_request_timeout),
            (
                "NOTIFYD_HOUSEKEEPING_INTERVAL",
                &mut s.housekeeping_interval,
            ),
        ] {
            if let Some(v) = env(name) {
                *field = positive(name, parse_duration(&v).context(name.to_string())?)?;
            }
        }
        if let Some(b) = env("NOTIFYD_RELAY_BATCH") {
            s.relay_batch = b
                .parse()
                .ok()
                .filter(|b| (1..=100_000).contains(b))
                .context("NOTIFYD_RELAY_BATCH must be an integer from 1 to 100000")?;
        }
        if let Some(p) = env("NOTIFYD_RELAY_PARTITIONS") {
            s.relay_partitions = p
                .parse()
                .ok()
                .filter(|p| (1..=64).contains(p))
                .context("NOTIFYD_RELAY_PARTITIONS must be an integer from 1 to 64")?;
        }
        if let Some(b) = env("NOTIFYD_HOUSEKEEPING_BATCH") {
            s.housekeeping_batch = b.parse().context("NOTIFYD_HOUSEKEEPING_BATCH")?;
            if s.housekeeping_batch < 1 {
                bail!("NOTIFYD_HOUSEKEEPING_BATCH must be at least 1");
            }
        }
        if let Some(p) = env("NOTIFYD_PUBLIC_TOPICS") {
            s.public_topics = comma_list(&p);
        } else if dev {
            // The demo's product page (`/demo/products`) is for shoppers without a token.
            s.public_topics = vec!["product:*".into()];
        }
        if let Some(r) = env("NOTIFYD_TOPIC_RETAIN") {
            s.topic_retain = positive(
                "NOTIFYD_TOPIC_RETAIN",
                parse_duration(&r).context("NOTIFYD_TOPIC_RETAIN")?,
            )?;
        }
        if let Some(n) = env("NOTIFYD_MAX_ANON_SOCKETS_PER_IP") {
            s.max_anon_sockets_per_ip = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("NOTIFYD_MAX_ANON_SOCKETS_PER_IP must be a positive integer")?;
        }
        if let Some(p) = env("NOTIFYD_TRUSTED_PROXIES") {
            s.trusted_proxies = parse_ips(&p)?;
        }
        if let Some(b) = env("NOTIFYD_BROADCAST_BATCH") {
            s.broadcast_batch = b
                .parse()
                .ok()
                .filter(|n| (1..=MAX_BROADCAST_BATCH).contains(n))
                .with_context(|| {
                    format!("NOTIFYD_BROADCAST_BATCH must be 1 to {MAX_BROADCAST_BATCH}")
                })?;
        }
        if let Some(n) = env("NOTIFYD_MAX_RUNNING_BROADCASTS") {
            s.max_running_broadcasts = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("NOTIFYD_MAX_RUNNING_BROADCASTS must be a positive integer")?;
        }
        Ok(s)
    }

    /// Whether anyone, also without a token, may subscribe to `topic`.
    pub fn is_public_topic(&self, topic: &str) -> bool {
        self.public_topics
            .iter()
            .any(|p| crate::auth::jwt::glob_match(p, topic))
    }

    /// `serve --dev` with `NOTIFYD_JWT_SECRET` in the environment: the secret was ignored (see
    /// `from_env`) and start-up says so loudly.
    pub fn dev_ignores_env_secret(&self) -> bool {
        self.dev && std::env::var("NOTIFYD_JWT_SECRET").is_ok_and(|v| !v.trim().is_empty())
    }

    pub fn user_channel(&self, user: &str) -> String {
        format!("{}u:{}", self.redis_prefix, user)
    }

    pub fn topic_channel(&self, topic: &str) -> String {
        format!("{}t:{}", self.redis_prefix, topic)
    }

    /// The topic a channel named by `topic_channel` carries, if it is one.
    pub fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.redis_prefix.as_str())?
            .strip_prefix("t:")
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{}-{}", host, std::process::id())
}

pub fn parse_service_keys(raw: &str) -> anyhow::Result<Vec<(String, String)>> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((name, key)) if !name.is_empty() && !key.is_empty() => {
                Ok((name.to_string(), key.to_string()))
            }
            _ => bail!("NOTIFYD_SERVICE_KEYS: expected name:key, got {pair:?}"),
        })
        .collect()
}

fn comma_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// `NOTIFYD_TRUSTED_PROXIES`: comma-separated IP addresses (`none` = trust no proxy).
pub fn parse_ips(raw: &str) -> anyhow::Result<Vec<std::net::IpAddr>> {
    if raw.trim() == "none" {
        return Ok(vec![]);
    }
    comma_list(raw)
        .iter()
        .map(|ip| {
            ip.parse()
                .with_context(|| format!("NOTIFYD_TRUSTED_PROXIES: {ip:?} is not an IP address"))
        })
        .collect()
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    let (num, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("not a duration: {raw:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("unknown duration unit in {raw:?} (use ms, s, m, h or d)"),
    };
    Ok(Duration::from_secs(secs))
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
    }

    #[test]
    fn topic_channels_round_trip() {
        let s = Settings::new("postgres://x/y");
        assert_eq!(
            s.topic_of_channel(&s.topic_channel("product:1")),
            Some("product:1")
        );
        assert_eq!(s.topic_of_channel(&s.user_channel("42")), None);
        assert_eq!(s.topic_of_channel("other:t:x"), None);
    }

    #[test]
    fn trusted_proxies_are_ip_addresses() {
        assert_eq!(parse_ips("10.0.0.1, ::1").unwrap().len(), 2);
        assert!(parse_ips("none").unwrap().is_empty());
        assert!(parse_ips("proxy.local").is_err());
    }

    #[test]
    fn service_keys_need_name_and_key() {
        assert_eq!(
            parse_service_keys("a:1, b:2").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert!(parse_service_keys("nokey").is_err());
        assert!(parse_service_keys(":k").is_err());
    }

    /// Defect 9: `serve --dev` kept a real secret from the environment, and `/demo/token` then
    /// minted tokens for it while the log said the public dev secret was in use.
    #[test]
    fn dev_mode_ignores_a_jwt_secret_from_the_environment() {
        // The only test that touches the process environment.
        std::env::set_var("NOTIFYD_JWT_SECRET", "a-real-production-secret");
        let dev = Settings::from_env(true, true);
        let prod = Settings::from_env(false, true);
        std::env::remove_var("NOTIFYD_JWT_SECRET");
        assert_eq!(dev.expect("dev settings").jwt_secret, DEV_JWT_SECRET);
        assert_eq!(
            prod.expect("prod settings").jwt_secret,
            "a-real-production-secret"
        );
    }
}
