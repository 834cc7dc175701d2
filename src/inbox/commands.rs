//! A user's own changes: mark read, read all, seen all, delete. Each is one transaction that takes
//! the user's counter row first, exactly like a create, and emits one event, or none when nothing
//! changed (marking an already-read message read is a no-op, not a new seq).

use diesel_async::AsyncConnection;
use serde_json::Value;
use uuid::Uuid;

use super::{frames, CommittedEvent, CountsView};
use crate::error::ApiError;
use crate::store::events::NewEvent;
use crate::store::inbox_state::Counters;
use crate::store::{events, inbox_state, messages, outbox, Conn};

pub const MAX_READ_IDS: usize = 1000;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub counts: CountsView,
    /// The committed event, if the command changed anything.
    pub event: Option<CommittedEvent>,
}

pub enum Command {
    Read(Vec<Uuid>),
    ReadAll,
    SeenAll,
    Delete(Uuid),
}

/// Ids that are not UUIDs cannot name a message of this user: they are dropped like foreign ids.
pub fn parse_ids(raw: &[Value]) -> Result<Vec<Uuid>, ApiError> {
    if raw.len() > MAX_READ_IDS {
        return Err(ApiError::validation(
            "ids",
            format!("at most {MAX_READ_IDS} ids per call"),
        ));
    }
    Ok(raw
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect())
}

pub async fn run(conn: &mut Conn, user: &str, cmd: Command) -> Result<Outcome, ApiError> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        let Some(before) = inbox_state::lock(conn, user).await? else {
            return Ok(Outcome {
                counts: Counters::default().into(),
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
            Command::Delete(id) => match messages::soft_delete(conn, user, id, now).await? {
                None => None,
                Some((was_read, seq)) => {
                    c.seq += 1;
                    if !was_read {
                        c.unread -= 1;
                        if seq > before.seen_seq {
                            c.unseen -= 1;
                        }
                    }
                    Some(frames::deleted(c, &[id]))
                }
            },
        };
        let Some(frame) = frame else {
            return Ok(Outcome {
                counts: before.into(),
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
        outbox::enqueue_user_events(conn, &[(user, c.seq, &frame)]).await?;
        Ok(Outcome {
            counts: c.into(),
            event: Some(CommittedEvent {
                user: user.to_string(),
                seq: c.seq,
                frame,
            }),
        })
    })
    .await
}
