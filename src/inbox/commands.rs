//! Changes to one user's inbox besides creates: mark read, read all, seen all, mark unread,
//! archive, unarchive, snooze, a snooze's wake-up (contract §10), delete (by the user, or
//! retracted by the service that created the message), expire (the housekeeper). Each is
//! one transaction that takes the user's counter row first, exactly like a create, and emits one
//! event, or none when nothing changed (marking an already-read message read is a no-op, not a
//! new seq). Every removal of live messages, whoever asks for it, is a `message.deleted` with
//! the counts corrected here, in one place.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde_json::Value;
use uuid::Uuid;

use super::{frames, CommittedEvent, CountsView};
use crate::broker::Envelope;
use crate::error::ApiError;
use crate::store::events::NewEvent;
use crate::store::inbox_state::Counters;
use crate::store::message_states::{self, Change, Changed, Standing};
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
    /// Mark read messages unread (they count as unread and unseen again).
    Unread(Vec<Uuid>),
    /// Out of the inbox and the counts until unarchived.
    Archive(Vec<Uuid>),
    /// Back in the inbox, unread and unseen.
    Unarchive(Vec<Uuid>),
    /// Out of the inbox and the counts until the time (a wake-up brings them back).
    Snooze(Vec<Uuid>, DateTime<Utc>),
    /// The snoozes that are due come back, unread and unseen (`inbox::snooze`).
    Wake,
    /// Soft-delete one message (the user's own delete, or a service's retract).
    Delete(Uuid),
    /// Remove messages past retention for good (the housekeeper).
    Expire(Vec<Uuid>),
}

/// A snooze's `until`: an RFC 3339 timestamp (`T` and `Z` in either case, as RFC 3339 allows),
/// kept at PostgreSQL's precision (microseconds) so the event carries exactly what the row
/// stores. Any such time is taken: one already past wakes the messages at the waker's next
/// tick (`inbox::snooze`), as a time that passed while the request travelled would. (A JSON
/// Schema cannot say "in the future", so refusing it would refuse bodies the document allows.)
pub fn parse_until(raw: Option<&Value>) -> Result<DateTime<Utc>, ApiError> {
    use chrono::SubsecRound;
    let what = "must be an RFC 3339 timestamp, e.g. \"2026-12-24T08:00:00Z\"";
    let s = match raw {
        None | Some(Value::Null) => {
            return Err(ApiError::validation(
                "until",
                format!("is required: it {what}"),
            ))
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::validation("until", what)),
    };
    Ok(DateTime::parse_from_rfc3339(&s.to_ascii_uppercase())
        .map_err(|_| ApiError::validation("until", what))?
        .with_timezone(&Utc)
        .trunc_subsecs(6))
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

/// The `message.deleted` frame for removed rows `(id, uncounted, arrived_seq)`, with `c`
/// advanced to the new seq and counts (None when nothing was removed: no event). A removed
/// message that counted (unread, not archived, not snoozed) leaves `unread`, and `unseen` too
/// if it arrived after the bell was last opened.
fn removed(before: Counters, c: &mut Counters, rows: &[(Uuid, bool, i64)]) -> Option<Value> {
    if rows.is_empty() {
        return None;
    }
    c.seq += 1;
    for &(_, uncounted, arrived) in rows {
        if !uncounted {
            c.unread -= 1;
            if arrived > before.seen_seq {
                c.unseen -= 1;
            }
        }
    }
    let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
    Some(frames::deleted(*c, &ids))
}

/// A row's part in (`unread`, `unseen`) with the bell last opened at `seen_seq`.
fn weight(s: Standing, seen_seq: i64) -> (i64, i64) {
    let unread = s.in_inbox && s.unread;
    (i64::from(unread), i64::from(unread && s.arrived > seen_seq))
}

/// Corrects `c`'s counts by what each changed row took out of them and put into them. From the
/// rows as they were and are, never from what was asked: a message already archived, read or
/// someone else's changes nothing.
fn tally(c: &mut Counters, seen_seq: i64, rows: &[Changed]) {
    for r in rows {
        let (u0, s0) = weight(r.before, seen_seq);
        let (u1, s1) = weight(r.after, seen_seq);
        c.unread += u1 - u0;
        c.unseen += s1 - s0;
    }
}

/// Applies a state `change` (for the event with seq `c.seq + 1`) and, if it changed any row,
/// advances `c` and returns the changed ids, in the order `asked` gave them (when given).
async fn change_states(
    conn: &mut Conn,
    user: &str,
    c: &mut Counters,
    change: Change<'_>,
    asked: &[Uuid],
) -> Result<Option<Vec<Uuid>>, ApiError> {
    let rows = message_states::apply(conn, user, change).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    c.seq += 1;
    tally(c, c.seen_seq, &rows);
    if asked.is_empty() {
        return Ok(Some(rows.iter().map(|r| r.id).collect()));
    }
    let mut pending: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
    Ok(Some(
        asked
            .iter()
            .filter(|id| pending.remove(id))
            .copied()
            .collect(),
    ))
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
        apply(conn, user, before, cmd).await
    })
    .await
}

/// `cmd` for `user`, inside a transaction that holds the user's counter row (`before`, as
/// `inbox_state::lock` or `lock_free` returned it): the rows, the counters, the event and its
/// outbox entry, or nothing when nothing changed.
pub async fn apply(
    conn: &mut Conn,
    user: &str,
    before: Counters,
    cmd: Command,
) -> Result<Outcome, ApiError> {
    {
        let now = crate::inbox::db_now();
        let mut c = before;
        // The seq an event of this command gets, for the rows it brings back into the inbox.
        let next = before.seq + 1;
        let frame = match cmd {
            Command::Read(ids) => {
                let change = Change::Read { ids: &ids, now };
                if ids.is_empty() {
                    None
                } else {
                    change_states(conn, user, &mut c, change, &ids)
                        .await?
                        .map(|ids| frames::read(c, &ids))
                }
            }
            Command::Unread(ids) => {
                let change = Change::Unread {
                    ids: &ids,
                    seq: next,
                };
                change_states(conn, user, &mut c, change, &ids)
                    .await?
                    .map(|ids| frames::changed("message.unread", c, &ids))
            }
            Command::Archive(ids) => {
                let change = Change::Archive { ids: &ids, now };
                change_states(conn, user, &mut c, change, &ids)
                    .await?
                    .map(|ids| frames::changed("message.archived", c, &ids))
            }
            Command::Unarchive(ids) => {
                let change = Change::Unarchive {
                    ids: &ids,
                    seq: next,
                };
                change_states(conn, user, &mut c, change, &ids)
                    .await?
                    .map(|ids| frames::changed("message.unarchived", c, &ids))
            }
            Command::Snooze(ids, until) => {
                let change = Change::Snooze { ids: &ids, until };
                change_states(conn, user, &mut c, change, &ids)
                    .await?
                    .map(|ids| frames::snoozed(c, &ids, until))
            }
            Command::Wake => {
                let change = Change::Wake {
                    seq: next,
                    limit: MAX_READ_IDS as i64,
                };
                change_states(conn, user, &mut c, change, &[])
                    .await?
                    .map(|ids| frames::changed("message.unsnoozed", c, &ids))
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(in_inbox: bool, unread: bool, arrived: i64) -> Standing {
        Standing {
            in_inbox,
            unread,
            arrived,
        }
    }

    /// The counters move by what each row took out of them and put back: a row counts in
    /// `unread` while in the inbox and unread, in `unseen` too when it arrived after the bell
    /// was last opened.
    #[test]
    fn state_changes_correct_the_counts_by_each_rows_standing_before_and_after() {
        let seen_seq = 10;
        let row = |before, after| Changed {
            id: Uuid::now_v7(),
            before,
            after,
        };
        let mut c = Counters {
            seq: 12,
            unread: 3,
            unseen: 1,
            seen_seq,
            epoch: 1,
        };
        tally(
            &mut c,
            seen_seq,
            &[
                // archived: an unread, unseen one leaves both
                row(standing(true, true, 11), standing(false, true, 11)),
                // archived: an unread, seen one leaves `unread` only
                row(standing(true, true, 4), standing(false, true, 4)),
                // archived: a read one leaves nothing
                row(standing(true, false, 5), standing(false, false, 5)),
            ],
        );
        assert_eq!((c.unread, c.unseen), (1, 0));
        tally(
            &mut c,
            seen_seq,
            &[
                // unarchived / unsnoozed / unread: back unread, arriving at the new seq
                row(standing(false, true, 4), standing(true, true, 13)),
                row(standing(true, false, 5), standing(true, true, 13)),
                // read while archived: nothing counted before or after
                row(standing(false, true, 6), standing(false, false, 6)),
            ],
        );
        assert_eq!((c.unread, c.unseen), (3, 2));
    }

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
