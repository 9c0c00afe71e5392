//! Data lanes over QUIC unidirectional streams.
//!
//! Sender: a walker thread feeds manifest entries into a bounded queue; each lane has a
//! blocking worker that takes the next entry, reads the file, hashes and compresses it (per
//! the [`Compression`] mode) into records ([`LaneWriter`]) and hands them through a bounded
//! channel to the lane's stream task, small records gathered into one message (`Outbox`). Lanes pull work, so a lane
//! stuck on a large file does not hold up small ones.
//!
//! Receiver: each lane's stream task reads what the stream holds (up to `READ_BUDGET` bytes),
//! cuts it into frames ([`Deframer`]) and hands them to a bounded channel; a blocking worker
//! decodes and checks them ([`LaneReader`](crate::proto::LaneReader)) and writes through [`Dest`](super::fs::Dest). A file is committed only
//! after its hash matched, in batches ([`Dest::commit_all`](super::fs::Dest::commit_all)); an error drops the open
//! [`PartFile`](super::fs::PartFile) and the batch's files not yet in place, which removes them.
//!
//! Memory is bounded per lane by the channel depths times the largest message (a chunk, or
//! `GATHER` / `READ_BUDGET` bytes of small records), plus QUIC's flow-control window.

mod receive;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::TryRecvError;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::cache::{CvCache, CvReader};
use super::fs::shown;
use super::prefix::prefix;
use super::survey::{Plan, Verdict};
use super::walk::{self, read_failed, Job, Scan};
use super::{connection_lost, FileOutcome, Note, Progress, TransferError};
use crate::compress::{Compression, Packer, Sample};
use crate::error::ErrorKind;
use crate::proto::{LaneWriter, CHUNK_PAYLOAD_AT};
use crate::wire::control::Summary;
use crate::wire::data::{EntryKind, Xattr, MAX_XATTRS, MAX_XATTRS_RECORD, XATTR_NAMESPACE};

/// For the fuzz targets only (`fuzz/`): the receiving lane's deframer and worker.
#[doc(hidden)]
pub use receive::{apply_frames, Deframer};
pub use receive::{receive_lanes, Pipe, Sink, MODE_MASK, SHOWN_REFUSALS};

/// Records buffered between a lane's worker and its stream, per lane.
const LANE_DEPTH: usize = 2;
/// Batches of entries buffered between the walker and the lane workers ...
const JOB_DEPTH: usize = 8;
/// ... of at most this many entries ...
const JOB_BATCH: usize = 32;
/// ... or about this many bytes of files (a larger file goes with what came before it).
const JOB_BATCH_BYTES: u64 = 1 << 20;
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

/// How the sending lanes run.
#[derive(Debug, Clone)]
pub struct Sending {
    /// Data lanes.
    pub lanes: u16,
    /// Chunk payload size.
    pub chunk: usize,
    /// What to compress.
    pub compression: Compression,
    /// Send holes of sparse files as holes (`--sparse auto`) rather than as zeros.
    pub sparse: bool,
    /// Send the `user.` extended attributes of files and directories (`--xattrs`).
    pub xattrs: bool,
    /// The receiver's answers to the listing, if it asked for one: what to leave out and
    /// where to resume, for a walk of the paths.
    pub plan: Option<Arc<Plan>>,
    /// Or, instead of a walk, the wanted entries kept from the listing (with where to resume).
    pub kept: Option<Vec<Job>>,
    /// Where group CVs of large files are kept for later resumes.
    pub cache: Option<CvCache>,
    /// `--limit-rate`, shared by the lanes.
    pub rate: Option<Arc<super::rate::RateLimit>>,
    /// Told of each file as it is done.
    pub observer: Arc<dyn super::Observer>,
    /// Bytes the connection's endpoint has sent so far ([`crate::net::quic::Node::sent`]),
    /// for `auto`'s judgement.
    pub sent: Arc<AtomicU64>,
}

/// Sends every entry of the scanned paths (those the plan wants) over new streams; returns
/// the totals sent.
pub async fn send_lanes(
    conn: &quinn::Connection,
    how: Sending,
    scan: Scan,
    progress: Arc<Progress>,
) -> Result<Summary, TransferError> {
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Vec<Job>>(JOB_DEPTH);
    let queued = Arc::new(AtomicUsize::new(0));
    let mut job_tx = Batcher { tx: job_tx, batch: Vec::new(), bytes: 0, queued: queued.clone() };
    let job_rx = Arc::new(Jobs { rx: Mutex::new(job_rx), queued });
    let resumed = Arc::new(AtomicU64::new(0));
    // A stream's bytes are known once it ended.
    let streamed = Arc::new(AtomicU64::new(0));
    let mut tasks: JoinSet<Result<Option<Summary>, TransferError>> = JoinSet::new();

    let input = scan.stream.clone();
    let plan = how.plan.clone();
    let kept = how.kept;
    let observer = how.observer.clone();
    tasks.spawn_blocking(move || {
        let mut sent = Summary::default();
        let mut count = |job: &Job| {
            sent.entries += 1;
            match job.entry.kind {
                EntryKind::File { size } => {
                    sent.files += 1;
                    sent.bytes += size;
                }
                EntryKind::Stream => sent.files += 1,
                _ => {}
            }
        };
        if let Some(kept) = kept {
            for job in kept {
                count(&job);
                if !job_tx.push(job) {
                    break;
                }
            }
            job_tx.flush();
            return Ok(Some(sent));
        }
        let mut failed = None;
        walk::walk(&scan, |mut job| {
            // Entries left out or slow to come must not keep a batch from idle workers.
            if !job_tx.flush_if_idle() {
                return false;
            }
            if let Some(plan) = &plan {
                match plan.verdict(&job.entry) {
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                    Ok(Verdict::Skip) => {
                        if let EntryKind::File { size } = job.entry.kind {
                            let (path, outcome) = (&job.entry.path, FileOutcome::Skipped);
                            observer.note(Note::File { path, bytes: size, outcome });
                        }
                        return true;
                    }
                    Ok(Verdict::Resume { offset, digest }) => job.resume = Some((offset, digest)),
                    Ok(Verdict::Send) => {}
                }
            }
            count(&job);
            job_tx.push(job)
        })?;
        job_tx.flush();
        match failed {
            Some(e) => Err(e),
            None => Ok(Some(sent)),
        }
    });
    for lane in 1..=u32::from(how.lanes) {
        let mut stream = conn.open_uni().await.map_err(|e| super::connection_lost(&e))?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(LANE_DEPTH);
        let writer = LaneWriter::new(lane);
        let preamble = writer.preamble();
        let packer = Packer::new(how.compression)
            .map_err(|e| TransferError::internal(format!("cannot start zstd: {e}")))?;
        let jobs = job_rx.clone();
        let progress = progress.clone();
        let blocked_conn = conn.clone();
        let worker = Worker {
            writer,
            packer,
            chunk: how.chunk,
            cache: how.cache.clone(),
            resumed: resumed.clone(),
            sent: how.sent.clone(),
            blocked: Box::new(move || {
                let frames = blocked_conn.stats().frame_tx;
                frames.data_blocked + frames.stream_data_blocked
            }),
            observer: how.observer.clone(),
            stream: input.clone(),
            streamed: streamed.clone(),
            sparse: how.sparse,
            xattrs: how.xattrs.then(XattrReader::default),
        };
        tasks.spawn_blocking(move || worker.run(jobs, tx, &progress).map(|()| None));
        let rate = how.rate.clone();
        tasks.spawn(async move {
            stream.write_all(&preamble).await.map_err(write_error)?;
            while let Some(record) = rx.recv().await {
                if let Some(rate) = &rate {
                    rate.take(record.len()).await;
                }
                stream.write_chunk(record).await.map_err(write_error)?;
            }
            stream.finish().map_err(|_| TransferError::network("data stream closed early"))?;
            Ok(None)
        });
    }
    drop(job_rx);

    let mut totals = None;
    // A worker whose stream is gone knows only that; the stream's task knows why (the
    // receiver closed, stopped, or vanished), and its error ends at about the same time.
    let mut unexplained: Option<TransferError> = None;
    loop {
        let joined = match &unexplained {
            None => tasks.join_next().await,
            Some(_) => tokio::time::timeout(EXPLAIN_WAIT, tasks.join_next()).await.ok().flatten(),
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok(Ok(Some(summary))) => totals = Some(summary),
            Ok(Ok(None)) => {}
            Ok(Err(e)) if e.message == STREAM_GONE => {
                unexplained.get_or_insert(e);
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(TransferError::internal(format!("a lane task failed: {e}"))),
        }
    }
    if let Some(e) = unexplained {
        return Err(e);
    }
    let mut totals = totals.ok_or_else(|| TransferError::internal("the walker did not report"))?;
    totals.resumed = resumed.load(Ordering::Relaxed);
    totals.bytes += streamed.load(Ordering::Relaxed);
    Ok(totals)
}

/// A sending lane's blocking half: reads, hashes, compresses and frames.
struct Worker {
    writer: LaneWriter,
    packer: Packer,
    chunk: usize,
    cache: Option<CvCache>,
    /// Bytes of resumed files the receiver already held, over all lanes.
    resumed: Arc<AtomicU64>,
    /// Bytes the connection has put on the wire so far (for `auto`'s judgement; read for
    /// every chunk `auto` times, so it is an atomic counter, not the connection's statistics:
    /// those lock the connection, and the lane's thread contending with the connection's
    /// driver for that lock cost 37,000 futex calls per GiB).
    sent: Arc<AtomicU64>,
    /// The DATA_BLOCKED and STREAM_DATA_BLOCKED frames the connection sent so far (from its
    /// statistics: read only while `auto` needs them).
    blocked: Box<dyn Fn() -> u64 + Send>,
    /// Told of each file sent.
    observer: Arc<dyn super::Observer>,
    /// What a stream entry reads.
    stream: Option<walk::StreamSource>,
    /// Bytes of streams sent, over all lanes.
    streamed: Arc<AtomicU64>,
    /// Look for holes in sparse files.
    sparse: bool,
    /// `--xattrs`: reads them.
    xattrs: Option<XattrReader>,
}

impl Worker {
    fn run(
        mut self,
        jobs: Arc<Jobs>,
        tx: mpsc::Sender<Bytes>,
        progress: &Progress,
    ) -> Result<(), TransferError> {
        let mut outbox = Outbox { tx, pending: Vec::with_capacity(GATHER_ROOM), progress };
        let mut mine = std::collections::VecDeque::new();
        loop {
            let Some(job) = mine.pop_front() else {
                let next = match jobs.next(false)? {
                    // Nothing waiting: what was gathered goes now, not after the next job.
                    Next::Empty => {
                        outbox.flush()?;
                        jobs.next(true)?
                    }
                    next => next,
                };
                match next {
                    Next::Jobs(batch) => mine.extend(batch),
                    Next::Empty | Next::Done => break,
                }
                continue;
            };
            match job.entry.kind {
                EntryKind::File { size } => self.file(&job, size, &mut outbox, progress)?,
                EntryKind::Stream => self.stream(&job, &mut outbox, progress)?,
                _ => {
                    outbox.append(|buf| self.writer.entry(&job.entry, buf))?;
                    if let (EntryKind::Dir, Some(reader)) = (&job.entry.kind, &self.xattrs) {
                        let attrs = reader.of_dir(&job, &*self.observer);
                        self.send_xattrs(job.entry.id, attrs, &mut outbox)?;
                    }
                }
            }
        }
        outbox.append(|buf| self.writer.lane_end(buf))?;
        outbox.flush()
    }

    /// Sends the XATTRS record of the entry just sent, if it has any attributes.
    fn send_xattrs(
        &mut self,
        entry_id: u64,
        attrs: Vec<Xattr>,
        outbox: &mut Outbox<'_>,
    ) -> Result<(), TransferError> {
        if attrs.is_empty() {
            return Ok(());
        }
        outbox.append(|buf| self.writer.xattrs(entry_id, attrs, buf))
    }

    /// Sends one file: its entry, where it resumes (if the receiver's copy proves to be a
    /// prefix of ours), its chunks and its end.
    fn file(
        &mut self,
        job: &Job,
        size: u64,
        outbox: &mut Outbox<'_>,
        progress: &Progress,
    ) -> Result<(), TransferError> {
        let local = &job.local;
        let (mut file, meta) = walk::open_source(local, size, job.entry.mtime, job.identity)?;
        outbox.append(|buf| self.writer.entry(&job.entry, buf))?;
        if let Some(reader) = &self.xattrs {
            let attrs = reader.of_file(&file, local, &*self.observer);
            self.send_xattrs(job.entry.id, attrs, outbox)?;
        }
        // Group CVs of a large file go to the cache as they are computed.
        let cached = self.cache.as_ref().map_or(CvReader::empty(), |c| c.cvs(&meta));
        let mut cvs_out = self.cache.as_ref().and_then(|c| c.writer(&meta, cached.len()));
        let mut start = 0;
        if let Some((offset, digest)) = job.resume {
            let mut cached = cached;
            let mut fresh = |g: u64, cv: &crate::proto::tree::ChainingValue| {
                if let Some(w) = cvs_out.as_mut() {
                    w.push(g, std::slice::from_ref(cv));
                }
            };
            let mine = prefix(&file, offset, size, &mut cached, &mut fresh, &|| progress.touch())
                .map_err(|e| read_failed(local, &e))?;
            if mine.digest == digest {
                outbox.append(|buf| self.writer.resume(mine.state, buf))?;
                file.seek(SeekFrom::Start(offset)).map_err(|e| read_failed(local, &e))?;
                self.resumed.fetch_add(offset, Ordering::Relaxed);
                start = offset;
                tracing::info!(path = %shown(&job.entry.path), kept = offset, "resuming: the receiver holds a prefix");
            } else {
                progress.sub(offset);
                tracing::info!(path = %shown(&job.entry.path), "sending whole: the receiver's partial copy differs from this file");
            }
        }
        self.packer.start_file(size);
        // A file that stores fewer blocks than its size has holes: they go as HOLE records,
        // not as zeros, and stay holes on the receiver.
        let sparse =
            self.sparse && std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512) < size;
        let mut pos = start;
        while pos < size {
            let (data, end) = if sparse { extent(&file, pos, size) } else { (pos, size) };
            while pos < data {
                let n = (data - pos).min(crate::wire::data::MAX_HOLE);
                outbox.append(|buf| self.writer.hole(n, buf))?;
                self.cvs_to(&mut cvs_out);
                progress.add(n);
                pos += n;
            }
            if sparse {
                file.seek(SeekFrom::Start(pos)).map_err(|e| read_failed(local, &e))?;
            }
            while pos < end {
                let n = (end - pos).min(self.chunk as u64) as usize;
                if n <= SMALL_CHUNK && !self.packer.times(n) {
                    self.small_chunk(&mut file, n, outbox, local, &mut cvs_out)?;
                    pos += n as u64;
                    continue;
                }
                let began = self.begin(n);
                // The file's bytes go straight into the record.
                let mut out = Vec::with_capacity(CHUNK_PAYLOAD_AT + n);
                out.resize(CHUNK_PAYLOAD_AT, 0);
                read_exactly(&mut file, n, &mut out, local)?;
                self.chunk(out, began, false, outbox, progress, &mut cvs_out)?;
                pos += n as u64;
            }
        }
        outbox.append(|buf| self.writer.file_end(buf))?;
        let outcome = if start > 0 { FileOutcome::Resumed } else { FileOutcome::Sent };
        self.observer.note(Note::File { path: &job.entry.path, bytes: size, outcome });
        Ok(())
    }
}

/// When a chunk began to be read, and how many bytes the connection had sent by then (if
/// `auto` times the chunk).
struct Began {
    at: std::time::Instant,
    wire: Option<u64>,
}

impl Worker {
    /// A chunk of `n` bytes begins.
    fn begin(&self, n: usize) -> Began {
        let wire = self.packer.times(n).then(|| self.sent.load(Ordering::Relaxed));
        Began { at: std::time::Instant::now(), wire }
    }

    /// Compresses (as `auto` decides), frames and hands on one chunk: `out` holds the
    /// record's room, then the chunk's bytes, which were being read since `began`. `auto`
    /// learns from how long that took and how much of it was waiting for room towards the
    /// link.
    fn chunk(
        &mut self,
        mut out: Vec<u8>,
        began: Began,
        flush: bool,
        outbox: &mut Outbox<'_>,
        progress: &Progress,
        cvs_out: &mut Option<super::cache::CvWriter>,
    ) -> Result<(), TransferError> {
        let n = out.len() - CHUNK_PAYLOAD_AT;
        self.make_chunk(&mut out, 0, progress, cvs_out);
        let handing = std::time::Instant::now();
        outbox.push(out)?;
        if flush {
            outbox.flush()?;
        }
        if let Some(wire_before) = began.wire {
            let waited = handing.elapsed();
            let wire = self.sent.load(Ordering::Relaxed);
            let blocked = if self.packer.counts_blocked() { (self.blocked)() } else { 0 };
            let took = began.at.elapsed();
            self.packer.timed(Sample { bytes: n as u64, took, waited, wire_before, wire, blocked });
        }
        progress.add(n as u64);
        Ok(())
    }

    /// Reads the next `n` bytes of the open file (a small chunk, not timed by `auto`) straight
    /// into the message being gathered, and makes them a CHUNK record there.
    fn small_chunk(
        &mut self,
        file: &mut std::fs::File,
        n: usize,
        outbox: &mut Outbox<'_>,
        local: &Path,
        cvs_out: &mut Option<super::cache::CvWriter>,
    ) -> Result<(), TransferError> {
        let Outbox { pending, progress, .. } = outbox;
        let at = pending.len();
        pending.resize(at + CHUNK_PAYLOAD_AT, 0);
        if let Err(e) = read_exactly(file, n, pending, local) {
            pending.truncate(at);
            return Err(e);
        }
        self.make_chunk(pending, at, progress, cvs_out);
        progress.add(n as u64);
        outbox.gathered()
    }

    /// Compresses (as the mode decides) and frames the chunk read into `buf` from `at` (after
    /// [`CHUNK_PAYLOAD_AT`] bytes of room), and hands on the group CVs it completed.
    fn make_chunk(
        &mut self,
        buf: &mut Vec<u8>,
        at: usize,
        progress: &Progress,
        cvs_out: &mut Option<super::cache::CvWriter>,
    ) {
        let n = buf.len() - at - CHUNK_PAYLOAD_AT;
        let packed = self.packer.pack(&buf[at + CHUNK_PAYLOAD_AT..]);
        progress.add_wire(packed.map_or(n, <[u8]>::len) as u64);
        self.writer.chunk_at(buf, at, packed);
        self.cvs_to(cvs_out);
    }

    /// Hands the group CVs the open file completed to the cache's writer, if any.
    fn cvs_to(&mut self, out: &mut Option<super::cache::CvWriter>) {
        let (first, cvs) = self.writer.take_cvs();
        if let Some(w) = out.as_mut() {
            w.push(first, &cvs);
        }
    }

    /// Sends a stream: its entry, then chunks of what each read gives (at most a chunk, so
    /// that a slow producer's bytes are not held back), until the end of its input.
    fn stream(
        &mut self,
        job: &Job,
        outbox: &mut Outbox<'_>,
        progress: &Progress,
    ) -> Result<(), TransferError> {
        let mut input = self
            .stream
            .as_ref()
            .and_then(walk::StreamSource::take)
            .ok_or_else(|| TransferError::internal("a stream entry without its input"))?;
        outbox.append(|buf| self.writer.entry(&job.entry, buf))?;
        self.packer.start_file(u64::MAX);
        let mut sent = 0u64;
        loop {
            let mut out = vec![0; CHUNK_PAYLOAD_AT + self.chunk];
            // Waiting for the producer is not a stall (`tail -f | p2p-copy send -`).
            let read = progress.awaiting_input(|| input.read(&mut out[CHUNK_PAYLOAD_AT..]));
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(TransferError::new(
                        ErrorKind::Io,
                        format!("reading standard input failed: {e}"),
                    ))
                }
            };
            if n == 0 {
                break;
            }
            out.truncate(CHUNK_PAYLOAD_AT + n);
            // The producer may be slow: what it gave goes now, not once more has gathered.
            let began = self.begin(n);
            self.chunk(out, began, true, outbox, progress, &mut None)?;
            sent += n as u64;
        }
        outbox.append(|buf| self.writer.file_end(buf))?;
        self.streamed.fetch_add(sent, Ordering::Relaxed);
        let outcome = FileOutcome::Sent;
        self.observer.note(Note::File { path: &job.entry.path, bytes: sent, outcome });
        Ok(())
    }
}

/// What a lane worker's queue holds.
enum Next {
    Jobs(Vec<Job>),
    Empty,
    Done,
}

/// The walk's side of the jobs: entries go to the workers in batches, so that a tree of
/// small files does not cost a hand-off between threads per file. A batch goes at once when
/// no other is queued (a worker may be waiting), or when it is full.
struct Batcher {
    tx: std::sync::mpsc::SyncSender<Vec<Job>>,
    batch: Vec<Job>,
    bytes: u64,
    queued: Arc<AtomicUsize>,
}

impl Batcher {
    /// Queues `job`; false once the workers are gone.
    fn push(&mut self, job: Job) -> bool {
        if let EntryKind::File { size } = job.entry.kind {
            self.bytes += size;
        }
        self.batch.push(job);
        if self.batch.len() >= JOB_BATCH || self.bytes >= JOB_BATCH_BYTES {
            return self.flush();
        }
        self.flush_if_idle()
    }

    /// Sends what is batched if no batch is queued (a worker may be waiting); false once the
    /// workers are gone.
    fn flush_if_idle(&mut self) -> bool {
        if self.queued.load(Ordering::Acquire) == 0 {
            return self.flush();
        }
        true
    }

    /// Sends what is batched; false once the workers are gone.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        self.bytes = 0;
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(std::mem::take(&mut self.batch)).is_ok()
    }
}

/// The workers' side of the jobs.
struct Jobs {
    rx: Mutex<std::sync::mpsc::Receiver<Vec<Job>>>,
    /// Batches sent and not yet taken.
    queued: Arc<AtomicUsize>,
}

impl Jobs {
    /// The next batch; without `wait`, [`Next::Empty`] if none is queued right now (or
    /// another worker is waiting for one: the queue is empty then too).
    fn next(&self, wait: bool) -> Result<Next, TransferError> {
        // Invariant: the lock is only held around `recv`; a poisoned lock means another
        // worker panicked, and stopping this one is right.
        let rx = if wait {
            self.rx.lock().map_err(|_| TransferError::internal("a lane worker panicked"))?
        } else {
            match self.rx.try_lock() {
                Ok(rx) => rx,
                Err(std::sync::TryLockError::WouldBlock) => return Ok(Next::Empty),
                Err(std::sync::TryLockError::Poisoned(_)) => {
                    return Err(TransferError::internal("a lane worker panicked"))
                }
            }
        };
        let got =
            if wait { rx.recv().map_err(|_| TryRecvError::Disconnected) } else { rx.try_recv() };
        Ok(match got {
            Ok(batch) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                Next::Jobs(batch)
            }
            Err(TryRecvError::Empty) => Next::Empty,
            Err(TryRecvError::Disconnected) => Next::Done,
        })
    }
}

/// Records on their way from a lane worker to its stream. Small ones (entries, file ends,
/// small files' chunks) are gathered into one message of about [`GATHER`] bytes, so a tree of
/// small files does not cost a hand-off between threads per record.
struct Outbox<'a> {
    tx: mpsc::Sender<Bytes>,
    pending: Vec<u8>,
    progress: &'a Progress,
}

/// What a lane worker reports when its stream's task is gone.
const STREAM_GONE: &str = "the connection to the receiver was lost";
/// How long the other lane tasks are given to say why, after a worker lost its stream.
const EXPLAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Size of a gathered message of small records ...
const GATHER: usize = 64 << 10;
/// ... in a buffer of this many bytes (the last record may go past `GATHER`).
const GATHER_ROOM: usize = GATHER + GATHER / 2;

/// A chunk this small is read straight into the message being gathered ([`Worker::small_chunk`]).
const SMALL_CHUNK: usize = GATHER / 4;

impl Outbox<'_> {
    /// Appends the records `write` makes to the message being gathered; sends it once full.
    fn append<T>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> T) -> Result<T, TransferError> {
        let made = write(&mut self.pending);
        self.gathered()?;
        Ok(made)
    }

    /// Sends the message being gathered if it is full.
    fn gathered(&mut self) -> Result<(), TransferError> {
        if self.pending.len() >= GATHER {
            self.flush()?;
        }
        Ok(())
    }

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
        let mut gathered = std::mem::replace(&mut self.pending, Vec::with_capacity(GATHER_ROOM));
        if gathered.capacity() > 2 * gathered.len() {
            // Sent when the lane ran out of work, before it filled: QUIC holds the message
            // until it is acknowledged, and must not hold the whole room with it.
            gathered.shrink_to_fit();
        }
        self.send(gathered)
    }

    fn send(&self, bytes: Vec<u8>) -> Result<(), TransferError> {
        self.progress.touch();
        self.tx.blocking_send(Bytes::from(bytes)).map_err(|_| TransferError::network(STREAM_GONE))
    }
}

/// The next extent of data at or after `pos` in a sparse file, as `(start, end)` within
/// `size`: `pos..start` is a hole. A file system that cannot tell (no `SEEK_DATA`) has data
/// everywhere.
fn extent(file: &std::fs::File, pos: u64, size: u64) -> (u64, u64) {
    use rustix::fs::{seek, SeekFrom as At};
    let data = match seek(file, At::Data(pos)) {
        Ok(d) => d.min(size),
        // No data after `pos`: the rest is a hole.
        Err(rustix::io::Errno::NXIO) => return (size, size),
        Err(_) => return (pos, size),
    };
    let end = match seek(file, At::Hole(data)) {
        Ok(h) => h.min(size),
        Err(_) => size,
    };
    (data, if end > data { end } else { size })
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

fn write_error(e: quinn::WriteError) -> TransferError {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_lost(&c),
        quinn::WriteError::Stopped(_) => TransferError::network("the receiver stopped reading"),
        other => TransferError::network(format!("data stream failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

/// Reads the `user.` extended attributes of what is sent (`--xattrs`), as many as one XATTRS
/// record holds; tells the person once when some are left out or cannot be read.
#[derive(Debug, Default)]
struct XattrReader {
    warned: std::sync::atomic::AtomicBool,
}

impl XattrReader {
    /// Those of an open file.
    fn of_file(
        &self,
        file: &std::fs::File,
        path: &Path,
        observer: &dyn super::Observer,
    ) -> Vec<Xattr> {
        use xattr::FileExt;
        let names = file.list_xattr();
        self.gather(path, names, |name| file.get_xattr(name), observer)
    }

    /// Those of a directory of the walk, read through a handle of the very directory the
    /// walk found (device and inode compared: one swapped in since gives none of its own).
    fn of_dir(&self, job: &Job, observer: &dyn super::Observer) -> Vec<Xattr> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        use xattr::FileExt;
        let path = &job.local;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32)
            .open(path);
        let dir = match opened.and_then(|d| d.metadata().map(|m| (d, m))) {
            Ok((dir, meta)) if (meta.dev(), meta.ino()) == job.identity => dir,
            Ok(_) => {
                self.left_out(path, "the directory changed while it was sent", observer);
                return Vec::new();
            }
            Err(e) => {
                self.left_out(path, &e.to_string(), observer);
                return Vec::new();
            }
        };
        self.gather(path, dir.list_xattr(), |name| dir.get_xattr(name), observer)
    }

    fn gather<L: Iterator<Item = std::ffi::OsString>>(
        &self,
        path: &Path,
        names: std::io::Result<L>,
        get: impl Fn(&std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>>,
        observer: &dyn super::Observer,
    ) -> Vec<Xattr> {
        let names = match names {
            Ok(names) => names,
            // The file system has none to give.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
                return Vec::new()
            }
            Err(e) => {
                self.left_out(path, &e.to_string(), observer);
                return Vec::new();
            }
        };
        let mut attrs = Vec::new();
        // The record's framing: type, id, the list's length.
        let mut size = 1 + 8 + 2;
        for name in names {
            use std::os::unix::ffi::OsStrExt;
            if !name.as_bytes().starts_with(XATTR_NAMESPACE.as_bytes()) {
                continue;
            }
            let Some(text) = name.to_str() else {
                let shown = String::from_utf8_lossy(name.as_bytes()).into_owned();
                self.left_out(path, &format!("{shown}: the name is not UTF-8"), observer);
                continue;
            };
            let value = match get(&name) {
                Ok(Some(value)) => value,
                // Removed since it was listed.
                Ok(None) => continue,
                Err(e) => {
                    self.left_out(path, &format!("{text}: {e}"), observer);
                    continue;
                }
            };
            // Postcard lengths take at most 3 bytes here.
            let cost = 3 + text.len() + 3 + value.len();
            if attrs.len() == MAX_XATTRS || size + cost > MAX_XATTRS_RECORD {
                self.left_out(path, &format!("{text}: more than one entry's share"), observer);
                continue;
            }
            size += cost;
            attrs.push(Xattr { name: text.to_owned(), value });
        }
        attrs
    }

    fn left_out(&self, path: &Path, why: &str, observer: &dyn super::Observer) {
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            observer.note(super::Note::Warning(format!(
                "extended attributes of {} (and of any later entry alike) are not all sent: {why} \
                 (one entry's attributes are sent up to {} KiB)",
                path.display(),
                MAX_XATTRS_RECORD >> 10
            )));
        }
    }
}
