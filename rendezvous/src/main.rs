//! `p2p-copy-rendezvous`: the rendezvous node as its own binary (same as `p2p-copy rendezvous`).

use std::process::ExitCode;

use clap::Parser;

/// The p2p-copy rendezvous node: peers meet here and, when a direct connection fails, relay
/// through it. It keeps no files and no keys.
#[derive(Debug, Parser)]
#[command(name = "p2p-copy-rendezvous", version)]
struct Cli {
    #[command(flatten)]
    args: p2p_copy_rendezvous::server::NodeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    config.log_format.init("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        p2p_copy_rendezvous::server::signalled().await;
        // A second signal stops at once, without waiting out the grace period.
        tokio::spawn(async {
            p2p_copy_rendezvous::server::signalled().await;
            eprintln!("second signal: stopping now");
            std::process::exit(130);
        });
    };
    let result = runtime.block_on(p2p_copy_rendezvous::server::run(config, shutdown));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
