//! `notifyd listen`: every event once, in order, across a server restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use notifyd::listen::{Listener, Output};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_each_event_once_and_resumes_after_a_restart() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let app = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let port = app.port;
    let u = new_user();
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let statuses: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = Listener {
        url: format!("ws://127.0.0.1:{port}/ws"),
        token: token(&u),
        since: None,
    };
    let (ev, st) = (events.clone(), statuses.clone());
    let task = tokio::spawn(async move {
        listener
            .run(|o| match o {
                Output::Event(v) => ev.lock().unwrap().push(v.clone()),
                Output::Status(s) => st.lock().unwrap().push(s),
            })
            .await
    });
    let connected = |n: usize| {
        let st = statuses.clone();
        move || {
            let st = st.clone();
            async move {
                (st.lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.starts_with("connected"))
                    .count()
                    >= n)
                    .then_some(())
            }
        }
    };
    eventually(Duration::from_secs(10), "listener connected", connected(1)).await;
    for i in 0..3 {
        app.send(&u, &format!("before {i}")).await;
    }
    let count = |n: usize| {
        let ev = events.clone();
        move || {
            let ev = ev.clone();
            async move { (ev.lock().unwrap().len() >= n).then_some(()) }
        }
    };
    eventually(Duration::from_secs(10), "3 live events", count(3)).await;

    // Restart the node on the same port; create two messages while the listener is away.
    app.stop().await;
    let app = spawn_app(
        &db,
        Opts {
            prefix: Some(prefix),
            port: Some(port),
            ..Default::default()
        },
    )
    .await;
    app.send(&u, "while away 1").await;
    app.send(&u, "while away 2").await;
    eventually(
        Duration::from_secs(40),
        "listener reconnected",
        connected(2),
    )
    .await;
    app.send(&u, "live again").await;
    eventually(Duration::from_secs(10), "6 events", count(6)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();

    let got = events.lock().unwrap().clone();
    let seqs: Vec<i64> = got.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5, 6],
        "each event exactly once, in order: {got:?}"
    );
    assert!(got.iter().all(|e| e["type"] == "message.created"));
    assert_eq!(got[3]["message"]["title"], "while away 1");
    app.stop().await;
}
