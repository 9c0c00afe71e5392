//! Data lanes over QUIC unidirectional streams.
//!
//! Sender: a walker thread feeds manifest entries into a bounded queue; each lane has a
//! blocking worker that takes the next entry, reads the file, hashes, compresses (per the
//! [`Compression`] mode) and seals it
//! ([`LaneWriter`]) and hands sealed records through a bounded channel to the lane's stream
//! task, small records gathered into one message ([`Outbox`]). Lanes pull work, so a lane
//! stuck on a large file does not hold up small ones.
//!
//! Receiver: each lane's stream task reads what the stream holds (up to [`READ_BUDGET`] bytes),
//! cuts it into frames ([`Deframer`]) and hands them to a bounded channel; a blocking worker
//! opens and checks them ([`LaneReader`]) and writes through [`Dest`]. A file is committed only
//! after its hash matched, in batches ([`Dest::commit_all`]); an error drops the open
//! [`PartFile`] and the batch's files not yet in place, which removes them.
//!
//! Memory is bounded per lane by the channel depths times the largest message (a chunk, or
//! [`GATHER`] / [`READ_BUDGET`] bytes of small records), plus QUIC's flow-control window.

use std::collections::HashSet;
use std::io::Read;
use std::sync::mpsc::TryRecvError;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::control::read_error;
use super::fs::{Dest, Finished, PartFile, RelPath, Syncer};
use super::walk::{self, read_failed, Job, Scan};
use super::{connection_lost, Progress, TransferError};
use crate::compress::{Compression, Packer};
use crate::crypto::Keys;
use crate::crypto::TAG_LEN;
use crate::error::ErrorKind;
use crate::proto::{LaneEvent, LaneReader, LaneWriter, CHUNK_PAYLOAD_AT};
use crate::wire::control::{Offer, Summary};
use crate::wire::data::{Entry, EntryKind, CHUNK_HEADER_LEN};
use crate::wire::frame;

/// Records buffered between a lane's worker and its stream, per lane.
const LANE_DEPTH: usize = 2;
/// Entries buffered between the walker and the lane workers.
const JOB_DEPTH: usize = 256;
/// A receiving lane makes its finished files durable and puts them in place in batches of at
/// most this many files ([`Dest::commit_all`]: one `syncfs` for the batch) ...
const COMMIT_FILES: usize = 64;
/// ... or of this many bytes.
const COMMIT_BYTES: u64 = 64 << 20;

/// Bytes of stream data a receiving lane's stream task reads for one message to its worker, at
/// most (plus the rest of a frame it completes).
const READ_BUDGET: usize = 256 << 10;
/// Messages of frames buffered between a receiving lane's stream task and its worker.
const READ_DEPTH: usize = 2;

/// Sends every entry of the scanned paths over `lanes` new streams; returns the totals sent.
pub async fn send_lanes(
    conn: &quinn::Connection,
    keys: &Keys,
    lanes: u16,
    chunk: usize,
    compression: Compression,
    scan: Scan,
    progress: Arc<Progress>,
) -> Result<Summary, TransferError> {
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(JOB_DEPTH);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut tasks: JoinSet<Result<Option<Summary>, TransferError>> = JoinSet::new();

    tasks.spawn_blocking(move || walk::walk(&scan, |job| job_tx.send(job).is_ok()).map(Some));
    for lane in 1..=u32::from(lanes) {
        let mut stream = conn.open_uni().await.map_err(TransferError::from)?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(LANE_DEPTH);
        let writer = LaneWriter::new(keys, lane);
        let preamble = writer.preamble();
        let packer = Packer::new(compression)
            .map_err(|e| TransferError::internal(format!("cannot start zstd: {e}")))?;
        let jobs = job_rx.clone();
        let progress = progress.clone();
        let worker = Worker { writer, packer, chunk };
        tasks.spawn_blocking(move || worker.run(jobs, tx, &progress).map(|()| None));
        tasks.spawn(async move {
            stream.write_all(&preamble).await.map_err(write_error)?;
            while let Some(record) = rx.recv().await {
                stream.write_chunk(record).await.map_err(write_error)?;
            }
            stream.finish().map_err(|_| TransferError::network("data stream closed early"))?;
            Ok(None)
        });
    }
    drop(job_rx);

    let mut totals = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(Some(summary))) => totals = Some(summary),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(TransferError::internal(format!("a lane task failed: {e}"))),
        }
    }
    totals.ok_or_else(|| TransferError::internal("the walker did not report"))
}

/// A sending lane's blocking half: reads, hashes, compresses and seals.
struct Worker {
    writer: LaneWriter,
    packer: Packer,
    chunk: usize,
}

impl Worker {
    fn run(
        self,
        jobs: Arc<Mutex<std::sync::mpsc::Receiver<Job>>>,
        tx: mpsc::Sender<Bytes>,
        progress: &Progress,
    ) -> Result<(), TransferError> {
        let Worker { mut writer, mut packer, chunk } = self;
        let mut outbox = Outbox { tx, pending: Vec::new(), progress };
        loop {
            let job = match next_job(&jobs, false)? {
                Next::Job(job) => job,
                // Nothing waiting: what was gathered goes now, not after the next job.
                Next::Empty => {
                    outbox.flush()?;
                    match next_job(&jobs, true)? {
                        Next::Job(job) => job,
                        Next::Empty | Next::Done => break,
                    }
                }
                Next::Done => break,
            };
            let mut out = Vec::new();
            let EntryKind::File { size } = job.entry.kind else {
                writer.entry(&job.entry, &mut out).map_err(seal_error)?;
                outbox.push(out)?;
                continue;
            };
            let mut file =
                std::fs::File::open(&job.local).map_err(|e| read_failed(&job.local, &e))?;
            writer.entry(&job.entry, &mut out).map_err(seal_error)?;
            outbox.push(out)?;
            packer.start_file(size);
            let mut remaining = size;
            while remaining > 0 {
                let n = remaining.min(chunk as u64) as usize;
                // The file's bytes go straight into the record, which is sealed in place.
                let mut out = Vec::with_capacity(CHUNK_PAYLOAD_AT + n + TAG_LEN);
                out.resize(CHUNK_PAYLOAD_AT, 0);
                read_exactly(&mut file, n, &mut out, &job.local)?;
                let packed = packer.pack(&out[CHUNK_PAYLOAD_AT..]);
                progress.add_wire(packed.map_or(n, <[u8]>::len) as u64);
                writer.chunk_in_place(&mut out, packed).map_err(seal_error)?;
                outbox.push(out)?;
                progress.add(n as u64);
                remaining -= n as u64;
            }
            let mut out = Vec::new();
            writer.file_end(&mut out).map_err(seal_error)?;
            outbox.push(out)?;
        }
        let mut out = Vec::new();
        writer.lane_end(&mut out).map_err(seal_error)?;
        outbox.push(out)?;
        outbox.flush()
    }
}

/// What a lane worker's queue holds.
enum Next {
    Job(Job),
    Empty,
    Done,
}

/// The next job; without `wait`, [`Next::Empty`] if none is queued right now (or another
/// worker is waiting for one: the queue is empty then too).
fn next_job(
    jobs: &Mutex<std::sync::mpsc::Receiver<Job>>,
    wait: bool,
) -> Result<Next, TransferError> {
    // Invariant: the lock is only held around `recv`; a poisoned lock means another worker
    // panicked, and stopping this one is right.
    let rx = if wait {
        jobs.lock().map_err(|_| TransferError::internal("a lane worker panicked"))?
    } else {
        match jobs.try_lock() {
            Ok(rx) => rx,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Next::Empty),
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return Err(TransferError::internal("a lane worker panicked"))
            }
        }
    };
    Ok(match if wait { rx.recv().map_err(|_| TryRecvError::Disconnected) } else { rx.try_recv() } {
        Ok(job) => Next::Job(job),
        Err(TryRecvError::Empty) => Next::Empty,
        Err(TryRecvError::Disconnected) => Next::Done,
    })
}

/// Records on their way from a lane worker to its stream. Small ones (entries, file ends,
/// small files' chunks) are gathered into one message of about [`GATHER`] bytes, so a tree of
/// small files does not cost a hand-off between threads per record.
struct Outbox<'a> {
    tx: mpsc::Sender<Bytes>,
    pending: Vec<u8>,
    progress: &'a Progress,
}

/// Size of a gathered message of small records.
const GATHER: usize = 64 << 10;

impl Outbox<'_> {
    fn push(&mut self, mut record: Vec<u8>) -> Result<(), TransferError> {
        if record.len() >= GATHER {
            self.flush()?;
            if record.capacity() > 2 * record.len() {
                // QUIC holds each record until it is acknowledged: a compressed one must not
                // keep its whole chunk's allocation alive with it.
                record.shrink_to_fit();
            }
            return self.send(record);
        }
        self.pending.extend_from_slice(&record);
        if self.pending.len() >= GATHER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TransferError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let gathered = std::mem::take(&mut self.pending);
        self.send(gathered)
    }

    fn send(&self, bytes: Vec<u8>) -> Result<(), TransferError> {
        self.progress.touch();
        self.tx
            .blocking_send(Bytes::from(bytes))
            .map_err(|_| TransferError::network("the connection to the receiver was lost"))
    }
}

/// Appends exactly `n` bytes of `file` to `out` (into its spare capacity: nothing is zeroed
/// first); fewer means the file shrank since it was scanned.
fn read_exactly(
    file: &mut std::fs::File,
    n: usize,
    out: &mut Vec<u8>,
    local: &std::path::Path,
) -> Result<(), TransferError> {
    let want = out.len() + n;
    file.take(n as u64).read_to_end(out).map_err(|e| read_failed(local, &e))?;
    if out.len() < want {
        return Err(TransferError::new(
            ErrorKind::Io,
            format!("{} shrank while it was being sent; send it again", local.display()),
        ));
    }
    Ok(())
}

fn seal_error(e: crate::crypto::CryptoError) -> TransferError {
    TransferError::internal(e.to_string())
}

fn write_error(e: quinn::WriteError) -> TransferError {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_lost(&c),
        quinn::WriteError::Stopped(_) => TransferError::network("the receiver stopped reading"),
        other => TransferError::network(format!("data stream failed: {other}")),
    }
}

/// Permission bits a received file or directory never gets: group and other write. The
/// sender's modes are kept otherwise (setuid and setgid are dropped by [`Dest`]).
pub const MODE_MASK: u32 = !0o022;

/// Smallest frame cap on a receiving lane: room for an entry with the longest path and link
/// target.
const MIN_FRAME_CAP: usize = 16 << 10;

/// Where the receiver's lanes write, and the rules they follow.
#[derive(Debug)]
pub struct Sink {
    /// The destination directory.
    pub dest: Dest,
    /// Replace existing files.
    pub overwrite: bool,
    /// The offered top-level names: every entry must lie below one of them.
    pub names: HashSet<String>,
    /// Bytes written so far.
    pub progress: Arc<Progress>,
    /// Top-level names that existed before this transfer (only with `--overwrite`): below
    /// them a directory may be the user's own, whose mode and mtime must not change.
    preexisting: HashSet<String>,
    /// What the person accepted: the sender may not send more.
    limits: Offer,
    /// What arrived so far, checked against `limits` as each entry arrives.
    admitted: Mutex<Offer>,
    /// Directories created by this transfer, to get their mode and mtime once their contents
    /// are in (at most `limits.dirs` of them).
    dirs: Mutex<Vec<(RelPath, u32, Option<std::time::SystemTime>)>>,
    /// Set when the lanes are given up (an error, Ctrl-C): the lane workers stop at the next
    /// record instead of applying what is still queued (a queued message may hold many
    /// compressed records, each up to a chunk of writing).
    abandoned: std::sync::atomic::AtomicBool,
}

impl Sink {
    /// A sink writing into `dest` what `offer` announced; `preexisting` are the offered
    /// top-level names that already exist in `dest`.
    pub fn new(
        dest: Dest,
        overwrite: bool,
        offer: &Offer,
        preexisting: &[String],
        progress: Arc<Progress>,
    ) -> Sink {
        let admitted = Offer { files: 0, dirs: 0, symlinks: 0, bytes: 0, ..offer.clone() };
        Sink {
            dest,
            overwrite,
            preexisting: preexisting.iter().cloned().collect(),
            names: offer.names.iter().cloned().collect(),
            progress,
            limits: offer.clone(),
            admitted: Mutex::new(admitted),
            dirs: Mutex::new(Vec::new()),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn check(&self, entry: &Entry) -> Result<RelPath, TransferError> {
        let rel = RelPath::parse(&entry.path).map_err(|e| {
            TransferError::new(ErrorKind::Protocol, format!("the sender sent an unsafe path: {e}"))
        })?;
        if !self.names.contains(rel.first()) {
            return Err(TransferError::new(
                ErrorKind::Protocol,
                format!("the sender sent {rel}, which is outside what it offered"),
            ));
        }
        let mut got = self.admitted.lock().map_err(|_| poisoned())?;
        let over = match entry.kind {
            EntryKind::Dir => {
                got.dirs += 1;
                got.dirs > self.limits.dirs
            }
            EntryKind::Symlink { .. } => {
                got.symlinks += 1;
                got.symlinks > self.limits.symlinks
            }
            EntryKind::File { size } => {
                got.files += 1;
                got.bytes = got.bytes.saturating_add(size);
                got.files > self.limits.files || got.bytes > self.limits.bytes
            }
        };
        if over {
            return Err(TransferError::new(
                ErrorKind::Protocol,
                format!("the sender sent more than it offered (at {rel}); stopped"),
            ));
        }
        Ok(rel)
    }

    /// Gives received directories their modes and mtimes, deepest first (so setting a
    /// parent's mtime comes after its children changed it), and makes the received names
    /// durable. Call after every lane finished.
    pub fn finish_dirs(&self) -> Result<(), TransferError> {
        // First, while the directories are still ours to open (the sender's modes may not
        // let us read them afterwards).
        self.dest.sync_dirs()?;
        let mut dirs = std::mem::take(&mut *self.dirs.lock().map_err(|_| poisoned())?);
        dirs.sort_by_key(|(rel, _, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, mode, mtime) in dirs {
            self.dest.finish_dir(&rel, mode, mtime)?;
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
    keys: &Keys,
    lanes: u16,
    chunk: usize,
    sink: Arc<Sink>,
) -> Result<Summary, TransferError> {
    let max_frame = (CHUNK_HEADER_LEN + chunk + crate::crypto::TAG_LEN).max(MIN_FRAME_CAP);
    // However this ends (done, failed, or this future dropped), workers still running stop.
    let _abandon = Abandon(sink.clone());
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks: JoinSet<Result<Summary, TransferError>> = JoinSet::new();
    let mut accepted = 0;
    let mut totals = Summary::default();
    loop {
        tokio::select! {
            stream = conn.accept_uni(), if accepted < lanes => {
                let stream = stream.map_err(TransferError::from)?;
                accepted += 1;
                let lane = LaneSetup { keys: keys.clone(), lanes, chunk, max_frame, seen: seen.clone() };
                tasks.spawn(receive_lane(stream, lane, sink.clone()));
            }
            Some(joined) = tasks.join_next() => match joined {
                Ok(Ok(t)) => {
                    totals.entries += t.entries;
                    totals.files += t.files;
                    totals.bytes += t.bytes;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(TransferError::internal(format!("a lane task failed: {e}"))),
            },
            else => break,
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
    keys: Keys,
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
    let reader = LaneReader::new(&setup.keys, lane, setup.chunk);
    let (tx, rx) = mpsc::channel::<Result<Vec<Vec<u8>>, TransferError>>(READ_DEPTH);
    let worker = tokio::task::spawn_blocking(move || apply_lane(reader, rx, &sink));
    let mut deframer = Deframer::new(setup.max_frame);
    let mut ended = false;
    while !ended {
        // Whatever the stream holds, up to READ_BUDGET bytes, is cut into frames that go to
        // the worker in one message: a tree of small files does not cost a hand-off between
        // threads per record. The pieces are copied out at once, which frees QUIC's buffers.
        let item = match read_ready(&mut stream, READ_BUDGET).await {
            Ok((pieces, end)) => {
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
) -> Result<Summary, TransferError> {
    let syncer = sink.dest.syncer();
    let mut finished = Vec::new();
    let applied = apply_records(reader, rx, sink, &syncer, &mut finished);
    // Files that arrived whole and verified go in place even when a later one failed, unless
    // the whole transfer is being given up (Ctrl-C): then they are removed with the rest.
    let committed = if sink.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
        Ok(())
    } else {
        sink.dest.commit_all(&syncer, finished)
    };
    let totals = applied?;
    committed?;
    Ok(totals)
}

fn apply_records(
    mut reader: LaneReader,
    mut rx: mpsc::Receiver<Result<Vec<Vec<u8>>, TransferError>>,
    sink: &Sink,
    syncer: &Syncer,
    finished: &mut Vec<Finished>,
) -> Result<Summary, TransferError> {
    let mut open: Option<(PartFile, Entry)> = None;
    let mut finished_bytes = 0;
    let mut totals = Summary::default();
    while let Some(item) = rx.blocking_recv() {
        sink.progress.touch();
        for mut body in item? {
            if sink.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(TransferError::internal("the transfer was given up"));
            }
            match reader.handle(&mut body)? {
                LaneEvent::Entry(entry) => {
                    let rel = sink.check(&entry)?;
                    totals.entries += 1;
                    let mtime = entry.mtime.and_then(walk::system_time);
                    match &entry.kind {
                        EntryKind::Dir => {
                            // Below a top-level name that did not exist before, every directory is
                            // this transfer's (possibly already created as another lane's parent)
                            // and gets the sender's metadata. Below one that existed, a directory
                            // found in place may be the user's own and keeps its mode and mtime.
                            let theirs = sink.preexisting.contains(rel.first())
                                && std::fs::symlink_metadata(sink.dest.root().join(rel.as_str()))
                                    .is_ok_and(|m| m.is_dir());
                            sink.dest.create_dir(&rel)?;
                            if !theirs {
                                sink.dirs.lock().map_err(|_| poisoned())?.push((
                                    rel,
                                    entry.mode & MODE_MASK,
                                    mtime,
                                ));
                            }
                        }
                        EntryKind::Symlink { target } => {
                            sink.dest.symlink(&rel, target, sink.overwrite)?;
                        }
                        EntryKind::File { .. } => {
                            open = Some((sink.dest.create_file(&rel, sink.overwrite)?, entry));
                        }
                    }
                }
                LaneEvent::Data(data) => {
                    let Some((part, _)) = open.as_mut() else {
                        return Err(TransferError::internal("data without an open file"));
                    };
                    part.write_all(data)?;
                    sink.progress.add(data.len() as u64);
                }
                LaneEvent::FileEnd { .. } => {
                    let Some((part, entry)) = open.take() else {
                        return Err(TransferError::internal("file end without an open file"));
                    };
                    let size = part.written();
                    finished.push(
                        part.finish(
                            entry.mode & MODE_MASK,
                            entry.mtime.and_then(walk::system_time),
                        )?,
                    );
                    finished_bytes += size;
                    if finished.len() >= COMMIT_FILES || finished_bytes >= COMMIT_BYTES {
                        sink.dest.commit_all(syncer, std::mem::take(finished))?;
                        finished_bytes = 0;
                    }
                    totals.files += 1;
                    totals.bytes += size;
                }
                LaneEvent::End => {}
                LaneEvent::ResumeAt { .. } => {
                    return Err(TransferError::new(
                        ErrorKind::Protocol,
                        "the sender resumed a file that was not offered for resuming",
                    ))
                }
            }
        }
    }
    // Only the final report reads it.
    sink.progress.add_wire(reader.wire_bytes());
    if !reader.is_ended() {
        return Err(TransferError::network(
            "the sender stopped in the middle of the transfer; nothing incomplete was kept",
        ));
    }
    Ok(totals)
}

/// Cuts a lane's byte stream, piece by piece, into frame bodies (`len: u32 BE ‖ body`) of at
/// most `max` bytes, copying each byte once.
#[derive(Debug)]
struct Deframer {
    max: usize,
    header: [u8; frame::HEADER_LEN],
    /// Header bytes seen of the frame in progress.
    have: usize,
    /// The body length of the frame in progress, once its header is complete.
    want: Option<usize>,
    /// The body of the frame in progress.
    body: Vec<u8>,
}

impl Deframer {
    fn new(max: usize) -> Deframer {
        Deframer { max, header: [0; frame::HEADER_LEN], have: 0, want: None, body: Vec::new() }
    }

    /// The frames that `pieces` complete, in order; a frame still in progress keeps its bytes
    /// for the next call.
    fn frames(&mut self, pieces: &[Bytes]) -> Result<Vec<Vec<u8>>, TransferError> {
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
                self.body = Vec::with_capacity(len);
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
    fn in_frame(&self) -> bool {
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

    /// Reading appends exactly the bytes asked for after what the buffer held, and a file
    /// with fewer bytes left is an error that names it.
    #[test]
    fn read_exactly_appends_or_reports_a_shrunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let mut out = vec![7u8; 3];
        read_exactly(&mut file, 4, &mut out, &path).unwrap();
        assert_eq!(out, b"\x07\x07\x070123");
        let err = read_exactly(&mut file, 7, &mut out, &path).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}
