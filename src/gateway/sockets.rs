//! Open WebSockets per user on this node (contract §7: `NOTIFYD_MAX_SOCKETS_PER_USER`): a
//! permit per socket, taken before the upgrade and given back when the session's task ends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::ApiError;

#[derive(Default)]
pub struct SocketCounts {
    sockets: Mutex<HashMap<String, usize>>,
}

/// One open WebSocket of a user: counted until dropped.
pub struct SocketPermit {
    counts: Arc<SocketCounts>,
    user: String,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut sockets = self.counts.sockets();
        if let Some(n) = sockets.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                sockets.remove(&self.user);
            }
        }
    }
}

impl SocketPermit {
    /// What the socket is counted under: its user id, or for an anonymous socket its client
    /// address key (`topics::public::client_key`), which its topics are capped by too.
    pub fn key(&self) -> &str {
        &self.user
    }
}

impl SocketCounts {
    fn sockets(&self) -> parking_lot::MutexGuard<'_, HashMap<String, usize>> {
        self.sockets.lock()
    }

    /// Counts one more WebSocket for `user`, or refuses it (429) at `max` on this node.
    pub fn open(self: &Arc<Self>, user: &str, max: usize) -> Result<SocketPermit, ApiError> {
        self.open_as(user, max, || {
            format!("at most {max} connections (WebSocket and SSE) per user on one node")
        })
    }

    /// Counts one more anonymous WebSocket from `ip` (`NOTIFYD_MAX_ANON_SOCKETS_PER_IP`).
    pub fn open_anonymous(
        self: &Arc<Self>,
        ip: &str,
        max: usize,
    ) -> Result<SocketPermit, ApiError> {
        self.open_as(ip, max, || {
            format!("at most {max} anonymous WebSockets per client address on one node")
        })
    }

    fn open_as(
        self: &Arc<Self>,
        user: &str,
        max: usize,
        message: impl FnOnce() -> String,
    ) -> Result<SocketPermit, ApiError> {
        let mut sockets = self.sockets();
        let n = sockets.entry(user.to_string()).or_insert(0);
        if *n >= max {
            metrics::counter!("notifyd_ws_refused_total", "reason" => "too_many_connections")
                .increment(1);
            return Err(ApiError::TooMany {
                code: "too_many_connections",
                message: message(),
            });
        }
        *n += 1;
        Ok(SocketPermit {
            counts: self.clone(),
            user: user.to_string(),
        })
    }
}
