//! `GET /demo/products` (`serve --dev`) seeds the catalogue's retained values before the page
//! goes out: never over a value a service published meanwhile, and once per product however
//! many first views race (decision 0014).

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use uuid::Uuid;

use crate::helpers::*;

const T: Duration = Duration::from_secs(15);

/// A dev node (the demo routes) whose outbox stays for the test to count (no relay).
async fn dev_node(db: &TestDb) -> TestApp {
    spawn_app_with(db, Opts::no_relay(), |s| s.dev = true).await
}

async fn view(app: &TestApp) -> u16 {
    app.http
        .get(format!("{}/demo/products", app.base))
        .send()
        .await
        .expect("GET /demo/products")
        .status()
        .as_u16()
}

async fn published(db: &TestDb, topic: &str) -> i64 {
    scalar_i64(
        &db.url,
        &format!("SELECT count(*) AS v FROM outbox WHERE topic = '{topic}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_views_publish_each_product_once() {
    let db = TestDb::new().await;
    let app = dev_node(&db).await;
    let views: Vec<_> = (0..24)
        .map(|_| {
            let http = app.http.clone();
            let url = format!("{}/demo/products", app.base);
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for v in views {
        assert_eq!(v.await.expect("join").expect("GET"), 200);
    }
    for id in 1..=12 {
        assert_eq!(
            published(&db, &format!("product:{id}")).await,
            1,
            "product:{id}"
        );
    }
    assert_eq!(
        scalar_i64(&db.url, "SELECT count(*) AS v FROM topic_retained").await,
        12
    );
    // Seeded already: a later view publishes nothing.
    assert_eq!(view(&app).await, 200);
    assert_eq!(
        scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM outbox WHERE topic LIKE 'product:%'"
        )
        .await,
        12
    );
    app.stop().await;
}

/// A service's retained value that commits while the page seeds (after its SELECT saw none)
/// stays: the seed's newer event id must not replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_published_while_the_page_seeds_is_kept() {
    let db = TestDb::new().await;
    let app = dev_node(&db).await;
    let mut holder = db.conn().await;
    let id = Uuid::now_v7();
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO topic_retained (topic, id, frame, expires_at) VALUES \
             ('product:1', '{id}', '{{\"type\":\"topic.event\",\"topic\":\"product:1\",\"id\":\"{id}\",\"data\":{{\"stock\":99,\"price\":1.5}}}}', \
             now() + interval '1 day')"
        ))
        .await
        .expect("insert, uncommitted");
    let url = format!("{}/demo/products", app.base);
    let http = app.http.clone();
    let page = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    // The page's write of product:1 waits for ours.
    eventually(T, "the seed waiting on product:1", || async {
        let waiting = scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
        )
        .await;
        (waiting > 0).then_some(())
    })
    .await;
    holder.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(page.await.expect("join").expect("GET"), 200);
    assert_eq!(
        scalar_text(
            &db.url,
            "SELECT frame->'data'->>'stock' AS v FROM topic_retained WHERE topic = 'product:1'"
        )
        .await,
        "99"
    );
    assert_eq!(published(&db, "product:1").await, 0);
    assert_eq!(published(&db, "product:2").await, 1);
    app.stop().await;
}
