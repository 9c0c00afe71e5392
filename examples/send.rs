//! Sends files, directories or a text with the library, and prints each event as the JSON
//! line `p2p-copy --json` would.
//!
//! ```text
//! cargo run --example send -- PATH...        # files and directories
//! cargo run --example send -- --text HELLO   # a text message
//! ```
//!
//! Receive with `p2p-copy receive CODE` or `cargo run --example receive -- CODE`.

use p2p_copy::{printable, Event, Sender};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sender = match args.as_slice() {
        [flag, text] if flag == "--text" => Sender::text(text.as_str()),
        [] => {
            eprintln!("usage: send PATH... | send --text TEXT");
            return std::process::ExitCode::from(2);
        }
        paths => Sender::paths(paths),
    };
    let mut transfer = match sender.start() {
        Ok(transfer) => transfer,
        Err(e) => {
            eprintln!("error: {}", printable(&e.message));
            return std::process::ExitCode::from(e.kind.exit_code());
        }
    };
    // Known at once on a local network; through a node, once it allocated the nameplate.
    if let Some(code) = transfer.wait_code().await {
        eprintln!("On the other machine: p2p-copy receive {code}");
    }
    // Ctrl-C stops the transfer cleanly: the receiver is told, and keeps what arrived.
    loop {
        tokio::select! {
            event = transfer.next_event() => match event {
                // JSON escapes only some control characters: the peer's strings are made
                // safe for a terminal too.
                Some(event @ (Event::Done(_) | Event::Error { .. })) => {
                    println!("{}", printable(&event.to_json()));
                    break;
                }
                Some(event) => println!("{}", printable(&event.to_json())),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => transfer.stop(),
        }
    }
    match transfer.wait().await {
        Ok(finished) => {
            let r = &finished.report;
            eprintln!("Sent {} bytes in {} file(s) in {:.1}s", r.bytes, r.files, r.seconds);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", p2p_copy::printable(&e.message));
            std::process::ExitCode::from(e.kind.exit_code())
        }
    }
}
