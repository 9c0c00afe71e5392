//! `p2p-copy send`.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

use super::output::Ui;
use super::Common;
use crate::api::Sender;
use crate::code::DEFAULT_WORDS;
use crate::compress::Compression;
use crate::crypto::Role;
use crate::error::ErrorKind;
use crate::transfer::{self, SendOptions, Stop, TransferError};
use crate::wire::control::MAX_TEXT;
use crate::wire::data::DEFAULT_CHUNK;

/// Arguments of `p2p-copy send`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Files and directories to send; `-` sends standard input as one file (named by
    /// --name), streamed as it is read.
    #[arg(required_unless_present = "text", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Send this text instead of files (`-`: read it from standard input); the receiver
    /// prints it on its standard output and writes no file. At most 1 MiB of UTF-8.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["paths", "exclude", "checksum", "xattrs"])]
    pub text: Option<String>,
    /// The name standard input is sent under (`send -`).
    #[arg(long, value_name = "NAME", default_value = "stdin")]
    pub name: String,
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
    /// Holes of sparse files: `auto` sends them as holes, so the receiver's copy stays sparse;
    /// `off` sends them as zeros, written out in full.
    #[arg(long, value_enum, default_value_t = Sparse::Auto, env = "P2P_COPY_SPARSE")]
    pub sparse: Sparse,
    /// Keep the extended attributes of files and directories (the `user.` namespace only;
    /// where the receiver's file system takes them).
    #[arg(long, env = "P2P_COPY_XATTRS", value_parser = clap::builder::FalseyValueParser::new())]
    pub xattrs: bool,
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

/// `--sparse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sparse {
    /// Holes found with `SEEK_DATA`/`SEEK_HOLE` stay holes.
    Auto,
    /// Holes are sent and written as zeros.
    Off,
}

/// Runs a send.
pub async fn run(args: Args, stop: Stop) -> Result<(), TransferError> {
    let chosen = match (&args.code, &args.code_file) {
        (Some(code), _) => Some(code.clone()),
        (None, Some(path)) => Some(super::code_from_file(path)?),
        (None, None) => None,
    };
    let stdin = args.paths.iter().any(|p| p.as_os_str() == "-");
    if stdin && args.paths.len() > 1 {
        return Err(super::usage(
            "`-` (standard input) is sent alone: send the other paths separately",
        ));
    }
    if !stdin && args.name != "stdin" {
        return Err(super::usage("--name names standard input: it goes with `-` as the path"));
    }
    if (stdin || args.text.as_deref() == Some("-")) && args.count > 1 {
        return Err(super::usage(
            "standard input can be sent once: --count needs files or a --text",
        ));
    }
    if stdin && (!args.exclude.is_empty() || args.checksum || args.xattrs) {
        return Err(super::usage(
            "--exclude, --checksum and --xattrs apply to paths, not to standard input",
        ));
    }
    let rendezvous = args.meeting.rendezvous()?;
    // The command line is the library's Sender with a terminal around it.
    let mut sender = match args.text.as_deref() {
        Some("-") => Sender::text(text_from_stdin()?),
        Some(text) => Sender::text(text),
        None if stdin => {
            let input = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| {
                TransferError::new(ErrorKind::Io, format!("cannot read standard input: {e}"))
            })?;
            Sender::blocking_reader(&args.name, std::fs::File::from(input))
        }
        None => Sender::paths(args.paths),
    };
    sender = sender
        .code_words(args.code_words)
        .wait(Duration::from_secs(args.wait))
        .lanes(args.lanes)
        .chunk_size(args.chunk_size)
        .compression(args.compress)
        .sparse(args.sparse == Sparse::Auto)
        .checksum(args.checksum)
        .xattrs(args.xattrs)
        .reconnect_wait(args.reconnect.wait());
    if let Some(code) = chosen {
        sender = sender.code(code);
    }
    for glob in args.exclude {
        sender = sender.exclude(glob);
    }
    if let Some(rate) = args.link.limit_rate() {
        sender = sender.limit_rate(rate);
    }
    if let Some(window) = args.link.window() {
        sender = sender.window(window);
    }
    if let Some(congestion) = args.link.congestion() {
        sender = sender.congestion(congestion);
    }
    if let Some(node) = rendezvous {
        sender = sender.rendezvous(node);
    }
    let mut opts = sender.into_options()?;
    opts.stop = stop;
    // Through a node, the transfers share the nameplate, held for them.
    opts.hold = (args.count > 1).then(crate::transfer::meet::Hold::default);
    let mut refused = 0;
    for served in 1..=args.count {
        opts.more_receivers = served < args.count;
        refused += send_once(opts.clone(), &args.common).await?;
    }
    super::receive::incomplete(refused)
}

/// `--text -`: standard input, whole, as UTF-8 text of at most [`MAX_TEXT`] bytes.
fn text_from_stdin() -> Result<String, TransferError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_TEXT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TransferError::new(ErrorKind::Io, format!("reading the text failed: {e}")))?;
    if bytes.len() > MAX_TEXT {
        return Err(super::usage(format!(
            "the text is more than {MAX_TEXT} bytes; send it as a file with `p2p-copy send -`"
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        super::usage("the text is not UTF-8; send it as a file with `p2p-copy send -`")
    })
}

/// One send to one receiver, with its own output (a `code` event to `done`); returns the
/// entries the receiver's file system could not hold.
async fn send_once(opts: SendOptions, common: &Common) -> Result<u64, TransferError> {
    let ui = Ui::new(common, Role::Sender);
    let progress = ui.progress();
    let ticker = ui.start_ticker();
    let moved = progress.clone();
    let paths = opts.text.is_none() && opts.stream.is_none();
    let result = transfer::send(opts, ui.clone(), progress).await.map_err(|e| match e.kind {
        ErrorKind::Network | ErrorKind::Interrupted | ErrorKind::Peer
            if moved.bytes() > 0 && paths =>
        {
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
    result.map(|report| report.refused)
}
