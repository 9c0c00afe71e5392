//! `p2p-copy rendezvous`: run a rendezvous node.

use clap::Args as ClapArgs;
use p2p_copy_rendezvous::server::{LogFormat, ServerConfig};

use super::Common;
use crate::error::ErrorKind;
use crate::transfer::{Stop, TransferError};

/// Arguments of `p2p-copy rendezvous`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub node: p2p_copy_rendezvous::server::NodeArgs,
    #[command(flatten)]
    pub output: NodeOutput,
}

/// How much the node says on stderr: the node's own flags, not the transfer commands'.
#[derive(Debug, Clone, ClapArgs)]
pub struct NodeOutput {
    /// More log detail (-v: info and debug events of the node; -vv: trace). `RUST_LOG` wins.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors (not even the line saying where the node listens).
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
}

impl NodeOutput {
    /// As the transfer commands' flags, for the shared log set-up (no JSON events: the node
    /// logs JSON with `--log-format json`).
    fn common(&self) -> Common {
        Common { json: false, verbose: self.verbose, quiet: self.quiet }
    }
}

/// Loads the node's settings (a mistake in them is a usage error) and sets up logging in the
/// format they name, then serves until Ctrl-C or SIGTERM (then drains for the grace period; a
/// second signal stops at once).
pub fn main(args: Args) -> Result<(), TransferError> {
    let common = args.output.common();
    let config = match args.node.load() {
        Ok(config) => config,
        Err(e) => {
            let e = super::usage(e.to_string());
            super::output::report_error(&common, &e);
            return Err(e);
        }
    };
    if config.log_format == LogFormat::Json {
        // Before `with_runtime` installs the usual text subscriber, which then stands aside.
        config.log_format.init(super::default_filter(&common));
    }
    super::with_runtime(&common.clone(), |stop| run(config, common, stop))
}

async fn run(config: ServerConfig, common: Common, mut stop: Stop) -> Result<(), TransferError> {
    if !common.quiet {
        let transports = if config.tcp { "UDP and TCP" } else { "UDP" };
        eprintln!("Rendezvous node listening on {} ({transports})", config.listen);
    }
    p2p_copy_rendezvous::server::run(config, async move {
        stop.requested().await;
    })
    .await
    .map_err(|e| TransferError::new(ErrorKind::Network, e.to_string()))
}
