//! The chaos harness: proof that a notification committed to PostgreSQL reaches every connected
//! tab of its user exactly once (after dedupe by seq), in order, whatever crashes in between.
//!
//! It starts its OWN PostgreSQL cluster and Redis (private instances on free ports, so it may
//! kill and restart them without touching the shared servers other tests use), three
//! `notifyd serve` nodes, and nginx in front of them running `docs/deploy/nginx.conf`. Simulated
//! users (1-3 WebSocket clients each, through nginx) reconnect with back-off and resume with
//! `since`; a producer POSTs messages through nginx with an `Idempotency-Key` each, retrying until
//! `201`. Meanwhile it injects, at least once each: `kill -9` of the node holding a client's
//! socket, `kill -9` of the node running the active relay, a Redis restart, a PostgreSQL restart
//! (`pg_ctl restart -m fast`), a client TCP connection dropped without a close frame, and a slow
//! client that stops reading (the server must close it with 4008; it resumes).
//!
//! At the end every client's log is checked against the database: the events it applied are
//! exactly seq 1..=N of its user, once each, in order; every `message.created` matches
//! `t_message_real_time`; its last `unread` equals the database's; every id the producer got a
//! `201` for exists. The report (printed, and written as markdown to `CHAOS_REPORT` when set)
//! gives the figures `docs/reliability.md` quotes.
//!
//! Sizes: `CHAOS_USERS` (20), `CHAOS_MESSAGES` (400), `CHAOS_RATE` (messages/s; by default the
//! messages are spread over ~45 s so every fault lands while they flow). `CHAOS_LONG=1`: 200
//! users, 20,000 messages at 100/s, faults repeated until the producer is done
//! (`scripts/chaos-long.sh`). `CHAOS_KEEP=1` keeps the temp dir with every log (it is kept
//! anyway when the test fails).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const JWT_SECRET: &str = "chaos-jwt-secret";
const SERVICE_KEY: &str = "chaos-service-key";
const NODES: usize = 3;
/// The nodes ping every 2 s, so a client that hears nothing for this long has a dead socket.
const CLIENT_SILENCE: Duration = Duration::from_secs(12);
/// Messages per slow-client flood request (large ones, so few frames fill the socket buffers).
const FLOOD_BATCH: usize = 100;

// ------------------------------------------------------------------------------------------
// Configuration and small utilities
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    long: bool,
    users: usize,
    messages: usize,
    /// Messages per second the producer starts.
    rate: f64,
    /// Pause between two faults.
    gap: Duration,
    /// At most this many rounds of the six faults (long runs repeat them while messages flow).
    rounds: usize,
    report: Option<PathBuf>,
    keep: bool,
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Config {
    fn from_env() -> Self {
        let long = std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1" || v == "true");
        let users: usize = env_num("CHAOS_USERS", if long { 200 } else { 20 }).max(1);
        let messages: usize = env_num("CHAOS_MESSAGES", if long { 20_000 } else { 400 }).max(1);
        let default_rate = if long { 100.0 } else { messages as f64 / 45.0 };
        Config {
            long,
            users,
            messages,
            rate: env_num("CHAOS_RATE", default_rate).max(0.1),
            gap: Duration::from_secs(env_num("CHAOS_FAULT_GAP_S", if long { 5 } else { 3 })),
            rounds: env_num("CHAOS_ROUNDS", if long { 100 } else { 1 }).max(1),
            report: std::env::var("CHAOS_REPORT").ok().map(PathBuf::from),
            keep: std::env::var("CHAOS_KEEP").is_ok(),
        }
    }
}

/// Milliseconds since the run started: every record in the harness uses this one clock.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ms(&self) -> f64 {
        self.0.elapsed().as_secs_f64() * 1000.0
    }
}

/// Progress lines go straight to stderr: libtest captures `println!`, and a CI log of a chaos
/// run without its timeline is useless.
fn note(msg: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr().lock(), "[chaos] {}", msg.as_ref());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command whose process is SIGKILLed when the test process dies (PR_SET_PDEATHSIG via
/// `setpriv`), so even a harness killed by a CI timeout leaves no node, nginx or Redis behind.
/// Spawned from the test's main thread (the one that lives for the whole run).
fn command(program: impl AsRef<OsStr>) -> Command {
    if Path::new("/usr/bin/setpriv").exists() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// stdout and stderr of a child, appended to `path` (restarts add to the same file).
fn log_to(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

/// Runs a command to completion; its output goes into the error when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// SIGKILL (`kill -9`) and reap.
fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what}: not ready after {timeout:?}")
}

/// A directory for one run: data, configs and every log. Removed at the end unless the run
/// failed or `CHAOS_KEEP` is set. Dropped last, after every process living in it.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(keep: bool) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!(
            "notifyd-chaos-{}-{}",
            std::process::id(),
            &suffix[..8]
        ));
        std::fs::create_dir_all(&path)?;
        // Traversable by the `postgres` OS user, who owns the private cluster below it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            note(format!("logs and data kept in {}", self.path.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The private services: PostgreSQL, Redis, the notifyd nodes, nginx
// ------------------------------------------------------------------------------------------

/// A PostgreSQL cluster of our own (initdb + pg_ctl), so restarting it hurts nobody else.
struct PrivatePostgres {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    /// initdb refuses to run as root: then every tool runs as the `postgres` OS user.
    as_postgres_user: bool,
}

impl PrivatePostgres {
    fn start(dir: &Path) -> anyhow::Result<Self> {
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

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
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
    fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "restart"])
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// `/usr/lib/postgresql/<highest version>/bin` (or `PG_BIN`).
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(p));
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
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
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
    async fn launch(&mut self) -> anyhow::Result<()> {
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

    fn kill(&mut self) {
        kill9(&mut self.child);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn redis_pings(port: u16) -> bool {
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
struct Node {
    name: String,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(i: usize, database_url: &str, redis_url: &str, dir: &Path) -> Self {
        let name = format!("node-{i}");
        let port = free_port();
        let env = [
            ("DATABASE_URL", database_url.to_string()),
            ("REDIS_URL", redis_url.to_string()),
            ("NOTIFYD_BIND", format!("127.0.0.1:{port}")),
            ("NOTIFYD_JWT_SECRET", JWT_SECRET.to_string()),
            ("NOTIFYD_SERVICE_KEYS", format!("chaos:{SERVICE_KEY}")),
            ("NOTIFYD_NODE_ID", name.clone()),
            // Dead sockets are noticed within 5 s instead of a minute.
            ("NOTIFYD_HEARTBEAT", "2s".to_string()),
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

    fn launch(&mut self) -> anyhow::Result<()> {
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
    fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `/readyz`: PostgreSQL reachable and the Redis subscriber connected.
    async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base());
        let url = &url;
        wait_for(&self.name, Duration::from_secs(60), move || async move {
            matches!(http.get(url).send().await, Ok(r) if r.status() == 200)
        })
        .await
    }

    /// `notifyd_slow_consumer_closed_total` of this process (0 if it does not answer).
    async fn slow_consumers_closed(&self, http: &reqwest::Client) -> f64 {
        let Ok(r) = http.get(format!("{}/metrics", self.base())).send().await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("notifyd_slow_consumer_closed_total"))
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
struct Nginx {
    port: u16,
    child: Option<Child>,
}

impl Nginx {
    async fn start(dir: &Path, upstreams: &[String]) -> anyhow::Result<Self> {
        let bin = nginx_bin()?;
        let port = free_port();
        let site = deploy_config_for(
            include_str!("../docs/deploy/nginx.conf"),
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

    fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws_base(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// /usr/sbin/nginx, installed with apt-get (Debian package `nginx`) when absent and root.
fn nginx_bin() -> anyhow::Result<PathBuf> {
    let bin = PathBuf::from("/usr/sbin/nginx");
    if bin.exists() {
        return Ok(bin);
    }
    if !is_root() {
        bail!("nginx is not installed (/usr/sbin/nginx): run scripts/services.sh or apt-get install nginx");
    }
    note("installing nginx with apt-get");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "nginx"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install()?;
    }
    Ok(bin)
}

/// The deploy recipe with our nodes in the upstream and our port in `listen`, nothing else
/// changed, plus an `X-Upstream` header on the WebSocket handshake so a client knows which
/// node holds its socket (the node-kill fault needs that).
fn deploy_config_for(
    template: &str,
    port: u16,
    upstreams: &[String],
    log_dir: &Path,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let (mut in_upstream, mut servers_done, mut listen_done, mut ws_done) =
        (false, false, false, false);
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
        if t.starts_with("location /ws") {
            out.push_str("        add_header X-Upstream $upstream_addr always;\n");
            ws_done = true;
        }
    }
    if !(servers_done && listen_done && ws_done) {
        bail!("docs/deploy/nginx.conf needs an upstream with server lines, a listen line and a /ws location");
    }
    Ok(out)
}

/// Everything the harness runs. Fields drop in order: nginx, the nodes, Redis, PostgreSQL, and
/// the temp dir last.
struct Cluster {
    nginx: Nginx,
    nodes: Vec<Node>,
    redis: PrivateRedis,
    pg: PrivatePostgres,
    http: reqwest::Client,
    dir: TempDir,
}

impl Cluster {
    async fn start(cfg: &Config) -> anyhow::Result<Self> {
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
        let redis = PrivateRedis::start(&dir.path).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        let mut nodes: Vec<Node> = (1..=NODES)
            .map(|i| Node::new(i, &pg.url("notifyd"), &redis.url(), &dir.path))
            .collect();
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
            "postgres :{}  redis :{}  nodes {:?}  nginx :{}",
            pg.port, redis.port, addrs, nginx.port
        ));
        Ok(Cluster {
            nginx,
            nodes,
            redis,
            pg,
            http,
            dir,
        })
    }

    fn db_url(&self) -> String {
        self.pg.url("notifyd")
    }

    async fn db(&self) -> anyhow::Result<AsyncPgConnection> {
        Ok(AsyncPgConnection::establish(&self.db_url()).await?)
    }

    /// The node whose relay holds the leader lock (its connection is named
    /// `notifyd relay <node id>`).
    async fn relay_leader(&self) -> anyhow::Result<Option<String>> {
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

    fn node_index(&self, name_or_addr: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name_or_addr || n.addr() == name_or_addr)
    }

    async fn slow_consumers_closed(&self) -> f64 {
        let mut total = 0.0;
        for n in &self.nodes {
            total += n.slow_consumers_closed(&self.http).await;
        }
        total
    }

    async fn inbox_seqs(&self) -> anyhow::Result<HashMap<String, (i64, i64)>> {
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

    async fn outbox_backlog(&self) -> anyhow::Result<i64> {
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

// ------------------------------------------------------------------------------------------
// The simulated users' WebSocket clients
// ------------------------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the harness steers a client (faults) and sees its connection state.
#[derive(Default)]
struct ClientCtl {
    /// Fault: drop the TCP connection now, without a WebSocket close frame.
    drop_socket: Notify,
    /// Fault: stop reading until `resume` (still writing, so the heartbeat does not close the
    /// session first: only the full queue may, with 4008).
    stall: Notify,
    resume: Notify,
    connected: AtomicBool,
    connects: AtomicUsize,
    /// The node nginx sent the current connection to (from `X-Upstream`).
    upstream: Mutex<Option<String>>,
}

/// One received frame: when, what, which seq.
struct FrameRec {
    t: f64,
    kind: String,
    seq: Option<i64>,
}

/// Everything a client saw, for the checker.
#[derive(Default)]
struct ClientLog {
    user: String,
    /// Seqs in the order they were applied (after dedupe by seq).
    applied: Vec<i64>,
    applied_set: HashSet<i64>,
    /// seq -> when it was applied (ms on the run clock).
    applied_at: HashMap<i64, f64>,
    /// (seq, message id) of every applied `message.created`.
    created: Vec<(i64, String)>,
    /// The highest applied seq: what the client resumes from.
    last_seq: i64,
    /// `unread` of the event with the highest seq applied.
    last_unread: Option<i64>,
    /// Frames whose seq was already applied (before dedupe). The server promises none.
    raw_duplicates: usize,
    resets: usize,
    error_frames: usize,
    frames: Vec<FrameRec>,
    /// How each connection ended, and when.
    ends: Vec<(f64, String)>,
    handshake_failures: Vec<(f64, String)>,
    stalls: Vec<(f64, f64)>,
    violations: Vec<String>,
}

impl ClientLog {
    /// Applies an event with a seq, deduping by seq. Returns the id of a newly created message.
    fn apply(&mut self, ev: &Value, t: f64) -> Option<String> {
        let Some(seq) = ev["seq"].as_i64() else {
            self.violations.push(format!("event without seq: {ev}"));
            return None;
        };
        if !self.applied_set.insert(seq) {
            self.raw_duplicates += 1;
            return None;
        }
        self.applied.push(seq);
        self.applied_at.insert(seq, t);
        if seq > self.last_seq {
            self.last_seq = seq;
            self.last_unread = ev["unread"].as_i64();
        }
        if ev["type"] == "message.created" {
            let id = ev["message"]["id"].as_str().unwrap_or_default().to_string();
            self.created.push((seq, id.clone()));
            return Some(id);
        }
        None
    }
}

enum Ended {
    Stopped,
    Closed(Option<u16>),
    Eof,
    Error(String),
    Silent,
    Dropped,
}

impl Ended {
    fn label(&self) -> String {
        match self {
            Ended::Stopped => "stopped".into(),
            Ended::Closed(Some(c)) => format!("close {c}"),
            Ended::Closed(None) => "close (no code)".into(),
            Ended::Eof => "eof without close frame".into(),
            Ended::Error(e) => format!("error: {e}"),
            Ended::Silent => "silent (no frame for 12 s)".into(),
            Ended::Dropped => "dropped by the harness".into(),
        }
    }
}

/// One client: connects through nginx, applies what it gets, reconnects with back-off and
/// `since=<last applied seq>` whatever happened, and obeys the harness's faults.
struct ChaosClient {
    ws_base: String,
    token: String,
    log: Arc<Mutex<ClientLog>>,
    ctl: Arc<ClientCtl>,
    clock: Clock,
    stop: watch::Receiver<bool>,
    /// This client marks some of the messages it gets read (`{"type":"read"}`).
    sends_reads: bool,
    salt: u64,
}

impl ChaosClient {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let since = lock(&self.log).last_seq;
            let url = format!("{}/ws?token={}&since={since}", self.ws_base, self.token);
            let connect = tokio_tungstenite::connect_async(url);
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Ok(Ok((ws, response))) => {
                    // With retries nginx lists every address it tried; the last one answered.
                    let upstream = response
                        .headers()
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit(", ").next())
                        .map(str::to_string);
                    *lock(&self.ctl.upstream) = upstream;
                    self.ctl.connected.store(true, Ordering::SeqCst);
                    self.ctl.connects.fetch_add(1, Ordering::SeqCst);
                    let (ended, healthy) = self.session(ws).await;
                    self.ctl.connected.store(false, Ordering::SeqCst);
                    lock(&self.log).ends.push((self.clock.ms(), ended.label()));
                    if let Ended::Stopped = ended {
                        return;
                    }
                    attempt = if healthy { 0 } else { attempt + 1 };
                }
                Ok(Err(e)) => {
                    lock(&self.log)
                        .handshake_failures
                        .push((self.clock.ms(), e.to_string()));
                    attempt += 1;
                }
                Err(_) => {
                    lock(&self.log)
                        .handshake_failures
                        .push((self.clock.ms(), "handshake timed out".into()));
                    attempt += 1;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt)) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    /// Reads one connection until it ends. Returns how, and whether it got its `hello`.
    async fn session(&mut self, ws: Ws) -> (Ended, bool) {
        let (mut sink, mut stream) = ws.split();
        let mut healthy = false;
        loop {
            let mut read_cmd = None;
            tokio::select! {
                _ = self.stop.changed() => {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    return (Ended::Stopped, healthy);
                }
                _ = self.ctl.drop_socket.notified() => {
                    // Both halves dropped here: the TCP connection closes, no close frame.
                    return (Ended::Dropped, healthy);
                }
                _ = self.ctl.stall.notified() => self.stall(&mut sink).await,
                msg = tokio::time::timeout(CLIENT_SILENCE, stream.next()) => match msg {
                    Err(_) => return (Ended::Silent, healthy),
                    Ok(None) => return (Ended::Eof, healthy),
                    Ok(Some(Err(e))) => return (Ended::Error(e.to_string()), healthy),
                    Ok(Some(Ok(WsMessage::Close(c)))) => {
                        return (Ended::Closed(c.map(|c| u16::from(c.code))), healthy)
                    }
                    Ok(Some(Ok(WsMessage::Text(text)))) => {
                        let (hello, id) = self.on_frame(&text);
                        healthy |= hello;
                        read_cmd = id.map(|id| json!({"type": "read", "ids": [id], "ref": "r"}));
                    }
                    Ok(Some(Ok(_))) => {} // pings are answered by tungstenite itself
                }
            }
            if let Some(cmd) = read_cmd {
                let _ = sink.send(WsMessage::text(cmd.to_string())).await;
            }
        }
    }

    /// The slow client: reads nothing until resumed (at most a minute), but keeps writing
    /// application pings so only its queue filling up can get it closed.
    async fn stall(&mut self, sink: &mut SplitSink<Ws, WsMessage>) {
        let started = self.clock.ms();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = self.ctl.resume.notified() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if Instant::now() > deadline {
                        break;
                    }
                    let ping = WsMessage::text(r#"{"type":"ping"}"#);
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(ping)).await;
                }
            }
        }
        lock(&self.log).stalls.push((started, self.clock.ms()));
    }

    /// Records and applies one text frame. Returns (was it `hello`, a message id to mark read).
    fn on_frame(&self, text: &str) -> (bool, Option<String>) {
        let t = self.clock.ms();
        let mut log = lock(&self.log);
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            let head: String = text.chars().take(80).collect();
            log.violations
                .push(format!("a frame that is not JSON: {head}"));
            return (false, None);
        };
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        log.frames.push(FrameRec {
            t,
            kind: kind.clone(),
            seq: v["seq"].as_i64(),
        });
        let mut created = None;
        match kind.as_str() {
            "hello" => return (true, None),
            "sync" if v["reset"] == true => {
                // Cannot happen in this run (never 1,000 events behind): it would hide losses.
                log.resets += 1;
                log.violations.push(format!(
                    "sync reset at seq {}",
                    v["seq"].as_i64().unwrap_or(-1)
                ));
                if let Some(s) = v["seq"].as_i64() {
                    log.last_seq = s;
                }
            }
            "sync" => {
                for ev in v["events"].as_array().into_iter().flatten() {
                    created = log.apply(ev, t).or(created);
                }
            }
            "error" => log.error_frames += 1,
            "ack" | "pong" | "topic.event" => {}
            _ => created = log.apply(&v, t),
        }
        // Some clients mark about a fifth of what they get read: more events, from every node.
        let pick = created.filter(|_| {
            self.sends_reads
                && (log.last_seq as u64).wrapping_mul(2_654_435_761) % 5 == self.salt % 5
        });
        (false, pick)
    }
}

/// Full jitter, capped at 2 s: the first retry after a healthy connection is almost immediate.
fn backoff(attempt: u32) -> Duration {
    let ceiling = (100u64 << attempt.min(5)).min(2000);
    Duration::from_millis((rand::random::<f64>() * ceiling as f64) as u64)
}

/// The harness's view of one client.
struct Client {
    user: String,
    log: Arc<Mutex<ClientLog>>,
    ctl: Arc<ClientCtl>,
    task: JoinHandle<()>,
}

/// Users `user-000`.. with 1, 2 or 3 clients each (`1 + i % 3`).
fn start_clients(
    cfg: &Config,
    ws_base: &str,
    clock: Clock,
    stop: &watch::Receiver<bool>,
) -> (Vec<String>, Vec<Client>) {
    let keys = notifyd::auth::jwt::JwtKeys::new(JWT_SECRET);
    let users: Vec<String> = (0..cfg.users).map(|i| format!("user-{i:03}")).collect();
    let mut clients = vec![];
    for (i, user) in users.iter().enumerate() {
        let token = keys.mint(user, 24 * 3600, &[]).expect("mint a user token");
        for _ in 0..1 + i % 3 {
            let n = clients.len();
            let log = Arc::new(Mutex::new(ClientLog {
                user: user.clone(),
                ..Default::default()
            }));
            let ctl = Arc::new(ClientCtl::default());
            let client = ChaosClient {
                ws_base: ws_base.to_string(),
                token: token.clone(),
                log: log.clone(),
                ctl: ctl.clone(),
                clock,
                stop: stop.clone(),
                sends_reads: n % 3 == 1,
                salt: n as u64,
            };
            clients.push(Client {
                user: user.clone(),
                log,
                ctl,
                task: tokio::spawn(client.run()),
            });
        }
    }
    (users, clients)
}

// ------------------------------------------------------------------------------------------
// The producer
// ------------------------------------------------------------------------------------------

struct CreatedRow {
    id: String,
    user: String,
    seq: i64,
    /// When the 201 came back (ms on the run clock).
    t201: f64,
    flood: bool,
}

struct Failure {
    t: f64,
    /// None: a transport error (no HTTP answer at all).
    status: Option<u16>,
    detail: String,
}

#[derive(Default)]
struct ProducerLog {
    created: Vec<CreatedRow>,
    failures: Vec<Failure>,
    /// A failed attempt (5xx or no answer) whose retry was an idempotent replay: the failed
    /// attempt had in fact committed.
    replays_after_failure: usize,
    gave_up: Vec<String>,
    requests: usize,
}

/// POSTs through nginx, each request with its own `Idempotency-Key`, retried with the same key
/// on any non-2xx answer or transport error until `201`.
#[derive(Clone)]
struct Producer {
    http: reqwest::Client,
    url: String,
    clock: Clock,
    log: Arc<Mutex<ProducerLog>>,
}

impl Producer {
    fn new(nginx: &Nginx, clock: Clock) -> Self {
        Producer {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
            url: format!("{}/api/v1/messages", nginx.http_base()),
            clock,
            log: Arc::new(Mutex::new(ProducerLog::default())),
        }
    }

    /// The regular load: `n` messages at `rate`/s, round-robin over the users.
    async fn run(self, users: Arc<Vec<String>>, n: usize, rate: f64) {
        let in_flight = Arc::new(Semaphore::new(32));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for k in 0..n {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let user = &users[k % users.len()];
            let body = json!({
                "to_user": user, "title": format!("chaos {k}"), "content": format!("message {k} for {user}"),
                "type": "chaos", "data": {"k": k},
            });
            let p = self.clone();
            tasks.push(tokio::spawn(async move {
                p.post_until_created(format!("m-{k}"), body, false).await;
                drop(permit);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn post_until_created(&self, key: String, body: Value, flood: bool) {
        let started = Instant::now();
        let mut failed_before = false;
        let mut attempt = 0u32;
        loop {
            lock(&self.log).requests += 1;
            let sent = self
                .http
                .post(&self.url)
                .bearer_auth(SERVICE_KEY)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let t = self.clock.ms();
            let failure = match sent {
                Ok(r) if r.status() == 201 => {
                    let replayed = r.headers().contains_key("idempotent-replayed");
                    match r.json::<Value>().await {
                        Ok(answer) => {
                            let mut log = lock(&self.log);
                            if replayed && failed_before {
                                log.replays_after_failure += 1;
                            }
                            for m in answer["messages"].as_array().into_iter().flatten() {
                                log.created.push(CreatedRow {
                                    id: m["id"].as_str().unwrap_or_default().to_string(),
                                    user: m["to_user"].as_str().unwrap_or_default().to_string(),
                                    seq: m["seq"].as_i64().unwrap_or(-1),
                                    t201: t,
                                    flood,
                                });
                            }
                            return;
                        }
                        Err(e) => Failure {
                            t,
                            status: None,
                            detail: format!("201 with an unreadable body: {e}"),
                        },
                    }
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    Failure {
                        t,
                        status: Some(status),
                        detail: text.chars().take(160).collect(),
                    }
                }
                Err(e) => Failure {
                    t,
                    status: None,
                    detail: e.to_string(),
                },
            };
            failed_before = true;
            lock(&self.log).failures.push(failure);
            attempt += 1;
            if started.elapsed() > Duration::from_secs(180) {
                lock(&self.log).gave_up.push(key);
                return;
            }
            tokio::time::sleep(Duration::from_millis((100u64 << attempt.min(4)).min(1500))).await;
        }
    }

    /// One request of `FLOOD_BATCH` large messages (8 KiB content, 15 KB data) for one user.
    async fn flood(&self, user: &str, key: String) {
        let content = "x".repeat(8000);
        let pad = "y".repeat(15_000);
        let messages: Vec<Value> = (0..FLOOD_BATCH)
            .map(|i| json!({"to_user": user, "title": format!("flood {i}"), "content": content, "type": "flood", "data": {"pad": pad}}))
            .collect();
        self.post_until_created(key, json!({ "messages": messages }), true)
            .await;
    }
}

// ------------------------------------------------------------------------------------------
// The faults
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum FaultKind {
    NodeKill,
    RelayKill,
    TcpDrop,
    RedisRestart,
    PostgresRestart,
    SlowClient,
}

const ALL_FAULTS: [FaultKind; 6] = [
    FaultKind::NodeKill,
    FaultKind::RelayKill,
    FaultKind::TcpDrop,
    FaultKind::RedisRestart,
    FaultKind::PostgresRestart,
    FaultKind::SlowClient,
];

impl FaultKind {
    fn label(self) -> &'static str {
        match self {
            FaultKind::NodeKill => "kill -9 of the node holding a client's socket",
            FaultKind::RelayKill => "kill -9 of the node running the active relay",
            FaultKind::TcpDrop => "client TCP connection dropped (no close frame)",
            FaultKind::RedisRestart => "Redis killed and restarted",
            FaultKind::PostgresRestart => "PostgreSQL restarted (pg_ctl restart -m fast)",
            FaultKind::SlowClient => "slow client (stops reading)",
        }
    }
}

struct Fault {
    kind: FaultKind,
    /// Injected at, and over at (the node back up, the client reconnected, ...), run clock ms.
    start: f64,
    end: f64,
    detail: String,
    /// Relay kill: from the kill to another node holding the leader lock.
    takeover_ms: Option<f64>,
    /// Slow client: did the server close a slow consumer (notifyd_slow_consumer_closed_total)?
    slow_closed: Option<bool>,
}

/// Injects the six faults in turn, `cfg.gap` apart, for `cfg.rounds` rounds or (long runs)
/// until the producer is done.
struct FaultInjector<'a> {
    cfg: &'a Config,
    cluster: &'a mut Cluster,
    clients: &'a [Client],
    producer: &'a Producer,
    clock: Clock,
    faults: Vec<Fault>,
}

impl FaultInjector<'_> {
    async fn run(&mut self, producer_done: &JoinHandle<()>) -> anyhow::Result<()> {
        for round in 0..self.cfg.rounds {
            for kind in ALL_FAULTS {
                // After one full round, faults stop with the messages: a fault with nothing
                // flowing proves little.
                if round > 0 && producer_done.is_finished() {
                    return Ok(());
                }
                tokio::time::sleep(self.cfg.gap).await;
                let fault = match kind {
                    FaultKind::NodeKill => self.kill_node_of_a_client(round).await?,
                    FaultKind::RelayKill => self.kill_relay_leader().await?,
                    FaultKind::TcpDrop => self.drop_client_tcp(round).await?,
                    FaultKind::RedisRestart => self.restart_redis().await?,
                    FaultKind::PostgresRestart => self.restart_postgres().await?,
                    FaultKind::SlowClient => self.slow_client(round).await?,
                };
                note(format!(
                    "{:>7.1}s  {} ({:.1}s): {}",
                    fault.start / 1000.0,
                    kind.label(),
                    (fault.end - fault.start) / 1000.0,
                    fault.detail
                ));
                self.faults.push(fault);
            }
        }
        Ok(())
    }

    fn fault(&self, kind: FaultKind, start: f64, detail: String) -> Fault {
        Fault {
            kind,
            start,
            end: self.clock.ms(),
            detail,
            takeover_ms: None,
            slow_closed: None,
        }
    }

    /// A connected client, chosen by `round` among those that qualify.
    fn pick_client(&self, round: usize, with_upstream: bool) -> anyhow::Result<usize> {
        let candidates: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].ctl.connected.load(Ordering::SeqCst))
            .filter(|&i| !with_upstream || lock(&self.clients[i].ctl.upstream).is_some())
            .collect();
        if candidates.is_empty() {
            bail!("no connected client to inject a fault into");
        }
        Ok(candidates[(round * 7 + 3) % candidates.len()])
    }

    async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.cluster.nodes[i].launch()?;
        self.cluster.nodes[i].wait_ready(&self.cluster.http).await
    }

    async fn kill_node_of_a_client(&mut self, round: usize) -> anyhow::Result<Fault> {
        let c = self.pick_client(round, true)?;
        let addr = lock(&self.clients[c].ctl.upstream)
            .clone()
            .unwrap_or_default();
        let i = self
            .cluster
            .node_index(&addr)
            .with_context(|| format!("X-Upstream {addr:?} is not one of our nodes"))?;
        let sockets = self
            .clients
            .iter()
            .filter(|c| c.ctl.connected.load(Ordering::SeqCst))
            .filter(|c| lock(&c.ctl.upstream).as_deref() == Some(addr.as_str()))
            .count();
        let start = self.clock.ms();
        self.cluster.nodes[i].kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.restart_node(i).await?;
        let detail = format!(
            "{} (socket of {}; {sockets} sockets on it), restarted after 1.5 s",
            self.cluster.nodes[i].name, self.clients[c].user
        );
        Ok(self.fault(FaultKind::NodeKill, start, detail))
    }

    async fn kill_relay_leader(&mut self) -> anyhow::Result<Fault> {
        let mut leader = None;
        for _ in 0..150 {
            if let Ok(Some(l)) = self.cluster.relay_leader().await {
                leader = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let leader = leader.context("no relay holds the leader lock")?;
        let i = self
            .cluster
            .node_index(&leader)
            .with_context(|| format!("relay leader {leader:?} is not one of our nodes"))?;
        let start = self.clock.ms();
        self.cluster.nodes[i].kill9();
        let mut successor = None;
        while self.clock.ms() - start < 30_000.0 {
            if let Ok(Some(l)) = self.cluster.relay_leader().await {
                if l != leader {
                    successor = Some(l);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let takeover = self.clock.ms() - start;
        let successor = successor.context("no relay took over within 30 s")?;
        self.restart_node(i).await?;
        let mut f = self.fault(
            FaultKind::RelayKill,
            start,
            format!(
                "{leader} killed; {successor} leads after {:.2} s",
                takeover / 1000.0
            ),
        );
        f.takeover_ms = Some(takeover);
        Ok(f)
    }

    async fn drop_client_tcp(&mut self, round: usize) -> anyhow::Result<Fault> {
        let c = self.pick_client(round + 1, false)?;
        let before = self.clients[c].ctl.connects.load(Ordering::SeqCst);
        let start = self.clock.ms();
        self.clients[c].ctl.drop_socket.notify_one();
        let ctl = self.clients[c].ctl.clone();
        wait_for(
            "the dropped client to reconnect",
            Duration::from_secs(30),
            || {
                let ctl = ctl.clone();
                async move {
                    ctl.connects.load(Ordering::SeqCst) > before
                        && ctl.connected.load(Ordering::SeqCst)
                }
            },
        )
        .await?;
        let detail = format!(
            "a client of {} cut its socket and reconnected",
            self.clients[c].user
        );
        Ok(self.fault(FaultKind::TcpDrop, start, detail))
    }

    async fn restart_redis(&mut self) -> anyhow::Result<Fault> {
        let start = self.clock.ms();
        self.cluster.redis.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.cluster.redis.launch().await?;
        Ok(self.fault(
            FaultKind::RedisRestart,
            start,
            "killed, down for 1 s, started empty on the same port".into(),
        ))
    }

    async fn restart_postgres(&mut self) -> anyhow::Result<Fault> {
        let start = self.clock.ms();
        self.cluster.pg.restart()?;
        let took = (self.clock.ms() - start) / 1000.0;
        Ok(self.fault(
            FaultKind::PostgresRestart,
            start,
            format!("pg_ctl restart -m fast took {took:.1} s"),
        ))
    }

    /// Stops one client reading, floods its user with large messages until the server closes
    /// a slow consumer (its 512-frame queue is full once the socket buffers on the way are),
    /// then lets it read again: it drains, sees 4008 (or the end of the stream) and resumes.
    async fn slow_client(&mut self, round: usize) -> anyhow::Result<Fault> {
        let c = self.pick_client(round + 2, false)?;
        let user = self.clients[c].user.clone();
        let ctl = self.clients[c].ctl.clone();
        let before = self.cluster.slow_consumers_closed().await;
        let connects = ctl.connects.load(Ordering::SeqCst);
        let start = self.clock.ms();
        ctl.stall.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut closed = false;
        let mut batches = 0;
        while batches < 40 && !closed {
            self.producer
                .flood(&user, format!("flood-{round}-{batches}"))
                .await;
            batches += 1;
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if self.cluster.slow_consumers_closed().await > before {
                    closed = true;
                    break;
                }
            }
        }
        let stalled = (self.clock.ms() - start) / 1000.0;
        let resumed = Instant::now();
        ctl.resume.notify_one();
        wait_for("the slow client to resume", Duration::from_secs(60), || {
            let ctl = ctl.clone();
            async move {
                ctl.connects.load(Ordering::SeqCst) > connects
                    && ctl.connected.load(Ordering::SeqCst)
            }
        })
        .await?;
        // Caught up: it has applied everything its user had when it started reading again.
        let target = self
            .cluster
            .inbox_seqs()
            .await?
            .get(&user)
            .map(|s| s.0)
            .unwrap_or(0);
        let log = self.clients[c].log.clone();
        wait_for(
            "the slow client to catch up",
            Duration::from_secs(60),
            || {
                let log = log.clone();
                async move { lock(&log).last_seq >= target }
            },
        )
        .await?;
        let caught_up = resumed.elapsed().as_secs_f64();
        let mut f = self.fault(
            FaultKind::SlowClient,
            start,
            format!(
                "a client of {user} stopped reading for {stalled:.1} s while {} large messages \
                 came; server closed it: {closed}; caught up {caught_up:.1} s after reading again",
                batches * FLOOD_BATCH
            ),
        );
        f.slow_closed = Some(closed);
        Ok(f)
    }
}

// ------------------------------------------------------------------------------------------
// The checker and the report
// ------------------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct MessageRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    to_user: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

#[derive(QueryableByName)]
struct UnreadRow {
    #[diesel(sql_type = Text)]
    to_user: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(Default)]
struct Report {
    mode: String,
    users: usize,
    clients: usize,
    regular: usize,
    flood: usize,
    rows_in_db: usize,
    events_in_db: i64,
    events_applied: usize,
    duration_s: f64,
    /// (kind, injected at, over at, detail) for the timeline.
    faults: Vec<(FaultKind, f64, f64, String)>,
    takeovers_ms: Vec<f64>,
    slow_closed: Vec<bool>,
    lost: usize,
    reorders: usize,
    duplicates_applied: usize,
    duplicates_received: usize,
    resets: usize,
    id_mismatches: usize,
    unread_mismatches: usize,
    missing_201: usize,
    gave_up: usize,
    max_delay_by_kind: BTreeMap<FaultKind, f64>,
    baseline_delay: (f64, f64),
    http_failures: Vec<(String, usize, usize, usize)>,
    replays_after_failure: usize,
    failure_samples: Vec<String>,
    requests: usize,
    closes: BTreeMap<String, usize>,
    handshake_failures: usize,
    error_frames: usize,
    caught_up: bool,
    problems: Vec<String>,
}

impl Report {
    fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## notifyd chaos run ({})\n", self.mode);
        let _ = writeln!(s, "| | |\n|---|---|");
        let rows: Vec<(&str, String)> = vec![
            ("nodes", format!("{NODES} × `notifyd serve` behind nginx (docs/deploy/nginx.conf), private PostgreSQL and Redis")),
            ("users / WebSocket clients", format!("{} / {} (1–3 per user, through nginx)", self.users, self.clients)),
            ("messages (regular, one per POST)", self.regular.to_string()),
            ("messages (slow-client floods, 100 per POST)", self.flood.to_string()),
            ("rows in t_message_real_time", self.rows_in_db.to_string()),
            ("events in the users' streams (Σ seq)", self.events_in_db.to_string()),
            ("events applied by clients (Σ over clients, after dedupe)", self.events_applied.to_string()),
            ("POST attempts (incl. retries)", self.requests.to_string()),
            ("duration", format!("{:.0} s", self.duration_s)),
            ("**lost** (a client missing a committed seq)", format!("**{}**", self.lost)),
            ("**duplicates applied** (after dedupe by seq)", format!("**{}**", self.duplicates_applied)),
            ("**reorders** (a seq applied after a higher one)", format!("**{}**", self.reorders)),
            ("duplicates received (raw frames, before dedupe)", self.duplicates_received.to_string()),
            ("sync resets", self.resets.to_string()),
            ("message.created not matching t_message_real_time (id, seq)", self.id_mismatches.to_string()),
            ("final unread ≠ user_inbox_state.unread or count(*) of unread rows", self.unread_mismatches.to_string()),
            ("ids answered 201 but missing from the database", self.missing_201.to_string()),
            ("messages the producer gave up on", self.gave_up.to_string()),
            ("failed attempts whose retry was an idempotent replay (had committed)", self.replays_after_failure.to_string()),
            ("every client caught up with the database", self.caught_up.to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(s, "\n### Faults\n");
        let _ = writeln!(
            s,
            "| kind | injected | max time without delivery after it |\n|---|---|---|"
        );
        for kind in ALL_FAULTS {
            let n = self.faults.iter().filter(|f| f.0 == kind).count();
            let worst = self
                .max_delay_by_kind
                .get(&kind)
                .map(|d| format!("{:.2} s", d / 1000.0))
                .unwrap_or_else(|| "no message in its window".into());
            let _ = writeln!(s, "| {} | {n} | {worst} |", kind.label());
        }
        let _ = writeln!(
            s,
            "\nWithout faults (before the first one): delivery delay p50 {:.0} ms, max {:.0} ms.",
            self.baseline_delay.0, self.baseline_delay.1
        );
        let _ = writeln!(
            s,
            "*Time without delivery*: for the messages whose `201` came back after the fault was \
             injected and before the next one, the longest time from the `201` to the moment the \
             slowest tab of the recipient applied the message (for the slow-client fault, not \
             counting the stalled tab: its own figures are in the timeline)."
        );
        if !self.takeovers_ms.is_empty() {
            let t: Vec<String> = self
                .takeovers_ms
                .iter()
                .map(|ms| format!("{:.2} s", ms / 1000.0))
                .collect();
            let _ = writeln!(
                s,
                "\nRelay take-over (kill -9 of the leader → another node holds the lock): {}.",
                t.join(", ")
            );
        }
        if !self.slow_closed.is_empty() {
            let _ = writeln!(
                s,
                "Slow client closed by the server (4008) each time: {}.",
                self.slow_closed.iter().all(|c| *c)
            );
        }
        let _ = writeln!(
            s,
            "\n### Timeline\n\n| at | fault | lasted | detail |\n|---|---|---|---|"
        );
        for (kind, start, end, detail) in &self.faults {
            let _ = writeln!(
                s,
                "| {:.1} s | {} | {:.1} s | {} |",
                start / 1000.0,
                kind.label(),
                (end - start) / 1000.0,
                detail
            );
        }
        let _ = writeln!(s, "\n### Failed HTTP answers seen by the producer (all retried with the same Idempotency-Key)\n");
        let _ = writeln!(
            s,
            "| during | 5xx | no answer (transport) | other |\n|---|---|---|---|"
        );
        for (window, five, transport, other) in &self.http_failures {
            let _ = writeln!(s, "| {window} | {five} | {transport} | {other} |");
        }
        for sample in &self.failure_samples {
            let _ = writeln!(s, "- {sample}");
        }
        let _ = writeln!(
            s,
            "\nWebSocket handshakes that failed (retried): {}. `error` frames: {}.",
            self.handshake_failures, self.error_frames
        );
        let _ = writeln!(s, "\nHow client connections ended:\n");
        for (how, n) in &self.closes {
            let _ = writeln!(s, "- {how}: {n}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "\n**PASS**");
        } else {
            let _ = writeln!(s, "\n**FAIL** ({} problems):\n", self.problems.len());
            for p in self.problems.iter().take(40) {
                let _ = writeln!(s, "- {p}");
            }
        }
        s
    }
}

/// Waits until every client has applied its user's current seq and the outbox is empty.
async fn wait_until_caught_up(cluster: &Cluster, clients: &[Client], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let (Ok(seqs), Ok(0)) = (cluster.inbox_seqs().await, cluster.outbox_backlog().await) {
            let behind = clients
                .iter()
                .filter(|c| {
                    let want = seqs.get(&c.user).map(|s| s.0).unwrap_or(0);
                    lock(&c.log).last_seq < want
                })
                .count();
            if behind == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

struct Checker<'a> {
    cluster: &'a Cluster,
    clients: &'a [Client],
    producer: &'a ProducerLog,
    faults: &'a [Fault],
}

impl Checker<'_> {
    async fn check(&self, report: &mut Report) -> anyhow::Result<()> {
        // Scoped: its blanket `load` would shadow `AtomicBool::load` elsewhere in this file.
        use diesel_async::RunQueryDsl;
        let mut conn = self.cluster.db().await?;
        let rows: Vec<MessageRow> =
            diesel::sql_query("SELECT id::text AS id, to_user, seq FROM t_message_real_time")
                .load(&mut conn)
                .await?;
        let unread: Vec<UnreadRow> = diesel::sql_query(
            "SELECT to_user, count(*) AS n FROM t_message_real_time \
             WHERE NOT is_read AND deleted_at IS NULL GROUP BY to_user",
        )
        .load(&mut conn)
        .await?;
        let state = self.cluster.inbox_seqs().await?;
        let by_user_seq: HashMap<(&str, i64), &str> = rows
            .iter()
            .map(|r| ((r.to_user.as_str(), r.seq), r.id.as_str()))
            .collect();
        let by_id: HashMap<&str, (&str, i64)> = rows
            .iter()
            .map(|r| (r.id.as_str(), (r.to_user.as_str(), r.seq)))
            .collect();
        let unread: HashMap<&str, i64> = unread.iter().map(|r| (r.to_user.as_str(), r.n)).collect();
        report.rows_in_db = rows.len();
        report.events_in_db = state.values().map(|s| s.0).sum();

        for (ci, c) in self.clients.iter().enumerate() {
            let log = lock(&c.log);
            let (n, db_unread) = state.get(&c.user).copied().unwrap_or((0, 0));
            let who = format!("client {ci} ({})", c.user);
            // Exactly 1..=n, each once, in order.
            let lost: Vec<i64> = (1..=n).filter(|s| !log.applied_set.contains(s)).collect();
            if !lost.is_empty() {
                report.problems.push(format!(
                    "{who}: missing seqs {:?} of 1..={n}",
                    &lost[..lost.len().min(10)]
                ));
            }
            report.lost += lost.len();
            if let Some(s) = log.applied.iter().find(|s| **s > n || **s < 1) {
                report
                    .problems
                    .push(format!("{who}: applied seq {s}, outside 1..={n}"));
            }
            let mut highest = 0;
            for s in &log.applied {
                if *s < highest {
                    report.reorders += 1;
                    report
                        .problems
                        .push(format!("{who}: seq {s} applied after {highest}"));
                }
                highest = highest.max(*s);
            }
            report.duplicates_applied += log.applied.len() - log.applied_set.len();
            report.duplicates_received += log.raw_duplicates;
            report.events_applied += log.applied.len();
            report.resets += log.resets;
            report.error_frames += log.error_frames;
            report.handshake_failures += log.handshake_failures.len();
            for (_, how) in &log.ends {
                *report.closes.entry(how.clone()).or_default() += 1;
            }
            for (seq, id) in &log.created {
                if by_user_seq.get(&(c.user.as_str(), *seq)) != Some(&id.as_str()) {
                    report.id_mismatches += 1;
                    report.problems.push(format!(
                        "{who}: message.created seq {seq} id {id} does not match the database"
                    ));
                }
            }
            let rows_unread = unread.get(c.user.as_str()).copied().unwrap_or(0);
            let client_unread = log.last_unread.unwrap_or(0);
            if client_unread != db_unread || db_unread != rows_unread {
                report.unread_mismatches += 1;
                report.problems.push(format!(
                    "{who}: unread {client_unread} on the client, {db_unread} in user_inbox_state, {rows_unread} unread rows"
                ));
            }
            for v in &log.violations {
                report.problems.push(format!("{who}: {v}"));
            }
        }
        for m in &self.producer.created {
            if by_id.get(m.id.as_str()) != Some(&(m.user.as_str(), m.seq)) {
                report.missing_201 += 1;
                report.problems.push(format!(
                    "201 for {} ({} seq {}) but not in the database",
                    m.id, m.user, m.seq
                ));
            }
        }
        report.gave_up = self.producer.gave_up.len();
        for k in &self.producer.gave_up {
            report.problems.push(format!("the producer gave up on {k}"));
        }
        self.delays(report);
        self.http_failures(report);
        Ok(())
    }

    /// Which fault window a moment falls in: the last fault injected at or before it.
    fn window(&self, t: f64) -> Option<&Fault> {
        self.faults.iter().rev().find(|f| f.start <= t)
    }

    /// Per fault window, the longest time from a message's 201 to its slowest tab applying it.
    fn delays(&self, report: &mut Report) {
        let mut by_user: HashMap<&str, Vec<(usize, &ClientLog)>> = HashMap::new();
        let logs: Vec<MutexGuard<'_, ClientLog>> =
            self.clients.iter().map(|c| lock(&c.log)).collect();
        for (i, l) in logs.iter().enumerate() {
            by_user.entry(l.user.as_str()).or_default().push((i, l));
        }
        let mut baseline = vec![];
        // One line per message (201 time, recipient, seq, slowest tab and its delay): the raw
        // material behind the "time without delivery" figures, kept with the run's logs.
        let mut lines = String::new();
        for m in &self.producer.created {
            let Some(tabs) = by_user.get(m.user.as_str()) else {
                continue;
            };
            let (slowest, worst) = tabs
                .iter()
                // A tab that stalled (on purpose) between the 201 and applying the message is
                // the slow-client fault itself, reported in the timeline, not a delivery delay.
                .filter(|(_, l)| {
                    let applied = l.applied_at.get(&m.seq).copied().unwrap_or(f64::INFINITY);
                    !l.stalls.iter().any(|(a, b)| *a <= applied && *b >= m.t201)
                })
                .map(|(i, l)| {
                    let delay = l
                        .applied_at
                        .get(&m.seq)
                        .map(|t| (t - m.t201).max(0.0))
                        .unwrap_or(f64::INFINITY);
                    (*i, delay)
                })
                .fold((usize::MAX, 0.0), |a, b| if b.1 > a.1 { b } else { a });
            let _ = writeln!(
                lines,
                "{:>10.1} {} seq {} {}slowest client {slowest} after {worst:.1} ms",
                m.t201,
                m.user,
                m.seq,
                if m.flood { "(flood) " } else { "" }
            );
            if !worst.is_finite() {
                continue; // a loss, reported by the checks above
            }
            match self.window(m.t201) {
                Some(f) => {
                    let e = report.max_delay_by_kind.entry(f.kind).or_insert(0.0);
                    *e = e.max(worst);
                }
                None if !m.flood => baseline.push(worst),
                None => {}
            }
        }
        let _ = std::fs::write(self.cluster.dir.path.join("messages.log"), lines);
        baseline.sort_by(|a, b| a.total_cmp(b));
        if !baseline.is_empty() {
            report.baseline_delay = (baseline[baseline.len() / 2], baseline[baseline.len() - 1]);
        }
    }

    fn http_failures(&self, report: &mut Report) {
        let mut by_window: BTreeMap<(usize, String), (usize, usize, usize)> = BTreeMap::new();
        for f in &self.producer.failures {
            let (order, label) = match self
                .faults
                .iter()
                .rposition(|x| x.start <= f.t && f.t <= x.end + 5000.0)
            {
                Some(i) => (
                    i + 1,
                    format!("{} (#{})", self.faults[i].kind.label(), i + 1),
                ),
                None => (0, "no fault in progress".to_string()),
            };
            let sample = format!(
                "{label}: {} {}",
                f.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into()),
                f.detail
            );
            if !report.failure_samples.contains(&sample) && report.failure_samples.len() < 20 {
                report.failure_samples.push(sample);
            }
            let e = by_window.entry((order, label)).or_default();
            match f.status {
                Some(s) if s >= 500 => e.0 += 1,
                None => e.1 += 1,
                Some(_) => {
                    e.2 += 1;
                    report
                        .problems
                        .push(format!("the producer got {:?}: {}", f.status, f.detail));
                }
            }
        }
        report.http_failures = by_window
            .into_iter()
            .map(|((_, label), (a, b, c))| (label, a, b, c))
            .collect();
    }
}

/// Every client's frames, connection ends and stalls, for whoever debugs a failed run.
fn dump_client_logs(path: &Path, clients: &[Client]) {
    let mut out = String::new();
    for (i, c) in clients.iter().enumerate() {
        let log = lock(&c.log);
        let _ = writeln!(
            out,
            "== client {i} ({}) last_seq {} applied {}",
            c.user,
            log.last_seq,
            log.applied.len()
        );
        for f in &log.frames {
            let _ = writeln!(
                out,
                "{:>10.1} {} {}",
                f.t,
                f.kind,
                f.seq.map(|s| s.to_string()).unwrap_or_default()
            );
        }
        for (t, how) in &log.ends {
            let _ = writeln!(out, "{t:>10.1} ended: {how}");
        }
        for (t, e) in &log.handshake_failures {
            let _ = writeln!(out, "{t:>10.1} handshake failed: {e}");
        }
        for (a, b) in &log.stalls {
            let _ = writeln!(out, "{a:>10.1} stalled until {b:.1}");
        }
    }
    let _ = std::fs::write(path, out);
}

// ------------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos() {
    let cfg = Config::from_env();
    note(format!(
        "{} run: {} users, {} messages at {:.1}/s",
        if cfg.long { "long" } else { "default" },
        cfg.users,
        cfg.messages,
        cfg.rate
    ));
    let mut cluster = Cluster::start(&cfg).await.expect("start the cluster");
    let clock = Clock(Instant::now());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (users, clients) = start_clients(&cfg, &cluster.nginx.ws_base(), clock, &stop_rx);
    let connected = wait_for(
        "every client's first connection",
        Duration::from_secs(60),
        || async {
            clients
                .iter()
                .all(|c| c.ctl.connected.load(Ordering::SeqCst))
        },
    )
    .await;
    connected.expect("clients connect through nginx");
    note(format!("{} clients connected", clients.len()));

    let producer = Producer::new(&cluster.nginx, clock);
    let producing = tokio::spawn(producer.clone().run(
        Arc::new(users.clone()),
        cfg.messages,
        cfg.rate,
    ));
    let mut injector = FaultInjector {
        cfg: &cfg,
        cluster: &mut cluster,
        clients: &clients,
        producer: &producer,
        clock,
        faults: vec![],
    };
    let injected = injector.run(&producing).await;
    let faults = std::mem::take(&mut injector.faults);
    injected.expect("inject the faults");
    producing.await.expect("the producer");
    note(format!("{:>7.1}s  producer done", clock.ms() / 1000.0));

    let caught_up = wait_until_caught_up(
        &cluster,
        &clients,
        Duration::from_secs(if cfg.long { 180 } else { 60 }),
    )
    .await;
    // A quiet moment: late duplicates, if any, arrive now and are counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    for c in &clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !c.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        c.task.abort();
    }

    let producer_log = std::mem::take(&mut *lock(&producer.log));
    let mut report = Report {
        mode: if cfg.long {
            "long".into()
        } else {
            "default".into()
        },
        users: users.len(),
        clients: clients.len(),
        regular: producer_log.created.iter().filter(|m| !m.flood).count(),
        flood: producer_log.created.iter().filter(|m| m.flood).count(),
        duration_s: clock.ms() / 1000.0,
        faults: faults
            .iter()
            .map(|f| (f.kind, f.start, f.end, f.detail.clone()))
            .collect(),
        takeovers_ms: faults.iter().filter_map(|f| f.takeover_ms).collect(),
        slow_closed: faults.iter().filter_map(|f| f.slow_closed).collect(),
        replays_after_failure: producer_log.replays_after_failure,
        requests: producer_log.requests,
        caught_up,
        ..Default::default()
    };
    if !caught_up {
        report
            .problems
            .push("not every client caught up with the database in time".into());
    }
    for kind in ALL_FAULTS {
        if !faults.iter().any(|f| f.kind == kind) {
            report
                .problems
                .push(format!("fault never injected: {}", kind.label()));
        }
    }
    if report.slow_closed.iter().any(|c| !c) {
        report
            .problems
            .push("the server did not close the slow client (4008)".into());
    }
    let checker = Checker {
        cluster: &cluster,
        clients: &clients,
        producer: &producer_log,
        faults: &faults,
    };
    checker.check(&mut report).await.expect("read the database");
    dump_client_logs(&cluster.dir.path.join("clients.log"), &clients);
    let md = report.markdown();
    note(format!("report\n\n{md}"));
    if let Some(path) = &cfg.report {
        std::fs::write(path, &md).expect("write CHAOS_REPORT");
        note(format!("report written to {}", path.display()));
    }
    assert!(
        report.passed(),
        "the chaos run found problems (see the report above; logs kept in {})",
        cluster.dir.path.display()
    );
}
