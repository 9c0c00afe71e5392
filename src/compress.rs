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

use std::fmt;

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

/// Compresses chunks of one lane; one per lane worker (it keeps a zstd context).
pub struct Packer {
    mode: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
    /// Chunks still to send without trying.
    skip: u32,
    /// The next stretch to skip after a chunk that did not pay.
    stretch: u32,
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
        Ok(Packer { mode, zstd, out: Vec::new(), skip: 0, stretch: 1 })
    }

    /// A file of `size` bytes starts. A large one forgets what earlier files taught and gets a
    /// fresh trial; a small one continues the stretch.
    pub fn start_file(&mut self, size: u64) {
        if size > 2 * SAMPLE as u64 {
            self.skip = 0;
            self.stretch = 1;
        }
    }

    /// The compressed form of `chunk` if it is worth sending instead, else `None`.
    pub fn pack(&mut self, chunk: &[u8]) -> Option<&[u8]> {
        let auto = self.mode == Compression::Auto;
        if chunk.len() < MIN_CHUNK || self.zstd.is_none() {
            return None;
        }
        if auto && self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        if auto && chunk.len() > 2 * SAMPLE && !self.pays(&chunk[..SAMPLE]) {
            self.did_not_pay();
            return None;
        }
        if self.pays(chunk) {
            self.stretch = 1;
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

    #[test]
    fn off_never_compresses_and_tiny_chunks_are_left_alone() {
        let mut off = Packer::new(Compression::Off).unwrap();
        assert!(off.pack(&text(1 << 20)).is_none());
        let mut on = Packer::new(Compression::On).unwrap();
        assert!(on.pack(&text(MIN_CHUNK - 1)).is_none());
        assert!(on.pack(&text(4096)).is_some());
    }
}
