//! Reading a user's change stream: "what happened after seq N" (contract §2, §4, §5).

use serde::Serialize;
use utoipa::ToSchema;

use crate::db::replica::{Read, Reads};
use crate::error::ApiError;
use crate::store::events::StoredFrame;
use crate::store::inbox_state::Counters;
use crate::store::messages::{Listed, Shelf};
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
        /// The inbox epoch: pass it back as `epoch` with `since` (docs/websocket.md).
        epoch: i64,
        /// The frames after `since`, oldest first, exactly as the WebSocket sends them
        /// (docs/websocket.md).
        #[schema(value_type = Vec<Value>)]
        events: Vec<StoredFrame>,
    },
    /// Reload the first page: `since` is too old, too far behind, ahead of the stream, or of
    /// another inbox (`epoch`: the user was erased meanwhile).
    Reset {
        /// Always `true`.
        reset: bool,
        seq: i64,
        unread: i64,
        unseen: i64,
        epoch: i64,
    },
}

impl Changes {
    pub fn seq(&self) -> i64 {
        match self {
            Changes::Events { seq, .. } | Changes::Reset { seq, .. } => *seq,
        }
    }

    pub fn epoch(&self) -> i64 {
        match self {
            Changes::Events { epoch, .. } | Changes::Reset { epoch, .. } => *epoch,
        }
    }

    pub fn reset(c: Counters) -> Changes {
        Changes::Reset {
            reset: true,
            seq: c.seq,
            unread: c.unread,
            unseen: c.unseen,
            epoch: c.epoch,
        }
    }

    fn events(c: Counters, events: Vec<StoredFrame>) -> Changes {
        Changes::Events {
            seq: c.seq,
            unread: c.unread,
            unseen: c.unseen,
            epoch: c.epoch,
            events,
        }
    }
}

/// Whether a resume after `since`, from inbox `epoch` if the client said, is a reset whatever
/// the event log holds: `since` ahead of the stream (a restored database), more than
/// `MAX_REPLAY` behind, or of another inbox. A client that says epoch 0 (it knew no inbox, or
/// was reset by an erasure) yet has applied events cannot say whose: a reset too. From
/// `since` 0 every inbox's events are the right ones, whatever the epoch.
fn must_reset(since: i64, epoch: Option<i64>, c: &Counters) -> bool {
    since < 0
        || since > c.seq
        || c.seq - since > MAX_REPLAY
        || (since > 0 && epoch.is_some_and(|e| e != c.epoch))
}

/// THE rule of a resume, for `GET /me/changes` and a WebSocket's `since` alike: given the
/// counters and the events the log holds after `since` (oldest first, read in one snapshot with
/// the counters), the events to replay or a reset. A hole at the start or inside (retention
/// pruned it) is a reset too. `since: None` asks for the counters only.
pub fn resolve(
    since: Option<i64>,
    epoch: Option<i64>,
    c: Counters,
    events: Vec<(i64, StoredFrame)>,
) -> Changes {
    let Some(since) = since else {
        return Changes::events(c, vec![]);
    };
    if must_reset(since, epoch, &c) {
        return Changes::reset(c);
    }
    if since == c.seq {
        return Changes::events(c, vec![]);
    }
    if events.first().map(|(s, _)| *s) != Some(since + 1) || events.len() as i64 != c.seq - since {
        return Changes::reset(c);
    }
    Changes::events(c, events.into_iter().map(|(_, p)| p).collect())
}

/// The events after `since`, or a reset (`resolve`). Reads the counters and the events in one
/// snapshot so they agree.
pub async fn since(
    conn: &mut Conn,
    user: &str,
    since: i64,
    epoch: Option<i64>,
) -> Result<Changes, ApiError> {
    crate::db::snapshot(conn, async |conn| {
        let c = inbox_state::get(conn, user).await?;
        if must_reset(since, epoch, &c) || since == c.seq {
            return Ok(resolve(Some(since), epoch, c, vec![]));
        }
        let rows = events::range(conn, user, since, Some(c.seq), MAX_REPLAY).await?;
        Ok(resolve(Some(since), epoch, c, rows))
    })
    .await
}

/// `GET /api/v1/me/changes` from the replica when it may answer (contract §11): it must hold at
/// least `since` (behind it, it would tell the client that `since` is ahead of the stream: a
/// reset), of the inbox the client names; otherwise, and when it lags, the primary answers.
/// No round trip to the primary first: the answer is a correct state of the user's stream,
/// never older than what the client has, and at most `NOTIFYD_REPLICA_MAX_LAG` old.
pub async fn since_routed(
    reads: &Reads<'_>,
    user: &str,
    after: i64,
    epoch: Option<i64>,
) -> Result<Changes, ApiError> {
    reads
        .read(
            Read::Changes,
            (after, epoch),
            async |conn, (after, epoch)| {
                let answer = since(conn, user, after, epoch).await?;
                Ok(holds_since(&answer, after, epoch).then_some(answer))
            },
            async |conn| since(conn, user, after, epoch).await,
        )
        .await
}

/// Whether a replica's `answer` to a resume after `since` from `epoch` is one the primary could
/// have given a moment earlier: its stream has reached `since`, in the client's inbox (from
/// `since` 0 any inbox's events are right).
fn holds_since(answer: &Changes, since: i64, epoch: Option<i64>) -> bool {
    answer.seq() >= since && (since == 0 || epoch.is_none_or(|e| e == answer.epoch()))
}

/// A page of `GET /api/v1/me/messages` from the replica when it already holds the user's
/// current seq, in the current inbox (epoch), as the primary has it (contract §11): so what a
/// client just saw arrive, or just did, is on it. Every change of an inbox takes a new seq,
/// so the same seq is the same inbox state. Otherwise, and when it lags, the primary answers.
pub async fn page_routed(
    reads: &Reads<'_>,
    user: &str,
    before: Option<i64>,
    limit: i64,
    unread_only: bool,
    shelf: Shelf,
) -> Result<Page, ApiError> {
    reads
        .read_after(
            Read::History,
            async |conn| Ok(inbox_state::get(conn, user).await?),
            async |conn, current: Counters| {
                // The replica only moves forward: a page read after this check shows at least
                // that state.
                let there = inbox_state::get(conn, user).await?;
                if there.epoch != current.epoch || there.seq < current.seq {
                    return Ok(None);
                }
                Ok(Some(
                    page(conn, user, before, limit, unread_only, shelf).await?,
                ))
            },
            async |conn| page(conn, user, before, limit, unread_only, shelf).await,
        )
        .await
}

pub async fn counts(conn: &mut Conn, user: &str) -> Result<Counters, ApiError> {
    Ok(inbox_state::get(conn, user).await?)
}

/// One page of `GET /api/v1/me/messages`, newest first.
#[derive(Serialize, Debug, ToSchema)]
pub struct Page {
    pub messages: Vec<Listed>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
}

pub async fn page(
    conn: &mut Conn,
    user: &str,
    before: Option<i64>,
    limit: i64,
    unread_only: bool,
    shelf: Shelf,
) -> Result<Page, ApiError> {
    let mut rows = messages::list(conn, user, before, limit + 1, unread_only, shelf).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more {
        rows.last().map(|m| m.message.seq)
    } else {
        None
    };
    Ok(Page {
        messages: rows,
        next_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn evs(r: std::ops::RangeInclusive<i64>) -> Vec<(i64, StoredFrame)> {
        r.map(|s| (s, StoredFrame::from_json(&json!({ "seq": s }))))
            .collect()
    }

    fn at(seq: i64) -> Counters {
        Counters {
            seq,
            unread: 1,
            unseen: 1,
            seen_seq: 0,
            epoch: 7,
        }
    }

    fn replayed(c: &Changes) -> Option<usize> {
        match c {
            Changes::Events { events, .. } => Some(events.len()),
            Changes::Reset { .. } => None,
        }
    }

    #[test]
    fn a_resume_replays_exactly_the_missed_events_or_resets() {
        assert_eq!(replayed(&resolve(None, None, at(5), vec![])), Some(0));
        assert_eq!(replayed(&resolve(Some(5), None, at(5), vec![])), Some(0));
        assert_eq!(
            replayed(&resolve(Some(2), None, at(5), evs(3..=5))),
            Some(3)
        );
        // ahead of the stream, a pruned start, a hole inside, too far behind
        assert_eq!(replayed(&resolve(Some(6), None, at(5), vec![])), None);
        assert_eq!(replayed(&resolve(Some(2), None, at(5), evs(4..=5))), None);
        let mut holed = evs(3..=5);
        holed.remove(1);
        assert_eq!(replayed(&resolve(Some(2), None, at(5), holed)), None);
        assert_eq!(
            replayed(&resolve(
                Some(0),
                None,
                at(MAX_REPLAY + 1),
                evs(1..=MAX_REPLAY)
            )),
            None
        );
    }

    /// Contract §11: a replica answers a resume only when its stream has reached `since`, in
    /// the client's inbox; behind it, its answer would be a reset the primary would not give.
    #[test]
    fn a_replica_answer_counts_only_when_its_stream_reached_since_in_the_clients_inbox() {
        let answer = |seq: i64| resolve(Some(0), None, at(seq), evs(1..=seq));
        assert!(holds_since(&answer(5), 5, Some(7)));
        assert!(holds_since(&answer(5), 3, None));
        assert!(!holds_since(&answer(4), 5, Some(7)), "behind since");
        assert!(!holds_since(&answer(5), 5, Some(6)), "another inbox");
        assert!(holds_since(&answer(5), 0, Some(6)), "from 0 any inbox");
    }

    /// The hole the epoch closes: a client offline while its user was erased comes back with a
    /// `since` the new inbox has already passed; its events are not the ones it missed.
    #[test]
    fn a_since_of_another_inbox_is_a_reset_even_when_the_log_could_replay_it() {
        assert_eq!(
            replayed(&resolve(Some(2), Some(7), at(5), evs(3..=5))),
            Some(3)
        );
        assert_eq!(
            replayed(&resolve(Some(2), Some(6), at(5), evs(3..=5))),
            None
        );
        assert_eq!(replayed(&resolve(Some(5), Some(6), at(5), vec![])), None);
        // 0 with events applied: whose they were cannot be told (it knew no inbox, or an
        // erasure reset it and it took events since); from 0, any inbox's events are right.
        assert_eq!(
            replayed(&resolve(Some(2), Some(0), at(5), evs(3..=5))),
            None
        );
        assert_eq!(
            replayed(&resolve(Some(0), Some(0), at(5), evs(1..=5))),
            Some(5)
        );
        assert_eq!(
            replayed(&resolve(Some(0), Some(6), at(5), evs(1..=5))),
            Some(5)
        );
    }
}
