//! The report: this bench's section of docs/benchmarks.md (between its own markers), the latency
//! distributions (docs/bench-latency.csv) and their plot (docs/bench-latency.svg).

use std::fmt::Write as _;

use crate::scenarios::{percentile, Fanout, Latency, MemPoint};

pub const BEGIN: &str = "<!-- peers:begin -->";
pub const END: &str = "<!-- peers:end -->";

/// What one run measured; `None` = that server did not run (the reason is in `skipped`).
#[derive(Default)]
pub struct Results {
    pub mem: Vec<(&'static str, Vec<MemPoint>)>,
    /// (server, latency) for each rate.
    pub lat: Vec<(&'static str, Latency)>,
    pub fan: Vec<(&'static str, Fanout)>,
    pub skipped: Vec<String>,
    pub load: String,
    /// node and nats-server versions.
    pub versions: String,
    pub small: bool,
}

fn mem_at<'a>(r: &'a Results, who: &str, n: usize) -> Option<&'a MemPoint> {
    r.mem
        .iter()
        .find(|(w, _)| *w == who)
        .and_then(|(_, p)| p.iter().find(|p| p.target_n == n))
}

fn lat_at<'a>(r: &'a Results, who: &str, rate: u64) -> Option<&'a Latency> {
    r.lat
        .iter()
        .find(|(w, l)| *w == who && l.rate == rate)
        .map(|(_, l)| l)
}

fn fan_of<'a>(r: &'a Results, who: &str) -> Option<&'a Fanout> {
    r.fan.iter().find(|(w, _)| *w == who).map(|(_, f)| f)
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

fn lat_ms(l: &Latency) -> (f64, f64, f64, f64) {
    (
        percentile(&l.us, 0.50),
        percentile(&l.us, 0.90),
        percentile(&l.us, 0.99),
        l.us.last().map(|v| *v as f64 / 1000.0).unwrap_or(f64::NAN),
    )
}

pub fn section(r: &Results, sizes: &[usize], rates: &[u64]) -> String {
    let m = crate::support::machine();
    let mut s = String::new();
    let _ = write!(
        s,
        "{BEGIN}\n## Side by side with the peers (issue 10)\n\n\
Written by `cargo bench --bench peers` (benches/peers.rs; `scripts/bench.sh` regenerates the whole\n\
page) on {date}, commit `{commit}`{small}. notifyd (release build, relay inside `serve`, Redis\n\
pub/sub, pool 32), the Socket.IO peer (`../shared/peers/socketio`: Socket.IO 4 + Redis adapter +\n\
`pg`, save-then-emit, no outbox) and NATS (WebSocket listener, a broker-grade fan-out\n\
ceiling) ran one after the other in this one run, each its own process, driven by the same client\n\
code (benches/peers/client.rs); {versions}. Machine: {cpu}, {cores} cores, {mem}; {pg}; Redis {redis}. Load\n\
average when the run began: {load}; the servers, PostgreSQL, Redis and the load client share the\n\
cores, so read the ratios.\n\n",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        commit = crate::support::git_commit(),
        small = if r.small {
            " (**BENCH_PEERS_SMALL=1: a quick run, smaller sizes than the goals name**)"
        } else {
            ""
        },
        versions = r.versions,
        cpu = m.cpu,
        cores = m.cores,
        mem = m.mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        pg = m.pg,
        redis = m
            .redis
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or("?"),
        load = r.load,
    );
    for why in &r.skipped {
        let _ = writeln!(s, "**Skipped:** {why}\n");
    }

    // The summary: one row per goal of the table.
    s.push_str(
        "| figure | notifyd | peer | ratio | goal (issue 10) | met? |\n|---|---|---|---|---|---|\n",
    );
    s.push_str(&summary(r, sizes, rates));
    s.push('\n');
    for n in saturation_notes(r) {
        let _ = writeln!(s, "{n}\n");
    }
    details(&mut s, r);
    s.push_str(END);
    s.push('\n');
    s
}

/// One row per goal of issue 10's table that this bench measures (also the rows this bench
/// gives the table at the top of the page, see `support::summary_rows`).
pub fn summary(r: &Results, sizes: &[usize], rates: &[u64]) -> String {
    let mut s = String::new();
    for &n in sizes {
        let nd = mem_at(r, "notifyd", n).map(|p| p.kib_per_socket());
        let sio = mem_at(r, "socketio", n).map(|p| p.kib_per_socket());
        let nats = mem_at(r, "nats", n).map(|p| p.kib_per_socket());
        let ok = match (nd, sio) {
            (Some(a), Some(b)) => Some(a <= 10.0 && a < b),
            (Some(a), None) => Some(a <= 10.0).filter(|ok| !ok),
            _ => None,
        };
        let _ = writeln!(
            s,
            "| RSS per idle WebSocket, {n} sockets | {} KiB | Socket.IO {} KiB, NATS {} KiB | {}× Socket.IO, {}× NATS | ≤ 10 KiB and below Socket.IO | {} |",
            opt(nd, 1),
            opt(sio, 1),
            opt(nats, 1),
            opt(nd.zip(sio).map(|(a, b)| a / b), 2),
            opt(nd.zip(nats).map(|(a, b)| a / b), 2),
            met(ok)
        );
    }
    for &rate in rates {
        let nd = lat_at(r, "notifyd", rate).map(lat_ms);
        let sio = lat_at(r, "socketio", rate).map(lat_ms);
        let ratio = nd.zip(sio).map(|(a, b)| a.0 / b.0);
        let p99_goal = rate >= 1000;
        let ok = match (nd, ratio) {
            (Some(a), Some(q)) => Some(q <= 2.0 && (!p99_goal || a.2 <= 10.0)),
            (Some(a), None) if p99_goal && a.2 > 10.0 => Some(false),
            _ => None,
        };
        let _ = writeln!(
            s,
            "| send→frame latency at {rate} msg/s, p50 / p99 | {} / {} ms | Socket.IO {} / {} ms | p50 {}× | p50 ≤ 2× Socket.IO{} | {} |",
            opt(nd.map(|v| v.0), 2),
            opt(nd.map(|v| v.2), 2),
            opt(sio.map(|v| v.0), 2),
            opt(sio.map(|v| v.2), 2),
            opt(ratio, 2),
            if p99_goal { ", p99 ≤ 10 ms" } else { "" },
            met(ok)
        );
    }
    {
        let nd = fan_of(r, "notifyd").map(|f| f.burst.fps());
        let nats = fan_of(r, "nats").map(|f| f.burst.fps());
        let sio = fan_of(r, "socketio").map(|f| f.burst.fps());
        let (rn, rs) = (
            nd.zip(nats).map(|(a, b)| a / b),
            nd.zip(sio).map(|(a, b)| a / b),
        );
        let ok = match (rn, rs) {
            (Some(a), Some(b)) => Some(a >= 1.5 && b >= 4.0),
            (Some(a), None) if a < 1.5 => Some(false),
            (None, Some(b)) if b < 4.0 => Some(false),
            _ => None,
        };
        let conns = fan_of(r, "notifyd").map(|f| f.conns).unwrap_or(0);
        let _ = writeln!(
            s,
            "| one topic → {conns} subscribers, burst, frames/s | {} | NATS {}, Socket.IO {} | {}× NATS, {}× Socket.IO | ≥ 1.5× NATS and ≥ 4× Socket.IO | {} |",
            opt(nd, 0),
            opt(nats, 0),
            opt(sio, 0),
            opt(rn, 2),
            opt(rs, 2),
            met(ok)
        );
    }
    s
}

fn details(s: &mut String, r: &Results) {
    s.push_str("### Memory per idle WebSocket\n\nEach socket a distinct user (notifyd and Socket.IO with a JWT, NATS with a `SUB` to a subject of\nits own), ready (notifyd: `hello`; Socket.IO: `40` answered and `hello`; NATS: `PONG`), then idle\nbut answering pings; the sockets are held by child processes of the bench (≤ 5,000 each, each\nfrom its own 127.0.0.x). Server RSS (VmRSS) after 20 warm-up sockets came and went, then again\nafter all sockets were ready and the server settled; per socket = difference ÷ sockets.\n\n| server | sockets ready (failed) | RSS before → after | per socket |\n|---|---|---|---|\n");
    for (who, points) in &r.mem {
        for p in points {
            let _ = writeln!(
                s,
                "| {who} | {} ({}) | {} → {} KiB | **{:.1} KiB** |",
                p.ready,
                p.failed,
                p.before_kib,
                p.after_kib,
                p.kib_per_socket()
            );
        }
    }
    s.push_str("\n### send → frame latency\n\n`POST /api/v1/messages` (one message to one of 100 connected users, round robin; notifyd\ncommits it with its outbox entry and the relay publishes it, Socket.IO saves then emits) at a fixed\noffered rate, each POST on its own task; latency = the POST's send time (carried in `data`) → the\n`message.created` frame on the recipient's socket. Warm-up phase not counted.\n\n| server | rate | frames / sent (POST errors) | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|\n");
    for (who, l) in &r.lat {
        let (p50, p90, p99, max) = lat_ms(l);
        let _ = writeln!(
            s,
            "| {who} | {} msg/s × {} s | {} / {} ({}) | {p50:.2} ms | {p90:.2} ms | **{p99:.2} ms** | {max:.1} ms |",
            l.rate,
            l.secs,
            l.us.len(),
            l.sent,
            l.post_errors
        );
    }
    s.push_str("\nDistributions: [bench-latency.csv](bench-latency.csv) (every percentile), plotted as CDFs:\n\n![send → frame latency, notifyd vs Socket.IO](bench-latency.svg)\n\n");
    s.push_str("### One topic → many subscribers\n\nEvery socket (one user each) subscribed to one topic; notifyd and Socket.IO get\n`POST /api/v1/topics/{t}/events`, NATS a `PUB` on its TCP port; the publisher stamps its send\ntime in the payload. Steady = one event every 1/rate s; burst = all events published at once;\nframes/s = frames delivered ÷ (last arrival − first publish) of the phase.\n\n| server | sockets (failed), time to subscribe all | phase | frames delivered / expected | frames/s | p50 / p99 |\n|---|---|---|---|---|---|\n");
    for (who, f) in &r.fan {
        for (name, p) in [
            (format!("steady {} ev/s × {} s", f.rate, f.secs), &f.steady),
            (format!("burst of {}", f.burst.events), &f.burst),
        ] {
            let _ = writeln!(
                s,
                "| {who} | {} ({}), {:.1} s | {name} | {} / {} | **{:.0}** | {:.1} / {:.1} ms |",
                f.conns,
                f.failed,
                f.connect_s,
                p.delivered,
                p.events * f.conns as u64,
                p.fps(),
                p.p50_ms,
                p.p99_ms
            );
        }
        if f.publish_errors > 0 {
            let _ = writeln!(
                s,
                "| {who} | | failed publishes: {} | | | |",
                f.publish_errors
            );
        }
    }
    s.push_str("\nA process here may hold at most ~19,900 sockets (hard open-files limit 20,000): figures beyond\nthat size are extrapolations, not measurements.\n");
}

const QUANTILES: usize = 1000;

/// One column per (server, rate): the latency at every 0.1% of the distribution.
pub fn csv(lat: &[(&'static str, Latency)]) -> String {
    let mut s = String::from("quantile");
    for (who, l) in lat {
        let _ = write!(s, ",{who}_{}_ms", l.rate);
    }
    s.push('\n');
    for q in 0..=QUANTILES {
        let q = q as f64 / QUANTILES as f64;
        let _ = write!(s, "{q:.3}");
        for (_, l) in lat {
            let _ = write!(s, ",{:.3}", percentile(&l.us, q));
        }
        s.push('\n');
    }
    s
}

/// CDFs of every latency distribution on a log-x axis, as a self-contained SVG.
pub fn svg(lat: &[(&'static str, Latency)]) -> String {
    let (w, h, l, r, t, b) = (760.0, 440.0, 60.0, 190.0, 30.0, 50.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let all = lat.iter().flat_map(|(_, x)| x.us.iter().copied());
    let (min_us, max_us) = all.fold((u32::MAX, 0u32), |(a, b), v| (a.min(v), b.max(v)));
    let lo = ((min_us.max(10) as f64 / 1000.0).log10()).floor();
    let hi = ((max_us.max(100) as f64 / 1000.0).log10())
        .ceil()
        .max(lo + 1.0);
    let x = |ms: f64| l + (ms.max(1e-3).log10() - lo) / (hi - lo) * pw;
    let y = |q: f64| t + (1.0 - q) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
<text x=\"{l}\" y=\"18\" font-size=\"14\">send → frame latency: cumulative distribution (log x)</text>\n"
    );
    let mut d = lo;
    while d <= hi + 1e-9 {
        let ms = 10f64.powf(d);
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{t}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3} ms</text>",
            x(ms),
            t + ph,
            t + ph + 16.0,
            if ms < 1.0 { format!("{ms}") } else { format!("{ms:.0}") }
        );
        d += 1.0;
    }
    for q in [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{q}</text>",
            y(q),
            l + pw,
            l - 6.0,
            y(q) + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n\
<text x=\"{0}\" y=\"{1}\" text-anchor=\"middle\">latency (ms)</text>\n\
<text x=\"14\" y=\"{2}\" transform=\"rotate(-90 14 {2})\" text-anchor=\"middle\">fraction of frames</text>",
        l + pw / 2.0,
        h - 10.0,
        t + ph / 2.0
    );
    let colours = [
        "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
    ];
    for (i, (who, lt)) in lat.iter().enumerate() {
        let c = colours[i % colours.len()];
        let dash = if lt.rate >= 1000 {
            ""
        } else {
            " stroke-dasharray=\"6 3\""
        };
        let mut pts = String::new();
        let n = lt.us.len();
        if n > 0 {
            let step = (n / 400).max(1);
            let mut k = 0;
            while k < n {
                let _ = write!(
                    pts,
                    "{:.1},{:.1} ",
                    x(lt.us[k] as f64 / 1000.0),
                    y((k + 1) as f64 / n as f64)
                );
                k += step;
            }
            let _ = write!(pts, "{:.1},{:.1}", x(lt.us[n - 1] as f64 / 1000.0), y(1.0));
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash} points=\"{pts}\"/>"
        );
        let ly = t + 20.0 + i as f64 * 22.0;
        let _ = writeln!(
            s,
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/><text x=\"{2}\" y=\"{3}\">{who}, {4} msg/s</text>",
            l + pw + 12.0,
            l + pw + 40.0,
            l + pw + 46.0,
            ly + 4.0,
            lt.rate
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Where a figure measured queueing (the machine or this client saturated) rather than a
/// server's delivery path, the report says so next to the verdicts.
pub fn saturation_notes(r: &Results) -> Vec<String> {
    let mut notes = vec![];
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let load: f64 = r
        .load
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if load > cores {
        notes.push(format!(
            "**Caution:** the load average ({load:.1}) was above the {cores} cores when this run began: other work shared \
the machine, so every figure is lower and noisier than on an idle machine; compare only ratios from one run."
        ));
    }
    let mut rates: Vec<u64> = r.lat.iter().map(|(_, l)| l.rate).collect();
    rates.dedup();
    for rate in rates {
        if r.lat
            .iter()
            .any(|(_, l)| l.rate == rate && percentile(&l.us, 0.5) > 100.0)
        {
            notes.push(format!(
                "**Saturated at {rate} msg/s:** a p50 above 100 ms means the offered rate exceeded what the machine \
carried and frames queued; the latency ratio there compares two queues, not two delivery paths."
            ));
        }
    }
    if r.fan.iter().any(|(_, f)| f.steady.p50_ms > 1000.0) {
        notes.push(
            "**Fan-out saturated:** a steady-phase p50 above 1 s means frames queued for seconds (in the server or in \
this load client, one process reading every socket); the frames/s then measure the whole machine's \
throughput under each server's framing, and a ratio to NATS above 1 says more about the client than \
about NATS."
                .to_string(),
        );
    }
    notes
}
