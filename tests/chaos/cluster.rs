//! The private services the harness runs and may break: PostgreSQL, Redis, the notifyd nodes,
//! nginx, and the `Cluster` that owns them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context};
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::proxy::TcpProxy;
use crate::redis_cluster::PrivateRedisCluster;
use crate::util::{command, free_port, is_root, kill9, log_to, note, run, wait_for, TempDir};
use crate::{Config, JWT_SECRET, NODES, SERVICE_KEY};

/// A PostgreSQL cluster of our own (initdb + pg_ctl), so restarting it hurts nobody else.
pub(crate) struct PrivatePostgres {
    pub(crate) bin: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) port: u16,
    /// initdb refuses to run as root: then every tool runs as the `postgres` OS user.
    pub(crate) as_postgres_user: bool,
}

impl PrivatePostgres {
    pub(crate) fn start(dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("pg");
        std::fs::create_dir_all(root.join("sock"))?;
        let as_postgres_user = is_root();
        if as_postgres_user {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root))?;
        }
        let pg = PrivatePostgres {
            bin: postgres_bin_dir()?,
            root,
            port: free_port(),
            as_postgres_user,
        };
        run(pg.tool("initdb").arg("-D").arg(pg.data()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        // Speed over durability (a test cluster): no fsync. Enough connections for three nodes'
        // pools, their relays and the harness.
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 200\nfsync = off\nfull_page_writes = off\n",
            pg.port,
            pg.root.join("sock").display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data().join("postgresql.conf"))?
            .write_all(conf.as_bytes())?;
        pg.pg_ctl(&["start"])?;
        Ok(pg)
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    pub(crate) fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub(crate) fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        run(self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .args(["-w", "-t", "60"])
            .args(args))
    }

    /// `pg_ctl restart -m fast`: every session is terminated, the server comes back.
    pub(crate) fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "restart"])
    }

    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// `/usr/lib/postgresql/<highest version>/bin` (or `PG_BIN`).
pub(crate) fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        let p = PathBuf::from(p);
        if !p.join("initdb").exists() {
            bail!("PG_BIN={} has no initdb", p.display());
        }
        return Ok(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found in /usr/lib/postgresql (scripts/services.sh installs them)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no /usr/lib/postgresql/*/bin/initdb")
}

/// A Redis of our own, as a child process: restarting it is `kill -9` and start again.
pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        r.launch().await?;
        Ok(r)
    }

    /// No persistence: notifyd needs none (pub/sub and presence only), and a restart must lose
    /// everything in flight, which is the point of the fault.
    pub(crate) async fn launch(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_to(&self.dir.join("redis.log"))?;
        let child = command("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let port = self.port;
        wait_for("redis", Duration::from_secs(20), || redis_pings(port)).await
    }

    pub(crate) fn kill(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) async fn redis_pings(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
            Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
        )
}

/// One `notifyd serve` process on a fixed port (a restart comes back where nginx expects it).
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Node {
    pub(crate) fn new(i: usize, database_url: &str, redis_url: &str, dir: &Path) -> Self {
        let name = format!("node-{i}");
        let port = free_port();
        let env = [
            ("DATABASE_URL", database_url.to_string()),
            ("REDIS_URL", redis_url.to_string()),
            ("NOTIFYD_BIND", format!("127.0.0.1:{port}")),
            ("NOTIFYD_JWT_SECRET", JWT_SECRET.to_string()),
            ("NOTIFYD_SERVICE_KEYS", format!("chaos:{SERVICE_KEY}")),
            ("NOTIFYD_NODE_ID", name.clone()),
            // Liveness (contract §7) closes a session that has not *read* for 2.5 heartbeats
            // and resets its connection. The slow-client fault stalls a client for ~20 s until
            // its queue fills (4008), so the window must be well beyond that: 30 s → 75 s.
            ("NOTIFYD_HEARTBEAT", "30s".to_string()),
            ("NOTIFYD_DB_POOL_SIZE", "12".to_string()),
            (
                "RUST_LOG",
                std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Node {
            log: dir.join(format!("{name}.log")),
            name,
            port,
            env,
            child: None,
        }
    }

    pub(crate) fn launch(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_to(&self.log)?;
        let child = command(env!("CARGO_BIN_EXE_notifyd"))
            .arg("serve")
            .env_remove("NOTIFYD_RELAY")
            .env_remove("NOTIFYD_REDIS_PREFIX")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no 1012 close frames, no relay hand-over, sockets just vanish.
    pub(crate) fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `/readyz`: PostgreSQL reachable and the Redis subscriber connected.
    pub(crate) async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base());
        let url = &url;
        wait_for(&self.name, Duration::from_secs(60), move || async move {
            matches!(http.get(url).send().await, Ok(r) if r.status() == 200)
        })
        .await
    }

    /// `notifyd_slow_consumer_closed_total` of this process (0 if it does not answer).
    pub(crate) async fn slow_consumers_closed(&self, http: &reqwest::Client) -> f64 {
        self.metric_sum(http, "notifyd_slow_consumer_closed_total")
            .await
    }

    /// The sum of a metric's series (every label set) on this process's `/metrics` (0 if it
    /// does not answer).
    pub(crate) async fn metric_sum(&self, http: &reqwest::Client, name: &str) -> f64 {
        let Ok(r) = http.get(format!("{}/metrics", self.base())).send().await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// nginx in the foreground, running `docs/deploy/nginx.conf` against our nodes.
pub(crate) struct Nginx {
    pub(crate) port: u16,
    pub(crate) child: Option<Child>,
}

impl Nginx {
    pub(crate) async fn start(dir: &Path, upstreams: &[String]) -> anyhow::Result<Self> {
        let bin = nginx_bin()?;
        let port = free_port();
        let site = deploy_config_for(
            include_str!("../../docs/deploy/nginx.conf"),
            port,
            upstreams,
            dir,
        )?;
        let site_path = dir.join("notifyd-site.conf");
        std::fs::write(&site_path, site)?;
        let tmp = dir.join("nginx-tmp");
        std::fs::create_dir_all(&tmp)?;
        let d = dir.display();
        let t = tmp.display();
        // One process (`master_process off`) that the harness can kill by its pid: no workers
        // left orphaned. Every path nginx writes to lives in the temp dir.
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 8192; }}\n\
             http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {t}/body;\n\
             \x20 proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n\
             \x20 uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
             \x20 include {};\n}}\n",
            site_path.display()
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main)?;
        let err_log = dir.join("nginx-error.log");
        let args = |c: &mut Command| {
            c.arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&err_log);
        };
        let mut test = Command::new(&bin);
        args(&mut test);
        run(test.arg("-t"))?;
        let (out, err) = log_to(&dir.join("nginx.log"))?;
        let mut cmd = command(&bin);
        args(&mut cmd);
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting nginx")?;
        let n = Nginx {
            port,
            child: Some(child),
        };
        wait_for("nginx", Duration::from_secs(20), move || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await?;
        Ok(n)
    }

    pub(crate) fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// /usr/sbin/nginx. The test never installs it (plain `cargo test` must not touch the system's
/// packages): scripts/services.sh does, and scripts/test.sh runs that first.
pub(crate) fn nginx_bin() -> anyhow::Result<PathBuf> {
    let bin = PathBuf::from("/usr/sbin/nginx");
    if bin.exists() {
        return Ok(bin);
    }
    bail!("nginx is not installed (/usr/sbin/nginx): run scripts/services.sh or apt-get install nginx")
}

/// A program on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// What the harness needs on this machine and does not find, one line each (`redis-cli` too
/// for a run on a Redis Cluster: it joins the nodes into one).
pub(crate) fn missing_prerequisites(redis: RedisKind) -> Vec<String> {
    let mut missing = vec![];
    if let Err(e) = postgres_bin_dir() {
        missing.push(format!("PostgreSQL server binaries: {e:#}"));
    }
    if !on_path("redis-server") {
        missing.push("redis-server is not on PATH (Debian package redis-server)".into());
    }
    if redis == RedisKind::Cluster && !on_path("redis-cli") {
        missing.push("redis-cli is not on PATH (Debian package redis-tools)".into());
    }
    if let Err(e) = nginx_bin() {
        missing.push(e.to_string());
    }
    if is_root() && !on_path("runuser") {
        missing.push(
            "runuser (util-linux): initdb refuses root, the cluster runs as `postgres`".into(),
        );
    }
    missing
}

/// The deploy recipe with our nodes in the upstream and our port in `listen`, nothing else
/// changed, plus an `X-Upstream` header on the WebSocket handshake and the SSE response so a
/// client knows which node holds its connection (the node-kill fault needs that).
pub(crate) fn deploy_config_for(
    template: &str,
    port: u16,
    upstreams: &[String],
    log_dir: &Path,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let (mut in_upstream, mut servers_done, mut listen_done, mut ws_done, mut sse_done) =
        (false, false, false, false, false);
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with("upstream ") {
            in_upstream = true;
        } else if in_upstream && t.starts_with('}') {
            in_upstream = false;
        }
        if in_upstream && t.starts_with("server ") {
            if !servers_done {
                // Keep the recipe's options (max_fails, fail_timeout) on every node.
                let opts: Vec<&str> = t.trim_end_matches(';').split_whitespace().skip(2).collect();
                for u in upstreams {
                    let _ = writeln!(out, "    server {u} {};", opts.join(" "));
                }
                servers_done = true;
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("access_log ") {
            // Same format, but into the run's directory, not the system's /var/log/nginx.
            let format = rest.trim_end_matches(';').split_whitespace().nth(1);
            let path = log_dir.join("nginx-access-ws.log");
            let _ = writeln!(
                out,
                "        access_log {} {};",
                path.display(),
                format.unwrap_or("")
            );
            continue;
        }
        if t.starts_with("listen ") {
            if !listen_done {
                let _ = writeln!(out, "    listen 127.0.0.1:{port};");
                listen_done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t.starts_with("location /ws") || t.starts_with("location /sse") {
            out.push_str("        add_header X-Upstream $upstream_addr always;\n");
            if t.starts_with("location /ws") {
                ws_done = true;
            } else {
                sse_done = true;
            }
        }
    }
    if !(servers_done && listen_done && ws_done && sse_done) {
        bail!("docs/deploy/nginx.conf needs an upstream with server lines, a listen line, a /ws and a /sse location");
    }
    Ok(out)
}

/// How the proxies tell the nodes' connections apart (see `proxy.rs`): the hub's subscriber
/// sends SUBSCRIBE; pooled connections PUBLISH, SET, PING...
pub(crate) const REDIS_ROLES: &[(&str, &str)] = &[("SUBSCRIBE", "subscriber")];
/// The relay names its connection `notifyd relay <node>` (and takes the leader lock on it), the
/// housekeeper `notifyd housekeeper <node>`; the LISTEN connection of a leading relay; the rest
/// are the request pools'.
pub(crate) const PG_ROLES: &[(&str, &str)] = &[
    ("notifyd relay", "relay"),
    ("notifyd housekeeper", "housekeeper"),
    ("LISTEN ", "listen"),
];

/// Which Redis the nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RedisKind {
    /// One private Redis, reached through a TCP proxy (`REDIS_URL=redis://`).
    Single,
    /// A private Redis Cluster, 3 masters and 3 replicas (`REDIS_URL=redis+cluster://`).
    Cluster,
}

/// The Redis the nodes use, and what the faults need to break it.
pub(crate) enum Broker {
    /// The nodes reach it only through the proxy (the half-open fault); the harness itself
    /// talks to it directly, so a frozen path never blinds the checker.
    Single {
        proxy: TcpProxy,
        redis: PrivateRedis,
    },
    /// The nodes reach its nodes directly: a cluster hands out its nodes' own addresses (in
    /// `CLUSTER SLOTS`, `MOVED`), which a proxy in front of a seed would not cover.
    Cluster(PrivateRedisCluster),
}

/// Everything the harness runs. Fields drop in order: nginx, the nodes, the proxy, Redis,
/// PostgreSQL, and the temp dir last.
pub(crate) struct Cluster {
    pub(crate) nginx: Nginx,
    pub(crate) nodes: Vec<Node>,
    /// The nodes reach PostgreSQL only through this (the half-open fault); the harness itself
    /// talks to it directly.
    pub(crate) pg_proxy: TcpProxy,
    pub(crate) broker: Broker,
    pub(crate) pg: PrivatePostgres,
    pub(crate) http: reqwest::Client,
    pub(crate) dir: TempDir,
}

impl Cluster {
    pub(crate) async fn start(cfg: &Config, redis: RedisKind) -> anyhow::Result<Self> {
        // Scoped: its blanket `load` would shadow `AtomicBool::load` elsewhere in this file.
        use diesel_async::RunQueryDsl;
        let dir = TempDir::new(cfg.keep)?;
        note(format!("run directory {}", dir.path.display()));
        let pg = PrivatePostgres::start(&dir.path)?;
        let mut admin = AsyncPgConnection::establish(&pg.url("postgres")).await?;
        diesel::sql_query("CREATE DATABASE notifyd")
            .execute(&mut admin)
            .await?;
        drop(admin);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        let pg_proxy = TcpProxy::start(pg.port, PG_ROLES).await?;
        let node_db = format!("postgres://postgres@127.0.0.1:{}/notifyd", pg_proxy.port);
        let (broker, node_redis, redis_note) = match redis {
            RedisKind::Single => {
                let redis = PrivateRedis::start(&dir.path).await?;
                let proxy = TcpProxy::start(redis.port, REDIS_ROLES).await?;
                let url = format!("redis://127.0.0.1:{}", proxy.port);
                let note = format!("redis :{} (nodes via :{})", redis.port, proxy.port);
                (Broker::Single { proxy, redis }, url, note)
            }
            RedisKind::Cluster => {
                let c = PrivateRedisCluster::start(&dir.path).await?;
                let url = format!("redis+cluster://{}", c.seeds());
                let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
                let note = format!("redis cluster {ports:?}");
                (Broker::Cluster(c), url, note)
            }
        };
        let mut nodes: Vec<Node> = (1..=NODES)
            .map(|i| Node::new(i, &node_db, &node_redis, &dir.path))
            .collect();
        if redis == RedisKind::Cluster {
            for n in &mut nodes {
                // No periodic audit: what a failover loses must be repaired by the
                // subscriber's reconnect and `Resync`, the path under test, not found later
                // by the audit (every 10 s by default), which would hide a broken resync.
                n.env.push(("NOTIFYD_AUDIT_INTERVAL".into(), "1h".into()));
            }
        }
        // The first node applies the migrations alone; then the others start.
        nodes[0].launch()?;
        nodes[0].wait_ready(&http).await?;
        for n in nodes.iter_mut().skip(1) {
            n.launch()?;
        }
        for n in &nodes {
            n.wait_ready(&http).await?;
        }
        let addrs: Vec<String> = nodes.iter().map(Node::addr).collect();
        let nginx = Nginx::start(&dir.path, &addrs).await?;
        let ready = format!("{}/readyz", nginx.http_base());
        let (h, ready) = (&http, &ready);
        wait_for(
            "nginx -> notifyd",
            Duration::from_secs(20),
            move || async move { matches!(h.get(ready).send().await, Ok(r) if r.status() == 200) },
        )
        .await?;
        note(format!(
            "postgres :{} (nodes via :{})  {redis_note}  nodes {:?}  nginx :{}",
            pg.port, pg_proxy.port, addrs, nginx.port
        ));
        Ok(Cluster {
            nginx,
            nodes,
            pg_proxy,
            broker,
            pg,
            http,
            dir,
        })
    }

    /// The single Redis (the Redis restart of the default run).
    pub(crate) fn single_redis(&mut self) -> anyhow::Result<&mut PrivateRedis> {
        match &mut self.broker {
            Broker::Single { redis, .. } => Ok(redis),
            Broker::Cluster(_) => bail!("this run's nodes use a Redis Cluster, not one Redis"),
        }
    }

    /// The proxy between the nodes and the single Redis (the half-open Redis fault).
    pub(crate) fn redis_proxy(&self) -> anyhow::Result<&TcpProxy> {
        match &self.broker {
            Broker::Single { proxy, .. } => Ok(proxy),
            Broker::Cluster(_) => bail!("this run's nodes use a Redis Cluster, not one Redis"),
        }
    }

    /// The Redis Cluster (the master-kill fault).
    pub(crate) fn redis_cluster(&mut self) -> anyhow::Result<&mut PrivateRedisCluster> {
        match &mut self.broker {
            Broker::Cluster(c) => Ok(c),
            Broker::Single { .. } => bail!("this run's nodes use one Redis, not a cluster"),
        }
    }

    pub(crate) fn db_url(&self) -> String {
        self.pg.url("notifyd")
    }

    pub(crate) async fn db(&self) -> anyhow::Result<AsyncPgConnection> {
        Ok(AsyncPgConnection::establish(&self.db_url()).await?)
    }

    /// The node whose relay holds the leader lock (its connection is named
    /// `notifyd relay <node id>`).
    pub(crate) async fn relay_leader(&self) -> anyhow::Result<Option<String>> {
        // Scoped: its blanket `load` would shadow `AtomicBool::load` elsewhere in this file.
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Holder {
            #[diesel(sql_type = Text)]
            name: String,
        }
        let mut conn = self.db().await?;
        let rows: Vec<Holder> = diesel::sql_query(
            "SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a \
             ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted \
             AND a.application_name LIKE 'notifyd relay %'",
        )
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|h| h.name.trim_start_matches("notifyd relay ").to_string()))
    }

    /// Each node's `/readyz` answer within `timeout`: `node-1 200`, `node-2 503`,
    /// `node-3 no answer`.
    pub(crate) async fn readyz_all(&self, timeout: Duration) -> Vec<String> {
        let probes = self.nodes.iter().map(|n| async move {
            let url = format!("{}/readyz", n.base());
            let answer = match tokio::time::timeout(timeout, self.http.get(url).send()).await {
                Ok(Ok(r)) => r.status().as_u16().to_string(),
                Ok(Err(_)) => "error".to_string(),
                Err(_) => "no answer".to_string(),
            };
            format!("{} {answer}", n.name)
        });
        futures_util::future::join_all(probes).await
    }

    pub(crate) fn node_index(&self, name_or_addr: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name_or_addr || n.addr() == name_or_addr)
    }

    pub(crate) async fn inbox_seqs(&self) -> anyhow::Result<HashMap<String, (i64, i64)>> {
        // Scoped: its blanket `load` would shadow `AtomicBool::load` elsewhere in this file.
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            user_id: String,
            #[diesel(sql_type = BigInt)]
            seq: i64,
            #[diesel(sql_type = BigInt)]
            unread: i64,
        }
        let mut conn = self.db().await?;
        let rows: Vec<Row> = diesel::sql_query("SELECT user_id, seq, unread FROM user_inbox_state")
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.user_id, (r.seq, r.unread)))
            .collect())
    }

    pub(crate) async fn outbox_backlog(&self) -> anyhow::Result<i64> {
        // Scoped: its blanket `load` would shadow `AtomicBool::load` elsewhere in this file.
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db().await?;
        let n: N = diesel::sql_query("SELECT count(*) AS n FROM outbox")
            .get_result(&mut conn)
            .await?;
        Ok(n.n)
    }
}
