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

/// Like `refused`, but says what happened instead of panicking, so a test of many cases
/// reports every case that was not refused (a node that starts is stopped after `limit`).
async fn refusal_of(
    args: &[&str],
    env: &[(String, String)],
    limit: Duration,
) -> Result<String, String> {
    let mut p = Notifyd::start(args, env, 0);
    let status = p.exit_within(limit).await;
    let stderr = p.stderr();
    if status.is_none() {
        let _ = p.child.kill().await;
        return Err(format!("started (still running after {limit:?}): {stderr}"));
    }
    match status.and_then(|s| s.code()) {
        Some(1) if !stderr.contains("panicked") => Ok(stderr),
        _ => Err(format!("exited with {status:?}: {stderr}")),
    }
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

/// A JWT secret and a service key long enough for production (32 bytes and more), so that a
/// refusal below is about the one setting each case spoils.
const STRONG_SECRET: &str = "a-production-jwt-secret-of-48-bytes-0123456789ab";
const STRONG_KEYS: &str = "billing:a-production-service-key-of-40-bytes-01";

/// Contract §7 (production secrets): `serve` without `--dev` refuses the public dev secret, the
/// dev service key, and any JWT secret or service key shorter than 32 bytes, naming the setting
/// and never showing the value. It used to start with the dev secret and `dev:dev` silently, and
/// with a short secret after a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_the_dev_secrets_and_short_ones_by_name_without_showing_them() {
    let db = TestDb::new().await;
    let dev_secret = notifyd::config::DEV_JWT_SECRET;
    let mut wrong = vec![];
    for (name, value, shown) in [
        ("NOTIFYD_JWT_SECRET", dev_secret, dev_secret),
        ("NOTIFYD_JWT_SECRET", "4byt", "4byt"),
        // 31 bytes: one short.
        (
            "NOTIFYD_JWT_SECRET",
            "thirty-one-bytes-of-secret-0123",
            "thirty-one-bytes-of-secret-0123",
        ),
        ("NOTIFYD_SERVICE_KEYS", "dev:dev", "dev:dev"),
        (
            "NOTIFYD_SERVICE_KEYS",
            "billing:a-production-service-key-of-40-bytes-01,shop:short-shop-key",
            "short-shop-key",
        ),
    ] {
        let port = free_port();
        let env = with(
            node_env(&db, port),
            &[
                ("NOTIFYD_JWT_SECRET", STRONG_SECRET),
                ("NOTIFYD_SERVICE_KEYS", STRONG_KEYS),
                (name, value),
            ],
        );
        match refusal_of(&["serve"], &env, Duration::from_secs(10)).await {
            Ok(stderr) => {
                if stderr.contains(shown) {
                    wrong.push(format!("{name}={value:?}: the value is shown: {stderr}"));
                }
                if !stderr.contains(name) {
                    wrong.push(format!("{name}={value:?}: not named: {stderr}"));
                }
            }
            Err(e) => wrong.push(format!("{name}={value:?}: not refused: {e}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// `serve --dev` keeps working whatever secrets are configured: it ignores them and uses the
/// public dev secret and `dev:dev`, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_still_starts_with_short_or_no_secrets() {
    let db = TestDb::new().await;
    let port = free_port();
    let env = with(
        node_env(&db, port),
        &[
            ("NOTIFYD_JWT_SECRET", "4byt"),
            ("NOTIFYD_SERVICE_KEYS", "a:b"),
        ],
    );
    let mut dev = Notifyd::start(&["serve", "--dev"], &env, port);
    dev.healthy().await;
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/presence", dev.base))
        .bearer_auth("dev")
        .send()
        .await
        .expect("presence with the dev key");
    assert_eq!(r.status(), 200);
    dev.stop().await;
}

/// Contract §7: a `jwt_secret` in the config file that is not a string (a number, a boolean, a
/// list, a table, a date, or text TOML cannot read as a value) stops `serve`, naming
/// `jwt_secret` and never showing what was written. TOML used to turn a number or a boolean into
/// other text (`1_000` became `1000`: another secret than the one written) and start, and a
/// number too large for TOML's integers put its digits in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_secret_in_the_file_that_is_not_a_string_is_refused_without_its_value() {
    let db = TestDb::new().await;
    let mut wrong = vec![];
    for (written, shown) in [
        // Too large for TOML's 64-bit integers: its digits were echoed.
        (
            "123456789012345678901234567890123456",
            "123456789012345678901234567890123456",
        ),
        // Too large for any integer.
        (
            "1234567890123456789012345678901234567890",
            "1234567890123456789012345678901234567890",
        ),
        ("1234567890123456789", "1234567890123456789"),
        ("1_234_567_890_123_456_789", "1234567890123456789"),
        ("true", "jwt_secret = true"),
        (
            "[\"a-production-jwt-secret-part-one\", \"and-part-two-xyz\"]",
            "part-one",
        ),
        (
            "{ value = \"a-production-jwt-secret-in-a-table\" }",
            "in-a-table",
        ),
        ("1979-05-27T07:32:00Z", "1979-05-27"),
        ("1.5e300", "1.5e300"),
        // Not quoted: not a TOML value at all.
        (
            "unquoted-production-secret-0123456789",
            "unquoted-production-secret",
        ),
    ] {
        let port = free_port();
        let env = node_env(&db, port);
        let mut toml = String::new();
        for (k, v) in env.iter().filter(|(k, _)| k != "NOTIFYD_JWT_SECRET") {
            let key = k.strip_prefix("NOTIFYD_").unwrap_or(k).to_ascii_lowercase();
            let v = if k == "NOTIFYD_SERVICE_KEYS" {
                STRONG_KEYS
            } else {
                v
            };
            toml.push_str(&format!("{key} = {v:?}\n"));
        }
        toml.push_str(&format!("jwt_secret = {written}\n"));
        let file = config_file(&toml);
        let shown_path = file.display().to_string();
        match refusal_of(
            &["serve", "--config", &shown_path],
            &[],
            Duration::from_secs(10),
        )
        .await
        {
            Ok(stderr) => {
                if stderr.contains(shown) {
                    wrong.push(format!(
                        "jwt_secret = {written}: the value is shown: {stderr}"
                    ));
                }
                // Named on the file's own line (not only by "NOTIFYD_JWT_SECRET is not set
                // (nor jwt_secret in a config file)", which is not what is wrong).
                if !stderr
                    .lines()
                    .any(|l| l.contains(&shown_path) && l.contains("jwt_secret"))
                {
                    wrong.push(format!("jwt_secret = {written}: not named: {stderr}"));
                }
            }
            Err(e) => wrong.push(format!("jwt_secret = {written}: not refused: {e}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
