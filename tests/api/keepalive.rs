//! HTTP keep-alive behind a proxy (found by the chaos harness, tests/chaos/).
//!
//! nginx (docs/deploy: upstream `keepalive_timeout 60s`) and cloud load balancers keep idle
//! connections to the nodes open for up to a minute. If the node closes an idle connection first
//! (actix's default: after 5 s), a proxy that reuses it at that instant gets a reset and, for a
//! POST it may not retry, answers the caller 502 for a request that never ran.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn get_healthz(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: notifyd\r\n\r\n")
        .await
        .expect("write the request");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn an_idle_connection_outlives_a_proxys_keepalive_window() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            redis: false,
            ..Default::default()
        },
    )
    .await;
    let mut conn = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    assert!(get_healthz(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Idle longer than actix's default keep-alive (5 s), as between two bursts of API calls.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let second = get_healthz(&mut conn).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "the node closed an idle keep-alive connection after 6 s: {second:?}"
    );
}
