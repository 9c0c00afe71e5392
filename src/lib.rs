//! p2p-copy: move files and directories between two machines, end-to-end encrypted.
//!
//! A sender offers paths and shows a short code; a receiver gives the code. Both derive a
//! shared key from it with SPAKE2, meet on the local network (multicast discovery) or at a
//! rendezvous node, and run the manifest-and-chunk protocol over a direct QUIC connection
//! (or the node's relay) whose certificates are bound to that key.
//!
//! This crate is the `p2p-copy` command and its library. A program sends with a [`Sender`]
//! and receives with a [`Receiver`]: each is built from what to send (paths, a text, bytes,
//! a reader) or where to put it (a directory, a writer, memory), takes the command line's
//! options, and starts a [`Transfer`] on the caller's tokio runtime. The transfer gives the
//! code at once, then [`Event`]s (the same as `p2p-copy --json` prints) and, at its end, a
//! [`Finished`] with the [`Report`], or an [`Error`] whose [`ErrorKind`] says what failed.
//!
//! ```no_run
//! # async fn run() -> Result<(), p2p_copy::Error> {
//! use p2p_copy::{Receiver, Sender};
//!
//! // One machine:
//! let sending = Sender::paths(["results/"]).exclude("*.tmp").start()?;
//! println!("code: {}", sending.wait_code().await.unwrap_or_default());
//! sending.wait().await?;
//!
//! // The other, given the code:
//! # let code = String::new();
//! let received = Receiver::new(code).into_dir("incoming").start()?.wait().await?;
//! println!("{} bytes", received.report.bytes);
//! # Ok(())
//! # }
//! ```
//!
//! Codes are made with [`generate_code`] (or by the sender itself):
//!
//! ```
//! let code = p2p_copy::generate_code(4)?;
//! assert_eq!(code.split('-').count(), 5, "a nameplate and four words");
//! # Ok::<(), p2p_copy::Error>(())
//! ```
//!
//! Everything the protocol is made of lives in [`internals`]: public for the command line,
//! the tests and the fuzzers, unstable, and not meant for programs.

#![warn(missing_docs)]

mod api;
pub mod error;
#[allow(missing_docs)]
pub mod internals;

pub use api::{
    generate_code, Compression, Congestion, Error, Event, FileOutcome, Finished, Link,
    OfferSummary, PathKind, ProgressSample, Quality, Receiver, Rendezvous, Sender, Summary,
    Transfer, EVENT_QUEUE,
};
#[doc(inline)]
pub use error::ErrorKind;
#[doc(inline)]
pub use transfer::{printable, Report};

pub(crate) use internals::{code, compress, crypto, net, proto, transfer, wire};
