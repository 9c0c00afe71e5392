//! The tokio driver around the protocol: sockets, streams, files, progress.
//!
//! - [`send()`] and [`receive()`]: one transfer each, start to finish.
//! - [`control`]: the control stream, pumping a [`crate::proto::Session`].
//! - [`walk`]: the sender's view of its paths (a counting scan, then a streaming walk).
//! - [`lanes`]: data lanes — reading, hashing and sealing on blocking threads on the sender;
//!   opening, checking and writing on blocking threads on the receiver.
//! - [`fs`]: the receiver's destination directory, the only code that writes there.
//!
//! The CLI (or any caller) watches a transfer through an [`Observer`] and reads progress from
//! a shared counter.

pub mod cache;
pub mod control;
pub mod fs;
pub mod lanes;
pub mod meet;
pub mod prefix;
pub mod rate;
pub mod receive;
pub mod rejoin;
pub mod send;
pub mod survey;
pub mod walk;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::code::Code;
use crate::error::ErrorKind;
use crate::wire::control::Offer;

pub use crate::net::path::PathKind;
pub use receive::{receive, ReceiveOptions};
pub use send::{send, SendOptions};

/// What the two sides prove to each other to make a session: the code (a PAKE), or, to rejoin
/// a transfer they already share, its resume secret.
#[derive(Debug, Clone)]
pub(crate) enum Key {
    /// The code.
    Code(Code),
    /// The resume secret of an earlier session of the same transfer.
    Rejoin([u8; 32]),
}

impl Key {
    /// The nameplate to meet on.
    pub(crate) fn nameplate(&self) -> u32 {
        match self {
            Key::Code(c) => c.nameplate(),
            Key::Rejoin(secret) => crate::crypto::rejoin_nameplate(secret),
        }
    }

    /// The session, on a connection known now.
    pub(crate) fn session(
        &self,
        role: crate::crypto::Role,
        channel: crate::proto::Channel,
        config: crate::proto::Config,
    ) -> crate::proto::Session {
        let now = std::time::Instant::now();
        let rng = &mut rand::rngs::OsRng;
        match self {
            Key::Code(c) => crate::proto::Session::new(role, c, channel, config, now, rng),
            Key::Rejoin(s) => crate::proto::Session::rejoin(role, *s, channel, config, now, rng),
        }
    }

    /// The session, its handshake through the rendezvous mailbox first.
    pub(crate) fn deferred(
        &self,
        role: crate::crypto::Role,
        config: crate::proto::Config,
    ) -> crate::proto::Session {
        let now = std::time::Instant::now();
        let rng = &mut rand::rngs::OsRng;
        match self {
            Key::Code(c) => crate::proto::Session::new_deferred(role, c, config, now, rng),
            Key::Rejoin(s) => crate::proto::Session::rejoin_deferred(role, *s, config, now, rng),
        }
    }
}

/// How long a sender waits for the receiver to answer its offer (a person may be deciding).
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the closing exchange may take once the data is through.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to stop a transfer cleanly (Ctrl-C, SIGTERM): the driver tells the peer why,
/// closes the connection and removes partial files before it returns.
#[derive(Debug, Clone)]
pub struct Stop(tokio::sync::watch::Receiver<Option<&'static str>>);

/// Triggers the [`Stop`] it was made with.
#[derive(Debug)]
pub struct StopHandle(tokio::sync::watch::Sender<Option<&'static str>>);

impl Stop {
    /// A stop and the handle that triggers it.
    pub fn new() -> (StopHandle, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (StopHandle(tx), Stop(rx))
    }

    /// A stop that never triggers.
    pub fn never() -> Stop {
        Stop::new().1
    }

    /// Resolves once a stop is requested, with the error the transfer ends with.
    pub async fn requested(&mut self) -> TransferError {
        loop {
            if let Some(why) = *self.0.borrow_and_update() {
                return TransferError::new(ErrorKind::Interrupted, format!("stopped by {why}"));
            }
            if self.0.changed().await.is_err() {
                // The handle is gone: nobody can ask any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl StopHandle {
    /// Asks the transfer to stop, naming the cause (e.g. "Ctrl-C").
    pub fn stop(&self, why: &'static str) {
        let _ = self.0.send(Some(why));
    }
}

/// A failed transfer: what kind of failure (for the exit code) and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct TransferError {
    /// The kind.
    pub kind: ErrorKind,
    /// What happened and, where possible, what to do.
    pub message: String,
}

impl TransferError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> TransferError {
        TransferError { kind, message: message.into() }
    }

    pub(crate) fn network(message: impl Into<String>) -> TransferError {
        TransferError::new(ErrorKind::Network, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> TransferError {
        TransferError::new(ErrorKind::Internal, message)
    }
}

impl From<crate::proto::SessionError> for TransferError {
    fn from(e: crate::proto::SessionError) -> Self {
        TransferError::new(e.kind(), e.to_string())
    }
}

impl From<crate::proto::LaneError> for TransferError {
    fn from(e: crate::proto::LaneError) -> Self {
        use crate::proto::LaneError;
        let kind = match e {
            LaneError::Hash { .. } => ErrorKind::Integrity,
            LaneError::Decode(_) | LaneError::Order(_) => ErrorKind::Protocol,
        };
        TransferError::new(kind, e.to_string())
    }
}

impl From<fs::FsError> for TransferError {
    fn from(e: fs::FsError) -> Self {
        // Something in the way at the destination (an existing name, a directory where a
        // file goes, a symlink as a parent) is a conflict, whoever put it there: the write was
        // refused either way. Malformed names never get this far (they are protocol errors).
        let kind = match e {
            fs::FsError::Exists { .. } | fs::FsError::Unsafe { .. } | fs::FsError::Busy { .. } => {
                ErrorKind::Conflict
            }
            fs::FsError::TooManyDirs { .. } | fs::FsError::LinkTarget { .. } => ErrorKind::Protocol,
            _ => ErrorKind::Io,
        };
        TransferError::new(kind, e.to_string())
    }
}

impl From<crate::net::discovery::DiscoveryError> for TransferError {
    fn from(e: crate::net::discovery::DiscoveryError) -> Self {
        TransferError::new(e.kind(), error_chain(&e))
    }
}

impl From<crate::net::quic::QuicError> for TransferError {
    fn from(e: crate::net::quic::QuicError) -> Self {
        use crate::net::quic::QuicError;
        let kind = match e {
            QuicError::Tls(_) => ErrorKind::Internal,
            _ => ErrorKind::Network,
        };
        TransferError::new(kind, e.to_string())
    }
}

/// The error for a lost connection. A peer that closed with an error names its kind in the
/// close reason; kinds both sides share (wrong code, refusal, conflict, integrity) keep their
/// kind here, so both sides exit alike even when the sealed report was lost.
pub(crate) fn connection_lost(e: &quinn::ConnectionError) -> TransferError {
    match e {
        quinn::ConnectionError::TimedOut => TransferError::network(
            "the connection to the other side timed out (the peer stopped answering)",
        ),
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == control::close::ERROR.into() =>
        {
            let reason = String::from_utf8_lossy(&c.reason);
            let kind = match ErrorKind::from_name(&reason) {
                Some(
                    k @ (ErrorKind::WrongCode
                    | ErrorKind::Refused
                    | ErrorKind::Conflict
                    | ErrorKind::Integrity),
                ) => k,
                _ => ErrorKind::Peer,
            };
            TransferError::new(
                kind,
                format!("the other side ended the transfer ({})", printable(&reason)),
            )
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == control::close::DONE.into() =>
        {
            TransferError::network("the other side closed the connection before we were done")
        }
        quinn::ConnectionError::ApplicationClosed(_) => TransferError::network(
            "the other side stopped without finishing (interrupted or crashed)",
        ),
        quinn::ConnectionError::LocallyClosed => {
            TransferError::network("the connection was closed")
        }
        other => {
            TransferError::network(format!("the connection to the other side was lost: {other}"))
        }
    }
}

/// Text made safe to print on a terminal: control characters (which could rewrite the
/// user's terminal: escape sequences, carriage returns, bells) and invisible format
/// characters (bidirectional overrides and isolates, zero-width characters, which could make
/// a name read as another) are shown escaped, as `\u{202e}`; everything else is kept.
/// Every line the command line prints goes through it (`cli::output`).
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || is_format(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`printable`] for a name, which is bytes: those that are not UTF-8 are shown `\xNN`.
pub fn printable_name(name: &[u8]) -> String {
    printable(&fs::shown(name))
}

/// Unicode's format characters (general category Cf) and the other invisible characters that
/// change how text around them reads.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061c}'
            | '\u{06dd}'
            | '\u{070f}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08e2}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// Formats an error with its sources: `outer: inner: innermost`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// What a finished transfer did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The path the data took last.
    pub path: PathKind,
    /// How often the data moved between the direct path and the relay (rendezvous mode).
    pub path_changes: u32,
    /// Rendezvous mode: seconds from the exchange of candidates to the chosen connection.
    pub punch_seconds: Option<f64>,
    /// Seconds from the start of the command to the first file byte (none for empty files).
    pub first_byte_seconds: Option<f64>,
    /// File bytes moved in this transfer (not those already held).
    pub bytes: u64,
    /// Bytes of partial copies that were continued rather than sent again.
    pub resumed_bytes: u64,
    /// Files already at the destination, not sent.
    pub skipped_files: u64,
    /// Their bytes.
    pub skipped_bytes: u64,
    /// What the file bytes took on the wire, as chunk payloads: less than `bytes` when
    /// compression paid.
    pub wire_bytes: u64,
    /// Files moved (resumed ones included).
    pub files: u64,
    /// Entries of every kind.
    pub entries: u64,
    /// Seconds from the start of the command to the end.
    pub seconds: f64,
    /// How often the transfer reconnected after losing the connection.
    pub reconnects: u32,
    /// The connection's round trips and losses over the transfer.
    pub quality: Link,
    /// Entries the receiver's file system could not hold (names it does not allow, links
    /// where it has none): they arrived and were left out; everything else is in place.
    pub refused: u64,
}

impl Report {
    /// Seconds from the first file byte to the end: what the data itself took (the whole
    /// `seconds` when no byte moved).
    pub fn data_seconds(&self) -> f64 {
        match self.first_byte_seconds {
            Some(first) if first <= self.seconds => self.seconds - first,
            _ => self.seconds,
        }
    }
}

/// How a transfer reached its peer, for its report.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub path: PathKind,
    /// How often the data moved between the direct path and the relay.
    pub changes: u32,
    /// Rendezvous mode: how long finding the path took.
    pub punch: Option<Duration>,
    /// When the command started.
    pub started: std::time::Instant,
    pub progress: Arc<Progress>,
}

impl Route {
    /// The route `guard` watched (direct when there was nothing to watch: LAN mode).
    pub(crate) fn of(
        guard: &meet::Guard,
        started: std::time::Instant,
        progress: Arc<Progress>,
    ) -> Route {
        Route {
            path: guard.path(PathKind::Direct),
            changes: guard.changes(),
            punch: guard.punch(),
            started,
            progress,
        }
    }
}

/// Ends a session on both sides alike: on success the sender closes the connection (the
/// receiver waits for that close, which proves its `Complete` arrived); on failure the peer is
/// told why, then the connection closes. The side that closes gives its endpoint a moment to
/// send the close.
pub(crate) async fn conclude(
    role: crate::crypto::Role,
    ctl: &mut control::ControlStream,
    conn: &quinn::Connection,
    endpoint: &quinn::Endpoint,
    route: Route,
    result: Result<(crate::wire::control::Summary, survey::Present), TransferError>,
) -> Result<Report, TransferError> {
    let Route { path, changes, punch, started, progress } = route;
    match result {
        Ok((totals, present)) => {
            match role {
                crate::crypto::Role::Sender => {
                    let open = endpoint.open_connections();
                    conn.close(control::close::DONE.into(), b"done");
                    // Until the close has gone out (the node's connection, if any, stays).
                    drained(endpoint, open, Duration::from_secs(1)).await;
                }
                crate::crypto::Role::Receiver => {
                    // The sender's close is the last packet; once it arrived there is nothing
                    // left to send (waiting for the endpoint to go idle would only sit out
                    // QUIC's draining period, about 80 ms on loopback).
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.closed()).await;
                }
            }
            Ok(Report {
                path,
                path_changes: changes,
                punch_seconds: punch.map(|d| d.as_secs_f64()),
                first_byte_seconds: progress
                    .first_byte()
                    .map(|t| t.saturating_duration_since(started).as_secs_f64()),
                bytes: totals.bytes.saturating_sub(totals.resumed),
                resumed_bytes: totals.resumed,
                skipped_files: present.files,
                skipped_bytes: present.file_bytes,
                wire_bytes: progress.wire_bytes(),
                files: totals.files,
                entries: totals.entries,
                seconds: started.elapsed().as_secs_f64(),
                reconnects: 0,
                quality: progress.link(),
                refused: totals.refused,
            })
        }
        Err(e) => {
            let open = endpoint.open_connections();
            ctl.abort(conn, &e).await;
            drained(endpoint, open, Duration::from_secs(1)).await;
            Err(e)
        }
    }
}

/// Waits, at most `limit`, until `endpoint` holds fewer than `open` connections: one closed
/// after they were counted has drained, so its close has gone out. (Waiting for the endpoint
/// to go idle would also wait for the node's connection, which is still open.)
pub(crate) async fn drained(endpoint: &quinn::Endpoint, open: usize, limit: Duration) {
    let gone = async {
        while endpoint.open_connections() >= open {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let _ = tokio::time::timeout(limit, gone).await;
}

/// Milestones a transfer reports to its observer, in order.
#[derive(Debug)]
pub enum Note<'a> {
    /// Sender: the code to hand to the receiver; the sender now waits for it.
    Code(&'a Code),
    /// Receiver: looking for the sender on the local network.
    Searching {
        /// The nameplate searched for.
        nameplate: u32,
    },
    /// A QUIC connection to the peer is up (not yet authenticated).
    Connected {
        /// The peer's address.
        peer: SocketAddr,
        /// How the data will flow.
        path: PathKind,
    },
    /// The peer proved it knows the code.
    Secured {
        /// A short string equal on both sides.
        verifier: &'a str,
    },
    /// The offer: the receiver is about to decide; the sender is waiting for the decision.
    Offer {
        /// What is offered.
        offer: &'a Offer,
        /// What the destination already holds of it (receiver; nothing known on the sender).
        present: survey::Present,
    },
    /// The offer was accepted; data is about to flow.
    Accepted {
        /// Bytes of the offer; `None` when it holds a stream of unknown size.
        total: Option<u64>,
        /// What the destination already holds of it (not sent again).
        present: survey::Present,
    },
    /// Something worth telling the person that does not stop the transfer.
    Warning(String),
    /// The connection was lost mid-transfer; both sides try to meet again (nothing is lost).
    Reconnecting {
        /// Why it was lost.
        reason: &'a str,
        /// How long they try.
        wait: Duration,
    },
    /// The transfer goes on over a new connection.
    Reconnected,
    /// Receiver: the text of a text offer (`send --text`), to show as it is (it is
    /// untrusted: escape it for a terminal).
    Text {
        /// The text.
        text: &'a str,
    },
    /// One file is done on this side.
    File {
        /// Its path as offered (bytes: see [`fs::shown`]).
        path: &'a [u8],
        /// Its size.
        bytes: u64,
        /// How it ended.
        outcome: FileOutcome,
    },
}

/// What an offer holds, in a few words: "3 file(s), 1 dir(s), 1.2 MiB", "a stream of
/// unknown size", "a text message (12 B)".
pub fn describe_offer(offer: &Offer) -> String {
    if let Some(text) = &offer.text {
        return format!("a text message ({})", indicatif::HumanBytes(text.len() as u64));
    }
    if offer.streams == offer.files && offer.files == 1 && offer.dirs + offer.symlinks == 0 {
        return "a stream of unknown size".into();
    }
    let mut parts = vec![format!("{} file(s)", offer.files)];
    if offer.dirs > 0 {
        parts.push(format!("{} dir(s)", offer.dirs));
    }
    if offer.symlinks > 0 {
        parts.push(format!("{} link(s)", offer.symlinks));
    }
    if offer.hardlinks > 0 {
        parts.push(format!("{} hard link(s)", offer.hardlinks));
    }
    let unknown = if offer.streams > 0 { " and a stream of unknown size" } else { "" };
    let xattrs = if offer.xattrs { ", with extended attributes" } else { "" };
    format!("{}, {}{unknown}{xattrs}", parts.join(", "), indicatif::HumanBytes(offer.bytes))
}

/// The bytes an offer moves, if known (not with a stream).
pub fn offer_total(offer: &Offer) -> Option<u64> {
    (offer.streams == 0).then_some(offer.bytes)
}

/// How one file ended, for [`Note::File`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FileOutcome {
    /// Sender: every byte was handed to the connection.
    Sent,
    /// Receiver: verified and in place.
    Received,
    /// Either side: continued from a partial copy the receiver held, then as above.
    Resumed,
    /// Sender: the receiver already has it (same size and mtime, or hash); nothing moved.
    Skipped,
    /// Receiver: it arrived, but the destination's file system cannot hold its name (or a
    /// parent's); it was left out, and the transfer went on.
    Refused,
}

impl FileOutcome {
    /// The word in `file` events.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOutcome::Sent => "sent",
            FileOutcome::Received => "received",
            FileOutcome::Resumed => "resumed",
            FileOutcome::Skipped => "skipped",
            FileOutcome::Refused => "refused",
        }
    }
}

/// Watches a transfer. Implemented by the CLI (human or JSON output) and by tests.
pub trait Observer: Send + Sync {
    /// A milestone.
    fn note(&self, note: Note<'_>);

    /// Receiver: asks whether to accept the offer. Called only when the caller asked to be
    /// asked (no `--yes`); may block (it runs on a blocking thread).
    fn confirm(&self, _offer: &Offer, _present: survey::Present) -> bool {
        false
    }
}

impl std::fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// An observer that ignores everything and declines offers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Observer for Quiet {
    fn note(&self, _note: Note<'_>) {}
}

/// How long data lanes may make no progress at all before the transfer is abandoned. QUIC's
/// idle timeout catches a peer that vanished; this catches one that is alive but stuck (its
/// keep-alives hold the connection open). Generous, because a slow disk may take a while to
/// fsync a large file.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes moved so far, shared with whoever shows progress, and a count of records moved (for
/// the stall watchdog, which must see progress even when files are empty).
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    wire: AtomicU64,
    records: AtomicU64,
    /// Readers now waiting for a stream's producer (`send -`).
    awaiting: AtomicU64,
    first_byte: std::sync::OnceLock<std::time::Instant>,
    link: std::sync::Mutex<Link>,
}

/// The connection as last sampled (`watch_link`): the connection-quality view of
/// `progress` and `done` events.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// The path the data takes now.
    pub path: Option<PathKind>,
    /// QUIC's smoothed round-trip time now.
    pub rtt: Option<Duration>,
    /// The lowest round-trip time over the samples.
    pub rtt_min: Option<Duration>,
    /// The mean round-trip time over the samples.
    pub rtt_mean: Option<Duration>,
    /// Packets QUIC declared lost over the connection's life.
    pub lost_packets: u64,
    /// Packets sent over the connection's life.
    pub sent_packets: u64,
    samples: u64,
}

impl Link {
    /// Adds a sample.
    fn sample(&mut self, path: PathKind, rtt: Duration, lost: u64, sent: u64) {
        self.path = Some(path);
        self.rtt = Some(rtt);
        self.rtt_min = Some(self.rtt_min.map_or(rtt, |m| m.min(rtt)));
        let n = self.samples as u32;
        self.rtt_mean = Some(self.rtt_mean.map_or(rtt, |m| (m * n + rtt) / (n + 1)));
        self.samples += 1;
        (self.lost_packets, self.sent_packets) = (lost, sent);
    }
}

/// Samples `conn` into `progress` twice a second, with the path `status` says the data takes
/// (`lan` when there is nothing to watch), until the connection ends or the returned handle is
/// dropped.
pub(crate) fn watch_link(
    conn: &quinn::Connection,
    progress: Arc<Progress>,
    status: Option<tokio::sync::watch::Receiver<crate::net::path::PathStatus>>,
    lan: PathKind,
) -> AbortOnDrop {
    let conn = conn.clone();
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while conn.close_reason().is_none() {
            tick.tick().await;
            let stats = conn.stats();
            let path = status.as_ref().and_then(|s| s.borrow().using).unwrap_or(lan);
            let mut link = progress.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            link.sample(path, stats.path.rtt, stats.path.lost_packets, stats.path.sent_packets);
        }
    }))
}

/// A task aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Progress {
    /// The connection as last sampled.
    pub fn link(&self) -> Link {
        *self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A counter at zero.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.first_byte.get_or_init(std::time::Instant::now);
        }
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Chunk payload bytes so far, as they travel (compressed or not).
    pub fn wire_bytes(&self) -> u64 {
        self.wire.load(Ordering::Relaxed)
    }

    /// Starts counting from bytes already held at the destination (no transfer, no first
    /// byte); a transfer resumed after a lost connection starts from what is held then.
    pub(crate) fn hold(&self, n: u64) {
        self.bytes.store(n, Ordering::Relaxed);
    }

    /// Takes back bytes counted as held that turned out not to be (a partial copy the sender
    /// would not continue).
    pub(crate) fn sub(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
    }

    pub(crate) fn add_wire(&self, n: u64) {
        self.wire.fetch_add(n, Ordering::Relaxed);
    }

    /// When the first file byte moved, if one did.
    pub fn first_byte(&self) -> Option<std::time::Instant> {
        self.first_byte.get().copied()
    }

    /// Records one unit of work (a record written or applied).
    pub(crate) fn touch(&self) {
        self.records.fetch_add(1, Ordering::Relaxed);
    }

    fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Runs `read`, a read of a stream's input, counting the wait as progress: a producer
    /// may pause as long as it likes (`tail -f | p2p-copy send -`) without the stall
    /// watchdog taking it for a stuck transfer.
    pub(crate) fn awaiting_input<T>(&self, read: impl FnOnce() -> T) -> T {
        /// Ends the wait however the read ends (a panic included).
        struct Waiting<'a>(&'a Progress);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.awaiting.fetch_sub(1, Ordering::Relaxed);
                self.0.touch();
            }
        }
        self.awaiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(self);
        read()
    }

    fn is_awaiting_input(&self) -> bool {
        self.awaiting.load(Ordering::Relaxed) > 0
    }
}

/// Resolves (with an error) once `progress` has not moved for `limit`; never otherwise.
pub(crate) async fn stalled(progress: &Progress, limit: Duration) -> TransferError {
    let step = (limit / 8).max(Duration::from_millis(10));
    let mut last = progress.records();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let now = progress.records();
        if now != last || progress.is_awaiting_input() {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= limit {
            return TransferError::network(format!(
                "no data moved for {}s: the other side is stuck; giving up",
                limit.as_secs()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_controls_and_invisible_format_characters_only() {
        let ordinary = "résumé 日本語 🎉 a-b_c.txt ❤\u{fe0f}";
        assert_eq!(printable(ordinary), ordinary);
        for c in ['\x1b', '\x07', '\r', '\n', '\x7f', '\u{9b}'] {
            assert_eq!(printable(&format!("a{c}b")), format!("a{}b", c.escape_default()));
        }
        for c in [
            '\u{202e}',
            '\u{202a}',
            '\u{2066}',
            '\u{2069}',
            '\u{200b}',
            '\u{200f}',
            '\u{feff}',
            '\u{061c}',
            '\u{e0041}',
        ] {
            let shown = printable(&format!("x{c}y"));
            assert_eq!(shown, format!("x\\u{{{:x}}}y", c as u32), "{c:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_only_without_progress() {
        let progress = Progress::new();
        let limit = Duration::from_secs(120);
        // Progress every 30 s keeps it quiet for ten minutes of virtual time.
        let busy = {
            let p = progress.clone();
            async move {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    p.touch();
                }
            }
        };
        tokio::select! {
            e = stalled(&progress, limit) => panic!("fired despite progress: {e}"),
            () = busy => {}
        }
        let start = tokio::time::Instant::now();
        let e = stalled(&progress, limit).await;
        assert_eq!(e.kind, ErrorKind::Network);
        let waited = start.elapsed();
        assert!(waited >= limit && waited <= limit + limit / 4, "{waited:?}");
    }
}
