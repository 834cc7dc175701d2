//! notifyd on a TLS-only Redis Cluster (contract §11: `rediss+cluster://`, the private CA in
//! `NOTIFYD_REDIS_CA_FILE` as for `rediss://`). The cluster takes TLS only: clients, replication
//! and the cluster bus (`port 0`, `tls-port`, `tls-cluster yes`, `tls-replication yes`), its
//! nodes' certificate from a CA of its own naming `localhost` (the seeds given) and `127.0.0.1`
//! (the address the nodes announce, which the client connects to for every node it discovers).
//! The delivery and master-kill checks of redis_cluster.rs run against it, and a CA that did not
//! sign the nodes' certificate stops start-up with the reason.
//!
//! scripts/redis-cluster-test.sh starts the cluster and runs these with `--ignored`, naming its
//! seeds in `NOTIFYD_TEST_REDIS_TLS_CLUSTER`, its directory in
//! `NOTIFYD_TEST_REDIS_TLS_CLUSTER_DIR`, the CA in `NOTIFYD_TEST_REDIS_TLS_CLUSTER_CA` and an
//! unrelated CA in `NOTIFYD_TEST_REDIS_TLS_CLUSTER_WRONG_CA`. (The module's name contains
//! neither `tls::` nor `redis_cluster::`, the filters scripts/tls-pooler-test.sh and the plain
//! cluster's run use: a `redis_cluster_tls` module was picked up by the first.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::redis_cluster::{env, Cluster};

fn tls_cluster() -> Cluster {
    Cluster {
        seeds: env("NOTIFYD_TEST_REDIS_TLS_CLUSTER"),
        dir: env("NOTIFYD_TEST_REDIS_TLS_CLUSTER_DIR"),
        ca: Some(env("NOTIFYD_TEST_REDIS_TLS_CLUSTER_CA").into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a TLS Redis Cluster: scripts/redis-cluster-test.sh"]
async fn user_and_topic_events_cross_nodes_over_tls() {
    crate::redis_cluster::events_cross_nodes_and_presence_is_shared(&tls_cluster()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a TLS Redis Cluster it may kill a master of: scripts/redis-cluster-test.sh"]
async fn a_master_killed_under_load_over_tls_loses_no_user_event() {
    crate::redis_cluster::a_master_killed_under_load_loses_no_user_event_on(&tls_cluster()).await;
}

/// Start-up with `REDIS_URL` and `NOTIFYD_REDIS_CA_FILE` = `ca`, which must be refused: the
/// error, once it came (at most 20 s: not a hang), and how long it took.
async fn refused_start_up(url: String, ca: Option<PathBuf>) -> (String, Duration) {
    let db = TestDb::new().await;
    let mut s = settings_for(&db.url, &Opts::default());
    s.redis_url = Some(url);
    s.redis_ca_file = ca;
    let started = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        notifyd::startup::Application::build(s, None),
    )
    .await
    .expect("start-up must not hang")
    .err()
    .expect("start-up refused");
    (format!("{e:#}"), started.elapsed())
}

/// Another CA, or none (the system store, which does not hold the test CA): start-up stops at
/// once with the reason, as for a single `rediss://` server (tests/api/tls.rs), not a hang and
/// not a node that starts and retries forever. Also (with the wrong CA) when another seed fails
/// otherwise, and last: here one that takes TCP connections and never answers (the cluster
/// client reports the last of its seeds' errors, which would be that seed's timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a TLS Redis Cluster: scripts/redis-cluster-test.sh"]
async fn a_wrong_ca_stops_start_up_with_the_reason() {
    let cluster = tls_cluster();
    let wrong = env("NOTIFYD_TEST_REDIS_TLS_CLUSTER_WRONG_CA");
    // Kept open to the end: the kernel accepts connections into its backlog, nothing reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let with_a_silent_seed = Cluster {
        seeds: format!("{},localhost:{silent_port}", cluster.seeds),
        ..tls_cluster()
    };
    // The silent seed costs each start-up the connect timeout (5 s): once is enough.
    let cases: [(&Cluster, Option<PathBuf>); 3] = [
        (&cluster, Some(wrong.clone().into())),
        (&cluster, None),
        (&with_a_silent_seed, Some(wrong.into())),
    ];
    for (c, ca) in cases {
        let (e, took) = refused_start_up(c.url(), ca.clone()).await;
        assert!(
            e.contains("Redis over TLS") && e.contains("UnknownIssuer"),
            "{} {ca:?}: {e}",
            c.seeds
        );
        assert!(
            took < Duration::from_secs(12),
            "{} {ca:?}: refused after {took:?}",
            c.seeds
        );
    }
    drop(silent);
}

/// The right CA, but node certificates that name `localhost` (the seeds' host) and not
/// `127.0.0.1` (the address the nodes announce, where the client connects to every master it
/// discovers): start-up stops with the reason, instead of a node that starts, connects to its
/// seeds, and fails on the announced addresses for as long as it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a TLS Redis Cluster: scripts/redis-cluster-test.sh"]
async fn node_certificates_without_the_announced_address_stop_start_up_with_the_reason() {
    let cluster = Cluster {
        seeds: env("NOTIFYD_TEST_REDIS_TLS_CLUSTER_MISNAMED"),
        ..tls_cluster()
    };
    let (e, took) = refused_start_up(cluster.url(), cluster.ca.clone()).await;
    assert!(
        e.contains("Redis over TLS") && e.contains("not valid for name \"127.0.0.1\""),
        "{e}"
    );
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
}
