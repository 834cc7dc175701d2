//! The `notifyd` command line (contract §1).

use clap::{Parser, Subcommand};

use crate::config::{parse_duration, Settings, DEV_JWT_SECRET};
use crate::startup::Application;

#[derive(Parser)]
#[command(
    name = "notifyd",
    version,
    about = "In-app notifications: outbox, relay, WebSocket gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// HTTP API + WebSocket gateway + (unless NOTIFYD_RELAY=off) the outbox relay.
    Serve {
        /// Local demo mode: fixed dev secret, service key dev:dev, the demo page at /demo.
        #[arg(long)]
        dev: bool,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// The outbox relay alone.
    Relay {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Apply pending migrations and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// After restoring the database from a backup, before the nodes start: give every inbox a
    /// new epoch, so that gateways and clients that saw seqs the restored database no longer
    /// has reset their sessions (docs/operations.md). Run needlessly, it costs every open
    /// session one reset.
    ResetEpochs {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print a new VAPID key pair for Web Push: the private key (base64url of the 32-byte
    /// scalar) for NOTIFYD_VAPID_PRIVATE_KEY, and its public key (what browsers subscribe with).
    VapidKeys,
    /// Print every event of a user, and of the topics given, as a JSON line (reconnects and
    /// resumes with since, subscribes again, prints each event once).
    Listen {
        /// e.g. ws://127.0.0.1:8080/ws
        #[arg(long)]
        url: String,
        /// A user JWT, used as it is (once it expires the server refuses it: see --token-cmd).
        /// Neither this nor --token-cmd with --no-inbox: an anonymous connection (public topics).
        #[arg(
            long,
            required_unless_present_any = ["token_cmd", "no_inbox"],
            conflicts_with = "token_cmd"
        )]
        token: Option<String>,
        /// A shell command printing a user JWT on stdout, e.g. 'notifyd token --dev --user 42
        /// --ttl 15m'. Run at start, before the token expires (the new one is sent in-band), and
        /// after a 4001 close or a 401 handshake. Killed if it takes over 30 s.
        #[arg(long, value_name = "SHELL COMMAND")]
        token_cmd: Option<String>,
        /// Resume after this seq.
        #[arg(long, conflicts_with = "no_inbox")]
        since: Option<i64>,
        /// A topic to subscribe to after every (re)connect, e.g. product:1 (repeatable, or a
        /// comma list). Its events are printed like the inbox's, each event id once.
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Topic events only (not the user's own events); without a token the connection is
        /// anonymous. Exits non-zero when none of the topics can be subscribed.
        #[arg(long, requires = "topics")]
        no_inbox: bool,
    },
    /// Print a signed user JWT.
    Token {
        #[arg(long)]
        user: String,
        /// Lifetime: 90 (seconds), 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Comma-separated topic globs, e.g. 'product:*,group:7'.
        #[arg(long)]
        topics: Option<String>,
        /// Sign with the dev secret (for `serve --dev`).
        #[arg(long)]
        dev: bool,
    },
}

/// `--config FILE` of the commands that read settings.
#[derive(clap::Args)]
pub struct ConfigFile {
    /// A TOML file of settings (keys in docs/configuration.md); the environment wins over it.
    #[arg(long = "config", value_name = "FILE")]
    pub path: Option<std::path::PathBuf>,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Serve { dev, config } => {
            let settings = Settings::load(dev, true, config.path.as_deref())?;
            crate::telemetry::init_logging(&settings);
            if dev {
                tracing::warn!("DEV MODE: JWT secret is the public dev secret and service key dev:dev is accepted. Never use in production.");
                tracing::warn!("DEV MODE: demo page at http://{}/demo", settings.bind);
                if settings.jwt_secret_ignored {
                    tracing::warn!("DEV MODE: NOTIFYD_JWT_SECRET is set (in the environment or the config file) and IGNORED: tokens are signed and checked with the public dev secret only, so /demo/token can never mint tokens for a real secret. Unset it, or run without --dev.");
                }
            }
            // Without --dev a short or dev secret never gets here: `Settings::load` refused it
            // (config::secrets).
            if settings.allowed_origins.is_none() {
                tracing::warn!("NOTIFYD_ALLOWED_ORIGINS is not set: any origin may open a WebSocket and call the user API cross-origin (CORS). Set it in production.");
            }
            let metrics = crate::telemetry::init_metrics();
            tracing::info!(node = %settings.node_id, bind = %settings.bind, db = %crate::config::redact::url(&settings.database_url), redis = settings.redis_url.is_some(), "starting notifyd");
            tracing::debug!(?settings, "settings");
            let app = Application::build(settings, metrics).await?;
            let stopper = app.stopper();
            tokio::spawn(async move {
                crate::telemetry::shutdown_signal().await;
                tracing::info!("shutting down: closing WebSockets with 1012");
                stopper.stop().await;
            });
            app.run_until_stopped().await
        }
        Cmd::Relay { config } => {
            let settings = Settings::load(false, false, config.path.as_deref())?;
            crate::telemetry::init_logging(&settings);
            crate::startup::run_relay(settings).await
        }
        Cmd::Migrate { config } => {
            let settings = Settings::load(false, false, config.path.as_deref())?;
            crate::telemetry::init_logging(&settings);
            let applied = crate::db::migrate(settings.direct_database_url()).await?;
            println!("{} migration(s) applied", applied.len());
            let created = crate::outbox::housekeeping::create_partitions_ahead(&settings).await?;
            println!("{created} event log partition(s) created ahead");
            Ok(())
        }
        Cmd::VapidKeys => {
            let (private, public) = crate::push::vapid::generate();
            println!("NOTIFYD_VAPID_PRIVATE_KEY={private}");
            println!("# public key (GET /api/v1/push/key answers it): {public}");
            Ok(())
        }
        Cmd::ResetEpochs { config } => {
            let settings = Settings::load(false, false, config.path.as_deref())?;
            crate::telemetry::init_logging(&settings);
            let n = crate::db::reset_epochs(settings.direct_database_url()).await?;
            println!("{n} inbox(es) given a new epoch");
            Ok(())
        }
        Cmd::Listen {
            url,
            token,
            token_cmd,
            since,
            topics,
            no_inbox,
        } => {
            use crate::listen::TokenSource;
            use std::io::Write;
            let token = match (token, token_cmd) {
                (_, Some(cmd)) => Some(TokenSource::Command(cmd)),
                (Some(t), None) => Some(TokenSource::Fixed(t)),
                (None, None) if no_inbox => None,
                (None, None) => anyhow::bail!("pass --token or --token-cmd"),
            };
            let topics = crate::listen::topic_list(&topics).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                !(no_inbox && topics.is_empty()),
                "--no-inbox needs at least one --topic"
            );
            let listener = crate::listen::Listener {
                url,
                token,
                since,
                topics,
                inbox: !no_inbox,
            };
            let run = listener.run(|o| match o {
                crate::listen::Output::Event(v) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{v}");
                    let _ = stdout.flush();
                }
                crate::listen::Output::Status(s) => eprintln!("notifyd listen: {s}"),
            });
            tokio::select! {
                why = run => anyhow::bail!(why),
                _ = crate::telemetry::shutdown_signal() => Ok(()),
            }
        }
        Cmd::Token {
            user,
            ttl,
            topics,
            dev,
        } => {
            let secret = match std::env::var("NOTIFYD_JWT_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
            {
                Some(s) if !dev => s,
                _ if dev => DEV_JWT_SECRET.to_string(),
                _ => anyhow::bail!("set NOTIFYD_JWT_SECRET (or pass --dev for the dev secret)"),
            };
            let ttl = parse_duration(&ttl).map_err(anyhow::Error::msg)?;
            // exp has whole seconds: a shorter lifetime would be expired when printed.
            anyhow::ensure!(ttl.as_secs() >= 1, "--ttl must be at least 1s");
            let topics: Vec<String> = topics
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            let token = crate::auth::jwt::JwtKeys::new(&secret).mint(
                &user,
                ttl.as_secs() as i64,
                &topics,
            )?;
            println!("{token}");
            Ok(())
        }
    }
}
