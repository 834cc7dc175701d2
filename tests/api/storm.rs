//! A reconnect storm: many sessions resume at once, their reads batched across users
//! (gateway::catch_up), and a node too busy to take a session says when to come back.

use std::time::Duration;

use notifyd::store::events;

use crate::helpers::*;

/// The batched read gives every request exactly its own counters and events after its `since`,
/// in order, in one statement: counters-only requests, a caught-up one, the same user twice,
/// one too far behind for a replay (no events read), one ahead of the stream, a stranger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batched_read_gives_each_user_exactly_its_events() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let users: Vec<String> = (0..4).map(|_| new_user()).collect();
    // user k has k + 2 messages
    for (k, u) in users.iter().enumerate() {
        for i in 0..k + 2 {
            app.send(u, &format!("{k}-{i}")).await;
        }
    }
    let stranger = new_user();
    let reqs: Vec<(String, i64)> = vec![
        (users[0].clone(), 0),  // both events
        (users[1].clone(), 1),  // 2..=3
        (users[2].clone(), 4),  // caught up: none
        (users[3].clone(), -1), // counters only
        (users[1].clone(), 2),  // the same user again: 3
        (users[3].clone(), 9),  // ahead of the stream: no events
        (stranger.clone(), 0),  // no row at all: zeros
    ];
    let names: Vec<String> = reqs.iter().map(|r| r.0.clone()).collect();
    let since: Vec<i64> = reqs.iter().map(|r| r.1).collect();
    let mut conn = db.conn().await;
    let rows = events::resume_many(&mut conn, &names, &since, 2)
        .await
        .expect("batched read");
    let of = |i: i64| -> (Vec<i64>, Vec<i64>) {
        let mine: Vec<&events::ResumeRow> = rows.iter().filter(|r| r.i == i).collect();
        assert!(!mine.is_empty(), "request {i} has no row");
        let seqs = mine.iter().filter_map(|r| r.event_seq).collect();
        let counts = vec![mine[0].seq, mine[0].unread, mine[0].unseen];
        for r in &mine {
            if let (Some(s), Some(p)) = (r.event_seq, &r.payload) {
                let p: serde_json::Value =
                    serde_json::from_str(p.text()).expect("the payload is JSON");
                assert_eq!(
                    p["seq"].as_i64(),
                    Some(s),
                    "request {i}: payload of seq {s}"
                );
                // The frame as the log gives it back is compact, as a live one: no blanks
                // (PostgreSQL writes `jsonb` with a blank after each `:` and `,`).
                assert_eq!(
                    p.to_string().len(),
                    r.payload.as_ref().map_or(0, |f| f.text().len())
                );
            }
        }
        (seqs, counts)
    };
    assert_eq!(of(0), (vec![1, 2], vec![2, 2, 2]));
    assert_eq!(of(1), (vec![2, 3], vec![3, 3, 3]));
    assert_eq!(of(2), (vec![], vec![4, 4, 4]));
    assert_eq!(of(3), (vec![], vec![5, 5, 5]));
    assert_eq!(of(4), (vec![3], vec![3, 3, 3]));
    assert_eq!(of(5), (vec![], vec![5, 5, 5]));
    assert_eq!(of(6), (vec![], vec![0, 0, 0]));
    // With max_replay 2, user 3 resuming from 0 (5 behind) reads nothing: it gets a reset.
    let far = events::resume_many(&mut conn, &[users[3].clone()], &[0], 2)
        .await
        .expect("batched read");
    assert_eq!(far.len(), 1);
    assert_eq!(far[0].event_seq, None);
    app.stop().await;
}

/// The batched read is prepared once per connection and only bound and executed after that: a
/// storm runs it thousands of times on the batcher's two connections, and parsing and planning
/// it each time was most of their CPU. PostgreSQL lists a session's prepared statements in
/// `pg_prepared_statements`; a statement sent unprepared (as `sql_query` sends it) is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batched_read_is_prepared_once_per_connection() {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let user = new_user();
    app.send(&user, "one").await;
    let mut conn = db.conn().await;
    let prepared = async |conn: &mut _| {
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements \
             WHERE statement LIKE 'WITH r AS (SELECT * FROM unnest(%'",
        )
        .get_result::<Count>(conn)
        .await
        .expect("pg_prepared_statements")
        .n
    };
    assert_eq!(prepared(&mut conn).await, 0, "nothing prepared yet");
    for since in [0, 1, -1] {
        let rows = events::resume_many(&mut conn, std::slice::from_ref(&user), &[since], 10)
            .await
            .expect("batched read");
        assert_eq!(rows[0].seq, 1);
    }
    assert_eq!(
        prepared(&mut conn).await,
        1,
        "three reads on one connection: one prepared statement"
    );
    app.stop().await;
}

/// Many users resuming at once on one node each get exactly their missed events, once, in
/// order, and `hello` at their seq (the batcher serves them together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_resuming_at_once_each_get_exactly_their_events() {
    const USERS: usize = 40;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::no_relay()).await;
    let users: Vec<String> = (0..USERS).map(|_| new_user()).collect();
    for (k, u) in users.iter().enumerate() {
        for i in 0..(k % 4) + 1 {
            app.send(u, &format!("{k}-{i}")).await;
        }
    }
    let resumes = users.iter().enumerate().map(|(k, u)| {
        let app = &app;
        async move {
            let last = (k % 4) as i64 + 1;
            let since = (k % 2) as i64; // half from 0, half from 1
            let mut c = app.ws(u, Some(since)).await;
            let hello = c.expect("hello", Duration::from_secs(20)).await;
            assert_eq!(hello["seq"].as_i64(), Some(last), "user {k}");
            let mut seqs = vec![];
            while since < last && seqs.last() != Some(&last) {
                let f = c.expect("sync", Duration::from_secs(20)).await;
                assert_ne!(f["reset"], true, "user {k} got a reset");
                seqs.extend(
                    f["events"]
                        .as_array()
                        .expect("events")
                        .iter()
                        .map(|e| e["seq"].as_i64().expect("seq")),
                );
            }
            assert_eq!(seqs, (since + 1..=last).collect::<Vec<_>>(), "user {k}");
            c.close().await;
        }
    });
    futures_util::future::join_all(resumes).await;
    app.stop().await;
}

/// A resume's catch-up read never waits for a pooled connection: the batcher reads on
/// connections of its own, so a storm's reads do not queue behind services' writes (with 64
/// POSTs in flight every batch used to wait its turn in the pool; issue 22 item 8), and REST
/// callers keep the pool. Here the pool's only connection is taken for the whole resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_is_read_while_every_pooled_connection_is_taken() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| s.db_pool_size = 1).await;
    let user = new_user();
    app.send(&user, "one").await;
    app.send(&user, "two").await;
    let taken = app
        .stopper
        .state()
        .pool
        .get()
        .await
        .expect("the pool's only connection");
    let mut c = app.ws(&user, Some(1)).await;
    // Well inside the pool's own wait for a connection (`db::POOL_WAIT`): a read that waited
    // for one would not be here before it.
    let within = notifyd::db::POOL_WAIT / 2;
    let hello = c.expect("hello", within).await;
    assert_eq!(hello["seq"].as_i64(), Some(2));
    let sync = c.expect("sync", within).await;
    assert_eq!(seqs_of(sync["events"].as_array().expect("events")), vec![2]);
    drop(taken);
    c.close().await;
    app.stop().await;
}

/// A session the node cannot read for in time (here: its database stopped answering) is closed
/// with 1013 and a close reason naming when to come back, 1 to 5 s, not left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_node_cannot_serve_is_told_when_to_retry() {
    // The request timeout is longer than the join's wait for its read, so the wait is what
    // answers.
    told_when_to_retry_after(Cuttable::freeze, Some(Duration::from_secs(60))).await;
}

/// A session whose read the database fails outright (here: the database is unreachable, so no
/// connection can be made) is told when to retry as well, not closed with a bare 1011 that sends
/// every such client back at once on its own backoff. (Found by CI: the test above got 1011
/// whenever its read needed a new connection, which failed before the 15 s wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_read_the_database_fails_is_told_when_to_retry() {
    told_when_to_retry_after(Cuttable::cut, None).await;
}

/// A node whose database is reached through a proxy; a user with one message; `outage` applied
/// to the proxy; then the user connects with `since=0` and must be closed with 1013 and a
/// `retry_after` of 1 to 5 s.
async fn told_when_to_retry_after(outage: fn(&Cuttable), db_request_timeout: Option<Duration>) {
    let db = TestDb::new().await;
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let via_proxy = proxy.pg_url(&db.url);
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.database_url = via_proxy.clone();
        if let Some(t) = db_request_timeout {
            s.db_request_timeout = t;
        }
    })
    .await;
    let u = new_user();
    app.send(&u, "before").await;
    outage(&proxy);
    let mut c = app.ws(&u, Some(0)).await;
    assert_eq!(c.expect_close(Duration::from_secs(40)).await, Some(1013));
    let (_, reason) = c.closed.clone().expect("closed");
    let ms = notifyd::wire::protocol::retry_after_ms(&reason)
        .unwrap_or_else(|| panic!("no retry_after in {reason:?}"));
    assert!((1000..=5000).contains(&ms), "retry_after={ms}");
    proxy.restore();
    app.stop().await;
}

/// Past `NOTIFYD_WS_MAX_JOINING` handshakes in flight (here 2, held in flight while a database
/// that stopped answering holds their user's actor: `hold_turns`) and with no place to wait (`NOTIFYD_WS_JOIN_QUEUE=0`), one more is
/// upgraded and closed at once with 1013 and a `retry_after` of 1 to 5 s, before any database
/// work. A bad token still gets its 401: it is checked before admission. Once the in-flight
/// joins have ended, a client that retries as told gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_nodes_cap_are_told_when_to_retry_and_get_in_when_they_do() {
    let db = TestDb::new().await;
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let via_proxy = proxy.pg_url(&db.url);
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.database_url = via_proxy.clone();
        // Long enough to hold the two joins while the third is refused (even on a loaded
        // machine), short enough that the node recovers soon after the freeze.
        s.db_request_timeout = Duration::from_secs(15);
        s.ws_max_joining = Some(2);
        s.ws_join_queue = 0;
    })
    .await;
    let users: Vec<String> = (0..2).map(|_| new_user()).collect();
    for u in &users {
        app.send(u, "before").await;
    }
    proxy.freeze();
    // Two joins hold the node's two turns (`hold_turns`): the node is full.
    let mut waiting = hold_turns(&app, &users[0], 2).await;
    let mut third = app.ws(&users[1], Some(0)).await;
    assert_eq!(
        third.expect_close(Duration::from_secs(30)).await,
        Some(1013)
    );
    // "At once", told by order rather than by a clock: the two joins still hold the node (their
    // catch-up reads wait on the frozen database), so the refusal waited for no turn and no
    // database work. A refusal that waited for either would come after they ended.
    for c in &mut waiting {
        assert_eq!(
            (c.next(Duration::from_millis(1)).await, &c.closed),
            (None, &None),
            "a held join ended before the third handshake was refused"
        );
    }
    let (_, reason) = third.closed.clone().expect("closed");
    let ms = notifyd::wire::protocol::retry_after_ms(&reason)
        .unwrap_or_else(|| panic!("no retry_after in {reason:?}"));
    assert!((1000..=5000).contains(&ms), "retry_after={ms}");
    let bad = WsClient::connect(&app.ws_url("not-a-token", None)).await;
    assert_eq!(refused_status(bad), 401, "a bad token on a full node");

    proxy.restore();
    // The held joins end (with `hello`, or with 1013 if their read failed during the freeze):
    // either way they no longer count against the cap.
    for mut c in waiting {
        match c.next(Duration::from_secs(30)).await {
            Some(f) => assert_eq!(f["type"], "hello", "{f}"),
            None => assert_eq!(c.closed.as_ref().map(|c| c.0), Some(1013)),
        }
    }
    // Told to come back after `ms`: it does (again as told, while the node recovers from the
    // freeze), and is let in with its missed event.
    let mut wait = ms;
    let mut tries = 0;
    let mut again = loop {
        tries += 1;
        assert!(tries <= 30, "never got in after {} tries", tries - 1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut c = app.ws(&users[1], Some(0)).await;
        if c.next(Duration::from_secs(20)).await.is_some() {
            break c;
        }
        let (code, reason) = c.closed.clone().expect("closed without a frame");
        assert_eq!(code, 1013, "{reason}");
        wait = notifyd::wire::protocol::retry_after_ms(&reason).expect("retry_after");
    };
    let hello = again.frames[0].clone();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["seq"].as_i64(), Some(1));
    let sync = again.expect("sync", Duration::from_secs(20)).await;
    assert_eq!(seqs_of(sync["events"].as_array().expect("events")), vec![1]);
    again.close().await;
    app.stop().await;
}

/// With a cap far below the crowd (3 handshakes in flight, no queue, 30 clients at once, the
/// database paused and the cap held (`hold_turns`) until the cap has refused someone), every
/// client that honours 1013's `retry_after` gets in, each with its `hello` at its own seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_larger_than_the_cap_all_gets_in_by_retrying_as_told() {
    const CLIENTS: usize = 30;
    let db = TestDb::new().await;
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let via_proxy = proxy.pg_url(&db.url);
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.database_url = via_proxy.clone();
        s.ws_max_joining = Some(3);
        s.ws_join_queue = 0;
    })
    .await;
    let users: Vec<String> = (0..CLIENTS).map(|_| new_user()).collect();
    for u in &users {
        app.send(u, "one").await;
    }
    let held = new_user();
    app.send(&held, "one").await;
    proxy.freeze();
    let _held = hold_turns(&app, &held, 3).await;
    let refused = std::sync::atomic::AtomicUsize::new(0);
    // The cap must refuse some (else this test shows nothing about retrying): the database
    // answers again only once it has.
    let pause = async {
        eventually(
            Duration::from_secs(60),
            "a handshake refused by the cap",
            || async { (refused.load(std::sync::atomic::Ordering::Relaxed) > 0).then_some(()) },
        )
        .await;
        proxy.restore();
    };
    let clients = users.iter().map(|u| {
        let (app, refused) = (&app, &refused);
        async move {
            for _ in 0..20 {
                let mut c = app.ws(u, Some(1)).await;
                match c.next(Duration::from_secs(20)).await {
                    Some(f) if f["type"] == "hello" => {
                        assert_eq!(f["seq"].as_i64(), Some(1), "{u}");
                        c.close().await;
                        return;
                    }
                    Some(f) => panic!("{u}: expected hello, got {f}"),
                    None => {
                        let (code, reason) = c.closed.clone().expect("closed without a frame");
                        assert_eq!(code, 1013, "{u}: {reason}");
                        let ms = notifyd::wire::protocol::retry_after_ms(&reason)
                            .unwrap_or_else(|| panic!("no retry_after in {reason:?}"));
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            }
            panic!("{u} never got in");
        }
    });
    tokio::join!(futures_util::future::join_all(clients), pause);
    app.stop().await;
}

/// With the default queue, a crowd larger than the cap (3 handshakes in flight, held by
/// `hold_turns` while the inbox tables are locked until some of the 30 clients wait in the
/// queue) waits for its turns instead of being refused: every client gets its `hello` on its
/// first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_larger_than_the_cap_waits_its_turn_and_nobody_is_refused() {
    const CLIENTS: usize = 30;
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.ws_max_joining = Some(3);
    })
    .await;
    let users: Vec<String> = (0..CLIENTS).map(|_| new_user()).collect();
    for u in &users {
        app.send(u, "one").await;
    }
    let held = new_user();
    app.send(&held, "one").await;
    let locker = lock_inbox_tables(&db).await;
    let _held = hold_turns(&app, &held, 3).await;
    // Nobody waiting would show nothing about the queue: the lock goes only once some do.
    let pause = async {
        eventually(
            Duration::from_secs(60),
            "handshakes waiting in the queue",
            || async { (app.stopper.state().gateway.admission.waiting() > 0).then_some(()) },
        )
        .await;
        release(locker).await;
    };
    let clients = users.iter().map(|u| {
        let app = &app;
        async move {
            let mut c = app.ws(u, Some(1)).await;
            match c.next(Duration::from_secs(20)).await {
                Some(f) => {
                    assert_eq!(f["type"], "hello", "{u}: {f}");
                    assert_eq!(f["seq"].as_i64(), Some(1), "{u}");
                }
                None => panic!("{u} was not let in: {:?}", c.closed),
            }
            c.close().await;
        }
    });
    tokio::join!(futures_util::future::join_all(clients), pause);
    app.stop().await;
}

/// A handshake's turn covers the CPU part of its join, not its wait for the database: once its
/// catch-up read is queued the turn is free for the next handshake. (Held until `hello`, turns
/// also capped the users one catch-up statement could read: with PostgreSQL busy, a
/// 15,000-client storm then took 20 s instead of 5; docs/decisions/0020.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_waiting_for_the_database_holds_no_turn() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.ws_max_joining = Some(1);
        // The reads wait for the lock, not for a statement timeout that would end the joins.
        s.db_request_timeout = Duration::from_secs(60);
    })
    .await;
    let (first, second) = (new_user(), new_user());
    app.send(&first, "one").await;
    app.send(&second, "one").await;
    let admission = &app.stopper.state().gateway.admission;
    let locker = lock_inbox_tables(&db).await;
    let a = app.ws(&first, Some(0)).await;
    eventually(
        Duration::from_secs(10),
        "the only turn free while the first join's read waits",
        || async { (admission.turns_free() == 1).then_some(()) },
    )
    .await;
    let b = app.ws(&second, Some(0)).await;
    eventually(
        Duration::from_secs(10),
        "the second join past its turn too, nobody waiting for one",
        || async { (admission.turns_free() == 1 && admission.waiting() == 0).then_some(()) },
    )
    .await;
    assert!(
        a.frames.is_empty() && b.frames.is_empty(),
        "read while locked"
    );
    release(locker).await;
    for mut c in [a, b] {
        let hello = c.expect("hello", Duration::from_secs(20)).await;
        assert_eq!(hello["seq"].as_i64(), Some(1));
        c.close().await;
    }
    app.stop().await;
}

/// Holds the inbox tables locked (so joins wait for their catch-up reads) until the returned
/// connection commits.
async fn lock_inbox_tables(db: &TestDb) -> diesel_async::AsyncPgConnection {
    use diesel_async::RunQueryDsl;
    let mut locker = db.conn().await;
    for sql in [
        "BEGIN",
        "LOCK TABLE user_inbox_state, user_event IN ACCESS EXCLUSIVE MODE",
    ] {
        diesel::sql_query(sql)
            .execute(&mut locker)
            .await
            .expect(sql);
    }
    locker
}

/// With `NOTIFYD_WS_MAX_JOINING=1`: a join that holds the node's only turn until `release` of
/// the returned connection (see `hold_turns`).
async fn hold_the_only_turn(
    app: &TestApp,
    db: &TestDb,
) -> (diesel_async::AsyncPgConnection, WsClient) {
    let held = new_user();
    app.send(&held, "one").await;
    let locker = lock_inbox_tables(db).await;
    let mut holding = hold_turns(app, &held, 1).await;
    (locker, holding.swap_remove(0))
}

/// Holds `n` of the node's handshake turns while the database does not answer (the caller
/// locked the inbox tables or froze the connection first). A turn covers a join until its
/// catch-up read is queued, not the read itself; so one join of `user` is let in first: its
/// actor then waits for that read, and the next `n` joins of the same user wait in the actor's
/// mailbox, each holding its turn, until the database answers. Returns all `n + 1` clients,
/// the turn holders last; each gets its `hello` once the database answers.
async fn hold_turns(app: &TestApp, user: &str, n: usize) -> Vec<WsClient> {
    let admission = &app.stopper.state().gateway.admission;
    let free = admission.turns_free();
    assert!(free >= n, "{free} turns free, {n} to hold");
    let mut clients = vec![app.ws(user, Some(0)).await];
    for _ in 0..n {
        clients.push(app.ws(user, Some(0)).await);
    }
    eventually(
        Duration::from_secs(10),
        "the joins hold their turns",
        || async { (admission.turns_free() == free - n).then_some(()) },
    )
    .await;
    clients
}

/// A client that gives up while its handshake waits for a turn (closes its side) costs no
/// join: when the turn comes, the node sees the connection's end and answers 400 instead of
/// upgrading it, creating an actor and reading the inbox for nobody. (actix-http does not
/// notice a client's FIN while a handler is pending, so without the check this client got 101
/// and a `hello`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_whose_client_left_while_waiting_is_not_joined() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.ws_max_joining = Some(1);
    })
    .await;
    let gone = new_user();
    app.send(&gone, "one").await;
    let (locker, mut holding) = hold_the_only_turn(&app, &db).await;
    let (mut tcp, client_port) = raw_upgrade_request(&app, &gone, None).await;
    eventually(
        Duration::from_secs(2),
        "the handshake waits for a turn",
        || async { (app.stopper.state().gateway.admission.waiting() == 1).then_some(()) },
    )
    .await;
    tcp.shutdown().await.expect("half-close"); // the client gives up
                                               // The turn comes only once the server's side has the client's FIN (its socket left
                                               // ESTABLISHED for CLOSE_WAIT): what the node can see when it checks.
    eventually(
        Duration::from_secs(10),
        "the server's side saw the client's FIN",
        || async { (!server_side_established(app.port, client_port)).then_some(()) },
    )
    .await;
    release(locker).await;
    let hello = holding.next(Duration::from_secs(20)).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    let mut answer = vec![];
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to the abandoned handshake");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(app.stopper.state().gateway.admission.waiting(), 0);
    holding.close().await;
    app.stop().await;
}

/// When the node begins to shut down, a handshake waiting for its turn is answered 503 at once,
/// not when its wait ends (here 10 minutes, so "at once" needs no stopwatch: any answer within
/// the test's generous deadline came from the shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_waiting_handshakes_at_once() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.ws_max_joining = Some(1);
        s.ws_join_wait = Duration::from_secs(600);
    })
    .await;
    let (locker, _holding) = hold_the_only_turn(&app, &db).await;
    let url = app.ws_url(&token(&new_user()), Some(0));
    let waiting = tokio::spawn(async move { WsClient::connect(&url).await });
    eventually(
        Duration::from_secs(2),
        "the handshake waits for a turn",
        || async { (app.stopper.state().gateway.admission.waiting() == 1).then_some(()) },
    )
    .await;
    let stopper = app.stopper.clone();
    let stopping = tokio::spawn(async move { stopper.stop().await });
    let answer = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting handshake was not answered when the node began to stop")
        .expect("joined");
    assert_eq!(refused_status(answer), 503);
    release(locker).await;
    stopping.await.expect("stopped");
}

/// A handshake waits for its turn at most `NOTIFYD_WS_JOIN_WAIT` (here 1 s; the only turn is
/// held by a join whose catch-up read waits on locked inbox tables, until the end of the test):
/// then it is told to retry with 1013, like one that found no place in the queue. (It waited at
/// least the bound; without the bound it would wait for the turn, which never comes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_waits_past_the_bound_is_told_to_retry() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.ws_max_joining = Some(1);
        s.ws_join_wait = Duration::from_secs(1);
    })
    .await;
    let (locker, _holding) = hold_the_only_turn(&app, &db).await;
    let started = std::time::Instant::now();
    let mut c = app.ws(&new_user(), Some(0)).await;
    assert_eq!(c.expect_close(Duration::from_secs(60)).await, Some(1013));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "refused after {waited:?}, before the bound"
    );
    let (_, reason) = c.closed.clone().expect("closed");
    assert!(
        notifyd::wire::protocol::retry_after_ms(&reason).is_some(),
        "{reason}"
    );
    release(locker).await;
    app.stop().await;
}

/// With `NOTIFYD_SERVICE_BIND`, internal services get a listener of their own (the same routes
/// on an HTTP worker of its own, so a storm of handshakes on the public listener never queues
/// their calls): a message POSTed there reaches the user's socket on the public listener, both
/// listeners answer, and stopping the node stops both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_can_have_a_listener_of_their_own() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.service_bind = Some("127.0.0.1:0".into());
    })
    .await;
    let service = app.service_port.expect("a service listener");
    assert_ne!(service, app.port);
    let user = new_user();
    let mut ws = app.ws(&user, None).await;
    assert_eq!(
        ws.next(Duration::from_secs(10)).await.expect("hello")["type"],
        "hello"
    );
    let r = app
        .http
        .post(format!("http://127.0.0.1:{service}/api/v1/messages"))
        .bearer_auth(SERVICE_KEY)
        .json(&serde_json::json!({"to_user": user, "title": "via the service listener", "content": "c", "type": "comment"}))
        .send()
        .await
        .expect("POST on the service listener");
    assert_eq!(r.status(), 201);
    let created = ws.expect("message.created", Duration::from_secs(10)).await;
    assert_eq!(created["message"]["title"], "via the service listener");
    for port in [app.port, service] {
        let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200, "port {port}");
    }
    app.stop().await;
    let gone = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{service}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the service listener still answers after stop"
    );
}

/// A handshake refused because the node is full (upgraded, then closed with 1013) is not read
/// on: a client that streams after its upgrade meets TCP back-pressure. (The refusal dropped the
/// client's stream at once, and the HTTP layer read and discarded it at full speed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_as_busy_meets_tcp_backpressure_not_a_reader() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, Opts::no_relay(), |s| {
        s.ws_max_joining = Some(1);
        s.ws_join_queue = 0;
    })
    .await;
    let (locker, _holding) = hold_the_only_turn(&app, &db).await;
    let (mut tcp, _) = raw_upgrade_request(&app, &new_user(), None).await;
    read_upgrade_answer(&mut tcp).await;
    let written = bytes_taken_after_a_huge_frame(&mut tcp, Duration::from_secs(3)).await;
    assert!(
        written < 64 << 20,
        "the server read on a refused client: {} MB taken in 3 s",
        written >> 20
    );
    release(locker).await;
    app.stop().await;
}
