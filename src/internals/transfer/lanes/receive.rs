//! The receiving half of the data lanes (see the parent module).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::super::control::read_error;
use super::super::fs::{
    shown, Dest, Finished, Found, FsError, PartFile, RelPath, Resumable, Syncer,
};
use super::super::survey::{admit, none_admitted, unlisted_target, LinkTargets, Survey};
use super::super::walk;
use super::super::{FileOutcome, Note, Progress, TransferError};
use super::{COMMIT_BYTES, COMMIT_FILES, READ_BUDGET, READ_DEPTH};
use crate::error::ErrorKind;
use crate::proto::{LaneEvent, LaneReader};
use crate::wire::control::{Offer, Summary, MAX_HARDLINK_BYTES};
use crate::wire::data::{Entry, EntryKind, Xattr, CHUNK_HEADER_LEN};
use crate::wire::frame;

/// Permission bits a received file or directory never gets: group and other write. The
/// sender's modes are kept otherwise (setuid and setgid are dropped by [`Dest`]).
pub const MODE_MASK: u32 = !0o022;

/// Smallest frame cap on a receiving lane: room for an entry with the longest path and link
/// target.
const MIN_FRAME_CAP: usize = 16 << 10;

/// A directory's metadata to set at the end: its mode (none for the user's own) and mtime.
type DirMeta = (Option<u32>, Option<std::time::SystemTime>);

/// The hard links that arrived (path and target), and the bytes of their paths.
#[derive(Debug, Default)]
struct Links {
    pending: Vec<(RelPath, Vec<u8>)>,
    bytes: usize,
}

/// A writer that takes the one file of an offer instead of a destination directory
/// (`receive --stdout`). Its bytes arrive in order, as they come; the file's hash is checked
/// at its end, after they were written (a mismatch fails the transfer).
#[derive(Clone)]
pub struct Pipe(Arc<Mutex<Box<dyn std::io::Write + Send>>>);

impl Pipe {
    /// The file goes into `writer`.
    pub fn new(writer: Box<dyn std::io::Write + Send>) -> Pipe {
        Pipe(Arc::new(Mutex::new(writer)))
    }

    fn write(&self, data: &[u8]) -> Result<(), TransferError> {
        let mut w = self.0.lock().map_err(|_| poisoned())?;
        w.write_all(data).map_err(pipe_failed)
    }

    fn zeros(&self, mut len: u64) -> Result<(), TransferError> {
        let zeros = [0u8; 64 << 10];
        while len > 0 {
            let n = len.min(zeros.len() as u64) as usize;
            self.write(&zeros[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), TransferError> {
        self.0.lock().map_err(|_| poisoned())?.flush().map_err(pipe_failed)
    }
}

fn pipe_failed(e: std::io::Error) -> TransferError {
    let why = match e.kind() {
        std::io::ErrorKind::BrokenPipe => "its reader went away".to_owned(),
        _ => e.to_string(),
    };
    TransferError::new(ErrorKind::Io, format!("writing the file to the output failed: {why}"))
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipe")
    }
}

/// Where the lanes write (one per transfer, so its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Target {
    /// Files, directories and links into the destination directory.
    Dir(Dest),
    /// The offer's one file into a writer.
    Pipe(Pipe),
}

/// Where the receiver's lanes write, and the rules they follow.
#[derive(Debug)]
pub struct Sink {
    target: Target,
    /// Replace existing files.
    pub overwrite: bool,
    /// Bytes written so far.
    pub progress: Arc<Progress>,
    /// What the person accepted: the sender may not send more.
    limits: Offer,
    /// What arrived so far, checked against `limits` as each entry arrives (without a
    /// listing; with one, the listing was checked and the entries are held to it).
    admitted: Mutex<Offer>,
    /// The answers to the listing, if there was one.
    survey: Option<Mutex<Survey>>,
    /// Directories to get their mode and mtime once their contents are in, once each
    /// however often the sender names them (at most `limits.dirs` of them).
    dirs: Mutex<HashMap<RelPath, DirMeta>>,
    /// Without a listing: the files that arrived, which links may name.
    targets: Mutex<LinkTargets>,
    /// Hard links to make once every lane has finished (a link's target may come on
    /// another lane, later): at most `limits.hardlinks` of them.
    links: Mutex<Links>,
    /// `--limit-rate`: the lanes read no faster (QUIC's flow control slows the sender).
    pub rate: Option<Arc<crate::transfer::rate::RateLimit>>,
    /// Told of each file put in place.
    pub observer: Option<Arc<dyn crate::transfer::Observer>>,
    /// Set when the lanes are given up (an error, Ctrl-C): the lane workers stop at the next
    /// record instead of applying what is still queued (a queued message may hold many
    /// compressed records, each up to a chunk of writing).
    abandoned: std::sync::atomic::AtomicBool,
    /// Set the extended attributes the sender sends (off: `receive --no-xattrs`).
    pub xattrs: bool,
    /// Set once extended attributes could not be kept (told once per transfer).
    xattrs_warned: std::sync::atomic::AtomicBool,
    /// Entries the destination's file system cannot hold, refused one by one.
    refused: std::sync::atomic::AtomicU64,
}

/// Refused entries told one by one; the rest are counted ([`Sink::refused`]).
pub const SHOWN_REFUSALS: u64 = 20;

impl Sink {
    /// A sink writing into `dest` what `offer` announced, held to the answers of `survey` if
    /// the receiver asked for a listing.
    pub fn new(
        dest: Dest,
        overwrite: bool,
        offer: &Offer,
        survey: Option<Survey>,
        progress: Arc<Progress>,
    ) -> Sink {
        Sink::with(Target::Dir(dest), overwrite, offer, survey, progress)
    }

    /// A sink writing the one file `offer` announced into `pipe` (the caller checked that the
    /// offer is one file and nothing else; the lanes hold the sender to it).
    pub fn pipe(pipe: Pipe, offer: &Offer, progress: Arc<Progress>) -> Sink {
        Sink::with(Target::Pipe(pipe), false, offer, None, progress)
    }

    fn with(
        target: Target,
        overwrite: bool,
        offer: &Offer,
        survey: Option<Survey>,
        progress: Arc<Progress>,
    ) -> Sink {
        let admitted = none_admitted(offer);
        Sink {
            target,
            overwrite,
            progress,
            limits: offer.clone(),
            admitted: Mutex::new(admitted),
            survey: survey.map(Mutex::new),
            dirs: Mutex::default(),
            targets: Mutex::new(LinkTargets::new(offer)),
            links: Mutex::default(),
            abandoned: std::sync::atomic::AtomicBool::new(false),
            xattrs: true,
            xattrs_warned: std::sync::atomic::AtomicBool::new(false),
            refused: std::sync::atomic::AtomicU64::new(0),
            rate: None,
            observer: None,
        }
    }

    /// The destination directory (none when writing into a pipe).
    pub fn dest(&self) -> Option<&Dest> {
        match &self.target {
            Target::Dir(dest) => Some(dest),
            Target::Pipe(_) => None,
        }
    }

    /// Extended attributes of `path` could not be set (the file system may not take them):
    /// the data is kept, and the person is told, once.
    fn xattrs_lost(&self, path: &dyn std::fmt::Display, why: &str) {
        use std::sync::atomic::Ordering;
        tracing::debug!(%path, why, "extended attributes not kept");
        if self.xattrs_warned.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(observer) = &self.observer {
            observer.note(Note::Warning(format!(
                "extended attributes of {path} (and of any later entry that fails alike) were \
                 not kept: {why}"
            )));
        }
    }

    /// How many entries were refused because the destination's file system cannot hold
    /// them (a name it does not allow, a link where it has none): everything else arrived.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `result` of writing the entry `rel` (a regular file of `size` bytes, if `size`), with a
    /// name or kind the file system cannot hold ([`FsError::Unwritable`]) turned into a refusal
    /// of that entry alone (`None`): told (the first [`SHOWN_REFUSALS`] as warnings, and a file
    /// by its `file` event), counted, and the transfer goes on. Any other error stays one.
    fn or_refuse<T>(
        &self,
        rel: &RelPath,
        size: Option<u64>,
        result: Result<T, FsError>,
    ) -> Result<Option<T>, TransferError> {
        use std::sync::atomic::Ordering;
        let e = match result {
            Ok(v) => return Ok(Some(v)),
            Err(e @ FsError::Unwritable { .. }) => e,
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(path = %rel, error = %e, "entry refused");
        if size.is_some() {
            self.targets.lock().map_err(|_| poisoned())?.refused(rel.as_bytes());
        }
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(observer) = &self.observer {
            if n <= SHOWN_REFUSALS {
                observer.note(Note::Warning(refusal(rel, &e, self.dest())));
            }
            if let Some(bytes) = size {
                let outcome = FileOutcome::Refused;
                observer.note(Note::File { path: rel.as_bytes(), bytes, outcome });
            }
        }
        Ok(None)
    }

    /// The destination directory, for an entry that needs one.
    fn dir(&self) -> Result<&Dest, TransferError> {
        self.dest().ok_or_else(|| {
            TransferError::new(ErrorKind::Protocol, "the sender sent more than one file")
        })
    }

    /// Checks an entry from a lane; returns its path and, if the receiver offered to resume
    /// it, the partial copy to continue.
    fn check(&self, entry: &Entry) -> Result<(RelPath, Option<Resumable>), TransferError> {
        match &self.survey {
            Some(survey) => {
                let resumable = survey.lock().map_err(|_| poisoned())?.arrive(entry)?;
                let rel = RelPath::parse(&entry.path).map_err(|e| {
                    TransferError::new(ErrorKind::Protocol, format!("unsafe path: {e}"))
                })?;
                Ok((rel, resumable))
            }
            None => {
                let mut got = self.admitted.lock().map_err(|_| poisoned())?;
                let rel = admit(&self.limits, &mut got, entry)?;
                drop(got);
                if let EntryKind::File { .. } = entry.kind {
                    self.targets.lock().map_err(|_| poisoned())?.file(&entry.path, false);
                }
                Ok((rel, None))
            }
        }
    }

    /// Notes the hard link `rel` to `target`, to be made by [`Sink::make_links`].
    fn link_later(&self, rel: RelPath, target: &[u8]) -> Result<(), TransferError> {
        self.dir()?;
        let mut links = self.links.lock().map_err(|_| poisoned())?;
        links.bytes += rel.as_bytes().len() + target.len();
        if links.bytes > MAX_HARDLINK_BYTES {
            return Err(TransferError::new(
                ErrorKind::Protocol,
                format!(
                    "the sender's hard links exceed {MAX_HARDLINK_BYTES} bytes of paths (at {rel})"
                ),
            ));
        }
        links.pending.push((rel, target.to_vec()));
        Ok(())
    }

    /// Makes the hard links that arrived, now that every file is in place: each must name a
    /// regular file the sender sent (or listed) in this transfer. Call after every lane
    /// finished, before [`Sink::finish_dirs`].
    pub fn make_links(&self) -> Result<(), TransferError> {
        let Some(dest) = self.dest() else { return Ok(()) };
        let pending = std::mem::take(&mut self.links.lock().map_err(|_| poisoned())?.pending);
        let targets = self.targets.lock().map_err(|_| poisoned())?;
        for (rel, target) in pending {
            // With a listing, the target was checked when the link was listed (and the link
            // arrived as listed).
            let found = match &self.survey {
                Some(_) => RelPath::parse(&target).ok(),
                None => targets.find(&target).map(|(t, _)| t),
            };
            let Some(target) = found else { return Err(unlisted_target(&rel, &target)) };
            if targets.was_refused(target.as_bytes()) {
                let why = "the file it names could not be written here";
                let gone = FsError::Unwritable { path: dest.root().join(rel.as_path()), why };
                self.or_refuse(&rel, None, Err::<(), _>(gone))?;
                continue;
            }
            if self.or_refuse(&rel, None, dest.hard_link(&target, &rel, self.overwrite))?.is_some()
            {
                tracing::debug!(path = %rel, %target, "linked");
            }
        }
        Ok(())
    }

    /// After the lanes: with a listing, every entry asked for arrived.
    pub fn check_complete(&self) -> Result<(), TransferError> {
        match &self.survey {
            Some(s) => s.lock().map_err(|_| poisoned())?.check_complete(),
            None => Ok(()),
        }
    }

    /// Gives received directories their modes and mtimes, deepest first (so setting a
    /// parent's mtime comes after its children changed it), and makes the received names
    /// durable. Call after every lane finished.
    pub fn finish_dirs(&self) -> Result<(), TransferError> {
        let Some(dest) = self.dest() else { return Ok(()) };
        // First, while the directories are still ours to open (the sender's modes may not
        // let us read them afterwards).
        dest.sync_dirs()?;
        let dirs = std::mem::take(&mut *self.dirs.lock().map_err(|_| poisoned())?);
        let mut dirs: Vec<_> = dirs.into_iter().collect();
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, (mode, mtime)) in dirs {
            dest.finish_dir(&rel, mode, mtime)?;
        }
        Ok(())
    }
}

fn poisoned() -> TransferError {
    TransferError::internal("a lane worker panicked")
}

/// Receives `lanes` streams of chunks up to `chunk` bytes into `sink`; returns the totals
/// received. Lanes are accepted while earlier ones run, so the first failure surfaces at once.
pub async fn receive_lanes(
    conn: &quinn::Connection,
    lanes: u16,
    chunk: usize,
    sink: Arc<Sink>,
) -> Result<Summary, TransferError> {
    let max_frame = (CHUNK_HEADER_LEN + chunk).max(MIN_FRAME_CAP);
    // However this ends (done, failed, or this future dropped), workers still running stop.
    let _abandon = Abandon(sink.clone());
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks: JoinSet<Result<Summary, TransferError>> = JoinSet::new();
    let mut accepted = 0;
    let mut totals = Summary::default();
    // A stream beyond the offered lanes (or a bidirectional one: the sender opens none) is
    // the sender breaking the protocol; left unread, it would hold the connection's
    // flow-control window and stall the real lanes. Once the connection is gone, its loss is
    // reported by the lanes.
    let (mut more, mut bidi) = (true, true);
    while accepted < lanes || !tasks.is_empty() {
        tokio::select! {
            stream = conn.accept_uni(), if accepted < lanes || more => {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) if accepted < lanes => return Err(crate::transfer::connection_lost(&e)),
                    Err(_) => {
                        more = false;
                        continue;
                    }
                };
                if accepted >= lanes {
                    return Err(TransferError::new(
                        ErrorKind::Protocol,
                        format!("the sender opened more data streams than the {lanes} it offered"),
                    ));
                }
                accepted += 1;
                let lane = LaneSetup { lanes, chunk, max_frame, seen: seen.clone() };
                tasks.spawn(receive_lane(stream, lane, sink.clone()));
            }
            opened = conn.accept_bi(), if bidi => match opened {
                Ok(_) => {
                    return Err(TransferError::new(
                        ErrorKind::Protocol,
                        "the sender opened a bidirectional stream; it opens only data streams",
                    ))
                }
                Err(_) => bidi = false,
            },
            Some(joined) = tasks.join_next() => match joined {
                Ok(Ok(t)) => {
                    totals.entries += t.entries;
                    totals.files += t.files;
                    totals.bytes += t.bytes;
                    totals.resumed += t.resumed;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(TransferError::internal(format!("a lane task failed: {e}"))),
            },
        }
    }
    Ok(totals)
}

/// What `stream` holds right now, up to about `budget` bytes, waiting only for the first piece;
/// and whether the stream ended.
async fn read_ready(
    stream: &mut quinn::RecvStream,
    budget: usize,
) -> Result<(Vec<Bytes>, bool), quinn::ReadError> {
    let Some(first) = stream.read_chunk(budget, true).await? else {
        return Ok((Vec::new(), true));
    };
    let mut got = first.bytes.len();
    let mut pieces = vec![first.bytes];
    // Polled once with a waker that does nothing: a piece that is ready comes now, and one that
    // is not is left for the next message (`read_chunk` is cancel-safe).
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while got < budget {
        let next = std::pin::pin!(stream.read_chunk(budget - got, true));
        match std::future::Future::poll(next, &mut cx) {
            std::task::Poll::Ready(Ok(Some(chunk))) => {
                got += chunk.bytes.len();
                pieces.push(chunk.bytes);
            }
            std::task::Poll::Ready(Ok(None)) => return Ok((pieces, true)),
            std::task::Poll::Ready(Err(e)) => return Err(e),
            std::task::Poll::Pending => break,
        }
    }
    Ok((pieces, false))
}

/// Marks the sink abandoned when dropped.
struct Abandon(Arc<Sink>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

struct LaneSetup {
    lanes: u16,
    chunk: usize,
    max_frame: usize,
    seen: Arc<Mutex<HashSet<u32>>>,
}

async fn receive_lane(
    mut stream: quinn::RecvStream,
    setup: LaneSetup,
    sink: Arc<Sink>,
) -> Result<Summary, TransferError> {
    let mut preamble = [0u8; 4];
    stream
        .read_exact(&mut preamble)
        .await
        .map_err(|_| TransferError::network("a data stream ended before its first bytes"))?;
    let lane = u32::from_be_bytes(preamble);
    let fresh = setup.seen.lock().map_err(|_| poisoned())?.insert(lane);
    if lane == 0 || lane > u32::from(setup.lanes) || !fresh {
        return Err(TransferError::new(
            ErrorKind::Protocol,
            format!("the sender opened an unexpected data lane {lane}"),
        ));
    }
    let reader = LaneReader::new(setup.chunk);
    let (tx, rx) = mpsc::channel::<Result<Vec<Vec<u8>>, TransferError>>(READ_DEPTH);
    let rate = sink.rate.clone();
    let bodies = Arc::new(Bodies::default());
    let mut deframer = Deframer::new(setup.max_frame).with_bodies(bodies.clone());
    let worker = tokio::task::spawn_blocking(move || apply_lane(reader, rx, &sink, &bodies));
    let mut ended = false;
    while !ended {
        // Whatever the stream holds, up to READ_BUDGET bytes, is cut into frames that go to
        // the worker in one message: a tree of small files does not cost a hand-off between
        // threads per record. The pieces are copied out at once, which frees QUIC's buffers.
        let item = match read_ready(&mut stream, READ_BUDGET).await {
            Ok((pieces, end)) => {
                if let Some(rate) = &rate {
                    rate.take(pieces.iter().map(Bytes::len).sum()).await;
                }
                ended = end;
                match deframer.frames(&pieces) {
                    Ok(_) if end && deframer.in_frame() => Err(TransferError::network(
                        "the other side stopped in the middle of a message",
                    )),
                    frames => frames,
                }
            }
            Err(e) => Err(read_error(quinn::ReadExactError::ReadError(e))),
        };
        if matches!(&item, Ok(frames) if frames.is_empty()) {
            continue;
        }
        let failed = item.is_err();
        // A closed channel means the worker stopped with an error; it reports it below.
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    worker.await.map_err(|e| TransferError::internal(format!("a lane worker failed: {e}")))?
}

fn apply_lane(
    reader: LaneReader,
    rx: mpsc::Receiver<Result<Vec<Vec<u8>>, TransferError>>,
    sink: &Sink,
    bodies: &Bodies,
) -> Result<Summary, TransferError> {
    let syncer = sink.dest().map(Dest::syncer);
    let mut finished = Vec::new();
    let applied = apply_records(reader, rx, sink, syncer.as_ref(), &mut finished, bodies);
    // Files that arrived whole and verified go in place even when a later one failed, unless
    // the whole transfer is being given up (Ctrl-C): then they are removed with the rest.
    let committed = if sink.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
        Ok(())
    } else {
        commit(sink, syncer.as_ref(), finished)
    };
    let totals = applied?;
    committed?;
    Ok(totals)
}

/// The warning for the entry `rel` refused with `e`: "left out a/b:c: this file system does
/// not allow its name", naming the parent that could not be made when it is not the entry.
fn refusal(rel: &RelPath, e: &FsError, dest: Option<&Dest>) -> String {
    let FsError::Unwritable { path, why } = e else { return format!("left out {rel}: {e}") };
    let at = dest.and_then(|d| path.strip_prefix(d.root()).ok());
    match at {
        Some(at) if at != rel.as_path() => {
            format!("left out {rel}: {why} ({})", super::super::fs::shown_path(at))
        }
        _ => format!("left out {rel}: {why}"),
    }
}

/// Puts `files` in place ([`Dest::commit_all`]) and tells the observer of each.
fn commit(sink: &Sink, syncer: Option<&Syncer>, files: Vec<Finished>) -> Result<(), TransferError> {
    let (Some(dest), Some(syncer)) = (sink.dest(), syncer) else { return Ok(()) };
    let done: Vec<(RelPath, u64, bool)> =
        files.iter().map(|f| (f.rel().clone(), f.size(), f.resumed())).collect();
    // Those whose names the file system will not take were removed.
    let mut refused: HashMap<RelPath, FsError> =
        dest.commit_all(syncer, files)?.into_iter().collect();
    for (path, bytes, resumed) in done {
        if let Some(e) = refused.remove(&path) {
            sink.or_refuse(&path, Some(bytes), Err::<(), _>(e))?;
        } else if let Some(observer) = &sink.observer {
            let outcome = if resumed { FileOutcome::Resumed } else { FileOutcome::Received };
            observer.note(Note::File { path: path.as_bytes(), bytes, outcome });
        }
    }
    Ok(())
}

fn apply_records(
    mut reader: LaneReader,
    mut rx: mpsc::Receiver<Result<Vec<Vec<u8>>, TransferError>>,
    sink: &Sink,
    syncer: Option<&Syncer>,
    finished: &mut Vec<Finished>,
    bodies: &Bodies,
) -> Result<Summary, TransferError> {
    let mut open: Option<Open> = None;
    // The directory just entered (its XATTRS may follow), and the open file's attributes.
    let mut last_dir: Option<RelPath> = None;
    let mut attrs: Option<Vec<Xattr>> = None;
    let mut finished_bytes = 0;
    let mut totals = Summary::default();
    while let Some(item) = rx.blocking_recv() {
        sink.progress.touch();
        for body in item? {
            if sink.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(TransferError::internal("the transfer was given up"));
            }
            let mut wrote = false;
            let event = match reader.handle(&body) {
                Ok(event) => event,
                Err(e @ crate::proto::LaneError::Hash { .. }) => {
                    // The whole file arrived, and is not what the sender hashed: nothing of
                    // it can be kept.
                    if let Some(Open::Writing { part, .. }) = open.take() {
                        part.discard()?;
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            let dir = last_dir.take();
            match event {
                LaneEvent::Xattrs(_) if !sink.limits.xattrs => {
                    return Err(TransferError::new(
                        ErrorKind::Protocol,
                        "the sender sent extended attributes its offer did not announce",
                    ));
                }
                LaneEvent::Xattrs(_) if !sink.xattrs => {}
                LaneEvent::Xattrs(list) => match (dir, &open) {
                    (Some(rel), _) => {
                        if let Err(e) = sink.dir()?.set_dir_xattrs(&rel, &list) {
                            sink.xattrs_lost(&rel, &e.to_string());
                        }
                    }
                    (None, Some(Open::Pending { .. })) => attrs = Some(list),
                    // Into a pipe: no file to keep them.
                    _ => {}
                },
                LaneEvent::Entry(entry) => {
                    attrs = None;
                    let (rel, resumable) = sink.check(&entry)?;
                    totals.entries += 1;
                    let mtime = entry.mtime.and_then(walk::system_time);
                    match &entry.kind {
                        EntryKind::File { .. } | EntryKind::Stream
                            if matches!(sink.target, Target::Pipe(_)) =>
                        {
                            open = Some(Open::Piping { entry });
                        }
                        EntryKind::Dir => {
                            // A directory this transfer (or an interrupted one for the same
                            // names) made gets the sender's mode; one that was here before is
                            // the user's own and keeps its mode. Both get the sender's mtime,
                            // as the files in them changed it.
                            let dest = sink.dir()?;
                            let theirs = !dest.made(&rel) && dest.inspect(&rel)? == Found::Dir;
                            if sink.or_refuse(&rel, None, dest.create_dir(&rel))?.is_some() {
                                let mode = (!theirs).then_some(entry.mode & MODE_MASK);
                                // Attributes only for a directory this transfer made: one
                                // that was here is the user's own, as for its mode.
                                last_dir = (!theirs).then(|| rel.clone());
                                let meta = (mode, mtime);
                                sink.dirs.lock().map_err(|_| poisoned())?.insert(rel, meta);
                            }
                        }
                        EntryKind::Symlink { target } => {
                            let made = sink.dir()?.symlink(&rel, target, sink.overwrite);
                            sink.or_refuse(&rel, None, made)?;
                        }
                        // Made once every lane has finished: its target may be on another.
                        EntryKind::HardLink { target } => sink.link_later(rel, target)?,
                        EntryKind::File { .. } | EntryKind::Stream => {
                            // Opened at the next record: RESUME_AT, or the first data.
                            open = Some(Open::Pending { entry, rel, resumable });
                        }
                    }
                }
                LaneEvent::ResumeAt { offset, .. } => {
                    let Some(Open::Pending { entry, rel, resumable }) = open.take() else {
                        return Err(TransferError::new(
                            ErrorKind::Protocol,
                            "the sender resumed a file the receiver did not offer to resume",
                        ));
                    };
                    let Some(r) = resumable.filter(|r| r.offset == offset) else {
                        // Nothing was touched: the partial copy (if any) stays as it was.
                        return Err(TransferError::new(
                            ErrorKind::Protocol,
                            format!(
                                "the sender resumed {rel} at byte {offset}, which the receiver did not offer"
                            ),
                        ));
                    };
                    let (size, mtime) = file_of(&entry);
                    let (offset, held) = (r.offset, r.held.clone());
                    let part = sink.dir()?.resume_file(&rel, r, size, mtime, sink.overwrite);
                    // The lane checks the whole file's hash, kept or not.
                    reader.resume(held)?;
                    totals.resumed += offset;
                    open = Some(match sink.or_refuse(&rel, Some(size), part)? {
                        Some(part) => {
                            tracing::info!(path = %rel, kept = offset, "continuing a partial copy");
                            Open::Writing { part, entry }
                        }
                        None => Open::Refused,
                    });
                }
                LaneEvent::Data(data) => {
                    match (&open, &sink.target) {
                        (Some(Open::Piping { .. }), Target::Pipe(pipe)) => pipe.write(data)?,
                        _ => {
                            if let Some(part) = writing(&mut open, sink)? {
                                part.write_all(data)?;
                                wrote = true;
                            }
                        }
                    }
                    sink.progress.add(data.len() as u64);
                }
                LaneEvent::Hole(len) => {
                    match (&open, &sink.target) {
                        (Some(Open::Piping { .. }), Target::Pipe(pipe)) => pipe.zeros(len)?,
                        _ => {
                            if let Some(part) = writing(&mut open, sink)? {
                                part.skip(len)?;
                                wrote = true;
                            }
                        }
                    }
                    sink.progress.add(len);
                }
                LaneEvent::FileEnd { size, .. } if matches!(open, Some(Open::Piping { .. })) => {
                    let (Some(Open::Piping { entry }), Target::Pipe(pipe)) =
                        (open.take(), &sink.target)
                    else {
                        return Err(TransferError::internal("file end without an open file"));
                    };
                    pipe.flush()?;
                    if let Some(observer) = &sink.observer {
                        let (path, outcome) = (entry.path.as_slice(), FileOutcome::Received);
                        observer.note(Note::File { path, bytes: size, outcome });
                    }
                    totals.files += 1;
                    totals.bytes += size;
                }
                LaneEvent::FileEnd { hash, size, .. } => {
                    if writing(&mut open, sink)?.is_none() {
                        // Refused: its bytes arrived whole and verified, and were dropped.
                        open = None;
                        totals.files += 1;
                        totals.bytes += size;
                        continue;
                    }
                    let Some(Open::Writing { part, entry }) = open.take() else {
                        return Err(TransferError::internal("file end without an open file"));
                    };
                    if let Some(list) = attrs.take() {
                        if let Err(e) = part.set_xattrs(&list) {
                            sink.xattrs_lost(&shown(&entry.path), &e.to_string());
                        }
                    }
                    let size = part.written();
                    finished.push(part.finish(
                        entry.mode & MODE_MASK,
                        entry.mtime.and_then(walk::system_time),
                        hash,
                    )?);
                    finished_bytes += size;
                    if finished.len() >= COMMIT_FILES || finished_bytes >= COMMIT_BYTES {
                        commit(sink, syncer, std::mem::take(finished))?;
                        finished_bytes = 0;
                    }
                    totals.files += 1;
                    totals.bytes += size;
                }
                LaneEvent::End => {}
            }
            if wrote {
                // The data is written; now the journal may say so.
                let (_, cvs) = reader.take_cvs();
                if let Some(part) = writing(&mut open, sink)? {
                    part.record(&cvs)?;
                }
            }
            bodies.give(body);
        }
    }
    // Only the final report reads it.
    sink.progress.add_wire(reader.wire_bytes());
    if !reader.is_ended() {
        return Err(TransferError::network(
            "the sender stopped in the middle of the transfer; what arrived is kept for resuming",
        ));
    }
    Ok(totals)
}

/// Fuzzing hook (`fuzz/fuzz_targets/lane_worker.rs`), not an API: runs a receiving lane's
/// worker, as [`receive_lanes`] does, on `batches` of frame bodies (each batch as the stream
/// task hands it over) and commits what verified, without a network. Call outside any async
/// runtime (the worker blocks).
#[doc(hidden)]
pub fn apply_frames(
    chunk: usize,
    batches: Vec<Vec<Vec<u8>>>,
    sink: &Sink,
) -> Result<Summary, TransferError> {
    let (tx, rx) = mpsc::channel(batches.len().max(1));
    for batch in batches {
        // Cannot fail: the channel has room for every batch and its receiver is alive.
        let _ = tx.try_send(Ok(batch));
    }
    drop(tx);
    apply_lane(LaneReader::new(chunk), rx, sink, &Bodies::default())
}

/// The file a lane is receiving (one per lane, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Open {
    /// Going into the sink's pipe.
    Piping { entry: Entry },
    /// Entered; opened at the next record (which says whether it resumes).
    Pending { entry: Entry, rel: RelPath, resumable: Option<Resumable> },
    /// Being written.
    Writing { part: PartFile, entry: Entry },
    /// Arriving, but its name (or a parent's) is one the file system cannot hold: its bytes
    /// are checked and dropped.
    Refused,
}

/// The open file, opened fresh (from the start) if it was only entered so far; `None` once it
/// is refused ([`Sink::or_refuse`]).
fn writing<'a>(
    open: &'a mut Option<Open>,
    sink: &Sink,
) -> Result<Option<&'a mut PartFile>, TransferError> {
    if let Some(Open::Pending { .. }) = open {
        let Some(Open::Pending { entry, rel, resumable }) = open.take() else {
            return Err(TransferError::internal("no pending file"));
        };
        let (size, mtime) = file_of(&entry);
        let dest = sink.dir()?;
        let part = match resumable {
            // Offered for resuming, but the sender sends it whole (its prefix differs): the
            // partial copy of this entry starts over.
            Some(r) => {
                tracing::info!(path = %rel, "the sender sends it whole: its copy differs from the partial one here");
                sink.progress.sub(r.offset);
                dest.restart_file(&rel, r, size, mtime, sink.overwrite)
            }
            None => dest.create_file(&rel, size, mtime, sink.overwrite),
        };
        *open = Some(match sink.or_refuse(&rel, Some(size), part)? {
            Some(part) => Open::Writing { part, entry },
            None => Open::Refused,
        });
    }
    match open {
        Some(Open::Writing { part, .. }) => Ok(Some(part)),
        Some(Open::Refused) => Ok(None),
        _ => Err(TransferError::internal("data without an open file")),
    }
}

fn file_of(entry: &Entry) -> (u64, Option<crate::wire::data::Timestamp>) {
    match entry.kind {
        EntryKind::File { size } => (size, entry.mtime),
        _ => (0, entry.mtime),
    }
}

/// Frame bodies of chunk size that the lane's worker is done with, for its stream task to
/// fill again. A fresh allocation per chunk is memory the allocator maps, the kernel zeroes
/// and faults in page by page, and the allocator unmaps again as its heap shrinks: tens of
/// thousands of page faults per GiB.
#[derive(Debug, Default)]
pub(crate) struct Bodies(Mutex<Vec<Vec<u8>>>);

/// Bodies from this size up are reused ...
const POOLED: usize = 64 << 10;
/// ... and this many are kept per lane (the stream task fills one while the worker holds
/// the others of its channel).
const KEPT: usize = 2;

impl Bodies {
    /// An empty buffer with room for `len` bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        if len >= POOLED {
            let kept = self.0.lock().map_or(None, |mut kept| kept.pop());
            if let Some(mut body) = kept.filter(|b| b.capacity() >= len) {
                body.clear();
                return body;
            }
        }
        Vec::with_capacity(len)
    }

    /// Takes `body` back, if it is large and fewer than [`KEPT`] are kept.
    fn give(&self, body: Vec<u8>) {
        if body.capacity() >= POOLED {
            if let Ok(mut kept) = self.0.lock() {
                if kept.len() < KEPT {
                    kept.push(body);
                }
            }
        }
    }
}

/// Cuts a lane's byte stream, piece by piece, into frame bodies (`len: u32 BE ‖ body`) of at
/// most `max` bytes, copying each byte once.
///
/// `pub` (and re-exported hidden) only for the fuzz target `fuzz/fuzz_targets/deframer.rs`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Deframer {
    max: usize,
    header: [u8; frame::HEADER_LEN],
    /// Header bytes seen of the frame in progress.
    have: usize,
    /// The body length of the frame in progress, once its header is complete.
    want: Option<usize>,
    /// The body of the frame in progress.
    body: Vec<u8>,
    /// Where large bodies come from.
    bodies: Arc<Bodies>,
}

impl Deframer {
    /// A deframer for frames of at most `max` bytes.
    pub fn new(max: usize) -> Deframer {
        Deframer {
            max,
            header: [0; frame::HEADER_LEN],
            have: 0,
            want: None,
            body: Vec::new(),
            bodies: Arc::default(),
        }
    }

    /// Takes large bodies from `bodies`, which the lane's worker refills.
    fn with_bodies(mut self, bodies: Arc<Bodies>) -> Deframer {
        self.bodies = bodies;
        self
    }

    /// The frames that `pieces` complete, in order; a frame still in progress keeps its bytes
    /// for the next call.
    pub fn frames(&mut self, pieces: &[Bytes]) -> Result<Vec<Vec<u8>>, TransferError> {
        let mut frames = Vec::new();
        for piece in pieces {
            let mut data: &[u8] = piece;
            while let Some(body) = self.next(&mut data)? {
                frames.push(body);
            }
        }
        Ok(frames)
    }

    /// Moves bytes from the front of `data` into the frame in progress; its body once whole
    /// (call again with the rest of `data`).
    fn next(&mut self, data: &mut &[u8]) -> Result<Option<Vec<u8>>, TransferError> {
        loop {
            let Some(len) = self.want else {
                if data.is_empty() {
                    return Ok(None);
                }
                let n = (frame::HEADER_LEN - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                *data = &data[n..];
                if self.have < frame::HEADER_LEN {
                    return Ok(None);
                }
                let len = frame::body_len(self.header, self.max).map_err(|e| {
                    TransferError::new(ErrorKind::Protocol, format!("the other side sent {e}"))
                })?;
                self.body = self.bodies.take(len);
                self.want = Some(len);
                continue;
            };
            let n = (len - self.body.len()).min(data.len());
            self.body.extend_from_slice(&data[..n]);
            *data = &data[n..];
            if self.body.len() < len {
                return Ok(None);
            }
            self.want = None;
            self.have = 0;
            return Ok(Some(std::mem::take(&mut self.body)));
        }
    }

    /// True between a frame's first byte and its last.
    pub fn in_frame(&self) -> bool {
        self.have > 0 || self.want.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames come out whole however the stream is cut into pieces; an empty frame is a
    /// frame; a frame over the cap is refused; a stream cut inside a frame is noticed.
    #[test]
    fn the_deframer_rebuilds_frames_from_any_pieces() {
        let bodies: Vec<Vec<u8>> =
            vec![b"first".to_vec(), Vec::new(), (0..=255).collect(), b"last".to_vec()];
        let mut stream = Vec::new();
        for body in &bodies {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        for piece in [1, 2, 3, 5, 7, 64, 1000] {
            let mut deframer = Deframer::new(256);
            let pieces: Vec<Bytes> = stream.chunks(piece).map(Bytes::copy_from_slice).collect();
            // Handed over a few pieces at a time, as the stream task does.
            let mut got = Vec::new();
            for some in pieces.chunks(3) {
                got.extend(deframer.frames(some).unwrap());
            }
            assert_eq!(got, bodies, "pieces of {piece}");
            assert!(!deframer.in_frame());
        }
        let mut deframer = Deframer::new(256);
        let got = deframer.frames(&[Bytes::copy_from_slice(&stream[..stream.len() - 1])]).unwrap();
        assert_eq!(got, bodies[..3], "the frames before the cut");
        assert!(deframer.in_frame(), "cut inside the last frame");
        let err = Deframer::new(256).frames(&[Bytes::from_static(&[0, 0, 1, 1])]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol);
    }
}
