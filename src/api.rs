//! The library: [`Sender`] and [`Receiver`] builders, the [`Transfer`] they start, its
//! [`Event`]s and its [`Finished`] result. Re-exported at the crate root.

mod event;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

pub(crate) use event::{millis, Rate};
pub use event::{Event, OfferSummary, ProgressSample, Quality, Summary};

use crate::code::Code;
use crate::error::ErrorKind;
use crate::transfer::lanes::Pipe;
use crate::transfer::survey::Present;
use crate::transfer::walk::StreamSource;
use crate::transfer::{
    self, Note, Observer, Progress, ReceiveOptions, Report, SendOptions, Stop, StopHandle,
    TransferError,
};
use crate::wire::control::Offer;

#[doc(inline)]
pub use crate::compress::Compression;
#[doc(inline)]
pub use crate::net::quic::Congestion;
#[doc(inline)]
pub use crate::transfer::meet::Rendezvous;
#[doc(inline)]
pub use crate::transfer::{FileOutcome, Link, PathKind};

/// A failed transfer: its [`ErrorKind`] and a sentence for a person.
pub type Error = TransferError;

/// Events a watcher may fall behind by before they are dropped (and counted in
/// [`Event::Lagged`]): a transfer never waits for its watcher.
pub const EVENT_QUEUE: usize = 1024;

/// A fresh code of `words` secret words (3 words: 24 bits, each more adds 8), with a random
/// local-network nameplate.
pub fn generate_code(words: usize) -> Result<String, Error> {
    fresh_code(words).map(|c| c.to_string())
}

pub(crate) fn fresh_code(words: usize) -> Result<Code, Error> {
    use rand::rngs::OsRng;
    let nameplate = Code::random_nameplate(&mut OsRng);
    Code::generate(nameplate, words, &mut OsRng)
        .map_err(|e| TransferError::new(ErrorKind::Usage, e.to_string()))
}

/// What a sender sends.
enum Source {
    Paths(Vec<PathBuf>),
    Text(String),
    Stream { name: String, reader: Box<dyn std::io::Read + Send> },
    AsyncStream { name: String, reader: Box<dyn AsyncRead + Send + Unpin> },
}

/// Options both sides share.
#[derive(Debug, Clone, Default)]
struct Shared {
    limit_rate: Option<u64>,
    wait: Option<Duration>,
    reconnect_wait: Option<Duration>,
    rendezvous: Option<Rendezvous>,
    discovery_port: Option<u16>,
    window: Option<u32>,
    congestion: Option<Congestion>,
}

/// Longest a sender waits for its receiver (as `send --wait`).
const MAX_SEND_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest a receiver looks for its sender (as `receive --wait`).
const MAX_RECEIVE_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Longest either side tries to reconnect (as `--reconnect-wait`).
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

fn usage(message: impl Into<String>) -> Error {
    TransferError::new(ErrorKind::Usage, message)
}

impl Shared {
    /// Checks the options against the command line's ranges.
    fn check(&self, max_wait: Duration) -> Result<(), Error> {
        if self.wait.is_some_and(|w| w.is_zero() || w > max_wait) {
            return Err(usage(format!("the wait must be 1 s to {} s", max_wait.as_secs())));
        }
        if self.reconnect_wait.is_some_and(|w| w > MAX_RECONNECT_WAIT) {
            return Err(usage("the reconnect wait must be at most a week"));
        }
        if self.window.is_some_and(|w| !(1 << 20..=1 << 30).contains(&w)) {
            return Err(usage("the window must be 1 MiB to 1 GiB"));
        }
        Ok(())
    }
}

/// The options both builders share, as methods of `$builder`; `$wait` documents `wait`.
macro_rules! shared_options {
    ($builder:ident, $wait:literal, $peer:literal) => {
        impl $builder {
            #[doc = $wait]
            pub fn wait(mut self, wait: Duration) -> $builder {
                self.shared.wait = Some(wait);
                self
            }

            /// At most this many bytes per second of data (`--limit-rate`).
            pub fn limit_rate(mut self, bytes_per_second: u64) -> $builder {
                self.shared.limit_rate = Some(bytes_per_second).filter(|&r| r > 0);
                self
            }

            /// How long to try to reconnect after losing the connection mid-transfer
            /// (`--reconnect-wait`; default 10 minutes; zero fails at once).
            pub fn reconnect_wait(mut self, wait: Duration) -> $builder {
                self.shared.reconnect_wait = Some(wait);
                self
            }

            #[doc = concat!("Meets the ", $peer, " through a rendezvous node instead of on the local network.")]
            pub fn rendezvous(mut self, node: Rendezvous) -> $builder {
                self.shared.rendezvous = Some(node);
                self
            }

            /// The UDP port of local-network discovery (both sides must agree; default 5032 or
            /// `P2P_COPY_DISCOVERY_PORT`).
            pub fn discovery_port(mut self, port: u16) -> $builder {
                self.shared.discovery_port = Some(port);
                self
            }

            /// Fixes the flow-control window at `bytes` instead of growing it (`--window`).
            pub fn window(mut self, bytes: u32) -> $builder {
                self.shared.window = Some(bytes);
                self
            }

            /// The congestion controller for what this side sends (`--congestion`; default
            /// [`Congestion::Tolerant`]).
            pub fn congestion(mut self, controller: Congestion) -> $builder {
                self.shared.congestion = Some(controller);
                self
            }
        }
    };
}

/// Puts the shared options into the driver's options `$opts`.
macro_rules! apply_shared {
    ($shared:expr, $opts:ident) => {{
        let s = $shared;
        $opts.limit_rate = s.limit_rate;
        $opts.wait = s.wait.unwrap_or($opts.wait);
        $opts.reconnect_wait = s.reconnect_wait.unwrap_or($opts.reconnect_wait);
        $opts.rendezvous = s.rendezvous;
        if let Some(port) = s.discovery_port {
            $opts.discovery.port = port;
        }
        if let Some(congestion) = s.congestion {
            $opts.tuning.congestion = congestion;
        }
        if let Some(window) = s.window {
            $opts.tuning = $opts.tuning.with_window(window);
        }
    }};
}

shared_options!(
    Sender,
    "How long to wait for the receiver (`--wait`; default an hour).",
    "receiver"
);
shared_options!(Receiver, "How long to look for the sender (`--wait`; default 30 s).", "sender");

/// Sends files, a text or a stream to one [`Receiver`]: the library's `p2p-copy send`.
///
/// Build it from what to send, set options, then [`Sender::start`] it inside a tokio runtime
/// (the multi-threaded one: files are read on blocking threads). The code is known at once,
/// before a receiver comes; hand it over, then read events and wait for the end.
///
/// ```no_run
/// # async fn run() -> Result<(), p2p_copy::Error> {
/// let mut transfer = p2p_copy::Sender::paths(["photos", "notes.txt"]).start()?;
/// if let Some(code) = transfer.wait_code().await {
///     println!("on the other machine: p2p-copy receive {code}");
/// }
/// while let Some(event) = transfer.next_event().await {
///     if let p2p_copy::Event::File { path, .. } = event {
///         println!("sent {path:?}");
///     }
/// }
/// let finished = transfer.wait().await?;
/// println!("{} bytes in {:.1}s", finished.report.bytes, finished.report.seconds);
/// # Ok(())
/// # }
/// ```
#[must_use = "a Sender does nothing until it is started"]
pub struct Sender {
    source: Source,
    code: Option<String>,
    code_words: usize,
    lanes: Option<u16>,
    chunk_size: Option<usize>,
    compression: Option<Compression>,
    sparse: bool,
    checksum: bool,
    xattrs: bool,
    exclude: Vec<String>,
    shared: Shared,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Paths(p) => format!("paths {p:?}"),
            Source::Text(t) => format!("text of {} bytes", t.len()),
            Source::Stream { name, .. } | Source::AsyncStream { name, .. } => {
                format!("stream {name:?}")
            }
        };
        f.debug_struct("Sender").field("source", &source).finish_non_exhaustive()
    }
}

impl Sender {
    fn with(source: Source) -> Sender {
        Sender {
            source,
            code: None,
            code_words: crate::code::DEFAULT_WORDS,
            lanes: None,
            chunk_size: None,
            compression: None,
            sparse: true,
            checksum: false,
            xattrs: false,
            exclude: Vec::new(),
            shared: Shared::default(),
        }
    }

    /// Sends these files and directories (`p2p-copy send PATHS`).
    pub fn paths<I, P>(paths: I) -> Sender
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        Sender::with(Source::Paths(paths.into_iter().map(Into::into).collect()))
    }

    /// Sends a text message instead of files (`send --text`): at most 1 MiB; the receiver
    /// gets it in [`Finished::text`] and writes no file.
    pub fn text(text: impl Into<String>) -> Sender {
        Sender::with(Source::Text(text.into()))
    }

    /// Sends `data` as one file called `name` (a single path component). It goes as a stream
    /// ([`Sender::reader`]): the offer does not show its size.
    pub fn bytes(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Sender {
        let reader = Box::new(std::io::Cursor::new(data.into()));
        Sender::with(Source::Stream { name: name.into(), reader })
    }

    /// Sends what `reader` gives, until its end, as one file called `name` of unknown size
    /// (`send -`), read as it is sent: constant memory.
    pub fn reader(
        name: impl Into<String>,
        reader: impl AsyncRead + Send + Unpin + 'static,
    ) -> Sender {
        Sender::with(Source::AsyncStream { name: name.into(), reader: Box::new(reader) })
    }

    /// As [`Sender::reader`], for a blocking reader (it is read on a blocking thread).
    pub fn blocking_reader(
        name: impl Into<String>,
        reader: impl std::io::Read + Send + 'static,
    ) -> Sender {
        Sender::with(Source::Stream { name: name.into(), reader: Box::new(reader) })
    }

    /// Uses this code instead of a generated one (`--code`): it must be strong enough (see
    /// `p2p-copy code`), or [`Sender::start`] fails with [`ErrorKind::Usage`].
    pub fn code(mut self, code: impl Into<String>) -> Sender {
        self.code = Some(code.into());
        self
    }

    /// Secret words in a generated code (`--code-words`; default 3).
    pub fn code_words(mut self, words: usize) -> Sender {
        self.code_words = words;
        self
    }

    /// Data streams to run in parallel, 1 to 16 (`--lanes`; default 4).
    pub fn lanes(mut self, lanes: u16) -> Sender {
        self.lanes = Some(lanes);
        self
    }

    /// Chunk size in bytes, 16 KiB to 4 MiB (`--chunk-size`).
    pub fn chunk_size(mut self, bytes: usize) -> Sender {
        self.chunk_size = Some(bytes);
        self
    }

    /// What to compress (`--compress`; default [`Compression::Auto`]).
    pub fn compression(mut self, compression: Compression) -> Sender {
        self.compression = Some(compression);
        self
    }

    /// Whether holes of sparse files go as holes (`--sparse`; default on).
    pub fn sparse(mut self, sparse: bool) -> Sender {
        self.sparse = sparse;
        self
    }

    /// Compares files the receiver already holds by BLAKE3 hash, not size and mtime
    /// (`--checksum`).
    pub fn checksum(mut self, checksum: bool) -> Sender {
        self.checksum = checksum;
        self
    }

    /// Sends the extended attributes of files and directories, `user.` ones only
    /// (`--xattrs`); the receiver keeps them where its file system takes them.
    pub fn xattrs(mut self, xattrs: bool) -> Sender {
        self.xattrs = xattrs;
        self
    }

    /// Leaves out what matches this gitignore-style pattern, relative to each sent path
    /// (`--exclude`; repeatable).
    pub fn exclude(mut self, glob: impl Into<String>) -> Sender {
        self.exclude.push(glob.into());
        self
    }

    /// The options of the driver, and the code.
    pub(crate) fn into_options(self) -> Result<SendOptions, Error> {
        let chosen = self.code.is_some();
        let code = match &self.code {
            Some(c) => Code::parse_chosen(c)
                .map_err(|e| TransferError::new(ErrorKind::Usage, e.to_string()))?,
            None => fresh_code(self.code_words)?,
        };
        self.shared.check(MAX_SEND_WAIT)?;
        let paths = matches!(self.source, Source::Paths(_));
        if !paths && (self.checksum || self.xattrs || !self.exclude.is_empty()) {
            return Err(usage("exclude, checksum and xattrs apply to paths only"));
        }
        let mut opts = SendOptions::new(Vec::new(), code);
        match self.source {
            Source::Paths(paths) => opts.paths = paths,
            Source::Text(text) => opts.text = Some(text),
            Source::Stream { name, reader } => {
                opts.stream = Some(StreamSource::new(&name, reader)?)
            }
            Source::AsyncStream { name, reader } => {
                let reader = Box::new(SyncIoBridge::new(reader));
                opts.stream = Some(StreamSource::new(&name, reader)?);
            }
        }
        if let Some(lanes) = self.lanes {
            if !(1..=16).contains(&lanes) {
                return Err(TransferError::new(ErrorKind::Usage, "lanes must be 1 to 16"));
            }
            opts.lanes = lanes;
        }
        if let Some(chunk) = self.chunk_size {
            opts.chunk_size = chunk;
        }
        if let Some(c) = self.compression {
            opts.compression = c;
        }
        opts.sparse = self.sparse;
        opts.checksum = self.checksum;
        opts.xattrs = self.xattrs;
        opts.exclude = self.exclude;
        opts.code_chosen = chosen;
        apply_shared!(self.shared, opts);
        transfer::send::check_chunk(opts.chunk_size)?;
        Ok(opts)
    }

    /// Starts the transfer on the current tokio runtime: checks the options, makes (or
    /// checks) the code and returns at once; the transfer runs until the receiver is served,
    /// the wait runs out, or it is stopped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Result<Transfer, Error> {
        let mut opts = self.into_options()?;
        // A node allocates the nameplate of a generated code: the code is known once it has.
        let allocated = opts.rendezvous.is_some() && !opts.code_chosen;
        let code = (!allocated).then(|| opts.code.to_string());
        let (handle, stop) = Stop::new();
        opts.stop = stop;
        Ok(Transfer::spawn(code, handle, Feed::new(None), None, move |feed, progress| {
            transfer::send(opts, feed, progress)
        }))
    }
}

/// Where a receiver puts what it receives.
enum Sink {
    Dir(PathBuf),
    Writer(Box<dyn std::io::Write + Send>),
    AsyncWriter(Box<dyn AsyncWrite + Send + Unpin>),
    Memory(usize),
}

/// The receiver's decision on an offer.
type Decide = Arc<dyn Fn(&OfferSummary) -> bool + Send + Sync>;

/// Receives what a [`Sender`] offers under a code: the library's `p2p-copy receive`.
///
/// By default it accepts the offer (as `receive --yes`) and writes into the current
/// directory; [`Receiver::on_offer`] decides instead, and [`Receiver::into_dir`],
/// [`Receiver::into_writer`] and [`Receiver::into_memory`] choose where the data goes.
///
/// ```no_run
/// # async fn run() -> Result<(), p2p_copy::Error> {
/// let transfer = p2p_copy::Receiver::new("7-guitar-nebula-crayon")
///     .into_dir("downloads")
///     // A stream's size is not known before it ends: refuse those too.
///     .on_offer(|offer| !offer.stream && offer.bytes < 1 << 30)
///     .start()?;
/// let finished = transfer.wait().await?;
/// println!("{} files", finished.report.files);
/// # Ok(())
/// # }
/// ```
#[must_use = "a Receiver does nothing until it is started"]
pub struct Receiver {
    code: String,
    sink: Sink,
    decide: Option<Decide>,
    overwrite: bool,
    checksum: bool,
    xattrs: bool,
    shared: Shared,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match &self.sink {
            Sink::Dir(d) => format!("directory {}", d.display()),
            Sink::Writer(_) | Sink::AsyncWriter(_) => "a writer".to_owned(),
            Sink::Memory(limit) => format!("memory (at most {limit} bytes)"),
        };
        f.debug_struct("Receiver").field("sink", &sink).finish_non_exhaustive()
    }
}

impl Receiver {
    /// Receives with this code (as the sender shows it) into the current directory.
    pub fn new(code: impl Into<String>) -> Receiver {
        Receiver {
            code: code.into(),
            sink: Sink::Dir(PathBuf::from(".")),
            decide: None,
            overwrite: false,
            checksum: false,
            xattrs: true,
            shared: Shared::default(),
        }
    }

    /// Receives into this directory (`--out`; created if missing). Partial files of an
    /// interrupted transfer stay in it, and a later receive of the same offer continues them.
    pub fn into_dir(mut self, dir: impl Into<PathBuf>) -> Receiver {
        self.sink = Sink::Dir(dir.into());
        self
    }

    /// Writes the offer's one file into `writer` (`--stdout`), and shuts it down at the
    /// file's end; an offer of anything else is refused and nothing is written.
    pub fn into_writer(mut self, writer: impl AsyncWrite + Send + Unpin + 'static) -> Receiver {
        self.sink = Sink::AsyncWriter(Box::new(writer));
        self
    }

    /// As [`Receiver::into_writer`], for a blocking writer (it is written on a blocking
    /// thread).
    pub fn into_blocking_writer(
        mut self,
        writer: impl std::io::Write + Send + 'static,
    ) -> Receiver {
        self.sink = Sink::Writer(Box::new(writer));
        self
    }

    /// Keeps the offer's one file in memory, in [`Finished::data`]; an offer of anything else,
    /// or of a file over `limit` bytes, is refused, and a stream that grows past `limit` fails
    /// the transfer ([`ErrorKind::Io`]).
    pub fn into_memory(mut self, limit: usize) -> Receiver {
        self.sink = Sink::Memory(limit);
        self
    }

    /// Decides on the offer: `decide` sees what is offered and what the destination holds
    /// already, and returns whether to accept. It runs on a blocking thread, so it may ask a
    /// person. A stream's size is not known (`offer.stream`, `offer.bytes` 0); a text is
    /// not asked about (it writes nothing).
    pub fn on_offer(
        mut self,
        decide: impl Fn(&OfferSummary) -> bool + Send + Sync + 'static,
    ) -> Receiver {
        self.decide = Some(Arc::new(decide));
        self
    }

    /// Sets the extended attributes a sender sends with [`Sender::xattrs`] (default on;
    /// off: `receive --no-xattrs`).
    pub fn xattrs(mut self, xattrs: bool) -> Receiver {
        self.xattrs = xattrs;
        self
    }

    /// Replaces files that exist and differ (`--overwrite`).
    pub fn overwrite(mut self, overwrite: bool) -> Receiver {
        self.overwrite = overwrite;
        self
    }

    /// Compares files already held by BLAKE3 hash (`--checksum`).
    pub fn checksum(mut self, checksum: bool) -> Receiver {
        self.checksum = checksum;
        self
    }

    /// Starts the transfer on the current tokio runtime (the multi-threaded one: files are
    /// written on blocking threads) and returns at once.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Result<Transfer, Error> {
        let (mut opts, decide, memory) = self.into_options()?;
        let (handle, stop) = Stop::new();
        opts.stop = stop;
        let code = Some(opts.code.to_string());
        Ok(Transfer::spawn(code, handle, Feed::new(decide), memory, move |feed, progress| {
            transfer::receive(opts, feed, progress)
        }))
    }

    /// The options of the driver, the decision and the memory sink.
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_options(
        self,
    ) -> Result<(ReceiveOptions, Option<Decide>, Option<Arc<Mutex<Vec<u8>>>>), Error> {
        self.shared.check(MAX_RECEIVE_WAIT)?;
        let code = Code::parse(&self.code)
            .map_err(|e| TransferError::new(ErrorKind::Usage, e.to_string()))?;
        let out = match &self.sink {
            Sink::Dir(dir) => dir.clone(),
            _ => PathBuf::from("."),
        };
        let mut opts = ReceiveOptions::new(code, out);
        let mut memory = None;
        let mut decide = self.decide;
        opts.pipe = match self.sink {
            Sink::Dir(_) => None,
            Sink::Writer(w) => Some(Pipe::new(w)),
            Sink::AsyncWriter(w) => Some(Pipe::new(Box::new(Closing(SyncIoBridge::new(w))))),
            Sink::Memory(limit) => {
                // A file known to be too large is refused before a byte moves.
                let inner = decide.take();
                decide = Some(Arc::new(move |offer: &OfferSummary| {
                    (offer.stream || offer.bytes <= limit as u64)
                        && inner.as_ref().is_none_or(|decide| decide(offer))
                }));
                let buffer = Memory::new(limit);
                memory = Some(buffer.0.clone());
                Some(Pipe::new(Box::new(buffer)))
            }
        };
        opts.yes = decide.is_none();
        opts.interactive = decide.is_some();
        opts.overwrite = self.overwrite;
        opts.checksum = self.checksum;
        opts.xattrs = self.xattrs;
        apply_shared!(self.shared, opts);
        Ok((opts, decide, memory))
    }
}

/// A receiver's memory sink: at most `limit` bytes.
struct Memory(Arc<Mutex<Vec<u8>>>, usize);

impl Memory {
    fn new(limit: usize) -> Memory {
        Memory(Arc::new(Mutex::new(Vec::new())), limit)
    }
}

impl std::io::Write for Memory {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        if data.len() + buf.len() > self.1 {
            return Err(std::io::Error::other(format!(
                "the file is larger than the {} bytes allowed in memory",
                self.1
            )));
        }
        // Doubling, as a Vec grows, but never past the limit (and no abort when memory is
        // short: an error instead).
        let want = (data.len() + buf.len()).max(data.capacity() * 2).min(self.1);
        let more = want - data.len();
        data.try_reserve_exact(more).map_err(std::io::Error::other)?;
        data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An async writer's bridge that also shuts the writer down when the file is complete (the
/// receiver flushes once, at the file's end), so that encoders and TLS streams write their
/// tail.
struct Closing<W: AsyncWrite + Unpin>(SyncIoBridge<W>);

impl<W: AsyncWrite + Unpin> std::io::Write for Closing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.0.shutdown()
    }
}

/// The end of a successful transfer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Finished {
    /// What the transfer did.
    pub report: Report,
    /// Receiver of a text offer: the text (untrusted: escape it for a terminal).
    pub text: Option<String>,
    /// Receiver into memory ([`Receiver::into_memory`]): the file.
    pub data: Option<Vec<u8>>,
}

/// A running transfer: its code, its events, a way to stop it and its end.
///
/// Dropping it stops the transfer (as [`Transfer::stop`]) unless it has ended.
#[derive(Debug)]
pub struct Transfer {
    /// The code as far as it is known (see [`Transfer::code`]).
    code: tokio::sync::watch::Receiver<CodeState>,
    events: mpsc::Receiver<Event>,
    stop: StopHandle,
    progress: Arc<Progress>,
    task: Option<tokio::task::JoinHandle<Result<Finished, Error>>>,
    ended: Option<Result<Finished, Error>>,
    /// The shared observer, for the count of dropped events.
    feed: Arc<Feed>,
    /// The last event (done or error) was given.
    told_end: bool,
}

impl Transfer {
    fn spawn<F, Fut>(
        code_known: Option<String>,
        stop: StopHandle,
        feed: Arc<Feed>,
        memory: Option<Arc<Mutex<Vec<u8>>>>,
        run: F,
    ) -> Transfer
    where
        F: FnOnce(Arc<dyn Observer>, Arc<Progress>) -> Fut,
        Fut: std::future::Future<Output = Result<Report, Error>> + Send + 'static,
    {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        *feed.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        let code = feed.code.subscribe();
        if let Some(known) = code_known {
            feed.code.send_replace(CodeState::Known(known));
        }
        let progress = Progress::new();
        let driver = run(feed.clone() as Arc<dyn Observer>, progress.clone());
        let watched = progress.clone();
        let shared = feed.clone();
        let task = tokio::spawn(async move {
            let result = tokio::select! {
                result = driver => result,
                never = feed.tick(&watched) => match never {},
            };
            // Whoever waits for a code that never came is told.
            feed.code.send_if_modified(|c| {
                let pending = matches!(c, CodeState::Pending);
                if pending {
                    *c = CodeState::Ended;
                }
                pending
            });
            // The queue closes; its last event (done or error) is made from the result, so
            // that a full queue cannot lose it.
            feed.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            let report = result?;
            let text = feed.text.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            let data = memory.map(|m| {
                std::mem::take(&mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            });
            Ok(Finished { report, text, data })
        });
        Transfer {
            code,
            events,
            feed: shared,
            stop,
            progress,
            task: Some(task),
            ended: None,
            told_end: false,
        }
    }

    /// The code: the sender's to hand to the receiver (generated or chosen), the receiver's
    /// as given. A sender meeting through a rendezvous node with a generated code knows it
    /// only once the node allocated its nameplate (the [`Event::Code`]): `None` until then
    /// ([`Transfer::wait_code`] waits for it). Everywhere else it is known at once.
    pub fn code(&self) -> Option<String> {
        match &*self.code.borrow() {
            CodeState::Known(code) => Some(code.clone()),
            CodeState::Pending | CodeState::Ended => None,
        }
    }

    /// The code, once it is known (see [`Transfer::code`]); `None` if the transfer ended
    /// first (its error is then [`Transfer::wait`]'s).
    pub async fn wait_code(&self) -> Option<String> {
        let mut code = self.code.clone();
        let state = code.wait_for(|c| !matches!(c, CodeState::Pending)).await.ok()?;
        match &*state {
            CodeState::Known(code) => Some(code.clone()),
            CodeState::Pending | CodeState::Ended => None,
        }
    }

    /// File bytes moved so far (held ones included).
    pub fn bytes(&self) -> u64 {
        self.progress.bytes()
    }

    /// The next event; `None` once the transfer has ended and its last event (`done` or
    /// `error`) was read. Events not read in time are dropped ([`Event::Lagged`]).
    pub async fn next_event(&mut self) -> Option<Event> {
        while let Some(task) = self.task.as_mut() {
            let ended = tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => return Some(event),
                    // Closed: the transfer is ending.
                    None => None,
                },
                ended = &mut *task => Some(ended),
            };
            let ended = match ended {
                Some(ended) => ended,
                None => task.await,
            };
            self.end(ended);
        }
        // Ended: what is still queued, how much was dropped, then the end.
        if let Ok(event) = self.events.try_recv() {
            return Some(event);
        }
        let missed = self.feed.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Some(Event::Lagged { missed });
        }
        if std::mem::replace(&mut self.told_end, true) {
            return None;
        }
        self.ended.as_ref().map(|ended| match ended {
            Ok(finished) => Event::Done(Summary::from(&finished.report)),
            Err(e) => Event::Error { kind: e.kind, message: e.message.clone() },
        })
    }

    fn end(&mut self, ended: Result<Result<Finished, Error>, tokio::task::JoinError>) {
        self.task = None;
        self.ended = Some(ended.unwrap_or_else(|e| {
            Err(TransferError::new(ErrorKind::Internal, format!("the transfer failed: {e}")))
        }));
    }

    /// Asks the transfer to stop: the peer is told, partial files are kept for a resume, and
    /// the transfer ends with [`ErrorKind::Interrupted`].
    pub fn stop(&self) {
        self.stop.stop("the program");
    }

    /// Waits for the end of the transfer (events not read are discarded). A transfer that
    /// finished but whose receiver could not hold some entries (names or links its file system
    /// does not take) is `Ok`, with their count in the report's `refused` (the command line
    /// exits with [`ErrorKind::Incomplete`] then).
    pub async fn wait(mut self) -> Result<Finished, Error> {
        if let Some(task) = self.task.as_mut() {
            let ended = task.await;
            self.end(ended);
        }
        self.ended.take().unwrap_or_else(|| {
            Err(TransferError::new(ErrorKind::Internal, "the transfer's end was already taken"))
        })
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            self.stop.stop("the program");
        }
    }
}

/// What is known of a transfer's code.
#[derive(Debug, Clone)]
enum CodeState {
    /// Not yet: a node is allocating the nameplate.
    Pending,
    Known(String),
    /// The transfer ended before it was known.
    Ended,
}

/// The library's observer: events into a bounded queue, the offer to the caller's decision.
struct Feed {
    tx: Mutex<Option<mpsc::Sender<Event>>>,
    /// The code, once known.
    code: tokio::sync::watch::Sender<CodeState>,
    missed: AtomicU64,
    decide: Option<Decide>,
    text: Mutex<Option<String>>,
    /// Once accepted: the bytes to move, if known.
    total: Mutex<Option<Option<u64>>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("missed", &self.missed).finish_non_exhaustive()
    }
}

impl Feed {
    fn new(decide: Option<Decide>) -> Arc<Feed> {
        Arc::new(Feed {
            tx: Mutex::new(None),
            code: tokio::sync::watch::Sender::new(CodeState::Pending),
            missed: AtomicU64::new(0),
            decide,
            text: Mutex::new(None),
            total: Mutex::new(None),
        })
    }

    /// Queues `event`, or counts it missed when the queue is full.
    fn push(&self, event: Event) {
        let tx = self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tx) = tx.as_ref() else { return };
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 && tx.try_send(Event::Lagged { missed }).is_err() {
            self.missed.fetch_add(missed + 1, Ordering::Relaxed);
            return;
        }
        if tx.try_send(event).is_err() {
            self.missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A `progress` event every second once data flows; never returns.
    async fn tick(&self, progress: &Progress) -> std::convert::Infallible {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut rate = Rate::default();
        loop {
            tick.tick().await;
            let per_second = rate.update(progress.bytes(), std::time::Instant::now());
            let total = *self.total.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(total) = total {
                self.push(Event::Progress(ProgressSample::of(progress, total, per_second)));
            }
        }
    }
}

impl Observer for Feed {
    fn note(&self, note: Note<'_>) {
        match &note {
            Note::Text { text } => {
                *self.text.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((*text).to_owned());
            }
            Note::Accepted { total, .. } => {
                *self.total.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(*total);
            }
            Note::Code(code) => {
                self.code.send_replace(CodeState::Known(code.to_string()));
            }
            _ => {}
        }
        self.push(Event::from_note(&note));
    }

    fn confirm(&self, offer: &Offer, present: Present) -> bool {
        self.decide.as_ref().is_some_and(|decide| decide(&OfferSummary::new(offer, present)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_events_and_says_how_many() {
        let feed = Feed::new(None);
        let (tx, mut rx) = mpsc::channel(2);
        *feed.tx.lock().unwrap() = Some(tx);
        for _ in 0..5 {
            feed.push(Event::Reconnected);
        }
        assert_eq!(rx.try_recv().unwrap(), Event::Reconnected);
        assert_eq!(rx.try_recv().unwrap(), Event::Reconnected);
        assert!(rx.try_recv().is_err(), "three dropped");
        feed.push(Event::Reconnected);
        assert_eq!(rx.try_recv().unwrap(), Event::Lagged { missed: 3 });
        assert_eq!(rx.try_recv().unwrap(), Event::Reconnected);
    }

    #[test]
    fn the_builders_options_reach_the_driver() {
        let opts = Sender::paths(["a"])
            .congestion(Congestion::Bbr)
            .window(8 << 20)
            .limit_rate(1000)
            .lanes(2)
            .exclude("*.o")
            .xattrs(true)
            .into_options()
            .unwrap();
        assert_eq!(opts.tuning.congestion, Congestion::Bbr);
        assert_eq!((opts.tuning.stream_window, opts.tuning.conn_window), (8 << 20, 8 << 20));
        assert_eq!((opts.limit_rate, opts.lanes, opts.xattrs), (Some(1000), 2, true));
        assert_eq!(opts.exclude, vec!["*.o".to_owned()]);
        let (opts, decide, memory) = Receiver::new("7-guitar-nebula-crayon")
            .congestion(Congestion::Cubic)
            .xattrs(false)
            .into_memory(10)
            .into_options()
            .unwrap();
        assert_eq!(opts.tuning.congestion, Congestion::Cubic);
        assert!(!opts.xattrs && !opts.yes && opts.interactive, "the memory sink decides");
        assert!(decide.is_some() && memory.is_some() && opts.pipe.is_some());
    }

    #[test]
    fn events_print_as_the_json_lines_of_the_command_line() {
        let event = Event::Warning { message: "a \"quoted\"\u{1b} word".into() };
        assert_eq!(event.to_json(), r#"{"event":"warning","message":"a \"quoted\"\u001b word"}"#);
        let error = Event::Error { kind: ErrorKind::WrongCode, message: "no".into() };
        assert_eq!(error.to_json(), r#"{"event":"error","kind":"wrong_code","message":"no"}"#);
        let file = Event::File { path: "a/b".into(), bytes: 3, outcome: FileOutcome::Skipped };
        assert_eq!(
            file.to_json(),
            r#"{"event":"file","path":"a/b","bytes":3,"outcome":"skipped"}"#
        );
    }
}
