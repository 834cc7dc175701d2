//! PgBouncer in `pool_mode = transaction` with its default settings (contract §11, issue 25
//! item 2): what the pooler refuses, and that each call of the pool carries its own timeouts
//! and leaves nothing behind on the server session the next client gets. Ignored by a plain
//! `cargo test` (no PgBouncer); scripts/tls-pooler-test.sh starts one and runs these, and runs
//! a part of the other integration tests through it (`TEST_DATABASE_POOLER_URL`).

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use notifyd::db::{self, Limits, Pooler};
use notifyd::error::ApiError;

use crate::helpers::*;

fn pooler_url(db: &TestDb) -> String {
    let base = std::env::var("TEST_DATABASE_POOLER_URL")
        .expect("TEST_DATABASE_POOLER_URL is not set: run scripts/tls-pooler-test.sh");
    format!("{}/{}", base.trim_end_matches('/'), db.name)
}

fn limits(statement: Duration) -> Limits {
    Limits {
        statement_timeout: Some(statement),
        lock_timeout: Some(Duration::from_secs(10)),
        idle_in_transaction_timeout: Some(Duration::from_secs(60)),
        idle_session_timeout: None,
    }
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    statement_timeout: String,
}

async fn statement_timeout(conn: &mut diesel_async::AsyncPgConnection) -> Result<String, ApiError> {
    let s: Setting = diesel::sql_query("SHOW statement_timeout")
        .get_result(conn)
        .await?;
    Ok(s.statement_timeout)
}

/// What the service sent before it knew about poolers: the limits as the `options` startup
/// parameter, which PgBouncer refuses (unless told to ignore it), so nothing could start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the PgBouncer scripts/tls-pooler-test.sh starts"]
async fn pgbouncer_refuses_limits_sent_as_startup_options() {
    let db = TestDb::new().await;
    let e = db::connect(&pooler_url(&db), &limits(Duration::from_secs(30)))
        .await
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("unsupported startup parameter"),
        "{e}"
    );
}

/// Through the pooler every call is a transaction that sets the limits itself: they hold
/// (a statement past the timeout is cancelled), every call sees them whichever server session
/// it gets, and a session without them (another client of the pooler) sees the server's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the PgBouncer scripts/tls-pooler-test.sh starts"]
async fn each_pooled_call_carries_its_timeouts_and_leaves_no_session_state() {
    let db = TestDb::new().await;
    let url = pooler_url(&db);
    let pool = db::pool_with(
        &url,
        4,
        limits(Duration::from_millis(300)),
        Pooler::Transaction,
    )
    .expect("pool");
    let t = Duration::from_secs(10);
    let calls = (0..40).map(|_| db::run(&pool, t, async |c| statement_timeout(c).await));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.expect("call"), "300ms");
    }
    let slow = db::run(&pool, t, async |c| {
        diesel::sql_query("SELECT pg_sleep(2)")
            .execute(c)
            .await
            .map_err(ApiError::from)
    })
    .await;
    let e = format!("{:?}", slow.expect_err("cancelled by the server"));
    assert!(e.contains("statement timeout"), "{e}");

    // Another client of the pooler, without limits of its own, on whichever server session.
    let other = db::pool_with(&url, 1, Limits::default(), Pooler::Transaction).expect("pool");
    for _ in 0..8 {
        let seen = db::run(&other, t, async |c| statement_timeout(c).await)
            .await
            .expect("call");
        assert_eq!(seen, "0");
    }
}
