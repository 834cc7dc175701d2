//! Configuration (issue 11, item 3): the environment and an optional TOML file, every value
//! checked at start-up, a bad one stopping the process with a message naming it. Run against
//! the real binary.

use std::time::Duration;

use crate::binary::{free_port, node_env, Notifyd};
use crate::helpers::{token, TestDb, WsClient};

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// A config file in a fresh temporary directory (removed by the OS's tmp cleaning; small).
fn config_file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("notifyd-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notifyd.toml");
    std::fs::write(&path, text).expect("write config file");
    path
}

/// Runs a command that must refuse to start: exit status 1 within 20 s, no panic; returns
/// stderr.
async fn refused(args: &[&str], env: &[(String, String)]) -> String {
    let mut p = Notifyd::start(args, env, 0);
    let status = p.exit_within(Duration::from_secs(20)).await;
    let stderr = p.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "expected a refusal (exit 1), got {status:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The heartbeat a node announces in `hello`.
async fn heartbeat_s(p: &Notifyd) -> i64 {
    let mut ws = WsClient::connect(&format!(
        "ws://127.0.0.1:{}/ws?token={}",
        p.port,
        token("u-config")
    ))
    .await
    .expect("ws connect");
    let hello = ws.expect("hello", Duration::from_secs(10)).await;
    hello["heartbeat_s"].as_i64().expect("heartbeat_s")
}

/// Issue 11 item 3: `NOTIFYD_HEARTBEAT=0` was accepted, and the first WebSocket session then
/// panicked (a zero-period interval). Now `serve` does not start, and says which setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_heartbeat_stops_startup_naming_the_setting() {
    let db = TestDb::new().await;
    let port = free_port();
    let env = with(node_env(&db, port), &[("NOTIFYD_HEARTBEAT", "0")]);
    let mut p = Notifyd::start(&["serve"], &env, port);
    let status = p.exit_within(Duration::from_secs(20)).await;
    if status.is_none() {
        // The old behaviour: it started. Show what a session then does.
        let _ = WsClient::connect(&format!("ws://127.0.0.1:{port}/ws?token={}", token("u1"))).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, stderr) = p.stop().await;
        panic!("serve started with NOTIFYD_HEARTBEAT=0; its log: {stderr}");
    }
    let stderr = p.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(
        stderr.contains("NOTIFYD_HEARTBEAT = \"0\": must be 1s to 10m"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Several bad values: all named in one message, for every command that reads settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_are_each_named_and_nothing_starts() {
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", "postgres://127.0.0.1:5432/never_used"),
        ("NOTIFYD_JWT_SECRET", "s"),
        ("NOTIFYD_DB_POOL_SIZE", "0"),
        ("NOTIFYD_DB_REQUEST_TIMEOUT", "-1s"),
        ("NOTIFYD_BIND", "not-an-address"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("NOTIFYD_SERVICE_KEYS", "billing:k-secret-1,shop:k-secret-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for cmd in ["serve", "relay", "migrate"] {
        let stderr = refused(&[cmd], &env).await;
        for name in [
            "NOTIFYD_DB_POOL_SIZE = \"0\": must be a whole number from 1 to 1000",
            "NOTIFYD_DB_REQUEST_TIMEOUT = \"-1s\": not a duration",
            "NOTIFYD_BIND = \"not-an-address\": must be an IP address and port",
            "REDIS_URL = (value hidden): must be a redis:// URL",
            "NOTIFYD_SERVICE_KEYS = (value hidden): service \"shop\" has the same key",
        ] {
            assert!(
                stderr.contains(name),
                "{cmd}: {name:?} missing from {stderr}"
            );
        }
        assert!(
            !stderr.contains("k-secret-1"),
            "{cmd}: a key shown: {stderr}"
        );
    }
}

/// `serve` without a JWT secret refuses, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_secret_refuses() {
    let env = vec![("DATABASE_URL".to_string(), "postgres://x/y".to_string())];
    let stderr = refused(&["serve"], &env).await;
    assert!(stderr.contains("NOTIFYD_JWT_SECRET is not set"), "{stderr}");
}

/// `--config`: a value from the file is used; the environment wins over the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_is_read_and_the_environment_wins() {
    let db = TestDb::new().await;
    // Everything from the file but the heartbeat's override below.
    let port = free_port();
    let env = node_env(&db, port);
    let mut toml = String::new();
    for (k, v) in &env {
        let key = k.strip_prefix("NOTIFYD_").unwrap_or(k).to_ascii_lowercase();
        toml.push_str(&format!("{key} = {v:?}\n"));
    }
    toml.push_str("heartbeat = \"7s\"\ndb_pool_size = 4\n");
    let file = config_file(&toml);
    let file = file.to_str().expect("utf-8 path");

    let mut from_file = Notifyd::start(&["serve", "--config", file], &[], port);
    from_file.healthy().await;
    assert_eq!(heartbeat_s(&from_file).await, 7);
    from_file.stop().await;

    let port = free_port();
    let env = [
        ("NOTIFYD_HEARTBEAT".to_string(), "9".to_string()),
        ("NOTIFYD_BIND".to_string(), format!("127.0.0.1:{port}")),
    ];
    let mut env_wins = Notifyd::start(&["serve", "--config", file], &env, port);
    env_wins.healthy().await;
    assert_eq!(heartbeat_s(&env_wins).await, 9);
    env_wins.stop().await;
}

/// An unknown key, and a bad value in the file, are refused by key and file name; a missing
/// file is named too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_refuses_unknown_keys_and_bad_values_by_name() {
    let env = vec![("NOTIFYD_JWT_SECRET".to_string(), "s".to_string())];
    let file = config_file("heartbeet = \"5s\"\nrelay_batch = 0\njwt_secret = \"\"\n");
    let shown = file.display().to_string();
    for cmd in ["serve", "relay", "migrate"] {
        let stderr = refused(&[cmd, "--config", &shown], &env).await;
        assert!(
            stderr.contains(&format!(
                "config file {shown}: unknown setting \"heartbeet\""
            )),
            "{cmd}: {stderr}"
        );
    }
    let file = config_file("relay_batch = 0\nheartbeat = \"0s\"\n");
    let shown = file.display().to_string();
    let stderr = refused(&["serve", "--config", &shown], &env).await;
    for says in [
        format!("relay_batch = \"0\" in {shown}: must be a whole number from 1 to 100000"),
        format!("heartbeat = \"0s\" in {shown}: must be 1s to 10m"),
    ] {
        assert!(stderr.contains(&says), "{says:?} missing from {stderr}");
    }
    let stderr = refused(&["migrate", "--config", "/nonexistent/notifyd.toml"], &env).await;
    assert!(
        stderr.contains("config file /nonexistent/notifyd.toml: No such file"),
        "{stderr}"
    );
}

/// The HTTP worker threads a node runs (counted by their thread names), and its gauge.
async fn http_workers(db: &TestDb, extra: &[(&str, &str)]) -> (usize, String) {
    let port = free_port();
    let env = with(node_env(db, port), extra);
    let mut node = Notifyd::start(&["serve"], &env, port);
    node.healthy().await;
    let pid = node.child.id().expect("pid");
    let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the node's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-server wo"))
        .count();
    let metrics = reqwest::get(format!("{}/metrics", node.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    node.stop().await;
    (workers, metrics)
}

/// `NOTIFYD_HTTP_WORKERS` is the number of HTTP worker threads the node runs, one per CPU when
/// unset (more cost fan-out throughput: every fanned-out event wakes more threads), and the
/// gauge says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_worker_count_is_what_the_setting_says_and_one_per_cpu_by_default() {
    let db = TestDb::new().await;
    let (workers, metrics) = http_workers(&db, &[("NOTIFYD_HTTP_WORKERS", "5")]).await;
    assert_eq!(workers, 5);
    assert!(
        metrics.lines().any(|l| l == "notifyd_http_workers 5"),
        "{metrics}"
    );
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let (workers, metrics) = http_workers(&db, &[]).await;
    assert_eq!(workers, cpus);
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("notifyd_http_workers {cpus}")),
        "{metrics}"
    );
}
