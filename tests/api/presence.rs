//! Presence across nodes (contract: `GET /api/v1/presence`, `GET /api/v1/users/{id}/presence`):
//! many users leaving one node at once all go offline, and a user still connected to another
//! node stays online and counted.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const T: Duration = Duration::from_secs(20);

/// Distinct users online anywhere (`GET /api/v1/presence`).
async fn online_users(app: &TestApp) -> u64 {
    let r = app.service_get("/api/v1/presence").await;
    assert_eq!(r.status(), 200, "presence");
    let body: serde_json::Value = r.json().await.expect("json");
    body["online_users"].as_u64().expect("online_users")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_leaving_a_node_together_go_offline_unless_connected_elsewhere() {
    const USERS: usize = 300;
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let a = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let b = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let users: Vec<String> = (0..USERS).map(|_| new_user()).collect();
    let mut on_a = vec![];
    for u in &users {
        let mut c = a.ws(u, None).await;
        c.expect("hello", T).await;
        on_a.push(c);
    }
    // The first user is also connected to B.
    let mut on_b = b.ws(&users[0], None).await;
    on_b.expect("hello", T).await;
    eventually(T, "every user online", || async {
        (online_users(&b).await == USERS as u64).then_some(())
    })
    .await;

    for c in on_a {
        c.close().await;
    }
    eventually(
        T,
        "everyone who left is offline, counted once more",
        || async { (online_users(&b).await == 1).then_some(()) },
    )
    .await;
    for u in &users[1..] {
        assert_eq!(
            a.presence(u).await,
            json!({"online": false, "connections": 0}),
            "{u} left"
        );
    }
    assert_eq!(
        b.presence(&users[0]).await,
        json!({"online": true, "connections": 1}),
        "still connected to B"
    );
    on_b.close().await;
    eventually(T, "the last one offline", || async {
        (online_users(&a).await == 0).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A leave that could not reach Redis is written once Redis is back: the node keeps what it
/// owes Redis until a write succeeds, rather than forgetting it (the user's entry would then show
/// them online for up to the 45 s staleness bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_that_found_redis_unreachable_is_written_when_it_returns() {
    let db = TestDb::new().await;
    // B reads presence straight from Redis.
    let (proxy, a, b) = nodes_with_a_cuttable_redis(&db).await;
    let u = new_user();
    let mut c = a.ws(&u, None).await;
    c.expect("hello", T).await;
    let online = json!({"online": true, "connections": 1});
    eventually(T, "online, as B reads it", || async {
        (b.presence(&u).await == online).then_some(())
    })
    .await;

    proxy.cut();
    eventually(T, "every proxied connection closed", || async {
        (proxy.forwarding() == 0).then_some(())
    })
    .await;
    c.close().await;
    eventually(T, "A unready without Redis", || async {
        let r = a.http.get(format!("{}/readyz", a.base)).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    // The outage lasts past the leave's first write and its first retry (1 s later), so the
    // leave must survive failed writes to reach Redis at all.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        b.presence(&u).await,
        online,
        "the leave cannot have reached Redis yet"
    );
    proxy.restore();
    eventually(T, "offline once Redis is back", || async {
        (b.presence(&u).await == json!({"online": false, "connections": 0})).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}
