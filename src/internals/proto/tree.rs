//! A file's BLAKE3 hash computed as a tree of aligned groups.
//!
//! The result is the standard BLAKE3 hash of the whole file (what `b3sum` prints), but the
//! hasher also yields the chaining value (CV) of every complete [`GROUP`] of 1 MiB as it goes.
//! Those CVs are what makes resuming cheap: the receiver journals them beside a partial file,
//! the sender caches them beside nothing at all (in its cache directory), and either side can
//! rebuild the hasher's state at a group boundary from them ([`TreeHasher::resume`]) without
//! reading the prefix again. Two sides compare the prefix they hold by a digest of the CVs
//! ([`prefix_digest`]).
//!
//! Groups are fixed power-of-two slices starting at offset 0, so each is a valid BLAKE3
//! subtree (blake3's `hazmat` rules); CVs are merged lazily on a stack exactly as BLAKE3's own
//! hasher merges its chunks, and the root is taken only when the input is known to end. The
//! stack holds at most one CV per bit of the group count (≤ 44 for any file up to 2^64 bytes).

pub use blake3::hazmat::ChainingValue;
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

/// log2 of the group size.
pub const GROUP_LOG2: u8 = 20;
/// Bytes per group: 1 MiB, 1,024 BLAKE3 chunks.
pub const GROUP: u64 = 1 << GROUP_LOG2;

/// An incremental BLAKE3 hasher that also yields the CV of every complete group.
#[derive(Debug, Clone)]
pub struct TreeHasher {
    /// The group being filled.
    group: blake3::Hasher,
    /// Its index.
    index: u64,
    /// Bytes in it so far. A full group stays current until more input comes: only then is
    /// it known not to be the last one (whose CV must be merged as the root).
    filled: u64,
    /// After [`TreeHasher::resume`]: the CV of the group before `index`, merged once more
    /// input comes.
    held: Option<ChainingValue>,
    /// Merged subtrees, left to right.
    stack: Vec<ChainingValue>,
    /// CVs of groups completed since the last [`TreeHasher::take_cvs`], when collecting.
    new_cvs: Option<Vec<ChainingValue>>,
}

impl Default for TreeHasher {
    fn default() -> Self {
        TreeHasher::new()
    }
}

impl TreeHasher {
    /// A hasher at offset 0.
    pub fn new() -> TreeHasher {
        TreeHasher {
            group: blake3::Hasher::new(),
            index: 0,
            filled: 0,
            held: None,
            stack: Vec::new(),
            new_cvs: None,
        }
    }

    /// Also keep the CV of every group completed from now on, for [`TreeHasher::take_cvs`].
    pub fn collect_cvs(mut self) -> TreeHasher {
        self.new_cvs = Some(Vec::new());
        self
    }

    /// A hasher that continues after `cvs`, the CVs of groups `0..k` (k ≥ 1), at offset
    /// `k × GROUP`. More input must follow: a prefix that is the whole file has a root, not a
    /// continuation.
    pub fn resume(cvs: impl IntoIterator<Item = ChainingValue>) -> TreeHasher {
        let mut h = TreeHasher::new();
        for cv in cvs {
            h.push_group(cv);
        }
        h
    }

    /// At a group boundary (no byte of the current group hashed yet): takes the next group by
    /// its CV instead of its bytes. Returns false, and does nothing, anywhere else.
    pub fn push_group(&mut self, cv: ChainingValue) -> bool {
        if self.filled != 0 {
            return false;
        }
        if let Some(prev) = self.held.replace(cv) {
            self.push(prev, self.index - 1);
        }
        self.index += 1;
        self.group = group_hasher(self.index);
        true
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.index * GROUP + self.filled
    }

    /// True before any input.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hashes `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.filled == GROUP {
                // More input: the full group is not the last one.
                let cv = self.group.finalize_non_root();
                self.push(cv, self.index);
                self.index += 1;
                self.filled = 0;
                self.group = group_hasher(self.index);
            }
            if let Some(cv) = self.held.take() {
                self.push(cv, self.index - 1);
            }
            let room = (GROUP - self.filled) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.group.update(now);
            self.filled += now.len() as u64;
            data = rest;
            if self.filled == GROUP {
                if let Some(new) = &mut self.new_cvs {
                    new.push(self.group.finalize_non_root());
                }
            }
        }
    }

    /// Hashes `len` zero bytes (a hole of a sparse file).
    pub fn update_zeros(&mut self, mut len: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64);
            self.update(&ZEROS[..n as usize]);
            len -= n;
        }
    }

    /// CVs of the groups completed since the last call (only after [`TreeHasher::collect_cvs`]),
    /// with the index of the first.
    pub fn take_cvs(&mut self) -> (u64, Vec<ChainingValue>) {
        let new = self.new_cvs.as_mut().map(std::mem::take).unwrap_or_default();
        let complete = self.index + u64::from(self.filled == GROUP);
        (complete - new.len() as u64, new)
    }

    /// The BLAKE3 hash of everything hashed so far (the hasher can go on).
    pub fn finalize(&self) -> [u8; 32] {
        if let Some(cv) = self.held {
            // Resumed, and nothing came after: a single resumed group has no root this way
            // (see `resume`); its CV comes back so that the mismatch shows as a hash error.
            return if self.stack.is_empty() { cv } else { self.fold(cv) };
        }
        if self.index == 0 {
            // At most one group: its plain hash (the empty input included).
            return self.group.finalize().into();
        }
        self.fold(self.group.finalize_non_root())
    }

    /// Merges `last` (the rightmost subtree) with the stack into the root.
    fn fold(&self, mut cv: ChainingValue) -> [u8; 32] {
        let Some((first, rest)) = self.stack.split_first() else { return cv };
        for left in rest.iter().rev() {
            cv = merge_subtrees_non_root(left, &cv, Mode::Hash);
        }
        merge_subtrees_root(first, &cv, Mode::Hash).into()
    }

    /// Adds the CV of group `index` to the stack, merging every subtree it completes (all
    /// non-root: more input follows).
    fn push(&mut self, mut cv: ChainingValue, index: u64) {
        let mut total = index + 1;
        while total & 1 == 0 {
            let Some(left) = self.stack.pop() else { break };
            cv = merge_subtrees_non_root(&left, &cv, Mode::Hash);
            total >>= 1;
        }
        self.stack.push(cv);
    }
}

fn group_hasher(index: u64) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    if index > 0 {
        h.set_input_offset(index * GROUP);
    }
    h
}

/// The CV of group `index` from its bytes (at most [`GROUP`]; only the last group of a file
/// may be shorter, and then only for checking, never for [`TreeHasher::resume`]).
pub fn group_cv(index: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = group_hasher(index);
    h.update(bytes);
    h.finalize_non_root()
}

/// What two sides compare to agree that they hold the same prefix of a file: the first `k`
/// group CVs, under a context of their own. Streaming: memory does not grow with `k`.
#[derive(Debug, Clone)]
pub struct PrefixDigest {
    hasher: blake3::Hasher,
    count: u64,
}

const PREFIX_CONTEXT: &str = "p2p-copy/1 resume prefix";

impl Default for PrefixDigest {
    fn default() -> Self {
        PrefixDigest::new()
    }
}

impl PrefixDigest {
    /// An empty digest.
    pub fn new() -> PrefixDigest {
        let mut hasher = blake3::Hasher::new_derive_key(PREFIX_CONTEXT);
        hasher.update(&[GROUP_LOG2]);
        PrefixDigest { hasher, count: 0 }
    }

    /// Adds the next group's CV.
    pub fn push(&mut self, cv: &ChainingValue) {
        self.hasher.update(cv);
        self.count += 1;
    }

    /// The digest of the CVs pushed so far.
    pub fn finish(&self) -> [u8; 32] {
        let mut h = self.hasher.clone();
        h.update(&self.count.to_be_bytes());
        h.finalize().into()
    }
}

/// [`PrefixDigest`] of a list of CVs.
pub fn prefix_digest<'a>(cvs: impl IntoIterator<Item = &'a ChainingValue>) -> [u8; 32] {
    let mut d = PrefixDigest::new();
    for cv in cvs {
        d.push(cv);
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: usize = GROUP as usize;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
    }

    fn hashed_in(pieces: &[&[u8]]) -> TreeHasher {
        let mut h = TreeHasher::new().collect_cvs();
        for p in pieces {
            h.update(p);
        }
        h
    }

    /// The edge lengths around BLAKE3 chunks and our groups, and a few powers of two of groups.
    fn edge_lengths() -> Vec<usize> {
        let mut lens = vec![0, 1, 1023, 1024, 1025, 2048, G - 1, G, G + 1, 2 * G - 1, 2 * G];
        lens.extend([2 * G + 1, 3 * G, 3 * G + 7]);
        for k in [4, 8] {
            lens.extend([k * G - 1, k * G, k * G + 1]);
        }
        lens
    }

    #[test]
    fn the_root_is_blake3_at_every_edge_length() {
        for len in edge_lengths() {
            let d = data(len, 3);
            let want: [u8; 32] = blake3::hash(&d).into();
            assert_eq!(hashed_in(&[&d]).finalize(), want, "len {len} in one piece");
            // Pieces that straddle group boundaries.
            let pieces: Vec<&[u8]> = d.chunks(333_333).collect();
            assert_eq!(hashed_in(&pieces).finalize(), want, "len {len} in pieces");
        }
    }

    #[test]
    fn cvs_come_out_per_full_group_and_resume_gives_the_same_root() {
        for len in edge_lengths() {
            let d = data(len, 9);
            let mut h = hashed_in(&[&d]);
            let (first, cvs) = h.take_cvs();
            assert_eq!(first, 0);
            assert_eq!(cvs.len(), len / G, "len {len}");
            for (i, cv) in cvs.iter().enumerate() {
                assert_eq!(*cv, group_cv(i as u64, &d[i * G..(i + 1) * G]));
            }
            let want: [u8; 32] = blake3::hash(&d).into();
            // Resume from every group boundary that leaves input to follow.
            for k in 1..=cvs.len() {
                if k * G >= len {
                    continue;
                }
                let mut r = TreeHasher::resume(cvs[..k].iter().copied()).collect_cvs();
                assert_eq!(r.len(), (k * G) as u64);
                r.update(&d[k * G..]);
                assert_eq!(r.finalize(), want, "len {len} resumed at group {k}");
                let (first, rest) = r.take_cvs();
                assert_eq!(first, k as u64);
                assert_eq!(rest, cvs[k..]);
            }
        }
    }

    #[test]
    fn finalize_does_not_end_the_hasher() {
        let d = data(3 * G + 5, 1);
        let mut h = TreeHasher::new();
        for (i, piece) in d.chunks(G / 2).enumerate() {
            h.update(piece);
            let upto = ((i + 1) * G / 2).min(d.len());
            assert_eq!(h.finalize(), <[u8; 32]>::from(blake3::hash(&d[..upto])), "at {upto}");
        }
    }

    #[test]
    fn the_prefix_digest_depends_on_every_cv_and_their_count() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ab = prefix_digest([&a, &b]);
        assert_ne!(ab, prefix_digest([&b, &a]));
        assert_ne!(ab, prefix_digest([&a]));
        assert_ne!(prefix_digest([]), prefix_digest([&[0u8; 32]]));
        let mut d = PrefixDigest::new();
        d.push(&a);
        d.push(&b);
        assert_eq!(d.finish(), ab);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any split of any input gives the root and the CVs of one pass.
        #[test]
        fn any_split_gives_the_same_hash(len in 0usize..(5 * G), cuts in proptest::collection::vec(0usize..(5 * G), 0..6), seed in any::<u8>()) {
            let d = data(len, seed);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&d[at..c]);
                at = c;
            }
            pieces.push(&d[at..]);
            let mut h = hashed_in(&pieces);
            prop_assert_eq!(h.finalize(), <[u8; 32]>::from(blake3::hash(&d)));
            let (_, cvs) = h.take_cvs();
            let (_, one) = hashed_in(&[&d]).take_cvs();
            prop_assert_eq!(cvs, one);
        }
    }
}
