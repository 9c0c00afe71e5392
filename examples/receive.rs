//! Receives with the library: into a directory (asking nobody: the offer is shown, and
//! accepted when under a size), or a text, printed. Events go to stderr as JSON lines.
//!
//! ```text
//! cargo run --example receive -- CODE [DIR]
//! ```

use p2p_copy::{printable, Receiver};

/// The largest offer this example accepts.
const LIMIT: u64 = 10 << 30;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (code, dir) = match args.as_slice() {
        [code] => (code.clone(), ".".to_owned()),
        [code, dir] => (code.clone(), dir.clone()),
        _ => {
            eprintln!("usage: receive CODE [DIR]");
            return std::process::ExitCode::from(2);
        }
    };
    let receiver = Receiver::new(code).into_dir(dir).on_offer(|offer| {
        // Names come from the other side: escaped before they reach the terminal.
        let names: Vec<String> = offer.names.iter().map(|n| printable(n)).collect();
        eprintln!("Offered {} file(s), {} bytes: {}", offer.files, offer.bytes, names.join(", "));
        // A stream's size is not known until it ends.
        !offer.stream && offer.bytes <= LIMIT
    });
    let mut transfer = match receiver.start() {
        Ok(transfer) => transfer,
        Err(e) => {
            eprintln!("error: {}", printable(&e.message));
            return std::process::ExitCode::from(e.kind.exit_code());
        }
    };
    while let Some(event) = transfer.next_event().await {
        // JSON escapes only some control characters: the peer's strings are made safe for a
        // terminal too.
        eprintln!("{}", printable(&event.to_json()));
    }
    match transfer.wait().await {
        Ok(finished) => {
            if let Some(text) = finished.text {
                println!("{}", printable(&text));
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", printable(&e.message));
            std::process::ExitCode::from(e.kind.exit_code())
        }
    }
}
