use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = notifyd::cli::Cli::parse();
    if let Err(e) = notifyd::cli::run(cli).await {
        eprintln!("notifyd: {e:#}");
        std::process::exit(1);
    }
}
