//! One in-process `notifyd` node per `spawn_app`, its settings (`Opts`) and the REST calls tests
//! make on it.

use std::time::Duration;

use notifyd::config::Settings;
use notifyd::startup::{Application, Stopper};
use serde_json::Value;

use super::db::TestDb;
use super::ids::rand_hex;
use super::redis::redis_url;
use super::tokens::{token, JWT_SECRET};
use super::ws::WsClient;

// 32 bytes and more: `serve` without `--dev` refuses shorter secrets and keys (contract §7), and
// the nodes of `binary::node_env` run as in production.
pub const SERVICE_KEY: &str = "test-service-key-0123456789abcdef";
/// The key of a second service (`other`), for what one service may not do to another's data.
pub const OTHER_KEY: &str = "other-service-key-0123456789abcdef";

#[derive(Clone)]
pub struct Opts {
    pub redis: bool,
    pub relay: bool,
    /// Overrides REDIS_URL (e.g. a proxy the test can cut).
    pub redis_url: Option<String>,
    pub prefix: Option<String>,
    pub heartbeat: Duration,
    pub node_id: String,
    pub max_body_bytes: Option<usize>,
    pub allowed_origins: Option<Vec<String>>,
    /// Listen on this port instead of a free one (to restart a node where clients expect it).
    pub port: Option<u16>,
    /// How often the gateway audits its users' seqs against the database.
    pub audit_interval: Option<Duration>,
    /// `NOTIFYD_MAX_SOCKETS_PER_USER`.
    pub max_sockets_per_user: Option<usize>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            redis: true,
            relay: true,
            redis_url: None,
            prefix: None,
            heartbeat: Duration::from_secs(25),
            node_id: format!("test-{}", rand_hex()),
            max_body_bytes: None,
            allowed_origins: None,
            port: None,
            audit_interval: None,
            max_sockets_per_user: None,
        }
    }
}

impl Opts {
    /// A node that publishes nothing by itself: the outbox stays for the test to inspect (or to
    /// publish by hand).
    pub fn no_relay() -> Self {
        Opts {
            relay: false,
            ..Default::default()
        }
    }

    /// A node that pings every second, so liveness (2.5 heartbeats) acts within seconds.
    pub fn fast_heartbeat() -> Self {
        Opts {
            heartbeat: Duration::from_secs(1),
            ..Default::default()
        }
    }

    /// A node of the cluster `prefix` that reaches Redis through `redis_url` (a proxy the test
    /// can cut or freeze) and publishes nothing itself (another node relays).
    pub fn behind_redis(prefix: &str, redis_url: String) -> Self {
        Opts {
            prefix: Some(prefix.to_string()),
            relay: false,
            redis_url: Some(redis_url),
            ..Default::default()
        }
    }

    /// A node of the same cluster as every other node given this Redis prefix (see `new_prefix`).
    pub fn in_cluster(prefix: &str) -> Self {
        Opts {
            prefix: Some(prefix.to_string()),
            ..Default::default()
        }
    }
}

/// One running node.
pub struct TestApp {
    pub port: u16,
    /// The service listener's port (`NOTIFYD_SERVICE_BIND`), if the node has one.
    pub service_port: Option<u16>,
    pub base: String,
    pub ws_base: String,
    pub db_url: String,
    pub prefix: String,
    pub stopper: Stopper,
    pub http: reqwest::Client,
}

pub fn settings_for(db_url: &str, opts: &Opts) -> Settings {
    let mut s = Settings::new(db_url);
    s.bind = format!("127.0.0.1:{}", opts.port.unwrap_or(0));
    s.jwt_secret = JWT_SECRET.into();
    s.service_keys = vec![
        ("test".into(), SERVICE_KEY.into()),
        ("other".into(), OTHER_KEY.into()),
    ];
    s.redis_url = if opts.redis {
        Some(opts.redis_url.clone().unwrap_or_else(redis_url))
    } else {
        None
    };
    s.redis_prefix = opts
        .prefix
        .clone()
        .unwrap_or_else(|| format!("t{}:", rand_hex()));
    s.relay_enabled = opts.relay;
    s.heartbeat = opts.heartbeat;
    s.node_id = opts.node_id.clone();
    s.db_pool_size = 8;
    // scripts/tls-pooler-test.sh: the same tests with requests going through PgBouncer in
    // transaction mode, and the relay, LISTEN and migrations to PostgreSQL directly (a direct
    // URL alone makes the node treat DATABASE_URL as a transaction pooler).
    if let Ok(pooler) = std::env::var("TEST_DATABASE_POOLER_URL") {
        let name = &db_url[db_url.rfind('/').expect("a database in the url") + 1..];
        s.database_direct_url = Some(db_url.to_string());
        s.database_url = format!("{}/{name}", pooler.trim_end_matches('/'));
    }
    if let Some(m) = opts.max_body_bytes {
        s.max_body_bytes = m;
    }
    s.allowed_origins = opts.allowed_origins.clone();
    if let Some(a) = opts.audit_interval {
        s.audit_interval = a;
    }
    if let Some(n) = opts.max_sockets_per_user {
        s.max_sockets_per_user = n;
    }
    s
}

pub async fn spawn_app(db: &TestDb, opts: Opts) -> TestApp {
    spawn_app_with(db, opts, |_| {}).await
}

/// `spawn_app` with the settings adjusted by `tune` before the node starts (e.g. a database URL
/// through a `Cuttable`, short liveness timeouts).
pub async fn spawn_app_with(db: &TestDb, opts: Opts, tune: impl FnOnce(&mut Settings)) -> TestApp {
    // RUST_LOG=notifyd=debug shows the nodes' logs in a failing test's output.
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let mut settings = settings_for(&db.url, &opts);
    tune(&mut settings);
    let prefix = settings.redis_prefix.clone();
    let app = Application::build(settings, None).await.expect("build app");
    let port = app.port();
    let service_port = app.service_port();
    let stopper = app.stopper();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        port,
        service_port,
        base: format!("http://127.0.0.1:{port}"),
        ws_base: format!("ws://127.0.0.1:{port}"),
        db_url: db.url.clone(),
        prefix,
        stopper,
        http: reqwest::Client::new(),
    }
}

impl TestApp {
    pub async fn post_messages(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(SERVICE_KEY)
            .json(body)
            .send()
            .await
            .expect("POST /messages")
    }

    /// POSTs one message and returns the created `{"id","to_user","seq"}`.
    pub async fn send(&self, user: &str, title: &str) -> Value {
        let r = self.post_messages(&serde_json::json!({"to_user": user, "title": title, "content": "c", "type": "comment"})).await;
        assert_eq!(r.status(), 201, "create failed");
        let body: Value = r.json().await.expect("json");
        body["messages"][0].clone()
    }

    pub async fn user_get(&self, user: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("GET")
    }

    pub async fn user_post(&self, user: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{}", self.base, path))
            .bearer_auth(token(user))
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn user_put(&self, user: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .put(format!("{}{}", self.base, path))
            .bearer_auth(token(user))
            .json(&body)
            .send()
            .await
            .expect("PUT")
    }

    pub async fn ws(&self, user: &str, since: Option<i64>) -> WsClient {
        WsClient::connect(&self.ws_url(&token(user), since))
            .await
            .expect("ws connect")
    }

    pub fn ws_url(&self, token: &str, since: Option<i64>) -> String {
        match since {
            Some(s) => format!("{}/ws?token={token}&since={s}", self.ws_base),
            None => format!("{}/ws?token={token}", self.ws_base),
        }
    }

    pub fn user_channel(&self, user: &str) -> String {
        format!("{}u:{}", self.prefix, user)
    }

    pub async fn stop(&self) {
        self.stopper.stop().await;
    }

    /// POSTs `body` (sent as is) to `path` with an optional service key and extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        service_key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = service_key {
            req = req.bearer_auth(k);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("POST")
    }

    /// `POST /api/v1/messages` as the service owning `service_key`, with an optional `Idempotency-Key`.
    pub async fn post_messages_as(
        &self,
        service_key: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        self.post_as("/api/v1/messages", service_key, idempotency_key, body)
            .await
    }

    /// A JSON POST to `path` as the service owning `service_key`, with an optional
    /// `Idempotency-Key`.
    pub async fn post_as(
        &self,
        path: &str,
        service_key: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![("Idempotency-Key", k)])
            .unwrap_or_default();
        self.post_raw(path, Some(service_key), &headers, body.to_string())
            .await
    }

    pub fn topic_channel(&self, topic: &str) -> String {
        format!("{}t:{}", self.prefix, topic)
    }

    /// GET `path` as an internal service (the test service key).
    pub async fn service_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(SERVICE_KEY)
            .send()
            .await
            .expect("GET")
    }

    pub async fn user_delete(&self, user: &str, path: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}{}", self.base, path))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("DELETE")
    }

    /// `GET path` as `user`, asserting 200; the JSON body.
    pub async fn user_json(&self, user: &str, path: &str) -> Value {
        let r = self.user_get(user, path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json")
    }

    /// `POST path` as `user`, asserting 200; the JSON body.
    pub async fn user_post_json(&self, user: &str, path: &str, body: Value) -> Value {
        let r = self.user_post(user, path, body).await;
        assert_eq!(r.status(), 200, "POST {path}");
        r.json().await.expect("json")
    }

    /// `GET /api/v1/users/{user}/presence` (service key), asserting 200.
    pub async fn presence(&self, user: &str) -> Value {
        let r = self
            .service_get(&format!("/api/v1/users/{user}/presence"))
            .await;
        assert_eq!(r.status(), 200, "presence");
        r.json().await.expect("json")
    }

    /// `POST /api/v1/topics/{topic}/events` with `{"data": data}`, asserting 202; returns the
    /// event id.
    pub async fn publish_topic(&self, topic: &str, data: Value) -> String {
        self.publish_topic_body(topic, serde_json::json!({ "data": data }))
            .await
    }

    /// `POST /api/v1/topics/{topic}/events` with `body`, asserting 202 with the topic and an
    /// event id; returns the id.
    pub async fn publish_topic_body(&self, topic: &str, body: Value) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/topics/{topic}/events", self.base))
            .bearer_auth(SERVICE_KEY)
            .json(&body)
            .send()
            .await
            .expect("POST topic event");
        assert_eq!(r.status(), 202, "topic event not accepted");
        let answer: Value = r.json().await.expect("json");
        assert_eq!(answer["topic"], topic, "{answer}");
        answer["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no event id in {answer}"))
            .to_string()
    }

    /// Creates `n` messages for `user` in ONE request (titles `"{prefix}{i}"`); returns the
    /// created `{"id","to_user","seq"}` in request order.
    pub async fn send_batch(
        &self,
        user: &str,
        n: usize,
        prefix: &str,
        content: &str,
    ) -> Vec<Value> {
        let messages: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"to_user": user, "title": format!("{prefix}{i}"), "content": content, "type": "comment"}))
            .collect();
        let r = self
            .post_messages(&serde_json::json!({ "messages": messages }))
            .await;
        assert_eq!(r.status(), 201, "batch create failed");
        let body: Value = r.json().await.expect("json");
        body["messages"].as_array().expect("messages").clone()
    }

    /// Whether this node's Redis subscriber is connected (so a PUBLISH now reaches it).
    pub fn hub_connected(&self) -> bool {
        self.stopper.state().hub.is_connected()
    }
}
