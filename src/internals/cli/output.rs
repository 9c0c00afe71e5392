//! What the person (stderr) or the script (`--json` on stdout) sees.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Common;
use crate::api::{millis, Event, ProgressSample, Rate, Summary};
use crate::crypto::Role;
use crate::transfer::survey::Present;
use crate::transfer::{Note, Observer, Progress, Report, TransferError};
use crate::wire::control::Offer;

/// The CLI's observer.
#[derive(Debug)]
pub struct Ui {
    json: bool,
    quiet: bool,
    verbose: bool,
    role: Role,
    progress: Arc<Progress>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Once accepted: the bytes to move, if known.
    total: Option<Option<u64>>,
    /// The offer was a text of this many bytes.
    text: Option<u64>,
    bar: Option<ProgressBar>,
}

impl Ui {
    /// An observer for one command.
    pub fn new(common: &Common, role: Role) -> Arc<Ui> {
        Arc::new(Ui {
            json: common.json,
            quiet: common.quiet,
            verbose: common.verbose > 0,
            role,
            progress: Progress::new(),
            state: Mutex::new(State::default()),
        })
    }

    /// The shared byte counter the transfer updates.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    fn human(&self) -> bool {
        !self.json && !self.quiet
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the display state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the task that moves the progress bar (and, with `--json`, prints a progress
    /// event every second).
    pub fn start_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ui = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n: u64 = 0;
            let mut rate = Rate::default();
            loop {
                tick.tick().await;
                flush_events();
                n += 1;
                let bytes = ui.progress.bytes();
                let state = ui.state();
                if let Some(bar) = &state.bar {
                    bar.set_position(bytes);
                }
                if n % 10 != 0 {
                    continue;
                }
                let per_second = rate.update(bytes, std::time::Instant::now());
                let Some(total) = state.total else { continue };
                let link = ui.progress.link();
                if ui.json {
                    emit(&Event::Progress(ProgressSample::of(&ui.progress, total, per_second)));
                } else if ui.verbose && !ui.quiet && state.bar.is_none() {
                    let of = total.map(|t| format!(" of {}", HumanBytes(t))).unwrap_or_default();
                    eprintln!(
                        "{}{of} at {}/s{}",
                        HumanBytes(bytes),
                        HumanBytes(per_second as u64),
                        link_words(&link)
                    );
                }
            }
        })
    }

    /// Prints the outcome (errors are printed by the caller).
    pub fn finish(&self, result: &Result<Report, TransferError>) {
        flush_events();
        if let Some(bar) = self.state().bar.take() {
            match result {
                Ok(_) => bar.finish_and_clear(),
                Err(_) => bar.abandon(),
            }
        }
        let Ok(report) = result else { return };
        if self.json {
            emit(&Event::Done(Summary::from(report)));
        } else if !self.quiet {
            let verb = if self.role == Role::Sender { "Sent" } else { "Received" };
            if let Some(len) = self.state().text {
                eprintln!("{verb} a text message ({}, {})", HumanBytes(len), report.path.as_str());
                return;
            }
            // The rate of the data itself: waiting for the peer and the key exchange are not
            // throughput, and are told apart below.
            let data_seconds = report.data_seconds();
            let rate = report.bytes as f64 / data_seconds.max(1e-6);
            let moved = match report.path_changes {
                0 => String::new(),
                n => format!(", after {n} change(s) of path"),
            };
            let packed = if report.wire_bytes < report.bytes {
                format!(", compressed to {}", HumanBytes(report.wire_bytes))
            } else {
                String::new()
            };
            let mut kept = String::new();
            if report.reconnects > 0 {
                kept.push_str(&format!("; reconnected {} time(s)", report.reconnects));
            }
            if report.resumed_bytes > 0 {
                kept.push_str(&format!("; {} kept from before", HumanBytes(report.resumed_bytes)));
            }
            if report.refused > 0 {
                kept.push_str(&format!(
                    "; {} entr{} left out (the receiver's file system cannot hold them)",
                    report.refused,
                    if report.refused == 1 { "y" } else { "ies" }
                ));
            }
            if report.skipped_files > 0 {
                kept.push_str(&format!(
                    "; {} file(s) ({}) were already there",
                    report.skipped_files,
                    HumanBytes(report.skipped_bytes)
                ));
            }
            let before = report.seconds - data_seconds;
            if before >= 1.0 {
                kept.push_str(&format!("; {before:.1}s before the data started"));
            }
            if self.verbose {
                let q = &report.quality;
                if let (Some(min), Some(avg)) = (q.rtt_min, q.rtt_mean) {
                    kept.push_str(&format!(
                        "; round trip {:.1} ms at best, {:.1} ms on average; {} of {} packets lost",
                        millis(min),
                        millis(avg),
                        q.lost_packets,
                        q.sent_packets
                    ));
                }
            }
            eprintln!(
                "{verb} {} in {} file(s) in {:.1}s ({}/s, {}{moved}{packed}){kept}",
                HumanBytes(report.bytes),
                report.files,
                data_seconds,
                HumanBytes(rate as u64),
                report.path.as_str()
            );
        }
    }
}

/// The connection in words, for `-v` progress lines.
fn link_words(link: &crate::transfer::Link) -> String {
    match (link.path, link.rtt) {
        (Some(path), Some(rtt)) => format!(
            " ({}, round trip {:.1} ms, {} packets lost)",
            path.as_str(),
            millis(rtt),
            link.lost_packets
        ),
        _ => String::new(),
    }
}

impl Observer for Ui {
    fn note(&self, note: Note<'_>) {
        match &note {
            Note::Offer { offer, .. } => {
                self.state().text = offer.text.as_ref().map(|t| t.len() as u64);
            }
            Note::Accepted { total, .. } => self.state().total = Some(*total),
            _ => {}
        }
        if self.json {
            // `--json` prints the library's events, as they are.
            let event = Event::from_note(&note);
            match note {
                Note::File { .. } => emit_soon(&event),
                _ => emit(&event),
            }
            return;
        }
        match note {
            Note::Code(code) => {
                eprintln!("Code: {code}   (on the other machine: p2p-copy receive {code})");
            }
            Note::Searching { nameplate } => {
                if self.verbose {
                    eprintln!(
                        "Looking for the sender of nameplate {nameplate} on the local network…"
                    );
                }
            }
            Note::Connected { peer, path } => {
                if self.human() {
                    eprintln!("Connected to {peer} ({})", path.as_str());
                }
            }
            Note::Text { text } => show_text(text),
            Note::Secured { verifier } => {
                if self.verbose {
                    eprintln!("Key confirmed; verifier {verifier} (the same on both sides)");
                }
            }
            Note::Offer { offer, present } => {
                if self.human() {
                    let lead = if self.role == Role::Sender { "Offering" } else { "Offered" };
                    eprintln!("{lead}: {}{}", describe(offer), held(offer, present));
                }
            }
            Note::Accepted { total, present } => {
                if self.role == Role::Sender && self.human() && present.bytes > 0 {
                    eprintln!("The receiver has {}", held_short(total.unwrap_or(0), present));
                }
                if self.human() && std::io::stderr().is_terminal() {
                    // A stream's size is not known: bytes and rate only.
                    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                    let template = match total {
                        Some(_) => "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                        None => "{spinner} {bytes} {bytes_per_sec}",
                    };
                    if let Ok(style) = ProgressStyle::with_template(template) {
                        bar.set_style(style);
                    }
                    bar.set_position(present.bytes);
                    self.state().bar = Some(bar);
                }
            }
            Note::Reconnecting { reason, wait } => {
                if !self.quiet {
                    let line = format!(
                        "reconnecting… ({}; trying for up to {}; Ctrl-C keeps what arrived)",
                        crate::transfer::printable(reason),
                        minutes(wait)
                    );
                    match &self.state().bar {
                        Some(bar) => bar.suspend(|| eprintln!("{line}")),
                        None => eprintln!("{line}"),
                    }
                }
            }
            Note::Reconnected => {
                if !self.quiet {
                    eprintln!("Reconnected; going on where the transfer stopped");
                }
            }
            Note::Warning(message) => {
                eprintln!("warning: {}", crate::transfer::printable(&message));
            }
            Note::File { path, bytes, outcome } => {
                if self.verbose && !self.quiet {
                    let word = outcome.as_str();
                    eprintln!(
                        "{}{} {} ({})",
                        word[..1].to_uppercase(),
                        &word[1..],
                        crate::transfer::printable_name(path),
                        HumanBytes(bytes)
                    );
                }
            }
        }
    }

    fn confirm(&self, offer: &Offer, present: Present) -> bool {
        // Every top-level name is shown before a yes, hidden ones called out: a name like
        // `.bashrc` landing in a home directory must never be a surprise.
        const LISTED: usize = 20;
        for name in offer.names.iter().take(LISTED) {
            eprintln!("  {}", crate::transfer::printable_name(name));
        }
        if offer.names.len() > LISTED {
            eprintln!("  … and {} more", offer.names.len() - LISTED);
        }
        let hidden: Vec<String> = offer
            .names
            .iter()
            .filter(|n| n.starts_with(b"."))
            .map(|n| crate::transfer::printable_name(n))
            .collect();
        if !hidden.is_empty() {
            eprintln!("warning: the offer includes hidden names: {}", hidden.join(", "));
        }
        let here = if present.bytes > 0 {
            format!(" ({} already here)", HumanBytes(present.bytes))
        } else {
            String::new()
        };
        eprint!("Accept {}{here}? [y/N] ", describe_short(offer));
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    }
}

fn minutes(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s >= 120 && s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s}s"),
    }
}

fn describe_short(offer: &Offer) -> String {
    crate::transfer::describe_offer(offer)
}

/// "; 1.2 GiB of 3.0 GiB already here (…)" when anything is.
fn held(offer: &Offer, present: Present) -> String {
    if present.bytes == 0 && present.files == 0 {
        return String::new();
    }
    format!("; {}", held_short(offer.bytes, present))
}

fn held_short(total: u64, present: Present) -> String {
    let mut parts = Vec::new();
    if present.files > 0 {
        parts.push(format!("{} file(s) whole", present.files));
    }
    if present.partial > 0 {
        parts.push(format!("{} partial", present.partial));
    }
    format!(
        "{} of {} already here ({})",
        HumanBytes(present.bytes),
        HumanBytes(total),
        parts.join(", ")
    )
}

fn describe(offer: &Offer) -> String {
    const SHOWN: usize = 5;
    if offer.text.is_some() {
        return describe_short(offer);
    }
    let shown: Vec<_> =
        offer.names.iter().take(SHOWN).map(|n| crate::transfer::fs::shown(n)).collect();
    let mut names = crate::transfer::printable(&shown.join(", "));
    if offer.names.len() > SHOWN {
        names.push_str(&format!(" and {} more", offer.names.len() - SHOWN));
    }
    format!("{} ({names})", describe_short(offer))
}

/// Prints an error: a JSON event with `--json`, and always a line on stderr.
pub fn report_error(common: &Common, e: &TransferError) {
    if common.json {
        emit(&Event::Error { kind: e.kind, message: e.message.clone() });
    }
    eprintln!("{}", error_line(e));
}

/// The line an error is printed as. Its message may hold text from the network (a node's
/// refusal, a QUIC close reason, a peer's report), so it is escaped here, where it is shown,
/// whatever it came from.
fn error_line(e: &TransferError) -> String {
    format!("error: {}", crate::transfer::printable(&e.message))
}

/// A received text on stdout: exactly as sent into a pipe or file; escaped line by line (and
/// ended with a newline) on a terminal, where it could otherwise drive the terminal.
fn show_text(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        let lines: Vec<String> = text.lines().map(crate::transfer::printable).collect();
        let _ = writeln!(out, "{}", lines.join("\n"));
    } else {
        let _ = out.write_all(text.as_bytes());
    }
    let _ = out.flush();
}

/// Set when stdout carries the received file (`receive --stdout`): the events go to stderr.
static EVENTS_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--json` events go to stderr from now on: stdout carries data.
pub fn events_to_stderr() {
    EVENTS_TO_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Event lines not written yet: `file` events wait here for the next write, so that a tree of
/// many small files costs one write per batch of lines, not one per file (at 100,000 files, a
/// write each took a tenth of the receiver's CPU). They go out with the next other event, when
/// [`HELD_BYTES`] have gathered, and at the latest at the next tick of the progress ticker
/// ([`flush_events`], every 100 ms). Every line is appended and written under this lock, so
/// lines keep their order and never interleave.
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Held lines are written once there are this many bytes of them.
const HELD_BYTES: usize = 16 * 1024;

/// Prints an event line now, after any held ones.
fn emit(event: &Event) {
    print_event(event, true);
}

/// Prints an event line with the next write (see [`HELD`]).
fn emit_soon(event: &Event) {
    print_event(event, false);
}

fn print_event(event: &Event, now: bool) {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    held.extend_from_slice(event.to_json().as_bytes());
    held.push(b'\n');
    if now || held.len() >= HELD_BYTES {
        write_events(&mut held);
    }
}

/// Writes the held event lines, if any.
pub fn flush_events() {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if !held.is_empty() {
        write_events(&mut held);
    }
}

fn write_events(held: &mut Vec<u8>) {
    let _ = if EVENTS_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
        let mut err = std::io::stderr().lock();
        err.write_all(held).and_then(|()| err.flush())
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(held).and_then(|()| out.flush())
    };
    held.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// Whatever reaches an error line, from a node, a QUIC peer or anywhere else, cannot
    /// drive the terminal: no escape, bell, carriage return or bidi override survives.
    #[test]
    fn error_lines_escape_what_the_network_said() {
        let hostile = "\x1b]0;PWNED\x07\x1b[2K\r\x1b[32mSent 1.0 GiB\u{202e}txt.exe\u{200b}";
        let node = p2p_copy_rendezvous::client::ClientError::Refused {
            code: p2p_copy_rendezvous::wire::ErrorCode::Busy,
            message: hostile.into(),
        };
        let close = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
            frame_type: None,
            reason: hostile.as_bytes().to_vec().into(),
        });
        for e in [
            TransferError::new(ErrorKind::Network, format!("rendezvous node n: {node}")),
            crate::transfer::connection_lost(&close),
        ] {
            let line = error_line(&e);
            assert!(line.contains("PWNED"), "the text is still shown: {line}");
            assert!(
                !line.chars().any(|c| c.is_control() || ('\u{2000}'..='\u{206f}').contains(&c)),
                "{line:?}"
            );
            assert!(line.contains("\\u{1b}") && line.contains("\\u{202e}"), "{line}");
        }
    }
}
