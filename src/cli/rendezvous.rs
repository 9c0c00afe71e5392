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
    pub common: Common,
}

/// Loads the node's settings (a mistake in them is a usage error) and sets up logging in the
/// format they name, then serves until Ctrl-C or SIGTERM (then drains for the grace period; a
/// second signal stops at once).
pub fn main(args: Args) -> Result<(), TransferError> {
    let config = match args.node.load() {
        Ok(config) => config,
        Err(e) => {
            let e = super::usage(e.to_string());
            super::output::report_error(&args.common, &e);
            return Err(e);
        }
    };
    if config.log_format == LogFormat::Json {
        // Before `with_runtime` installs the usual text subscriber, which then stands aside.
        config.log_format.init(super::default_filter(&args.common));
    }
    let common = args.common;
    super::with_runtime(&common.clone(), |stop| run(config, common, stop))
}

async fn run(config: ServerConfig, common: Common, mut stop: Stop) -> Result<(), TransferError> {
    if !common.quiet {
        let transports = if config.tcp { "UDP and TCP" } else { "UDP" };
        eprintln!("rendezvous node listening on {} ({transports})", config.listen);
    }
    p2p_copy_rendezvous::server::run(config, async move {
        stop.requested().await;
    })
    .await
    .map_err(|e| TransferError::new(ErrorKind::Network, e.to_string()))
}
