//! Web Push to closed tabs (contract §10): a `message.created` is pushed to each of its
//! recipient's browser subscriptions when no live session acknowledged its seq within
//! `NOTIFYD_PUSH_DELAY`. The way through the files:
//! - `store::create_rows` writes one `push_pending` row per (event, subscription) in the
//!   create's own statement (so a pending push survives any node);
//! - sessions acknowledge with `received` (WebSocket frame, or `POST /api/v1/me/received`):
//!   `receipts` batches them per node into `push_received`;
//! - `worker` (every node) drops what was acknowledged or read, claims what is due (one node
//!   per push, at most once), and sends each through `sender` (`payload` encrypted with the
//!   subscription's keys, `vapid` signing, `endpoint` checking where it may go).
//!
//! Off unless `NOTIFYD_VAPID_PRIVATE_KEY` is set: then no subscription can be made, so the
//! create statement's join with `push_subscription` finds nothing.

pub mod endpoint;
pub mod payload;
pub mod receipts;
pub mod sender;
pub mod vapid;
pub mod worker;

use std::sync::Arc;

use crate::config::Settings;

/// The node's Web Push, when configured.
pub struct Push {
    pub vapid: Arc<vapid::Vapid>,
    pub sender: sender::Sender,
    pub receipts: receipts::Receipts,
    pub allow_insecure: bool,
}

impl Push {
    /// `None` without a VAPID key (push is off).
    pub fn from_settings(s: &Settings) -> anyhow::Result<Option<Arc<Push>>> {
        let (Some(key), Some(subject)) = (&s.vapid_private_key, &s.vapid_subject) else {
            return Ok(None);
        };
        let vapid = Arc::new(vapid::Vapid::new(key, subject).map_err(anyhow::Error::msg)?);
        if s.push_allow_insecure {
            tracing::warn!(
                "NOTIFYD_PUSH_ALLOW_INSECURE is on: push endpoints may be http: and inside this \
                 network. For tests only: any user could make this server send requests anywhere"
            );
        }
        Ok(Some(Arc::new(Push {
            sender: sender::Sender::new(vapid.clone(), s.push_ttl, s.push_allow_insecure)?,
            vapid,
            receipts: receipts::Receipts::default(),
            allow_insecure: s.push_allow_insecure,
        })))
    }
}
