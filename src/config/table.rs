//! Every setting, in one table: its environment name (the TOML key is derived from it), its
//! default as documented, its range, and how its value is read into `Settings`. The loader
//! (`config::load`) and the test that checks docs/configuration.md both read this table, so
//! the code and the page cannot drift. To add a setting: a field in `Settings`, its default in
//! `Settings::new`, a row here, a row in docs/configuration.md.

use std::time::Duration;

use super::values::{self, duration_range};
use super::Settings;

/// One setting.
pub struct Setting {
    /// The environment variable, e.g. `NOTIFYD_HEARTBEAT`.
    pub env: &'static str,
    pub default: Default,
    /// Its value is never printed: not in errors, not in `Debug`, not in logs.
    pub secret: bool,
    pub kind: Kind,
}

/// A default as docs/configuration.md shows it.
pub enum Default {
    /// A value the setting reads (`25s`); a test checks it is what `Settings::new` holds.
    Value(&'static str),
    /// No value: what happens instead (`unset`, `hostname-pid`, ...).
    Note(&'static str),
}

pub enum Kind {
    Duration {
        min: Duration,
        max: Duration,
        /// `0` is accepted too, and means "not set".
        zero_unsets: bool,
        set: fn(&mut Settings, Duration),
    },
    Count {
        min: u64,
        max: u64,
        set: fn(&mut Settings, u64),
    },
    /// Anything else: `range` says what is accepted, `set` checks and stores it.
    Value {
        range: &'static str,
        set: fn(&mut Settings, &str) -> Result<(), String>,
    },
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.env)
    }
}

impl Setting {
    /// The TOML key: the environment name lowercased, without `NOTIFYD_`.
    pub fn key(&self) -> String {
        self.env
            .strip_prefix("NOTIFYD_")
            .unwrap_or(self.env)
            .to_ascii_lowercase()
    }

    /// What values are accepted, as docs/configuration.md shows it.
    pub fn range(&self) -> String {
        match &self.kind {
            Kind::Duration {
                min,
                max,
                zero_unsets,
                ..
            } => duration_range(*min, *max, *zero_unsets),
            Kind::Count { min, max, .. } => format!("{min} to {max}"),
            Kind::Value { range, .. } => range.to_string(),
        }
    }

    /// Reads `raw` into `s`, or says why it is not accepted.
    pub fn apply(&self, s: &mut Settings, raw: &str) -> Result<(), String> {
        match &self.kind {
            Kind::Duration {
                min,
                max,
                zero_unsets,
                set,
            } => set(s, values::duration_in(raw, *min, *max, *zero_unsets)?),
            Kind::Count { min, max, set } => set(s, values::count_in(raw, *min, *max)?),
            Kind::Value { set, .. } => set(s, raw)?,
        }
        Ok(())
    }

    pub fn find(env_or_key: &str) -> Option<&'static Setting> {
        SETTINGS
            .iter()
            .find(|s| s.env == env_or_key || s.key() == env_or_key)
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const MIN: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86400;

/// The `Count` bounds are small enough for every field's type (`usize`, `i64`, `u32`), so the
/// conversions in the setters below never truncate.
pub static SETTINGS: &[Setting] = &[
    Setting {
        env: "DATABASE_URL",
        default: Default::Value("postgres://localhost/notifyd"),
        secret: true,
        kind: Kind::Value {
            range: "a `postgres://` URL",
            set: |s, v| {
                s.database_url = values::postgres_url(v)?;
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_DATABASE_DIRECT_URL",
        default: Default::Note("`DATABASE_URL`"),
        secret: true,
        kind: Kind::Value {
            range: "a `postgres://` URL",
            set: |s, v| {
                s.database_direct_url = Some(values::postgres_url(v)?);
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_DATABASE_POOLER",
        default: Default::Value("auto"),
        secret: false,
        kind: Kind::Value {
            range: "`auto`, `none` or `transaction`",
            set: |s, v| {
                s.database_pooler = match v.trim() {
                    "auto" => None,
                    "none" => Some(crate::config::database_url::Pooler::None),
                    "transaction" => Some(crate::config::database_url::Pooler::Transaction),
                    _ => return Err("must be `auto`, `none` or `transaction`".into()),
                };
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_DATABASE_REPLICA_URL",
        default: Default::Note("unset"),
        secret: true,
        kind: Kind::Value {
            range: "a `postgres://` URL",
            set: |s, v| {
                s.database_replica_url = Some(values::postgres_url(v)?);
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_REPLICA_MAX_LAG",
        default: Default::Value("1s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(10),
            max: secs(HOUR),
            zero_unsets: false,
            set: |s, d| s.replica_max_lag = d,
        },
    },
    Setting {
        env: "REDIS_URL",
        default: Default::Note("unset"),
        secret: true,
        kind: Kind::Value {
            range: "a `redis://` or `rediss://` URL, or a Redis Cluster's seeds: `redis+cluster://[user:password@]host:port,host:port,...` (`rediss+cluster://` for TLS; database 0 only)",
            set: |s, v| {
                s.redis_url = Some(values::redis_url(v)?);
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_REDIS_CA_FILE",
        default: Default::Note("the system store"),
        secret: false,
        kind: Kind::Value {
            range: "a PEM file",
            set: |s, v| {
                let path = std::path::PathBuf::from(v.trim());
                crate::tls::roots_from_file(&path).map_err(|e| format!("{e:#}"))?;
                s.redis_ca_file = Some(path);
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_REDIS_PREFIX",
        default: Default::Value("notifyd:"),
        secret: false,
        kind: Kind::Value {
            range: "1 to 64 visible ASCII characters",
            set: |s, v| {
                if !(1..=64).contains(&v.len()) || !values::visible_ascii(v) {
                    return Err("must be 1 to 64 visible ASCII characters".into());
                }
                s.redis_prefix = v.to_string();
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_BIND",
        default: Default::Value("127.0.0.1:8080"),
        secret: false,
        kind: Kind::Value {
            range: "IP:port (`[::1]:8080` for IPv6)",
            set: |s, v| {
                s.bind = values::listen_addr(v, "0.0.0.0:8080")?;
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_SERVICE_BIND",
        default: Default::Note("unset"),
        secret: false,
        kind: Kind::Value {
            range: "IP:port, not `NOTIFYD_BIND`'s",
            set: |s, v| {
                s.service_bind = Some(values::listen_addr(v, "10.0.0.5:8081")?);
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_JWT_SECRET",
        default: Default::Note("none"),
        secret: true,
        kind: Kind::Value {
            range: "1 to 4096 bytes; `serve`: 32 or more, not the dev secret",
            set: |s, v| {
                if !(1..=4096).contains(&v.len()) {
                    return Err("must be 1 to 4096 bytes".into());
                }
                s.jwt_secret = v.to_string();
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_SERVICE_KEYS",
        default: Default::Note("none"),
        secret: true,
        kind: Kind::Value {
            range: "up to 100 `name:key` pairs; `serve`: keys of 32 bytes or more, not `dev`",
            set: |s, v| {
                s.service_keys = values::service_keys(v)?;
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_NODE_ID",
        default: Default::Note("hostname-pid"),
        secret: false,
        kind: Kind::Value {
            range: "1 to 128 visible ASCII characters",
            set: |s, v| {
                if !(1..=128).contains(&v.len()) || !values::visible_ascii(v) {
                    return Err("must be 1 to 128 visible ASCII characters".into());
                }
                s.node_id = v.to_string();
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_RELAY",
        default: Default::Value("on"),
        secret: false,
        kind: Kind::Value {
            range: "`on` or `off`",
            set: |s, v| {
                s.relay_enabled = values::switch(v)?;
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_ALLOWED_ORIGINS",
        default: Default::Note("unset = any"),
        secret: false,
        kind: Kind::Value {
            range: "up to 100 origins, or `*`",
            set: |s, v| {
                s.allowed_origins = Some(values::origins(v)?);
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_EVENT_RETENTION",
        default: Default::Value("7d"),
        secret: false,
        kind: Kind::Duration {
            min: secs(MIN),
            max: secs(365 * DAY),
            zero_unsets: false,
            set: |s, d| s.event_retention = d,
        },
    },
    Setting {
        env: "NOTIFYD_EVENT_PARTITION_WIDTH",
        default: Default::Value("1d"),
        secret: false,
        kind: Kind::Duration {
            // Shorter than a day only for tests and benchmarks that watch days pass in minutes.
            min: secs(10),
            max: secs(7 * DAY),
            zero_unsets: false,
            set: |s, d| s.event_partition_width = d,
        },
    },
    Setting {
        env: "NOTIFYD_MESSAGE_RETENTION",
        default: Default::Value("90d"),
        secret: false,
        kind: Kind::Duration {
            min: secs(MIN),
            max: secs(3650 * DAY),
            zero_unsets: false,
            set: |s, d| s.message_retention = d,
        },
    },
    Setting {
        env: "NOTIFYD_WS_MAX_JOINING",
        default: Default::Note("32 per HTTP worker"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 100_000,
            set: |s, n| s.ws_max_joining = Some(n as usize),
        },
    },
    Setting {
        env: "NOTIFYD_WS_JOIN_QUEUE",
        default: Default::Value("16384"),
        secret: false,
        kind: Kind::Count {
            // Each waiting handshake holds a file descriptor.
            min: 0,
            max: 100_000,
            set: |s, n| s.ws_join_queue = n as usize,
        },
    },
    Setting {
        env: "NOTIFYD_WS_JOIN_WAIT",
        default: Default::Value("5s"),
        secret: false,
        kind: Kind::Duration {
            // A client's own handshake timeout (notifyd-client.js: 10 s) covers its wait, its
            // join and its token fetch: a longer wait only leaves given-up handshakes waiting.
            min: ms(100),
            max: secs(10),
            zero_unsets: false,
            set: |s, d| s.ws_join_wait = d,
        },
    },
    Setting {
        env: "NOTIFYD_HTTP_WORKERS",
        default: Default::Note("1 per CPU"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 256,
            set: |s, n| s.http_workers = Some(n as usize),
        },
    },
    Setting {
        env: "NOTIFYD_HEARTBEAT",
        default: Default::Value("25s"),
        secret: false,
        kind: Kind::Duration {
            // Whole seconds: `hello` tells clients `heartbeat_s`.
            min: secs(1),
            max: secs(10 * MIN),
            zero_unsets: false,
            set: |s, d| s.heartbeat = d,
        },
    },
    Setting {
        env: "NOTIFYD_MAX_SOCKETS_PER_USER",
        default: Default::Value("32"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 10_000,
            set: |s, n| s.max_sockets_per_user = n as usize,
        },
    },
    Setting {
        env: "NOTIFYD_PUBLIC_TOPICS",
        default: Default::Note("unset"),
        secret: false,
        kind: Kind::Value {
            range: "up to 100 topic globs",
            set: |s, v| {
                s.public_topics = values::topic_patterns(v)?;
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_MAX_ANON_SOCKETS_PER_IP",
        default: Default::Value("64"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 100_000,
            set: |s, n| s.max_anon_sockets_per_ip = n as usize,
        },
    },
    Setting {
        env: "NOTIFYD_MAX_ANON_TOPICS_PER_IP",
        default: Default::Value("1000"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 100_000,
            set: |s, n| s.max_anon_topics_per_ip = n as usize,
        },
    },
    Setting {
        env: "NOTIFYD_SUBSCRIBE_RATE",
        default: Default::Value("10"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 10_000,
            set: |s, n| s.subscribe_rate = n as u32,
        },
    },
    Setting {
        env: "NOTIFYD_SUBSCRIBE_BURST",
        default: Default::Value("20"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 10_000,
            set: |s, n| s.subscribe_burst = n as u32,
        },
    },
    Setting {
        env: "NOTIFYD_TRUSTED_PROXIES",
        default: Default::Value("127.0.0.1,::1"),
        secret: false,
        kind: Kind::Value {
            range: "up to 100 IP addresses, or `none`",
            set: |s, v| {
                s.trusted_proxies = values::ips(v)?;
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_TOPIC_RETAIN",
        default: Default::Value("24h"),
        secret: false,
        kind: Kind::Duration {
            min: secs(1),
            max: secs(365 * DAY),
            zero_unsets: false,
            set: |s, d| s.topic_retain = d,
        },
    },
    Setting {
        env: "NOTIFYD_AUDIT_INTERVAL",
        default: Default::Value("10s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(100),
            max: secs(HOUR),
            zero_unsets: false,
            set: |s, d| s.audit_interval = d,
        },
    },
    Setting {
        env: "NOTIFYD_DB_POOL_SIZE",
        default: Default::Value("16"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 1_000,
            set: |s, n| s.db_pool_size = n as usize,
        },
    },
    Setting {
        env: "NOTIFYD_MAX_BODY_BYTES",
        default: Default::Value("33554432"),
        secret: false,
        kind: Kind::Count {
            min: 1024,
            max: 1 << 30,
            set: |s, n| s.max_body_bytes = n as usize,
        },
    },
    Setting {
        env: "NOTIFYD_DB_STATEMENT_TIMEOUT",
        default: Default::Value("30s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(1),
            max: secs(DAY),
            zero_unsets: true,
            set: |s, d| s.db_statement_timeout = d,
        },
    },
    Setting {
        env: "NOTIFYD_DB_LOCK_TIMEOUT",
        default: Default::Value("10s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(1),
            max: secs(DAY),
            zero_unsets: true,
            set: |s, d| s.db_lock_timeout = d,
        },
    },
    Setting {
        env: "NOTIFYD_DB_IDLE_IN_TRANSACTION_TIMEOUT",
        default: Default::Value("60s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(1),
            max: secs(DAY),
            zero_unsets: true,
            set: |s, d| s.db_idle_in_transaction_timeout = d,
        },
    },
    Setting {
        env: "NOTIFYD_DB_REQUEST_TIMEOUT",
        default: Default::Value("10s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(100),
            max: secs(10 * MIN),
            zero_unsets: false,
            set: |s, d| s.db_request_timeout = d,
        },
    },
    Setting {
        env: "NOTIFYD_RELAY_DB_TIMEOUT",
        default: Default::Value("10s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(100),
            max: secs(10 * MIN),
            zero_unsets: false,
            set: |s, d| s.relay_db_timeout = d,
        },
    },
    Setting {
        env: "NOTIFYD_RELAY_BATCH",
        default: Default::Value("2000"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 100_000,
            set: |s, n| s.relay_batch = n as i64,
        },
    },
    Setting {
        env: "NOTIFYD_RELAY_COALESCE",
        default: Default::Value("5ms"),
        secret: false,
        kind: Kind::Duration {
            min: ms(1),
            max: secs(1),
            zero_unsets: true,
            set: |s, d| s.relay_coalesce = d,
        },
    },
    Setting {
        env: "NOTIFYD_RELAY_PARTITIONS",
        default: Default::Value("1"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 64,
            set: |s, n| s.relay_partitions = n as u32,
        },
    },
    Setting {
        env: "NOTIFYD_HOUSEKEEPING_INTERVAL",
        default: Default::Value("10s"),
        secret: false,
        kind: Kind::Duration {
            min: ms(100),
            max: secs(DAY),
            zero_unsets: false,
            set: |s, d| s.housekeeping_interval = d,
        },
    },
    Setting {
        env: "NOTIFYD_HOUSEKEEPING_BATCH",
        default: Default::Value("50000"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 1_000_000,
            set: |s, n| s.housekeeping_batch = n as i64,
        },
    },
    Setting {
        env: "NOTIFYD_BROADCAST_BATCH",
        default: Default::Value("500"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: super::MAX_BROADCAST_BATCH as u64,
            set: |s, n| s.broadcast_batch = n as i64,
        },
    },
    Setting {
        env: "NOTIFYD_MAX_RUNNING_BROADCASTS",
        default: Default::Value("16"),
        secret: false,
        kind: Kind::Count {
            min: 1,
            max: 10_000,
            set: |s, n| s.max_running_broadcasts = n as i64,
        },
    },
    Setting {
        env: "NOTIFYD_LOG_FORMAT",
        default: Default::Value("text"),
        secret: false,
        kind: Kind::Value {
            range: "`text` or `json`",
            set: |s, v| {
                s.log_json = match v.trim() {
                    "text" => false,
                    "json" => true,
                    _ => return Err("must be text or json".into()),
                };
                Ok(())
            },
        },
    },
    Setting {
        env: "RUST_LOG",
        default: Default::Value("info"),
        secret: false,
        kind: Kind::Value {
            range: "a tracing filter",
            set: |s, v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map_err(|e| format!("not a tracing filter: {e}"))?;
                s.log_filter = v.to_string();
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_VAPID_PRIVATE_KEY",
        default: Default::Note("unset = no Web Push"),
        secret: true,
        kind: Kind::Value {
            range: "a P-256 key: PKCS#8 or SEC1 PEM, or base64url of the 32-byte scalar",
            set: |s, v| {
                crate::push::vapid::Vapid::parse_key(v)?;
                s.vapid_private_key = Some(v.trim().to_string());
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_VAPID_SUBJECT",
        default: Default::Note("unset"),
        secret: false,
        kind: Kind::Value {
            range: "a `mailto:` or `https:` URI, up to 256 characters",
            set: |s, v| {
                let v = v.trim();
                if !(v.starts_with("mailto:") || v.starts_with("https:")) || v.len() > 256 {
                    return Err("must be a mailto: or https: URI of at most 256 characters".into());
                }
                s.vapid_subject = Some(v.to_string());
                Ok(())
            },
        },
    },
    Setting {
        env: "NOTIFYD_PUSH_DELAY",
        default: Default::Value("10s"),
        secret: false,
        kind: Kind::Duration {
            min: secs(1),
            max: secs(DAY),
            zero_unsets: false,
            set: |s, d| s.push_delay = d,
        },
    },
    Setting {
        env: "NOTIFYD_PUSH_TTL",
        default: Default::Value("86400s"),
        secret: false,
        kind: Kind::Duration {
            min: secs(0),
            max: secs(28 * DAY),
            zero_unsets: false,
            set: |s, d| s.push_ttl = d,
        },
    },
    Setting {
        env: "NOTIFYD_PUSH_ALLOW_INSECURE",
        default: Default::Value("off"),
        secret: false,
        kind: Kind::Value {
            range: "`on` or `off`",
            set: |s, v| {
                s.push_allow_insecure = values::switch(v)?;
                Ok(())
            },
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = include_str!("../../docs/configuration.md");

    /// A setting's row as docs/configuration.md must show it (the meaning column aside).
    fn row(s: &Setting) -> [String; 4] {
        let default = match s.default {
            Default::Value(v) => format!("`{v}`"),
            Default::Note(n) => n.to_string(),
        };
        [
            format!("`{}`", s.env),
            format!("`{}`", s.key()),
            default,
            s.range(),
        ]
    }

    /// The rows of the settings table: `| variable | TOML key | default | range | meaning |`.
    fn page_rows() -> Vec<[String; 4]> {
        PAGE.lines()
            .skip_while(|l| !l.starts_with("| variable | TOML key |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<String> = l.splitn(6, '|').map(|c| c.trim().to_string()).collect();
                assert_eq!(cells.len(), 6, "a row with five cells: {l}");
                [
                    cells[1].clone(),
                    cells[2].clone(),
                    cells[3].clone(),
                    cells[4].clone(),
                ]
            })
            .collect()
    }

    /// Issue 11 item 3: docs/configuration.md lists every setting of the code with its TOML
    /// key, default and range exactly, and nothing else.
    #[test]
    fn the_configuration_page_matches_the_table_both_ways() {
        let page = page_rows();
        let code: Vec<[String; 4]> = SETTINGS.iter().map(row).collect();
        let missing: Vec<String> = code
            .iter()
            .filter(|r| !page.contains(r))
            .map(|r| format!("| {} | {} | {} | {} | ... |", r[0], r[1], r[2], r[3]))
            .collect();
        let extra: Vec<&[String; 4]> = page.iter().filter(|r| !code.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/configuration.md is out of step with config::table.\nrows the code has \
             and the page lacks (or shows otherwise):\n{}\nrows of the page the code does not \
             have: {extra:?}",
            missing.join("\n")
        );
    }

    #[test]
    fn names_and_keys_are_unique() {
        for (i, a) in SETTINGS.iter().enumerate() {
            for b in &SETTINGS[i + 1..] {
                assert!(a.env != b.env && a.key() != b.key(), "{}", a.env);
            }
        }
    }
}
