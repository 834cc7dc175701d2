//! Spreading the relay partitions over the live relays, without a coordinator.
//!
//! Who may publish a partition is still decided by its session advisory lock alone
//! (`relay::partition_lock`): that is what keeps one leader per partition and per-user order, and
//! nothing here can break it (see `relay`). This module only decides how many partitions this
//! process *tries* to lead, so that they spread:
//!
//! - Every relay process upserts its row in `relay_node` every `HEARTBEAT_EVERY` and reads the
//!   relays alive: seen within `LIVE_FOR` and their heartbeat session still open
//!   (`store::relay_node::beat`, one statement, the database's clock). With `L` live relays and `N` partitions, the relay ranked `r` has the
//!   target `⌊N/L⌋ + (1 if r < N mod L)`: the targets add up to `N`, and no relay's exceeds
//!   `⌈N/L⌉`. Relays are ranked by the partitions they led at their last heartbeat, most first,
//!   then by id: the extra places go to relays that already hold them, so partitions move only
//!   as far as the spread needs (with one partition, the default, a joining relay leaves the
//!   leader alone).
//! - A stand-by partition tries its lock only while this process leads fewer than its target
//!   (`reserve`); a leader over the target gives its partition up after its in-flight batch
//!   (`release_surplus`), so a relay that joins finds free locks to take.
//! - A relay that stops cleanly deletes its row; one whose process dies drops out of the others'
//!   count at their next heartbeat (its heartbeat session ended with it), one cut off silently
//!   after `LIVE_FOR`. Its locks go with its sessions, so the others, whose targets then rise,
//!   take its partitions at their next stand-by retry (measured: under 1 s after a SIGKILL).
//!
//! Why PostgreSQL and not Redis keys with a TTL: PostgreSQL already holds the locks that decide
//! leadership and is the source of truth for the outbox; a relay that cannot reach it cannot lead
//! anyway, so its view of who is alive fails together with what it would lead. Redis would add a
//! second system whose partition from PostgreSQL could make relays disagree about the count, and
//! a Redis Cluster failover (contract §11) would lose keys. The cost is one small upsert per relay
//! per second. The table is also the public answer to "who leads what" (`led`).
//!
//! If the heartbeat cannot reach the database for `LIVE_FOR`, this process falls back to trying
//! every partition (the election of old: locks alone), so a broken heartbeat never leaves
//! partitions without a leader; it may then lead more than its share until the heartbeat returns.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use tokio::sync::watch;

use crate::config::Settings;
use crate::db;
use crate::store::{relay_node, session};

/// How often each relay writes its heartbeat and recounts the live relays.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A relay not seen for this long is dead to the others, even if its heartbeat session looks
/// open (a silent path). Five heartbeats: a loaded machine may delay a few without partitions
/// moving. A relay whose process died is out sooner (its session is gone: `relay_node::beat`).
pub const LIVE_FOR: Duration = Duration::from_secs(5);
/// Rows of relays gone this long are deleted (a restarted process has a new id).
const FORGET_AFTER: Duration = Duration::from_secs(600);
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// How many partitions the relay ranked `rank` among `live` relays may lead, out of `n`.
pub fn target(n: u32, live: usize, rank: usize) -> u32 {
    let live = u32::try_from(live.max(1)).unwrap_or(u32::MAX);
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    n / live + u32::from(rank < n % live)
}

/// Where `me` stands among the live relays: those leading more first, then by id.
pub fn rank(mut live: Vec<relay_node::Live>, me: &str) -> usize {
    live.sort_by(|a, b| b.led.cmp(&a.led).then_with(|| a.id.cmp(&b.id)));
    live.iter().position(|l| l.id == me).unwrap_or(0)
}

/// This process's side of the spread: its id in `relay_node`, how many partitions it holds, and
/// how many it may hold. Shared by its partition tasks and its heartbeat.
#[derive(Clone)]
pub struct Share {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    partitions: u32,
    /// Partitions this process leads, plus stand-bys that reserved a place and are trying their
    /// lock. Changed only by compare-and-swap against the target, so concurrent partition tasks
    /// never take more than the target between them.
    held: AtomicU32,
    /// How many this process may lead; 0 until the first heartbeat answered. A watch, so idle
    /// leaders notice at once when it drops.
    target: watch::Sender<u32>,
    /// The partitions it leads right now (the `led` column, `notifyd_relay_partitions_led`).
    led: Mutex<BTreeSet<u32>>,
}

impl Share {
    /// `node_id` plus a random suffix: two processes given the same `NOTIFYD_NODE_ID` still count
    /// as two relays.
    pub fn new(node_id: &str, partitions: u32) -> Self {
        let partitions = partitions.max(1);
        metrics::gauge!("notifyd_relay_partitions").set(f64::from(partitions));
        metrics::gauge!("notifyd_relay_partitions_led").set(0.0);
        Share {
            inner: Arc::new(Inner {
                id: format!("{node_id}/{:08x}", rand::random::<u32>()),
                partitions,
                held: AtomicU32::new(0),
                target: watch::channel(0).0,
                led: Mutex::default(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// A stand-by may try its lock only if this returns true (one place under the target taken);
    /// it gives the place back with `unreserve` if the lock was not free.
    pub fn reserve(&self) -> bool {
        let target = *self.inner.target.borrow();
        self.inner
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h < target).then_some(h + 1)
            })
            .is_ok()
    }

    pub fn unreserve(&self) {
        let _ = self
            .inner
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_sub(1));
    }

    /// Asked by a leader between two batches: true when this process holds more than its target
    /// and this leader is the one to give its partition up (its place is already given back).
    pub fn release_surplus(&self) -> bool {
        let target = *self.inner.target.borrow();
        self.inner
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h > target).then_some(h - 1)
            })
            .is_ok()
    }

    /// Wakes when the target changes (an idle leader re-checks for surplus at once).
    pub fn target_changes(&self) -> watch::Receiver<u32> {
        self.inner.target.subscribe()
    }

    /// Partition `k` now leads here.
    pub fn started(&self, k: u32) {
        let mut led = self.led();
        led.insert(k);
        metrics::gauge!("notifyd_relay_partitions_led").set(led.len() as f64);
    }

    /// Partition `k` no longer leads here (its place in `held` is the caller's to give back).
    pub fn stopped(&self, k: u32) {
        let mut led = self.led();
        led.remove(&k);
        metrics::gauge!("notifyd_relay_partitions_led").set(led.len() as f64);
    }

    fn led(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        // A panic while holding this lock leaves a valid set: keep using it.
        self.inner
            .led
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn led_list(&self) -> Vec<i32> {
        self.led()
            .iter()
            .map(|&k| i32::try_from(k).unwrap_or(i32::MAX))
            .collect()
    }

    fn set_target(&self, t: u32) {
        self.inner.target.send_if_modified(|old| {
            let changed = *old != t;
            *old = t;
            changed
        });
        metrics::gauge!("notifyd_relay_partitions_target").set(f64::from(t));
    }

    /// The heartbeat, until `shutdown`: then this relay's row is deleted (bounded), so the others
    /// take its partitions without waiting out `LIVE_FOR`.
    pub async fn run(self, settings: Settings, mut shutdown: watch::Receiver<bool>) {
        let t = settings.relay_db_timeout;
        let limits = db::Limits::from_settings(&settings);
        let mut conn: Option<AsyncPgConnection> = None;
        let mut last_beat = Instant::now();
        let mut last_forget: Option<Instant> = None;
        loop {
            match self.beat(&settings, &limits, &mut conn, t).await {
                Ok(()) => last_beat = Instant::now(),
                Err(e) => {
                    conn = None;
                    tracing::warn!(error = %format!("{e:#}"), "relay heartbeat failed");
                    if last_beat.elapsed() >= LIVE_FOR {
                        // Blind: try every partition, the locks still keep one leader each.
                        self.set_target(self.inner.partitions);
                    }
                }
            }
            if let Some(c) = conn.as_mut() {
                if last_forget.is_none_or(|f| f.elapsed() >= FORGET_EVERY) {
                    last_forget = Some(Instant::now());
                    let gone = relay_node::prune(c, FORGET_AFTER.as_secs_f64());
                    match tokio::time::timeout(t, gone).await {
                        Ok(Ok(_)) => {}
                        _ => conn = None,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        let leave = async {
            let mut c = match conn {
                Some(c) => c,
                None => db::connect(settings.direct_database_url(), &limits).await?,
            };
            relay_node::leave(&mut c, self.id()).await?;
            anyhow::Ok(())
        };
        if let Err(e) = tokio::time::timeout(t, leave)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            tracing::debug!(error = %format!("{e:#}"), "relay could not delete its heartbeat row; it expires");
        }
    }

    async fn beat(
        &self,
        settings: &Settings,
        limits: &db::Limits,
        conn: &mut Option<AsyncPgConnection>,
        t: Duration,
    ) -> anyhow::Result<()> {
        if conn.is_none() {
            let mut c = db::connect(settings.direct_database_url(), limits).await?;
            let name = format!("notifyd heartbeat {}", settings.node_id);
            crate::timed::timed(
                t,
                "naming the heartbeat session",
                || {},
                session::set_name(&mut c, &name),
            )
            .await?;
            *conn = Some(c);
        }
        let Some(c) = conn.as_mut() else {
            anyhow::bail!("no heartbeat connection");
        };
        let partitions = i32::try_from(self.inner.partitions).unwrap_or(i32::MAX);
        let led = self.led_list();
        let live = crate::timed::timed(
            t,
            "the relay heartbeat",
            || metrics::counter!("notifyd_relay_db_timeouts_total").increment(1),
            relay_node::beat(c, self.id(), partitions, &led, LIVE_FOR.as_secs_f64()),
        )
        .await?;
        metrics::gauge!("notifyd_relay_live").set(live.len() as f64);
        self.set_target(target(
            self.inner.partitions,
            live.len(),
            rank(live, self.id()),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_add_up_to_the_partitions_and_differ_by_at_most_one() {
        for n in 1..=16u32 {
            for live in 1..=8usize {
                let ts: Vec<u32> = (0..live).map(|r| target(n, live, r)).collect();
                assert_eq!(ts.iter().sum::<u32>(), n, "n={n} live={live}: {ts:?}");
                let ceil = n.div_ceil(live as u32);
                assert!(
                    ts.iter().all(|&t| t <= ceil && t >= n / live as u32),
                    "{ts:?}"
                );
            }
        }
        assert_eq!(
            (0..3).map(|r| target(4, 3, r)).collect::<Vec<_>>(),
            [2, 1, 1]
        );
    }

    #[test]
    fn relays_that_lead_more_rank_first_so_a_joining_relay_takes_nothing_it_need_not() {
        let live = |v: &[(&str, i32)]| {
            v.iter()
                .map(|(id, led)| relay_node::Live {
                    id: id.to_string(),
                    led: *led,
                })
                .collect::<Vec<_>>()
        };
        // One partition led by "b"; "a" joins: "b" keeps it.
        let l = live(&[("a", 0), ("b", 1)]);
        assert_eq!(target(1, 2, rank(l.clone(), "b")), 1);
        assert_eq!(target(1, 2, rank(l, "a")), 0);
        // 2 + 2, a third joins: one of the two gives one up, the first by id keeps 2.
        let l = live(&[("c", 0), ("a", 2), ("b", 2)]);
        let ts: Vec<u32> = ["a", "b", "c"]
            .iter()
            .map(|me| target(4, 3, rank(l.clone(), me)))
            .collect();
        assert_eq!(ts, [2, 1, 1]);
    }

    #[test]
    fn stand_bys_never_reserve_past_the_target_and_surplus_is_released_one_by_one() {
        let s = Share::new("n", 4);
        assert!(!s.reserve(), "nothing before the first heartbeat");
        s.set_target(4);
        assert!((0..4).all(|_| s.reserve()));
        assert!(!s.reserve());
        s.set_target(2);
        assert!(s.release_surplus());
        assert!(s.release_surplus());
        assert!(!s.release_surplus(), "down to the target");
        assert!(!s.reserve());
        s.unreserve();
        assert!(s.reserve());
    }
}
