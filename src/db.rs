//! PostgreSQL: connections (with keepalive and server-side limits), the pool, the embedded
//! migrations.

use std::time::Duration;

use anyhow::Context;
use diesel::ConnectionError;
use diesel::ConnectionResult;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;

use crate::config::Settings;
use crate::error::ApiError;

pub type DbPool = Pool<AsyncPgConnection>;
pub type PooledConn = Object<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Bound on opening a connection (TCP connect + startup + our `SET`s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive on every connection: the kernel notices a database host that vanished.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Data unacknowledged this long closes the socket (Linux `TCP_USER_TIMEOUT`).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Server-side limits set on a connection at start-up (`options=-c ...`). They bound what the
/// SERVER lets one session do: a statement that runs too long, a lock wait, a transaction left
/// idle (its locks, e.g. the relay's claimed outbox rows, go with it), an idle session (the
/// relay leader's, so a leader whose client vanished behind a half-open path loses its advisory
/// lock in bounded time). `None` = the server's default.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub statement_timeout: Option<Duration>,
    pub lock_timeout: Option<Duration>,
    pub idle_in_transaction_timeout: Option<Duration>,
    pub idle_session_timeout: Option<Duration>,
}

impl Limits {
    /// The limits every pooled and background connection gets.
    pub fn from_settings(s: &Settings) -> Self {
        let set = |d: Duration| (!d.is_zero()).then_some(d);
        Limits {
            statement_timeout: set(s.db_statement_timeout),
            lock_timeout: set(s.db_lock_timeout),
            idle_in_transaction_timeout: set(s.db_idle_in_transaction_timeout),
            idle_session_timeout: None,
        }
    }

    fn options(&self) -> String {
        let mut o = vec![];
        let mut set = |name: &str, d: Option<Duration>| {
            if let Some(d) = d {
                o.push(format!("-c {name}={}", d.as_millis()));
            }
        };
        set("statement_timeout", self.statement_timeout);
        set("lock_timeout", self.lock_timeout);
        set(
            "idle_in_transaction_session_timeout",
            self.idle_in_transaction_timeout,
        );
        set("idle_session_timeout", self.idle_session_timeout);
        o.join(" ")
    }
}

/// The connection parameters for `database_url` with this service's liveness settings added.
/// Whatever the URL sets itself wins: its own `options` come after ours (PostgreSQL applies
/// the last `-c` for a name), and its own keepalive / timeout parameters are kept.
pub fn pg_config(database_url: &str, limits: &Limits) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = database_url
        .parse()
        .with_context(|| format!("parsing {}", crate::config::redact::url(database_url)))?;
    let ours = limits.options();
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours,
    };
    // Nothing to set: send no `options` at all (some poolers refuse the parameter).
    if !options.trim().is_empty() {
        config.options(options.trim());
    }
    config.keepalives(true);
    // 2 hours is tokio-postgres's default, i.e. the URL did not ask for anything.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 3600) {
        config
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    Ok(config)
}

/// Opens one connection with keepalive and the server-side `limits`, within `CONNECT_TIMEOUT`.
pub async fn connect(database_url: &str, limits: &Limits) -> ConnectionResult<AsyncPgConnection> {
    let config = pg_config(database_url, limits)
        .map_err(|e| ConnectionError::BadConnection(format!("{e:#}")))?;
    let connecting = async {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            ConnectionError::BadConnection(format!(
                "connecting timed out after {CONNECT_TIMEOUT:?}"
            ))
        })?
}

pub fn pool(database_url: &str, size: usize, limits: Limits) -> anyhow::Result<DbPool> {
    // `Fast`: no test query per checkout (a round trip on every request); a connection the
    // server closed (restart, failover) is still caught by `is_broken` and replaced.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let limits = limits.clone();
        let url = url.to_string();
        async move { connect(&url, &limits).await }.boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}

/// Applies pending migrations. Runs the synchronous harness on a blocking thread so it works from
/// any runtime flavour (the async harness needs `block_in_place`). No statement timeout (a
/// migration may rewrite a big table), but a lock timeout: a migration waiting behind a long
/// transaction must fail rather than queue every other session behind its lock request.
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    let limits = Limits {
        lock_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let conn = connect(database_url, &limits)
        .await
        .with_context(|| format!("connecting to {}", crate::config::redact::url(database_url)))?;
    tokio::task::spawn_blocking(move || {
        let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(conn);
        wrapper
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(|m| m.to_string()).collect())
            .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))
    })
    .await
    .context("migration task")?
}

/// `notifyd reset-epochs`: every inbox a new epoch (`store::inbox_state::renew_epochs`), on a
/// connection of its own with a lock timeout (it updates every counter row).
pub async fn reset_epochs(database_url: &str) -> anyhow::Result<usize> {
    let limits = Limits {
        lock_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let mut conn = connect(database_url, &limits)
        .await
        .with_context(|| format!("connecting to {}", crate::config::redact::url(database_url)))?;
    Ok(crate::store::inbox_state::renew_epochs(&mut conn, 1000).await?)
}

/// Runs one request's (or command's) database work on a pooled connection, bounded by
/// `limit` on our side. The server's own timeouts cannot fire for a statement that never
/// reached it: a connection gone silent (a hung server or pooler, a black-holing network)
/// would hold the caller for as long as the silence lasts. A call that times out answers
/// `503` and its connection is taken out of the pool and dropped, never reused (a late
/// answer would land on the next caller's query).
pub async fn run<T, F>(pool: &DbPool, limit: std::time::Duration, f: F) -> Result<T, ApiError>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
{
    let asked = std::time::Instant::now();
    let mut conn = pool.get().await?;
    // How long requests wait for a pooled connection: the first thing to look at when requests
    // slow down while the database itself is not busy (a pool too small for the load).
    metrics::histogram!("notifyd_db_pool_wait_seconds").record(asked.elapsed().as_secs_f64());
    let result = tokio::time::timeout(limit, f(&mut conn)).await;
    match result {
        Ok(r) => r,
        Err(_) => {
            drop(Object::take(conn));
            metrics::counter!("notifyd_db_request_timeouts_total").increment(1);
            Err(ApiError::Unavailable(format!(
                "database did not answer within {limit:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            statement_timeout: Some(Duration::from_secs(30)),
            lock_timeout: Some(Duration::from_secs(10)),
            idle_in_transaction_timeout: None,
            idle_session_timeout: None,
        }
    }

    #[test]
    fn our_limits_and_keepalive_are_added_to_a_plain_url() {
        let c = pg_config("postgres://u@db:5432/n", &limits()).expect("config");
        assert_eq!(
            c.get_options(),
            Some("-c statement_timeout=30000 -c lock_timeout=10000")
        );
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(c.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }

    #[test]
    fn a_urls_own_parameters_win() {
        let c = pg_config(
            "postgres://u@db/n?options=-c%20statement_timeout%3D5000&keepalives_idle=60&connect_timeout=2",
            &limits(),
        )
        .expect("config");
        // PostgreSQL applies the last `-c` for a name: the URL's.
        assert_eq!(
            c.get_options(),
            Some("-c statement_timeout=30000 -c lock_timeout=10000 -c statement_timeout=5000")
        );
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
    }
}
