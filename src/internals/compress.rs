//! Sender-side compression of chunks (zstd), pure.
//!
//! A [`Packer`] decides per chunk whether to send it compressed ([`Compression`] modes). `auto`
//! keeps a compressed chunk only when it saves at least [`MIN_SAVING_PERCENT`], and first
//! compresses a sample of a large chunk, so incompressible data (media, archives, encrypted
//! files) costs one small trial per chunk at most; after a chunk that did not pay, the next
//! chunks go uncompressed without a trial, for a stretch that doubles each time (up to
//! [`MAX_SKIP`] chunks), so a long incompressible file is tried rarely and a file whose content
//! changes is noticed again. A large file starts with a fresh trial; small files (one chunk
//! each) carry the stretch on, so a tree of many small incompressible files is not compressed
//! file by file either. The receiver needs no setting: each chunk says whether it
//! is compressed.
//!
//! Compressing costs CPU, which pays only when the link, not the CPU, is what the transfer
//! waits for. On large chunks that compress (those of files over two samples), `auto`
//! therefore checks which way moves the data faster, over the lane's chunks whatever file they
//! belong to; the driver reports, for each chunk, how long it took to be handed on, how
//! much of that it waited for room towards the link, and how many bytes the connection had
//! put on the wire by then ([`Sample`]). `auto` times [`RACE`] chunks sent compressed (the
//! file's rate that way). If the lane waited for the link for at least [`LINK_BOUND`] of that
//! time, and the receiver's flow-control windows were not what held it back (the connection
//! sent no DATA_BLOCKED frame meanwhile: a receiver short of CPU is not a slow link), the link
//! is the limit and compression wins outright. Otherwise it sends as many
//! chunks as they are and measures what the connection puts on the wire meanwhile: sent as they
//! are, the file can move no faster than that. (The lane's own timing would mislead here: the
//! connection's send buffer takes the first chunks at once, however slow the link.)
//! Compression is kept only when it is clearly faster, and the check comes back after a
//! stretch that doubles while the same way keeps winning. On a fast link with the CPU as the
//! limit (loopback) the chunks then go as they are; on a slower one, compressed.
//!
//! A race lasts a few milliseconds, and where two cores run both sides, what the wire moves in
//! a few milliseconds varies by a factor of two with what else they run. Three rules keep that
//! noise from deciding: compressed chunks that hardly waited for room went into the
//! connection's buffers, so their rate is only the lane's own speed, and must beat the plain
//! rate by [`UNPROVEN`] (a quarter), not [`WIN_MARGIN`]; a race ends early for compression
//! only if every plain chunk so far was clearly slower (a pause of the cores makes a chunk look
//! slow, never fast); and once the plain way has won, the whole stretch sent as it is measures
//! the plain rate (hundreds of chunks, not a dozen). The plain rate counts what the connection
//! sent during the lane's chunks only, not while the lane opened files or waited for work.
//! Chunks that do not compress are not timed: a race waits for the next compressible one
//! instead of starting over (a tree of media and text files would restart it at every text
//! file and never finish one).
//! The check at the stretch's end then compresses only [`PROBE`] chunks to time the lane's
//! own work on them (reading, hashing, compressing; not the wait for room): a lane that
//! compresses can move no faster than that, so unless it beats the plain rate by
//! [`UNPROVEN`], the plain way wins again without a full race; if it does (the link got
//! slower), a full race follows. Where compressing does not pay, `auto` thus compresses one
//! race's chunks and then [`PROBE`] chunks per stretch of up to [`MAX_SETTLE`]. A long
//! stretch is also checked every [`SETTLE`] chunks: if what it moved since the last check is
//! a quarter below what the lane last moved compressed, the probe comes at once (a transfer
//! that moves from a LAN to a slow relay notices within a few dozen chunks, not after up to
//! [`MAX_SETTLE`]).

use std::fmt;
use std::time::Duration;

/// What the sender does with chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// Compress what compresses (sampled per chunk); send the rest as it is.
    #[default]
    Auto,
    /// Compress every chunk that gets smaller at all.
    On,
    /// Never compress.
    Off,
}

/// zstd level: the fastest of the regular levels; it still shrinks text and logs several-fold.
pub const LEVEL: i32 = 1;
/// `auto` keeps a compressed chunk only when it is at least this much smaller.
pub const MIN_SAVING_PERCENT: usize = 5;
/// `auto` tries a sample of this size first when a chunk is larger than twice this.
pub const SAMPLE: usize = 64 * 1024;
/// Chunks below this size are sent as they are: too small to gain much.
pub const MIN_CHUNK: usize = 256;
/// After a chunk that did not compress, `auto` skips at most this many chunks without trying.
pub const MAX_SKIP: u32 = 64;
/// Chunks timed each way in a race (the first [`WARMUP`] of them are not counted: the
/// pipeline still holds chunks sent the other way).
pub const RACE: u32 = 8;
/// Chunks at the start of each half of a race that are not timed.
pub const WARMUP: u32 = 2;
/// Compression wins a race only when it moves the file at least this much faster.
pub const WIN_MARGIN: f64 = 1.05;
/// Chunks timed sent as they are in a race (the first [`WARMUP`] of them not counted); more
/// than compressed ones: the wire's pace over a few milliseconds varies with what else the
/// cores run.
pub const PLAIN_RACE: u32 = 16;
/// Compression wins by this much at least where its rate is only the lane's own speed: the
/// compressed chunks of a race that hardly waited for room (less than [`PUSHED_BACK`] of
/// their time), which the connection's buffers took at once, and every [`PROBE`]. Such a rate
/// leaves out what the receiver and the link make of the chunks (on two shared cores, the
/// receiver's work is what compressing takes the CPU from).
pub const UNPROVEN: f64 = 1.25;
/// Compressed chunks of a race that waited for room at least this share of their time moved
/// at the pace of the connection, not only of the lane.
pub const PUSHED_BACK: f64 = 0.05;
/// Compressed chunks that spent this share of their time waiting for the link win at once:
/// sent as they are, they would wait longer still.
pub const LINK_BOUND: f64 = 0.2;
/// Chunks sent the winning way before the next race, at first.
pub const SETTLE: u32 = 32;
/// Most chunks between races (the stretch doubles while the same way keeps winning).
pub const MAX_SETTLE: u32 = 1024;
/// Chunks compressed to check whether compression could win at all, in a race after one the
/// plain way won (the fastest counts: a pause of the lane's thread only ever slows one down).
pub const PROBE: u32 = 2;
/// Chunks sent as they are that are clearly this much slower than compressed ones end the
/// race early (each costs the transfer that much).
pub const CLEARLY: f64 = 1.5;

/// What the driver reports about one chunk (see [`Packer::timed`]).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Bytes of the file in the chunk.
    pub bytes: u64,
    /// From reading the chunk to handing it on.
    pub took: Duration,
    /// Of that, waiting for room towards the link.
    pub waited: Duration,
    /// Bytes the connection had sent (all lanes, headers included) when the chunk began to
    /// be read; with [`Sample::wire`], what the connection moved meanwhile.
    pub wire_before: u64,
    /// Bytes the connection had sent when the chunk had been handed on.
    pub wire: u64,
    /// Times so far the connection told the receiver it was held back by the receiver's
    /// flow-control windows (DATA_BLOCKED and STREAM_DATA_BLOCKED frames).
    pub blocked: u64,
}

impl Sample {
    /// Bytes the connection sent while the chunk was read and handed on.
    fn moved(&self) -> u64 {
        self.wire.saturating_sub(self.wire_before)
    }
}

/// Whether a chunk of `len` bytes is large enough to be raced.
fn raced(len: u64) -> bool {
    len > 2 * SAMPLE as u64
}

/// Where `auto` stands in racing compression against none on the lane's large chunks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Race {
    /// Not racing: a small file, or chunks that do not compress.
    Idle,
    /// Timing chunks sent compressed: chunks left, what the counted ones moved, and the
    /// flow-control counter ([`Sample::blocked`]) when counting began.
    Compressed { left: u32, bytes: u64, time: Duration, waited: Duration, blocked: Option<u64> },
    /// Sending chunks as they are: chunks left, the compressed rate to beat and by how much,
    /// what the connection moved during the counted chunks and their time, and the fastest
    /// of them alone.
    Plain { left: u32, to_beat: f64, margin: f64, wire: u64, time: Duration, fastest: f64 },
    /// Compressing a few chunks to see whether compression could beat `rate` (what the chunks
    /// moved as they are) at all: a lane compressing can move no faster than its own work
    /// (reading, hashing, compressing) allows. `fastest` is the best work rate seen so far.
    Probe { left: u32, rate: f64, fastest: f64 },
    /// Sending the winning way for `left` more chunks after `seen`; sent as they are, timed
    /// like the plain half of a race, which over a whole stretch measures the plain way far
    /// better than a race can. `mark` is what had been counted at the last check within the
    /// stretch (every [`SETTLE`] counted chunks).
    Settled {
        compressed: bool,
        left: u32,
        seen: u32,
        wire: u64,
        time: Duration,
        mark: (u64, Duration),
    },
}

impl Race {
    /// A race starts with the compressed half.
    fn start() -> Race {
        let (time, waited) = (Duration::ZERO, Duration::ZERO);
        Race::Compressed { left: RACE, bytes: 0, time, waited, blocked: None }
    }
}

/// What the connection moved while chunks went as they are: `wire` bytes in `time`.
fn plain_rate(wire: u64, time: Duration) -> f64 {
    wire as f64 / time.as_secs_f64().max(1e-9)
}

/// Adds one chunk sent as it is to what the connection moved and the time, if `counting`.
/// Only the chunk's own time counts: between chunks the lane may open files or wait for work
/// while the connection drains what it holds and carries other lanes.
fn count_plain(wire: u64, time: Duration, counting: bool, s: &Sample) -> (u64, Duration) {
    if counting {
        (wire + s.moved(), time + s.took)
    } else {
        (wire, time)
    }
}

/// Compresses chunks of one lane; one per lane worker (it keeps a zstd context).
pub struct Packer {
    mode: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
    /// Chunks still to send without trying.
    skip: u32,
    /// The next stretch to skip after a chunk that did not pay.
    stretch: u32,
    race: Race,
    /// The way the last race of this file went, and the stretch it earned.
    winner: Option<bool>,
    settle: u32,
    /// Whether the last chunk [`Packer::pack`] was asked about went compressed.
    went_compressed: bool,
    /// The fastest the lane was last seen to move compressed chunks (a race's compressed
    /// half or a probe): a stretch sent as it is whose rate falls clearly below it is
    /// checked at once.
    could: f64,
}

impl fmt::Debug for Packer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packer").field("mode", &self.mode).field("skip", &self.skip).finish()
    }
}

impl Packer {
    /// A packer for `mode`. Fails only if zstd cannot allocate its context.
    pub fn new(mode: Compression) -> std::io::Result<Packer> {
        let zstd = match mode {
            Compression::Off => None,
            Compression::Auto | Compression::On => Some(zstd::bulk::Compressor::new(LEVEL)?),
        };
        Ok(Packer {
            mode,
            zstd,
            out: Vec::new(),
            skip: 0,
            stretch: 1,
            race: Race::Idle,
            winner: None,
            settle: SETTLE,
            went_compressed: false,
            could: 0.0,
        })
    }

    /// A file of `size` bytes starts. A large one forgets what earlier files taught about
    /// compressing at all and gets a fresh trial; a small one continues the stretch. (Which
    /// way is faster is a matter of the lane, not of the file: a race goes on across files.)
    pub fn start_file(&mut self, size: u64) {
        if size > 2 * SAMPLE as u64 {
            self.skip = 0;
            self.stretch = 1;
        }
    }

    /// Whether [`Packer::timed`] wants to hear about a chunk of `len` bytes: only `auto`
    /// races, and only large chunks. (The driver reads the connection's statistics for a
    /// [`Sample`], which takes the connection's lock: not for every small file.)
    pub fn times(&self, len: usize) -> bool {
        self.mode == Compression::Auto && raced(len as u64)
    }

    /// What became of the last chunk `pack` was asked about. Only large chunks count, and
    /// only those that went the way being timed (a chunk that did not compress, in the
    /// compressed half of a race, tells nothing of compressing: the race waits for the next).
    pub fn timed(&mut self, sample: Sample) {
        let went_compressed = std::mem::take(&mut self.went_compressed);
        if !raced(sample.bytes) {
            return;
        }
        if matches!(self.race, Race::Compressed { .. } | Race::Probe { .. }) && !went_compressed {
            return;
        }
        self.race = match self.race {
            Race::Idle => Race::Idle,
            Race::Compressed { left, bytes, time, waited, blocked } => {
                let left = left.saturating_sub(1);
                let (bytes, time, waited, blocked) = if left < RACE - WARMUP {
                    let blocked = blocked.or(Some(sample.blocked));
                    (bytes + sample.bytes, time + sample.took, waited + sample.waited, blocked)
                } else {
                    (bytes, time, waited, blocked)
                };
                if left > 0 {
                    Race::Compressed { left, bytes, time, waited, blocked }
                } else if waited.as_secs_f64() >= time.as_secs_f64() * LINK_BOUND
                    && blocked.is_none_or(|from| sample.blocked == from)
                {
                    // Compressed and still waiting for the link: as they are, chunks would
                    // wait longer. (Not when the receiver's windows held them back: a
                    // receiver short of CPU is not a slow link, and compressing may only
                    // take more of the CPU both sides share. The race decides then.)
                    self.settle(true)
                } else {
                    let to_beat = bytes as f64 / time.as_secs_f64().max(1e-9);
                    self.could = to_beat;
                    // Chunks that hardly waited for room went into the connection's buffers:
                    // their rate is the lane's own speed, not what the receiver and the link
                    // make of them.
                    let pushed_back = waited.as_secs_f64() >= time.as_secs_f64() * PUSHED_BACK;
                    let margin = if pushed_back { WIN_MARGIN } else { UNPROVEN };
                    let (wire, time, fastest) = (0, Duration::ZERO, 0.0);
                    Race::Plain { left: PLAIN_RACE, to_beat, margin, wire, time, fastest }
                }
            }
            Race::Plain { left, to_beat, margin, wire, time, fastest } => {
                let left = left.saturating_sub(1);
                let counting = left < PLAIN_RACE - WARMUP;
                let (wire, time) = count_plain(wire, time, counting, &sample);
                let fastest = if counting {
                    fastest.max(plain_rate(sample.moved(), sample.took))
                } else {
                    fastest
                };
                let counted = (PLAIN_RACE - WARMUP).saturating_sub(left);
                match left {
                    0 => self.settle(to_beat > plain_rate(wire, time) * margin),
                    // Clearly slower as they are, every one of them (a pause of the cores
                    // makes a few chunks look slow, never fast): each more such chunk costs
                    // the transfer.
                    _ if counted >= 2 && to_beat > fastest * CLEARLY => self.settle(true),
                    _ => Race::Plain { left, to_beat, margin, wire, time, fastest },
                }
            }
            Race::Probe { left, rate, fastest } => {
                // Of the chunk's time, what the lane worked (the rest it waited for room).
                let work = sample.took.saturating_sub(sample.waited).as_secs_f64();
                let fastest = fastest.max(sample.bytes as f64 / work.max(1e-9));
                match left.saturating_sub(1) {
                    0 => {
                        self.could = fastest;
                        if fastest <= rate * UNPROVEN {
                            self.settle(false)
                        } else {
                            Race::start()
                        }
                    }
                    left => Race::Probe { left, rate, fastest },
                }
            }
            Race::Settled { compressed: true, left: 1, .. } => Race::start(),
            Race::Settled { compressed: false, left: 1, seen, wire, time, .. } => {
                let (wire, time) = count_plain(wire, time, seen >= WARMUP, &sample);
                match plain_rate(wire, time) {
                    rate if rate > 0.0 => Race::Probe { left: PROBE, rate, fastest: 0.0 },
                    _ => Race::start(),
                }
            }
            Race::Settled { compressed, left, seen, wire, time, mark } => {
                let counting = !compressed && seen >= WARMUP;
                let (wire, time) = count_plain(wire, time, counting, &sample);
                let check = counting && (seen + 1 - WARMUP) % SETTLE == 0;
                // Since the last check: if the link got slower than compressing could go,
                // the probe comes now, not at the end of a stretch up to 1,024 chunks long.
                let lately = plain_rate(wire - mark.0, time.saturating_sub(mark.1));
                let (left, seen) = (left - 1, seen + 1);
                match check {
                    true if lately * UNPROVEN < self.could => {
                        Race::Probe { left: PROBE, rate: lately, fastest: 0.0 }
                    }
                    true => {
                        Race::Settled { compressed, left, seen, wire, time, mark: (wire, time) }
                    }
                    false => Race::Settled { compressed, left, seen, wire, time, mark },
                }
            }
        };
    }

    /// The stretch after a race `compress` won: it doubles while the same way keeps winning.
    fn settle(&mut self, compress: bool) -> Race {
        self.settle = match self.winner.replace(compress) {
            Some(w) if w == compress => (self.settle * 2).min(MAX_SETTLE),
            _ => SETTLE,
        };
        tracing::debug!(compress, chunks = self.settle, race = ?self.race, "auto settled");
        let (seen, wire, time, mark) = (0, 0, Duration::ZERO, (0, Duration::ZERO));
        Race::Settled { compressed: compress, left: self.settle, seen, wire, time, mark }
    }

    /// Whether [`Sample::blocked`] counts for the chunk being timed (only in the compressed
    /// half of a race; elsewhere it may be left at 0).
    pub fn counts_blocked(&self) -> bool {
        matches!(self.race, Race::Compressed { .. })
    }

    /// Whether a race has this chunk go as it is.
    fn racing_plain(&self) -> bool {
        matches!(self.race, Race::Plain { .. } | Race::Settled { compressed: false, .. })
    }

    /// The compressed form of `chunk` if it is worth sending instead, else `None`.
    pub fn pack(&mut self, chunk: &[u8]) -> Option<&[u8]> {
        self.went_compressed = false;
        let auto = self.mode == Compression::Auto;
        if chunk.len() < MIN_CHUNK || self.zstd.is_none() {
            return None;
        }
        let large = raced(chunk.len() as u64);
        if auto && large && self.racing_plain() {
            return None;
        }
        if auto && self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        if auto && large && !self.pays(&chunk[..SAMPLE]) {
            self.did_not_pay();
            return None;
        }
        if self.pays(chunk) {
            self.stretch = 1;
            if auto && large && self.race == Race::Idle {
                self.race = Race::start();
            }
            self.went_compressed = true;
            Some(&self.out)
        } else {
            if auto {
                self.did_not_pay();
            }
            None
        }
    }

    /// Compresses `data` into `self.out`; whether it got small enough to keep.
    fn pays(&mut self, data: &[u8]) -> bool {
        let Some(zstd) = self.zstd.as_mut() else { return false };
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        if zstd.compress_to_buffer(data, &mut self.out).is_err() {
            return false;
        }
        match self.mode {
            Compression::Auto => self.out.len() * 100 <= data.len() * (100 - MIN_SAVING_PERCENT),
            Compression::On => self.out.len() < data.len(),
            Compression::Off => false,
        }
    }

    /// A chunk that did not compress: the next are sent as they are for a stretch. A race in
    /// progress waits (chunks that do not compress are not timed) instead of starting over,
    /// or a tree that mixes media and text would start a race at every text file and never
    /// finish one.
    fn did_not_pay(&mut self) {
        self.skip = self.stretch;
        self.stretch = (self.stretch * 2).min(MAX_SKIP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn text(len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut out = Vec::with_capacity(len + 100);
        while out.len() < len {
            let line = format!(
                "2026-12-01T10:{:02}:{:02}Z INFO request id={:08x} status={} bytes={}\n",
                rng.gen_range(0..60),
                rng.gen_range(0..60),
                rng.gen::<u32>(),
                [200, 200, 200, 404, 500][rng.gen_range(0..5)],
                rng.gen_range(0..100_000)
            );
            out.extend_from_slice(line.as_bytes());
        }
        out.truncate(len);
        out
    }

    fn random(len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        (0..len).map(|_| rng.gen()).collect()
    }

    /// A chunk of `bytes` that took `took` and never waited, while the connection's counter
    /// went from `wire_before` to `wire`.
    fn unhindered(bytes: u64, took: Duration, wire_before: u64, wire: u64) -> Sample {
        Sample { bytes, took, waited: Duration::ZERO, wire_before, wire, blocked: 0 }
    }

    #[test]
    fn auto_compresses_text_and_the_result_inflates_back() {
        let chunk = text(1 << 20);
        let mut packer = Packer::new(Compression::Auto).unwrap();
        let packed = packer.pack(&chunk).expect("logs compress").to_vec();
        assert!(packed.len() * 3 < chunk.len(), "{} of {}", packed.len(), chunk.len());
        assert_eq!(zstd::bulk::decompress(&packed, chunk.len()).unwrap(), chunk);
    }

    #[test]
    fn auto_sends_random_data_as_it_is_and_tries_less_and_less_often() {
        let chunk = random(1 << 20);
        let mut packer = Packer::new(Compression::Auto).unwrap();
        // Which of 200 chunks got a trial: the first, then after stretches of 1, 2, 4 ... 64.
        let mut tried = Vec::new();
        for i in 0..200 {
            let skipping = packer.skip > 0;
            assert!(packer.pack(&chunk).is_none(), "chunk {i}");
            if !skipping {
                tried.push(i);
            }
        }
        assert_eq!(tried, [0, 2, 5, 10, 19, 36, 69, 134, 199]);
        // A new large file starts afresh, and text after random data is noticed.
        packer.start_file(1 << 20);
        assert_eq!(packer.skip, 0);
        assert!(packer.pack(&text(1 << 20)).is_some());
    }

    #[test]
    fn small_incompressible_files_are_tried_less_and_less_often_too() {
        let small = random(4096);
        let mut packer = Packer::new(Compression::Auto).unwrap();
        let mut tried = Vec::new();
        for i in 0..40 {
            packer.start_file(small.len() as u64);
            let skipping = packer.skip > 0;
            assert!(packer.pack(&small).is_none(), "file {i}");
            if !skipping {
                tried.push(i);
            }
        }
        assert_eq!(tried, [0, 2, 5, 10, 19, 36]);
        // A compressible small file that gets a trial ends the stretch.
        while packer.skip > 0 {
            packer.start_file(4096);
            assert!(packer.pack(&text(4096)).is_none(), "skipped without a trial");
        }
        packer.start_file(4096);
        assert!(packer.pack(&text(4096)).is_some());
        assert_eq!((packer.skip, packer.stretch), (0, 1));
    }

    #[test]
    fn a_sample_that_does_not_compress_saves_the_full_trial() {
        // Random first 64 KiB, text after: auto judges by the sample and sends it as it is.
        let mut chunk = random(SAMPLE);
        chunk.extend_from_slice(&text(1 << 20));
        let mut auto = Packer::new(Compression::Auto).unwrap();
        assert!(auto.pack(&chunk).is_none());
        // `on` compresses the whole chunk.
        let mut on = Packer::new(Compression::On).unwrap();
        assert!(on.pack(&chunk).is_some());
    }

    /// Sends `chunks` chunks of text through `auto`, timing each with a model of the pipeline:
    /// reading and hashing at 2 GB/s, zstd at `zstd` bytes per second, and the link at `link`
    /// bytes per second of what goes on the wire. Returns which chunks went compressed.
    fn race(chunks: usize, zstd: f64, link: f64) -> Vec<bool> {
        race_on(chunks, zstd, |_| link)
    }

    /// [`race`] over a link whose rate changes: `link(i)` for chunk `i`.
    fn race_on(chunks: usize, zstd: f64, link: impl Fn(usize) -> f64) -> Vec<bool> {
        simulate(chunks, zstd, link, |_| true, |_| 0.0)
    }

    /// The model of [`race`], in full: chunk `i` is text if `is_text(i)` (else random bytes),
    /// and after it the lane spends `gap(i)` seconds elsewhere (opening the next file, say)
    /// while the connection goes on sending at the link's rate (what it holds, other lanes).
    fn simulate(
        chunks: usize,
        zstd: f64,
        link: impl Fn(usize) -> f64,
        is_text: impl Fn(usize) -> bool,
        gap: impl Fn(usize) -> f64,
    ) -> Vec<bool> {
        let (words, noise) = (text(256 << 10), random(256 << 10));
        let mut packer = Packer::new(Compression::Auto).unwrap();
        packer.start_file((chunks * words.len()) as u64);
        let mut on_wire = 0u64;
        (0..chunks)
            .map(|i| {
                let link = link(i);
                let chunk = if is_text(i) { &words } else { &noise };
                let sent = packer.pack(chunk).map(<[u8]>::len);
                let mut secs = chunk.len() as f64 / 2e9;
                if sent.is_some() {
                    secs += chunk.len() as f64 / zstd;
                }
                // The worker and the link run side by side: the slower one sets the pace, and
                // the worker waits for the rest.
                let wire = sent.unwrap_or(chunk.len());
                let work = secs;
                secs = secs.max(wire as f64 / link);
                let wire_before = on_wire;
                on_wire += wire as u64;
                packer.timed(Sample {
                    bytes: chunk.len() as u64,
                    took: Duration::from_secs_f64(secs),
                    waited: Duration::from_secs_f64(secs - work),
                    wire_before,
                    wire: on_wire,
                    blocked: 0,
                });
                on_wire += (gap(i) * link) as u64;
                sent.is_some()
            })
            .collect()
    }

    #[test]
    fn auto_sends_as_it_is_where_compressing_is_the_slower_way() {
        // Loopback: the link takes 600 MB/s, zstd only 450.
        let sent = race(600, 450e6, 600e6);
        let compressed = sent.iter().filter(|c| **c).count();
        // The first race compresses RACE chunks; each later check only PROBE of them.
        assert!(compressed <= 20, "{compressed} of 600 chunks compressed");
        // The stretches grew: the races after the first few are far apart.
        let races = sent.windows(2).filter(|w| !w[0] && w[1]).count();
        assert!(races <= 5, "{races} races");
    }

    #[test]
    fn a_link_that_slows_down_is_noticed_within_the_stretch() {
        // Loopback for the first 530 chunks, then 1 Gbit/s: by then plain has won often
        // enough that the stretch under way is 512 chunks long.
        let sent = race_on(1600, 450e6, |i| if i < 530 { 600e6 } else { 117e6 });
        let early = sent[..530].iter().filter(|c| **c).count();
        assert!(early <= 20, "{early} of the first 530 chunks compressed");
        // Within two checks (one every SETTLE chunks), a probe and a race: compressed.
        let after = 530 + 2 * SETTLE as usize + 30;
        let late = sent[after..].iter().filter(|c| !**c).count();
        assert!(late <= 30, "{late} of the last {} chunks sent as they are", 1600 - after);
    }

    #[test]
    fn time_the_lane_spends_between_chunks_does_not_hide_a_slower_link() {
        // Files of 4 chunks; after each, the lane spends twice as long elsewhere as on the
        // file, while the connection sends on. Loopback for 150 chunks, then 1 Gbit/s.
        let link = |i: usize| if i < 150 { 600e6 } else { 117e6 };
        let gap = |i: usize| if i % 4 == 3 { 8.0 * (256 << 10) as f64 / link(i) } else { 0.0 };
        let sent = simulate(2400, 450e6, link, |_| true, gap);
        let late = sent[600..].iter().filter(|c| !**c).count();
        assert!(late <= 60, "{late} of the last 1800 chunks sent as they are");
    }

    #[test]
    fn text_between_media_files_does_not_restart_the_race_each_time() {
        // Loopback, where compressing does not pay: two chunks of text, two of random bytes.
        let is_text = |i: usize| i % 4 < 2;
        let sent = simulate(2000, 450e6, |_| 600e6, is_text, |_| 0.0);
        let compressed = sent.iter().filter(|c| **c).count();
        assert!(compressed <= 40, "{compressed} of 1000 chunks of text compressed");
    }

    #[test]
    fn a_few_slow_chunks_do_not_end_a_race_that_compression_has_not_proven() {
        let chunk = text(256 << 10);
        let bytes = chunk.len() as u64;
        let mut packer = Packer::new(Compression::Auto).unwrap();
        packer.start_file(1 << 40);
        // Compressed: 400 MB/s by the lane's clock, never waiting for room.
        for _ in 0..RACE {
            assert!(packer.pack(&chunk).is_some());
            let took = Duration::from_secs_f64(bytes as f64 / 400e6);
            packer.timed(unhindered(bytes, took, 0, 0));
        }
        // As they are: the first and third counted chunks see the wire at 75 MB/s (the cores
        // busy elsewhere), the rest at 900 MB/s. (Averaged over the first two, 138 MB/s.)
        let mut wire = 0;
        for i in 0..PLAIN_RACE {
            assert!(packer.pack(&chunk).is_none());
            let rate = if i == WARMUP || i == WARMUP + 2 { 75e6 } else { 900e6 };
            let took = Duration::from_secs_f64(bytes as f64 / rate);
            let wire_before = wire;
            wire += bytes;
            packer.timed(unhindered(bytes, took, wire_before, wire));
        }
        assert!(
            matches!(packer.race, Race::Settled { compressed: false, .. }),
            "{:?}",
            packer.race
        );
    }

    #[test]
    fn a_check_that_compression_cannot_win_compresses_only_the_probe() {
        let chunk = text(256 << 10);
        let mut packer = Packer::new(Compression::Auto).unwrap();
        packer.start_file(1 << 40);
        packer.race = packer.settle(false);
        let bytes = chunk.len() as u64;
        let (mut wire, mut compressed) = (0, 0);
        // As they are, the chunks move at 1 GB/s; compressed ones take the lane 2 ms of work.
        for _ in 0..SETTLE + PROBE {
            let packed = packer.pack(&chunk).is_some();
            let took = if packed { Duration::from_millis(2) } else { Duration::from_micros(262) };
            wire += bytes;
            compressed += u32::from(packed);
            let wire_before = wire - bytes;
            packer.timed(unhindered(bytes, took, wire_before, wire));
        }
        assert_eq!(compressed, PROBE);
        // Plain won again, and the next stretch is twice as long.
        let settled = matches!(packer.race, Race::Settled { compressed: false, left, .. } if left == 2 * SETTLE);
        assert!(settled, "{:?}", packer.race);
    }

    #[test]
    fn compressed_chunks_the_buffers_took_at_once_must_win_clearly() {
        let chunk = text(256 << 10);
        let bytes = chunk.len() as u64;
        // Compressed chunks move 15 % faster than plain ones by the lane's clock; `waited` of
        // each chunk's 2 ms was spent waiting for room.
        let run = |waited: Duration| {
            let mut packer = Packer::new(Compression::Auto).unwrap();
            packer.start_file(1 << 40);
            let mut wire = 0;
            for _ in 0..RACE + PLAIN_RACE {
                let packed = packer.pack(&chunk).is_some();
                let (took, waited) = if packed {
                    (Duration::from_millis(2), waited)
                } else {
                    (Duration::from_micros(2300), Duration::ZERO)
                };
                let wire_before = wire;
                wire += bytes;
                packer.timed(Sample { bytes, took, waited, wire_before, wire, blocked: 0 });
            }
            packer.race
        };
        let won = |race: Race| matches!(race, Race::Settled { compressed: true, .. });
        assert!(!won(run(Duration::ZERO)), "only the lane's own speed: not clearly faster");
        assert!(won(run(Duration::from_micros(200))), "paced by the connection: faster");
    }

    #[test]
    fn auto_compresses_where_the_link_is_the_limit() {
        // 1 Gbit/s: the link takes 117 MB/s, and the text shrinks several-fold.
        let sent = race(600, 450e6, 117e6);
        let plain = sent.iter().filter(|c| !**c).count();
        assert!(plain <= 30, "{plain} of 600 chunks sent as they are");
    }

    #[test]
    fn where_compressed_chunks_wait_for_the_link_they_are_never_sent_as_they_are() {
        // 100 Mbit/s: even compressed, the chunks wait for the link.
        let sent = race(600, 450e6, 12e6);
        assert!(sent.iter().all(|c| *c), "never sent as it is to find out");
    }

    #[test]
    fn waiting_on_the_receivers_window_is_not_taken_for_a_slow_link() {
        let chunk = text(256 << 10);
        let run = |blocks: bool| {
            let mut packer = Packer::new(Compression::Auto).unwrap();
            packer.start_file(64 * chunk.len() as u64);
            for i in 0..RACE as u64 {
                assert!(packer.pack(&chunk).is_some(), "the race starts compressed");
                // Half of each chunk's time spent waiting for room.
                let (took, waited) = (Duration::from_millis(4), Duration::from_millis(2));
                let blocked = if blocks { i } else { 0 };
                let bytes = chunk.len() as u64;
                packer.timed(Sample { bytes, took, waited, wire_before: 0, wire: 0, blocked });
            }
            packer.race
        };
        assert!(matches!(run(false), Race::Settled { compressed: true, .. }), "a slow link");
        assert!(matches!(run(true), Race::Plain { .. }), "the race goes on, as they are");
    }

    #[test]
    fn small_chunks_are_not_raced() {
        let chunk = text(2 * SAMPLE);
        let mut packer = Packer::new(Compression::Auto).unwrap();
        for _ in 0..40 {
            packer.start_file(chunk.len() as u64);
            assert!(packer.pack(&chunk).is_some());
            let second = Duration::from_secs(1);
            let bytes = chunk.len() as u64;
            let waited = Duration::ZERO;
            let sample =
                Sample { bytes, took: second, waited, wire_before: 0, wire: 0, blocked: 0 };
            packer.timed(sample);
        }
        assert_eq!(packer.race, Race::Idle);
    }

    #[test]
    fn off_never_compresses_and_tiny_chunks_are_left_alone() {
        let mut off = Packer::new(Compression::Off).unwrap();
        assert!(off.pack(&text(1 << 20)).is_none());
        let mut on = Packer::new(Compression::On).unwrap();
        assert!(on.pack(&text(MIN_CHUNK - 1)).is_none());
        assert!(on.pack(&text(4096)).is_some());
    }
}
