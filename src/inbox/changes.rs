//! Reading a user's change stream: "what happened after seq N" (contract §2, §4, §5).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::store::inbox_state::Counters;
use crate::store::messages::Message;
use crate::store::{events, inbox_state, messages, Conn};

/// A client more than this many events behind gets a reset instead of a replay.
pub const MAX_REPLAY: i64 = 1000;
pub const MAX_PAGE: i64 = 100;

/// `GET /api/v1/me/changes`: the events after `since`, or a reset (contract §2).
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(untagged)]
pub enum Changes {
    Events {
        seq: i64,
        unread: i64,
        unseen: i64,
        /// The frames after `since`, oldest first, exactly as the WebSocket sends them
        /// (docs/websocket.md).
        events: Vec<Value>,
    },
    /// Reload the first page: `since` is too old, too far behind, or ahead of the stream.
    Reset {
        /// Always `true`.
        reset: bool,
        seq: i64,
        unread: i64,
        unseen: i64,
    },
}

impl Changes {
    pub fn seq(&self) -> i64 {
        match self {
            Changes::Events { seq, .. } | Changes::Reset { seq, .. } => *seq,
        }
    }
}

/// The events after `since`, or a reset when `since` is ahead of the stream (a restored
/// database), more than `MAX_REPLAY` behind, or older than what retention kept. Reads the counters
/// and the events in one snapshot so they agree.
pub async fn since(conn: &mut Conn, user: &str, since: i64) -> Result<Changes, ApiError> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run::<_, ApiError, _>(async |conn| {
            let c = inbox_state::get(conn, user).await?;
            let reset = Changes::Reset {
                reset: true,
                seq: c.seq,
                unread: c.unread,
                unseen: c.unseen,
            };
            if since < 0 || since > c.seq || c.seq - since > MAX_REPLAY {
                return Ok(reset);
            }
            if since == c.seq {
                return Ok(Changes::Events {
                    seq: c.seq,
                    unread: c.unread,
                    unseen: c.unseen,
                    events: vec![],
                });
            }
            let rows = events::range(conn, user, since, Some(c.seq), MAX_REPLAY).await?;
            // Retention may have pruned the start of the range: then a replay would have a hole.
            if rows.first().map(|(s, _)| *s) != Some(since + 1)
                || rows.len() as i64 != c.seq - since
            {
                return Ok(reset);
            }
            Ok(Changes::Events {
                seq: c.seq,
                unread: c.unread,
                unseen: c.unseen,
                events: rows.into_iter().map(|(_, p)| p).collect(),
            })
        })
        .await
}

pub async fn counts(conn: &mut Conn, user: &str) -> Result<Counters, ApiError> {
    Ok(inbox_state::get(conn, user).await?)
}

/// One page of `GET /api/v1/me/messages`, newest first.
#[derive(Serialize, Debug, ToSchema)]
pub struct Page {
    pub messages: Vec<Message>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
}

pub async fn page(
    conn: &mut Conn,
    user: &str,
    before: Option<i64>,
    limit: i64,
    unread_only: bool,
) -> Result<Page, ApiError> {
    let mut rows = messages::list(conn, user, before, limit + 1, unread_only).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more {
        rows.last().map(|m| m.seq)
    } else {
        None
    };
    Ok(Page {
        messages: rows,
        next_before,
    })
}
