//! The p2p-copy rendezvous node.
//!
//! Two peers that cannot find each other on a LAN meet here: the sender allocates a short
//! *nameplate* (or claims the one in a pre-shared code), the receiver claims it, and the node
//! passes opaque messages between exactly these two sides (the mailbox) — the PAKE and the
//! sealed hello travel this way. The node also tells each client the address it sees, and
//! relays the data when a direct connection fails. It never holds a key.
//!
//! - [`wire`]: the client ↔ node messages and their framing. Pure, never panics on input.
//! - [`table`]: the sans-IO nameplate and mailbox table: allocation, claims, expiry,
//!   per-source rate limits. Time is passed in.
//! - [`auth`]: the access token proved without sending it (bound to the TLS session), and
//!   certificate fingerprints for pinning a node.
//! - [`client`]: a client session with a node, on the caller's QUIC endpoint.
//! - [`tls`]: certificate verification shared with p2p-copy's peers.
//! - `server` (feature `server`): the server driving the table, on QUIC and TCP.
//! - `relay` (feature `server`): pairs relay streams by token and splices them.
//! - `tcp` (feature `server`): the TCP (TLS) listener for clients without UDP.
//! - `config` (feature `server`): the node's settings from flags, a TOML file and defaults.
//! - `metrics` (feature `server`): counters, and the HTTP listener for metrics and health.

pub mod auth;
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod relay;
#[cfg(feature = "server")]
pub mod server;
pub mod table;
#[cfg(feature = "server")]
pub mod tcp;
pub mod tls;
pub mod wire;
