//! `p2p-copy code`: print a fresh code.

use clap::Args as ClapArgs;

use crate::code::{Code, DEFAULT_WORDS};
use crate::transfer::TransferError;

/// Arguments of `p2p-copy code`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Secret words in the code (3 words = 24 bits; each word adds 8).
    #[arg(long, default_value_t = DEFAULT_WORDS, env = "P2P_COPY_CODE_WORDS")]
    pub code_words: usize,
}

/// Prints one code on stdout.
pub fn run(args: Args) -> Result<(), TransferError> {
    match generate(args.code_words) {
        Ok(code) => {
            println!("{code}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(e)
        }
    }
}

/// A fresh code with a random LAN nameplate.
pub fn generate(words: usize) -> Result<Code, TransferError> {
    crate::api::fresh_code(words)
}
