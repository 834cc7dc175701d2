//! Read replicas (contract §11, issue 25 item 5): history pages and `/me/changes` come from a
//! streaming replica that holds what the read needs and lags less than
//! `NOTIFYD_REPLICA_MAX_LAG`, else from the primary, counted in
//! `notifyd_db_replica_reads_total{read, outcome}`; counts and commands never go there; a replica
//! that hangs or is down never fails or slows a read. Ignored by a plain `cargo test` (no
//! replica): scripts/replica-test.sh makes a primary and a replica of it (`pg_basebackup -R`)
//! on ports of their own and runs these one at a time (they pause, freeze and stop the one
//! replica), then the first two again with the replica behind PgBouncer in transaction mode.
//! The nodes are real `notifyd serve` processes, each with its own `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::{free_port, node_env, Notifyd};
use crate::helpers::*;

const WHY: &str = "needs the primary and replica scripts/replica-test.sh starts";
/// How long the replica may take to come into use (a new database replicated, the first probe).
const SETTLE: Duration = Duration::from_secs(30);
/// What a read may take with the replica hung or gone: the replica's part is bounded by 500 ms
/// (`db::replica::REPLICA_TIMEOUT`), then the primary answers. Unbounded, it would be the
/// request timeout (10 s) or a connect timeout (5 s).
const QUICK: Duration = Duration::from_secs(3);

struct Env {
    /// The primary's maintenance database.
    primary: String,
    /// The replica, without a database name.
    replica: String,
    /// `replica-ctl stop|start|freeze|thaw` (written by the script).
    ctl: String,
}

fn env() -> Env {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: {WHY}"));
    Env {
        primary: var("TEST_REPLICA_PRIMARY_URL"),
        replica: var("TEST_REPLICA_URL").trim_end_matches('/').to_string(),
        ctl: var("TEST_REPLICA_CTL"),
    }
}

impl Env {
    fn replica_url(&self, db: &TestDb) -> String {
        format!("{}/{}", self.replica, db.name)
    }

    fn ctl(&self, what: &str) {
        let status = std::process::Command::new(&self.ctl)
            .arg(what)
            .status()
            .unwrap_or_else(|e| panic!("{} {what}: {e}", self.ctl));
        assert!(status.success(), "{} {what}: {status}", self.ctl);
    }
}

/// A fresh database on the primary, once the replica has it too (a node started before would
/// find no database there: no harm to its reads, but PgBouncer in front of the replica then
/// holds off new server logins for `server_login_retry`, 15 s).
async fn fresh_db(env: &Env) -> TestDb {
    let db = TestDb::on(&env.primary).await;
    let url = env.replica_url(&db);
    eventually(SETTLE, "the replica has the new database", || async {
        notifyd::db::connect(&url, &notifyd::db::Limits::default())
            .await
            .ok()
            .map(drop)
    })
    .await;
    db
}

/// A node on the test database of the primary, reading from its replica. With
/// `TEST_REPLICA_POOLER_URL` (a PgBouncer in transaction mode in front of the replica, started by
/// the script) it reaches the replica through that pooler, with the transaction discipline
/// (`NOTIFYD_DATABASE_POOLER=transaction`; the primary stays direct).
async fn node(env: &Env, db: &TestDb) -> Notifyd {
    node_with(env, db, &[]).await
}

async fn node_with(env: &Env, db: &TestDb, extra: &[(&str, &str)]) -> Notifyd {
    let port = free_port();
    let mut vars = node_env(db, port);
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    match std::env::var("TEST_REPLICA_POOLER_URL") {
        Ok(pooler) => {
            let url = format!("{}/{}", pooler.trim_end_matches('/'), db.name);
            vars.push(("NOTIFYD_DATABASE_REPLICA_URL".into(), url));
            vars.push(("NOTIFYD_DATABASE_POOLER".into(), "transaction".into()));
            vars.push(("NOTIFYD_DATABASE_DIRECT_URL".into(), db.url.clone()));
        }
        Err(_) => vars.push(("NOTIFYD_DATABASE_REPLICA_URL".into(), env.replica_url(db))),
    }
    vars.push(("RUST_LOG".into(), "notifyd=info".into()));
    let mut node = Notifyd::start(&["serve"], &vars, port);
    node.healthy().await;
    node
}

/// `notifyd_db_replica_reads_total` by (read, outcome), from the node's `/metrics`.
async fn reads(node: &Notifyd) -> BTreeMap<(String, String), f64> {
    let text = reqwest::get(format!("{}/metrics", node.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("notifyd_db_replica_reads_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let v: f64 = value.trim().parse().expect("a number");
        out.insert((label("read"), label("outcome")), v);
    }
    out
}

fn of(r: &BTreeMap<(String, String), f64>, read: &str, outcome: &str) -> f64 {
    r.get(&(read.to_string(), outcome.to_string()))
        .copied()
        .unwrap_or(0.0)
}

fn total(r: &BTreeMap<(String, String), f64>) -> f64 {
    r.values().sum()
}

async fn user_get(node: &Notifyd, user: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", node.base))
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("json")
}

async fn user_post(node: &Notifyd, user: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", node.base))
        .bearer_auth(token(user))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(r.status(), 200, "POST {path}");
    r.json().await.expect("json")
}

/// Creates a message for `user`; its `{"id", "seq", ...}`.
async fn send(node: &Notifyd, user: &str, title: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/messages", node.base))
        .bearer_auth(SERVICE_KEY)
        .json(&json!({"to_user": user, "title": title, "content": "c", "type": "comment"}))
        .send()
        .await
        .expect("POST /messages");
    assert_eq!(r.status(), 201, "create");
    let body: Value = r.json().await.expect("json");
    body["messages"][0].clone()
}

fn ids(page: &Value) -> Vec<Value> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .map(|m| m["id"].clone())
        .collect()
}

fn event_ids(changes: &Value) -> Vec<Value> {
    changes["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {changes}"))
        .iter()
        .filter_map(|e| e.get("message").map(|m| m["id"].clone()))
        .collect()
}

/// GETs `path` until the replica answered it (its `read` counter with outcome `replica` went
/// up) with the answer `check` waits for; `check` asserts what every answer, whoever gave it,
/// must be and says whether this is the one. The last answer.
async fn until_from_replica(
    node: &Notifyd,
    user: &str,
    path: &str,
    read: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(SETTLE, &format!("the replica answers {path}"), || async {
        let before = of(&reads(node).await, read, "replica");
        let answer = user_get(node, user, path).await;
        let wanted = check(&answer);
        (wanted && of(&reads(node).await, read, "replica") > before).then_some(answer)
    })
    .await
}

/// A check for `until_from_replica` of a history page: it lists exactly `listed` (a history
/// page is always current: the replica answers only when it holds the user's seq).
fn lists(listed: Vec<Value>) -> impl Fn(&Value) -> bool {
    move |p| {
        assert_eq!(ids(p), listed, "{p}");
        true
    }
}

/// A check for `until_from_replica` of `/me/changes?since=0`: a prefix of `events` (the replica
/// may answer a moment behind the primary, never behind the client), waiting for all of them.
fn replays(events: Vec<Value>) -> impl Fn(&Value) -> bool {
    move |c| {
        let got = event_ids(c);
        assert!(events.starts_with(&got), "{c}");
        got == events
    }
}

/// Replay paused on the replica until dropped.
struct Paused {
    url: String,
}

impl Paused {
    async fn new(url: String) -> Self {
        let mut c = notifyd::db::connect(&url, &notifyd::db::Limits::default())
            .await
            .expect("connect to the replica");
        diesel_async::RunQueryDsl::execute(
            diesel::sql_query("SELECT pg_wal_replay_pause()"),
            &mut c,
        )
        .await
        .expect("pause replay");
        Paused { url }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let limits = notifyd::db::Limits::default();
                if let Ok(mut c) = notifyd::db::connect(&url, &limits).await {
                    let _ = diesel_async::RunQueryDsl::execute(
                        diesel::sql_query("SELECT pg_wal_replay_resume()"),
                        &mut c,
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

/// Runs `ctl undo` when dropped (a frozen replica thawed, a stopped one started), so a failing
/// test leaves the replica as it found it.
struct Undo<'a>(&'a Env, &'static str);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        self.0.ctl(self.1);
    }
}

/// A caught-up replica answers history pages (every shelf) and `/me/changes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the primary and replica scripts/replica-test.sh starts"]
async fn history_and_changes_come_from_a_caught_up_replica() {
    let env = env();
    let db = fresh_db(&env).await;
    let node = node(&env, &db).await;
    let user = new_user();
    let one = send(&node, &user, "one").await;
    let two = send(&node, &user, "two").await;

    let page = until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(vec![two["id"].clone(), one["id"].clone()]),
    )
    .await;
    assert_eq!(page["messages"][0]["title"], "two");

    let changes = until_from_replica(
        &node,
        &user,
        "/api/v1/me/changes?since=0",
        "changes",
        replays(vec![one["id"].clone(), two["id"].clone()]),
    )
    .await;
    let (seq, epoch) = (changes["seq"].clone(), changes["epoch"].clone());
    assert_eq!(seq, two["seq"]);
    until_from_replica(
        &node,
        &user,
        &format!("/api/v1/me/changes?since={seq}&epoch={epoch}"),
        "changes",
        |c| {
            assert_eq!(c["seq"], seq, "{c}");
            assert_eq!(c["events"], json!([]), "{c}");
            true
        },
    )
    .await;

    // The other shelves: archived, and snoozed.
    user_post(
        &node,
        &user,
        "/api/v1/me/messages/archive",
        json!({"ids": [one["id"]]}),
    )
    .await;
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    user_post(
        &node,
        &user,
        "/api/v1/me/messages/snooze",
        json!({"ids": [two["id"]], "until": until}),
    )
    .await;
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages?archived=true",
        "history",
        lists(vec![one["id"].clone()]),
    )
    .await;
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages?snoozed=true",
        "history",
        lists(vec![two["id"].clone()]),
    )
    .await;
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(vec![]),
    )
    .await;
    eprintln!("routed reads: {:?}", reads(&node).await);
    node.stop().await;
}

/// With replay paused on the replica, a message just created is listed all the same (the
/// primary answers: the replica does not hold the user's seq yet), a client that already has
/// its seq gets no reset, counts and commands are exact at once and never routed; once the
/// paused replica's lag passes the bound, `/me/changes` goes to the primary too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the primary and replica scripts/replica-test.sh starts"]
async fn with_replay_paused_new_messages_are_still_listed_and_counts_and_commands_stay_exact() {
    let env = env();
    let db = fresh_db(&env).await;
    let node = node(&env, &db).await;
    let user = new_user();
    let one = send(&node, &user, "one").await;
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(vec![one["id"].clone()]),
    )
    .await;
    let caught_up = until_from_replica(
        &node,
        &user,
        "/api/v1/me/changes?since=0",
        "changes",
        replays(vec![one["id"].clone()]),
    )
    .await;
    assert_eq!(caught_up["seq"], one["seq"]);
    let epoch = caught_up["epoch"].clone();

    let paused = Paused::new(env.replica_url(&db)).await;
    let two = send(&node, &user, "two").await;

    // The page the user opens right after the event arrived lists it, at the first try.
    let before = reads(&node).await;
    let page = user_get(&node, &user, "/api/v1/me/messages").await;
    assert_eq!(ids(&page), vec![two["id"].clone(), one["id"].clone()]);
    let after = reads(&node).await;
    assert_eq!(
        of(&after, "history", "replica"),
        of(&before, "history", "replica")
    );
    assert_eq!(
        of(&after, "history", "primary_behind") + of(&after, "history", "primary_lag"),
        of(&before, "history", "primary_behind") + of(&before, "history", "primary_lag") + 1.0,
        "{after:?}"
    );

    // A client that has `two` already (from its socket) resumes without a reset.
    let path = format!("/api/v1/me/changes?since={}&epoch={epoch}", two["seq"]);
    let changes = user_get(&node, &user, &path).await;
    assert_eq!(changes["reset"], Value::Null, "{changes}");
    assert_eq!(changes["seq"], two["seq"], "{changes}");
    assert_eq!(
        of(&reads(&node).await, "changes", "replica"),
        of(&after, "changes", "replica")
    );

    // Counts and commands: exact at once, and never routed.
    let routed = total(&reads(&node).await);
    let counts = user_get(&node, &user, "/api/v1/me/unread-count").await;
    assert_eq!(
        (counts["unread"].clone(), counts["seq"].clone()),
        (json!(2), two["seq"].clone())
    );
    let read = user_post(&node, &user, "/api/v1/me/messages/read-all", json!({})).await;
    assert_eq!(read["unread"], 0, "{read}");
    let counts = user_get(&node, &user, "/api/v1/me/unread-count").await;
    assert_eq!(counts["unread"], 0, "{counts}");
    assert_eq!(
        total(&reads(&node).await),
        routed,
        "counts and commands are not routed"
    );
    let page = user_get(&node, &user, "/api/v1/me/messages").await;
    assert!(
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .all(|m| m["is_read"] == true),
        "{page}"
    );

    // The replica stays paused: its lag passes the bound, and a resume from before `two` is
    // answered by the primary, with `two`.
    let path = format!("/api/v1/me/changes?since={}&epoch={epoch}", one["seq"]);
    eventually(
        SETTLE,
        "the paused replica's lag passes the bound",
        || async {
            let before = of(&reads(&node).await, "changes", "primary_lag");
            let changes = user_get(&node, &user, &path).await;
            (of(&reads(&node).await, "changes", "primary_lag") > before).then_some(changes)
        },
    )
    .await;
    let changes = user_get(&node, &user, &path).await;
    assert!(event_ids(&changes).contains(&two["id"]), "{changes}");

    // Resumed, it catches up and answers again, with the commands' effect.
    drop(paused);
    until_from_replica(&node, &user, "/api/v1/me/messages", "history", |p| {
        assert_eq!(ids(p), vec![two["id"].clone(), one["id"].clone()], "{p}");
        assert!(
            p["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .all(|m| m["is_read"] == true),
            "{p}"
        );
        true
    })
    .await;
    eprintln!("routed reads: {:?}", reads(&node).await);
    node.stop().await;
}

/// Every read a user makes, timed, with the expected answers: never an error, never slow.
async fn quick_reads(node: &Notifyd, user: &str, listed: &[Value]) {
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let page = user_get(node, user, "/api/v1/me/messages").await;
        assert_eq!(ids(&page), listed);
        let changes = user_get(node, user, "/api/v1/me/changes?since=0").await;
        assert_eq!(event_ids(&changes).len(), listed.len(), "{changes}");
        let counts = user_get(node, user, "/api/v1/me/unread-count").await;
        assert_eq!(counts["unread"], listed.len(), "{counts}");
        assert!(t.elapsed() < QUICK, "three reads took {:?}", t.elapsed());
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("the slowest three reads took {slowest:?}");
}

/// A replica that hangs (every process stopped with SIGSTOP: connections open, nothing
/// answers) or is shut down: reads still answer, from the primary, within the replica's bound;
/// once it is back, it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the primary and replica scripts/replica-test.sh starts"]
async fn a_replica_that_hangs_or_is_down_never_fails_or_slows_a_read() {
    let env = env();
    let db = fresh_db(&env).await;
    let node = node(&env, &db).await;
    let user = new_user();
    let one = send(&node, &user, "one").await;
    let listed = vec![one["id"].clone()];
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(listed.clone()),
    )
    .await;
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/changes?since=0",
        "changes",
        replays(listed),
    )
    .await;

    // Hung.
    let unavailable = of(&reads(&node).await, "history", "primary_unavailable");
    env.ctl("freeze");
    let thaw = Undo(&env, "thaw");
    let two = send(&node, &user, "two").await;
    let listed = vec![two["id"].clone(), one["id"].clone()];
    quick_reads(&node, &user, &listed).await;
    assert!(of(&reads(&node).await, "history", "primary_unavailable") > unavailable);
    drop(thaw);
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(listed),
    )
    .await;

    // Down.
    env.ctl("stop");
    let start = Undo(&env, "start");
    let three = send(&node, &user, "three").await;
    let listed = vec![three["id"].clone(), two["id"].clone(), one["id"].clone()];
    quick_reads(&node, &user, &listed).await;
    drop(start);
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(listed),
    )
    .await;
    eprintln!("routed reads: {:?}", reads(&node).await);
    node.stop().await;
}

/// The replica's age of its last replayed commit, in seconds, as it reports it.
async fn replay_age(url: &str) -> f64 {
    #[derive(diesel::QueryableByName)]
    struct Age {
        #[diesel(sql_type = diesel::sql_types::Double)]
        age: f64,
    }
    let mut c = notifyd::db::connect(url, &notifyd::db::Limits::default())
        .await
        .expect("connect to the replica");
    let a: Age = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)\
             ::float8 AS age",
        ),
        &mut c,
    )
    .await
    .expect("replay age");
    a.age
}

/// An idle primary commits nothing, so the replica's last replayed commit grows old although
/// nothing is missing: a lag read from the replay timestamp alone would send every read to the
/// primary. The replayed WAL position, compared with the primary's, tells it is caught up.
/// (The node runs no relay: its heartbeat would commit every second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the primary and replica scripts/replica-test.sh starts"]
async fn a_caught_up_replica_of_an_idle_primary_is_not_taken_for_a_lagging_one() {
    let env = env();
    let db = fresh_db(&env).await;
    let node = node_with(&env, &db, &[("NOTIFYD_RELAY", "off")]).await;
    let user = new_user();
    let one = send(&node, &user, "one").await;
    let listed = vec![one["id"].clone()];
    until_from_replica(
        &node,
        &user,
        "/api/v1/me/messages",
        "history",
        lists(listed.clone()),
    )
    .await;
    let url = env.replica_url(&db);
    eventually(SETTLE, "the last replayed commit is 2 s old", || async {
        (replay_age(&url).await > 2.0).then_some(())
    })
    .await;
    let before = reads(&node).await;
    let page = user_get(&node, &user, "/api/v1/me/messages").await;
    assert_eq!(ids(&page), listed);
    let after = reads(&node).await;
    assert_eq!(
        of(&after, "history", "replica"),
        of(&before, "history", "replica") + 1.0,
        "{after:?}"
    );
    eprintln!("routed reads: {after:?}");
    node.stop().await;
}
