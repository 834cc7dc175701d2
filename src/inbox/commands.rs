//! Changes to one user's inbox besides creates: mark read, read all, seen all, delete (by the
//! user, or retracted by the service that created the message), expire (the housekeeper). Each is
//! one transaction that takes the user's counter row first, exactly like a create, and emits one
//! event, or none when nothing changed (marking an already-read message read is a no-op, not a
//! new seq). Every removal of live messages, whoever asks for it, is a `message.deleted` with
//! the counts corrected here, in one place.

use diesel_async::AsyncConnection;
use serde_json::Value;
use uuid::Uuid;

use super::{frames, CommittedEvent, CountsView};
use crate::broker::Envelope;
use crate::error::ApiError;
use crate::store::events::NewEvent;
use crate::store::inbox_state::Counters;
use crate::store::{events, inbox_state, messages, outbox, Conn};

pub const MAX_READ_IDS: usize = 1000;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub counts: CountsView,
    /// How many messages an id-taking command (read, delete, expire) changed.
    pub changed: usize,
    /// The committed event, if the command changed anything.
    pub event: Option<CommittedEvent>,
}

pub enum Command {
    Read(Vec<Uuid>),
    ReadAll,
    SeenAll,
    /// Soft-delete one message (the user's own delete, or a service's retract).
    Delete(Uuid),
    /// Remove messages past retention for good (the housekeeper).
    Expire(Vec<Uuid>),
}

/// Ids that are not UUIDs cannot name a message of this user: they are dropped like foreign ids.
pub fn parse_ids(raw: &[Value]) -> Result<Vec<Uuid>, ApiError> {
    if raw.len() > MAX_READ_IDS {
        return Err(ApiError::validation(
            "ids",
            format!("at most {MAX_READ_IDS} ids per call"),
        ));
    }
    // A string that names no message of this user is ignored (never revealed); anything but a
    // string is a client's mistake, said so rather than silently doing nothing.
    let mut ids = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        let s = v.as_str().ok_or_else(|| {
            ApiError::validation(format!("ids[{i}]"), "must be a string (a message id)")
        })?;
        ids.extend(Uuid::parse_str(s).ok());
    }
    Ok(ids)
}

/// The `message.deleted` frame for removed rows `(id, was_read, seq)`, with `c` advanced to the
/// new seq and counts (None when nothing was removed: no event). A removed unread message leaves
/// `unread`, and `unseen` too if it came after the bell was last opened.
fn removed(before: Counters, c: &mut Counters, rows: &[(Uuid, bool, i64)]) -> Option<Value> {
    if rows.is_empty() {
        return None;
    }
    c.seq += 1;
    for &(_, was_read, seq) in rows {
        if !was_read {
            c.unread -= 1;
            if seq > before.seen_seq {
                c.unseen -= 1;
            }
        }
    }
    let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
    Some(frames::deleted(*c, &ids))
}

/// `DELETE /api/v1/messages/{id}`: the service that created message `id` takes it back, through
/// the same delete as the recipient's own. `None`: no live message `id` of this service (never
/// one, another service's, or already deleted, retracted or expired), so nothing is revealed.
pub async fn retract(
    conn: &mut Conn,
    service: &str,
    id: Uuid,
) -> Result<Option<Outcome>, ApiError> {
    let Some(user) = messages::recipient_for_service(conn, id, service).await? else {
        return Ok(None);
    };
    // Already deleted (by its user or an earlier retract): still this service's message, so the
    // retract is done; `run` changes nothing and emits no event. A retried DELETE answers 204,
    // like the first, for as long as the soft-deleted row is kept (24 h).
    Ok(Some(run(conn, &user, Command::Delete(id)).await?))
}

/// After a command's commit, from a request handler: wake the relay (other nodes) and hand the
/// event to this node's sessions at once.
pub fn committed(state: &crate::state::AppState, out: &Outcome) {
    if let Some(ev) = &out.event {
        state.waker.wake();
        super::local::LocalDelivery::of(state).deliver(&ev.user, ev.envelope.clone());
    }
}

pub async fn run(conn: &mut Conn, user: &str, cmd: Command) -> Result<Outcome, ApiError> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        let Some(before) = inbox_state::lock(conn, user).await? else {
            return Ok(Outcome {
                counts: Counters::default().into(),
                changed: 0,
                event: None,
            });
        };
        let now = crate::inbox::db_now();
        let mut c = before;
        let frame = match cmd {
            Command::Read(ids) => {
                if ids.is_empty() {
                    None
                } else {
                    let changed = messages::mark_read(conn, user, &ids, now).await?;
                    if changed.is_empty() {
                        None
                    } else {
                        let unseen = changed
                            .iter()
                            .filter(|(_, seq)| *seq > before.seen_seq)
                            .count() as i64;
                        c.seq += 1;
                        c.unread -= changed.len() as i64;
                        c.unseen -= unseen;
                        // Report the ids in the order the caller gave them.
                        let mut pending: std::collections::HashSet<Uuid> =
                            changed.iter().map(|(id, _)| *id).collect();
                        let ids: Vec<Uuid> = ids
                            .iter()
                            .filter(|id| pending.remove(id))
                            .copied()
                            .collect();
                        Some(frames::read(c, &ids))
                    }
                }
            }
            Command::ReadAll => {
                if before.unread == 0 {
                    None
                } else {
                    messages::mark_all_read(conn, user, now).await?;
                    c.seq += 1;
                    c.unread = 0;
                    c.unseen = 0;
                    c.seen_seq = c.seq;
                    Some(frames::read_all(c))
                }
            }
            Command::SeenAll => {
                if before.unseen == 0 {
                    None
                } else {
                    c.seq += 1;
                    c.unseen = 0;
                    c.seen_seq = c.seq;
                    Some(frames::seen_all(c))
                }
            }
            Command::Delete(id) => {
                let row = messages::soft_delete(conn, user, id, now).await?;
                removed(before, &mut c, row.as_slice())
            }
            Command::Expire(ids) => {
                let mut rows = messages::remove(conn, user, &ids).await?;
                rows.sort_by_key(|(_, _, seq)| *seq);
                removed(before, &mut c, &rows)
            }
        };
        let Some(frame) = frame else {
            return Ok(Outcome {
                counts: before.into(),
                changed: 0,
                event: None,
            });
        };
        inbox_state::save(conn, user, c).await?;
        events::append(
            conn,
            &[NewEvent {
                user_id: user.to_string(),
                seq: c.seq,
                payload: frame.clone(),
            }],
        )
        .await?;
        let changed = frame["ids"].as_array().map_or(0, Vec::len);
        let envelope = Envelope::user(c.seq, c.epoch, now.timestamp_micros(), frame.to_string());
        outbox::enqueue_user_events(conn, &[(user, &envelope)]).await?;
        Ok(Outcome {
            counts: c.into(),
            changed,
            event: Some(CommittedEvent {
                user: user.to_string(),
                envelope,
            }),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event for any number of removed rows; a read row leaves the counts alone, an unread
    /// one leaves `unread`, and `unseen` only if it came after the bell was last opened.
    #[test]
    fn removed_rows_correct_the_counts_once() {
        let before = Counters {
            seq: 10,
            unread: 5,
            unseen: 2,
            seen_seq: 8,
            epoch: 1,
        };
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut after = before;
        let frame = removed(
            before,
            &mut after,
            &[(a, true, 3), (b, false, 4), (c, false, 9)],
        )
        .expect("an event");
        assert_eq!(
            after,
            Counters {
                seq: 11,
                unread: 3,
                unseen: 1,
                seen_seq: 8,
                epoch: 1
            }
        );
        assert_eq!(frame["type"], "message.deleted");
        assert_eq!(frame["ids"], serde_json::json!([a, b, c]));
        let mut unchanged = before;
        assert_eq!(removed(before, &mut unchanged, &[]), None);
        assert_eq!(unchanged, before);
    }
}
