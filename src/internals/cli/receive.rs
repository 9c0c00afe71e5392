//! `p2p-copy receive` (alias `recv`).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args as ClapArgs;

use super::output::Ui;
use super::Common;
use crate::api::Receiver;
use crate::crypto::Role;
use crate::error::ErrorKind;
use crate::transfer::{self, Stop, TransferError};

/// Arguments of `p2p-copy receive`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The code the sender shows (asked for on a terminal when omitted).
    #[arg(env = "P2P_COPY_CODE", hide_env_values = true)]
    pub code: Option<String>,
    /// Read the code from the first line of this file. Without a code, and when stdin is not a
    /// terminal, the first line of stdin is the code.
    #[arg(long, value_name = "PATH", env = "P2P_COPY_CODE_FILE", conflicts_with = "code")]
    pub code_file: Option<PathBuf>,
    /// Directory to receive into (created if missing).
    #[arg(long, short, default_value = ".", value_name = "DIR", env = "P2P_COPY_OUT")]
    pub out: PathBuf,
    /// Write the one file the sender offers to standard output instead of into a directory
    /// (an offer of anything else is refused, and nothing is written). With --json, the
    /// events go to stderr.
    #[arg(long, conflicts_with_all = ["out", "overwrite", "checksum", "discard_partial"])]
    pub stdout: bool,
    /// Accept the offer without asking.
    #[arg(long, short, env = "P2P_COPY_YES", value_parser = clap::builder::FalseyValueParser::new())]
    pub yes: bool,
    /// Replace files and links that already exist in the destination and differ from the
    /// sender's (identical ones are skipped either way).
    #[arg(long, env = "P2P_COPY_OVERWRITE", value_parser = clap::builder::FalseyValueParser::new())]
    pub overwrite: bool,
    /// Ignore the extended attributes a sender sends with `send --xattrs` (they are set by
    /// default, where the file system takes them).
    #[arg(long, env = "P2P_COPY_NO_XATTRS", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_xattrs: bool,
    /// Compare files already in the destination by BLAKE3 hash rather than by size and mtime
    /// (both sides read every such file first).
    #[arg(long, env = "P2P_COPY_CHECKSUM", value_parser = clap::builder::FalseyValueParser::new())]
    pub checksum: bool,
    /// Remove what interrupted transfers left in the destination (partial files, in
    /// `DIR/.p2p-copy`) and exit; no code is needed.
    #[arg(long, conflicts_with_all = ["code", "yes", "overwrite", "checksum"])]
    pub discard_partial: bool,
    /// Seconds to look for the sender before giving up (at most a day).
    #[arg(long, default_value_t = 30, value_name = "SECS", env = "P2P_COPY_RECEIVE_WAIT",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub wait: u64,
    #[command(flatten)]
    pub meeting: super::Meeting,
    #[command(flatten)]
    pub link: super::Link,
    #[command(flatten)]
    pub reconnect: super::Reconnect,
    #[command(flatten)]
    pub common: Common,
}

/// Runs a receive.
pub async fn run(args: Args, stop: Stop) -> Result<(), TransferError> {
    if args.discard_partial {
        return discard(&args);
    }
    let typed = match (args.code, &args.code_file) {
        (Some(c), _) => c,
        (None, Some(path)) => super::code_from_file(path)?,
        (None, None) if std::io::stdin().is_terminal() => ask_code()?,
        (None, None) => super::code_from_stdin(Duration::from_secs(args.wait))?,
    };
    // The command line is the library's Receiver with a terminal around it.
    let mut receiver = Receiver::new(typed)
        .into_dir(args.out)
        .overwrite(args.overwrite)
        .xattrs(!args.no_xattrs)
        .checksum(args.checksum)
        .reconnect_wait(args.reconnect.wait())
        .wait(Duration::from_secs(args.wait));
    if args.stdout {
        super::output::events_to_stderr();
        let out = std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| {
            TransferError::new(ErrorKind::Io, format!("cannot write to standard output: {e}"))
        })?;
        receiver = receiver.into_blocking_writer(std::fs::File::from(out));
    }
    if let Some(rate) = args.link.limit_rate() {
        receiver = receiver.limit_rate(rate);
    }
    if let Some(window) = args.link.window() {
        receiver = receiver.window(window);
    }
    if let Some(congestion) = args.link.congestion() {
        receiver = receiver.congestion(congestion);
    }
    if let Some(node) = args.meeting.rendezvous()? {
        receiver = receiver.rendezvous(node);
    }
    let (mut opts, _, _) = receiver.into_options()?;
    // The person decides at the terminal (the Ui's confirm), unless --yes.
    opts.yes = args.yes;
    opts.interactive = std::io::stdin().is_terminal() && !args.common.json;
    opts.stop = stop;
    let ui = Ui::new(&args.common, Role::Receiver);
    let progress = ui.progress();
    let ticker = ui.start_ticker();
    let out = opts.out.clone();
    let piped = opts.pipe.is_some();
    let result = transfer::receive(opts, ui.clone(), progress).await.map_err(|e| {
        if piped {
            e
        } else {
            kept(e, &out)
        }
    });
    ticker.abort();
    ui.finish(&result);
    incomplete(result?.refused)
}

/// The status of a transfer that left out `refused` entries its receiver's file system cannot
/// hold: everything else arrived, and the exit status says that not everything did.
pub(super) fn incomplete(refused: u64) -> Result<(), TransferError> {
    match refused {
        0 => Ok(()),
        n => Err(TransferError::new(
            ErrorKind::Incomplete,
            format!(
                "{n} entr{} could not be written at the destination (names or links its file \
                 system cannot hold); everything else arrived",
                if n == 1 { "y" } else { "ies" }
            ),
        )),
    }
}

/// A failed receive that left partial files says how to resume or remove them.
fn kept(e: TransferError, out: &Path) -> TransferError {
    let state = crate::transfer::fs::StateDir::new(out);
    let (files, bytes) = state.held();
    if files == 0
        || !matches!(
            e.kind,
            ErrorKind::Network | ErrorKind::Interrupted | ErrorKind::Peer | ErrorKind::Io
        )
    {
        return e;
    }
    TransferError::new(
        e.kind,
        format!(
            "{}; {} kept in {} ({} partial file(s)): receive into the same --out again when the \
             sender sends again to resume, or run `p2p-copy receive --out {} --discard-partial` \
             to remove it",
            e.message,
            indicatif::HumanBytes(bytes),
            state.path().display(),
            files,
            out.display()
        ),
    )
}

/// `--discard-partial`: removes the state directory's contents (what no running transfer
/// holds).
fn discard(args: &Args) -> Result<(), TransferError> {
    let root = std::fs::canonicalize(&args.out).unwrap_or_else(|_| args.out.clone());
    let state = crate::transfer::fs::StateDir::new(&root);
    let (removed, bytes, busy) = state.discard();
    if !args.common.quiet {
        eprintln!(
            "Removed {removed} file(s) of interrupted transfers ({}) from {}",
            indicatif::HumanBytes(bytes),
            state.path().display()
        );
    }
    if busy > 0 {
        return Err(TransferError::new(
            ErrorKind::Conflict,
            format!("{busy} partial file(s) are in use by a running receive and were left"),
        ));
    }
    Ok(())
}

fn ask_code() -> Result<String, TransferError> {
    eprint!("Enter the code: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| super::usage(format!("could not read the code: {e}")))?;
    Ok(line.trim().to_owned())
}
