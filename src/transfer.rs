//! The tokio driver around the protocol: file system and streams.

pub mod fs;
