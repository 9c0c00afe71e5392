//! p2p-copy: move files and directories between two machines, end-to-end encrypted.
//!
//! A sender offers paths and prints a short code; a receiver types the code. Both derive a
//! shared key from it with SPAKE2, meet on the local network (multicast discovery) and run the
//! manifest-and-chunk protocol over a QUIC connection whose certificates are bound to that key.
//!
//! Layout, bottom up:
//! - [`code`], [`crypto`], [`compress`] — pure: code generation/parsing, SPAKE2 key schedule,
//!   record sealing, chunk compression.
//! - [`wire`] — codecs for everything that crosses the network; never panics on peer bytes.
//! - [`proto`] — the sans-IO session state machine (PAKE → confirm → hello → offer/accept →
//!   transfer → verify → done) and the per-lane data state machine.
//! - [`net`] — QUIC endpoints with pinned, channel-bound certificates; LAN discovery.
//! - [`transfer`] — the tokio driver: walking the source tree, safe writes on the receiver,
//!   progress events.
//! - [`cli`] — the `p2p-copy` command line; `main.rs` only calls [`cli::main`].
//! - [`error`] — error kinds shared by the layers and their documented exit codes.

pub mod cli;
pub mod code;
pub mod compress;
pub mod crypto;
pub mod error;
pub mod net;
pub mod proto;
pub mod transfer;
pub mod wire;
