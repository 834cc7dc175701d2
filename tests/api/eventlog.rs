//! The event log (`user_event`) is partitioned by range of `created_at`, one partition per UTC
//! day: partitions exist ahead of the writes, expired days are dropped whole, rows written while
//! no partition covered their time are moved out of the DEFAULT partition, and reads see one
//! gap-free stream across partitions.

use std::time::Duration;

use chrono::{DateTime, Duration as Days, Utc};
use diesel_async::AsyncPgConnection;
use notifyd::outbox::housekeeping::{maintain_event_log, slot_of};
use notifyd::store::event_partitions::{self, name_for};

use crate::helpers::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The name of the day partition holding `t`.
fn day_partition(t: DateTime<Utc>) -> String {
    name_for(slot_of(t, DAY).0)
}

async fn partition_names(c: &mut AsyncPgConnection) -> Vec<String> {
    event_partitions::list(c)
        .await
        .expect("list partitions")
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Which table each of the user's events is stored in, by seq.
async fn where_stored(db_url: &str, user: &str) -> Vec<(i64, String)> {
    query_json(
        db_url,
        &format!(
            "SELECT seq, tableoid::regclass::text AS t FROM user_event \
             WHERE user_id = '{user}' ORDER BY seq"
        ),
    )
    .await
    .iter()
    .map(|r| {
        (
            r["seq"].as_i64().expect("seq"),
            r["t"].as_str().expect("t").to_string(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_todays_partition_and_the_next_days_exist_from_start_up() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let now = Utc::now();
    let mut c = db.conn().await;
    let names = partition_names(&mut c).await;
    for d in 0..=2 {
        let want = day_partition(now + Days::days(d));
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let u = new_user();
    app.send(&u, "one").await;
    app.send(&u, "two").await;
    let today = day_partition(Utc::now());
    assert_eq!(
        where_stored(&db.url, &u).await,
        vec![(1, today.clone()), (2, today)]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_housekeeper_creates_partitions_ahead_as_the_days_pass() {
    let db = TestDb::new().await;
    notifyd::db::migrate(&db.url).await.expect("migrate");
    let settings = settings_for(&db.url, &Opts::default());
    let mut c = db.conn().await;
    let later = Utc::now() + Days::days(10);
    let round = maintain_event_log(&mut c, &settings, later)
        .await
        .expect("round");
    assert_eq!(round.created, 3, "{round:?}");
    let names = partition_names(&mut c).await;
    for d in 0..=2 {
        let want = day_partition(later + Days::days(d));
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // A second round at the same time has nothing to do.
    let again = maintain_event_log(&mut c, &settings, later)
        .await
        .expect("round");
    assert_eq!((again.created, again.dropped), (0, 0));
    // Ranges are whole UTC days.
    for p in event_partitions::list(&mut c).await.expect("list") {
        assert_eq!(p.to - p.from, Days::days(1), "{p:?}");
        assert_eq!(p.from.timestamp() % 86_400, 0, "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_past_retention_is_dropped_whole_and_late_rows_leave_the_default_partition() {
    let db = TestDb::new().await;
    notifyd::db::migrate(&db.url).await.expect("migrate");
    let mut c = db.conn().await;
    // Events 9 days old (past the 7-day retention) and 3 days old: no partition covers either
    // day, so they land in the DEFAULT partition, as when the housekeeper was down.
    let nine = Utc::now() - Days::days(9);
    let three = Utc::now() - Days::days(3);
    for (user, at) in [("old", nine), ("recent", three)] {
        diesel_async::RunQueryDsl::execute(
            diesel::sql_query(format!(
                "INSERT INTO user_event (user_id, seq, created_at, payload) \
                 SELECT '{user}', g, '{}'::timestamptz, '{{\"type\":\"x\"}}' \
                 FROM generate_series(1, 1000) g",
                at.to_rfc3339()
            )),
            &mut c,
        )
        .await
        .expect("insert");
    }
    assert_eq!(
        count_rows(&db.url, event_partitions::DEFAULT_PARTITION).await,
        2000
    );
    // A housekeeper whose clock says it is 9 days ago moves the old rows into their own day.
    let settings = settings_for(&db.url, &Opts::default());
    let then = maintain_event_log(&mut c, &settings, nine)
        .await
        .expect("round");
    assert!(then.moved >= 1000, "{then:?}");
    assert!(where_stored(&db.url, "old")
        .await
        .iter()
        .all(|(_, t)| *t == day_partition(nine)));

    // Today's housekeeper (the node's own, every second) drops that whole day and moves the
    // 3-day-old rows, still within retention, into a partition of their own.
    let app = spawn_app_with(&db, Opts::default(), |s| {
        s.housekeeping_interval = Duration::from_secs(1);
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the expired day dropped",
        || async {
            let names = partition_names(&mut db.conn().await).await;
            (!names.contains(&day_partition(nine))).then_some(())
        },
    )
    .await;
    assert_eq!(
        scalar_i64(
            &db.url,
            "SELECT count(*) AS v FROM user_event WHERE user_id = 'old'"
        )
        .await,
        0
    );
    eventually(Duration::from_secs(30), "the late rows moved", || async {
        let stored = where_stored(&db.url, "recent").await;
        (stored.len() == 1000 && stored.iter().all(|(_, t)| *t == day_partition(three)))
            .then_some(())
    })
    .await;
    assert_eq!(
        count_rows(&db.url, event_partitions::DEFAULT_PARTITION).await,
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_across_a_day_boundary_is_one_gap_free_stream() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    for i in 1..=5 {
        app.send(&u, &format!("yesterday {i}")).await;
    }
    // Yesterday's partition, then those five events move into it (an UPDATE of the partition
    // key moves rows between partitions), as if they had been written a day ago.
    let yesterday = Utc::now() - Days::days(1);
    let mut c = db.conn().await;
    let settings = settings_for(&db.url, &Opts::default());
    maintain_event_log(&mut c, &settings, yesterday)
        .await
        .expect("round");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "UPDATE user_event SET created_at = created_at - interval '1 day' WHERE user_id = '{u}'"
        )),
        &mut c,
    )
    .await
    .expect("backdate");
    for i in 6..=10 {
        app.send(&u, &format!("today {i}")).await;
    }
    let stored = where_stored(&db.url, &u).await;
    let days: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        days,
        [
            vec![day_partition(yesterday).as_str(); 5],
            vec![day_partition(Utc::now()).as_str(); 5]
        ]
        .concat(),
        "seqs 1-5 yesterday, 6-10 today"
    );

    // GET /me/changes from seq 2: 3..=10 in order, none missing.
    let changes = app.user_json(&u, "/api/v1/me/changes?since=2").await;
    let seqs: Vec<i64> = changes["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (3..=10).collect::<Vec<_>>());
    // The WebSocket resume reads the same stream (once every live frame was published, so
    // none of them can arrive in the middle of it).
    eventually(Duration::from_secs(10), "the outbox published", || async {
        (count_rows(&db.url, "outbox").await == 0).then_some(())
    })
    .await;
    let mut client = app.ws(&u, Some(2)).await;
    client.next_of("hello", Duration::from_secs(10)).await;
    let resumed = client.resumed_events(10, Duration::from_secs(10)).await;
    assert_eq!(seqs_of(&resumed), (3..=10).collect::<Vec<_>>());
    app.stop().await;
}

/// Inserts 100 events for `user` created at `at` (they land wherever the partitions say).
async fn insert_events_at(c: &mut AsyncPgConnection, user: &str, at: DateTime<Utc>) {
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "INSERT INTO user_event (user_id, seq, created_at, payload) \
             SELECT '{user}', g, '{}'::timestamptz, '{{\"type\":\"x\"}}' \
             FROM generate_series(1, 100) g",
            at.to_rfc3339()
        )),
        c,
    )
    .await
    .expect("insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_behind_a_long_reader_gives_up_quickly_and_writers_are_not_held() {
    let db = TestDb::new().await;
    notifyd::db::migrate(&db.url).await.expect("migrate");
    let settings = settings_for(&db.url, &Opts::default());
    let mut hk = db.conn().await;
    let nine = Utc::now() - Days::days(9);
    maintain_event_log(&mut hk, &settings, nine)
        .await
        .expect("round");
    insert_events_at(&mut hk, "old", nine).await;
    // Today's partitions exist (as after start-up), so the round below only has the DROP to do.
    notifyd::outbox::housekeeping::create_partitions_ahead(&settings)
        .await
        .expect("partitions ahead");

    // A reader in a long transaction holds a lock on every partition of the log.
    let mut reader = db.conn().await;
    for sql in ["BEGIN", "SELECT count(*) FROM user_event"] {
        diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut reader)
            .await
            .expect(sql);
    }
    // The DROP waits for it, gives up after its lock timeout, and the round goes on.
    let writer_url = db.url.clone();
    let writes = tokio::spawn(async move {
        // Writes issued while the DROP is queued: each waits at most the lock timeout.
        let mut w = <AsyncPgConnection as diesel_async::AsyncConnection>::establish(&writer_url)
            .await
            .expect("conn");
        for i in 0..20 {
            diesel_async::RunQueryDsl::execute(
                diesel::sql_query(format!(
                    "INSERT INTO user_event (user_id, seq, payload) VALUES ('w', {i}, '{{}}')"
                )),
                &mut w,
            )
            .await
            .expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // "Quickly" and "not held", told without a stopwatch: the reader keeps its lock until after
    // both have ended, so a DROP that waited for it, or writes queued behind such a DROP, would
    // never end; the generous deadlines only turn that hang into a failure.
    let round = tokio::time::timeout(
        Duration::from_secs(60),
        maintain_event_log(&mut hk, &settings, Utc::now()),
    )
    .await
    .expect("the round waited for the reader's lock")
    .expect("a refused DROP does not fail the round");
    assert_eq!(round.dropped, 0, "{round:?}");
    tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("writes were held behind the DROP until the reader ended")
        .expect("writer");
    assert!(partition_names(&mut hk)
        .await
        .contains(&day_partition(nine)));

    // Once the reader is done, the next round drops the expired day.
    diesel_async::RunQueryDsl::execute(diesel::sql_query("COMMIT"), &mut reader)
        .await
        .expect("commit");
    let round = maintain_event_log(&mut hk, &settings, Utc::now())
        .await
        .expect("round");
    // The round 9 days ago created days -9, -8 and -7: the first two have wholly expired.
    assert_eq!(round.dropped, 2, "{round:?}");
    let names = partition_names(&mut hk).await;
    assert!(!names.contains(&day_partition(nine)));
    assert!(names.contains(&day_partition(nine + Days::days(2))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_carries_existing_events_into_day_partitions() {
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_migrations::MigrationHarness;
    let db = TestDb::new().await;
    // Every migration before the partitioning one, then events in the plain table.
    let conn = db.conn().await;
    tokio::task::spawn_blocking(move || {
        let mut w: AsyncConnectionWrapper<AsyncPgConnection> = AsyncConnectionWrapper::from(conn);
        let pending = w
            .pending_migrations(notifyd::db::MIGRATIONS)
            .expect("pending");
        for m in pending
            .iter()
            .take_while(|m| m.name().to_string().as_str() < "2026-12-02-000001")
        {
            w.run_migration(m.as_ref()).expect("migration");
        }
    })
    .await
    .expect("migrations");
    let mut c = db.conn().await;
    let two_days_ago = Utc::now() - Days::days(2);
    insert_events_at(&mut c, "a", two_days_ago).await;
    insert_events_at(&mut c, "b", Utc::now()).await;
    notifyd::db::migrate(&db.url).await.expect("the rest");
    assert_eq!(
        where_stored(&db.url, "a").await,
        (1..=100)
            .map(|s| (s, day_partition(two_days_ago)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        where_stored(&db.url, "b").await,
        (1..=100)
            .map(|s| (s, day_partition(Utc::now())))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count_rows(&db.url, event_partitions::DEFAULT_PARTITION).await,
        0
    );
}
