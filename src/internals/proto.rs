//! The sans-IO protocol: no sockets, files or clocks in here. Time comes in as arguments,
//! randomness is injected, and the drivers in [`crate::transfer`] do all I/O.
//!
//! - [`session`]: the control-stream state machine (PAKE → confirm → hello → offer/accept →
//!   finish → complete).
//! - [`lane`]: the data lanes' record writer and checker (entries, chunks, per-file BLAKE3 hash).
//! - [`tree`]: the per-file BLAKE3 hash as a tree of 1 MiB groups, whose chaining values make
//!   resuming a partial file cheap.

pub mod lane;
pub mod session;
pub mod tree;

pub use lane::{Held, LaneError, LaneEvent, LaneReader, LaneWriter, CHUNK_PAYLOAD_AT};
pub use session::{Channel, Config, Event, Session, SessionError, MAILBOX_LANE};
pub use tree::{TreeHasher, GROUP};
