//! Shared fixtures of the integration tests: a temporary directory, a discovery port and a code
//! per test, the real binary run as child processes with a hard timeout, tree builders and a
//! byte-for-byte tree comparison.
//!
//! Hermetic: every test gets its own discovery port (so parallel tests never hear each other)
//! and its own random code; data comes from a seeded generator whose seed is printed (set
//! `P2P_COPY_TEST_SEED` to replay one).

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2p_copy::internals::code::Code;
use rand::rngs::OsRng;
use serde_json::Value;

mod tree;
pub use tree::*;
pub mod netns;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
/// A child process that has not exited after this long is killed and the test fails.
pub const PROC_TIMEOUT: Duration = Duration::from_secs(120);

/// One test's world: a temporary directory, a discovery port, a code, a seeded generator.
pub struct Fixture {
    /// Removed on drop.
    pub dir: tempfile::TempDir,
    /// UDP port of LAN discovery, unique to this test.
    pub port: u16,
    /// The code both sides use.
    pub code: String,
    /// Seeded data generator.
    pub rng: XorShift,
}

impl Fixture {
    pub fn new() -> Fixture {
        let seed = seed();
        let dir = tempfile::Builder::new().prefix("p2p-copy-test").tempdir().expect("tempdir");
        let port = discovery_port();
        let code = fresh_code();
        eprintln!(
            "fixture: seed={seed} (P2P_COPY_TEST_SEED) port={port} dir={}",
            dir.path().display()
        );
        Fixture { dir, port, code, rng: XorShift::new(seed) }
    }

    /// The test's root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path below the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The binary with this fixture's environment: every inherited `P2P_COPY_*` and `RUST_LOG`
    /// removed, the settings directory inside the fixture, the discovery port set, stdin null, stdout and stderr piped. `prefix` runs it
    /// through another program (`ip netns exec NS`).
    pub fn command<S: AsRef<OsStr>>(
        &self,
        prefix: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("P2P_COPY_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        // No settings file of the person running the tests applies.
        cmd.env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"))
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"))
            .env("XDG_STATE_HOME", self.dir.path().join("xdg-state"))
            .env("P2P_COPY_DISCOVERY_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawns the binary (see [`Fixture::command`]).
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        name: &str,
        prefix: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Proc {
        Proc::spawn(name, self.command(prefix, args))
    }

    /// `send --json --code CODE ARGS…`, returned once it printed its code (it then waits for
    /// the receiver).
    pub fn send<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Proc {
        self.send_in(&[], args)
    }

    /// [`Fixture::send`] through a prefix.
    pub fn send_in<S: AsRef<OsStr>>(
        &self,
        prefix: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Proc {
        let mut all: Vec<OsString> =
            ["send", "--json", "--code", &self.code].map(OsString::from).to_vec();
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let mut p = self.spawn("sender", prefix, all);
        p.wait_event("code");
        p
    }

    /// `receive --json ARGS… CODE`.
    pub fn receive<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Proc {
        self.receive_in(&[], args)
    }

    /// [`Fixture::receive`] through a prefix.
    pub fn receive_in<S: AsRef<OsStr>>(
        &self,
        prefix: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Proc {
        let mut all: Vec<OsString> = vec!["receive".into(), "--json".into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        all.push(self.code.clone().into());
        self.spawn("receiver", prefix, all)
    }

    /// Runs a sender and a receiver to the end; returns (sender, receiver).
    pub fn transfer(&self, send_args: &[&OsStr], receive_args: &[&OsStr]) -> (Outcome, Outcome) {
        let s = self.send(send_args);
        let r = self.receive(receive_args);
        finish_pair(s, r)
    }
}

/// A fresh code with a random nameplate, from the library.
pub fn fresh_code() -> String {
    Code::generate(Code::random_nameplate(&mut OsRng), 3, &mut OsRng).expect("code").to_string()
}

/// A code with the same nameplate as `code` and another secret.
pub fn other_code(code: &str) -> String {
    let nameplate = Code::parse(code).expect("code").nameplate();
    loop {
        let other = Code::generate(nameplate, 3, &mut OsRng).expect("code").to_string();
        if other != code {
            return other;
        }
    }
}

/// A discovery port for one test: below the ephemeral range (so no QUIC socket holds it),
/// different for every fixture of this process, and checked free right now.
fn discovery_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let spread = std::process::id().wrapping_mul(7).wrapping_add(n.wrapping_mul(131)) % 12_000;
        let port = 20_000 + spread as u16;
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

fn seed() -> u64 {
    if let Some(s) = std::env::var("P2P_COPY_TEST_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

/// xorshift64*: fast, seeded test data.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A running child: its output is collected by two threads and also delivered line by line,
/// so a test can wait for a line. Killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
    out: Arc<Mutex<(String, String)>>,
    readers: Vec<JoinHandle<()>>,
    deadline: Instant,
    /// The highest `VmHWM` (peak resident set, KiB) seen while it ran, sampled every 5 ms.
    peak: Arc<std::sync::atomic::AtomicU64>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child =
            cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let out = Arc::new(Mutex::new((String::new(), String::new())));
        let (tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        // A test that redirected stdout (to a file) collects stderr only.
        let mut pipes: Vec<(Stream, Box<dyn Read + Send>)> = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            pipes.push((Stream::Stdout, Box::new(stdout)));
        }
        pipes.push((Stream::Stderr, Box::new(child.stderr.take().expect("stderr piped"))));
        for (which, pipe) in pipes {
            let (tx, out) = (tx.clone(), out.clone());
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut raw = Vec::new();
                while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&raw).into_owned();
                    raw.clear();
                    {
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        match which {
                            Stream::Stdout => o.0.push_str(&line),
                            Stream::Stderr => o.1.push_str(&line),
                        }
                    }
                    let _ = tx.send((which, line.trim_end().to_owned()));
                }
            }));
        }
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (pid, seen) = (child.id(), peak.clone());
        // Samples until the process is gone (or a zombie, which has no memory to show).
        std::thread::spawn(move || {
            while let Some(kib) = peak_rss_kib(pid) {
                seen.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            out,
            readers,
            deadline: Instant::now() + PROC_TIMEOUT,
            peak,
        }
    }

    /// The child's stdin, if the command piped it (once).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Moves the hard deadline to `limit` from now (for tests that wait on long timeouts).
    pub fn with_deadline(mut self, limit: Duration) -> Proc {
        self.deadline = Instant::now() + limit;
        self
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output_so_far(&self) -> String {
        let o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        format!("--- {} stdout ---\n{}--- {} stderr ---\n{}", self.name, o.0, self.name, o.1)
    }

    /// Waits for a line satisfying `pred` (within `timeout` and the process deadline); panics
    /// with the output if the process ends or the time runs out first.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(Stream, &str) -> bool,
    ) -> String {
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((which, line)) if pred(which, &line) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "{} printed no awaited line within {timeout:?}\n{}",
                        self.name,
                        self.output_so_far()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{} ended ({status:?}) before the awaited line\n{}",
                        self.name,
                        self.output_so_far()
                    );
                }
            }
        }
    }

    /// Waits for the `--json` event named `event` on stdout and returns it.
    pub fn wait_event(&mut self, event: &str) -> Value {
        self.wait_event_where(event, |_| true)
    }

    /// Waits for a `--json` event named `event` that satisfies `pred`.
    pub fn wait_event_where(&mut self, event: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let line = self.wait_line(Duration::from_secs(90), |which, line| {
            which == Stream::Stdout
                && serde_json::from_str::<Value>(line)
                    .is_ok_and(|v| v["event"] == event && pred(&v))
        });
        serde_json::from_str(&line).expect("checked above")
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit (killing it and failing at the deadline or after `timeout`).
    pub fn finish_within(mut self, timeout: Duration) -> Outcome {
        let until = (Instant::now() + timeout).min(self.deadline);
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return self.outcome(status, started.elapsed()),
                Ok(None) if Instant::now() >= until => {
                    let _ = self.child.kill();
                    panic!(
                        "{} did not exit within {timeout:?}; killed\n{}",
                        self.name,
                        self.output_so_far()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    /// Waits for the exit within the process deadline.
    pub fn finish(self) -> Outcome {
        self.finish_within(PROC_TIMEOUT)
    }

    fn outcome(&mut self, status: ExitStatus, waited: Duration) -> Outcome {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let peak = self.peak.load(std::sync::atomic::Ordering::Relaxed);
        Outcome {
            name: self.name.clone(),
            status,
            stdout: o.0.clone(),
            stderr: o.1.clone(),
            waited,
            peak_rss_kib: (peak > 0).then_some(peak),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for both; if either overruns its deadline, kills both and fails with both outputs.
pub fn finish_pair(mut a: Proc, mut b: Proc) -> (Outcome, Outcome) {
    let until = a.deadline.max(b.deadline);
    while Instant::now() < until {
        if !a.running() && !b.running() {
            return (a.finish(), b.finish());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, _) = (a.child.kill(), b.child.kill());
    panic!(
        "transfer did not end within {PROC_TIMEOUT:?}\n{}\n{}",
        a.output_so_far(),
        b.output_so_far()
    );
}

/// The peak resident set (`VmHWM`, KiB) of process `pid`; `None` once it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// How a child ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Time from the call that waited to the exit.
    pub waited: Duration,
    /// Its peak resident set in KiB (`VmHWM`, sampled every 5 ms while it ran: the last
    /// milliseconds before the exit may be missed), if it could be read.
    pub peak_rss_kib: Option<u64>,
}

impl Outcome {
    /// The exit code (None if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The `--json` events.
    pub fn events(&self) -> Vec<Value> {
        self.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The last event named `name`.
    pub fn event(&self, name: &str) -> Option<Value> {
        self.events().into_iter().rev().find(|e| e["event"] == name)
    }

    /// stderr and the `message` of the error event, lowercased.
    pub fn messages(&self) -> String {
        let json = self.event("error").map(|e| e["message"].as_str().unwrap_or("").to_owned());
        format!("{}\n{}", self.stderr, json.unwrap_or_default()).to_lowercase()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--- {} exited with {} ---\n--- stdout ---\n{}--- stderr ---\n{}",
            self.name, self.status, self.stdout, self.stderr
        )
    }
}

/// Asserts every outcome's exit code; on a mismatch prints all of them.
pub fn assert_exits(expected: &[(&Outcome, i32)]) {
    if expected.iter().any(|(o, code)| o.code() != Some(*code)) {
        let want: Vec<String> = expected.iter().map(|(o, c)| format!("{}={c}", o.name)).collect();
        let all: Vec<String> = expected.iter().map(|(o, _)| o.to_string()).collect();
        panic!("expected exit codes {}\n{}", want.join(", "), all.join("\n"));
    }
}

/// Asserts that `haystack` (lowercased) contains every needle, showing `o` on failure.
pub fn assert_says(o: &Outcome, needles: &[&str]) {
    let text = o.messages();
    for n in needles {
        assert!(text.contains(&n.to_lowercase()), "{} should say {n:?}\n{o}", o.name);
    }
}

/// Checks the `done` event: the bytes and files counts, and that the path was direct.
pub fn assert_done(o: &Outcome, bytes: u64, files: u64) -> Value {
    assert_done_via(o, bytes, files, "direct")
}

/// Checks the `done` event: the bytes and files counts, and the path (`direct` or `relay`).
pub fn assert_done_via(o: &Outcome, bytes: u64, files: u64, path: &str) -> Value {
    let done = o.event("done").unwrap_or_else(|| panic!("no done event\n{o}"));
    assert_eq!(done["bytes"], bytes, "done.bytes\n{o}");
    assert_eq!(done["files"], files, "done.files\n{o}");
    assert_eq!(done["path"], path, "done.path\n{o}");
    assert!(done["seconds"].as_f64().is_some_and(|s| s > 0.0), "done.seconds\n{o}");
    done
}

// ---------------------------------------------------------------------------------------------
// Privileged environments

/// Whether the test may use root-only facilities. Without them: under `CI=true` the test
/// fails with `why`; otherwise it prints the reason and the caller returns early.
pub fn privileged(what: &str) -> bool {
    let root = fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if root {
        return true;
    }
    skip_or_fail(&format!("{what} needs root"));
    false
}

/// Fails under `CI=true`, else prints that the test is skipped.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason} (CI=true: this test must run)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Runs a setup command; `Err` with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// As the real sender does: the first incoming connection on `endpoint` that opens a control
/// stream, each attempt given 10 s, all of it `within` (a test fails past it).
pub async fn first_session(
    endpoint: &quinn::Endpoint,
    within: Duration,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let mut pending = tokio::task::JoinSet::new();
    tokio::time::timeout(within, async {
        loop {
            tokio::select! {
                Some(incoming) = endpoint.accept() => {
                    pending.spawn(async move {
                        let conn = incoming.await.ok()?;
                        let (send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await.ok()?.ok()?;
                        Some((conn, send, recv))
                    });
                }
                Some(done) = pending.join_next(), if !pending.is_empty() => {
                    if let Ok(Some(session)) = done {
                        return session;
                    }
                }
            }
        }
    })
    .await
    .expect("the receiver never connected")
}

/// An exFAT file system mounted through FUSE (`exfat-fuse` on a loop device): a destination
/// that refuses names Unix allows (`:`, `?`, bytes that are not UTF-8) and has no links, as a
/// USB stick has. Unmounted and detached when dropped.
pub struct Exfat {
    /// Where it is mounted.
    pub mount: PathBuf,
    device: String,
}

impl Exfat {
    /// A 64 MiB exFAT file system mounted at `dir/mnt`; `None` (after [`skip_or_fail`]) without
    /// root or the tools (`mkfs.exfat`, `losetup`, `mount.exfat-fuse`).
    pub fn mount(dir: &Path) -> Option<Exfat> {
        if !privileged("an exFAT mount") {
            return None;
        }
        let image = dir.join("exfat.img");
        let mount = dir.join("mnt");
        fs::create_dir_all(&mount).expect("mount point");
        fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("image");
        let setup = || -> Result<String, String> {
            run("mkfs.exfat", &[&image.to_string_lossy()])?;
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&image)
                .output()
                .map_err(|e| format!("cannot run losetup: {e}"))?;
            let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.status.success() || device.is_empty() {
                return Err(format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            if let Err(e) = run("mount.exfat-fuse", &[&device, &mount.to_string_lossy()]) {
                let _ = run("losetup", &["-d", &device]);
                return Err(e);
            }
            Ok(device)
        };
        match setup() {
            Ok(device) => Some(Exfat { mount, device }),
            Err(e) => {
                skip_or_fail(&format!(
                    "cannot mount exFAT (install exfat-fuse and exfatprogs): {e}"
                ));
                None
            }
        }
    }
}

impl Drop for Exfat {
    fn drop(&mut self) {
        let mount = self.mount.to_string_lossy().into_owned();
        if run("umount", &[&mount]).is_err() {
            let _ = run("umount", &["-l", &mount]);
        }
        let _ = run("losetup", &["-d", &self.device]);
    }
}
