//! Which database answers a read (contract §11, `NOTIFYD_DATABASE_REPLICA_URL`): history pages
//! and `/me/changes` may go to a streaming replica, everything else goes to the primary. This
//! module is the only place that chooses; the reads themselves (`inbox::changes`) say what the
//! replica must already hold, and answer `None` when it does not.
//!
//! A read tries the replica only when it is up and its replay lag is below
//! `NOTIFYD_REPLICA_MAX_LAG`, both as the last probe saw them (a background task per node, a
//! few tiny statements per probe, see [`Replica::run_probe`]); its checkout and statements are
//! bounded by [`REPLICA_TIMEOUT`], and whatever goes wrong there (down, hung, a query cancelled
//! by a recovery conflict) only sends the read to the primary. Each routed read is counted in
//! `notifyd_db_replica_reads_total{read, outcome}`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use tokio::sync::watch;

use super::{bounded, DbPool, Limits, Pooler};
use crate::error::ApiError;
use crate::store::replication;

/// Bound on a read's use of the replica: waiting for a pooled connection, then its statements.
/// Past it the read goes to the primary, so a replica that hangs costs a read at most this.
pub const REPLICA_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound on each of the probe's two calls (background: it may wait for a slow connect).
const PROBE_TIMEOUT: Duration = super::CONNECT_TIMEOUT;

/// Which read is routed (the `read` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// `GET /api/v1/me/messages` (every shelf).
    History,
    /// `GET /api/v1/me/changes`.
    Changes,
}

impl Read {
    fn label(self) -> &'static str {
        match self {
            Read::History => "history",
            Read::Changes => "changes",
        }
    }
}

/// Who answered a routed read, and why (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The replica: fresh enough, and it held what the read needs.
    Replica,
    /// The primary: the replica's replay lag was not below `NOTIFYD_REPLICA_MAX_LAG` (or not
    /// known yet).
    PrimaryLag,
    /// The primary: the replica was fresh enough overall but had not replayed this user's
    /// latest change yet (or the seq the client already has).
    PrimaryBehind,
    /// The primary: the replica was down, did not answer within `REPLICA_TIMEOUT`, failed the
    /// read, or is not a replica (promoted).
    PrimaryUnavailable,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Replica => "replica",
            Outcome::PrimaryLag => "primary_lag",
            Outcome::PrimaryBehind => "primary_behind",
            Outcome::PrimaryUnavailable => "primary_unavailable",
        }
    }
}

fn count(read: Read, outcome: Outcome) {
    metrics::counter!(
        "notifyd_db_replica_reads_total",
        "read" => read.label(),
        "outcome" => outcome.label()
    )
    .increment(1);
}

/// What the last probe saw.
#[derive(Default)]
struct Seen {
    /// The last probe reached it, and it is a replica.
    up: bool,
    /// It held everything the primary had written at this instant (its lag is at most the
    /// time since). `None`: not known yet.
    fresh_as_of: Option<Instant>,
    /// The last probe found a server that is not in recovery (warned once per finding).
    not_a_replica: bool,
}

/// The replica of a node: its pool and what the probe knows of it.
pub struct Replica {
    pool: DbPool,
    max_lag: Duration,
    seen: Mutex<Seen>,
}

impl Replica {
    /// The replica's pool (same URL forms, TLS and pooler handling as the primary's, see
    /// `db::Target`); no connection is opened yet, so a replica that is down does not stop a
    /// node from starting. Its statements are bounded server-side too (`statement_timeout` of
    /// `REPLICA_TIMEOUT`): a read abandoned on our side does not go on running there.
    pub fn new(
        url: &str,
        size: usize,
        limits: &Limits,
        pooler: Pooler,
        max_lag: Duration,
    ) -> anyhow::Result<Self> {
        let limits = Limits {
            statement_timeout: Some(REPLICA_TIMEOUT),
            ..limits.clone()
        };
        Ok(Replica {
            pool: super::pool_waiting(url, size, limits, pooler, REPLICA_TIMEOUT)?,
            max_lag,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// How often the probe looks: a quarter of the lag bound (so a fresh replica is not taken
    /// for a lagging one between two probes), within 25 ms .. 1 s.
    fn probe_interval(&self) -> Duration {
        (self.max_lag / 4).clamp(Duration::from_millis(25), Duration::from_secs(1))
    }

    /// Whether a read may try the replica now; if not, why.
    fn verdict(&self) -> Result<(), Outcome> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.up {
            return Err(Outcome::PrimaryUnavailable);
        }
        match seen.fresh_as_of {
            Some(t) if t.elapsed() < self.max_lag => Ok(()),
            _ => Err(Outcome::PrimaryLag),
        }
    }

    /// A read failed or timed out there: no read tries it again until a probe reaches it.
    fn mark_down(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).up = false;
        metrics::gauge!("notifyd_db_replica_up").set(0.0);
    }

    /// `f` on a replica connection, checkout and statements within `limit`.
    async fn call<T, F>(&self, limit: Duration, f: F) -> Option<Result<T, ApiError>>
    where
        F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
    {
        call(&self.pool, limit, f).await
    }

    /// Probes the replica every `probe_interval` until `stop`, keeping [`Seen`] and the gauges
    /// `notifyd_db_replica_up` and `notifyd_db_replica_lag_seconds` current.
    pub async fn run_probe(self: Arc<Self>, primary: DbPool, mut stop: watch::Receiver<bool>) {
        loop {
            self.probe(&primary).await;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(self.probe_interval()) => {}
            }
        }
    }

    /// One probe. The lag is measured two ways, and the smaller bound wins:
    /// - the replica has replayed up to the primary's WAL position read just before: it held
    ///   everything the primary had at that instant. This is what tells a caught-up replica of
    ///   an idle primary, whose last replayed commit grows old although nothing is missing;
    /// - otherwise the age of its last replayed commit: nothing committed before that is
    ///   missing (on a busy primary this is the replay delay; it assumes the two hosts' clocks
    ///   agree, as `pg_stat_replication`'s lag does).
    async fn probe(&self, primary: &DbPool) {
        let asked = Instant::now();
        // Not `db::run`: the probe's calls are no requests (they stay out of the request pool's
        // wait histogram and timeout counter).
        let lsn = match call(primary, PROBE_TIMEOUT, async |c| {
            Ok(replication::primary_lsn(c).await?)
        })
        .await
        {
            Some(Ok(lsn)) => lsn,
            None => {
                tracing::debug!("replica probe: the primary's WAL position timed out");
                return;
            }
            // Without the primary's position nothing new is known; the lag the reads see grows
            // with the time since the last good probe.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "replica probe: the primary's WAL position");
                return;
            }
        };
        let got = self
            .call(PROBE_TIMEOUT, async |c| {
                Ok(replication::replay(c, &lsn).await?)
            })
            .await;
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match got {
            Some(Ok(r)) if r.in_recovery => {
                seen.up = true;
                seen.not_a_replica = false;
                let by_age = r
                    .replay_age
                    .and_then(|a| Duration::try_from_secs_f64(a.max(0.0)).ok())
                    .and_then(|a| now.checked_sub(a));
                let fresh = if r.caught_up {
                    by_age.max(Some(asked))
                } else {
                    by_age
                };
                seen.fresh_as_of = seen.fresh_as_of.max(fresh);
            }
            Some(Ok(_)) => {
                seen.fresh_as_of = None;
                if !seen.not_a_replica {
                    seen.not_a_replica = true;
                    tracing::warn!(
                        "NOTIFYD_DATABASE_REPLICA_URL names a server that is not in recovery \
                         (a primary, or a promoted replica): no read goes there"
                    );
                }
                seen.up = false;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "replica probe failed");
                seen.up = false;
            }
            None => {
                tracing::debug!("replica probe timed out after {PROBE_TIMEOUT:?}");
                seen.up = false;
            }
        }
        metrics::gauge!("notifyd_db_replica_up").set(if seen.up { 1.0 } else { 0.0 });
        let lag = match seen.fresh_as_of {
            Some(t) if seen.up => now.saturating_duration_since(t).as_secs_f64(),
            _ => f64::INFINITY,
        };
        metrics::gauge!("notifyd_db_replica_lag_seconds").set(lag);
    }
}

/// `f` on a connection of `pool`, checkout and statements within `limit`. `None`: no
/// connection in time, or `f` timed out (its connection is then dropped, see `db::bounded`).
async fn call<T, F>(pool: &DbPool, limit: Duration, f: F) -> Option<Result<T, ApiError>>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
{
    let started = Instant::now();
    let conn = match tokio::time::timeout(limit, pool.get()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Some(Err(e.into())),
        Err(_) => return None,
    };
    bounded(pool, conn, limit.saturating_sub(started.elapsed()), f).await
}

/// Reads routed between the primary and the replica (when there is one).
#[derive(Clone, Copy)]
pub struct Reads<'a> {
    pub primary: &'a DbPool,
    pub replica: Option<&'a Replica>,
    /// `NOTIFYD_DB_REQUEST_TIMEOUT`, for the primary's part.
    pub limit: Duration,
}

impl Reads<'_> {
    /// A read whose replica part needs `need`, known already (e.g. the client's `since`).
    /// `on_replica` answers `None` when the replica does not hold `need` yet; `on_primary`
    /// answers otherwise.
    pub async fn read<T, K, R, P>(
        &self,
        read: Read,
        need: K,
        on_replica: R,
        on_primary: P,
    ) -> Result<T, ApiError>
    where
        R: AsyncFnOnce(&mut AsyncPgConnection, K) -> Result<Option<T>, ApiError>,
        P: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
    {
        let Some(replica) = self.replica else {
            return super::run(self.primary, self.limit, on_primary).await;
        };
        let outcome = match replica.verdict() {
            Err(o) => o,
            Ok(()) => match replica
                .call(REPLICA_TIMEOUT, async |c| on_replica(c, need).await)
                .await
            {
                Some(Ok(Some(v))) => {
                    count(read, Outcome::Replica);
                    return Ok(v);
                }
                Some(Ok(None)) => Outcome::PrimaryBehind,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "replica read failed: the primary answers");
                    replica.mark_down();
                    Outcome::PrimaryUnavailable
                }
                None => {
                    tracing::debug!("replica read timed out: the primary answers");
                    replica.mark_down();
                    Outcome::PrimaryUnavailable
                }
            },
        };
        count(read, outcome);
        super::run(self.primary, self.limit, on_primary).await
    }

    /// A read whose replica part needs what `want` reads on the primary first (e.g. the
    /// user's current seq), read only when the replica is to be tried at all.
    pub async fn read_after<T, K, W, R, P>(
        &self,
        read: Read,
        want: W,
        on_replica: R,
        on_primary: P,
    ) -> Result<T, ApiError>
    where
        W: AsyncFnOnce(&mut AsyncPgConnection) -> Result<K, ApiError>,
        R: AsyncFnOnce(&mut AsyncPgConnection, K) -> Result<Option<T>, ApiError>,
        P: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, ApiError>,
    {
        match self.replica.map(Replica::verdict) {
            Some(Ok(())) => {
                let need = super::run(self.primary, self.limit, want).await?;
                self.read(read, need, on_replica, on_primary).await
            }
            Some(Err(o)) => {
                count(read, o);
                super::run(self.primary, self.limit, on_primary).await
            }
            None => super::run(self.primary, self.limit, on_primary).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(max_lag: Duration) -> Replica {
        Replica::new(
            "postgres://u@127.0.0.1:1/n",
            1,
            &Limits::default(),
            Pooler::None,
            max_lag,
        )
        .expect("replica")
    }

    #[tokio::test]
    async fn a_replica_is_read_only_while_up_and_fresher_than_the_bound() {
        let r = replica(Duration::from_secs(1));
        assert_eq!(r.verdict(), Err(Outcome::PrimaryUnavailable));
        r.seen.lock().expect("lock").up = true;
        assert_eq!(r.verdict(), Err(Outcome::PrimaryLag), "lag not known yet");
        r.seen.lock().expect("lock").fresh_as_of = Some(Instant::now());
        assert_eq!(r.verdict(), Ok(()));
        let long_ago = Instant::now().checked_sub(Duration::from_secs(2));
        r.seen.lock().expect("lock").fresh_as_of = long_ago;
        assert_eq!(r.verdict(), Err(Outcome::PrimaryLag));
        r.seen.lock().expect("lock").fresh_as_of = Some(Instant::now());
        r.mark_down();
        assert_eq!(r.verdict(), Err(Outcome::PrimaryUnavailable));
    }

    #[tokio::test]
    async fn the_probe_runs_four_times_per_lag_bound_within_limits() {
        assert_eq!(
            replica(Duration::from_secs(1)).probe_interval(),
            Duration::from_millis(250)
        );
        assert_eq!(
            replica(Duration::from_millis(10)).probe_interval(),
            Duration::from_millis(25)
        );
        assert_eq!(
            replica(Duration::from_secs(60)).probe_interval(),
            Duration::from_secs(1)
        );
    }
}
