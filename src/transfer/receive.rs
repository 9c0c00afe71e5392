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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::OsRng;

use super::control::{unexpected, ControlStream, UNBOUNDED};
use super::fs::{Dest, RelPath};
use super::lanes::{receive_lanes, Sink};
use super::meet::{join, Guard, Plan, Rendezvous};
use super::{Note, Observer, PathKind, Progress, Report, TransferError};
use crate::code::Code;
use crate::crypto::Role;
use crate::error::ErrorKind;
use crate::net::discovery::{self, DiscoveryConfig};
use crate::net::quic::{Node, Tuning};
use crate::proto::{Config, Event, Session};
use crate::wire::control::{Accept, Offer, Refuse, RefuseReason, Summary};
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
    /// Accept without asking.
    pub yes: bool,
    /// Ask the observer (a person) when `yes` is off; otherwise refuse.
    pub interactive: bool,
    /// Replace existing files.
    pub overwrite: bool,
    /// How long to look for the sender.
    pub wait: Duration,
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
            yes: false,
            interactive: false,
            overwrite: false,
            wait: Duration::from_secs(30),
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
    let mut stop = opts.stop.clone();
    let config = Config { max_lanes: MAX_LANES, ..Config::default() };
    let (node, conn, mut ctl, guard) = match &opts.rendezvous {
        Some(rv) => {
            let plan = Plan {
                role: Role::Receiver,
                code: opts.code.clone(),
                claim: true,
                rendezvous: rv,
                bind: opts.bind,
                socket: opts.socket.clone(),
                tuning: &opts.tuning,
                config,
                wait: opts.wait,
            };
            join(plan, &observer, &mut stop).await?
        }
        None => {
            let (node, conn, ctl) = lan(&opts, config, &observer).await?;
            (node, conn, ctl, Guard::none())
        }
    };
    let progress_for_report = progress.clone();
    let result = tokio::select! {
        r = run(&mut ctl, &conn, &opts, observer, progress) => r,
        e = stop.requested() => Err(e),
        e = guard.trouble(&conn) => Err(e),
    };
    let route = super::Route::of(&guard, started, progress_for_report);
    let report =
        super::conclude(Role::Receiver, &mut ctl, &conn, &node.endpoint, route, result).await;
    guard.close().await;
    report
}

/// LAN mode: find the sender by multicast and connect to it.
async fn lan(
    opts: &ReceiveOptions,
    config: Config,
    observer: &Arc<dyn Observer>,
) -> Result<(Node, quinn::Connection, ControlStream), TransferError> {
    observer.note(Note::Searching { nameplate: opts.code.nameplate() });
    let mut stop = opts.stop.clone();
    let found = tokio::select! {
        found = discovery::find(&opts.discovery, opts.code.nameplate(), opts.wait) => found?,
        e = stop.requested() => return Err(e),
    };
    let node = Node::bind(opts.bind, &opts.tuning, false)?;
    let conn = tokio::select! {
        conn = node.connect_any(&found.addrs, Duration::from_secs(10)) => conn?,
        e = stop.requested() => return Err(e),
    };
    observer.note(Note::Connected { peer: conn.remote_address(), path: PathKind::Direct });
    let (send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
        .await
        .map_err(|_| TransferError::network("the sender did not let us open a stream"))?
        .map_err(TransferError::from)?;
    let channel = node.channel(&conn)?;
    let session =
        Session::new(Role::Receiver, &opts.code, channel, config, Instant::now(), &mut OsRng);
    Ok((node, conn, ControlStream::new(session, send, recv)))
}

async fn run(
    ctl: &mut ControlStream,
    conn: &quinn::Connection,
    opts: &ReceiveOptions,
    observer: Arc<dyn Observer>,
    progress: Arc<Progress>,
) -> Result<Summary, TransferError> {
    match ctl.next_event(Duration::from_secs(60)).await? {
        Event::Secured { verifier, .. } => observer.note(Note::Secured { verifier: &verifier }),
        other => return Err(unexpected(&other)),
    }
    let offer = match ctl.next_event(Duration::from_secs(60)).await? {
        Event::Offer(offer) => offer,
        other => return Err(unexpected(&other)),
    };
    check_offer(&offer)?;

    let conflicts = existing(opts, &offer.names)?;
    if !conflicts.is_empty() && !opts.overwrite {
        let shown: Vec<String> = conflicts.iter().take(20).cloned().collect();
        ctl.session().refuse(Refuse { reason: RefuseReason::Conflict, names: shown.clone() })?;
        ctl.flush().await?;
        return Err(TransferError::new(
            ErrorKind::Conflict,
            format!(
                "{} already exist{} in {}: {}; receive with --overwrite to replace, or choose another --out",
                if conflicts.len() == 1 { "this name" } else { "these names" },
                if conflicts.len() == 1 { "s" } else { "" },
                opts.out.display(),
                shown.join(", ")
            ),
        ));
    }

    observer.note(Note::Offer(&offer));
    if !decide(opts, &observer, &offer).await {
        ctl.session().refuse(Refuse { reason: RefuseReason::Declined, names: vec![] })?;
        ctl.flush().await?;
        let message = if opts.interactive {
            "the transfer was declined".to_owned()
        } else {
            "not accepting without confirmation: no one can be asked (no terminal, or --json); pass --yes to accept".to_owned()
        };
        return Err(TransferError::new(ErrorKind::Refused, message));
    }

    let dest = Dest::open(&opts.out)?;
    ctl.session().accept(Accept {})?;
    ctl.flush().await?;
    observer.note(Note::Accepted { total: offer.bytes });

    let keys = ctl
        .session()
        .keys()
        .ok_or_else(|| TransferError::internal("no keys after the handshake"))?
        .clone();
    let sink = Arc::new(Sink::new(dest, opts.overwrite, &offer, &conflicts, progress.clone()));
    let lanes = receive_lanes(conn, &keys, offer.lanes, offer.chunk_size as usize, sink.clone());
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
            e = super::stalled(&progress, super::STALL_TIMEOUT), if received.is_none() => {
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
    let sink_ref = sink.clone();
    tokio::task::spawn_blocking(move || sink_ref.finish_dirs())
        .await
        .map_err(|e| TransferError::internal(e.to_string()))??;
    ctl.session().complete(received)?;
    ctl.flush().await?;
    Ok(received)
}

/// A lane failed (or stalled) while the others still run: learn the peer's reason if the
/// network is to blame, and tell the peer ours before the streams are dropped.
async fn fail_lanes(ctl: &mut ControlStream, e: TransferError) -> TransferError {
    let e = ctl.explain(e).await;
    ctl.report(&e).await;
    e
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
    }
    if names.is_empty() {
        return Err(protocol("the sender offered nothing".into()));
    }
    Ok(())
}

fn existing(opts: &ReceiveOptions, names: &[String]) -> Result<Vec<String>, TransferError> {
    match std::fs::symlink_metadata(&opts.out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => {
            let dest = Dest::open(&opts.out)?;
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            Ok(dest.existing(&refs))
        }
    }
}

async fn decide(opts: &ReceiveOptions, observer: &Arc<dyn Observer>, offer: &Offer) -> bool {
    if opts.yes {
        return true;
    }
    if !opts.interactive {
        return false;
    }
    let asked = observer.clone();
    let offer = offer.clone();
    let ask = tokio::task::spawn_blocking(move || asked.confirm(&offer));
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
