//! `p2p-copy send`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

use super::output::Ui;
use super::Common;
use crate::code::{Code, DEFAULT_WORDS};
use crate::compress::Compression;
use crate::crypto::Role;
use crate::error::ErrorKind;
use crate::transfer::{self, SendOptions, Stop, TransferError};
use crate::wire::data::DEFAULT_CHUNK;

/// Arguments of `p2p-copy send`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Files and directories to send.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Use this code instead of a generated one (must be strong enough: see `p2p-copy code`).
    #[arg(long, env = "P2P_COPY_CODE", hide_env_values = true)]
    pub code: Option<String>,
    /// Use the code in the first line of this file (as --code, but out of the process list).
    #[arg(long, value_name = "PATH", env = "P2P_COPY_CODE_FILE", conflicts_with = "code")]
    pub code_file: Option<PathBuf>,
    /// Secret words in a generated code (3 words = 24 bits; each word adds 8).
    #[arg(long, default_value_t = DEFAULT_WORDS, env = "P2P_COPY_CODE_WORDS")]
    pub code_words: usize,
    /// Seconds to wait for the receiver before giving up (at most 30 days).
    #[arg(long, default_value_t = 3600, value_name = "SECS", env = "P2P_COPY_SEND_WAIT",
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub wait: u64,
    /// Data streams to run in parallel (the receiver may allow fewer).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16), env = "P2P_COPY_LANES")]
    pub lanes: u16,
    /// Chunk size in bytes, with an optional K or M suffix (binary; 16K to 4M).
    #[arg(long, default_value_t = DEFAULT_CHUNK, value_name = "BYTES", env = "P2P_COPY_CHUNK_SIZE",
          value_parser = super::parse_chunk)]
    pub chunk_size: usize,
    /// Compress chunks with zstd: `auto` compresses what shrinks (sampled, so incompressible
    /// data costs next to nothing), `on` everything that shrinks at all, `off` nothing.
    #[arg(long, value_enum, default_value_t = Compression::Auto, env = "P2P_COPY_COMPRESS")]
    pub compress: Compression,
    /// When the receiver already holds some of the files, compare them by BLAKE3 hash rather
    /// than by size and mtime (every file is read first).
    #[arg(long, env = "P2P_COPY_CHECKSUM", value_parser = clap::builder::FalseyValueParser::new())]
    pub checksum: bool,
    /// Leave out what matches this gitignore-style pattern, relative to each sent directory
    /// (`*.o`, `target/`, `/build`, `**/cache`, `!keep.o`); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Serve this many receivers, one after another, with the same code (each its own key
    /// exchange; a wrong code still ends the sender). Local network only for now.
    #[arg(long, default_value_t = 1, value_name = "N", env = "P2P_COPY_COUNT",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    #[command(flatten)]
    pub meeting: super::Meeting,
    #[command(flatten)]
    pub link: super::Link,
    #[command(flatten)]
    pub reconnect: super::Reconnect,
    #[command(flatten)]
    pub common: Common,
}

/// Runs a send.
pub async fn run(args: Args, stop: Stop) -> Result<(), TransferError> {
    let chosen = match (&args.code, &args.code_file) {
        (Some(code), _) => Some(code.clone()),
        (None, Some(path)) => Some(super::code_from_file(path)?),
        (None, None) => None,
    };
    let code = match chosen {
        Some(chosen) => Code::parse_chosen(&chosen).map_err(|e| super::usage(e.to_string()))?,
        None => super::code::generate(args.code_words)?,
    };
    let mut opts = SendOptions::new(args.paths, code);
    opts.wait = Duration::from_secs(args.wait);
    opts.lanes = args.lanes;
    opts.chunk_size = args.chunk_size;
    opts.compression = args.compress;
    opts.exclude = args.exclude;
    opts.limit_rate = args.link.limit_rate();
    opts.stop = stop;
    opts.rendezvous = args.meeting.rendezvous()?;
    opts.tuning = args.link.tuning();
    opts.code_chosen = args.code.is_some() || args.code_file.is_some();
    opts.checksum = args.checksum;
    opts.reconnect_wait = args.reconnect.wait();
    if args.count > 1 && opts.rendezvous.is_some() {
        return Err(super::usage(
            "--count serves receivers on the local network only for now: a rendezvous node \
             retires a nameplate once its transfer ends",
        ));
    }
    for served in 1..=args.count {
        opts.more_receivers = served < args.count;
        send_once(opts.clone(), &args.common).await?;
    }
    Ok(())
}

/// One send to one receiver, with its own output (a `code` event to `done`).
async fn send_once(opts: SendOptions, common: &Common) -> Result<(), TransferError> {
    let ui = Ui::new(common, Role::Sender);
    let progress = ui.progress();
    let ticker = ui.start_ticker();
    let moved = progress.clone();
    let result = transfer::send(opts, ui.clone(), progress).await.map_err(|e| match e.kind {
        ErrorKind::Network | ErrorKind::Interrupted | ErrorKind::Peer if moved.bytes() > 0 => {
            TransferError::new(
                e.kind,
                format!(
                    "{}; the receiver keeps what arrived: send the same paths again to resume",
                    e.message
                ),
            )
        }
        _ => e,
    });
    ticker.abort();
    ui.finish(&result);
    result.map(|_| ())
}
