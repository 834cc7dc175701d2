//! Batched catch-up reads for joining sessions. When a node dies, thousands of its clients
//! resume on another node within a second, each with `since`: one read per user would queue
//! thousands of transactions on the pool (and starve the REST callers). Instead every actor
//! hands its join's read (counters, and the events after `since`) to this node's batcher, which
//! reads many users' in ONE statement (`events::resume_many`: one snapshot, so each user's
//! counters and events agree, as in `changes::since`).
//!
//! The batcher takes no timer: a batch is whatever has queued by the time one of its
//! `BATCH_CONCURRENCY` query slots is free (at most `BATCH_USERS`). A lone resume is read at
//! once; under a storm the queue fills while the slots are busy, and batches grow by
//! themselves. The queue is bounded (`QUEUE`): a join that finds it full is refused with 1013
//! and a jittered `retry_after` (protocol::busy_reason) instead of waiting into a timeout.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ApiError;
use crate::inbox::changes::{Changes, MAX_REPLAY};
use crate::state::AppState;
use crate::store::events::{self, ResumeRow};

/// Joins waiting for their read on this node; more are refused with `retry_after`.
pub const QUEUE: usize = 8192;
/// Requests read by one statement. With at most `MAX_REPLAY` events each, this also bounds
/// what one batch holds in memory.
pub const BATCH_USERS: usize = 256;
/// Batch statements running at once: a small share of the pool, so REST callers keep theirs.
pub const BATCH_CONCURRENCY: usize = 2;

pub type Reply = Result<Changes, ApiError>;

struct Request {
    user: String,
    /// `None`: counters only (a fresh session, nothing to replay).
    since: Option<i64>,
    reply: oneshot::Sender<Reply>,
}

/// The queue is full: retry later.
#[derive(Debug)]
pub struct Busy;

/// The node's batcher, started on first use on the main runtime.
pub struct CatchUp {
    tx: OnceLock<mpsc::Sender<Request>>,
    runtime: tokio::runtime::Handle,
}

impl CatchUp {
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        CatchUp {
            tx: OnceLock::new(),
            runtime,
        }
    }

    /// Queues `user`'s read; the receiver gets what `changes::since` (or the counters, for
    /// `since: None`) would have returned.
    pub fn read(
        &self,
        state: &AppState,
        user: &str,
        since: Option<i64>,
    ) -> Result<oneshot::Receiver<Reply>, Busy> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            self.runtime.spawn(run(state.clone(), rx));
            tx
        });
        let (reply, rx) = oneshot::channel();
        let req = Request {
            user: user.to_string(),
            since,
            reply,
        };
        match tx.try_send(req) {
            Ok(()) => Ok(rx),
            Err(_) => Err(Busy),
        }
    }
}

async fn run(state: AppState, mut rx: mpsc::Receiver<Request>) {
    let slots = Arc::new(Semaphore::new(BATCH_CONCURRENCY));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot is what lets a batch grow: requests queue meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_USERS {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // A session that left while queued needs no read.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            read_batch(&state, batch).await;
        });
    }
}

async fn read_batch(state: &AppState, batch: Vec<Request>) {
    let users: Vec<String> = batch.iter().map(|r| r.user.clone()).collect();
    let since: Vec<i64> = batch.iter().map(|r| r.since.unwrap_or(-1)).collect();
    metrics::counter!("notifyd_catch_up_queries_total").increment(1);
    metrics::histogram!("notifyd_catch_up_batch_users").record(batch.len() as f64);
    let rows = state
        .db(async |conn| Ok(events::resume_many(conn, &users, &since, MAX_REPLAY).await?))
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let msg = e.to_string();
            for r in batch {
                let _ = r.reply.send(Err(ApiError::Unavailable(msg.clone())));
            }
            return;
        }
    };
    let mut rows: VecDeque<ResumeRow> = rows.into();
    let mut events_read = 0u64;
    for (i, r) in batch.into_iter().enumerate() {
        let mut counts = None;
        let mut evs: Vec<(i64, Value)> = vec![];
        while rows.front().is_some_and(|row| row.i == i as i64) {
            let Some(row) = rows.pop_front() else { break };
            counts.get_or_insert((row.seq, row.unread, row.unseen));
            if let (Some(s), Some(p)) = (row.event_seq, row.payload) {
                evs.push((s, p));
            }
        }
        events_read += evs.len() as u64;
        let reply = match counts {
            Some((seq, unread, unseen)) => Ok(resolve(r.since, seq, unread, unseen, evs)),
            // Every request has a row; none means the statement did not do what it says.
            None => Err(ApiError::Unavailable("catch-up read lost a request".into())),
        };
        let _ = r.reply.send(reply);
    }
    metrics::counter!("notifyd_catch_up_events_total").increment(events_read);
}

/// What a session resuming after `since` gets, by the rules of `changes::since`: the events,
/// or a reset when `since` is ahead of the stream (a restored database), more than
/// `MAX_REPLAY` behind, or older than what retention kept (a hole at the start or inside).
fn resolve(
    since: Option<i64>,
    seq: i64,
    unread: i64,
    unseen: i64,
    events: Vec<(i64, Value)>,
) -> Changes {
    let replay = |events: Vec<Value>| Changes::Events {
        seq,
        unread,
        unseen,
        events,
    };
    let Some(since) = since else {
        return replay(vec![]);
    };
    let reset = Changes::Reset {
        reset: true,
        seq,
        unread,
        unseen,
    };
    if since < 0 || since > seq || seq - since > MAX_REPLAY {
        return reset;
    }
    if since == seq {
        return replay(vec![]);
    }
    if events.first().map(|(s, _)| *s) != Some(since + 1) || events.len() as i64 != seq - since {
        return reset;
    }
    replay(events.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn evs(r: std::ops::RangeInclusive<i64>) -> Vec<(i64, Value)> {
        r.map(|s| (s, json!({ "seq": s }))).collect()
    }

    #[test]
    fn resolve_follows_the_rules_of_changes_since() {
        let seqs = |c: &Changes| match c {
            Changes::Events { events, .. } => Some(events.len()),
            Changes::Reset { .. } => None,
        };
        assert_eq!(seqs(&resolve(None, 5, 1, 1, vec![])), Some(0));
        assert_eq!(seqs(&resolve(Some(5), 5, 1, 1, vec![])), Some(0));
        assert_eq!(seqs(&resolve(Some(2), 5, 1, 1, evs(3..=5))), Some(3));
        // ahead of the stream, a pruned start, a hole inside, too far behind
        assert_eq!(seqs(&resolve(Some(6), 5, 1, 1, vec![])), None);
        assert_eq!(seqs(&resolve(Some(2), 5, 1, 1, evs(4..=5))), None);
        let mut holed = evs(3..=5);
        holed.remove(1);
        assert_eq!(seqs(&resolve(Some(2), 5, 1, 1, holed)), None);
        assert_eq!(
            seqs(&resolve(Some(0), MAX_REPLAY + 1, 1, 1, evs(1..=MAX_REPLAY))),
            None
        );
    }
}
