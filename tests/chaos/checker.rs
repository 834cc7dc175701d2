//! The checker (every client's log against the database) and the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

use crate::clients::{Client, ClientLog};
use crate::cluster::Cluster;
use crate::faults::{Fault, FaultKind};
use crate::producer::{ProducerLog, TopicLog};
use crate::proxy::RoleCounts;
use crate::util::lock;
use crate::NODES;

#[derive(QueryableByName)]
pub(crate) struct MessageRow {
    #[diesel(sql_type = Text)]
    pub(crate) id: String,
    #[diesel(sql_type = Text)]
    pub(crate) to_user: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) seq: i64,
}

#[derive(QueryableByName)]
pub(crate) struct UnreadRow {
    #[diesel(sql_type = Text)]
    pub(crate) to_user: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) mode: String,
    /// What the nodes use for Redis ("private Redis", "private Redis Cluster (...)").
    pub(crate) redis: String,
    /// The kinds of fault this run injects (the table lists each, injected or not).
    pub(crate) fault_kinds: Vec<FaultKind>,
    pub(crate) users: usize,
    pub(crate) clients: usize,
    pub(crate) regular: usize,
    pub(crate) flood: usize,
    pub(crate) rows_in_db: usize,
    pub(crate) events_in_db: i64,
    pub(crate) events_applied: usize,
    pub(crate) duration_s: f64,
    /// (kind, injected at, over at, detail) for the timeline.
    pub(crate) faults: Vec<(FaultKind, f64, f64, String)>,
    pub(crate) takeovers_ms: Vec<f64>,
    /// Redis master kills: from the kill to the cluster serving every slot again.
    pub(crate) failovers_ms: Vec<f64>,
    /// Live topic events, when the run publishes any.
    pub(crate) topics: Option<TopicCounts>,
    pub(crate) slow_closed: Vec<bool>,
    /// Half-open faults: (kind, per kind of connection (frozen, closed by the nodes themselves)).
    pub(crate) half_open: Vec<(FaultKind, RoleCounts)>,
    pub(crate) lost: usize,
    pub(crate) reorders: usize,
    pub(crate) duplicates_applied: usize,
    pub(crate) duplicates_received: usize,
    pub(crate) resets: usize,
    pub(crate) id_mismatches: usize,
    pub(crate) unread_mismatches: usize,
    pub(crate) missing_201: usize,
    pub(crate) gave_up: usize,
    pub(crate) max_delay_by_kind: BTreeMap<FaultKind, f64>,
    /// Per fault kind, the longest stretch after it with no client applying anything.
    pub(crate) max_silence_by_kind: BTreeMap<FaultKind, f64>,
    pub(crate) baseline_delay: (f64, f64),
    pub(crate) http_failures: Vec<(String, usize, usize, usize)>,
    pub(crate) replays_after_failure: usize,
    pub(crate) failure_samples: Vec<String>,
    pub(crate) requests: usize,
    pub(crate) closes: BTreeMap<String, usize>,
    pub(crate) handshake_failures: usize,
    pub(crate) error_frames: usize,
    pub(crate) caught_up: bool,
    /// The same checks per transport (`Transport::label`).
    pub(crate) by_transport: BTreeMap<&'static str, TransportCounts>,
    pub(crate) problems: Vec<String>,
}

/// What the checker found for the clients of one transport.
#[derive(Default, Clone, Copy)]
pub(crate) struct TransportCounts {
    pub(crate) clients: usize,
    pub(crate) connections: usize,
    pub(crate) events_applied: usize,
    pub(crate) lost: usize,
    pub(crate) duplicates_applied: usize,
    pub(crate) reorders: usize,
    pub(crate) duplicates_received: usize,
}

/// What a run was, for its report's header.
pub(crate) struct Run {
    pub(crate) mode: String,
    pub(crate) redis: String,
    pub(crate) fault_kinds: Vec<FaultKind>,
    pub(crate) users: usize,
    pub(crate) clients: usize,
    pub(crate) duration_s: f64,
    pub(crate) caught_up: bool,
}

impl Report {
    /// A run's report before the checker reads the database: what was created and injected,
    /// and the problems the faults and the catch-up themselves saw (every run alike).
    pub(crate) fn of_run(run: Run, producer: &ProducerLog, faults: &[Fault]) -> Report {
        let mut report = Report {
            mode: run.mode,
            redis: run.redis,
            fault_kinds: run.fault_kinds,
            users: run.users,
            clients: run.clients,
            regular: producer.created.iter().filter(|m| !m.flood).count(),
            flood: producer.created.iter().filter(|m| m.flood).count(),
            duration_s: run.duration_s,
            faults: faults
                .iter()
                .map(|f| (f.kind, f.start, f.end, f.detail.clone()))
                .collect(),
            takeovers_ms: faults.iter().filter_map(|f| f.takeover_ms).collect(),
            failovers_ms: faults.iter().filter_map(|f| f.failover_ms).collect(),
            slow_closed: faults.iter().filter_map(|f| f.slow_closed).collect(),
            half_open: faults
                .iter()
                .filter_map(|f| Some((f.kind, f.half_open.clone()?)))
                .collect(),
            replays_after_failure: producer.replays_after_failure,
            requests: producer.requests,
            caught_up: run.caught_up,
            ..Default::default()
        };
        if !run.caught_up {
            report
                .problems
                .push("not every client caught up with the database in time".into());
        }
        for kind in &report.fault_kinds {
            if !faults.iter().any(|f| f.kind == *kind) {
                report
                    .problems
                    .push(format!("fault never injected: {}", kind.label()));
            }
        }
        for f in faults {
            report.problems.extend(f.problems.iter().cloned());
        }
        report
    }

    /// Ends a run: the clients' logs beside the nodes' (`dir`), the report printed and written
    /// to `path` if asked, and the run failed with `what` if the report has problems.
    pub(crate) fn finish(&self, dir: &Path, clients: &[Client], path: Option<&Path>, what: &str) {
        dump_client_logs(&dir.join("clients.log"), clients);
        let md = self.markdown();
        crate::util::note(format!("report\n\n{md}"));
        if let Some(path) = path {
            std::fs::write(path, &md).expect("write CHAOS_REPORT");
            crate::util::note(format!("report written to {}", path.display()));
        }
        assert!(
            self.passed(),
            "{what} found problems (see the report above; logs kept in {})",
            dir.display()
        );
    }

    pub(crate) fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// "27 WebSocket + 13 SSE".
    fn transport_split(&self) -> String {
        let parts: Vec<String> = self
            .by_transport
            .iter()
            .map(|(t, c)| format!("{} {t}", c.clients))
            .collect();
        parts.join(" + ")
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## notifyd chaos run ({})\n", self.mode);
        let _ = writeln!(s, "| | |\n|---|---|");
        let rows: Vec<(&str, String)> = vec![
            ("nodes", format!("{NODES} × `notifyd serve` behind nginx (docs/deploy/nginx.conf), private PostgreSQL, {}", self.redis)),
            ("users / clients", format!("{} / {} (1–3 per user, through nginx: {})", self.users, self.clients, self.transport_split())),
            ("messages (regular, one per POST)", self.regular.to_string()),
            ("messages (slow-client floods, 100 per POST)", self.flood.to_string()),
            ("rows in t_message_real_time", self.rows_in_db.to_string()),
            ("events in the users' streams (Σ seq)", self.events_in_db.to_string()),
            ("events applied by clients (Σ over clients, after dedupe)", self.events_applied.to_string()),
            ("POST attempts (incl. retries)", self.requests.to_string()),
            ("duration", format!("{:.0} s", self.duration_s)),
            ("**lost** (a client missing a committed seq)", format!("**{}**", self.lost)),
            ("**duplicates applied** (after dedupe by seq)", format!("**{}**", self.duplicates_applied)),
            ("**reorders** (a seq applied after a higher one)", format!("**{}**", self.reorders)),
            ("duplicates received (raw frames, before dedupe)", self.duplicates_received.to_string()),
            ("sync resets", self.resets.to_string()),
            ("message.created not matching t_message_real_time (id, seq)", self.id_mismatches.to_string()),
            ("final unread ≠ user_inbox_state.unread or count(*) of unread rows", self.unread_mismatches.to_string()),
            ("ids answered 201 but missing from the database", self.missing_201.to_string()),
            ("messages the producer gave up on", self.gave_up.to_string()),
            ("failed attempts whose retry was an idempotent replay (had committed)", self.replays_after_failure.to_string()),
            ("every client caught up with the database", self.caught_up.to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(
            s,
            "\n### By transport\n\n| transport | clients | connections | events applied | **lost** | **duplicates applied** | **reorders** | duplicates received (before dedupe) |\n|---|---|---|---|---|---|---|---|"
        );
        for (t, c) in &self.by_transport {
            let _ = writeln!(
                s,
                "| {t} | {} | {} | {} | **{}** | **{}** | **{}** | {} |",
                c.clients,
                c.connections,
                c.events_applied,
                c.lost,
                c.duplicates_applied,
                c.reorders,
                c.duplicates_received
            );
        }
        let _ = writeln!(
            s,
            "\nSSE clients take a ticket (`POST /api/v1/me/tickets`) and open `GET /sse?ticket=..&since=0`; \
             every reconnect sends `Last-Event-ID`, the last `id:` the stream gave, as `EventSource` does. \
             WebSocket clients resume with `?since=<last applied seq>`."
        );
        let _ = writeln!(s, "\n### Faults\n");
        let _ = writeln!(
            s,
            "| kind | injected | max time without delivery after it | longest silence after it |\n|---|---|---|---|"
        );
        for &kind in &self.fault_kinds {
            let n = self.faults.iter().filter(|f| f.0 == kind).count();
            let worst = self
                .max_delay_by_kind
                .get(&kind)
                .map(|d| format!("{:.2} s", d / 1000.0))
                .unwrap_or_else(|| "no message in its window".into());
            let silence = self
                .max_silence_by_kind
                .get(&kind)
                .map(|d| format!("{:.2} s", d / 1000.0))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(s, "| {} | {n} | {worst} | {silence} |", kind.label());
        }
        let _ = writeln!(
            s,
            "\nWithout faults (before the first one): delivery delay p50 {:.0} ms, max {:.0} ms.",
            self.baseline_delay.0, self.baseline_delay.1
        );
        let _ = writeln!(
            s,
            "*Time without delivery*: for the messages whose slowest tab applied them after the \
             fault was injected and before the next one, the longest time from the `201` to the \
             moment the slowest tab of the recipient applied the message (for the slow-client \
             fault, not counting the stalled tab: its own figures are in the timeline). *Longest \
             silence*: the longest stretch, from the fault to the next one, in which no client \
             applied any event at all (it also covers messages whose POST was held up by the fault)."
        );
        for (kind, by_role) in &self.half_open {
            let roles: Vec<String> = by_role
                .iter()
                .map(|(role, n, closed)| format!("{role} {closed} of {n}"))
                .collect();
            let _ = writeln!(
                s,
                "\n{}: connections the nodes closed on their own before the reset, by use: {}.",
                kind.label(),
                roles.join(", ")
            );
        }
        if !self.takeovers_ms.is_empty() {
            let t: Vec<String> = self
                .takeovers_ms
                .iter()
                .map(|ms| format!("{:.2} s", ms / 1000.0))
                .collect();
            let _ = writeln!(
                s,
                "\nRelay take-over (kill -9 of the leader → another node holds the lock): {}.",
                t.join(", ")
            );
        }
        if !self.failovers_ms.is_empty() {
            let t: Vec<String> = self
                .failovers_ms
                .iter()
                .map(|ms| format!("{:.2} s", ms / 1000.0))
                .collect();
            let _ = writeln!(
                s,
                "\nRedis failover (kill -9 of a master → its replica serves every slot, `cluster_state:ok`): {}.",
                t.join(", ")
            );
        }
        if let Some(t) = &self.topics {
            t.markdown(&mut s);
        }
        if !self.slow_closed.is_empty() {
            let _ = writeln!(
                s,
                "Slow client closed by the server (4008) each time: {}.",
                self.slow_closed.iter().all(|c| *c)
            );
        }
        let _ = writeln!(
            s,
            "\n### Timeline\n\n| at | fault | lasted | detail |\n|---|---|---|---|"
        );
        for (kind, start, end, detail) in &self.faults {
            let _ = writeln!(
                s,
                "| {:.1} s | {} | {:.1} s | {} |",
                start / 1000.0,
                kind.label(),
                (end - start) / 1000.0,
                detail
            );
        }
        let _ = writeln!(s, "\n### Failed HTTP answers seen by the producer (all retried with the same Idempotency-Key)\n");
        let _ = writeln!(
            s,
            "| during | 5xx | no answer (transport) | other |\n|---|---|---|---|"
        );
        for (window, five, transport, other) in &self.http_failures {
            let _ = writeln!(s, "| {window} | {five} | {transport} | {other} |");
        }
        for sample in &self.failure_samples {
            let _ = writeln!(s, "- {sample}");
        }
        let _ = writeln!(
            s,
            "\nWebSocket handshakes and SSE opens (ticket or GET) that failed (retried): {}. `error` frames: {}.",
            self.handshake_failures, self.error_frames
        );
        let _ = writeln!(s, "\nHow client connections ended:\n");
        for (how, n) in &self.closes {
            let _ = writeln!(s, "- {how}: {n}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "\n**PASS**");
        } else {
            let _ = writeln!(s, "\n**FAIL** ({} problems):\n", self.problems.len());
            for p in self.problems.iter().take(40) {
                let _ = writeln!(s, "- {p}");
            }
        }
        s
    }
}

/// Waits until every client has applied its user's current seq and the outbox is empty.
pub(crate) async fn wait_until_caught_up(
    cluster: &Cluster,
    clients: &[Client],
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let (Ok(seqs), Ok(0)) = (cluster.inbox_seqs().await, cluster.outbox_backlog().await) {
            let behind = clients
                .iter()
                .filter(|c| {
                    let want = seqs.get(&c.user).map(|s| s.0).unwrap_or(0);
                    lock(&c.log).last_seq < want
                })
                .count();
            if behind == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

pub(crate) struct Checker<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) clients: &'a [Client],
    pub(crate) producer: &'a ProducerLog,
    pub(crate) faults: &'a [Fault],
}

impl Checker<'_> {
    pub(crate) async fn check(&self, report: &mut Report) -> anyhow::Result<()> {
        // Scoped: its blanket `load` would shadow `AtomicBool::load` elsewhere in this file.
        use diesel_async::RunQueryDsl;
        let mut conn = self.cluster.db().await?;
        let rows: Vec<MessageRow> =
            diesel::sql_query("SELECT id::text AS id, to_user, seq FROM t_message_real_time")
                .load(&mut conn)
                .await?;
        let unread: Vec<UnreadRow> = diesel::sql_query(
            "SELECT to_user, count(*) AS n FROM t_message_real_time \
             WHERE NOT is_read AND deleted_at IS NULL GROUP BY to_user",
        )
        .load(&mut conn)
        .await?;
        let state = self.cluster.inbox_seqs().await?;
        let by_user_seq: HashMap<(&str, i64), &str> = rows
            .iter()
            .map(|r| ((r.to_user.as_str(), r.seq), r.id.as_str()))
            .collect();
        let by_id: HashMap<&str, (&str, i64)> = rows
            .iter()
            .map(|r| (r.id.as_str(), (r.to_user.as_str(), r.seq)))
            .collect();
        let unread: HashMap<&str, i64> = unread.iter().map(|r| (r.to_user.as_str(), r.n)).collect();
        report.rows_in_db = rows.len();
        report.events_in_db = state.values().map(|s| s.0).sum();

        for (ci, c) in self.clients.iter().enumerate() {
            let log = lock(&c.log);
            let (n, db_unread) = state.get(&c.user).copied().unwrap_or((0, 0));
            let who = format!("client {ci} ({}, {})", c.user, c.transport.label());
            let (lost_before, dup_before, reorders_before, dup_rx_before, applied_before) = (
                report.lost,
                report.duplicates_applied,
                report.reorders,
                report.duplicates_received,
                report.events_applied,
            );
            // Exactly 1..=n, each once, in order.
            let lost: Vec<i64> = (1..=n).filter(|s| !log.applied_set.contains(s)).collect();
            if !lost.is_empty() {
                report.problems.push(format!(
                    "{who}: missing seqs {:?} of 1..={n}",
                    &lost[..lost.len().min(10)]
                ));
            }
            report.lost += lost.len();
            if let Some(s) = log.applied.iter().find(|s| **s > n || **s < 1) {
                report
                    .problems
                    .push(format!("{who}: applied seq {s}, outside 1..={n}"));
            }
            let mut highest = 0;
            for s in &log.applied {
                if *s < highest {
                    report.reorders += 1;
                    report
                        .problems
                        .push(format!("{who}: seq {s} applied after {highest}"));
                }
                highest = highest.max(*s);
            }
            report.duplicates_applied += log.applied.len() - log.applied_set.len();
            report.duplicates_received += log.raw_duplicates;
            report.events_applied += log.applied.len();
            report.resets += log.resets;
            report.error_frames += log.error_frames;
            report.handshake_failures += log.handshake_failures.len();
            for (_, how) in &log.ends {
                *report
                    .closes
                    .entry(format!("{}: {how}", c.transport.label()))
                    .or_default() += 1;
            }
            let t = report.by_transport.entry(c.transport.label()).or_default();
            t.clients += 1;
            t.connections += AtomicUsize::load(&c.ctl.connects, Ordering::SeqCst);
            t.lost += report.lost - lost_before;
            t.duplicates_applied += report.duplicates_applied - dup_before;
            t.reorders += report.reorders - reorders_before;
            t.duplicates_received += report.duplicates_received - dup_rx_before;
            t.events_applied += report.events_applied - applied_before;
            for (seq, id) in &log.created {
                if by_user_seq.get(&(c.user.as_str(), *seq)) != Some(&id.as_str()) {
                    report.id_mismatches += 1;
                    report.problems.push(format!(
                        "{who}: message.created seq {seq} id {id} does not match the database"
                    ));
                }
            }
            let rows_unread = unread.get(c.user.as_str()).copied().unwrap_or(0);
            let client_unread = log.last_unread.unwrap_or(0);
            if client_unread != db_unread || db_unread != rows_unread {
                report.unread_mismatches += 1;
                report.problems.push(format!(
                    "{who}: unread {client_unread} on the client, {db_unread} in user_inbox_state, {rows_unread} unread rows"
                ));
            }
            for v in &log.violations {
                report.problems.push(format!("{who}: {v}"));
            }
        }
        for m in &self.producer.created {
            if by_id.get(m.id.as_str()) != Some(&(m.user.as_str(), m.seq)) {
                report.missing_201 += 1;
                report.problems.push(format!(
                    "201 for {} ({} seq {}) but not in the database",
                    m.id, m.user, m.seq
                ));
            }
        }
        report.gave_up = self.producer.gave_up.len();
        for k in &self.producer.gave_up {
            report.problems.push(format!("the producer gave up on {k}"));
        }
        self.delays(report);
        self.silences(report);
        self.http_failures(report);
        Ok(())
    }

    /// Which fault window a moment falls in: the last fault injected at or before it.
    pub(crate) fn window(&self, t: f64) -> Option<&Fault> {
        self.faults.iter().rev().find(|f| f.start <= t)
    }

    /// Per fault window, the longest time from a message's 201 to its slowest tab applying it.
    pub(crate) fn delays(&self, report: &mut Report) {
        let mut by_user: HashMap<&str, Vec<(usize, &ClientLog)>> = HashMap::new();
        let logs: Vec<MutexGuard<'_, ClientLog>> =
            self.clients.iter().map(|c| lock(&c.log)).collect();
        for (i, l) in logs.iter().enumerate() {
            by_user.entry(l.user.as_str()).or_default().push((i, l));
        }
        let mut baseline = vec![];
        // One line per message (201 time, recipient, seq, slowest tab and its delay): the raw
        // material behind the "time without delivery" figures, kept with the run's logs.
        let mut lines = String::new();
        for m in &self.producer.created {
            let Some(tabs) = by_user.get(m.user.as_str()) else {
                continue;
            };
            let (slowest, worst) = tabs
                .iter()
                // A tab that stalled (on purpose) between the 201 and applying the message is
                // the slow-client fault itself, reported in the timeline, not a delivery delay.
                .filter(|(_, l)| {
                    let applied = l.applied_at.get(&m.seq).copied().unwrap_or(f64::INFINITY);
                    !l.stalls.iter().any(|(a, b)| *a <= applied && *b >= m.t201)
                })
                .map(|(i, l)| {
                    let delay = l
                        .applied_at
                        .get(&m.seq)
                        .map(|t| (t - m.t201).max(0.0))
                        .unwrap_or(f64::INFINITY);
                    (*i, delay)
                })
                .fold((usize::MAX, 0.0), |a, b| if b.1 > a.1 { b } else { a });
            let _ = writeln!(
                lines,
                "{:>10.1} {} seq {} {}slowest client {slowest} after {worst:.1} ms",
                m.t201,
                m.user,
                m.seq,
                if m.flood { "(flood) " } else { "" }
            );
            if !worst.is_finite() {
                continue; // a loss, reported by the checks above
            }
            // Counted against the last fault injected before the slowest tab applied it: a
            // message committed just before a fault and held up by it is that fault's delay,
            // not the previous one's (with 20 s freezes, this matters).
            match self.window(m.t201 + worst) {
                Some(f) => {
                    let e = report.max_delay_by_kind.entry(f.kind).or_insert(0.0);
                    *e = e.max(worst);
                }
                None if !m.flood => baseline.push(worst),
                None => {}
            }
        }
        let _ = std::fs::write(self.cluster.dir.path.join("messages.log"), lines);
        baseline.sort_by(|a, b| a.total_cmp(b));
        if !baseline.is_empty() {
            report.baseline_delay = (baseline[baseline.len() / 2], baseline[baseline.len() - 1]);
        }
    }

    /// Per fault window (from the fault to the next one), the longest stretch in which no client
    /// applied anything: a stall of the whole pipeline, whatever its cause.
    pub(crate) fn silences(&self, report: &mut Report) {
        let mut applied: Vec<f64> = self
            .clients
            .iter()
            .flat_map(|c| {
                lock(&c.log)
                    .applied_at
                    .values()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        applied.sort_by(|a, b| a.total_cmp(b));
        let Some(&last) = applied.last() else {
            return;
        };
        for (i, f) in self.faults.iter().enumerate() {
            let end = self.faults.get(i + 1).map_or(last, |n| n.start);
            let mut prev = f.start;
            let mut worst: f64 = 0.0;
            for &t in applied.iter().filter(|t| **t > f.start) {
                worst = worst.max(t.min(end) - prev);
                if t >= end {
                    break;
                }
                prev = t;
            }
            let e = report.max_silence_by_kind.entry(f.kind).or_insert(0.0);
            *e = e.max(worst);
        }
    }

    pub(crate) fn http_failures(&self, report: &mut Report) {
        let mut by_window: BTreeMap<(usize, String), (usize, usize, usize)> = BTreeMap::new();
        for f in &self.producer.failures {
            let (order, label) = match self
                .faults
                .iter()
                .rposition(|x| x.start <= f.t && f.t <= x.end + 5000.0)
            {
                Some(i) => (
                    i + 1,
                    format!("{} (#{})", self.faults[i].kind.label(), i + 1),
                ),
                None => (0, "no fault in progress".to_string()),
            };
            let sample = format!(
                "{label}: {} {}",
                f.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into()),
                f.detail
            );
            if !report.failure_samples.contains(&sample) && report.failure_samples.len() < 20 {
                report.failure_samples.push(sample);
            }
            let e = by_window.entry((order, label)).or_default();
            match f.status {
                Some(s) if s >= 500 => e.0 += 1,
                None => e.1 += 1,
                Some(_) => {
                    e.2 += 1;
                    report
                        .problems
                        .push(format!("the producer got {:?}: {}", f.status, f.detail));
                }
            }
        }
        report.http_failures = by_window
            .into_iter()
            .map(|((_, label), (a, b, c))| (label, a, b, c))
            .collect();
    }
}

/// Every client's frames, connection ends and stalls, for whoever debugs a failed run.
pub(crate) fn dump_client_logs(path: &Path, clients: &[Client]) {
    let mut out = String::new();
    for (i, c) in clients.iter().enumerate() {
        let log = lock(&c.log);
        let _ = writeln!(
            out,
            "== client {i} ({}, {}) last_seq {} applied {}",
            c.user,
            c.transport.label(),
            log.last_seq,
            log.applied.len()
        );
        for f in &log.frames {
            let _ = writeln!(
                out,
                "{:>10.1} {} {}",
                f.t,
                f.kind,
                f.seq.map(|s| s.to_string()).unwrap_or_default()
            );
        }
        for (t, how) in &log.ends {
            let _ = writeln!(out, "{t:>10.1} ended: {how}");
        }
        for (t, e) in &log.handshake_failures {
            let _ = writeln!(out, "{t:>10.1} handshake failed: {e}");
        }
        for (a, b) in &log.stalls {
            let _ = writeln!(out, "{a:>10.1} stalled until {b:.1}");
        }
        for e in &log.topic_events {
            let _ = writeln!(out, "{:>10.1} topic {} #{} {}", e.t, e.topic, e.i, e.id);
        }
    }
    let _ = std::fs::write(path, out);
}

/// Live topic events as the clients saw them, against what the publisher got `202` for. Topic
/// events are live only and carry no seq (contract §8): one lost while a broker path is down
/// is never repaired, so losses are measured (and must fall in the fault's window), while
/// order, the topics being live again afterwards, and no event for an unsubscribed client are
/// checked.
#[derive(Default)]
pub(crate) struct TopicCounts {
    pub(crate) topics: usize,
    pub(crate) published: usize,
    /// POSTs not answered 202 (not retried).
    pub(crate) publish_failures: usize,
    /// Clients counted: subscribed once, for the whole run (one connection).
    pub(crate) clients: usize,
    /// Clients that reconnected: what they missed while away is not the broker's loss.
    pub(crate) clients_skipped: usize,
    /// Σ over the counted clients of the events published after they subscribed.
    pub(crate) expected: usize,
    /// Σ of those received (distinct ids).
    pub(crate) received: usize,
    pub(crate) lost: usize,
    /// Per node (the one holding the client's connection): (clients, Σ lost, most one lost).
    pub(crate) by_node: BTreeMap<String, (usize, usize, usize)>,
    /// Publish time (POST sent) of the first and last lost event, ms on the run clock.
    pub(crate) lost_between: Option<(f64, f64)>,
    /// The fault window losses must fall in, ms on the run clock.
    pub(crate) window: Option<(f64, f64)>,
    pub(crate) lost_outside_window: usize,
    /// Copies of an id already received (the relay is at-least-once; clients drop them).
    pub(crate) duplicates: usize,
    pub(crate) reorders: usize,
}

/// A topic event sent this long before a fault may still be caught by it (the relay publishes
/// it after the POST's commit, up to its coalescing window and a batch later).
const TOPIC_WINDOW_BEFORE_MS: f64 = 2000.0;
/// ... and this long after the fault is over (every client caught up): the last resubscription.
const TOPIC_WINDOW_AFTER_MS: f64 = 5000.0;

impl TopicCounts {
    fn markdown(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n### Topic events (live only, at most once: contract §8)\n\n| | |\n|---|---|"
        );
        let window = |w: Option<(f64, f64)>| {
            w.map_or_else(
                || "-".into(),
                |(a, b)| format!("{:.1} s – {:.1} s", a / 1000.0, b / 1000.0),
            )
        };
        let rows: Vec<(&str, String)> = vec![
            (
                "topics / events published (202)",
                format!("{} / {}", self.topics, self.published),
            ),
            (
                "publish POSTs not answered 202",
                self.publish_failures.to_string(),
            ),
            (
                "clients counted (one subscription all run) / skipped (reconnected)",
                format!("{} / {}", self.clients, self.clients_skipped),
            ),
            (
                "events expected (Σ over clients, published after it subscribed)",
                self.expected.to_string(),
            ),
            ("received (distinct)", self.received.to_string()),
            (
                "**lost**",
                format!(
                    "**{}** ({:.2}%)",
                    self.lost,
                    100.0 * self.lost as f64 / self.expected.max(1) as f64
                ),
            ),
            (
                "lost events were published between",
                window(self.lost_between),
            ),
            (
                "fault window (2 s before the fault to 5 s after it was over)",
                window(self.window),
            ),
            (
                "lost outside that window",
                self.lost_outside_window.to_string(),
            ),
            (
                "copies received (dropped by id)",
                self.duplicates.to_string(),
            ),
            ("reorders (per topic)", self.reorders.to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(
            s,
            "\n| node holding the connections | clients | lost (Σ) | lost (most by one client) |\n|---|---|---|---|"
        );
        for (node, (clients, lost, most)) in &self.by_node {
            let _ = writeln!(s, "| {node} | {clients} | {lost} | {most} |");
        }
    }
}

impl Checker<'_> {
    /// The topic events every client got against `published`; losses must fall in the window
    /// of `fault` (if any), and every counted client must have the last event of each topic
    /// (the topics are live again after the fault).
    pub(crate) fn check_topics(&self, log: &TopicLog, topics: &[String], report: &mut Report) {
        let mut t = TopicCounts {
            topics: topics.len(),
            published: log.published.len(),
            publish_failures: log.failures.len(),
            ..Default::default()
        };
        t.window = self.faults.first().map(|f| {
            (
                f.start - TOPIC_WINDOW_BEFORE_MS,
                f.end + TOPIC_WINDOW_AFTER_MS,
            )
        });
        let last: HashMap<&str, i64> = topics
            .iter()
            .filter_map(|topic| {
                let i = log
                    .published
                    .iter()
                    .filter(|p| &p.topic == topic)
                    .map(|p| p.i)
                    .max()?;
                Some((topic.as_str(), i))
            })
            .collect();
        for (ci, c) in self.clients.iter().enumerate() {
            let clog = lock(&c.log);
            let who = format!("client {ci} ({}, {})", c.user, c.transport.label());
            // Order and copies hold for every client, whatever its connections.
            let mut seen: HashSet<&str> = HashSet::new();
            let mut highest: HashMap<&str, i64> = HashMap::new();
            for e in &clog.topic_events {
                if !seen.insert(e.id.as_str()) {
                    t.duplicates += 1;
                    continue;
                }
                let h = highest.entry(e.topic.as_str()).or_insert(0);
                if e.i < *h {
                    t.reorders += 1;
                    report
                        .problems
                        .push(format!("{who}: {} event {} after {}", e.topic, e.i, *h));
                }
                *h = (*h).max(e.i);
            }
            let Some(from) = clog.topics_from else {
                report
                    .problems
                    .push(format!("{who}: never subscribed to its topics"));
                continue;
            };
            if AtomicUsize::load(&c.ctl.connects, Ordering::SeqCst) != 1 {
                t.clients_skipped += 1;
                continue;
            }
            t.clients += 1;
            let node = lock(&c.ctl.upstream)
                .as_deref()
                .and_then(|a| self.cluster.node_index(a))
                .map_or_else(|| "?".to_string(), |i| self.cluster.nodes[i].name.clone());
            let mut lost_here = 0;
            for p in log.published.iter().filter(|p| p.sent > from) {
                t.expected += 1;
                if seen.contains(p.id.as_str()) {
                    t.received += 1;
                    continue;
                }
                lost_here += 1;
                t.lost_between = Some(match t.lost_between {
                    None => (p.sent, p.sent),
                    Some((a, b)) => (a.min(p.sent), b.max(p.sent)),
                });
                if !t.window.is_some_and(|(a, b)| a <= p.sent && p.sent <= b) {
                    t.lost_outside_window += 1;
                    report.problems.push(format!(
                        "{who}: topic event {} #{} (sent at {:.1} s) lost outside the fault window",
                        p.topic,
                        p.i,
                        p.sent / 1000.0
                    ));
                }
            }
            t.lost += lost_here;
            let e = t.by_node.entry(node).or_default();
            e.0 += 1;
            e.1 += lost_here;
            e.2 = e.2.max(lost_here);
            for (topic, i) in &last {
                if highest.get(topic).copied().unwrap_or(0) < *i {
                    report.problems.push(format!(
                        "{who}: never got {topic} #{i}, the last one published (not live again after the fault)"
                    ));
                }
            }
        }
        if t.published == 0 {
            report.problems.push("no topic event was published".into());
        }
        report.topics = Some(t);
    }
}

impl Checker<'_> {
    /// Every client kept the one connection it opened (a run whose faults touch neither the
    /// nodes nor the clients' paths: a Redis failover must cost no client its connection). A
    /// client whose node stopped delivering goes silent and reconnects, and its resume then
    /// repairs what it missed, so the seq checks alone would not see a node that lost its
    /// broker for good.
    pub(crate) fn check_connections_kept(&self, report: &mut Report) {
        for (ci, c) in self.clients.iter().enumerate() {
            let connects = AtomicUsize::load(&c.ctl.connects, Ordering::SeqCst);
            if connects != 1 {
                let log = lock(&c.log);
                let ends: Vec<&str> = log.ends.iter().map(|(_, how)| how.as_str()).collect();
                report.problems.push(format!(
                    "client {ci} ({}, {}): {connects} connections, not 1 (ended: {})",
                    c.user,
                    c.transport.label(),
                    ends.join(", ")
                ));
            }
        }
    }
}
