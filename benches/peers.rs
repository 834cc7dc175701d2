//! Side-by-side benchmark with the peers (issue 10, item 1): notifyd, the Socket.IO peer
//! (`../shared/peers/socketio`) and NATS's WebSocket server run in ONE run on the same scenarios,
//! driven by the same client code, and the ratios go into docs/benchmarks.md (section
//! `peers`), with the latency distributions in docs/bench-latency.csv and plotted in
//! docs/bench-latency.svg:
//! 1. server RSS per idle WebSocket at 5,000 and 19,000 sockets (held by child processes of this
//!    binary, each under the 20,000 open-files limit, each from its own 127.0.0.x);
//! 2. send → frame latency of single-message POSTs at 200 and 1,000 msg/s (notifyd vs Socket.IO);
//! 3. one topic → 10,000 subscribers, frames/s in a steady phase and a burst (notifyd vs NATS vs
//!    Socket.IO).
//!
//! Needs a release binary (`cargo build --release`), PostgreSQL, Redis, node/npm (Socket.IO) and
//! pip + unzip (NATS); a peer that cannot be set up is skipped and the report says so. Peers are
//! installed under target/peers/ (cached). `NOTIFYD_PEERS_DIR` overrides `../shared/peers`.
//!
//! Run: `cargo bench --bench peers`. Quick run: `BENCH_PEERS_SMALL=1` (500 sockets, 3 s phases;
//! the doc is then not written unless BENCH_WRITE_DOC=1). Sizes (env): BENCH_PEERS_MEM
//! ("5000,19000"), BENCH_PEERS_RATES ("200,1000"), BENCH_PEERS_LAT_SECS (15), BENCH_PEERS_WARM_SECS
//! (3), BENCH_PEERS_USERS (100), BENCH_PEERS_FANOUT_CONNS (10000), BENCH_PEERS_FANOUT_RATE (20),
//! BENCH_PEERS_FANOUT_SECS (10), BENCH_PEERS_BURST (100), BENCH_PEERS_SETTLE_SECS (4),
//! BENCH_PEERS_ONLY (comma list of memory,latency,fanout), BENCH_PEERS_CROSS_NODE=1 (also
//! notifyd's latency with the POSTs sent to a second node: printed, not written). Timing never
//! fails the run.

mod support;

#[path = "peers/client.rs"]
mod client;
#[path = "peers/report.rs"]
mod report;
#[path = "peers/scenarios.rs"]
mod scenarios;
#[path = "peers/setup.rs"]
mod setup;

use std::path::PathBuf;
use std::time::Duration;

use support::{env_num, BenchDb};

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var(scenarios::HOLD_KIND).is_ok() {
        return rt.block_on(scenarios::hold());
    }
    rt.block_on(bench())
}

fn env_list(k: &str, d: &str) -> Vec<u64> {
    std::env::var(k)
        .unwrap_or_else(|_| d.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn version(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

struct Config {
    small: bool,
    sizes: Vec<usize>,
    rates: Vec<u64>,
    /// BENCH_PEERS_CROSS_NODE=1: notifyd's latency also with the POSTs on a second node.
    cross_node: bool,
    lat_secs: u64,
    warm_secs: u64,
    users: usize,
    fan_conns: usize,
    fan_rate: u64,
    fan_secs: u64,
    burst: u64,
    settle: Duration,
    only: Vec<String>,
}

impl Config {
    fn from_env() -> Config {
        let small = std::env::var("BENCH_PEERS_SMALL").is_ok_and(|v| v == "1");
        let pick = |big: u64, little: u64| if small { little } else { big };
        Config {
            small,
            sizes: env_list(
                "BENCH_PEERS_MEM",
                if small { "500,1000" } else { "5000,19000" },
            )
            .into_iter()
            .map(|v| v as usize)
            .collect(),
            rates: env_list("BENCH_PEERS_RATES", "200,1000"),
            cross_node: std::env::var("BENCH_PEERS_CROSS_NODE").as_deref() == Ok("1"),
            lat_secs: env_num("BENCH_PEERS_LAT_SECS", pick(15, 3)),
            warm_secs: env_num("BENCH_PEERS_WARM_SECS", pick(3, 1)),
            users: env_num("BENCH_PEERS_USERS", 100) as usize,
            fan_conns: env_num("BENCH_PEERS_FANOUT_CONNS", pick(10_000, 500)) as usize,
            fan_rate: env_num("BENCH_PEERS_FANOUT_RATE", 20).max(1),
            fan_secs: env_num("BENCH_PEERS_FANOUT_SECS", pick(10, 3)),
            burst: env_num("BENCH_PEERS_BURST", 100),
            settle: Duration::from_secs(env_num("BENCH_PEERS_SETTLE_SECS", pick(4, 2))),
            only: std::env::var("BENCH_PEERS_ONLY")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
        }
    }

    fn runs(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

async fn bench() -> anyhow::Result<()> {
    let cfg = Config::from_env();
    let bin = support::notifyd_bin()?;
    let mut r = report::Results {
        small: cfg.small,
        load: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        ..Default::default()
    };

    println!("0/3 setting up the peers under target/peers/");
    let sio_dir = match setup::setup_socketio() {
        Ok(d) => Some(d),
        Err(e) => {
            println!("    Socket.IO peer skipped: {e:#}");
            r.skipped.push(format!(
                "the Socket.IO peer could not be set up ({e:#}): its rows are empty."
            ));
            None
        }
    };
    let nats_bin = match setup::setup_nats() {
        Ok(b) => Some(b),
        Err(e) => {
            println!("    NATS skipped: {e:#}");
            r.skipped.push(format!(
                "NATS could not be set up ({e:#}): its rows are empty."
            ));
            None
        }
    };
    r.versions = format!(
        "node {}, {}",
        version("node", &["--version"]),
        nats_bin
            .as_ref()
            .map(|b| version(&b.to_string_lossy(), &["--version"]))
            .unwrap_or_else(|| "no nats-server".into())
    );

    let db = BenchDb::create("peers").await?;
    let sio_db = BenchDb::create("peersio").await?;
    let prefix = format!("benchpeers{}:", std::process::id());
    let outcome = scenarios_all(
        &cfg,
        &bin,
        &db.url,
        &sio_db.url,
        &prefix,
        sio_dir,
        nats_bin,
        &mut r,
    )
    .await;
    let _ = db.drop_db().await;
    let _ = sio_db.drop_db().await;
    outcome?;

    let section = report::section(&r, &cfg.sizes, &cfg.rates);
    println!("{section}");
    for (who, l) in &r.lat {
        let raw: String = l.us.iter().map(|v| format!("{v}\n")).collect();
        let _ = std::fs::write(format!("target/peers/latency-{who}-{}.us", l.rate), raw);
    }
    let write = match std::env::var("BENCH_WRITE_DOC").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !cfg.small,
    };
    if write {
        support::write_marked("docs/benchmarks.md", report::BEGIN, report::END, &section)?;
        support::summary_rows("10-peers", &report::summary(&r, &cfg.sizes, &cfg.rates))?;
        if !r.lat.is_empty() {
            std::fs::write("docs/bench-latency.csv", report::csv(&r.lat))?;
            std::fs::write("docs/bench-latency.svg", report::svg(&r.lat))?;
        }
        println!("wrote the peers section of docs/benchmarks.md, docs/bench-latency.csv and .svg");
    } else {
        let _ = std::fs::write("target/peers/bench-latency.svg", report::svg(&r.lat));
        println!("(docs not written: a small run; BENCH_WRITE_DOC=1 forces it; plot in target/peers/bench-latency.svg)");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn scenarios_all(
    cfg: &Config,
    bin: &str,
    db: &str,
    sio_db: &str,
    prefix: &str,
    sio_dir: Option<PathBuf>,
    nats_bin: Option<PathBuf>,
    r: &mut report::Results,
) -> anyhow::Result<()> {
    // Each scenario starts each server afresh, so one's leftovers never weigh on the next.
    if cfg.runs("memory") {
        println!("1/3 RSS per idle WebSocket at {:?} sockets", cfg.sizes);
        let s = setup::start_notifyd(bin, db, prefix).await?;
        r.mem.push((
            "notifyd",
            scenarios::memory(&s, &cfg.sizes, cfg.settle).await?,
        ));
        drop(s);
        if let Some(dir) = &sio_dir {
            let s = setup::start_socketio(dir, sio_db).await?;
            r.mem.push((
                "socketio",
                scenarios::memory(&s, &cfg.sizes, cfg.settle).await?,
            ));
        }
        if let Some(nb) = &nats_bin {
            let s = setup::start_nats(nb).await?;
            r.mem
                .push(("nats", scenarios::memory(&s, &cfg.sizes, cfg.settle).await?));
        }
    }
    if cfg.runs("latency") {
        for &rate in &cfg.rates {
            println!(
                "2/3 send → frame latency at {rate} msg/s: {} s warm-up, {} s measured, {} users",
                cfg.warm_secs, cfg.lat_secs, cfg.users
            );
            let s = setup::start_notifyd(bin, db, prefix).await?;
            let l =
                scenarios::latency(&s, None, cfg.users, rate, cfg.warm_secs, cfg.lat_secs).await?;
            print_lat("notifyd", &l);
            r.lat.push(("notifyd", l));
            if cfg.cross_node {
                // The sockets stay on the first node; the POSTs go to a second one, so every
                // frame travels commit → relay → Redis → the first node's hub. Printed only.
                let other = setup::start_notifyd(bin, db, prefix).await?;
                let l = scenarios::latency(
                    &s,
                    Some(&other.http),
                    cfg.users,
                    rate,
                    cfg.warm_secs,
                    cfg.lat_secs,
                )
                .await?;
                print_lat("notifyd, POSTs to another node", &l);
            }
            drop(s);
            if let Some(dir) = &sio_dir {
                let s = setup::start_socketio(dir, sio_db).await?;
                let l = scenarios::latency(&s, None, cfg.users, rate, cfg.warm_secs, cfg.lat_secs)
                    .await?;
                print_lat("socketio", &l);
                r.lat.push(("socketio", l));
            }
        }
    }
    if cfg.runs("fanout") {
        println!(
            "3/3 one topic → {} subscribers: {} events/s for {} s, then {} at once",
            cfg.fan_conns, cfg.fan_rate, cfg.fan_secs, cfg.burst
        );
        let s = setup::start_notifyd(bin, db, prefix).await?;
        let f = scenarios::fanout(&s, cfg.fan_conns, cfg.fan_rate, cfg.fan_secs, cfg.burst).await?;
        print_fan("notifyd", &f);
        r.fan.push(("notifyd", f));
        drop(s);
        if let Some(nb) = &nats_bin {
            let s = setup::start_nats(nb).await?;
            let f =
                scenarios::fanout(&s, cfg.fan_conns, cfg.fan_rate, cfg.fan_secs, cfg.burst).await?;
            print_fan("nats", &f);
            r.fan.push(("nats", f));
        }
        if let Some(dir) = &sio_dir {
            let s = setup::start_socketio(dir, sio_db).await?;
            let f =
                scenarios::fanout(&s, cfg.fan_conns, cfg.fan_rate, cfg.fan_secs, cfg.burst).await?;
            print_fan("socketio", &f);
            r.fan.push(("socketio", f));
        }
    }
    Ok(())
}

fn print_lat(who: &str, l: &scenarios::Latency) {
    println!(
        "    {who}: {} of {} frames (POST errors {}), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        l.us.len(),
        l.sent,
        l.post_errors,
        scenarios::percentile(&l.us, 0.5),
        scenarios::percentile(&l.us, 0.9),
        scenarios::percentile(&l.us, 0.99)
    );
}

fn print_fan(who: &str, f: &scenarios::Fanout) {
    for (name, p) in [("steady", &f.steady), ("burst", &f.burst)] {
        println!(
            "    {who} {name}: {} of {} frames, {:.0} frames/s, p50 {:.1} ms, p99 {:.1} ms",
            p.delivered,
            p.events * f.conns as u64,
            p.fps(),
            p.p50_ms,
            p.p99_ms
        );
    }
}
