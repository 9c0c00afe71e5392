//! `p2p-copy receive` (alias `recv`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

use super::output::Ui;
use super::Common;
use crate::code::Code;
use crate::crypto::Role;
use crate::transfer::{self, ReceiveOptions, Stop, TransferError};

/// Arguments of `p2p-copy receive`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The code the sender shows (asked for on a terminal when omitted).
    #[arg(env = "P2P_COPY_CODE", hide_env_values = true)]
    pub code: Option<String>,
    /// Directory to receive into (created if missing).
    #[arg(long, short, default_value = ".", value_name = "DIR", env = "P2P_COPY_OUT")]
    pub out: PathBuf,
    /// Accept the offer without asking.
    #[arg(long, short, env = "P2P_COPY_YES", value_parser = clap::builder::FalseyValueParser::new())]
    pub yes: bool,
    /// Replace files and links that already exist in the destination.
    #[arg(long, env = "P2P_COPY_OVERWRITE", value_parser = clap::builder::FalseyValueParser::new())]
    pub overwrite: bool,
    /// Seconds to look for the sender before giving up (at most a day).
    #[arg(long, default_value_t = 30, value_name = "SECS", env = "P2P_COPY_WAIT",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub wait: u64,
    #[command(flatten)]
    pub meeting: super::Meeting,
    #[command(flatten)]
    pub link: super::Link,
    #[command(flatten)]
    pub common: Common,
}

/// Runs a receive.
pub async fn run(args: Args, stop: Stop) -> Result<(), TransferError> {
    let typed = match args.code {
        Some(c) => c,
        None if std::io::stdin().is_terminal() => ask_code()?,
        None => {
            return Err(super::usage("no code given: pass it as an argument or in P2P_COPY_CODE"))
        }
    };
    let code = Code::parse(&typed).map_err(|e| super::usage(e.to_string()))?;
    let mut opts = ReceiveOptions::new(code, args.out);
    opts.yes = args.yes;
    opts.interactive = std::io::stdin().is_terminal() && !args.common.json;
    opts.overwrite = args.overwrite;
    opts.wait = Duration::from_secs(args.wait);
    opts.stop = stop;
    opts.rendezvous = args.meeting.rendezvous()?;
    opts.tuning = args.link.tuning();
    let ui = Ui::new(&args.common, Role::Receiver);
    let progress = ui.progress();
    let ticker = ui.start_ticker();
    let result = transfer::receive(opts, ui.clone(), progress).await;
    ticker.abort();
    ui.finish(&result);
    result.map(|_| ())
}

fn ask_code() -> Result<String, TransferError> {
    eprint!("Enter the code: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| super::usage(format!("could not read the code: {e}")))?;
    Ok(line.trim().to_owned())
}
