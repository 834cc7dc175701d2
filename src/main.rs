use clap::Parser;

// The allocator is a build choice (`--features jemalloc` or `mimalloc`; the system allocator
// without either), measured for RSS per idle WebSocket and for memory given back after a burst:
// docs/benchmarks.md, "WebSocket memory".
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = notifyd::cli::Cli::parse();
    if let Err(e) = notifyd::cli::run(cli).await {
        eprintln!("notifyd: {e:#}");
        std::process::exit(1);
    }
}
