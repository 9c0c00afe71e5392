//! The receiving lane's deframer (`transfer::lanes::Deframer`): a stream of `len ‖ body`
//! frames cut into pieces at fuzzer-chosen boundaries, handed over a fuzzer-chosen number of
//! pieces at a time, compared with a one-line reference parser of the whole stream. Same
//! frames in the same order, an error exactly when a header announces more than the cap,
//! and "in a frame" at the end exactly when the stream stops inside one.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::transfer::lanes::Deframer;

#[derive(Arbitrary, Debug)]
struct Input {
    max: u16,
    /// The stream: frames the fuzzer describes (mostly well-formed), then raw bytes.
    frames: Vec<Vec<u8>>,
    /// A frame header of the fuzzer's (any length) at the end, and trailing bytes.
    tail_len: Option<u32>,
    tail: Vec<u8>,
    /// Piece lengths (cycled) and pieces per call (cycled).
    cuts: Vec<u8>,
    calls: Vec<u8>,
}

/// Frames of `stream` up to the first error; whether it failed; whether it stops mid-frame.
fn reference(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, bool, bool) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (frames, false, false);
        }
        let Some(header) = rest.first_chunk::<4>() else { return (frames, false, true) };
        let len = u32::from_be_bytes(*header) as usize;
        if len > max {
            return (frames, true, true);
        }
        if rest.len() < 4 + len {
            return (frames, false, true);
        }
        frames.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max);
    let mut stream = Vec::new();
    for f in &input.frames {
        stream.extend_from_slice(&(f.len() as u32).to_be_bytes());
        stream.extend_from_slice(f);
    }
    if let Some(len) = input.tail_len {
        stream.extend_from_slice(&len.to_be_bytes());
    }
    stream.extend_from_slice(&input.tail);
    let (want, fails, partial) = reference(&stream, max);

    let cuts: Vec<usize> = if input.cuts.is_empty() {
        vec![stream.len().max(1)]
    } else {
        input.cuts.iter().map(|&c| usize::from(c)).collect()
    };
    let mut pieces = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        // A zero cut is an empty piece (quinn may hand one over).
        let end = (at + cut).min(stream.len());
        pieces.push(Bytes::copy_from_slice(&stream[at..end]));
        at = end;
        if pieces.len() > 4 * stream.len() + 8 {
            // Only empty pieces for a while: go on with the rest in one.
            pieces.push(Bytes::copy_from_slice(&stream[at..]));
            break;
        }
    }

    let mut deframer = Deframer::new(max);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    let mut i = 0;
    let mut calls = input.calls.iter().cycle();
    while i < pieces.len() {
        let n = calls.next().map_or(1, |&c| usize::from(c).max(1)).min(pieces.len() - i);
        match deframer.frames(&pieces[i..i + n]) {
            Ok(frames) => got.extend(frames),
            Err(_) => {
                failed = true;
                break;
            }
        }
        i += n;
    }
    assert_eq!(
        failed,
        fails,
        "error where the reference {}",
        if fails { "fails" } else { "does not" }
    );
    if failed {
        // Frames completed in the failing call are dropped with it.
        assert!(got.len() <= want.len() && got[..] == want[..got.len()]);
    } else {
        assert_eq!(got, want);
        assert_eq!(deframer.in_frame(), partial);
    }
});
