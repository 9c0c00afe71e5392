//! The implementation behind [`crate::Sender`] and [`crate::Receiver`]: **unstable**, public
//! only so that the command line, the integration tests, the fuzzers and the benchmarks can
//! reach it. Nothing here is covered by semantic versioning; a program should use the crate
//! root's API instead.
//!
//! Layout, bottom up:
//! - [`code`], [`crypto`], [`compress`] — pure: code generation/parsing, SPAKE2 key schedule,
//!   record sealing, chunk compression.
//! - [`wire`] — codecs for everything that crosses the network; never panics on peer bytes.
//! - [`proto`] — the sans-IO session state machine (PAKE → confirm → hello → offer/accept →
//!   transfer → verify → done) and the per-lane data state machine.
//! - [`net`] — QUIC endpoints with pinned, channel-bound certificates; LAN discovery; the
//!   rendezvous client, hole punching and the relay.
//! - [`transfer`] — the tokio driver: walking the source tree, safe writes on the receiver,
//!   progress.
//! - [`cli`] — the `p2p-copy` command line; `main.rs` only calls [`cli::main`].

pub mod cli;
pub mod code;
pub mod compress;
pub mod crypto;
pub mod net;
pub mod proto;
pub mod transfer;
pub mod wire;
