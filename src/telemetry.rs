//! Logging, metrics and signals.

use tracing_subscriber::{fmt, EnvFilter};

/// `RUST_LOG` (`log_filter`, checked when the settings were read) and `NOTIFYD_LOG_FORMAT`.
pub fn init_logging(settings: &crate::config::Settings) {
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    if settings.log_json {
        // One JSON object per line on stdout, for a log collector: the event's fields at the top
        // level, `span` = the innermost span (request or WebSocket session: route, service,
        // user, session, node, request id) and `spans` = all of them.
        let _ = fmt()
            .with_env_filter(filter)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stdout)
            .try_init();
    } else {
        // Colours only on a terminal: redirected to a file or a log collector, escape codes
        // are noise (seen in the chaos harness's node logs).
        let _ = fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder (once per process). Histogram samples are
/// queued raw until an upkeep folds them into buckets; `install_recorder` runs none, so without
/// a scrape the queues grew without bound (about 8 bytes per delivered event): a task here runs
/// the upkeep every few seconds (when called on a tokio runtime, as `serve` does).
pub fn init_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ])
        .ok()?
        .install_recorder()
        .ok()?;
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let h = handle.clone();
        rt.spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
            loop {
                every.tick().await;
                h.run_upkeep();
            }
        });
    }
    Some(handle)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
