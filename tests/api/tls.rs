//! TLS to PostgreSQL and Redis (contract §11, issue 25 item 1), against a PostgreSQL that
//! accepts TLS connections only (`hostssl`) and a Redis that listens on a TLS port only, both
//! with a certificate for `localhost` from a CA that scripts/tls-pooler-test.sh makes. Ignored
//! by a plain `cargo test` (there are no such servers); that script starts them and runs these.
//!
//! Env: `TEST_TLS_PG_URL` (`postgres://postgres@localhost:PORT/postgres`), `TEST_TLS_REDIS_URL`
//! (`rediss://localhost:PORT`), `TEST_TLS_CA` (the CA's PEM), `TEST_TLS_WRONG_CA` (another CA).

use std::time::Duration;

use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::helpers::*;

const T: Duration = Duration::from_secs(15);

struct Servers {
    pg: String,
    redis: String,
    ca: String,
    wrong_ca: String,
}

fn servers() -> Servers {
    let var = |k: &str| {
        std::env::var(k)
            .unwrap_or_else(|_| panic!("{k} is not set: run scripts/tls-pooler-test.sh"))
    };
    Servers {
        pg: var("TEST_TLS_PG_URL"),
        redis: var("TEST_TLS_REDIS_URL"),
        ca: var("TEST_TLS_CA"),
        wrong_ca: var("TEST_TLS_WRONG_CA"),
    }
}

/// `url` with TLS parameters in its query string.
fn with_tls(url: &str, mode: &str, root: Option<&str>) -> String {
    match root {
        Some(r) => format!("{url}?sslmode={mode}&sslrootcert={r}"),
        None => format!("{url}?sslmode={mode}"),
    }
}

/// The same server by address: the certificate names `localhost` only.
fn by_ip(url: &str) -> String {
    url.replace("@localhost:", "@127.0.0.1:")
}

#[derive(diesel::QueryableByName)]
struct Encrypted {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

async fn session_is_encrypted(url: &str) -> Result<bool, String> {
    let mut c = notifyd::db::connect(url, &notifyd::db::Limits::default())
        .await
        .map_err(|e| e.to_string())?;
    let row: Encrypted =
        diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result(&mut c)
            .await
            .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the TLS servers scripts/tls-pooler-test.sh starts"]
async fn with_verify_full_a_created_message_reaches_a_websocket_over_tls_postgres_and_redis() {
    let srv = servers();
    let db = TestDb::on(&with_tls(&srv.pg, "verify-full", Some(&srv.ca))).await;
    let opts = Opts {
        redis_url: Some(srv.redis.clone()),
        ..Default::default()
    };
    let ca = srv.ca.clone();
    let app = spawn_app_with(&db, opts, |s| s.redis_ca_file = Some(ca.into())).await;
    let u = new_user();
    let mut ws = app.ws(&u, None).await;
    ws.next_of("hello", T).await;
    let r = app
        .post_messages(&json!({"to_user": u, "title": "over TLS", "content": "both ways"}))
        .await;
    assert_eq!(r.status(), 201);
    let f = ws.next_of("message.created", T).await;
    assert_eq!(f["message"]["title"], "over TLS");
    // And a command's answer (a read through the pool) on the same socket.
    let id = f["message"]["id"].clone();
    ws.send(&json!({"type": "read", "ref": "r1", "ids": [id]}))
        .await;
    let ack = ws.answer_to("r1", T).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // Every session of the node on this database is encrypted (the server takes no other).
    let mut c = notifyd::db::connect(&db.url, &notifyd::db::Limits::default())
        .await
        .expect("connect");
    let plain: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = current_database() AND NOT s.ssl",
    )
    .get_result(&mut c)
    .await
    .expect("count");
    assert_eq!(plain.n, 0);
    app.stop().await;
}

/// libpq's modes: `verify-full` compares the host with the certificate's subjectAltName,
/// `verify-ca` only the chain, `require` without a CA encrypts without checking, and a server
/// that takes TLS only refuses plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the TLS servers scripts/tls-pooler-test.sh starts"]
async fn each_sslmode_checks_what_libpq_checks() {
    let srv = servers();
    assert_eq!(
        session_is_encrypted(&with_tls(&srv.pg, "verify-full", Some(&srv.ca))).await,
        Ok(true)
    );
    let wrong_host = session_is_encrypted(&with_tls(&by_ip(&srv.pg), "verify-full", Some(&srv.ca)))
        .await
        .expect_err("127.0.0.1 is not in the certificate");
    assert!(wrong_host.contains("not valid for name"), "{wrong_host}");
    assert_eq!(
        session_is_encrypted(&with_tls(&by_ip(&srv.pg), "verify-ca", Some(&srv.ca))).await,
        Ok(true)
    );
    let wrong_ca =
        session_is_encrypted(&with_tls(&by_ip(&srv.pg), "verify-ca", Some(&srv.wrong_ca)))
            .await
            .expect_err("another CA");
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    assert_eq!(
        session_is_encrypted(&with_tls(&by_ip(&srv.pg), "require", None)).await,
        Ok(true)
    );
    // `require` with a CA checks the chain, as libpq does.
    let e = session_is_encrypted(&with_tls(&srv.pg, "require", Some(&srv.wrong_ca)))
        .await
        .expect_err("another CA");
    assert!(e.contains("UnknownIssuer"), "{e}");
    for mode in ["disable", "prefer"] {
        let e = session_is_encrypted(&with_tls(&srv.pg, mode, None))
            .await
            .expect_err("the server takes TLS only");
        assert!(e.contains("no encryption"), "{mode}: {e}");
    }
}

/// A CA that did not sign the server's certificate stops start-up at once with the reason,
/// for PostgreSQL and for Redis: a configuration error, not an outage to wait out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the TLS servers scripts/tls-pooler-test.sh starts"]
async fn a_wrong_ca_stops_start_up_with_the_reason() {
    let srv = servers();
    let db = TestDb::on(&with_tls(&srv.pg, "verify-full", Some(&srv.ca))).await;

    let mut s = settings_for(&db.url, &Opts::default());
    s.database_url = with_tls(
        &db.url[..db.url.find('?').expect("query")],
        "verify-full",
        Some(&srv.wrong_ca),
    );
    s.redis_url = Some(srv.redis.clone());
    s.redis_ca_file = Some(srv.ca.clone().into());
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(T, notifyd::startup::Application::build(s, None))
        .await
        .expect("start-up must not hang")
        .err()
        .expect("start-up refused");
    let e = format!("{e:#}");
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let mut s = settings_for(&db.url, &Opts::default());
    s.redis_url = Some(srv.redis.clone());
    s.redis_ca_file = Some(srv.wrong_ca.clone().into());
    let e = tokio::time::timeout(T, notifyd::startup::Application::build(s, None))
        .await
        .expect("start-up must not hang")
        .err()
        .expect("start-up refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("Redis over TLS") && e.contains("certificate"),
        "{e}"
    );
}
