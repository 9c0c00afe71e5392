//! The receiving side of one transfer.
//!
//! 1. Find the sender of the code's nameplate on the local network; connect over QUIC.
//! 2. Run the session: PAKE, confirmation, hello (channel binding).
//! 3. Check the offer: sane limits, safe top-level names, no conflict with existing names
//!    (unless overwriting); then accept (`--yes` or the person says so) or refuse. Nothing is
//!    written before this point — not even the destination directory.
//! 4. Receive the lanes and the sender's `Finish` totals; compare; set directory metadata.
//! 5. Send `Complete`; wait for the sender to close.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{unexpected, ControlStream, UNBOUNDED};
use super::fs::{Dest, RelPath, STATE_DIR};
use super::lanes::{receive_lanes, Pipe, Sink, SHOWN_REFUSALS};
use super::meet::{Guard, Plan, Rendezvous};
use super::rejoin::{self, Rejoin, Saved, Secured};
use super::survey::{Present, Survey};
use super::{Key, Note, Observer, PathKind, Progress, Report, TransferError};
use crate::code::Code;
use crate::crypto::Role;
use crate::error::ErrorKind;
use crate::net::discovery::{self, DiscoveryConfig};
use crate::net::quic::{Node, Tuning};
use crate::proto::{Config, Event};
use crate::wire::control::{Accept, Ask, Offer, Refuse, RefuseReason, Summary, MAX_HARDLINKS};
use crate::wire::data::{MAX_CHUNK, MIN_CHUNK};

/// Most data lanes a receiver allows.
pub const MAX_LANES: u16 = 16;
/// How long the sender's totals may take once every lane is complete.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the receiver's prompt may take; shorter than the sender's wait for the answer.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(540);

/// Everything a receive needs.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The code the sender showed.
    pub code: Code,
    /// Destination directory (created on accept if missing).
    pub out: PathBuf,
    /// Instead of `out`: write the offer's one file into this (`receive --stdout`); an offer
    /// of anything else is refused.
    pub pipe: Option<Pipe>,
    /// Accept without asking.
    pub yes: bool,
    /// Ask the observer (a person) when `yes` is off; otherwise refuse.
    pub interactive: bool,
    /// Replace existing files.
    pub overwrite: bool,
    /// Set the extended attributes a sender sends (`send --xattrs`); off: ignore them
    /// (`receive --no-xattrs`).
    pub xattrs: bool,
    /// Compare files already at the destination by BLAKE3 hash rather than size and mtime.
    pub checksum: bool,
    /// At most this many bytes per second on the data streams.
    pub limit_rate: Option<u64>,
    /// How long to try to reconnect once the connection is lost mid-transfer (zero: fail at
    /// once).
    pub reconnect_wait: Duration,
    /// How long to look for the sender.
    pub wait: Duration,
    /// How long the lanes may make no progress before the transfer is abandoned (not for a
    /// stream, which may pause as long as its producer does).
    pub stall_timeout: Duration,
    /// LAN discovery settings.
    pub discovery: DiscoveryConfig,
    /// Local address to bind the QUIC endpoint to.
    pub bind: SocketAddr,
    /// Transport tunables.
    pub tuning: Tuning,
    /// Ends the transfer cleanly when triggered.
    pub stop: super::Stop,
    /// Meet through this rendezvous node instead of on the local network.
    pub rendezvous: Option<Rendezvous>,
    /// Rendezvous mode: use this socket instead of binding `bind` (tests on a simulated
    /// network).
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
}

impl ReceiveOptions {
    /// Defaults for receiving `code` into `out`.
    pub fn new(code: Code, out: PathBuf) -> ReceiveOptions {
        ReceiveOptions {
            code,
            out,
            pipe: None,
            yes: false,
            interactive: false,
            overwrite: false,
            xattrs: true,
            checksum: false,
            limit_rate: None,
            reconnect_wait: Duration::from_secs(600),
            wait: Duration::from_secs(30),
            stall_timeout: super::STALL_TIMEOUT,
            discovery: DiscoveryConfig::default(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            tuning: Tuning::default(),
            stop: super::Stop::never(),
            rendezvous: None,
            socket: None,
        }
    }
}

/// Receives one transfer into `opts.out`.
pub async fn receive(
    opts: ReceiveOptions,
    observer: Arc<dyn Observer>,
    progress: Arc<Progress>,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    // A destination that cannot take anything fails now, before the code is used up.
    if opts.pipe.is_none() {
        check_out(&opts.out)?;
    }
    let mut stop = opts.stop.clone();
    let config = Config { max_lanes: MAX_LANES, ..Config::default() };
    // Started again with the code of a transfer that was interrupted: its sender may be
    // waiting to rejoin. Look for it that way too (the sender may take until its idle timeout
    // to notice that we were gone).
    // What went into a pipe cannot be taken back: such a transfer is never rejoined.
    let saved = if opts.pipe.is_none() { Saved::receiver(&opts.code, &opts.out) } else { None };
    let earlier = saved.as_ref().and_then(Saved::load);
    let by_code = establish(&opts, Key::Code(opts.code.clone()), opts.wait, &config, &observer);
    let mut secured = match &earlier {
        None => tokio::select! {
            s = by_code => s?,
            e = stop.requested() => return Err(e),
        },
        Some(e) => {
            tracing::info!("also looking for the sender of the interrupted transfer");
            let wait = tokio::time::Instant::now() + opts.wait.max(REJOIN_AT_START);
            let mut stop2 = opts.stop.clone();
            let by_secret = rejoin::until(wait, &mut stop2, |left| {
                establish(&opts, Key::Rejoin(e.secret), left, &config, &observer)
            });
            tokio::select! {
                s = rejoin::race(by_code, by_secret) => s?,
                e = stop.requested() => return Err(e),
            }
        }
    };
    // A transfer accepted before goes on without asking again.
    let mut accepted_id = earlier.map(|e| e.transfer_id);
    let mut reconnects = 0;
    loop {
        let Secured { node, conn, mut ctl, guard, .. } = secured;
        // Grows the flow-control windows on long fast links, for as long as this connection.
        let _tuner = crate::net::tune::spawn(&conn, &opts.tuning);
        let _link = super::watch_link(&conn, progress.clone(), guard.status(), PathKind::Direct);
        let secret = ctl
            .session()
            .keys()
            .ok_or_else(|| TransferError::internal("no keys after the handshake"))?
            .resume_secret();
        let progress_for_report = progress.clone();
        let result = tokio::select! {
            r = run(&mut ctl, &conn, &opts, &observer, progress.clone(), &mut accepted_id, saved.as_ref()) => r,
            e = stop.requested() => Err(e),
            e = guard.trouble(&conn) => Err(e),
        };
        let route = super::Route::of(&guard, started, progress_for_report);
        let report =
            super::conclude(Role::Receiver, &mut ctl, &conn, &node.endpoint, route, result).await;
        guard.close().await;
        drop(node);
        let e = match report {
            Ok(mut report) => {
                if let Some(s) = &saved {
                    s.remove();
                }
                report.reconnects = reconnects;
                return Ok(report);
            }
            Err(e) => e,
        };
        let again =
            accepted_id.is_some() && rejoin::reconnectable(&e) && !opts.reconnect_wait.is_zero();
        if !again {
            if !matches!(
                e.kind,
                ErrorKind::Network | ErrorKind::Interrupted | ErrorKind::Peer | ErrorKind::Io
            ) {
                if let Some(s) = &saved {
                    s.remove();
                }
            }
            return Err(e);
        }
        observer.note(Note::Reconnecting { reason: &e.message, wait: opts.reconnect_wait });
        let deadline = tokio::time::Instant::now() + opts.reconnect_wait;
        secured = rejoin::until(deadline, &mut stop, |left| {
            establish(&opts, Key::Rejoin(secret), left, &config, &observer)
        })
        .await
        .map_err(|again| match again.kind {
            ErrorKind::Interrupted => again,
            _ => TransferError::network(format!(
                "{}; no reconnection within {}s",
                e.message,
                opts.reconnect_wait.as_secs()
            )),
        })?;
        reconnects += 1;
        observer.note(Note::Reconnected);
    }
}

/// How long a receiver started again looks for the sender of its interrupted transfer, at
/// least: longer than the sender's idle timeout, after which it notices the old connection
/// is gone and waits to be rejoined.
const REJOIN_AT_START: Duration = Duration::from_secs(60);

/// Meets the sender by `key` (within `wait`) on the local network or at the node, and secures
/// the session.
async fn establish(
    opts: &ReceiveOptions,
    key: Key,
    wait: Duration,
    config: &Config,
    observer: &Arc<dyn Observer>,
) -> Result<Secured, TransferError> {
    let joined = match &opts.rendezvous {
        Some(rv) => {
            let plan = Plan {
                role: Role::Receiver,
                key,
                claim: true,
                rendezvous: rv,
                bind: opts.bind,
                socket: opts.socket.clone(),
                tuning: &opts.tuning,
                config: config.clone(),
                wait,
                hold: None,
            };
            super::meet::meet(plan, observer).await.map(|m| {
                let super::meet::Met { node, conn, send, recv, session, guard } = m;
                (node, conn, ControlStream::new(session, send, recv), guard)
            })?
        }
        None => {
            let (node, conn, ctl) = lan(opts, &key, wait, config.clone(), observer).await?;
            (node, conn, ctl, Guard::none())
        }
    };
    rejoin::secure(joined, observer).await
}

/// LAN mode: find the sender by multicast and connect to it.
async fn lan(
    opts: &ReceiveOptions,
    key: &Key,
    wait: Duration,
    config: Config,
    observer: &Arc<dyn Observer>,
) -> Result<(Node, quinn::Connection, ControlStream), TransferError> {
    if let Key::Code(code) = key {
        observer.note(Note::Searching { nameplate: code.nameplate() });
    }
    let found = discovery::find(&opts.discovery, key.nameplate(), wait).await?;
    // Both address families: a LAN may have IPv6 link-local addresses only.
    let node = Node::with_socket(
        crate::net::quic::socket_for(opts.bind, Role::Receiver)?,
        &opts.tuning,
        false,
    )?;
    let conn = node.connect_any(&found.addrs, Duration::from_secs(10)).await?;
    let peer = crate::net::quic::peer_addr(&conn);
    observer.note(Note::Connected { peer, path: PathKind::Direct });
    let (send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
        .await
        .map_err(|_| TransferError::network("the sender did not let us open a stream"))?
        .map_err(|e| super::connection_lost(&e))?;
    let channel = node.channel(&conn)?;
    let session = key.session(Role::Receiver, channel, config);
    Ok((node, conn, ControlStream::new(session, send, recv)))
}

async fn run(
    ctl: &mut ControlStream,
    conn: &quinn::Connection,
    opts: &ReceiveOptions,
    observer: &Arc<dyn Observer>,
    progress: Arc<Progress>,
    accepted_id: &mut Option<[u8; 16]>,
    saved: Option<&Saved>,
) -> Result<(Summary, Present), TransferError> {
    let offer = match ctl.next_event(Duration::from_secs(60)).await? {
        Event::Offer(offer) => offer,
        other => return Err(unexpected(&other)),
    };
    check_offer(&offer)?;
    if let Some(text) = &offer.text {
        return take_text(ctl, conn, text, &offer, observer, progress).await;
    }
    if let Some(pipe) = &opts.pipe {
        return into_pipe(ctl, conn, opts, pipe, &offer, observer, progress).await;
    }

    // What the destination already holds of the offer: asked for by a listing, before the
    // decision, if it holds any offered name or partial copies at all.
    let mut dest = None;
    let mut survey = None;
    if std::fs::symlink_metadata(&opts.out).is_ok() {
        let d = Dest::open(&opts.out)?;
        let partials = d.state().partial_ids();
        if !d.existing(&offer.names).is_empty() || !partials.is_empty() {
            let (d, s) = survey_destination(ctl, d, &offer, opts, partials).await?;
            survey = Some(s);
            dest = Some(d);
        } else {
            dest = Some(d);
        }
    }
    if let Some(s) = &survey {
        let (count, shown) = s.conflicts();
        if count > 0 {
            let names: Vec<String> = shown.iter().map(|c| crate::transfer::printable(c)).collect();
            let refused = names.iter().map(|n| n.clone().into_bytes()).collect();
            ctl.session().refuse(Refuse { reason: RefuseReason::Conflict, names: refused })?;
            ctl.flush().await?;
            let more = if count as usize > names.len() {
                format!(" and {} more", count as usize - names.len())
            } else {
                String::new()
            };
            return Err(TransferError::new(
                ErrorKind::Conflict,
                format!(
                    "{} in {} differ{} from what is offered: {}{more}; receive with --overwrite to replace files, or choose another --out",
                    if count == 1 { "this entry" } else { "these entries" },
                    opts.out.display(),
                    if count == 1 { "s" } else { "" },
                    names.join(", ")
                ),
            ));
        }
    }
    let present = survey.as_ref().map_or_else(Present::default, |s| s.present);
    if let Err(e) = check_space(&opts.out, offer.bytes.saturating_sub(present.bytes)) {
        ctl.session().refuse(Refuse { reason: RefuseReason::NoSpace, names: vec![] })?;
        ctl.flush().await?;
        return Err(e);
    }

    observer.note(Note::Offer { offer: &offer, present });
    let again = *accepted_id == Some(offer.transfer_id);
    if !again && !decide(opts, observer, &offer, present).await {
        ctl.session().refuse(Refuse { reason: RefuseReason::Declined, names: vec![] })?;
        ctl.flush().await?;
        return Err(declined(opts));
    }

    let dest = match dest {
        Some(d) => d,
        None => Dest::open(&opts.out)?,
    };
    let swept = dest.state().sweep();
    if swept > 0 {
        tracing::info!(files = swept, "removed partial state older than a week");
    }
    dest.begin(&offer.names, offer.dirs);
    ctl.session().accept(Accept {})?;
    ctl.flush().await?;
    // A stream cannot be sent again: a lost connection ends it.
    if offer.streams == 0 {
        *accepted_id = Some(offer.transfer_id);
        if let (Some(saved), Some(keys)) = (saved, ctl.session().keys()) {
            saved.store(&Rejoin { secret: keys.resume_secret(), transfer_id: offer.transfer_id });
        }
    }
    progress.hold(present.bytes);
    observer.note(Note::Accepted { total: super::offer_total(&offer), present });

    let mut sink = Sink::new(dest, opts.overwrite, &offer, survey, progress.clone());
    sink.xattrs = opts.xattrs;
    sink.rate = opts.limit_rate.map(|r| Arc::new(super::rate::RateLimit::new(r)));
    sink.observer = Some(observer.clone());
    let stall = watchdog(opts, &offer);
    receive_into(ctl, conn, &offer, Arc::new(sink), &progress, stall).await.map(|r| (r, present))
}

/// A text offer: shown (by the observer) and accepted; its one lane carries nothing.
async fn take_text(
    ctl: &mut ControlStream,
    conn: &quinn::Connection,
    text: &str,
    offer: &Offer,
    observer: &Arc<dyn Observer>,
    progress: Arc<Progress>,
) -> Result<(Summary, Present), TransferError> {
    observer.note(Note::Offer { offer, present: Present::default() });
    observer.note(Note::Text { text });
    ctl.session().accept(Accept {})?;
    ctl.flush().await?;
    observer.note(Note::Accepted { total: Some(0), present: Present::default() });
    let sink = Sink::pipe(Pipe::new(Box::new(std::io::sink())), offer, progress.clone());
    let stall = Some(super::STALL_TIMEOUT);
    let received = receive_into(ctl, conn, offer, Arc::new(sink), &progress, stall).await?;
    Ok((received, Present::default()))
}

/// `--stdout`: the offer's one file goes into the pipe, nothing to the file system.
async fn into_pipe(
    ctl: &mut ControlStream,
    conn: &quinn::Connection,
    opts: &ReceiveOptions,
    pipe: &Pipe,
    offer: &Offer,
    observer: &Arc<dyn Observer>,
    progress: Arc<Progress>,
) -> Result<(Summary, Present), TransferError> {
    if offer.files != 1 || offer.dirs != 0 || offer.symlinks != 0 || offer.hardlinks != 0 {
        ctl.session().refuse(Refuse { reason: RefuseReason::NotOneFile, names: vec![] })?;
        ctl.flush().await?;
        return Err(TransferError::new(
            ErrorKind::Usage,
            format!(
                "--stdout takes a single file, and the sender offers {}; receive it into a directory instead (without --stdout)",
                super::describe_offer(offer)
            ),
        ));
    }
    observer.note(Note::Offer { offer, present: Present::default() });
    if !decide(opts, observer, offer, Present::default()).await {
        ctl.session().refuse(Refuse { reason: RefuseReason::Declined, names: vec![] })?;
        ctl.flush().await?;
        return Err(declined(opts));
    }
    ctl.session().accept(Accept {})?;
    ctl.flush().await?;
    observer.note(Note::Accepted { total: super::offer_total(offer), present: Present::default() });
    let mut sink = Sink::pipe(pipe.clone(), offer, progress.clone());
    sink.rate = opts.limit_rate.map(|r| Arc::new(super::rate::RateLimit::new(r)));
    sink.observer = Some(observer.clone());
    let stall = watchdog(opts, offer);
    let received = receive_into(ctl, conn, offer, Arc::new(sink), &progress, stall).await?;
    Ok((received, Present::default()))
}

/// How long the lanes may stand still before the transfer is abandoned: `None` (never) when
/// the offer holds a stream, whose producer may pause for as long as it likes (`tail -f |
/// p2p-copy send -`); a vanished sender is still caught by QUIC's idle timeout.
fn watchdog(opts: &ReceiveOptions, offer: &Offer) -> Option<Duration> {
    (offer.streams == 0).then_some(opts.stall_timeout)
}

/// Runs the accepted offer's lanes into `sink`, compares what arrived with the sender's
/// totals, finishes the destination and confirms.
async fn receive_into(
    ctl: &mut ControlStream,
    conn: &quinn::Connection,
    offer: &Offer,
    sink: Arc<Sink>,
    progress: &Arc<Progress>,
    stall: Option<Duration>,
) -> Result<Summary, TransferError> {
    let lanes = receive_lanes(conn, offer.lanes, offer.chunk_size as usize, sink.clone());
    tokio::pin!(lanes);
    let (mut received, mut announced) = (None, None);
    while received.is_none() || announced.is_none() {
        // Once our lanes are complete the sender's totals are due at once.
        let wait = if received.is_some() { FINISH_TIMEOUT } else { UNBOUNDED };
        tokio::select! {
            r = &mut lanes, if received.is_none() => match r {
                Ok(totals) => received = Some(totals),
                Err(e) => return Err(fail_lanes(ctl, e).await),
            },
            e = super::stalled(progress, stall.unwrap_or(UNBOUNDED)), if received.is_none() && stall.is_some() => {
                return Err(fail_lanes(ctl, e).await)
            }
            ev = ctl.next_event(wait), if announced.is_none() => match ev? {
                Event::Finished(totals) => announced = Some(totals),
                other => return Err(unexpected(&other)),
            },
        }
    }
    let (Some(received), Some(announced)) = (received, announced) else {
        return Err(TransferError::internal("loop ended early"));
    };
    if received != announced {
        return Err(TransferError::new(
            ErrorKind::Integrity,
            format!(
                "the sender reports {} entries / {} bytes but {} / {} arrived",
                announced.entries, announced.bytes, received.entries, received.bytes
            ),
        ));
    }
    sink.check_complete()?;
    let sink_ref = sink.clone();
    tokio::task::spawn_blocking(move || {
        sink_ref.make_links()?;
        sink_ref.finish_dirs()?;
        if let Some(dest) = sink_ref.dest() {
            dest.end();
        }
        Ok::<_, TransferError>(())
    })
    .await
    .map_err(|e| TransferError::internal(e.to_string()))??;
    let received = Summary { refused: sink.refused(), ..received };
    if received.refused > SHOWN_REFUSALS {
        if let Some(observer) = &sink.observer {
            observer.note(Note::Warning(format!(
                "{} more entries could not be written here either",
                received.refused - SHOWN_REFUSALS
            )));
        }
    }
    ctl.session().complete(received)?;
    ctl.flush().await?;
    Ok(received)
}

/// Most time one batch of the listing may take to arrive (the sender may be hashing files).
const LISTING_TIMEOUT: Duration = super::DECISION_TIMEOUT;

/// Asks for a listing and answers it entry by entry from what `dest` holds.
async fn survey_destination(
    ctl: &mut ControlStream,
    mut dest: Dest,
    offer: &Offer,
    opts: &ReceiveOptions,
    partials: HashSet<String>,
) -> Result<(Dest, Survey), TransferError> {
    let mut survey = Survey::new(offer, opts.overwrite, opts.checksum, partials);
    ctl.session().ask(Ask { checksum: opts.checksum })?;
    ctl.flush().await?;
    loop {
        match ctl.next_event(LISTING_TIMEOUT).await? {
            Event::Listing(batch) => {
                // File system work (and hashing, with --checksum) off the runtime's threads.
                let (s, d, answers) = tokio::task::spawn_blocking(move || {
                    let answers = survey.answer(&dest, &batch, &|| {});
                    (survey, dest, answers)
                })
                .await
                .map_err(|e| TransferError::internal(e.to_string()))?;
                survey = s;
                dest = d;
                ctl.session().answer(answers?)?;
                ctl.flush().await?;
            }
            Event::ListEnd => return Ok((dest, survey)),
            other => return Err(unexpected(&other)),
        }
    }
}

/// A lane failed (or stalled) while the others still run: learn the peer's reason if the
/// network is to blame, and tell the peer ours before the streams are dropped.
async fn fail_lanes(ctl: &mut ControlStream, e: TransferError) -> TransferError {
    let e = ctl.explain(e).await;
    ctl.report(&e).await;
    e
}

/// `out`, or the directory it would be made in: its nearest existing ancestor.
fn nearest_existing(out: &Path) -> Result<(PathBuf, std::fs::Metadata), TransferError> {
    let mut at = out;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) => return Ok((at.to_path_buf(), meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => {
                    return Ok((
                        PathBuf::from("."),
                        std::fs::metadata(".").map_err(|e| bad_out(out, &e))?,
                    ))
                }
            },
            Err(e) => return Err(bad_out(out, &e)),
        }
    }
}

fn bad_out(out: &Path, e: &std::io::Error) -> TransferError {
    let kind = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::Io
        }
        _ => ErrorKind::Usage,
    };
    TransferError::new(
        kind,
        format!("cannot receive into {}: {e}; choose another --out", out.display()),
    )
}

/// Checks that `out` can be received into: a directory, or a path whose nearest existing
/// ancestor is one (it is created on accepting), writable either way.
fn check_out(out: &Path) -> Result<(), TransferError> {
    let (at, meta) = nearest_existing(out)?;
    if !meta.is_dir() {
        let what =
            if at == out { "it is not a directory" } else { "a part of it is not a directory" };
        return Err(TransferError::new(
            ErrorKind::Usage,
            format!(
                "cannot receive into {}: {what} ({}); choose another --out",
                out.display(),
                at.display()
            ),
        ));
    }
    rustix::fs::access(&at, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK)
        .map_err(|e| bad_out(out, &e.into()))
}

/// Checks that the file system of `out` has `needed` bytes free for this user.
fn check_space(out: &Path, needed: u64) -> Result<(), TransferError> {
    let (at, _) = nearest_existing(out)?;
    let Ok(fs) = rustix::fs::statvfs(&at) else { return Ok(()) };
    // Some file systems (network, pseudo) report no size at all: nothing to check against.
    if fs.f_blocks == 0 {
        return Ok(());
    }
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free >= needed {
        return Ok(());
    }
    Err(TransferError::new(
        ErrorKind::Io,
        format!(
            "not enough free space in {}: the offer needs {} more, {} are free; free some space or choose another --out",
            out.display(),
            indicatif::HumanBytes(needed),
            indicatif::HumanBytes(free)
        ),
    ))
}

/// Checks what the sender may not ask for.
fn check_offer(offer: &Offer) -> Result<(), TransferError> {
    let protocol = |m: String| TransferError::new(ErrorKind::Protocol, m);
    if offer.lanes == 0 || offer.lanes > MAX_LANES {
        return Err(protocol(format!("the sender asked for {} data lanes", offer.lanes)));
    }
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&(offer.chunk_size as usize)) {
        return Err(protocol(format!("the sender asked for chunks of {} bytes", offer.chunk_size)));
    }
    let mut names = HashSet::new();
    for name in &offer.names {
        let rel = RelPath::parse(name)
            .map_err(|e| protocol(format!("the sender offered an unsafe name: {e}")))?;
        if rel.components().count() != 1 || !names.insert(name.clone()) {
            return Err(protocol(format!("the sender offered an invalid top-level name {rel}")));
        }
        if name == STATE_DIR.as_bytes() {
            return Err(TransferError::new(
                ErrorKind::Conflict,
                format!("the sender offered {STATE_DIR}, a name p2p-copy keeps for its own state; rename it and send again"),
            ));
        }
    }
    if names.is_empty() && offer.text.is_none() {
        return Err(protocol("the sender offered nothing".into()));
    }
    if offer.hardlinks > MAX_HARDLINKS {
        return Err(protocol(format!(
            "the sender offered {} hard links, more than the {MAX_HARDLINKS} a transfer may hold",
            offer.hardlinks
        )));
    }
    Ok(())
}

fn declined(opts: &ReceiveOptions) -> TransferError {
    let message = if opts.interactive {
        "the transfer was declined"
    } else {
        "not accepting without confirmation: no one can be asked (no terminal, or --json); pass --yes to accept"
    };
    TransferError::new(ErrorKind::Refused, message)
}

async fn decide(
    opts: &ReceiveOptions,
    observer: &Arc<dyn Observer>,
    offer: &Offer,
    present: Present,
) -> bool {
    if opts.yes {
        return true;
    }
    if !opts.interactive {
        return false;
    }
    let asked = observer.clone();
    let offer = offer.clone();
    let ask = tokio::task::spawn_blocking(move || asked.confirm(&offer, present));
    match tokio::time::timeout(PROMPT_TIMEOUT, ask).await {
        Ok(Ok(yes)) => yes,
        Ok(Err(_)) => false,
        Err(_) => {
            observer.note(Note::Warning(format!(
                "no answer within {} minutes: declining",
                PROMPT_TIMEOUT.as_secs() / 60
            )));
            false
        }
    }
}
