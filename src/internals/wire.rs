//! Codecs for everything that crosses the network. Pure; never panics on peer bytes.
//!
//! - [`frame`]: the length-prefixed framing every QUIC stream uses, with hard caps.
//! - [`control`]: messages on the control stream — the clear handshake (PAKE, confirmation)
//!   and, sealed, the session messages (hello, offer, accept, finish, …), versioned.
//! - [`data`]: records on data lanes — manifest entries, file chunks (fixed binary header plus
//!   payload), file ends with their BLAKE3 hash, lane ends.
//! - [`discovery`]: LAN discovery datagrams.
//!
//! `docs/protocol.md` describes the same bytes; the snapshot tests pin them.

pub mod control;
pub mod data;
pub mod discovery;
pub mod frame;

/// Why peer bytes could not be decoded. Every variant is the peer's fault, never ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("message truncated")]
    Truncated,
    /// Bytes were left over after a complete message.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// A type byte we do not know.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// A length over the cap for its field.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A field whose value is not allowed.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The peer speaks a protocol version we do not.
    #[error("unsupported protocol version {0}")]
    Version(u16),
}

/// Decodes a serde message from exactly `bytes`, rejecting trailing data.
fn from_postcard<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        _ => DecodeError::Invalid("encoding"),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a serde message. Serialising our own types into a Vec cannot fail.
fn to_postcard<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) {
    // Invariant: postcard only fails on writer errors or unsupported serde features
    // (e.g. unknown-length sequences); our types use neither and a Vec never fails.
    #[allow(clippy::expect_used)]
    let encoded = postcard::to_extend(value, std::mem::take(out)).expect("postcard into a Vec");
    *out = encoded;
}

/// Exactly `N` bytes, or the error that says how the length is off.
fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    match bytes.len() {
        n if n < N => Err(DecodeError::Truncated),
        n if n > N => Err(DecodeError::TrailingBytes(n - N)),
        _ => {
            let mut out = [0; N];
            out.copy_from_slice(bytes);
            Ok(out)
        }
    }
}
