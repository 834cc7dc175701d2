//! What every load bench needs: a scratch database, a release `notifyd` started as its own
//! process, and a description of the machine and commit for the report.

// Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub mod doc;

// 32 bytes and more: bench nodes run `serve` without `--dev`, which refuses shorter ones.
pub const SECRET: &str = "bench-jwt-secret-0123456789abcdef";
pub const KEY: &str = "bench-service-key-0123456789abcdef";

pub fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18099)
}

/// The WebSocket settings of the benches' own clients: 4 KiB read and write buffers instead of
/// tungstenite's 128 KiB each. A load client's buffers are the load generator's cost, not the
/// server's: with 15,000 storm clients the default buffers were ~1.9 GB of fresh pages, and
/// `malloc`, `memset` and page faults in the bench were ~8% of the machine's CPU samples over a
/// storm (perf), on the cores the server under test shares with it. Every frame the benches
/// read is far below 4 KiB; a larger one is read in several steps, as it would be anyway.
pub fn ws_client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// Every bench node's database pool (notifyd's own default is 16; a bench may set another on a
/// node, as the storm's `BENCH_STORM_POOL` does on its survivor).
pub const NODE_POOL: u64 = 32;

/// The release binary the benches start (`NOTIFYD_BIN` to use another).
pub fn notifyd_bin() -> anyhow::Result<String> {
    let bin = std::env::var("NOTIFYD_BIN").unwrap_or_else(|_| "target/release/notifyd".into());
    if !std::path::Path::new(&bin).exists() {
        bail!("{bin} not found: run `cargo build --release` first");
    }
    Ok(bin)
}

/// Issue 10's table at the top of docs/benchmarks.md is composed by `scripts/bench.sh` from rows
/// the benches of ONE run leave in `BENCH_SUMMARY_DIR` (the script sets it and empties it first),
/// so no figure of an earlier run can stand in it. `part` names the file (the script sorts
/// them); `rows` are lines of the table (`| figure | notifyd | reference | goal | met? |`).
/// Unset (a bench run on its own): nothing is written.
pub fn summary_rows(part: &str, rows: &str) -> anyhow::Result<()> {
    let Ok(dir) = std::env::var("BENCH_SUMMARY_DIR") else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(std::path::Path::new(&dir).join(format!("{part}.md")), rows)?;
    Ok(())
}

/// "met" / "not met" for a summary row.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// A database of its own for one bench run, dropped by `drop_db`.
pub struct BenchDb {
    pub name: String,
    pub url: String,
}

impl BenchDb {
    pub async fn create(tag: &str) -> anyhow::Result<BenchDb> {
        let name = format!("notifyd_{tag}_{}", std::process::id());
        let mut admin = AsyncPgConnection::establish(&admin_url()).await?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let base = admin_url();
        let url = format!(
            "{}/{}",
            &base[..base.rfind('/').unwrap_or(base.len())],
            name
        );
        Ok(BenchDb { name, url })
    }

    pub async fn drop_db(self) -> anyhow::Result<()> {
        let mut admin = AsyncPgConnection::establish(&admin_url()).await?;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

pub struct Node {
    pub child: Child,
    pub base: String,
    pub port: u16,
}

impl Node {
    pub async fn start(
        bin: &str,
        db: &str,
        prefix: &str,
        relay: bool,
        args: &[&str],
    ) -> anyhow::Result<Node> {
        Node::start_with(bin, db, prefix, relay, args, &[]).await
    }

    /// `start` with settings of this node's own (`env`), beside the ones every bench node gets.
    pub async fn start_with(
        bin: &str,
        db: &str,
        prefix: &str,
        relay: bool,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Node> {
        let port = free_port();
        let child = Command::new(bin)
            .args(args)
            .env("DATABASE_URL", db)
            .env("REDIS_URL", "redis://127.0.0.1:6379")
            .env("NOTIFYD_REDIS_PREFIX", prefix)
            .env("NOTIFYD_BIND", format!("127.0.0.1:{port}"))
            .env("NOTIFYD_JWT_SECRET", SECRET)
            .env("NOTIFYD_SERVICE_KEYS", format!("bench:{KEY}"))
            .env("NOTIFYD_RELAY", if relay { "on" } else { "off" })
            .env("NOTIFYD_DB_POOL_SIZE", NODE_POOL.to_string())
            // BENCH_NODE_RUST_LOG, e.g. `warn,notifyd::http=info` for the access lines (each with
            // the request's time inside the node) on the bench's stderr.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_NODE_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // Last, so a bench's own settings win over the defaults above (e.g. `REDIS_URL`).
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting notifyd")?;
        let node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
        };
        if args.first() == Some(&"serve") {
            let http = reqwest::Client::new();
            for _ in 0..200 {
                if http
                    .get(format!("{}/healthz", node.base))
                    .send()
                    .await
                    .is_ok()
                {
                    return Ok(node);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("notifyd did not become healthy");
        }
        Ok(node)
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// A bench that fails half-way (`?`) must not leave its node running: an orphaned `notifyd
/// serve` kept logging database errors after its bench had dropped the database.
impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn scalar(db: &str, sql: &str) -> anyhow::Result<i64> {
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        v: i64,
    }
    let mut c = AsyncPgConnection::establish(db).await?;
    Ok(diesel::sql_query(sql).get_result::<R>(&mut c).await?.v)
}

fn command_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// CPU model, cores and memory, and the PostgreSQL and Redis versions, for a report's header.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem: String,
    pub pg: String,
    pub redis: String,
}

pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    Machine {
        cpu,
        cores,
        mem,
        pg: command_out("psql", &["--version"]),
        redis: command_out("redis-server", &["--version"]),
    }
}

/// What counts as code for `+dirty`; scripts/bench.sh reads the same file.
const CODE_PATHS: &str = include_str!("code-paths");

/// The checked-out commit (short), with `+dirty` when the code differs from it: a figure is
/// only comparable with another if both name the code they measured. Only what is built
/// counts: the docs a full run rewrites as it goes are not the code.
pub fn git_commit() -> String {
    let sha = command_out("git", &["rev-parse", "--short=9", "HEAD"]);
    let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
    args.extend(CODE_PATHS.split_whitespace());
    let dirty = !command_out("git", &args).is_empty();
    match (sha.is_empty(), dirty) {
        (true, _) => "unknown".into(),
        (false, true) => format!("{sha}+dirty"),
        (false, false) => sha,
    }
}

/// Replaces the section starting with `heading` (up to the next section: `doc::replace_section`)
/// in `path`, or appends it,
/// and says which it wrote (or that `BENCH_WRITE_DOC=0` kept it from writing).
pub fn write_section(path: &str, heading: &str, section: &str) -> anyhow::Result<()> {
    // BENCH_WRITE_DOC=0: a trial run (the benches that choose by size read it themselves too).
    if std::env::var("BENCH_WRITE_DOC").as_deref() == Ok("0") {
        println!("({path}, {heading:?} not written: BENCH_WRITE_DOC=0)");
        return Ok(());
    }
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let out = doc::replace_section(&doc, heading, section);
    std::fs::write(path, out)?;
    println!("wrote the {heading:?} section of {path}");
    Ok(())
}

/// Replaces the part of `path` between the markers `begin` and `end` with `section` (which
/// carries them), or appends it (`doc::replace_marked`).
pub fn write_marked(path: &str, begin: &str, end: &str, section: &str) -> anyhow::Result<()> {
    let page = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, doc::replace_marked(&page, begin, end, section))?;
    Ok(())
}

/// Replaces (or adds) the block `label` of the labelled-blocks section `section` in `path`
/// (`doc::Blocks::replace_block`); a page whose markers are broken is left as it is.
pub fn write_block(
    path: &str,
    section: &doc::Blocks<'_>,
    label: &str,
    block: &str,
) -> anyhow::Result<()> {
    let page = std::fs::read_to_string(path).unwrap_or_default();
    let out = section
        .replace_block(&page, label, block)
        .map_err(|e| anyhow::anyhow!("{path} not written: {e}"))?;
    std::fs::write(path, out)?;
    Ok(())
}

/// A notifyd WebSocket that got its `hello` (returned with the hello's text). `open` makes a
/// fresh connection each try: a node at its handshakes-in-flight cap (`NOTIFYD_WS_MAX_JOINING`)
/// closes the handshake with 1013 and `retry_after=<ms>`, and this waits that long and tries
/// again, as notifyd's clients do (a bench opening thousands of sockets at once must not count
/// the node's admission control as failures).
pub async fn until_hello<F, Fut>(
    mut open: F,
) -> anyhow::Result<(
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    String,
)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>,
    >,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..30 {
        let mut ws = open().await?;
        let wait = loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Err(_) => bail!("no hello within 30 s"),
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"hello\"") => {
                    return Ok((ws, t.to_string()))
                }
                Ok(Some(Ok(Message::Close(Some(c))))) if u16::from(c.code) == 1013 => {
                    break notifyd::wire::protocol::retry_after_ms(&c.reason).unwrap_or(1000);
                }
                Ok(Some(Ok(Message::Close(c)))) => bail!("closed while waiting for hello: {c:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => bail!("socket error waiting for hello: {e}"),
                Ok(None) => bail!("socket ended waiting for hello"),
            }
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    bail!("refused 30 times (1013)")
}
