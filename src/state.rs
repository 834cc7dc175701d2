//! Everything a request handler, actor or background task needs, passed explicitly.

use std::sync::Arc;

use crate::auth::jwt::JwtKeys;
use crate::auth::ticket::TicketKeys;
use crate::broker::Hub;
use crate::config::Settings;
use crate::db::DbPool;
use crate::gateway::Gateway;
use crate::outbox::Waker;
use crate::presence::Presence;
use crate::ratelimit::RateLimits;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: DbPool,
    /// `NOTIFYD_DATABASE_REPLICA_URL`'s replica, when set: see `reads`.
    pub replica: Option<Arc<crate::db::replica::Replica>>,
    pub redis: Option<crate::broker::Redis>,
    pub hub: Arc<Hub>,
    pub waker: Waker,
    /// Wakes this node's announcement worker after a broadcast was accepted.
    pub announcements: crate::announce::Wake,
    pub gateway: Arc<Gateway>,
    /// Topic subscriptions on this node and their routing (contract §8).
    pub topics: Arc<crate::topics::Router>,
    pub presence: Arc<Presence>,
    pub jwt: JwtKeys,
    /// SSE tickets (`auth::ticket`), keyed from the same secret.
    pub tickets: TicketKeys,
    /// Per-user limits on what clients do on their own (publish, direct messages).
    pub limits: Arc<RateLimits>,
    /// Web Push, when configured (`NOTIFYD_VAPID_PRIVATE_KEY`).
    pub push: Option<Arc<crate::push::Push>>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl AppState {
    /// One request's database work on a pooled connection, bounded by
    /// `NOTIFYD_DB_REQUEST_TIMEOUT` (see `db::run`).
    pub async fn db<T, F>(&self, f: F) -> Result<T, crate::error::ApiError>
    where
        F: AsyncFnOnce(&mut diesel_async::AsyncPgConnection) -> Result<T, crate::error::ApiError>,
    {
        crate::db::run(&self.pool, self.settings.db_request_timeout, f).await
    }

    /// The reads a replica may answer (history pages, `/me/changes`) go through this; every
    /// other database call through `db` (contract §11).
    pub fn reads(&self) -> crate::db::replica::Reads<'_> {
        crate::db::replica::Reads {
            primary: &self.pool,
            replica: self.replica.as_deref(),
            limit: self.settings.db_request_timeout,
        }
    }
}
