//! Data lanes over QUIC unidirectional streams.
//!
//! Sender: a walker thread feeds manifest entries into a bounded queue; each lane has a
//! blocking worker that takes the next entry, reads the file, hashes and seals it
//! ([`LaneWriter`]) and hands sealed records through a bounded channel to the lane's stream
//! task. Lanes pull work, so a lane stuck on a large file does not hold up small ones.
//!
//! Receiver: each lane's stream task reads frames into a bounded channel; a blocking worker
//! opens and checks them ([`LaneReader`]) and writes through [`Dest`]. A file is committed only
//! after its hash matched; an error drops the open [`PartFile`], which removes it.
//!
//! Memory is bounded by the channel depths times the chunk size per lane.

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::fs::{Dest, PartFile, RelPath};
use super::walk::{self, read_failed, Job, Source};
use super::{connection_lost, Progress, TransferError};
use crate::crypto::Keys;
use crate::error::ErrorKind;
use crate::proto::{LaneEvent, LaneReader, LaneWriter};
use crate::wire::control::Summary;
use crate::wire::data::{Entry, EntryKind, MAX_FRAME};

/// Records buffered between a lane's worker and its stream, per lane.
const LANE_DEPTH: usize = 4;
/// Entries buffered between the walker and the lane workers.
const JOB_DEPTH: usize = 256;

/// Sends every entry of `sources` over `lanes` new streams; returns the totals sent.
pub async fn send_lanes(
    conn: &quinn::Connection,
    keys: &Keys,
    lanes: u16,
    chunk: usize,
    sources: Vec<Source>,
    progress: Arc<Progress>,
) -> Result<Summary, TransferError> {
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(JOB_DEPTH);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut tasks: JoinSet<Result<Option<Summary>, TransferError>> = JoinSet::new();

    tasks.spawn_blocking(move || walk::walk(&sources, |job| job_tx.send(job).is_ok()).map(Some));
    for lane in 1..=u32::from(lanes) {
        let mut stream = conn.open_uni().await.map_err(TransferError::from)?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(LANE_DEPTH);
        let writer = LaneWriter::new(keys, lane);
        let preamble = writer.preamble();
        let jobs = job_rx.clone();
        let progress = progress.clone();
        tasks
            .spawn_blocking(move || lane_worker(writer, jobs, tx, chunk, &progress).map(|()| None));
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

fn lane_worker(
    mut writer: LaneWriter,
    jobs: Arc<Mutex<std::sync::mpsc::Receiver<Job>>>,
    tx: mpsc::Sender<Bytes>,
    chunk: usize,
    progress: &Progress,
) -> Result<(), TransferError> {
    let send = |out: Vec<u8>| {
        progress.touch();
        tx.blocking_send(Bytes::from(out))
            .map_err(|_| TransferError::network("the connection to the receiver was lost"))
    };
    let mut buf = vec![0u8; chunk];
    loop {
        // Invariant: the lock is only held around `recv`; a poisoned lock means another
        // worker panicked, and stopping this one is right.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return Err(TransferError::internal("a lane worker panicked")),
        };
        let Ok(job) = job else { break };
        let mut out = Vec::new();
        let EntryKind::File { size } = job.entry.kind else {
            writer.entry(&job.entry, &mut out).map_err(seal_error)?;
            send(out)?;
            continue;
        };
        let mut file = std::fs::File::open(&job.local).map_err(|e| read_failed(&job.local, &e))?;
        writer.entry(&job.entry, &mut out).map_err(seal_error)?;
        send(out)?;
        let mut remaining = size;
        while remaining > 0 {
            let n = remaining.min(chunk as u64) as usize;
            read_full(&mut file, &mut buf[..n], &job)?;
            let mut out = Vec::new();
            writer.chunk(&buf[..n], None, &mut out).map_err(seal_error)?;
            send(out)?;
            progress.add(n as u64);
            remaining -= n as u64;
        }
        let mut out = Vec::new();
        writer.file_end(&mut out).map_err(seal_error)?;
        send(out)?;
    }
    let mut out = Vec::new();
    writer.lane_end(&mut out).map_err(seal_error)?;
    send(out)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8], job: &Job) -> Result<(), TransferError> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(TransferError::new(
                    ErrorKind::Io,
                    format!(
                        "{} shrank while it was being sent; send it again",
                        job.local.display()
                    ),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_failed(&job.local, &e)),
        }
    }
    Ok(())
}

fn seal_error(e: crate::crypto::CryptoError) -> TransferError {
    TransferError::internal(e.to_string())
}

fn write_error(e: quinn::WriteError) -> TransferError {
    match e {
        quinn::WriteError::ConnectionLost(c) => TransferError::network(connection_lost(&c)),
        quinn::WriteError::Stopped(_) => TransferError::network("the receiver stopped reading"),
        other => TransferError::network(format!("data stream failed: {other}")),
    }
}

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
    /// Directories received, to get their mode and mtime once their contents are in.
    dirs: Mutex<Vec<(RelPath, u32, Option<std::time::SystemTime>)>>,
}

impl Sink {
    /// A sink writing into `dest`.
    pub fn new(
        dest: Dest,
        overwrite: bool,
        names: HashSet<String>,
        progress: Arc<Progress>,
    ) -> Sink {
        Sink { dest, overwrite, names, progress, dirs: Mutex::new(Vec::new()) }
    }

    fn check(&self, path: &str) -> Result<RelPath, TransferError> {
        let rel = RelPath::parse(path).map_err(|e| {
            TransferError::new(ErrorKind::Protocol, format!("the sender sent an unsafe path: {e}"))
        })?;
        if !self.names.contains(rel.first()) {
            return Err(TransferError::new(
                ErrorKind::Protocol,
                format!("the sender sent {rel}, which is outside what it offered"),
            ));
        }
        Ok(rel)
    }

    /// Gives received directories their modes and mtimes, deepest first (so setting a
    /// parent's mtime comes after its children changed it). Call after every lane finished.
    pub fn finish_dirs(&self) -> Result<(), TransferError> {
        let mut dirs = match self.dirs.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return Err(TransferError::internal("a lane worker panicked")),
        };
        dirs.sort_by_key(|(rel, _, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, mode, mtime) in dirs {
            self.dest.finish_dir(&rel, mode, mtime)?;
        }
        Ok(())
    }
}

/// Receives `lanes` streams into `sink`; returns the totals received.
pub async fn receive_lanes(
    conn: &quinn::Connection,
    keys: &Keys,
    lanes: u16,
    max_chunk: usize,
    sink: Arc<Sink>,
) -> Result<Summary, TransferError> {
    let mut tasks: JoinSet<Result<Summary, TransferError>> = JoinSet::new();
    let mut seen = HashSet::new();
    for _ in 0..lanes {
        let mut stream = conn.accept_uni().await.map_err(TransferError::from)?;
        let mut preamble = [0u8; 4];
        stream
            .read_exact(&mut preamble)
            .await
            .map_err(|_| TransferError::network("a data stream ended before its first bytes"))?;
        let lane = u32::from_be_bytes(preamble);
        if lane == 0 || lane > u32::from(lanes) || !seen.insert(lane) {
            return Err(TransferError::new(
                ErrorKind::Protocol,
                format!("the sender opened an unexpected data lane {lane}"),
            ));
        }
        let reader = LaneReader::new(keys, lane, max_chunk);
        let (tx, rx) = mpsc::channel::<Result<Vec<u8>, TransferError>>(LANE_DEPTH);
        tasks.spawn(async move {
            loop {
                let item = super::control::read_frame_capped(&mut stream, MAX_FRAME).await;
                let end = !matches!(item, Ok(Some(_)));
                let item = match item {
                    Ok(Some(body)) => Ok(body),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
            Ok(Summary::default())
        });
        let sink = sink.clone();
        tasks.spawn_blocking(move || apply_lane(reader, rx, &sink));
    }

    let mut totals = Summary::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => {
                totals.entries += t.entries;
                totals.files += t.files;
                totals.bytes += t.bytes;
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(TransferError::internal(format!("a lane task failed: {e}"))),
        }
    }
    Ok(totals)
}

fn apply_lane(
    mut reader: LaneReader,
    mut rx: mpsc::Receiver<Result<Vec<u8>, TransferError>>,
    sink: &Sink,
) -> Result<Summary, TransferError> {
    let mut open: Option<(PartFile, Entry)> = None;
    let mut totals = Summary::default();
    while let Some(item) = rx.blocking_recv() {
        let mut body = item?;
        sink.progress.touch();
        match reader.handle(&mut body)? {
            LaneEvent::Entry(entry) => {
                let rel = sink.check(&entry.path)?;
                totals.entries += 1;
                let mtime = entry.mtime.and_then(walk::system_time);
                match &entry.kind {
                    EntryKind::Dir => {
                        sink.dest.create_dir(&rel)?;
                        if let Ok(mut dirs) = sink.dirs.lock() {
                            dirs.push((rel, entry.mode, mtime));
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
                part.commit(entry.mode, entry.mtime.and_then(walk::system_time))?;
                totals.files += 1;
                totals.bytes += size;
            }
            LaneEvent::End => {}
        }
    }
    if !reader.is_ended() {
        return Err(TransferError::network(
            "the sender stopped in the middle of the transfer; nothing incomplete was kept",
        ));
    }
    Ok(totals)
}
