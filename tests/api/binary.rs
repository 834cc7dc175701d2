//! The real `notifyd` binary as a child process with a clean environment, its stdout and stderr
//! collected, for what only the process shows: start-up refusals, exit codes, log lines.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::helpers::{new_prefix, redis_url, TestDb, JWT_SECRET, OTHER_KEY, SERVICE_KEY};

pub struct Notifyd {
    pub child: Child,
    pub port: u16,
    pub base: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// A port for a child `notifyd` to listen on, chosen before it starts. In-process nodes
/// (`helpers::spawn_app`) and the test's own listeners bind port 0 and read the port back; a
/// child process cannot hand its port back without parsing its logs, and its tests need the port
/// in `NOTIFYD_BIND` and in URLs before it runs. So the port is taken from the kernel here and
/// released for the child to bind: another process could take it in between (the kernel hands
/// out ephemeral ports in turn, so it is unlikely), which shows as the child's start-up error
/// "binding 127.0.0.1:PORT", never as a wrong test result.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a test node needs: database, Redis with its own prefix, a free port, a secret and the
/// test service key (more or other variables through `env`, which win).
pub fn node_env(db: &TestDb, port: u16) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", redis_url()),
        ("NOTIFYD_REDIS_PREFIX", new_prefix()),
        ("NOTIFYD_BIND", format!("127.0.0.1:{port}")),
        ("NOTIFYD_JWT_SECRET", JWT_SECRET.to_string()),
        (
            "NOTIFYD_SERVICE_KEYS",
            format!("test:{SERVICE_KEY},other:{OTHER_KEY}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn collect(mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(vec![]));
    let to = buf.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            to.lock()
                .expect("log buffer")
                .extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Notifyd {
    /// Starts `notifyd args...` with only `env` (and `PATH`) in its environment.
    pub fn start(args: &[&str], env: &[(String, String)], port: u16) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_notifyd"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start notifyd");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Notifyd {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("stdout buffer")).to_string()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).to_string()
    }

    /// The exit status if the process ends within `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()?
            .ok();
        // Let the readers take the last bytes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        status
    }

    /// Waits until `/healthz` answers; panics with the logs if the process exits or 30 s pass.
    pub async fn healthy(&mut self) {
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("notifyd exited ({status}): {}", self.stderr());
            }
            if http
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("notifyd did not become healthy: {}", self.stderr());
    }

    /// SIGTERM, then waits for the exit (a clean shutdown flushes the logs).
    pub async fn stop(mut self) -> (String, String) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if self.exit_within(Duration::from_secs(10)).await.is_none() {
            let _ = self.child.kill().await;
        }
        (self.stdout(), self.stderr())
    }
}

/// The value of the Prometheus sample `name{labels}` (labels in the exporter's order), if any.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
