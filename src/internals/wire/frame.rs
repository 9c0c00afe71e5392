//! Stream framing: every message on a QUIC stream is `length: u32 BE ‖ body`.
//!
//! The length counts the body only. Each stream kind has its own cap, checked before any
//! allocation; a data lane additionally starts with its lane number (`u32 BE`). Nothing here
//! is sealed by p2p-copy itself: QUIC encrypts and authenticates every stream byte.

use super::DecodeError;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Reads the body length from a frame header and checks it against `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(DecodeError::TooLong { what: "frame", len, max });
    }
    Ok(len)
}

/// Starts a frame in `buf`: clears it and reserves the header. Write the body after it, then
/// call [`finish`].
pub fn begin(buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER_LEN]);
}

/// Fills in the header of a frame started with [`begin`].
pub fn finish(buf: &mut [u8]) {
    let len = (buf.len() - HEADER_LEN) as u32;
    buf[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_snapshot_and_cap() {
        let mut buf = Vec::new();
        begin(&mut buf);
        buf.extend_from_slice(b"abc");
        finish(&mut buf);
        assert_eq!(hex::encode(&buf), "00000003616263");
        assert_eq!(body_len([0, 0, 0, 3], 3), Ok(3));
        assert_eq!(
            body_len([0, 0, 0, 4], 3),
            Err(DecodeError::TooLong { what: "frame", len: 4, max: 3 })
        );
        assert!(body_len([0xff; 4], 1 << 20).is_err());
    }
}
