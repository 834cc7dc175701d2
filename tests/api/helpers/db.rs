//! The test's own PostgreSQL database and the queries tests make on it directly.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::ids::rand_hex;

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database, dropped (with its connections) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The server's maintenance database it was made from (and is dropped through).
    admin: String,
}

/// The service's own connection code (TLS parameters of the URL included).
async fn admin_conn(url: &str) -> AsyncPgConnection {
    notifyd::db::connect(url, &notifyd::db::Limits::default())
        .await
        .unwrap_or_else(|e| panic!("admin connection to PostgreSQL: {e}"))
}

impl TestDb {
    pub async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// A fresh database on the server of `admin` (a URL of its maintenance database, whose
    /// query string, e.g. TLS parameters, the new database's URL keeps).
    pub async fn on(admin: &str) -> Self {
        let name = format!("notifyd_test_{}", rand_hex());
        let mut conn = admin_conn(admin).await;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin, String::new()),
        };
        let url = format!(
            "{}/{}{}",
            &base[..base.rfind('/').expect("admin url has a database")],
            name,
            query
        );
        TestDb {
            name,
            url,
            admin: admin.to_string(),
        }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("test db connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop runs outside async context guarantees: use a throwaway runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let limits = notifyd::db::Limits::default();
                if let Ok(mut admin) = notifyd::db::connect(&admin, &limits).await {
                    let _ = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

pub async fn scalar_i64(db_url: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        v: i64,
    }
    scalar_row::<Row>(db_url, sql).await.v
}

/// The one row `sql` selects from the test database.
async fn scalar_row<R>(db_url: &str, sql: &str) -> R
where
    R: diesel::QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    let mut c = AsyncPgConnection::establish(db_url).await.expect("conn");
    diesel::sql_query(sql)
        .get_result(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// One text value from the test database: `sql` must select one row with a text column `v`.
pub async fn scalar_text(db_url: &str, sql: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    scalar_row::<Row>(db_url, sql).await.v
}

/// Every row of `sql` as a JSON object (column name -> value), in the order the query gives.
pub async fn query_json(db_url: &str, sql: &str) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let mut c = AsyncPgConnection::establish(db_url).await.expect("conn");
    let r: Row = diesel::sql_query(format!(
        "SELECT COALESCE(json_agg(q), '[]'::json)::text AS v FROM ({sql}) q"
    ))
    .get_result(&mut c)
    .await
    .expect("json query");
    match serde_json::from_str(&r.v).expect("json_agg result") {
        Value::Array(rows) => rows,
        other => panic!("json_agg gave {other}"),
    }
}

/// `SELECT count(*)` of a whole table.
pub async fn count_rows(db_url: &str, table: &str) -> i64 {
    scalar_i64(db_url, &format!("SELECT count(*) AS v FROM {table}")).await
}

/// Opens a transaction holding `user`'s counter row (`FOR UPDATE`): every command of that user
/// blocks in the database until the returned connection commits.
pub async fn hold_counters(db: &TestDb, user: &str) -> diesel_async::AsyncPgConnection {
    let mut holder = db.conn().await;
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    diesel::sql_query(format!(
        "SELECT 1 FROM user_inbox_state WHERE user_id = '{user}' FOR UPDATE"
    ))
    .execute(&mut holder)
    .await
    .expect("lock the row");
    holder
}

pub async fn release(mut holder: diesel_async::AsyncPgConnection) {
    diesel::sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");
}
