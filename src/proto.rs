//! The sans-IO protocol: no sockets, files or clocks in here. Time comes in as arguments,
//! randomness is injected, and the drivers in [`crate::transfer`] do all I/O.
//!
//! - [`session`]: the control-stream state machine (PAKE → confirm → hello → offer/accept →
//!   finish → complete).
//! - [`lane`]: the data lanes' record writer and checker (entries, chunks, per-file BLAKE3 hash).

pub mod lane;
pub mod session;

pub use lane::{LaneError, LaneEvent, LaneReader, LaneWriter, CHUNK_PAYLOAD_AT};
pub use session::{Channel, Config, Event, Session, SessionError, MAILBOX_LANE};
