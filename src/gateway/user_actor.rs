//! One actor per connected user per node: it owns the user's sessions, receives the user's events
//! from the broker, and delivers them to every session in seq order with no hole and no duplicate.
//! It deals with the inbox only: topics go from the hub to the sessions through `topics::router`.
//!
//! `last_seq` is the highest seq the actor has delivered, in the inbox `epoch` (see
//! `broker::envelope`). An event at `last_seq + 1` goes straight out; one at or below `last_seq`
//! is a duplicate and is dropped; one further ahead means an event was lost on the way, and the
//! actor reads the missing ones from the event log first. Every event the broker carries was
//! committed before it was published, and a user's events commit in seq order, so the log always
//! holds the missing ones. An event of another epoch belongs to another inbox: an older one's
//! is dropped; a newer one's means the inbox was replaced (erased, or a restored database marked
//! with `notifyd reset-epochs`), and every session is reset to the inbox as it is now.
//!
//! Nothing here parses a frame: the envelope's header says what the actor needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::catch_up::Busy;
use super::mailbox::{ActorMsg, Join, MailboxReceiver, MailboxSender, Seen, SessionCommand};
use super::vec_map::VecMap;
use crate::broker::{Envelope, Head};
use crate::error::ApiError;
use crate::inbox::changes::{self, Changes};
use crate::inbox::commands::{self, Command};
use crate::inbox::CountsView;
use crate::state::AppState;
use crate::store::events;
use crate::store::inbox_state::Counters;
use crate::wire::outbound::{Offer, Push, SessionTx};
use crate::wire::protocol::{self, close, ClientFrame};

struct Session {
    tx: SessionTx,
    /// Highest seq this session has been sent (its `hello`/`sync` seq, then each event).
    cursor: i64,
    /// Since when its queue refused an event (`Offer::Full`): live events skip it, and
    /// `catch_up` refills it from the event log as it drains, until `cursor` reaches `last_seq`.
    behind_since: Option<Instant>,
}

struct Actor {
    state: Arc<AppState>,
    user: String,
    id: u64,
    last_seq: i64,
    /// The inbox `last_seq` counts in; 0 while the user has none (or it is not known yet).
    epoch: i64,
    /// The highest epoch of an inbox these sessions were reset away from (erased, replaced):
    /// an event or a database read of that epoch or below came from before the reset and is
    /// dropped, whatever `epoch` is now (an erasure leaves it 0).
    gone: i64,
    /// The user's turn at the database for WebSocket commands (one at a time).
    db_turn: Option<Arc<tokio::sync::Semaphore>>,
    sessions: VecMap<u64, Session>,
}

/// A session that has been behind (its queue at the byte budget) this long without catching up
/// falls too far behind: it is closed with 4008 and resumes with `since`.
pub const BEHIND_LIMIT: Duration = Duration::from_secs(10);
/// How often the actor looks at sessions that are behind.
const CATCH_UP_EVERY: Duration = Duration::from_millis(50);
/// Events read from the log per catch-up query for one session.
const CATCH_UP_PAGE: i64 = 200;

/// How long a join waits for its batched read before the session is refused as busy.
const JOIN_READ_WAIT: Duration = Duration::from_secs(15);

/// What an actor starts with. (Handed over boxed: an `async fn` keeps its arguments beside
/// the locals they are moved into, and this task is the one per connected user.)
pub struct Start {
    pub state: Arc<AppState>,
    pub user: String,
    pub id: u64,
    pub me: MailboxSender,
    pub rx: MailboxReceiver,
}

pub async fn run(start: Box<Start>) {
    let Start {
        state,
        user,
        id,
        me,
        rx,
    } = *start;
    // Subscribe first, then read: whatever commits after the read arrives through the broker,
    // into this actor's own mailbox.
    let channel = state.settings.user_channel(&user);
    state.hub.listen(&channel, id, me.hub_listener()).await;
    drop(channel); // not carried for the actor's life
    metrics::gauge!("notifyd_users_online").increment(1.0);
    // last_seq is unknown (-1) until the first join reads the inbox.
    let mut actor = Actor {
        state,
        user,
        id,
        last_seq: -1,
        epoch: 0,
        gone: 0,
        db_turn: None,
        sessions: VecMap::default(),
    };
    // Only while a session is behind (an idle actor carries no timer).
    let mut catch_up: Option<tokio::time::Interval> = None;
    loop {
        tokio::select! {
            biased;
            // Before the mailbox: under a steady stream of relayed events a later branch of
            // this biased select would never run, and a session behind would be neither
            // refilled nor closed while the stream lasts. (The tick is ready once per
            // CATCH_UP_EVERY, so it cannot starve the mailbox.)
            _ = tick(&mut catch_up), if actor.any_behind() => actor.catch_up().await,
            msg = rx.recv() => match msg {
                ActorMsg::Shutdown => {
                    let ids: Vec<u64> = actor.sessions.keys().copied().collect();
                    for id in ids {
                        actor.close(id, close::GOING_AWAY_RESTART, "server restarting");
                    }
                }
                // Boxed: the largest of these futures (a join, a repair) would otherwise size
                // every idle actor's task.
                msg => Box::pin(actor.handle(msg)).await,
            },
        }
        if !actor.any_behind() {
            catch_up = None;
        }
        if actor.sessions.is_empty() {
            let (state, user, id) = (actor.state.clone(), actor.user.clone(), actor.id);
            if state.gateway.try_retire(&user, id, || rx.is_empty()) {
                break;
            }
        }
    }
    // The channel's name is made again rather than kept: one less string per connected user.
    let channel = actor.state.settings.user_channel(&actor.user);
    actor.state.hub.unlisten(&channel, actor.id);
    metrics::gauge!("notifyd_users_online").decrement(1.0);
}

/// The next catch-up tick, starting the interval (first tick at once) if there is none.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    interval
        .get_or_insert_with(|| {
            let mut i = tokio::time::interval(CATCH_UP_EVERY);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        })
        .tick()
        .await;
}

impl Actor {
    /// The user's counters and inbox epoch as the database has them now.
    async fn current(&self) -> Result<Counters, ApiError> {
        let user = &self.user;
        // Database futures are boxed here and below: inline, the largest of them (a pool
        // checkout plus a query) would size every idle actor's task, one per connected user.
        Box::pin(
            self.state
                .db(async |conn| Ok(changes::counts(conn, user).await?)),
        )
        .await
    }

    async fn handle(&mut self, msg: ActorMsg) {
        match msg {
            ActorMsg::Join(j) => {
                let Join {
                    session,
                    since,
                    epoch,
                    turn,
                    joined,
                } = *j;
                self.join(session, since, epoch, turn, joined).await
            }
            ActorMsg::Leave { session } => self.remove(session),
            ActorMsg::Command(c) => {
                let SessionCommand {
                    session,
                    frame,
                    slot,
                } = *c;
                self.command(session, frame, slot).await
            }
            ActorMsg::Event(envelope) => self.on_envelope(*envelope).await,
            ActorMsg::Resync => self.resync().await,
            ActorMsg::Audit(seen) => self.audit(*seen).await,
            ActorMsg::Shutdown => {}
        }
    }

    fn remove(&mut self, id: u64) {
        self.close(id, 1000, "closed");
    }

    /// Closes a session with `code` (a no-op if it already has a close code) and forgets it:
    /// the connection gauge and presence. Every way a session ends comes here (its task
    /// takes it off its topics).
    fn close(&mut self, id: u64, code: u16, reason: &'static str) {
        if let Some(s) = self.sessions.remove(&id) {
            s.tx.close_with(code, reason);
            metrics::gauge!("notifyd_ws_connections", "transport" => s.tx.transport.label())
                .decrement(1.0);
            self.state.presence.add(&self.user, -1);
        }
    }

    async fn join(
        &mut self,
        tx: SessionTx,
        since: Option<i64>,
        epoch: Option<i64>,
        turn: Option<OwnedSemaphorePermit>,
        joined: oneshot::Sender<()>,
    ) {
        // Through the node's batcher: in a reconnect storm one statement reads many users'
        // counters and missed events (see gateway::catch_up).
        let read = self.state.gateway.catch_up.read(&self.user, since, epoch);
        // The handshake's turn ends here, queued or refused. Turns bound the handshakes' CPU
        // work (REST calls on the same workers wait behind it); a join waiting for its read
        // costs none, and the batcher's own queue bounds how many wait. Held until `hello`, as
        // before, the turns also capped how many users one catch-up statement could read:
        // with PostgreSQL busy (services' POSTs), 64 turns made batches of ~15 users, each
        // statement slow, and a 15,000-client storm took 20 s, most of it refused clients
        // waiting out their `retry_after` (docs/decisions/0005).
        drop(turn);
        let read = match read {
            Ok(read) => read,
            Err(Busy) => return refuse_busy(&tx, "catch_up_queue_full"),
        };
        let snapshot = match tokio::time::timeout(JOIN_READ_WAIT, read).await {
            Ok(Ok(Ok(s))) => s,
            // The database failed the read (e.g. no connection could be made in time): the
            // client can do nothing but come back, so it is told when, like any busy refusal
            // (a bare 1011 sent every such client back at once, on its own backoff).
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, user = %self.user, "join failed to read the inbox");
                return refuse_busy(&tx, "catch_up_failed");
            }
            // The read waited too long (or the batcher is gone): the node is overloaded.
            Ok(Err(_)) | Err(_) => return refuse_busy(&tx, "catch_up_slow"),
        };
        let (counts, inbox) = match &snapshot {
            Changes::Events {
                seq,
                unread,
                unseen,
                epoch,
                ..
            }
            | Changes::Reset {
                seq,
                unread,
                unseen,
                epoch,
                ..
            } => (
                CountsView {
                    seq: *seq,
                    unread: *unread,
                    unseen: *unseen,
                },
                *epoch,
            ),
        };
        // Bring the sessions already here up to the snapshot before the new one joins at it.
        if self.sessions.is_empty() {
            if inbox != self.epoch {
                self.last_seq = counts.seq;
            }
            self.last_seq = self.last_seq.max(counts.seq);
            self.epoch = inbox;
        } else if self.other_inbox(inbox) {
            // Replaced while these sessions were open, and the news is still on its way.
            self.reset(snapshot_counters(counts, inbox), "erased");
        } else {
            self.adopt(inbox);
            if counts.seq > self.last_seq {
                self.repair(counts.seq).await;
            }
        }
        let heartbeat_s = self.state.settings.heartbeat.as_secs().max(1);
        let hello = protocol::hello(&self.user, counts, inbox, heartbeat_s);
        if let Push::Dropped = tx.push_json(&hello) {
            return;
        }
        // The missed events, in `sync` frames of at most SYNC_FRAME_BYTES each, offered like
        // live events: what does not fit the session's budget now comes from the log as it
        // drains (`catch_up`), so a resume after a long absence is never one huge frame.
        let (mut cursor, mut behind_since) = (counts.seq, None);
        match &snapshot {
            Changes::Events { events, .. } if !events.is_empty() => {
                cursor = since.unwrap_or(counts.seq);
                for (last, frame) in protocol::sync_frames(events, protocol::SYNC_FRAME_BYTES) {
                    match tx.offer(Arc::from(frame)) {
                        Offer::Queued => cursor = last,
                        Offer::Full => {
                            metrics::counter!("notifyd_ws_sessions_behind_total").increment(1);
                            behind_since = Some(Instant::now());
                            break;
                        }
                        Offer::Gone => return,
                    }
                }
            }
            Changes::Events { .. } => {}
            Changes::Reset { .. } => {
                if let Some(sync) = protocol::sync(&snapshot) {
                    if let Push::Dropped = tx.push_json(&sync) {
                        return;
                    }
                }
            }
        }
        metrics::gauge!("notifyd_ws_connections", "transport" => tx.transport.label())
            .increment(1.0);
        self.sessions.insert(
            tx.id,
            Session {
                tx,
                cursor,
                behind_since,
            },
        );
        self.state.presence.add(&self.user, 1);
        let _ = joined.send(());
    }

    /// An envelope on the user's channel (relayed, or delivered here after a local commit).
    async fn on_envelope(&mut self, envelope: Envelope) {
        match envelope.head {
            Head::User { seq, epoch, at } => {
                if at > 0 {
                    let latency = chrono::Utc::now().timestamp_micros() - at;
                    metrics::histogram!("notifyd_delivery_latency_seconds")
                        .record(latency.max(0) as f64 / 1e6);
                }
                self.on_event(seq, epoch, envelope.frame).await
            }
            Head::Erased => self.erased().await,
            Head::Topic { .. } | Head::Probe => {
                tracing::debug!(user = %self.user, "not a user event on a user channel");
            }
        }
    }

    /// Whether the inbox `epoch` (as the database or an event says) is another than the one
    /// these sessions hold. An actor that knew no inbox (0) holds none to be replaced.
    fn other_inbox(&self, epoch: i64) -> bool {
        self.epoch != 0 && epoch != self.epoch
    }

    /// Whether `epoch` names an inbox the sessions were already reset away from (a late copy
    /// of its event, or a database read from before the reset).
    fn stale(&self, epoch: i64) -> bool {
        epoch != 0 && epoch != self.epoch && epoch <= self.gone
    }

    /// Takes `epoch` as the sessions' inbox when they knew none (the user's first change).
    fn adopt(&mut self, epoch: i64) {
        if self.epoch == 0 && epoch > self.gone {
            self.epoch = epoch;
        }
    }

    /// The broker connection came back: re-read the user's seq and repair what was missed.
    async fn resync(&mut self) {
        if self.sessions.is_empty() {
            return;
        }
        match self.current().await {
            Ok(c) => self.compare(c).await,
            Err(e) => tracing::warn!(error = %e, user = %self.user, "resync failed"),
        }
    }

    /// The audit read the user's seq and epoch (a user without an inbox: 0 and 0).
    async fn audit(&mut self, seen: Seen) {
        if self.sessions.is_empty() {
            return;
        }
        if seen.seq > self.last_seq && !self.other_inbox(seen.epoch) {
            metrics::counter!("notifyd_audit_repairs_total").increment(1);
        }
        if self.other_inbox(seen.epoch) || seen.seq < self.last_seq {
            // A reset needs the counts too: read them (rare).
            match self.current().await {
                Ok(c) => self.compare(c).await,
                Err(e) => tracing::warn!(error = %e, user = %self.user, "audit read failed"),
            }
        } else {
            // Neither a reset nor a new inbox: only the seq and epoch are looked at.
            let Seen { seq, epoch } = seen;
            self.compare(Counters {
                seq,
                epoch,
                ..Counters::default()
            })
            .await;
        }
    }

    /// Brings the sessions in line with what the database says: another inbox or a seq that
    /// went back is a reset (to `c`), a seq ahead a repair.
    async fn compare(&mut self, c: Counters) {
        if self.stale(c.epoch) {
            return;
        }
        if self.other_inbox(c.epoch) {
            self.reset(c, "erased");
        } else if c.seq < self.last_seq {
            self.reset(c, "seq_went_back");
        } else {
            self.adopt(c.epoch);
            if c.seq > self.last_seq {
                self.repair(c.seq).await;
            }
        }
    }

    /// `epoch` 0: not known (a plain frame of an earlier version): judged by seq alone.
    async fn on_event(&mut self, seq: i64, epoch: i64, frame: Arc<str>) {
        if self.sessions.is_empty() {
            return; // nobody to deliver to; the next join reads the inbox afresh
        }
        if epoch != 0 {
            if self.stale(epoch) || (self.other_inbox(epoch) && epoch < self.epoch) {
                // A late copy of an old inbox's event: nothing the sessions should see.
                metrics::counter!("notifyd_duplicate_events_dropped_total").increment(1);
                return;
            }
            if self.other_inbox(epoch) {
                // The inbox was replaced and this is the new one's: the sessions start over
                // from it as it is now (the event is in what they reload).
                self.erased().await;
                return;
            }
            self.adopt(epoch);
        }
        if seq <= self.last_seq {
            metrics::counter!("notifyd_duplicate_events_dropped_total").increment(1);
            return;
        }
        if seq > self.last_seq + 1 {
            metrics::counter!("notifyd_gaps_repaired_total").increment(1);
            self.repair(seq).await;
            return;
        }
        self.deliver(seq, frame);
    }

    /// Delivers everything in `(last_seq, upto]` from the event log, in order.
    async fn repair(&mut self, upto: i64) {
        while self.last_seq < upto {
            let (user, from, epoch) = (&self.user, self.last_seq, self.epoch);
            let rows =
                Box::pin(self.state.db(async |conn| {
                    Ok(events::range_in(conn, user, epoch, from, upto, 500).await?)
                }));
            match rows.await {
                Ok(rows) if rows.first().map(|r| r.0) == Some(self.last_seq + 1) => {
                    for (seq, payload) in rows {
                        self.deliver(seq, Arc::from(payload.text()));
                    }
                }
                Ok(_) if self.replaced().await => return,
                Ok(_) => {
                    // The log no longer holds what these sessions missed: they must resume and reset.
                    tracing::warn!(user = %self.user, from = self.last_seq, upto, "events missing from the log; closing sessions");
                    let ids: Vec<u64> = self.sessions.keys().copied().collect();
                    for id in ids {
                        self.close(id, close::SLOW_CONSUMER, "fell behind: resume with since");
                    }
                    self.last_seq = upto;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, user = %self.user, "gap repair failed; will retry on the next event or resync");
                    return;
                }
            }
        }
    }

    /// After a read of the log came back short: whether that is because the inbox was replaced
    /// meanwhile (then every session has been reset to the new one).
    async fn replaced(&mut self) -> bool {
        match self.current().await {
            Ok(c) if self.other_inbox(c.epoch) => {
                self.reset(c, "erased");
                true
            }
            _ => false,
        }
    }

    /// The user was erased (the notice came through the broker, in order with their events):
    /// whatever these sessions hold belongs to an inbox that no longer exists, even if the new
    /// one's seq has already caught up with the old. Every session is reset to the inbox as it
    /// is now (events of the new inbox committed meanwhile are in the page the client reloads;
    /// their relayed copies, at or below that seq, are then dropped as already delivered).
    async fn erased(&mut self) {
        if self.sessions.is_empty() {
            return;
        }
        let c = match self.current().await {
            Ok(c) => c,
            Err(e) => {
                // Reset to the empty inbox the erase left (no epoch): anything newer is then
                // a gap, repaired from the event log like any other.
                tracing::warn!(error = %e, "reading the counters after an erase failed");
                Counters::default()
            }
        };
        // The notice comes twice (delivered here after the commit, and relayed): sessions
        // already reset to the inbox the database still shows need no second reset.
        if self.epoch == 0 && c.epoch == 0 && c.seq == self.last_seq {
            return;
        }
        self.reset(c, "erased");
    }

    /// Every session gets a `sync` reset (the client reloads its first page) and the stream goes
    /// on from `c.seq`: the database is behind what the sessions saw (`seq_went_back`, e.g. a
    /// restored backup), or the user was erased (`erased`).
    fn reset(&mut self, c: Counters, reason: &'static str) {
        if reason == "seq_went_back" {
            tracing::warn!(user = %self.user, seen = self.last_seq, database = c.seq, "user's seq went back (database restored?): resetting sessions");
        }
        metrics::counter!("notifyd_resets_sent_total", "reason" => reason).increment(1);
        let frame = protocol::sync(&Changes::reset(c)).map(|v| Arc::<str>::from(v.to_string()));
        if c.epoch != self.epoch {
            self.gone = self.gone.max(self.epoch);
        }
        self.last_seq = c.seq;
        self.epoch = c.epoch;
        let mut dropped = vec![];
        for (id, s) in self.sessions.iter_mut() {
            s.cursor = c.seq;
            s.behind_since = None;
            if let Some(f) = &frame {
                if let Push::Dropped = s.tx.push(f.clone()) {
                    dropped.push(*id);
                }
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }

    fn deliver(&mut self, seq: i64, payload: Arc<str>) {
        self.last_seq = seq;
        let mut dropped = vec![];
        for (id, s) in self.sessions.iter_mut() {
            // A session that is behind gets this event from the log, in order, once it drains.
            if s.cursor >= seq || s.behind_since.is_some() {
                continue;
            }
            match s.tx.offer(payload.clone()) {
                Offer::Queued => s.cursor = seq,
                Offer::Full => {
                    metrics::counter!("notifyd_ws_sessions_behind_total").increment(1);
                    s.behind_since = Some(Instant::now());
                }
                Offer::Gone => dropped.push(*id),
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }

    fn any_behind(&self) -> bool {
        self.sessions.values().any(|s| s.behind_since.is_some())
    }

    /// Refills the sessions that are behind from the event log once their queue has drained to
    /// half of what it takes (bytes and frames), and closes with 4008 those that stayed behind for `BEHIND_LIMIT`: a
    /// client that reads, only slower than a burst arrives, catches up; one that does not read
    /// (or cannot keep up at all) resumes later with `since`. Memory stays at the budget.
    async fn catch_up(&mut self) {
        let behind: Vec<(u64, Instant)> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| s.behind_since.map(|t| (*id, t)))
            .collect();
        for (id, since) in behind {
            if since.elapsed() > BEHIND_LIMIT {
                metrics::counter!("notifyd_slow_consumer_closed_total").increment(1);
                self.close(id, close::SLOW_CONSUMER, "slow consumer: resume with since");
                continue;
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if !s.tx.half_drained() {
                continue;
            }
            let (from, upto) = (s.cursor, self.last_seq);
            if from >= upto {
                s.behind_since = None;
                continue;
            }
            let (user, epoch) = (&self.user, self.epoch);
            let rows = Box::pin(self.state.db(async |conn| {
                Ok(events::range_in(conn, user, epoch, from, upto, CATCH_UP_PAGE).await?)
            }))
            .await;
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            match rows {
                Ok(rows) if rows.first().map(|r| r.0) == Some(from + 1) => {
                    let mut gone = false;
                    for (seq, payload) in rows {
                        match s.tx.offer(Arc::from(payload.text())) {
                            Offer::Queued => s.cursor = seq,
                            Offer::Full => break,
                            Offer::Gone => {
                                gone = true;
                                break;
                            }
                        }
                    }
                    if gone {
                        self.remove(id);
                    } else if s.cursor >= self.last_seq {
                        metrics::counter!("notifyd_ws_sessions_caught_up_total").increment(1);
                        s.behind_since = None;
                    }
                }
                Ok(_) if self.replaced().await => return,
                Ok(_) => {
                    // The log no longer holds what it missed: resume and reset.
                    self.close(id, close::SLOW_CONSUMER, "fell behind: resume with since");
                }
                Err(e) => {
                    tracing::warn!(error = %e, user = %self.user, "catching a session up failed; retrying");
                }
            }
        }
    }

    async fn command(&mut self, session: u64, frame: ClientFrame, slot: OwnedSemaphorePermit) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let tx = s.tx.clone();
        let made = match frame {
            ClientFrame::Read { ids, r#ref } => {
                (commands::parse_ids(&ids).map(Command::Read), r#ref)
            }
            ClientFrame::ReadAll { r#ref } => (Ok(Command::ReadAll), r#ref),
            ClientFrame::SeenAll { r#ref } => (Ok(Command::SeenAll), r#ref),
            ClientFrame::Unread { ids, r#ref } => {
                (commands::parse_ids(&ids).map(Command::Unread), r#ref)
            }
            ClientFrame::Archive { ids, r#ref } => {
                (commands::parse_ids(&ids).map(Command::Archive), r#ref)
            }
            ClientFrame::Unarchive { ids, r#ref } => {
                (commands::parse_ids(&ids).map(Command::Unarchive), r#ref)
            }
            ClientFrame::Snooze { ids, until, r#ref } => {
                let cmd = commands::parse_ids(&ids).and_then(|ids| {
                    let until = commands::parse_until(Some(&until))?;
                    Ok(Command::Snooze(ids, until))
                });
                (cmd, r#ref)
            }
            // Pings, tokens, topics and acknowledgements are the session's (`gateway::inbound`).
            ClientFrame::Ping { .. }
            | ClientFrame::Received { .. }
            | ClientFrame::Auth { .. }
            | ClientFrame::Subscribe { .. }
            | ClientFrame::Unsubscribe { .. }
            | ClientFrame::Publish { .. }
            | ClientFrame::Send { .. } => return,
        };
        let cmd = match made {
            (Ok(cmd), r#ref) => (cmd, r#ref),
            (Err(e), r#ref) => {
                tx.push_json(&protocol::error(&r#ref, e.code(), &e.to_string()));
                return;
            }
        };
        // The transaction runs beside the actor so a slow database never holds up delivery.
        // It holds the session's command slot until answered, and one of the node's database
        // command permits while it runs, so floods wait in bounded numbers, not in the pool.
        let (state, user) = (self.state.clone(), self.user.clone());
        let turn = self
            .db_turn
            .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (cmd, r#ref) = cmd;
            let result = async {
                // One command of this user at a time (they serialise on the user's counter row
                // anyway), then one of the node's permits: however many sockets one user
                // floods from, it holds at most one permit and other users' commands go on.
                let turns = async {
                    let mine = turn.acquire_owned().await;
                    let node = state.gateway.db_commands.clone().acquire_owned().await;
                    mine.and_then(|m| node.map(|n| (m, n)))
                };
                let _turns = tokio::time::timeout(crate::inbox::COMMAND_WAIT, turns)
                    .await
                    .map_err(|_| ApiError::Unavailable("the server is busy; retry".into()))?
                    .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
                state
                    .db(async |conn| Ok(commands::run(conn, &user, cmd).await?))
                    .await
            }
            .await;
            match result {
                Ok(out) => {
                    // To this actor's mailbox the one way every local commit goes.
                    commands::committed(&state, &out);
                    tx.push_json(&protocol::ack(&r#ref, json!(out.counts)));
                }
                Err(e) => {
                    tx.push_json(&protocol::error(&r#ref, e.code(), &e.to_string()));
                }
            }
        });
    }
}

/// Closes a joining session with 1013 and a jittered `retry_after` (protocol::busy_reason).
fn refuse_busy(tx: &SessionTx, reason: &'static str) {
    metrics::counter!("notifyd_ws_refused_total", "reason" => reason).increment(1);
    tx.close_with(close::TRY_AGAIN_LATER, protocol::busy_reason());
}

/// The counters a join's snapshot gave, as a reset sends them.
fn snapshot_counters(c: CountsView, epoch: i64) -> Counters {
    Counters {
        seq: c.seq,
        unread: c.unread,
        unseen: c.unseen,
        seen_seq: 0,
        epoch,
    }
}
