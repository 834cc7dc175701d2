//! `notifyd listen`: every event once, in order, across a server restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use notifyd::listen::{Listener, Output, TokenSource};
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
        token: Some(TokenSource::Fixed(token(&u))),
        since: None,
        topics: vec![],
        inbox: true,
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
    // A sleep to show that something does NOT happen: no repeat of an event follows the sixth.
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

/// A listener running in a task, with what it reported so far.
struct Running {
    events: Arc<Mutex<Vec<Value>>>,
    statuses: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(listener: Listener) -> Self {
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let statuses: Arc<Mutex<Vec<String>>> = Arc::default();
        let (ev, st) = (events.clone(), statuses.clone());
        let task = tokio::spawn(async move {
            listener
                .run(|o| match o {
                    Output::Event(v) => ev.lock().unwrap().push(v.clone()),
                    Output::Status(s) => st.lock().unwrap().push(s),
                })
                .await;
        });
        Running {
            events,
            statuses,
            task,
        }
    }

    fn statuses_with(&self, needle: &str) -> usize {
        self.statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.contains(needle))
            .count()
    }

    async fn wait_status(&self, needle: &str, n: usize, timeout: Duration) {
        let what = format!("{n} status line(s) with {needle:?}");
        eventually(timeout, &what, || async {
            (self.statuses_with(needle) >= n).then_some(())
        })
        .await;
    }

    async fn wait_events(&self, n: usize, timeout: Duration) {
        eventually(timeout, &format!("{n} events"), || async {
            (self.events.lock().unwrap().len() >= n).then_some(())
        })
        .await;
    }

    fn seqs(&self) -> Vec<i64> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e["seq"].as_i64())
            .collect()
    }

    fn statuses(&self) -> Vec<String> {
        self.statuses.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `notifyd token` signing with the test servers' secret: a token command for `--token-cmd`.
fn token_cmd(user: &str, ttl: &str) -> String {
    format!(
        "NOTIFYD_JWT_SECRET='{JWT_SECRET}' '{}' token --user '{user}' --ttl {ttl}",
        env!("CARGO_BIN_EXE_notifyd")
    )
}

/// Sends `n` messages to `user`, one a second, so they span several lifetimes of short tokens.
async fn trickle(app: &TestApp, user: &str, n: usize) {
    for i in 0..n {
        app.send(user, &format!("tick {i}")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_with_a_token_command_stays_on_one_socket_across_token_expiries() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let l = Running::start(Listener {
        url: format!("{}/ws", app.ws_base),
        token: Some(TokenSource::Command(token_cmd(&u, "5s"))),
        since: None,
        topics: vec![],
        inbox: true,
    });
    l.wait_status("connected", 1, Duration::from_secs(20)).await;
    // 16 s: more than three lifetimes of the tokens (each refreshed ~2.5 s before its exp, a
    // wide margin for starting `notifyd token` on a busy machine).
    trickle(&app, &u, 16).await;
    l.wait_events(16, Duration::from_secs(20)).await;
    assert_eq!(
        l.seqs(),
        (1..=16).collect::<Vec<_>>(),
        "each event once, in order: {:?}",
        l.statuses()
    );
    assert_eq!(
        l.statuses_with("connected"),
        1,
        "one socket all along (refreshed in-band): {:?}",
        l.statuses()
    );
    assert!(
        l.statuses_with("token refreshed") >= 3,
        "refreshed at least 3 times: {:?}",
        l.statuses()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reruns_the_token_command_after_a_401_and_a_4001() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let dir = std::env::temp_dir().join(format!("notifyd-listen-{}", new_user()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // 1st run: a token the server refuses (wrong secret) -> 401. 2nd: a good 3 s token. 3rd (the
    // refresh before exp): hangs, so the socket reaches exp -> 4001. Then good tokens again.
    let script = format!(
        "n=$(cat '{d}/n' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{d}/n'\n\
         if [ $n = 1 ]; then {bad}; elif [ $n = 3 ]; then exec sleep 60; else {good}; fi\n",
        d = dir.display(),
        bad = token_cmd(&u, "3s").replace(JWT_SECRET, "not-the-secret"),
        good = token_cmd(&u, "3s"),
    );
    let script_path = dir.join("token.sh");
    std::fs::write(&script_path, script).expect("script");
    let l = Running::start(Listener {
        url: format!("{}/ws", app.ws_base),
        token: Some(TokenSource::Command(format!(
            "sh '{}'",
            script_path.display()
        ))),
        since: None,
        topics: vec![],
        inbox: true,
    });
    l.wait_status("connected", 1, Duration::from_secs(20)).await;
    assert_eq!(l.statuses_with("HTTP 401"), 1, "{:?}", l.statuses());
    app.send(&u, "first").await;
    l.wait_events(1, Duration::from_secs(10)).await;
    // The refresh hangs; at exp the server closes with 4001 and the listener reconnects at once
    // with a new token, resuming with since. Messages keep coming meanwhile.
    trickle(&app, &u, 7).await;
    l.wait_status("4001", 1, Duration::from_secs(20)).await;
    l.wait_events(8, Duration::from_secs(20)).await;
    assert_eq!(
        l.seqs(),
        (1..=8).collect::<Vec<_>>(),
        "each event once, in order: {:?}",
        l.statuses()
    );
    assert!(l.statuses_with("connected") >= 2, "{:?}", l.statuses());
    assert!(
        l.statuses_with("reconnecting at once") >= 1,
        "{:?}",
        l.statuses()
    );
    let runs: u32 = std::fs::read_to_string(dir.join("n"))
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    assert!(
        runs >= 4,
        "the command ran again after the 4001 ({runs} runs)"
    );
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

/// A TCP proxy whose existing connections can be frozen: bytes stop flowing both ways but both
/// sockets stay open (a half-open peer: no FIN, no RST). New connections are forwarded.
struct Freezable {
    port: u16,
    frozen_up_to: Arc<tokio::sync::watch::Sender<u64>>,
    next_conn: Arc<std::sync::atomic::AtomicU64>,
}

impl Freezable {
    async fn start(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let frozen_up_to = Arc::new(tx);
        let next_conn = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let (frozen, next) = (frozen_up_to.clone(), next_conn.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let id = next.fetch_add(1, Ordering::SeqCst);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pump(ir, ow, frozen.subscribe(), id));
                tokio::spawn(pump(or, iw, frozen.subscribe(), id));
            }
        });
        Freezable {
            port,
            frozen_up_to,
            next_conn,
        }
    }

    /// Every connection made so far stops forwarding (and is held open).
    fn freeze_existing(&self) {
        let last = self.next_conn.load(std::sync::atomic::Ordering::SeqCst) - 1;
        self.frozen_up_to.send_replace(last);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<u64>,
    id: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // (the watch guard is not Send: drop it inside the branch's future)
            _ = async { frozen.wait_for(|up_to| *up_to >= id).await.map(|_| ()) } => {
                // Hold both halves open and silent until the test ends.
                let _keep = (from, to);
                std::future::pending::<()>().await;
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_replaces_a_connection_gone_silent_without_closing() {
    let db = TestDb::new().await;
    let app = spawn_app(
        &db,
        Opts {
            heartbeat: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let proxy = Freezable::start(format!("127.0.0.1:{}", app.port)).await;
    let u = new_user();
    let l = Running::start(Listener {
        url: format!("ws://127.0.0.1:{}/ws", proxy.port),
        token: Some(TokenSource::Fixed(token(&u))),
        since: None,
        topics: vec![],
        inbox: true,
    });
    l.wait_status("connected", 1, Duration::from_secs(20)).await;
    app.send(&u, "before").await;
    l.wait_events(1, Duration::from_secs(10)).await;
    // The path goes silent: no close frame, no FIN. The server's pings stop arriving, so after
    // 2.5 heartbeats (at least 5 s) the listener gives up on the socket, reconnects, resumes.
    proxy.freeze_existing();
    app.send(&u, "while silent").await;
    l.wait_events(2, Duration::from_secs(30)).await;
    assert_eq!(l.seqs(), vec![1, 2], "{:?}", l.statuses());
    assert_eq!(l.statuses_with("presumed dead"), 1, "{:?}", l.statuses());
    assert_eq!(l.statuses_with("connected"), 2, "{:?}", l.statuses());
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Topics (`--topic`, `--no-inbox`; contract §8).

fn topic_listener(url: String, token: Option<String>, topics: &[&str], inbox: bool) -> Listener {
    Listener {
        url,
        token: token.map(TokenSource::Fixed),
        since: None,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        inbox,
    }
}

impl Running {
    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    async fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        eventually(Duration::from_secs(20), what, || async {
            self.events.lock().unwrap().iter().any(&pred).then_some(())
        })
        .await;
    }
}

/// A `topic.event` frame as the relay publishes it, with an event id.
fn topic_frame(topic: &str, id: &str, data: Value) -> String {
    serde_json::json!({"type": "topic.event", "topic": topic, "id": id, "data": data}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_topic_events_once_and_subscribes_again_after_a_restart() {
    let db = TestDb::new().await;
    let prefix = new_prefix();
    let app = spawn_app(&db, Opts::in_cluster(&prefix)).await;
    let port = app.port;
    let u = new_user();
    let l = Running::start(topic_listener(
        format!("ws://127.0.0.1:{port}/ws"),
        Some(token_with_topics(&u, &["product:*"])),
        &["product:1", "product:2"],
        true,
    ));
    l.wait_status(
        "subscribed: product:1, product:2",
        1,
        Duration::from_secs(20),
    )
    .await;

    app.publish_topic("product:1", serde_json::json!({"stock": 3}))
        .await;
    l.wait_event("the published topic event", |e| e["data"]["stock"] == 3)
        .await;
    app.send(&u, "inbox too").await;
    l.wait_event("the inbox event", |e| e["type"] == "message.created")
        .await;

    // The relay is at-least-once: the same event (same id) published twice is printed once.
    let channel = app.topic_channel("product:2");
    let dup = topic_frame("product:2", "ev-1", serde_json::json!({"stock": 1}));
    redis_publish(&channel, &dup).await;
    redis_publish(&channel, &dup).await;
    redis_publish(
        &channel,
        &topic_frame("product:2", "ev-2", serde_json::json!({"stock": 2})),
    )
    .await;
    l.wait_event("ev-2", |e| e["id"] == "ev-2").await;

    // A restart: the listener reconnects, subscribes again and prints later events; an id it
    // printed before the restart (e.g. the retained copy sent after the subscribe) is dropped.
    app.stop().await;
    let app = spawn_app(
        &db,
        Opts {
            port: Some(port),
            ..Opts::in_cluster(&prefix)
        },
    )
    .await;
    l.wait_status(
        "subscribed: product:1, product:2",
        2,
        Duration::from_secs(40),
    )
    .await;
    redis_publish(&app.topic_channel("product:2"), &dup).await;
    app.publish_topic("product:2", serde_json::json!({"stock": 9}))
        .await;
    l.wait_event("the event after the restart", |e| e["data"]["stock"] == 9)
        .await;
    // A sleep to show that something does NOT happen: no repeat follows the last event.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let topic_events: Vec<(Value, Value)> = l
        .events()
        .iter()
        .filter(|e| e["type"] == "topic.event")
        .map(|e| (e["topic"].clone(), e["data"]["stock"].clone()))
        .collect();
    assert_eq!(
        topic_events,
        vec![
            (serde_json::json!("product:1"), serde_json::json!(3)),
            (serde_json::json!("product:2"), serde_json::json!(1)),
            (serde_json::json!("product:2"), serde_json::json!(2)),
            (serde_json::json!("product:2"), serde_json::json!(9)),
        ],
        "each topic event once, ev-1 not again after the restart: {:?}",
        l.statuses()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_names_a_forbidden_topic_and_goes_on_with_the_others() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let l = Running::start(topic_listener(
        format!("{}/ws", app.ws_base),
        Some(token_with_topics(&u, &["product:*"])),
        &["product:1", "secret:1", "product:2"],
        true,
    ));
    l.wait_status("subscribed: product:2", 1, Duration::from_secs(20))
        .await;
    let statuses = l.statuses();
    let subscribe_lines: Vec<&String> = statuses
        .iter()
        .filter(|s| s.starts_with("subscribe"))
        .collect();
    assert_eq!(subscribe_lines.len(), 3, "{statuses:?}");
    assert_eq!(subscribe_lines[0], "subscribed: product:1");
    assert!(
        subscribe_lines[1].starts_with("subscribe refused: secret:1: forbidden"),
        "{statuses:?}"
    );
    app.publish_topic("product:2", serde_json::json!({"stock": 5}))
        .await;
    l.wait_event("an allowed topic's event", |e| e["data"]["stock"] == 5)
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_without_inbox_prints_topic_events_only() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let l = Running::start(topic_listener(
        format!("{}/ws", app.ws_base),
        Some(token_with_topics(&u, &["product:*"])),
        &["product:1"],
        false,
    ));
    l.wait_status("subscribed: product:1", 1, Duration::from_secs(20))
        .await;
    app.send(&u, "not printed").await;
    app.publish_topic("product:1", serde_json::json!({"stock": 4}))
        .await;
    l.wait_event("the topic event", |e| e["data"]["stock"] == 4)
        .await;
    // A sleep to show that something does NOT happen: the inbox message (sent first) is not
    // printed, late or not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        l.events().iter().all(|e| e["type"] == "topic.event"),
        "{:?}",
        l.events()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_no_inbox_exits_non_zero_when_no_topic_can_be_subscribed() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_notifyd"))
        .args(["listen", "--url", &format!("{}/ws", app.ws_base)])
        .args(["--token", &token_with_topics(&u, &["product:*"])])
        .args(["--no-inbox", "--topic", "secret:1,secret:2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start notifyd listen");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("notifyd listen exits")
        .expect("its output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for t in ["secret:1", "secret:2"] {
        assert!(
            stderr.contains(&format!("subscribe refused: {t}: forbidden")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("nothing to listen to"), "{stderr}");
    assert!(out.stdout.is_empty());
    app.stop().await;
}

/// Anonymous viewers (contract §8, public topics): `--no-inbox` without a token connects with
/// no `Authorization` header. A one-connection WebSocket server stands in for a notifyd with
/// `NOTIFYD_PUBLIC_TOPICS`, recording the handshake and the frames the listener sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback type
async fn listen_without_a_token_connects_anonymously_and_subscribes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::server, Message};

    let server = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = server.local_addr().expect("addr").port();
    let l = Running::start(topic_listener(
        format!("ws://127.0.0.1:{port}/ws"),
        None,
        &["product:1"],
        false,
    ));
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), server.accept())
        .await
        .expect("the listener connects")
        .expect("accept");
    let mut headers = None;
    let mut ws = tokio_tungstenite::accept_hdr_async(
        tcp,
        |req: &server::Request, resp: server::Response| {
            headers = Some(req.headers().clone());
            Ok(resp)
        },
    )
    .await
    .expect("handshake");
    let headers = headers.expect("request seen");
    assert!(headers.get("authorization").is_none(), "{headers:?}");

    let hello = r#"{"type":"hello","user":null,"heartbeat_s":25}"#;
    ws.send(Message::text(hello)).await.expect("hello");
    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame")
        .expect("open")
        .expect("frame");
    let sub: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(sub["type"], "subscribe");
    assert_eq!(sub["topics"], serde_json::json!(["product:1"]));
    let ack = serde_json::json!({"type": "ack", "ref": sub["ref"], "topics": ["product:1"]});
    ws.send(Message::text(ack.to_string())).await.expect("ack");
    let retained = serde_json::json!({"type": "topic.event", "topic": "product:1", "id": "r1",
        "retained": true, "data": {"stock": 7}});
    ws.send(Message::text(retained.to_string()))
        .await
        .expect("event");
    ws.send(Message::text(retained.to_string()))
        .await
        .expect("again");
    ws.send(Message::text(topic_frame(
        "product:1",
        "r2",
        serde_json::json!({"stock": 6}),
    )))
    .await
    .expect("event");
    l.wait_events(2, Duration::from_secs(10)).await;
    // A sleep to show that something does NOT happen: nothing more is printed after `r2` (a
    // printed repeat of `r1` would already be the second event: one socket, in order).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<Value> = l.events().iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, vec![serde_json::json!("r1"), serde_json::json!("r2")]);
    assert_eq!(l.statuses_with("subscribed: product:1"), 1);
}

/// `--no-inbox` without a token against a real node with public topics: an anonymous viewer that
/// prints the topic's retained value (with its id, `retained: true`) once, then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_listener_gets_the_retained_value_once_then_live_events() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.public_topics = vec!["product:*".into()];
    })
    .await;
    let retained = app
        .publish_topic_body(
            "product:7",
            serde_json::json!({"data": {"stock": 9}, "retain": true}),
        )
        .await;
    eventually(Duration::from_secs(10), "the outbox is empty", || async {
        (count_rows(&db.url, "outbox").await == 0).then_some(())
    })
    .await;
    let l = Running::start(topic_listener(
        format!("{}/ws", app.ws_base),
        None,
        &["product:7"],
        false,
    ));
    l.wait_event("the retained value", |e| {
        e["id"] == retained.as_str() && e["retained"] == true
    })
    .await;
    app.publish_topic("product:7", serde_json::json!({"stock": 8}))
        .await;
    l.wait_event("a live event", |e| e["data"]["stock"] == 8)
        .await;
    let printed = l.events();
    assert_eq!(
        printed
            .iter()
            .filter(|e| e["id"] == retained.as_str())
            .count(),
        1,
        "{printed:?}"
    );
    app.stop().await;
}
