//! The test harness: every test gets its own PostgreSQL database (random name, dropped after)
//! and its own Redis key/channel prefix, and talks to real `notifyd` nodes over real sockets.

#![allow(dead_code)]

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use notifyd::config::Settings;
use notifyd::startup::{Application, Stopper};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

// 32 bytes and more: `serve` without `--dev` refuses shorter secrets and keys (contract §7), and
// the nodes of `binary::node_env` run as in production.
pub const SERVICE_KEY: &str = "test-service-key-0123456789abcdef";
/// The key of a second service (`other`), for what one service may not do to another's data.
pub const OTHER_KEY: &str = "other-service-key-0123456789abcdef";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn rand_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A fresh database, dropped (with its connections) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("notifyd_test_{}", rand_hex());
        let mut admin = AsyncPgConnection::establish(&admin_url())
            .await
            .expect("admin connection to PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let base = admin_url();
        let url = format!(
            "{}/{}",
            &base[..base.rfind('/').expect("admin url has a database")],
            name
        );
        TestDb { name, url }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("test db connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context guarantees: use a throwaway runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url()).await {
                    let _ = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

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

pub fn new_user() -> String {
    format!("u{}", rand_hex())
}

pub fn token(user: &str) -> String {
    notifyd::auth::jwt::JwtKeys::new(JWT_SECRET)
        .mint(user, 3600, &[])
        .expect("mint")
}

pub fn token_with_topics(user: &str, topics: &[&str]) -> String {
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    notifyd::auth::jwt::JwtKeys::new(JWT_SECRET)
        .mint(user, 3600, &topics)
        .expect("mint")
}

/// A token for `user` that may send direct messages to the ids matching `send_to` (globs).
pub fn token_send_to(user: &str, send_to: &[&str]) -> String {
    let grants = notifyd::auth::jwt::Grants {
        send_to: send_to.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    notifyd::auth::jwt::JwtKeys::new(JWT_SECRET)
        .mint_with(user, 3600, &grants)
        .expect("mint")
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
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client that records every frame it reads.
pub struct WsClient {
    pub ws: WsStream,
    pub frames: Vec<Value>,
    pub closed: Option<(u16, String)>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(WsClient {
            ws,
            frames: vec![],
            closed: None,
        })
    }

    /// The next JSON frame, or `None` on close/timeout.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(WsMessage::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    self.frames.push(v.clone());
                    return Some(v);
                }
                Ok(WsMessage::Close(c)) => {
                    self.closed = Some(
                        c.map(|c| (u16::from(c.code), c.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame of type `ty`, skipping others; panics after `timeout`.
    pub async fn expect(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) if f["type"] == ty => return f,
                Some(_) => continue,
                None => panic!(
                    "no {ty} frame within {timeout:?}; closed={:?}; saw {:?}",
                    self.closed,
                    self.frames
                        .iter()
                        .map(|f| f["type"].clone())
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Reads until the socket closes (or `timeout`); returns the close code.
    pub async fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.next(left).await.is_none() && self.closed.is_none() {
                break;
            }
        }
        self.closed.as_ref().map(|c| c.0)
    }

    pub async fn send(&mut self, v: &Value) {
        self.ws
            .send(WsMessage::text(v.to_string()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, m: WsMessage) {
        let _ = self.ws.send(m).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A Redis subscriber the test reads directly, to see exactly what the relay published.
pub struct RedisTap {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RedisTap {
    pub async fn subscribe(channel: &str) -> Self {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut pubsub = client.get_async_pubsub().await.expect("redis pubsub");
        pubsub.subscribe(channel).await.expect("subscribe");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(m) = stream.next().await {
                let _ = tx.send(String::from_utf8_lossy(m.get_payload_bytes()).to_string());
            }
        });
        RedisTap { rx, task }
    }

    /// The next published frame. The relay publishes envelopes (a header line, then the frame:
    /// `broker::envelope`); this gives the frame, or the header alone (a JSON string) for an
    /// envelope without one (the erase notice, `"x"`).
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let s = self.next_raw(timeout).await?;
        if s.starts_with('{') {
            return Some(serde_json::from_str(&s).expect("published JSON"));
        }
        let (head, frame) = s.split_once('\n').expect("an envelope has a header line");
        if frame.is_empty() {
            return Some(Value::String(head.to_string()));
        }
        Some(serde_json::from_str(frame).expect("an envelope's frame is JSON"))
    }

    /// The next payload exactly as published.
    pub async fn next_raw(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok()?
    }

    /// Collects payloads until `n` arrived or `timeout` passed.
    pub async fn collect(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = vec![];
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }

    /// Whatever arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Value> {
        let mut out = vec![];
        while let Some(v) = self.next(window).await {
            out.push(v);
        }
        out
    }
}

/// A TCP proxy in front of Redis or PostgreSQL that a test can cut, freeze and restore, to make
/// the server unreachable (or silent) for one node without touching the shared server.
///
/// - `cut`: every proxied connection is closed and new ones are refused (a clean outage).
/// - `freeze`: every proxied connection stops forwarding in both directions WITHOUT being closed,
///   and new connections are accepted but never forwarded either: a half-open peer that
///   swallows requests and never answers (a dead host, a black-holing firewall).
/// - `restore`: new connections work again. Connections frozen earlier stay frozen for good
///   (their bytes are gone, as on a real dead path), so only a client that gives up on them and
///   reconnects recovers.
pub struct Cuttable {
    pub port: u16,
    mode: std::sync::Arc<tokio::sync::watch::Sender<ProxyMode>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    On,
    Cut,
    Frozen,
}

impl Cuttable {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (mode, _) = tokio::sync::watch::channel(ProxyMode::On);
        let mode = std::sync::Arc::new(mode);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let target = target.to_string();
        let mode2 = mode.clone();
        let accepted2 = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                accepted2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut rx = mode2.subscribe();
                let now = *rx.borrow();
                match now {
                    ProxyMode::Cut => drop(inbound),
                    // Accepted and then ignored: the client's connect succeeds, nothing answers.
                    ProxyMode::Frozen => {
                        tokio::spawn(hold_silently(inbound, None));
                    }
                    ProxyMode::On => {
                        let target = target.clone();
                        tokio::spawn(async move {
                            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                                return;
                            };
                            proxy_one(inbound, outbound, &mut rx).await;
                        });
                    }
                }
            }
        });
        Cuttable {
            port,
            mode,
            accepted,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A PostgreSQL URL through this proxy for the database `db_url` names.
    pub fn pg_url(&self, db_url: &str) -> String {
        let name = &db_url[db_url.rfind('/').expect("database name") + 1..];
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, name)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    /// Stops forwarding on every connection, old and new, without closing any (half-open).
    pub fn freeze(&self) {
        self.mode.send_replace(ProxyMode::Frozen);
    }

    pub fn restore(&self) {
        self.mode.send_replace(ProxyMode::On);
    }

    /// How many connections the proxy has accepted so far (reconnects show up here).
    pub fn accepted(&self) -> usize {
        std::sync::atomic::AtomicUsize::load(&self.accepted, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Forwards both ways until either side closes or the proxy is cut (close both) or frozen (stop
/// forwarding and keep both sockets open, unread, forever: the half-open case).
async fn proxy_one(
    mut inbound: tokio::net::TcpStream,
    mut outbound: tokio::net::TcpStream,
    rx: &mut tokio::sync::watch::Receiver<ProxyMode>,
) {
    let mode = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
        m = rx.wait_for(|m| *m != ProxyMode::On) => m.map(|m| *m).unwrap_or(ProxyMode::Cut),
    };
    if mode == ProxyMode::Frozen {
        hold_silently(inbound, Some(outbound)).await;
    }
}

/// Keeps the sockets open without reading or writing, for the rest of the test process.
async fn hold_silently(inbound: tokio::net::TcpStream, outbound: Option<tokio::net::TcpStream>) {
    let _keep = (inbound, outbound);
    std::future::pending::<()>().await;
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn scalar_i64(db_url: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        v: i64,
    }
    scalar_row::<Row>(db_url, sql).await.v
}

/// The one row `sql` selects from the test database.
async fn scalar_row<R>(db_url: &str, sql: &str) -> R
where
    R: diesel::QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    let mut c = AsyncPgConnection::establish(db_url).await.expect("conn");
    diesel::sql_query(sql)
        .get_result(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Spine and relay helpers (tests/api/spine.rs, tests/api/relay.rs).

/// A fresh Redis prefix, for tests that start several nodes of one deployment.
pub fn new_prefix() -> String {
    format!("t{}:", rand_hex())
}

/// Every row of `sql` as a JSON object (column name -> value), in the order the query gives.
pub async fn query_json(db_url: &str, sql: &str) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let mut c = AsyncPgConnection::establish(db_url).await.expect("conn");
    let r: Row = diesel::sql_query(format!(
        "SELECT COALESCE(json_agg(q), '[]'::json)::text AS v FROM ({sql}) q"
    ))
    .get_result(&mut c)
    .await
    .expect("json query");
    match serde_json::from_str(&r.v).expect("json_agg result") {
        Value::Array(rows) => rows,
        other => panic!("json_agg gave {other}"),
    }
}

/// `SELECT count(*)` of a whole table.
pub async fn count_rows(db_url: &str, table: &str) -> i64 {
    scalar_i64(db_url, &format!("SELECT count(*) AS v FROM {table}")).await
}

impl TestApp {
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
}

/// The `seq` of each published payload, in arrival order.
pub fn seqs_of(payloads: &[Value]) -> Vec<i64> {
    payloads
        .iter()
        .map(|p| p["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {p}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Gateway and user-API helpers (tests/api/gateway.rs, tests/api/user_api.rs).

/// One text value from the test database: `sql` must select one row with a text column `v`.
pub async fn scalar_text(db_url: &str, sql: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    scalar_row::<Row>(db_url, sql).await.v
}

/// PUBLISHes `payload` on `channel` of the test Redis, exactly as the relay would.
pub async fn redis_publish(channel: &str, payload: &str) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut c)
        .await
        .expect("PUBLISH");
}

/// A user JWT for `user` signed with `secret`, valid for `ttl_secs` (negative: already expired).
pub fn token_signed(secret: &str, user: &str, ttl_secs: i64) -> String {
    notifyd::auth::jwt::JwtKeys::new(secret)
        .mint(user, ttl_secs, &[])
        .expect("mint")
}

/// Opens a WebSocket to `url` sending extra handshake headers (`Origin`, `Authorization`, ...).
pub async fn ws_connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut req = url.into_client_request()?;
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(WsClient {
        ws,
        frames: vec![],
        closed: None,
    })
}

/// The HTTP status of a refused WebSocket handshake; panics if the handshake succeeded or
/// failed in some other way.
pub fn refused_status(r: Result<WsClient, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Ok(_) => panic!("the WebSocket handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

impl TestApp {
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

impl WsClient {
    /// The events of a resume, up to seq `last`: a long resume comes in several `sync` frames,
    /// and what did not fit the socket's budget follows as live frames. Panics on a reset, a
    /// close or `timeout`.
    pub async fn resumed_events(&mut self, last: i64, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events: Vec<Value> = vec![];
        while events.last().and_then(|e| e["seq"].as_i64()) != Some(last) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next(left).await else {
                panic!(
                    "resume ended after {} events: closed={:?}",
                    events.len(),
                    self.closed
                );
            };
            match f["type"].as_str() {
                Some("sync") => {
                    assert_eq!(f.get("reset"), None, "a reset instead of events");
                    events.extend(f["events"].as_array().expect("events").iter().cloned());
                }
                _ if f.get("seq").is_some() => events.push(f),
                _ => {}
            }
        }
        events
    }

    /// The very next frame, which must be of type `ty` (panics on anything else, a close or
    /// `timeout`).
    pub async fn next_of(&mut self, ty: &str, timeout: Duration) -> Value {
        match self.next(timeout).await {
            Some(f) if f["type"] == ty => f,
            Some(f) => panic!("expected a {ty} frame next, got {f}"),
            None => panic!(
                "expected a {ty} frame next; none within {timeout:?}, closed={:?}",
                self.closed
            ),
        }
    }

    /// The answer to `ref` (an `ack` or `error` echoing it), skipping any other frame; panics
    /// with what arrived if none comes within `timeout`.
    pub async fn answer_to(&mut self, r#ref: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) if f["ref"] == r#ref => return f,
                Some(_) => continue,
                None => panic!(
                    "no answer to {ref} within {timeout:?}; closed={:?}",
                    self.closed
                ),
            }
        }
    }

    /// The next `types.len()` frames, which must be exactly one of each type in any order;
    /// returned in the order of `types`.
    pub async fn next_set(&mut self, types: &[&str], timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got: Vec<Option<Value>> = vec![None; types.len()];
        for _ in 0..types.len() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next(left).await.unwrap_or_else(|| {
                panic!(
                    "expected frames {types:?}; got only {got:?}, closed={:?}",
                    self.closed
                )
            });
            let i = types
                .iter()
                .position(|t| f["type"] == *t)
                .unwrap_or_else(|| panic!("unexpected frame {f} while waiting for {types:?}"));
            assert!(got[i].is_none(), "a second {} frame: {f}", types[i]);
            got[i] = Some(f);
        }
        got.into_iter().map(|f| f.expect("filled")).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Liveness helpers (tests/api/liveness.rs).

// ---- Raw WebSocket frames and kernel/process probes (tests that write bytes by hand) ----

/// Opens a WebSocket by hand on a raw TCP stream (the tests below write frames byte by byte).
pub async fn raw_ws(app: &TestApp, user: &str) -> tokio::net::TcpStream {
    raw_ws_with(app, user, None).await.0
}

/// `raw_ws` with an optional receive buffer size (a small one fills the server's side fast);
/// returns the stream and its local port.
pub async fn raw_ws_with(
    app: &TestApp,
    user: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, u16) {
    let (mut s, port) = raw_upgrade_request(app, user, recv_buffer).await;
    read_upgrade_answer(&mut s).await;
    (s, port)
}

/// A raw WebSocket to the node on `port` with `token` (any token, or none that is valid), its
/// `101` answer read: the next bytes are frames.
pub async fn raw_ws_token(port: u16, token: &str) -> tokio::net::TcpStream {
    let (mut s, _) = raw_upgrade_request_to(port, token, None).await;
    read_upgrade_answer(&mut s).await;
    s
}

/// Reads a WebSocket handshake's answer up to its blank line; it must be `101`.
pub async fn read_upgrade_answer(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = vec![];
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.expect("handshake answer");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

/// A TCP connection to `app` that has sent `user`'s WebSocket upgrade request and read nothing
/// yet; returns the stream and its local port.
pub async fn raw_upgrade_request(
    app: &TestApp,
    user: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, u16) {
    raw_upgrade_request_to(app.port, &token(user), recv_buffer).await
}

/// `raw_upgrade_request` to the node on `port`, with `token` as it is.
pub async fn raw_upgrade_request_to(
    port: u16,
    token: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, u16) {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let mut s = sock
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let local = s.local_addr().expect("local addr").port();
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("handshake");
    (s, local)
}

/// Writes a masked binary frame header announcing 1 GiB, then as much of its payload as the
/// server takes within `limit`; returns the payload bytes it took. A server that stopped reading
/// leaves the client to TCP back-pressure (a few MB of kernel buffers on loopback); one that
/// reads and discards takes hundreds of MB.
pub async fn bytes_taken_after_a_huge_frame(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 30).to_be_bytes());
    head.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    s.write_all(&head).await.expect("header");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    let until = tokio::time::Instant::now() + limit;
    while written < (1 << 30) {
        match tokio::time::timeout_at(until, s.write(&chunk)).await {
            Ok(Ok(n)) => written += n,
            Ok(Err(_)) | Err(_) => break, // reset by the server, or blocked: both are fine
        }
    }
    written
}

/// Opens a transaction holding `user`'s counter row (`FOR UPDATE`): every command of that user
/// blocks in the database until the returned connection commits.
pub async fn hold_counters(db: &TestDb, user: &str) -> diesel_async::AsyncPgConnection {
    let mut holder = db.conn().await;
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    diesel::sql_query(format!(
        "SELECT 1 FROM user_inbox_state WHERE user_id = '{user}' FOR UPDATE"
    ))
    .execute(&mut holder)
    .await
    .expect("lock the row");
    holder
}

pub async fn release(mut holder: diesel_async::AsyncPgConnection) {
    diesel::sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");
}

/// Reads server frames until a close frame; returns its code (`None` if the connection ended
/// without one or `timeout` passed).
pub async fn read_close_code<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    timeout: Duration,
) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.ok()?;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    s.read_exact(&mut l).await.ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    s.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            if opcode == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// This process's resident set size, from `/proc/self/status`.
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Whether the kernel still holds an ESTABLISHED TCP connection from `client_port` to the
/// server's `server_port` on the server's side (`/proc/net/tcp`, local address first).
pub fn server_side_established(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| {
            addr.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        cols.len() > 3
            && port(cols[1]) == Some(server_port)
            && port(cols[2]) == Some(client_port)
            && cols[3] == "01"
    })
}

/// A masked client frame (raw-socket tests).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    assert!(payload.len() < 126, "control-sized frames only");
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A user JWT with the given grants (`topics`, `publish`, `send_to` glob patterns).
pub fn token_with_grants(user: &str, topics: &[&str], publish: &[&str]) -> String {
    let list = |l: &[&str]| l.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let grants = notifyd::auth::jwt::Grants {
        topics: list(topics),
        publish: list(publish),
        send_to: vec![],
    };
    notifyd::auth::jwt::JwtKeys::new(JWT_SECRET)
        .mint_with(user, 3600, &grants)
        .expect("mint")
}

/// The HTTP status and JSON error body of a refused WebSocket handshake.
pub fn refused_with_body(
    r: Result<WsClient, tokio_tungstenite::tungstenite::Error>,
) -> (u16, Value) {
    match r {
        Ok(_) => panic!("the WebSocket handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

/// A WebSocket on a socket with a 4 KiB receive buffer, so the server's side fills quickly;
/// returns it with its local port.
pub async fn small_buffer_ws(
    app: &TestApp,
    user: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    u16,
) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock
        .connect(([127, 0, 0, 1], app.port).into())
        .await
        .expect("connect");
    let port = stream.local_addr().expect("local addr").port();
    let (mut ws, _) = tokio_tungstenite::client_async(app.ws_url(&token(user), None), stream)
        .await
        .expect("handshake");
    let hello = futures_util::StreamExt::next(&mut ws)
        .await
        .expect("hello")
        .expect("hello frame");
    assert!(hello.to_string().contains("hello"));
    (ws, port)
}
