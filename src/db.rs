//! PostgreSQL: connections (with keepalive, server-side limits and, as the URL asks, TLS), the
//! pool (straight to PostgreSQL or behind a transaction pooler), the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use diesel::connection::CacheSize;
use diesel::ConnectionError;
use diesel::ConnectionResult;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    TransactionManager,
};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;

use crate::config::Settings;
use crate::error::ApiError;

pub mod replica;

// What the database URL and `NOTIFYD_DATABASE_POOLER` ask for is read with the configuration
// (below this module); connecting by it is done here.
pub use crate::config::database_url::{Pooler, RootCert, Ssl, SslMode};

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

/// Server-side limits set on a connection at start-up (`options=-c ...`), or behind a transaction
/// pooler at the start of every transaction (`SET LOCAL`, see [`Pooler`]). They bound what the
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

    /// The same limits for the current transaction only (behind a transaction pooler).
    fn set_local(&self) -> String {
        let mut o = vec![];
        let mut set = |name: &str, d: Option<Duration>| {
            if let Some(d) = d {
                o.push(format!("SET LOCAL {name} = {}", d.as_millis()));
            }
        };
        set("statement_timeout", self.statement_timeout);
        set("lock_timeout", self.lock_timeout);
        set(
            "idle_in_transaction_session_timeout",
            self.idle_in_transaction_timeout,
        );
        o.join("; ")
    }
}

/// The connection parameters for `database_url` with this service's liveness settings added.
/// Whatever the URL sets itself wins: its own `options` come after ours (PostgreSQL applies
/// the last `-c` for a name), and its own keepalive / timeout parameters are kept. libpq's TLS
/// parameters (`sslmode`, `sslrootcert`), which tokio-postgres reads only in part, are read by
/// [`Ssl`] and left out here.
pub fn pg_config(database_url: &str, limits: &Limits) -> anyhow::Result<tokio_postgres::Config> {
    Ok(Target::new(database_url, limits, Pooler::None)?.config)
}

/// One database's connection recipe: tokio-postgres' parameters and the TLS to speak.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pooler: Pooler,
}

impl Target {
    /// Reads `database_url` (and `PGSSLROOTCERT`); reads the CA file now, so a missing or bad
    /// one is an error at start-up.
    pub fn new(database_url: &str, limits: &Limits, pooler: Pooler) -> anyhow::Result<Self> {
        let redacted = || crate::config::redact::url(database_url);
        let (rest, ssl) =
            Ssl::split(database_url).with_context(|| format!("parsing {}", redacted()))?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .with_context(|| format!("parsing {}", redacted()))?;
        // Behind a transaction pooler the limits are set per transaction (`run`) instead.
        let ours = match pooler {
            Pooler::None => limits.options(),
            Pooler::Transaction => String::new(),
        };
        let options = match config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
            _ => ours,
        };
        // Nothing to set: send no `options` at all (PgBouncer refuses the parameter).
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
        let tls = match ssl
            .client_config()
            .with_context(|| format!("TLS for {}", redacted()))?
        {
            Some(c) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(c))
            }
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        Ok(Target {
            config,
            tls,
            pooler,
        })
    }

    /// Opens one connection within `CONNECT_TIMEOUT`.
    pub async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        let connecting = async {
            let bad = |e: tokio_postgres::Error| {
                let mut m = pg_error(&e);
                if m.contains("unsupported startup parameter") {
                    // PgBouncer's answer to `options`: say what to do about it.
                    m.push_str(
                        " (a pooler in transaction mode? set NOTIFYD_DATABASE_DIRECT_URL to \
                         PostgreSQL itself, see docs/operations.md#pgbouncer)",
                    );
                }
                ConnectionError::BadConnection(m)
            };
            let conn = match &self.tls {
                None => {
                    let (client, connection) = self
                        .config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map_err(bad)?;
                    self.setup(client, connection).await?
                }
                Some(tls) => {
                    let (client, connection) =
                        self.config.connect(tls.clone()).await.map_err(bad)?;
                    self.setup(client, connection).await?
                }
            };
            Ok(conn)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                ConnectionError::BadConnection(format!(
                    "connecting timed out after {CONNECT_TIMEOUT:?}"
                ))
            })?
    }

    async fn setup<S>(
        &self,
        client: tokio_postgres::Client,
        connection: tokio_postgres::Connection<tokio_postgres::Socket, S>,
    ) -> ConnectionResult<AsyncPgConnection>
    where
        S: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
    {
        match self.pooler {
            Pooler::None => {
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
            Pooler::Transaction => {
                // diesel-async's own set-up (`SET TIME ZONE`, `SET CLIENT_ENCODING`, each a
                // prepared statement) inside one transaction, so its prepare and execute meet on
                // the same server session; PgBouncer tracks both settings for this client.
                let setup_error = |e: tokio_postgres::Error| {
                    ConnectionError::CouldntSetupConfiguration(
                        diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::Unknown,
                            Box::new(pg_error(&e)),
                        ),
                    )
                };
                // The client is only a handle; the connection task must run for it to answer.
                let (client, connection) = (client, connection);
                let mut conn = {
                    let begin = async {
                        client.batch_execute("BEGIN").await.map_err(setup_error)?;
                        Ok::<_, ConnectionError>(client)
                    };
                    let driven = drive_until(connection, begin).await;
                    let (client, connection) = driven?;
                    AsyncPgConnection::try_from_client_and_connection(client, connection).await?
                };
                conn.batch_execute("COMMIT")
                    .await
                    .map_err(ConnectionError::CouldntSetupConfiguration)?;
                conn.set_prepared_statement_cache_size(CacheSize::Disabled);
                Ok(conn)
            }
        }
    }
}

/// Runs `fut` (which talks through the client of `connection`) while polling `connection`,
/// and hands the connection back untouched for diesel-async to drive from then on.
async fn drive_until<S, T, F>(
    mut connection: tokio_postgres::Connection<tokio_postgres::Socket, S>,
    fut: F,
) -> ConnectionResult<(T, tokio_postgres::Connection<tokio_postgres::Socket, S>)>
where
    S: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
    F: std::future::Future<Output = ConnectionResult<T>>,
{
    use std::future::Future;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(r);
        }
        match std::pin::Pin::new(&mut connection).poll(cx) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Err(
                ConnectionError::BadConnection("the server closed the connection".into()),
            )),
            std::task::Poll::Ready(Err(e)) => {
                std::task::Poll::Ready(Err(ConnectionError::BadConnection(pg_error(&e))))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
    .map(|t| (t, connection))
}

/// A tokio-postgres error with its causes (a TLS handshake error says why: `invalid peer
/// certificate: UnknownIssuer`, `... NotValidForName`).
fn pg_error(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        next = cause.source();
    }
    s
}

impl Ssl {
    /// The rustls configuration this asks for, `None` for plain TCP.
    pub fn client_config(&self) -> anyhow::Result<Option<rustls::ClientConfig>> {
        use crate::tls::Verify;
        let verify = match (self.mode, &self.root_cert) {
            (SslMode::Plain, _) => return Ok(None),
            (SslMode::Require, None) => Verify::Nothing,
            (SslMode::Require | SslMode::VerifyCa, _) => Verify::Chain,
            (SslMode::VerifyFull, _) => Verify::ChainAndHost,
        };
        let roots = match (&self.root_cert, verify) {
            (_, Verify::Nothing) => rustls::RootCertStore::empty(),
            (Some(RootCert::File(path)), _) => crate::tls::roots_from_file(path)?,
            (Some(RootCert::System) | None, _) => crate::tls::system_roots()?,
        };
        Ok(Some(crate::tls::client_config(roots, verify)?))
    }
}

/// Opens one connection with keepalive and the server-side `limits` (a dedicated connection:
/// the relay's, the housekeeper's, `LISTEN`, migrations), within `CONNECT_TIMEOUT`.
pub async fn connect(database_url: &str, limits: &Limits) -> ConnectionResult<AsyncPgConnection> {
    Target::new(database_url, limits, Pooler::None)
        .map_err(|e| ConnectionError::BadConnection(format!("{e:#}")))?
        .connect()
        .await
}

/// The pool of request connections. `pooler` says whether `database_url` goes through a
/// transaction pooler ([`Pooler`]).
#[derive(Clone)]
pub struct DbPool {
    pool: Pool<AsyncPgConnection>,
    /// `Some`: every [`run`] is a transaction that sets these limits first (`SET LOCAL`).
    per_transaction: Option<Limits>,
}

impl std::ops::Deref for DbPool {
    type Target = Pool<AsyncPgConnection>;
    fn deref(&self) -> &Self::Target {
        &self.pool
    }
}

pub fn pool(database_url: &str, size: usize, limits: Limits) -> anyhow::Result<DbPool> {
    pool_with(database_url, size, limits, Pooler::None)
}

pub fn pool_with(
    database_url: &str,
    size: usize,
    limits: Limits,
    pooler: Pooler,
) -> anyhow::Result<DbPool> {
    pool_waiting(database_url, size, limits, pooler, POOL_WAIT)
}

/// How long a checkout waits for a free connection of the primary's pool.
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// A pool whose checkouts wait at most `wait` for a free connection (a replica's: short, see
/// [`replica`]).
pub(crate) fn pool_waiting(
    database_url: &str,
    size: usize,
    limits: Limits,
    pooler: Pooler,
    wait: Duration,
) -> anyhow::Result<DbPool> {
    // Read (URL, TLS, CA file) once, now: a bad one fails start-up, not every connection.
    let target = Target::new(database_url, &limits, pooler)?;
    // `Fast`: no test query per checkout (a round trip on every request); a connection the
    // server closed (restart, failover) is still caught by `is_broken` and replaced.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_url| {
        let target = target.clone();
        async move { target.connect().await }.boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    let pool = Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("building the database pool")?;
    Ok(DbPool {
        pool,
        per_transaction: (pooler == Pooler::Transaction).then_some(limits),
    })
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
    let conn = pool.get().await?;
    // How long requests wait for a pooled connection: the first thing to look at when requests
    // slow down while the database itself is not busy (a pool too small for the load).
    metrics::histogram!("notifyd_db_pool_wait_seconds").record(asked.elapsed().as_secs_f64());
    match bounded(pool, conn, limit, f).await {
        Some(r) => r,
        None => {
            metrics::counter!("notifyd_db_request_timeouts_total").increment(1);
            Err(ApiError::Unavailable(format!(
                "database did not answer within {limit:?}"
            )))
        }
    }
}

/// `f` on the checked-out `conn` of `pool` (one transaction behind a transaction pooler),
/// bounded by `limit` on our side. `None`: it timed out, and the connection was taken out of
/// the pool and dropped (a late answer would land on the next caller's query).
pub(crate) async fn bounded<T, F>(
    pool: &DbPool,
    mut conn: PooledConn,
    limit: Duration,
    f: F,
) -> Option<Result<T, ApiError>>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
{
    let result = {
        let c: &mut AsyncPgConnection = &mut conn;
        tokio::time::timeout(limit, async {
            match &pool.per_transaction {
                None => f(c).await,
                Some(limits) => in_transaction(c, limits, f).await,
            }
        })
        .await
    };
    match result {
        Ok(r) => Some(r),
        Err(_) => {
            drop(Object::take(conn));
            None
        }
    }
}

/// `f` in one transaction that begins with the limits (`SET LOCAL`, in the same round trip as
/// `BEGIN`): behind a transaction pooler that is the only way a timeout holds, and the only
/// way a statement's prepare and execute reach the same server session. `f`'s own
/// transactions become savepoints; [`snapshot`] knows how to ask for its isolation.
async fn in_transaction<T, F>(
    conn: &mut AsyncPgConnection,
    limits: &Limits,
    f: F,
) -> Result<T, ApiError>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
{
    let set = limits.set_local();
    let begin = if set.is_empty() {
        "BEGIN".to_string()
    } else {
        format!("BEGIN; {set}")
    };
    within(conn, &begin, f).await
}

/// `f` in a transaction begun by `begin` (one round trip), committed if `f` succeeds.
async fn within<T, F>(conn: &mut AsyncPgConnection, begin: &str, f: F) -> Result<T, ApiError>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
{
    AnsiTransactionManager::begin_transaction_sql(conn, begin).await?;
    match f(conn).await {
        Ok(v) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(v)
        }
        Err(e) => {
            // A failed rollback leaves the connection marked broken: the pool drops it.
            if let Err(r) = AnsiTransactionManager::rollback_transaction(conn).await {
                tracing::debug!(error = %r, "rollback after a failed call failed");
            }
            Err(e)
        }
    }
}

/// `f` in a read-only snapshot (REPEATABLE READ): its reads agree with each other. On a
/// connection already in a transaction (a call of [`run`] behind a transaction pooler, which
/// opened it and has run no query yet) the open transaction is made one; otherwise `f` gets a
/// transaction of its own.
pub async fn snapshot<T, F>(conn: &mut AsyncPgConnection, f: F) -> Result<T, ApiError>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
{
    const ISOLATION: &str = "ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    let depth = AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth()?;
    if depth.is_some() {
        conn.batch_execute(&format!("SET TRANSACTION {ISOLATION}"))
            .await?;
        return f(conn).await;
    }
    within(conn, &format!("BEGIN TRANSACTION {ISOLATION}"), f).await
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

    fn split(url: &str, env_root: Option<&str>) -> (String, Ssl) {
        Ssl::split_with(url, env_root.map(Into::into)).expect("splits")
    }

    /// Contract §11: libpq's TLS parameters are ours to read; the rest of the URL is left as it
    /// was for tokio-postgres (which would refuse `verify-full` and `sslrootcert`).
    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (rest, ssl) = split(
            "postgres://u:p@db.example.com:5432/n?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&application_name=x",
            None,
        );
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/n?connect_timeout=3&application_name=x"
        );
        assert_eq!(
            ssl,
            Ssl {
                mode: SslMode::VerifyFull,
                root_cert: Some(RootCert::File("/etc/ca dir/ca.pem".into())),
            }
        );
        let (rest, ssl) = split("postgres://u@db/n?sslmode=require", None);
        assert_eq!(rest, "postgres://u@db/n");
        assert_eq!((ssl.mode, ssl.root_cert), (SslMode::Require, None));
    }

    #[test]
    fn no_sslmode_disable_allow_and_prefer_are_plain_tcp() {
        for url in [
            "postgres://u@db/n",
            "postgres://u@db/n?sslmode=disable",
            "postgres://u@db/n?sslmode=allow",
            "postgres://u@db/n?sslmode=prefer",
        ] {
            let (_, ssl) = split(url, None);
            assert_eq!(ssl.mode, SslMode::Plain, "{url}");
            assert!(ssl.client_config().expect("config").is_none(), "{url}");
            let c = pg_config(url, &limits()).expect("config");
            assert_eq!(
                c.get_ssl_mode(),
                tokio_postgres::config::SslMode::Disable,
                "{url}"
            );
        }
    }

    #[test]
    fn pgsslrootcert_is_the_ca_when_the_url_names_none_and_system_means_the_store() {
        let (_, ssl) = split("postgres://u@db/n?sslmode=verify-ca", Some("/ca.pem"));
        assert_eq!(ssl.root_cert, Some(RootCert::File("/ca.pem".into())));
        let (_, ssl) = split(
            "postgres://u@db/n?sslmode=verify-ca&sslrootcert=/mine.pem",
            Some("/ca.pem"),
        );
        assert_eq!(ssl.root_cert, Some(RootCert::File("/mine.pem".into())));
        let (_, ssl) = split(
            "postgres://u@db/n?sslmode=verify-full&sslrootcert=system",
            None,
        );
        assert_eq!(ssl.root_cert, Some(RootCert::System));
    }

    #[test]
    fn unknown_sslmodes_client_certificates_and_missing_ca_files_are_refused_with_the_reason() {
        let e = Ssl::split_with("postgres://u@db/n?sslmode=verify", None).expect_err("refused");
        assert!(format!("{e:#}").contains("verify-full"), "{e:#}");
        let e = Ssl::split_with("postgres://u@db/n?sslcert=/c.pem", None).expect_err("refused");
        assert!(format!("{e:#}").contains("not supported"), "{e:#}");
        let e = pg_config(
            "postgres://u@db/n?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            &limits(),
        )
        .expect_err("refused");
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
    }

    #[test]
    fn require_without_a_ca_encrypts_without_verifying() {
        let c = pg_config("postgres://u@db/n?sslmode=require", &limits()).expect("config");
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    /// Behind a transaction pooler: no startup `options` (PgBouncer refuses them); the same
    /// limits travel as `SET LOCAL` at the start of every transaction.
    #[test]
    fn behind_a_transaction_pooler_the_limits_are_set_per_transaction() {
        let t = Target::new("postgres://u@db/n", &limits(), Pooler::Transaction).expect("target");
        assert_eq!(t.config.get_options(), None);
        assert_eq!(
            limits().set_local(),
            "SET LOCAL statement_timeout = 30000; SET LOCAL lock_timeout = 10000"
        );
    }
}
