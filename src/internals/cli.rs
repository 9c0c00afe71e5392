//! The `p2p-copy` command line. Each subcommand module owns its `Args` and `run()`.
//!
//! Human output goes to stderr; `--json` puts newline-delimited JSON events on stdout
//! (documented in `docs/cli.md`). The exit code comes from the error kind
//! ([`crate::error::ErrorKind::exit_code`]).

mod code;
mod output;
mod receive;
mod rendezvous;
mod send;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::ErrorKind;
use crate::transfer::{Stop, TransferError};

/// Send files and directories between two machines, end-to-end encrypted.
#[derive(Debug, Parser)]
#[command(name = "p2p-copy", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send files or directories; prints a code for the receiver.
    Send(send::Args),
    /// Receive what a sender offers, given its code.
    #[command(visible_alias = "recv")]
    Receive(receive::Args),
    /// Print a fresh code (for scripts that agree on a code in advance).
    Code(code::Args),
    /// Run a rendezvous node (the same as the p2p-copy-rendezvous binary).
    Rendezvous(Box<rendezvous::Args>),
    /// Print a shell completion script.
    Completions(CompletionArgs),
    /// Print the manual page (roff): `p2p-copy man | man -l -`, or `p2p-copy man send` for a
    /// subcommand's.
    Man(ManArgs),
}

#[derive(Debug, Args)]
struct CompletionArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// The subcommand whose page to print (the overview without one).
    #[arg(value_parser = ["send", "receive", "code", "rendezvous", "completions", "man"])]
    subcommand: Option<String>,
}

/// Output flags shared by every transfer command.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Newline-delimited JSON events on stdout instead of human output.
    #[arg(long, global = true, env = "P2P_COPY_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    json: bool,
    /// More detail on stderr (-v: candidates, verifier, timings; -vv: protocol trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors (and the sender's code) on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

/// Where peers meet: the local network (default) or a rendezvous node.
#[derive(Debug, Clone, clap::Args)]
pub struct Meeting {
    /// Meet through this rendezvous node (HOST or HOST:PORT, port 4433 by default) instead of
    /// on the local network; `none` means the local network.
    #[arg(long, value_name = "HOST:PORT", env = "P2P_COPY_RENDEZVOUS")]
    rendezvous: Option<String>,
    /// The rendezvous node's access token, if it requires one (proved to the node, never
    /// sent).
    #[arg(long, value_name = "TOKEN", env = "P2P_COPY_RENDEZVOUS_TOKEN", hide_env_values = true)]
    rendezvous_token: Option<String>,
    /// Refuse a rendezvous node whose certificate's SHA-256 is not this (64 hex digits, as
    /// the node logs it at start).
    #[arg(long, value_name = "SHA256HEX", env = "P2P_COPY_RENDEZVOUS_FINGERPRINT")]
    rendezvous_fingerprint: Option<String>,
    /// Send the data through the node's relay even if a direct connection is possible.
    #[arg(long, conflicts_with = "no_relay", env = "P2P_COPY_FORCE_RELAY",
          value_parser = clap::builder::FalseyValueParser::new())]
    force_relay: bool,
    /// Never use the node's relay (fails where a direct connection is impossible).
    #[arg(long, env = "P2P_COPY_NO_RELAY", value_parser = clap::builder::FalseyValueParser::new())]
    no_relay: bool,
}

/// How much data may be in flight: shared by `send` and `receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct Link {
    /// Fixed flow-control window in bytes, with an optional K, M or G suffix (binary; 1M to
    /// 1G): how much data may be in flight. Without it the window starts at 4M and grows by
    /// itself on long fast links, up to 32M; with it, it stays at this size (give it on both
    /// sides). Each side's memory grows by about the window.
    #[arg(long, value_name = "BYTES", env = "P2P_COPY_WINDOW", value_parser = parse_window)]
    window: Option<u32>,
    /// Congestion controller for what this side sends (the sender's is the one that
    /// matters): tolerant (the default: CUBIC that keeps its rate through random loss),
    /// cubic, bbr or newreno.
    #[arg(long, value_name = "NAME", env = "P2P_COPY_CONGESTION", value_enum)]
    congestion: Option<CongestionArg>,
    /// At most this many bytes per second of file data on the network (K, M, G: ×1000;
    /// `0` for no limit). Either side may set it; the lower one holds.
    #[arg(long, value_name = "RATE", env = "P2P_COPY_LIMIT_RATE",
          value_parser = p2p_copy_rendezvous::config::parse_rate)]
    limit_rate: Option<u64>,
}

/// The congestion controllers `--congestion` offers.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CongestionArg {
    /// CUBIC that slows down for loss only with queueing delay or more than 2 % lost (the
    /// default): keeps its rate through random loss.
    Tolerant,
    /// Plain CUBIC: slows down at every lost packet.
    Cubic,
    /// BBR (quinn's, experimental): keeps its rate through random loss, but fills the queues
    /// of slower links.
    Bbr,
    /// NewReno.
    Newreno,
}

impl Link {
    /// `--limit-rate`, if it limits anything.
    pub fn limit_rate(&self) -> Option<u64> {
        self.limit_rate.filter(|&r| r > 0)
    }

    /// `--window`, if given.
    pub fn window(&self) -> Option<u32> {
        self.window
    }

    /// `--congestion`, if given.
    pub fn congestion(&self) -> Option<crate::net::quic::Congestion> {
        use crate::net::quic::Congestion;
        self.congestion.map(|c| match c {
            CongestionArg::Tolerant => Congestion::Tolerant,
            CongestionArg::Bbr => Congestion::Bbr,
            CongestionArg::Cubic => Congestion::Cubic,
            CongestionArg::Newreno => Congestion::NewReno,
        })
    }
}

/// What a transfer does when its connection is lost: shared by `send` and `receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct Reconnect {
    /// Seconds to keep trying to reconnect when the connection is lost mid-transfer (link
    /// down, Wi-Fi roaming, sleep, a restarted node or peer); 0 fails at once, as before.
    /// Nothing that arrived is lost either way.
    #[arg(long, value_name = "SECS", default_value_t = 600, env = "P2P_COPY_RECONNECT_WAIT",
          value_parser = clap::value_parser!(u64).range(0..=604_800))]
    reconnect_wait: u64,
}

impl Reconnect {
    /// The wait.
    pub fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.reconnect_wait)
    }
}

/// Writes the manual page of p2p-copy, or of one of its subcommands, as roff.
fn man(subcommand: Option<&str>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                return Err(std::io::Error::other(format!("no subcommand {name}")));
            };
            // Named as man(1) expects a subcommand's page: p2p-copy-send(1).
            let title = format!("p2p-copy-{name}");
            sub.clone().name(title.clone()).bin_name(title)
        }
    };
    clap_mangen::Man::new(page).render(out)
}

/// Bytes with an optional binary K, M or G suffix, 1 MiB to 1 GiB.
fn parse_window(s: &str) -> Result<u32, String> {
    size_within(s, 1 << 20, 1 << 30, "1M to 1G").map(|b| b as u32)
}

/// Chunk size: bytes with an optional binary K or M suffix, within the protocol's bounds.
fn parse_chunk(s: &str) -> Result<usize, String> {
    use crate::wire::data::{MAX_CHUNK, MIN_CHUNK};
    size_within(s, MIN_CHUNK as u64, MAX_CHUNK as u64, "16K to 4M").map(|b| b as usize)
}

/// [`parse_size`], refused outside `min..=max` (`range` says it in words).
fn size_within(s: &str, min: u64, max: u64, range: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    (min..=max).contains(&bytes).then_some(bytes).ok_or_else(|| format!("{s} is outside {range}"))
}

/// Bytes with an optional binary K, M or G suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size such as 16M"))?;
    Ok(n.saturating_mul(1 << shift))
}

/// Largest code file (or code line on stdin) read: a code is a few dozen bytes.
const MAX_CODE_LINE: u64 = 1024;

/// The code in the first line of `path` (`--code-file`).
fn code_from_file(path: &std::path::Path) -> Result<String, TransferError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CODE_LINE).read_to_string(&mut text))
        .map_err(|e| usage(format!("cannot read the code file {}: {e}", path.display())))?;
    first_line(&text)
        .ok_or_else(|| usage(format!("the code file {} holds no code", path.display())))
}

/// The code in the first line of stdin (a receive given no code, whose stdin is a pipe or a
/// file), waiting at most `wait` for it.
fn code_from_stdin(wait: std::time::Duration) -> Result<String, TransferError> {
    use std::io::{BufRead, Read};
    let (tx, rx) = std::sync::mpsc::channel();
    // A blocking read in a thread of its own: a stdin that never delivers a line cannot hold
    // the command past `wait` (the thread is left behind; the process exits).
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().lock().take(MAX_CODE_LINE).read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    let none = "no code given: pass it as an argument, with --code-file, in P2P_COPY_CODE or \
                as the first line of stdin";
    match rx.recv_timeout(wait) {
        Ok(Ok(line)) => first_line(&line).ok_or_else(|| usage(none)),
        Ok(Err(e)) => Err(usage(format!("reading the code from stdin: {e}"))),
        Err(_) => Err(usage(format!("{none} (nothing arrived on stdin within {wait:?})"))),
    }
}

/// The first line of `text`, trimmed, if it holds anything.
fn first_line(text: &str) -> Option<String> {
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// The user's settings file: `rendezvous`, `rendezvous_token` and `rendezvous_fingerprint`,
/// used when neither the option nor its environment variable is given.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    rendezvous: Option<String>,
    rendezvous_token: Option<String>,
    rendezvous_fingerprint: Option<String>,
}

/// Largest settings file read.
const MAX_SETTINGS: u64 = 64 * 1024;

impl Settings {
    /// `$P2P_COPY_CONFIG`, else `$XDG_CONFIG_HOME/p2p-copy/config.toml`, else
    /// `~/.config/p2p-copy/config.toml`. A missing default file is no error; a named one is.
    fn load() -> Result<Settings, TransferError> {
        let (path, named) = match std::env::var_os("P2P_COPY_CONFIG") {
            Some(p) if !p.is_empty() => (std::path::PathBuf::from(p), true),
            _ => {
                let base = std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|v| !v.is_empty())
                    .map(std::path::PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config"))
                    });
                match base {
                    Some(b) => (b.join("p2p-copy").join("config.toml"), false),
                    None => return Ok(Settings::default()),
                }
            }
        };
        let bad = |why: String| usage(format!("settings file {}: {why}", path.display()));
        let text = match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                let mut text = String::new();
                f.take(MAX_SETTINGS + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| bad(e.to_string()))?;
                if text.len() as u64 > MAX_SETTINGS {
                    return Err(bad(format!("larger than {MAX_SETTINGS} bytes")));
                }
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {
                return Ok(Settings::default())
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        toml::from_str(&text).map_err(|e| bad(e.to_string()))
    }
}

impl Meeting {
    /// The rendezvous settings, or `None` for the local network. Options (and their
    /// environment variables) win over the settings file.
    pub fn rendezvous(&self) -> Result<Option<crate::transfer::meet::Rendezvous>, TransferError> {
        let settings = if self.rendezvous.is_none()
            || self.rendezvous_token.is_none()
            || self.rendezvous_fingerprint.is_none()
        {
            Settings::load()?
        } else {
            Settings::default()
        };
        // The file's token and fingerprint belong to the file's node: they are never used for
        // a node named on the command line or in the environment.
        let (chosen, file_token, file_pin) = match self.rendezvous.clone() {
            Some(node) => (Some(node), None, None),
            None => {
                (settings.rendezvous, settings.rendezvous_token, settings.rendezvous_fingerprint)
            }
        };
        let token = self.rendezvous_token.clone().or(file_token);
        let fingerprint = match self.rendezvous_fingerprint.clone().or(file_pin) {
            Some(text) => Some(
                p2p_copy_rendezvous::auth::parse_fingerprint(&text)
                    .map_err(|e| usage(format!("--rendezvous-fingerprint: {e}")))?,
            ),
            None => None,
        };
        let node = match chosen.as_deref().map(str::trim) {
            None | Some("") | Some("none") => {
                if self.force_relay {
                    return Err(usage("--force-relay needs a rendezvous node (--rendezvous)"));
                }
                if self.no_relay {
                    return Err(usage("--no-relay needs a rendezvous node (--rendezvous)"));
                }
                return Ok(None);
            }
            Some(n) => n,
        };
        // HOST, HOST:PORT, [V6]:PORT; a bare IPv6 address has colons but no brackets.
        let has_port = node.rsplit_once(':').is_some_and(|(host, port)| {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        });
        let node = if has_port { node.to_owned() } else { format!("{node}:4433") };
        Ok(Some(crate::transfer::meet::Rendezvous {
            node,
            token,
            fingerprint,
            force_relay: self.force_relay,
            no_relay: self.no_relay,
        }))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Send(args) => with_runtime(&args.common.clone(), |stop| send::run(args, stop)),
        Command::Receive(args) => {
            with_runtime(&args.common.clone(), |stop| receive::run(args, stop))
        }
        Command::Code(args) => code::run(args),
        Command::Rendezvous(args) => rendezvous::main(*args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "p2p-copy", &mut std::io::stdout());
            Ok(())
        }
        Command::Man(args) => man(args.subcommand.as_deref(), &mut std::io::stdout().lock())
            .map_err(|e| TransferError::new(ErrorKind::Io, format!("writing the page: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.kind.exit_code()),
    }
}

/// Threads for the async runtime: half the cores (at least one). Reading, hashing and
/// writing run on blocking threads of their own; the async side is QUIC's connection driver
/// and the lanes' stream tasks, and where it had a thread per core, its threads mostly handed
/// tasks to each other across cores that the blocking threads needed (on 2 cores, one async
/// thread moved 1 GiB 5–8 % faster: `docs/benchmarks.md`). `TOKIO_WORKER_THREADS` overrides.
fn async_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs a transfer command on a fresh runtime. Ctrl-C or SIGTERM asks the transfer to stop
/// cleanly (it tells the peer and removes partial files); a second signal ends it at once.
/// Reports the error, if any.
fn with_runtime<F: std::future::Future<Output = Result<(), TransferError>>>(
    common: &Common,
    work: impl FnOnce(Stop) -> F,
) -> Result<(), TransferError> {
    init_tracing(common);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(async_workers());
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| TransferError::internal(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async {
        let (handle, stop) = Stop::new();
        let work = work(stop);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => return r,
            signal = interrupted() => handle.stop(signal),
        }
        tokio::select! {
            r = work => r,
            signal = interrupted() => Err(TransferError::new(
                ErrorKind::Interrupted,
                format!("stopped at once by a second {signal}"),
            )),
        }
    });
    // Blocking lane workers notice their closed channels at once and remove partial files;
    // give them a moment (a prompt blocked on stdin is not waited for).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(e) = &result {
        output::report_error(common, e);
    }
    result
}

async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// The log filter `-q`/`-v` ask for when `RUST_LOG` is not set.
fn default_filter(common: &Common) -> &'static str {
    match (common.quiet, common.verbose) {
        (true, _) => "error",
        // quinn's own warnings (a send refused by a firewall, say) are noise for a person: the
        // transfer reports what matters.
        (_, 0) => "warn,quinn=error,quinn_udp=error",
        (_, 1) => "info,p2p_copy=debug",
        _ => "debug,p2p_copy=trace",
    }
}

/// Installs the log subscriber unless one is (the rendezvous node may have its own format).
fn init_tracing(common: &Common) {
    use tracing_subscriber::field::MakeExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(common)));
    // Log fields carry names and messages from the network: escaped as they are written,
    // like every other line the command line prints.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = crate::transfer::printable(&format!("{value:?}"));
        match field.name() {
            "message" => write!(w, "{text}"),
            name => write!(w, "{name}={text}"),
        }
    })
    .delimited(" ");
    let _ = tracing_subscriber::fmt()
        .fmt_fields(fields)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn usage(message: impl Into<String>) -> TransferError {
    TransferError::new(ErrorKind::Usage, message)
}

#[cfg(test)]
mod tests {
    /// Clap's own consistency checks over every subcommand (duplicate ids, bad defaults, …).
    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn window_sizes_take_binary_suffixes_within_bounds() {
        use super::parse_window;
        assert_eq!(parse_window("16M"), Ok(16 << 20));
        assert_eq!(parse_window("64m"), Ok(64 << 20));
        assert_eq!(parse_window(" 1g "), Ok(1 << 30));
        assert_eq!(parse_window("2048K"), Ok(2 << 20));
        assert_eq!(parse_window("1048576"), Ok(1 << 20));
        for bad in ["", "M", "16MB", "-1M", "0.5M", "1023K", "2G", "99999999999999999999G"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }
}
