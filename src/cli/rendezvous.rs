//! `p2p-copy rendezvous`: run a rendezvous node.

use clap::Args as ClapArgs;

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

/// Serves until Ctrl-C or SIGTERM (then drains for the grace period; a second signal stops at
/// once).
pub async fn run(args: Args, mut stop: Stop) -> Result<(), TransferError> {
    if !args.common.quiet {
        eprintln!("rendezvous node listening on {} (UDP)", args.node.listen);
    }
    p2p_copy_rendezvous::server::run(&args.node, async move {
        stop.requested().await;
    })
    .await
    .map_err(|e| TransferError::new(ErrorKind::Network, e.to_string()))
}
