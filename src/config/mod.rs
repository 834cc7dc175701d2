//! Typed configuration, read from the environment in one place (contract §1).

pub mod database_url;
mod file;
pub mod redact;
pub mod secrets;
pub mod table;
pub mod values;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

pub use table::{Setting, SETTINGS};
pub use values::parse_duration;

/// `DATABASE_URL` when unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://localhost/notifyd";

/// The secret used by `serve --dev` only. Logged loudly at start-up.
pub const DEV_JWT_SECRET: &str = "notifyd-dev-secret-do-not-use-in-production";

/// Upper bound of `NOTIFYD_BROADCAST_BATCH`: one batch's transaction must stay short.
pub const MAX_BROADCAST_BATCH: i64 = 10_000;

/// `Debug` is written out in `redact`: it hides the secrets.
#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    /// `NOTIFYD_DATABASE_DIRECT_URL`: PostgreSQL itself, for the connections that need a server
    /// session of their own (the relay's and housekeeper's leader locks, `LISTEN`, migrations)
    /// when `database_url` goes through a pooler. `None`: `database_url`.
    pub database_direct_url: Option<String>,
    /// `NOTIFYD_DATABASE_POOLER`: `Some(Transaction)` when `database_url` is a pooler in
    /// `pool_mode = transaction` (PgBouncer), see `database_url::Pooler`; `None` (`auto`): a transaction
    /// pooler exactly when a direct URL is set (see `pooler`).
    pub database_pooler: Option<crate::config::database_url::Pooler>,
    /// `NOTIFYD_DATABASE_REPLICA_URL`: a streaming replica of the primary that history pages
    /// and `/me/changes` may read from (contract §11, `db::replica`). `None`: every read goes
    /// to `database_url`.
    pub database_replica_url: Option<String>,
    /// `NOTIFYD_REPLICA_MAX_LAG`: a replica whose replay lag is not below this is not read from.
    pub replica_max_lag: Duration,
    /// `NOTIFYD_REDIS_CA_FILE`: the CA (PEM) a `rediss://` server's certificate must lead to.
    /// `None`: the system store (which honours `SSL_CERT_FILE`).
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// `None` = single-node mode with the in-process broker.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel this deployment uses (lets tests and tenants share a Redis).
    pub redis_prefix: String,
    pub bind: String,
    /// `NOTIFYD_SERVICE_BIND`: a second listener with an HTTP worker of its own, for internal
    /// services' calls (`None`: none; everything is served on `bind`).
    pub service_bind: Option<String>,
    pub jwt_secret: String,
    /// `(service name, key)` pairs accepted on the internal API.
    pub service_keys: Vec<(String, String)>,
    pub node_id: String,
    pub relay_enabled: bool,
    /// `None` = any origin may open a WebSocket and any origin is echoed by CORS on the user API
    /// (dev only: start-up logs a warning).
    pub allowed_origins: Option<Vec<String>>,
    pub event_retention: Duration,
    /// `NOTIFYD_EVENT_PARTITION_WIDTH`: the time range one event log partition covers (1 day).
    /// Shorter only for tests and benchmarks that need to watch days pass in minutes.
    pub event_partition_width: Duration,
    /// `NOTIFYD_MESSAGE_RETENTION`: notifications older than this (by `send_time`) are removed
    /// by the housekeeper (contract §9).
    pub message_retention: Duration,
    pub heartbeat: Duration,
    /// `NOTIFYD_MAX_SOCKETS_PER_USER`: WebSockets one user may hold on one node (contract §7).
    pub max_sockets_per_user: usize,
    pub dev: bool,
    /// `serve --dev` found a JWT secret configured and ignored it (start-up says so loudly).
    pub jwt_secret_ignored: bool,
    pub db_pool_size: usize,
    pub max_body_bytes: usize,
    /// How often the relay polls the outbox when nothing woke it.
    pub relay_poll: Duration,
    /// How often a gateway compares its users' seqs with the database (catches a lost last event).
    pub audit_interval: Duration,
    /// `NOTIFYD_RELAY_BATCH`: outbox entries per relay transaction (one PUBLISH pipeline).
    pub relay_batch: i64,
    /// `NOTIFYD_RELAY_COALESCE`: after a batch that did not fill `relay_batch`, the next one
    /// starts no sooner than this after the last batch that published began (zero: at once), so
    /// a steady stream of single commits shares relay transactions instead of paying one each
    /// (`outbox::relay`).
    pub relay_coalesce: Duration,
    /// `NOTIFYD_WS_MAX_JOINING`: WebSocket handshakes this node works on at once, each counted
    /// from its turn until its `hello` was sent (actor, catch-up read). Beyond it a handshake
    /// waits for a turn (`ws_join_queue`, `ws_join_wait`, see `gateway::admission`).
    /// `None`: `WS_JOINING_PER_WORKER` per HTTP worker.
    pub ws_max_joining: Option<usize>,
    /// `NOTIFYD_WS_JOIN_QUEUE`: handshakes that may wait for a turn past `ws_max_joining`
    /// (0: refuse at once).
    pub ws_join_queue: usize,
    /// `NOTIFYD_WS_JOIN_WAIT`: how long a queued handshake waits for its turn before it is
    /// refused.
    pub ws_join_wait: Duration,
    /// `NOTIFYD_HTTP_WORKERS`: HTTP worker threads (`None`: `HTTP_WORKERS_PER_CPU` per CPU). Each
    /// is a single-threaded runtime that owns the connections it accepted: REST calls and
    /// WebSocket sessions on the same worker wait in one queue.
    pub http_workers: Option<usize>,
    /// `NOTIFYD_RELAY_PARTITIONS`: the outbox is relayed in this many partitions by user (topic)
    /// hash, each with its own leader; every process must use the same number.
    pub relay_partitions: u32,
    pub log_json: bool,
    /// `RUST_LOG`: the tracing filter.
    pub log_filter: String,
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
    /// `NOTIFYD_MAX_ANON_TOPICS_PER_IP`: distinct topics one client address's anonymous sessions
    /// may hold together on one node (each is a broker channel; contract §7).
    pub max_anon_topics_per_ip: usize,
    /// `NOTIFYD_SUBSCRIBE_RATE`: `subscribe` and `unsubscribe` frames one session may send per
    /// second, sustained (contract §7).
    pub subscribe_rate: u32,
    /// `NOTIFYD_SUBSCRIBE_BURST`: such frames one session may send at once.
    pub subscribe_burst: u32,
    /// `NOTIFYD_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` (last hop) names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `NOTIFYD_BROADCAST_BATCH`: recipients per announcement batch (one transaction, which
    /// holds those users' counter rows until it commits).
    pub broadcast_batch: i64,
    /// `NOTIFYD_MAX_RUNNING_BROADCASTS`: announcements one service may have running at once.
    pub max_running_broadcasts: i64,
    /// `NOTIFYD_VAPID_PRIVATE_KEY` (secret): Web Push is on when it is set (`push`).
    pub vapid_private_key: Option<String>,
    /// `NOTIFYD_VAPID_SUBJECT`: `mailto:` or `https:`, required with a key.
    pub vapid_subject: Option<String>,
    /// `NOTIFYD_PUSH_DELAY`: how long a live session has to acknowledge an event before it is
    /// pushed.
    pub push_delay: Duration,
    /// `NOTIFYD_PUSH_TTL`: the push service keeps an undelivered push this long.
    pub push_ttl: Duration,
    /// `NOTIFYD_PUSH_ALLOW_INSECURE`: `http:` and private endpoints allowed (tests only).
    pub push_allow_insecure: bool,
}

impl Settings {
    /// Defaults for everything, pointed at the given database (used by tests and as the base of `from_env`).
    pub fn new(database_url: impl Into<String>) -> Self {
        Settings {
            database_url: database_url.into(),
            database_direct_url: None,
            database_pooler: None,
            database_replica_url: None,
            replica_max_lag: Duration::from_secs(1),
            redis_ca_file: None,
            redis_url: None,
            redis_prefix: "notifyd:".into(),
            bind: "127.0.0.1:8080".into(),
            service_bind: None,
            jwt_secret: DEV_JWT_SECRET.into(),
            service_keys: vec![],
            node_id: default_node_id(),
            relay_enabled: true,
            allowed_origins: None,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            event_partition_width: Duration::from_secs(24 * 3600),
            message_retention: Duration::from_secs(90 * 24 * 3600),
            heartbeat: Duration::from_secs(25),
            max_sockets_per_user: 32,
            dev: false,
            jwt_secret_ignored: false,
            db_pool_size: 16,
            max_body_bytes: 32 * 1024 * 1024,
            relay_poll: Duration::from_millis(500),
            audit_interval: Duration::from_secs(10),
            // 2,000, not 500: draining a 200k backlog, back to back on the same (loaded) machine,
            // 1.2-1.5x the events/s and ~30% less relay CPU per event (docs/benchmarks.md).
            relay_batch: 2000,
            relay_coalesce: Duration::from_millis(5),
            ws_max_joining: None,
            ws_join_queue: 16384,
            ws_join_wait: Duration::from_secs(5),
            http_workers: None,
            relay_partitions: 1,
            log_json: false,
            log_filter: "info".into(),
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
            max_anon_topics_per_ip: 1000,
            subscribe_rate: 10,
            subscribe_burst: 20,
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
            vapid_private_key: None,
            vapid_subject: None,
            push_delay: Duration::from_secs(10),
            push_ttl: Duration::from_secs(24 * 3600),
            push_allow_insecure: false,
        }
    }

    /// Reads the settings for a command: defaults, then the TOML `file` if given, then the
    /// environment (which wins). Every value is checked against its range (see `table`); all
    /// problems are reported together, each naming its setting, and nothing starts.
    /// `dev` = `serve --dev`: the public dev secret, the `dev:dev` service key, `product:*`
    /// public. `need_secret` (`serve`): unless `dev`, refuse to start without
    /// `NOTIFYD_JWT_SECRET`, or with a dev or short JWT secret or service key (`secrets`).
    pub fn load(dev: bool, need_secret: bool, file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(&|k| std::env::var(k).ok(), file, dev, need_secret)
    }

    /// `load` with the environment looked up through `env` (tests pass their own).
    pub fn load_from(
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<&Path>,
        dev: bool,
        need_secret: bool,
    ) -> anyhow::Result<Self> {
        let mut problems: Vec<String> = vec![];
        // Env name -> (value, where it came from); the environment overwrites the file.
        let mut given: HashMap<&'static str, (String, Origin)> = HashMap::new();
        let mut file_refused = false;
        if let Some(path) = file {
            match file::read(path) {
                Ok(pairs) => {
                    for (setting, value) in pairs {
                        given.insert(
                            setting.env,
                            (value, Origin::File(path.display().to_string())),
                        );
                    }
                }
                Err(p) => {
                    file_refused = true;
                    problems.extend(p);
                }
            }
        }
        for setting in SETTINGS {
            if let Some(v) = env(setting.env) {
                given.insert(setting.env, (v, Origin::Env));
            }
        }
        // An empty value is no value (`NOTIFYD_X=` in a unit file, `x = ""`).
        given.retain(|_, (v, _)| !v.trim().is_empty());

        let mut s = Settings::new(DEFAULT_DATABASE_URL);
        s.dev = dev;
        // Settings given and read: only these are checked further (one that was refused still
        // holds its default, which is no reason for a second complaint).
        let mut read: Vec<&'static Setting> = vec![];
        for setting in SETTINGS {
            let Some((value, origin)) = given.get(setting.env) else {
                continue;
            };
            match setting.apply(&mut s, value) {
                Ok(()) => read.push(setting),
                Err(why) => problems.push(origin.describe(setting, value, &why)),
            }
        }
        let has = |env: &str| given.contains_key(env);
        if dev {
            // Dev mode signs anyone's tokens at `/demo/token`: with a real secret that would be
            // a token mint for production. Only the public dev secret is used; start-up warns
            // when one was configured and ignored.
            s.jwt_secret_ignored = has("NOTIFYD_JWT_SECRET");
            s.jwt_secret = DEV_JWT_SECRET.into();
            if !s.service_keys.iter().any(|(n, _)| n == "dev") {
                s.service_keys
                    .push(("dev".into(), secrets::DEV_SERVICE_KEY.into()));
            }
            if !has("NOTIFYD_PUBLIC_TOPICS") {
                // The demo's product page (`/demo/products`) is for shoppers without a token.
                s.public_topics = vec!["product:*".into()];
            }
        } else if need_secret {
            // A file that was refused may hold the secret: its problems are reported instead.
            if !has("NOTIFYD_JWT_SECRET") && !file_refused {
                problems.push(
                    "NOTIFYD_JWT_SECRET is not set (nor jwt_secret in a config file): refusing \
                     to start (use `serve --dev` for a local demo)"
                        .into(),
                );
            }
            // Production secrets (contract §7): not the dev ones, not short.
            for setting in read {
                let why = match setting.env {
                    "NOTIFYD_JWT_SECRET" => secrets::jwt_secret(&s.jwt_secret),
                    "NOTIFYD_SERVICE_KEYS" => secrets::service_keys(&s.service_keys),
                    _ => None,
                };
                if let (Some(why), Some((value, origin))) = (why, given.get(setting.env)) {
                    problems.push(origin.describe(setting, value, &why));
                }
            }
        }
        if s.vapid_private_key.is_some() && s.vapid_subject.is_none() {
            problems.push(
                "NOTIFYD_VAPID_PRIVATE_KEY is set without NOTIFYD_VAPID_SUBJECT (mailto: or \
                 https:): push services refuse pushes that name no contact"
                    .into(),
            );
        }
        if s.database_pooler == Some(crate::config::database_url::Pooler::Transaction)
            && s.database_direct_url.is_none()
        {
            problems.push(
                "NOTIFYD_DATABASE_POOLER = \"transaction\" needs NOTIFYD_DATABASE_DIRECT_URL: the \
                 relay's leader locks and LISTEN need a PostgreSQL session of their own, which a \
                 transaction pooler does not keep"
                    .into(),
            );
        }
        if !problems.is_empty() {
            bail!("invalid configuration:\n  {}", problems.join("\n  "));
        }
        Ok(s)
    }
    /// The URL of PostgreSQL itself (not a pooler): for dedicated connections.
    pub fn direct_database_url(&self) -> &str {
        self.database_direct_url
            .as_deref()
            .unwrap_or(&self.database_url)
    }

    /// How the pool reaches PostgreSQL: as `NOTIFYD_DATABASE_POOLER` says, or (`auto`) through
    /// a transaction pooler when a direct URL is set (a direct URL says `DATABASE_URL` is not
    /// direct; a pooler in session mode works with the transaction discipline too).
    pub fn pooler(&self) -> crate::config::database_url::Pooler {
        self.database_pooler
            .unwrap_or(match self.database_direct_url {
                Some(_) => crate::config::database_url::Pooler::Transaction,
                None => crate::config::database_url::Pooler::None,
            })
    }

    /// Whether anyone, also without a token, may subscribe to `topic`.
    pub fn is_public_topic(&self, topic: &str) -> bool {
        self.public_topics
            .iter()
            .any(|p| crate::model::glob::glob_match(p, topic))
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

/// Where a value came from, to name it the way the operator wrote it.
enum Origin {
    Env,
    File(String),
}

impl Origin {
    fn describe(&self, setting: &Setting, value: &str, why: &str) -> String {
        let shown = if setting.secret {
            "(value hidden)".to_string()
        } else {
            format!("{value:?}")
        };
        match self {
            Origin::Env => format!("{} = {shown}: {why}", setting.env),
            Origin::File(path) => format!("{} = {shown} in {path}: {why}", setting.key()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::table::Default;
    use super::*;

    fn load(env: &[(&str, &str)], dev: bool) -> anyhow::Result<Settings> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(&|k| env.get(k).cloned(), None, dev, true)
    }

    fn refusal(env: &[(&str, &str)]) -> String {
        format!("{:#}", load(env, false).expect_err("accepted"))
    }

    const SECRET: (&str, &str) = (
        "NOTIFYD_JWT_SECRET",
        "a-production-jwt-secret-of-48-bytes-0123456789ab",
    );

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

    /// A transaction pooler cannot carry the relay's leader locks and LISTEN: the direct URL
    /// is required with it, and is what dedicated connections use.
    #[test]
    fn a_transaction_pooler_needs_the_direct_url() {
        let e = refusal(&[SECRET, ("NOTIFYD_DATABASE_POOLER", "transaction")]);
        assert!(e.contains("NOTIFYD_DATABASE_DIRECT_URL"), "{e}");
        let s = load(
            &[
                SECRET,
                ("DATABASE_URL", "postgres://u@pgbouncer:6432/n"),
                ("NOTIFYD_DATABASE_POOLER", "transaction"),
                (
                    "NOTIFYD_DATABASE_DIRECT_URL",
                    "postgres://u@db:5432/n?sslmode=verify-full",
                ),
            ],
            false,
        )
        .expect("accepted");
        assert_eq!(s.pooler(), crate::config::database_url::Pooler::Transaction);
        assert_eq!(
            s.direct_database_url(),
            "postgres://u@db:5432/n?sslmode=verify-full"
        );
        // `auto`: a direct URL means DATABASE_URL is a pooler; without one, PostgreSQL itself.
        let s = load(
            &[
                SECRET,
                ("NOTIFYD_DATABASE_DIRECT_URL", "postgres://u@db:5432/n"),
            ],
            false,
        )
        .expect("accepted");
        assert_eq!(s.pooler(), crate::config::database_url::Pooler::Transaction);
        let s = load(
            &[
                SECRET,
                ("NOTIFYD_DATABASE_DIRECT_URL", "postgres://u@db:5432/n"),
                ("NOTIFYD_DATABASE_POOLER", "none"),
            ],
            false,
        )
        .expect("accepted");
        assert_eq!(s.pooler(), crate::config::database_url::Pooler::None);
        assert_eq!(
            load(&[SECRET], false).expect("accepted").pooler(),
            crate::config::database_url::Pooler::None
        );
        assert_eq!(
            Settings::new("postgres://a/b").direct_database_url(),
            "postgres://a/b"
        );
        let e = refusal(&[SECRET, ("NOTIFYD_DATABASE_POOLER", "session")]);
        assert!(e.contains("`auto`, `none` or `transaction`"), "{e}");
    }

    /// The table's documented defaults are the defaults the code runs with.
    #[test]
    fn documented_defaults_are_the_code_defaults() {
        let defaults = format!("{:?}", Settings::new(DEFAULT_DATABASE_URL));
        for setting in SETTINGS {
            if let Default::Value(v) = setting.default {
                let mut s = Settings::new(DEFAULT_DATABASE_URL);
                setting
                    .apply(&mut s, v)
                    .unwrap_or_else(|e| panic!("{}: default {v:?}: {e}", setting.env));
                assert_eq!(format!("{s:?}"), defaults, "{}: default {v:?}", setting.env);
            }
        }
    }

    #[test]
    fn nothing_set_gives_the_defaults() {
        let s = load(&[SECRET], false).unwrap();
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.heartbeat, Duration::from_secs(25));
        assert_eq!(s.jwt_secret, SECRET.1);
    }

    /// Issue 11 item 3: `NOTIFYD_HEARTBEAT=0` was accepted and panicked the first session
    /// (a zero-period interval); zero and out-of-range values now stop start-up by name.
    #[test]
    fn zero_and_out_of_range_values_are_refused_by_name() {
        for (name, value, says) in [
            ("NOTIFYD_HEARTBEAT", "0", "must be 1s to 10m"),
            ("NOTIFYD_HEARTBEAT", "11m", "must be 1s to 10m"),
            ("NOTIFYD_AUDIT_INTERVAL", "0s", "must be 100ms to 1h"),
            ("NOTIFYD_EVENT_RETENTION", "0", "must be 1m to 365d"),
            ("NOTIFYD_DB_POOL_SIZE", "0", "from 1 to 1000"),
            ("NOTIFYD_DB_POOL_SIZE", "-3", "from 1 to 1000"),
            ("NOTIFYD_MAX_BODY_BYTES", "12", "from 1024 to 1073741824"),
            ("NOTIFYD_RELAY", "maybe", "on or off"),
            ("NOTIFYD_BIND", "localhost", "IP address and port"),
            ("NOTIFYD_LOG_FORMAT", "xml", "text or json"),
            ("RUST_LOG", "notifyd=loud", "tracing filter"),
            ("DATABASE_URL", "mysql://x/y", "postgres:// URL"),
            ("REDIS_URL", "http://cache", "redis:// URL"),
            (
                "NOTIFYD_ALLOWED_ORIGINS",
                "app.example.com",
                "not an origin",
            ),
            ("NOTIFYD_SERVICE_KEYS", "billing", "not name:key"),
        ] {
            let e = refusal(&[SECRET, (name, value)]);
            assert!(e.contains(name) && e.contains(says), "{name}={value}: {e}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = refusal(&[
            SECRET,
            ("NOTIFYD_HEARTBEAT", "0"),
            ("NOTIFYD_RELAY_BATCH", "0"),
        ]);
        assert!(
            e.contains("NOTIFYD_HEARTBEAT") && e.contains("NOTIFYD_RELAY_BATCH"),
            "{e}"
        );
    }

    #[test]
    fn secret_values_are_not_echoed() {
        let e = refusal(&[
            SECRET,
            ("NOTIFYD_SERVICE_KEYS", "a:key-one,b:key-one"),
            ("DATABASE_URL", "postgres://u:pg-pass@h:notaport/db"),
        ]);
        assert!(
            e.contains("NOTIFYD_SERVICE_KEYS") && e.contains("DATABASE_URL"),
            "{e}"
        );
        assert!(!e.contains("key-one") && !e.contains("pg-pass"), "{e}");
    }

    #[test]
    fn serve_needs_a_secret() {
        assert!(refusal(&[]).contains("NOTIFYD_JWT_SECRET is not set"));
        assert!(load(&[], true).is_ok());
    }

    /// Defect 9: `serve --dev` kept a real secret from the environment, and `/demo/token` then
    /// minted tokens for it while the log said the public dev secret was in use.
    #[test]
    fn dev_mode_ignores_a_configured_jwt_secret() {
        let real = SECRET;
        let dev = load(&[real], true).expect("dev settings");
        assert_eq!(dev.jwt_secret, DEV_JWT_SECRET);
        assert!(dev.jwt_secret_ignored);
        let prod = load(&[real], false).expect("prod settings");
        assert_eq!(prod.jwt_secret, SECRET.1);
        assert!(!prod.jwt_secret_ignored);
    }

    /// Contract §7: without `--dev`, `serve` refuses the dev secret, the dev service key and
    /// short ones, naming the setting (and the service) and never the value; `--dev`, `relay`
    /// and `migrate` (which sign nothing) take them as before.
    #[test]
    fn serve_refuses_dev_and_short_secrets_by_name_only() {
        let long_key = "billing:a-production-service-key-of-40-bytes-01";
        for (env, says, hidden) in [
            (
                [
                    ("NOTIFYD_JWT_SECRET", DEV_JWT_SECRET),
                    ("NOTIFYD_SERVICE_KEYS", long_key),
                ],
                "NOTIFYD_JWT_SECRET = (value hidden): is the public dev secret",
                DEV_JWT_SECRET,
            ),
            (
                [
                    ("NOTIFYD_JWT_SECRET", "short-secret"),
                    ("NOTIFYD_SERVICE_KEYS", long_key),
                ],
                "NOTIFYD_JWT_SECRET = (value hidden): is shorter than 32 bytes",
                "short-secret",
            ),
            (
                [SECRET, ("NOTIFYD_SERVICE_KEYS", "dev:dev")],
                "NOTIFYD_SERVICE_KEYS = (value hidden): service \"dev\" has the public dev key",
                "dev:dev",
            ),
            (
                [SECRET, ("NOTIFYD_SERVICE_KEYS", "shop:shop-key-1")],
                "NOTIFYD_SERVICE_KEYS = (value hidden): service \"shop\" has a key shorter than 32",
                "shop-key-1",
            ),
        ] {
            let e = refusal(&env);
            assert!(e.contains(says), "{says:?} missing from {e}");
            assert!(!e.contains(hidden), "{hidden:?} shown in {e}");
            assert!(load(&env, true).is_ok(), "--dev: {e}");
            let relay = Settings::load_from(
                &|k| {
                    env.iter()
                        .find(|(n, _)| *n == k)
                        .map(|(_, v)| v.to_string())
                },
                None,
                false,
                false,
            );
            assert!(relay.is_ok(), "relay/migrate: {relay:?}");
        }
        assert!(load(&[SECRET, ("NOTIFYD_SERVICE_KEYS", long_key)], false).is_ok());
    }

    /// A secret that was itself refused (too long) is not also called short or dev: its default
    /// is not what the operator gave.
    #[test]
    fn a_refused_secret_gets_one_complaint() {
        let e = refusal(&[("NOTIFYD_JWT_SECRET", &"x".repeat(5000))]);
        assert!(e.contains("must be 1 to 4096 bytes"), "{e}");
        assert!(!e.contains("dev secret"), "{e}");
    }
}
