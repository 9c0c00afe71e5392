//! What scripts reach for (issue 15), through the built binary: the code from a file or from
//! stdin, the manual page, sizes with suffixes, and each side's own wait variable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::ffi::OsStr;

use serde_json::Value;

use util::*;

/// The code travels in a file on both sides (`--code-file`), and a receiver given no code
/// whose stdin is not a terminal reads it from stdin's first line.
#[test]
fn the_code_comes_from_a_file_or_from_stdin() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 100_000, &mut fx.rng);
    let code_file = fx.path("code.txt");
    write_file(&code_file, format!("{}\nanything after the first line\n", fx.code).as_bytes());

    for (i, via_stdin) in [false, true].into_iter().enumerate() {
        let out = fx.path(&format!("out{i}"));
        let sender = fx.spawn(
            "sender",
            &[],
            [
                OsStr::new("send"),
                OsStr::new("--json"),
                OsStr::new("--code-file"),
                code_file.as_os_str(),
                src.as_os_str(),
            ],
        );
        let mut args = vec![OsStr::new("receive"), OsStr::new("--json"), OsStr::new("--yes")];
        args.extend([OsStr::new("--out"), out.as_os_str()]);
        let mut cmd = if via_stdin {
            let mut cmd = fx.command(&[], &args);
            cmd.stdin(std::fs::File::open(&code_file).unwrap());
            cmd
        } else {
            args.extend([OsStr::new("--code-file"), code_file.as_os_str()]);
            fx.command(&[], &args)
        };
        cmd.env_remove("P2P_COPY_CODE");
        let receiver = Proc::spawn("receiver", cmd);
        let (s, r) = finish_pair(sender, receiver);
        assert_exits(&[(&s, 0), (&r, 0)]);
        assert_eq!(std::fs::read(out.join("doc.bin")).unwrap(), std::fs::read(&src).unwrap());
    }

    // A code file that holds no code is a usage error naming it.
    let empty = fx.path("empty.txt");
    write_file(&empty, b"\n\n");
    let o = fx
        .spawn(
            "receiver",
            &[],
            [OsStr::new("receive"), OsStr::new("--code-file"), empty.as_os_str()],
        )
        .finish();
    assert_exits(&[(&o, 2)]);
    assert_says(&o, &["holds no code", "empty.txt"]);
}

/// `p2p-copy man` prints roff for the command and, given one, for a subcommand.
#[test]
fn man_prints_the_manual_pages() {
    let fx = Fixture::new();
    let top = fx.spawn("man", &[], ["man"]).finish();
    assert_exits(&[(&top, 0)]);
    assert!(top.stdout.starts_with(".ie") || top.stdout.contains(".TH p2p-copy"), "{top}");
    assert!(top.stdout.contains("receive") && top.stdout.contains("rendezvous"), "{top}");
    let send = fx.spawn("man", &[], ["man", "send"]).finish();
    assert_exits(&[(&send, 0)]);
    assert!(send.stdout.contains(".TH p2p-copy-send"), "{send}");
    assert!(send.stdout.contains(r"\-\-code\-file"), "options are listed\n{send}");
    let bad = fx.spawn("man", &[], ["man", "nosuch"]).finish();
    assert_exits(&[(&bad, 2)]);
}

/// `--chunk-size` takes suffixes like `--window`, and refuses what is out of range clearly.
#[test]
fn chunk_size_takes_suffixes() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 300_000, &mut fx.rng);
    let out = fx.path("out");
    let (s, r) = fx.transfer(
        &[OsStr::new("--chunk-size"), OsStr::new("64K"), src.as_os_str()],
        &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()],
    );
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(std::fs::read(out.join("doc.bin")).unwrap(), std::fs::read(&src).unwrap());
    let o = fx
        .spawn(
            "sender",
            &[],
            [OsStr::new("send"), OsStr::new("--chunk-size"), OsStr::new("1K"), src.as_os_str()],
        )
        .finish();
    assert_exits(&[(&o, 2)]);
    assert_says(&o, &["outside 16k to 4m"]);
}

/// Each side has its own wait variable: a value only `send` accepts does not break
/// `receive`, and `receive` checks its own.
#[test]
fn each_side_has_its_own_wait_variable() {
    let fx = Fixture::new();
    let out = fx.path("out");
    let mut cmd = fx.command(&[], [OsStr::new("receive"), OsStr::new("--out"), out.as_os_str()]);
    cmd.arg(&fx.code).env("P2P_COPY_SEND_WAIT", "100000").env("P2P_COPY_RECEIVE_WAIT", "1");
    let o = Proc::spawn("receiver", cmd).finish();
    assert_exits(&[(&o, 7)]);
    assert_says(&o, &["no sender"]);
    let mut cmd = fx.command(&[], [OsStr::new("receive"), OsStr::new("--out"), out.as_os_str()]);
    cmd.arg(&fx.code).env("P2P_COPY_RECEIVE_WAIT", "100000");
    let o = Proc::spawn("receiver", cmd).finish();
    assert_exits(&[(&o, 2)]);
    assert_says(&o, &["100000"]);
}

/// The sender's summary rate is the data's (issue 15; feature check B4): a receiver that
/// comes two seconds late does not make the rate look slow, and the summary says how long it
/// took before the data started.
#[test]
fn the_summary_rate_leaves_out_the_wait_for_the_receiver() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 2_000_000, &mut fx.rng);
    let sender = fx.spawn(
        "sender",
        &[],
        [OsStr::new("send"), OsStr::new("--code"), OsStr::new(&fx.code), src.as_os_str()],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = fx.path("out");
    let receiver = fx.receive([OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]);
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_says(&s, &["sent", "before the data started"]);
    let done = r.event("done").expect("done");
    let (all, data) = (done["seconds"].as_f64().unwrap(), done["data_seconds"].as_f64().unwrap());
    assert!(data <= all, "{r}");
}

/// A name with a right-to-left override arrives unchanged and is never printed raw (finding
/// 11): the receiver's human output shows it escaped.
#[test]
fn a_name_with_bidi_controls_arrives_intact_and_is_shown_escaped() {
    let fx = Fixture::new();
    let name = "invoice\u{202e}fdp.exe";
    let src = fx.path(&format!("src/{name}"));
    write_file(&src, b"not what it seems");
    let out = fx.path("out");
    let sender = fx.send([src.as_os_str()]);
    let mut cmd = fx.command(&[], [OsStr::new("receive"), OsStr::new("--yes"), OsStr::new("-v")]);
    cmd.args([OsStr::new("--out"), out.as_os_str(), OsStr::new(&fx.code)]);
    let receiver = Proc::spawn("receiver", cmd);
    let (s, r) = finish_pair(sender, receiver);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(std::fs::read(out.join(name)).unwrap(), b"not what it seems");
    assert!(r.stderr.contains(r"invoice\u{202e}fdp.exe"), "the name is shown, escaped\n{r}");
    assert!(!r.stderr.contains('\u{202e}'), "a raw override reached the terminal\n{r}");
    assert!(!s.stderr.contains('\u{202e}'), "a raw override reached the terminal\n{s}");
}

/// Sides that meet in different ways (one on the LAN, one through a node) are told that this
/// may be why nobody answered.
#[test]
fn a_lan_receiver_that_finds_nobody_hints_at_the_other_mode() {
    let fx = Fixture::new();
    let out = fx.path("out");
    let r = fx
        .receive([OsStr::new("--wait"), OsStr::new("1"), OsStr::new("--out"), out.as_os_str()])
        .finish();
    assert_exits(&[(&r, 7)]);
    assert_says(&r, &["no sender", "--rendezvous"]);
}

/// `send --exclude` leaves out what matches (gitignore-style, relative to the sent directory),
/// repeatable; the receiver gets exactly the rest.
#[test]
fn exclude_leaves_out_what_matches() {
    let mut fx = Fixture::new();
    let tree = fx.path("src/proj");
    for (f, size) in [
        ("main.rs", 100),
        ("notes.log", 50),
        ("cache/blob", 4000),
        ("sub/x.log", 10),
        ("sub/y.txt", 20),
    ] {
        random_file(&tree.join(f), size, &mut fx.rng);
    }
    let out = fx.path("out");
    let (s, r) = fx.transfer(
        &[
            OsStr::new("--exclude"),
            OsStr::new("*.log"),
            OsStr::new("--exclude"),
            OsStr::new("cache/"),
            tree.as_os_str(),
        ],
        &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()],
    );
    assert_exits(&[(&s, 0), (&r, 0)]);
    let mut got: Vec<String> = list_all(&out).iter().map(|p| p.display().to_string()).collect();
    got.sort();
    assert_eq!(got, ["proj", "proj/main.rs", "proj/sub", "proj/sub/y.txt"]);
    assert_done(&r, 120, 2);
    let bad = fx
        .spawn(
            "sender",
            &[],
            [OsStr::new("send"), OsStr::new("--exclude"), OsStr::new("{a,b"), tree.as_os_str()],
        )
        .finish();
    assert_exits(&[(&bad, 2)]);
    assert_says(&bad, &["bad --exclude pattern"]);
}

/// `--limit-rate` on either side: the transfer completes with the same bytes (what rate it
/// keeps is measured in docs/benchmarks.md, not asserted here), `0` means no limit, and a
/// rate that does not parse is a usage error.
#[test]
fn limit_rate_is_taken_on_both_sides() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 3_000_000, &mut fx.rng);
    for (i, (send_rate, receive_rate)) in [("20M", "0"), ("0", "20M")].into_iter().enumerate() {
        let out = fx.path(&format!("out{i}"));
        let (s, r) = fx.transfer(
            &[OsStr::new("--limit-rate"), OsStr::new(send_rate), src.as_os_str()],
            &[
                OsStr::new("--limit-rate"),
                OsStr::new(receive_rate),
                OsStr::new("--yes"),
                OsStr::new("--out"),
                out.as_os_str(),
            ],
        );
        assert_exits(&[(&s, 0), (&r, 0)]);
        assert_eq!(std::fs::read(out.join("doc.bin")).unwrap(), std::fs::read(&src).unwrap());
    }
    let bad = fx
        .spawn(
            "sender",
            &[],
            [OsStr::new("send"), OsStr::new("--limit-rate"), OsStr::new("5X"), src.as_os_str()],
        )
        .finish();
    assert_exits(&[(&bad, 2)]);
    assert_says(&bad, &["not a rate"]);
}

/// `rendezvous --help` shows the node's options only, none of the transfer commands' output
/// flags and words.
#[test]
fn rendezvous_help_is_about_the_node() {
    let fx = Fixture::new();
    let help = fx.spawn("help", &[], ["rendezvous", "--help"]).finish();
    assert_exits(&[(&help, 0)]);
    assert!(help.stdout.contains("--listen") && help.stdout.contains("--verbose"), "{help}");
    for client in ["--json", "sender's code", "candidates, verifier", "Newline-delimited"] {
        assert!(!help.stdout.contains(client), "{client:?} in the node's help\n{help}");
    }
}

/// `--json` gives a `file` event per file on both sides, with its path, size and how it
/// ended; a second send of the same tree reports each file as skipped on the sender.
#[test]
fn each_file_gets_an_event_on_both_sides() {
    let mut fx = Fixture::new();
    let tree = fx.path("src/t");
    for (f, size) in [("a.bin", 1000u64), ("sub/b.bin", 70_000), ("sub/c.bin", 0)] {
        random_file(&tree.join(f), size, &mut fx.rng);
    }
    let want = |outcome: &str| {
        let mut v: Vec<(String, u64, String)> =
            [("t/a.bin", 1000u64), ("t/sub/b.bin", 70_000), ("t/sub/c.bin", 0)]
                .iter()
                .map(|(p, b)| (p.to_string(), *b, outcome.to_owned()))
                .collect();
        v.sort();
        v
    };
    let files = |o: &Outcome| {
        let mut v: Vec<(String, u64, String)> = o
            .events()
            .into_iter()
            .filter(|e| e["event"] == "file")
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (s("path"), e["bytes"].as_u64().unwrap(), s("outcome"))
            })
            .collect();
        v.sort();
        v
    };
    let out = fx.path("out");
    let args = [OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()];
    let (s, r) = fx.transfer(&[tree.as_os_str()], &args);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(files(&s), want("sent"), "{s}");
    assert_eq!(files(&r), want("received"), "{r}");

    fx.code = fresh_code();
    let (s, r) = fx.transfer(&[tree.as_os_str()], &args);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(files(&s), want("skipped"), "{s}");
    assert!(files(&r).is_empty(), "nothing moved to the receiver\n{r}");
}

/// `file` events are written in batches: with more files than one batch holds, every line
/// still arrives whole and in order, one per file on each side, and `done` is the last line.
#[test]
fn many_file_events_arrive_whole_and_before_done() {
    let mut fx = Fixture::new();
    let tree = fx.path("src/many");
    const FILES: usize = 600; // about 60 KB of `file` lines: several batches
    for i in 0..FILES {
        random_file(&tree.join(format!("d{}/f{i:03}", i % 7)), (i % 50) as u64, &mut fx.rng);
    }
    let out = fx.path("out");
    let (s, r) = fx.transfer(
        &[tree.as_os_str()],
        &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()],
    );
    assert_exits(&[(&s, 0), (&r, 0)]);
    for o in [&s, &r] {
        let lines: Vec<Value> = o
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{o}")))
            .collect();
        assert_eq!(lines.last().map(|e| e["event"].clone()), Some("done".into()), "{o}");
        let mut paths: Vec<&str> = lines
            .iter()
            .filter(|e| e["event"] == "file")
            .map(|e| e["path"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(paths.len(), FILES, "{o}");
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), FILES, "one event per file\n{o}");
    }
}

/// The connection-quality view: `progress` events carry the rate, the time left, the path,
/// the round trip and the packets lost; `done` a `quality` summary. (`--limit-rate` makes the
/// transfer last long enough for progress events, which come once a second.)
#[test]
fn progress_and_done_show_the_connection() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 12_000_000, &mut fx.rng);
    let out = fx.path("out");
    let (s, r) = fx.transfer(
        &[OsStr::new("--limit-rate"), OsStr::new("4M"), src.as_os_str()],
        &[OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()],
    );
    assert_exits(&[(&s, 0), (&r, 0)]);
    for o in [&s, &r] {
        let progress: Vec<_> =
            o.events().into_iter().filter(|e| e["event"] == "progress").collect();
        assert!(!progress.is_empty(), "no progress event\n{o}");
        let last = progress.last().unwrap();
        assert_eq!(last["path"], "direct", "{o}");
        assert!(last["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{o}");
        assert!(last["lost_packets"].as_u64().is_some(), "{o}");
        assert!(last["rate"].as_u64().is_some_and(|r| r > 0), "{o}");
        assert!(last["eta_seconds"].as_u64().is_some(), "{o}");
        let q = &o.event("done").expect("done")["quality"];
        let (min, avg) = (q["rtt_min_ms"].as_f64().unwrap(), q["rtt_avg_ms"].as_f64().unwrap());
        assert!(min <= avg, "{o}");
        assert!(q["sent_packets"].as_u64().is_some_and(|n| n > 0), "{o}");
        assert!(q["lost_packets"].as_u64().is_some(), "{o}");
    }
}

/// `send --count 2` serves two receivers one after another with the same code, each a full
/// transfer; with `--count 3`, a receiver with a wrong code still ends the sender (exit 3).
#[test]
fn count_serves_receivers_one_after_another() {
    let mut fx = Fixture::new();
    let src = fx.path("src/doc.bin");
    random_file(&src, 200_000, &mut fx.rng);
    let sender = fx.send([OsStr::new("--count"), OsStr::new("2"), src.as_os_str()]);
    for i in 0..2 {
        let out = fx.path(&format!("out{i}"));
        let r = fx.receive([OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]).finish();
        assert_exits(&[(&r, 0)]);
        assert_eq!(std::fs::read(out.join("doc.bin")).unwrap(), std::fs::read(&src).unwrap());
    }
    let s = sender.finish();
    assert_exits(&[(&s, 0)]);
    let done = s.events().into_iter().filter(|e| e["event"] == "done").count();
    assert_eq!(done, 2, "{s}");

    fx.code = fresh_code();
    let sender = fx.send([OsStr::new("--count"), OsStr::new("3"), src.as_os_str()]);
    let out = fx.path("out-a");
    let r = fx.receive([OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]).finish();
    assert_exits(&[(&r, 0)]);
    let good = fx.code.clone();
    fx.code = other_code(&good);
    let out = fx.path("out-b");
    let r = fx.receive([OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()]).finish();
    assert_exits(&[(&r, 3)]);
    let s = sender.finish();
    assert_exits(&[(&s, 3)]);
    assert!(!out.join("doc.bin").exists());
}

/// `send --text` (and `--text -`, from stdin): the receiver prints the text on stdout exactly
/// as sent (into a pipe), writes no file and creates no directory; with `--json` the text is
/// an event.
#[test]
fn a_text_is_printed_and_nothing_is_written() {
    let fx = Fixture::new();
    let text = "first line\nsecond ✓ line\twith a tab\n";
    let out = fx.path("never-made");
    let s = fx.send(["--text", text]);
    let r = fx.spawn(
        "receiver",
        &[],
        [OsStr::new("receive"), OsStr::new("--out"), out.as_os_str(), OsStr::new(&fx.code)],
    );
    let (s, r) = finish_pair(s, r);
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(r.stdout, text, "exactly the text on stdout\n{r}");
    assert!(!out.exists(), "no directory made for a text");
    assert_says(&r, &["text message"]);

    // From stdin, received with --json: one `text` event holds it.
    let piped = fx.path("message.txt");
    write_file(&piped, "from a pipe, no newline at the end".as_bytes());
    let mut cmd = fx.command(&[], ["send", "--json", "--code", &fx.code, "--text", "-"]);
    cmd.stdin(std::fs::File::open(&piped).unwrap());
    let mut s = Proc::spawn("sender", cmd);
    s.wait_event("code");
    let r = fx.receive(["--out", out.to_str().unwrap()]);
    let (s, r) = finish_pair(s, r);
    assert_exits(&[(&s, 0), (&r, 0)]);
    let event = r.event("text").expect("a text event");
    assert_eq!(event["text"], "from a pipe, no newline at the end");
    assert!(!out.exists());
}

/// Texts that cannot be sent are usage errors before any code is shown: not UTF-8, or over
/// the 1 MiB cap (the message points to `send -`); and `--text` takes no paths.
#[test]
fn bad_texts_are_usage_errors() {
    let fx = Fixture::new();
    for (name, bytes) in
        [("binary", vec![0xff, 0xfe, 0x00, 0x80]), ("huge", vec![b'x'; (1 << 20) + 1])]
    {
        let input = fx.path(name);
        write_file(&input, &bytes);
        let mut cmd = fx.command(&[], ["send", "--text", "-"]);
        cmd.stdin(std::fs::File::open(&input).unwrap());
        let o = Proc::spawn("sender", cmd).finish();
        assert_exits(&[(&o, 2)]);
        assert_says(&o, &["send -"]);
        assert!(!o.stderr.contains("Code:"), "no code shown\n{o}");
    }
    let file = fx.path("f");
    write_file(&file, b"x");
    let o = fx
        .spawn(
            "sender",
            &[],
            [OsStr::new("send"), OsStr::new("--text"), OsStr::new("hi"), file.as_os_str()],
        )
        .finish();
    assert_exits(&[(&o, 2)]);
}

/// `send -` streams stdin (fed through a pipe, in pieces, with pauses) and `receive --stdout`
/// writes it to stdout: 10 MiB of random bytes arrive byte for byte, with the stream's size
/// learnt only at its end; with `--out` instead, the file is named by `--name`.
#[test]
fn stdin_streams_to_stdout_byte_for_byte() {
    let mut fx = Fixture::new();
    let data = fx.rng.bytes(10 << 20);
    for to_stdout in [true, false] {
        let mut cmd =
            fx.command(&[], ["send", "--json", "--code", &fx.code, "-", "--name", "data.bin"]);
        cmd.stdin(std::process::Stdio::piped());
        let mut s = Proc::spawn("sender", cmd);
        s.wait_event("code");
        let mut stdin = s.take_stdin().expect("stdin piped");
        let feed = data.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            for (i, piece) in feed.chunks(777_777).enumerate() {
                stdin.write_all(piece).unwrap();
                if i % 4 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(30));
                }
            }
        });
        let got = fx.path(if to_stdout { "stdout.bin" } else { "unused" });
        let out = fx.path("out");
        let r = if to_stdout {
            let mut cmd = fx.command(&[], ["receive", "--json", "--yes", "--stdout", &fx.code]);
            cmd.stdout(std::fs::File::create(&got).unwrap());
            Proc::spawn("receiver", cmd)
        } else {
            fx.receive(["--yes", "--out", out.to_str().unwrap()])
        };
        let (s, r) = finish_pair(s, r);
        feeder.join().unwrap();
        assert_exits(&[(&s, 0), (&r, 0)]);
        let arrived = if to_stdout { got } else { out.join("data.bin") };
        assert!(
            std::fs::read(&arrived).unwrap() == data,
            "the stream arrived changed ({})",
            arrived.display()
        );
        // The sender's totals count the stream's bytes, though the offer could not.
        let offer = s.event("offer").expect("offer event");
        assert_eq!(offer["bytes"], 0, "{s}");
        assert_done(&s, data.len() as u64, 1);
        if to_stdout {
            assert!(!out.exists(), "nothing written to the file system with --stdout");
            // The events went to stderr: stdout held the data only.
            assert!(r.stderr.contains("\"event\":\"done\""), "{r}");
        }
    }
}

/// `--stdout` takes one file: an offer of a directory is refused before anything is written
/// (the receiver exits 2, the sender learns why); a single ordinary file goes through.
#[test]
fn stdout_takes_exactly_one_file() {
    let mut fx = Fixture::new();
    let tree = fx.path("tree");
    random_file(&tree.join("a"), 1000, &mut fx.rng);
    random_file(&tree.join("sub/b"), 1000, &mut fx.rng);
    let s = fx.send([tree.as_os_str()]);
    let r = fx.spawn("receiver", &[], ["receive", "--yes", "--stdout", &fx.code]);
    let (s, r) = finish_pair(s, r);
    assert_exits(&[(&s, 4), (&r, 2)]);
    assert!(r.stdout.is_empty(), "nothing on stdout\n{r}");
    assert_says(&r, &["--stdout takes a single file", "2 file(s)"]);
    assert_says(&s, &["standard output"]);

    let one = tree.join("a");
    let s = fx.send([one.as_os_str()]);
    let got = fx.path("one.bin");
    let mut cmd = fx.command(&[], ["receive", "--yes", "--stdout", &fx.code]);
    cmd.stdout(std::fs::File::create(&got).unwrap());
    let (s, r) = finish_pair(s, Proc::spawn("receiver", cmd));
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&one).unwrap());
}

/// Standard input is sent alone and once; `--name` goes with it.
#[test]
fn stdin_usage_errors() {
    let fx = Fixture::new();
    let file = fx.path("f");
    write_file(&file, b"x");
    for args in [
        vec![OsStr::new("send"), OsStr::new("-"), file.as_os_str()],
        vec![OsStr::new("send"), OsStr::new("--name"), OsStr::new("n"), file.as_os_str()],
        vec![OsStr::new("send"), OsStr::new("--count"), OsStr::new("2"), OsStr::new("-")],
        vec![OsStr::new("send"), OsStr::new("--name"), OsStr::new("a/b"), OsStr::new("-")],
    ] {
        let o = fx.spawn("sender", &[], &args).finish();
        assert_exits(&[(&o, 2)]);
        assert!(!o.stderr.contains("Code:"), "no code shown\n{o}");
    }
}

/// Streaming holds no copy: 256 MiB through `send -` and `receive --stdout` keep both
/// sides' peak memory far below the stream's size.
#[test]
fn a_stream_takes_constant_memory() {
    let fx = Fixture::new();
    let mut cmd = fx.command(&[], ["send", "--json", "--code", &fx.code, "-"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut s = Proc::spawn("sender", cmd);
    s.wait_event("code");
    let mut stdin = s.take_stdin().expect("stdin piped");
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let mut rng = XorShift::new(7);
        for _ in 0..256 {
            stdin.write_all(&rng.bytes(1 << 20)).unwrap();
        }
    });
    let mut cmd = fx.command(&[], ["receive", "--json", "--yes", "--stdout", &fx.code]);
    cmd.stdout(std::process::Stdio::null());
    let (s, r) = finish_pair(s, Proc::spawn("receiver", cmd));
    feeder.join().unwrap();
    assert_exits(&[(&s, 0), (&r, 0)]);
    assert_done(&s, 256 << 20, 1);
    for o in [&s, &r] {
        let peak = o.peak_rss_kib.expect("sampled");
        assert!(peak < 128 << 10, "{} peaked at {peak} KiB for a 256 MiB stream", o.name);
    }
}

/// A sparse file arrives with its holes: the same bytes, but no more blocks allocated than
/// its data needs (the holes travel as HOLE records, not as zeros).
#[test]
fn a_sparse_file_stays_sparse() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let mut fx = Fixture::new();
    let src = fx.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let sparse = src.join("disk.img");
    let mut f = std::fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    for (at, len) in [(8u64 << 20, 1usize << 20), (40 << 20, 100_000)] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&fx.rng.bytes(len)).unwrap();
    }
    drop(f);
    let allocated = |p: &std::path::Path| std::fs::metadata(p).unwrap().blocks() * 512;
    if allocated(&sparse) > 8 << 20 {
        println!("skipped: the test directory's file system does not keep holes");
        return;
    }
    let out = fx.path("out");
    let s = fx.send([src.as_os_str()]);
    let r = fx.receive(["--yes", "--out", out.to_str().unwrap()]);
    let (s, r) = finish_pair(s, r);
    assert_exits(&[(&s, 0), (&r, 0)]);
    let got = out.join("src/disk.img");
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&sparse).unwrap(), "content differs");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), 64 << 20);
    let (theirs, ours) = (allocated(&got), allocated(&sparse));
    assert!(
        theirs <= ours + (1 << 20),
        "received file allocates {theirs} bytes, the source {ours}"
    );
    assert_done(&r, 64 << 20, 1);
}

/// Names Unix allows are sent as they are: a backslash, a newline, a tab, an escape sequence,
/// a drive-like prefix. They arrive with exactly those names, and the receiver's terminal
/// lines show them escaped.
#[test]
fn odd_names_arrive_as_they_are() {
    let mut fx = Fixture::new();
    let src = fx.path("odd");
    let names = ["back\\slash", "new\nline", "tab\there", "\x1b[31mred", "C:drive"];
    for name in names {
        random_file(&src.join(name), 1000, &mut fx.rng);
    }
    let out = fx.path("out");
    let s = fx.send([src.as_os_str()]);
    let r = fx.spawn(
        "receiver",
        &[],
        [
            OsStr::new("receive"),
            OsStr::new("--yes"),
            OsStr::new("-v"),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new(&fx.code),
        ],
    );
    let (s, r) = finish_pair(s, r);
    assert_exits(&[(&s, 0), (&r, 0)]);
    for name in names {
        let got = out.join("odd").join(name);
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(src.join(name)).unwrap(),
            "{name:?}"
        );
    }
    assert!(!r.stderr.contains('\x1b'), "an escape reached the terminal\n{r}");
    assert!(r.stderr.contains("\\u{1b}[31mred"), "shown escaped\n{r}");
}

/// Names that are not UTF-8 (Unix names are bytes) arrive with exactly their bytes: files and
/// directories inside a tree, a symlink's target, and a top-level name; the receiver shows
/// them with `\xNN` for each such byte, in its messages and in its `--json` events.
#[test]
fn names_that_are_not_utf8_arrive_as_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let mut fx = Fixture::new();
    let bytes = |b: &[u8]| OsStr::from_bytes(b).to_owned();
    let src = fx.path("tree");
    let (file, dir, inner) = (bytes(b"caf\xe9.txt"), bytes(b"\xff\xfe dir"), bytes(b"x\x80y"));
    random_file(&src.join(&file), 3000, &mut fx.rng);
    random_file(&src.join(&dir).join(&inner), 70_000, &mut fx.rng);
    std::os::unix::fs::symlink(bytes(b"to-\xe9"), src.join("link")).unwrap();
    let top = fx.path("top").join(bytes(b"\xc3(top"));
    random_file(&top, 500, &mut fx.rng);
    let out = fx.path("out");
    let s = fx.send([src.as_os_str(), top.as_os_str()]);
    let r = fx.spawn(
        "receiver",
        &[],
        [
            OsStr::new("receive"),
            OsStr::new("--yes"),
            OsStr::new("--json"),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new(&fx.code),
        ],
    );
    let (s, r) = finish_pair(s, r);
    assert_exits(&[(&s, 0), (&r, 0)]);
    for (sent, got) in [
        (src.join(&file), out.join("tree").join(&file)),
        (src.join(&dir).join(&inner), out.join("tree").join(&dir).join(&inner)),
        (top.clone(), out.join(top.file_name().unwrap())),
    ] {
        assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&sent).unwrap(), "{got:?}");
    }
    let target = std::fs::read_link(out.join("tree/link")).unwrap();
    assert_eq!(target.as_os_str().as_bytes(), b"to-\xe9");
    let files: Vec<_> = r.events().into_iter().filter(|e| e["event"] == "file").collect();
    let paths: Vec<&str> = files.iter().filter_map(|e| e["path"].as_str()).collect();
    for want in [r"tree/caf\xe9.txt", r"tree/\xff\xfe dir/x\x80y", r"\xc3(top"] {
        assert!(paths.contains(&want), "no file event for {want}: {paths:?}\n{r}");
    }
}

/// A destination that cannot hold every name (exFAT, as on a USB stick: no `:` or `?`, no
/// bytes that are not UTF-8, no links) refuses those entries one by one and takes the rest:
/// each refusal is a warning (a file's also a `file` event with the outcome `refused`), a
/// refused directory's contents are refused with it, `done` counts them, and both sides end
/// with status 11. Every other file arrives whole.
#[test]
fn what_the_destination_cannot_hold_is_left_out_entry_by_entry() {
    use std::os::unix::ffi::OsStrExt;
    let mut fx = Fixture::new();
    let Some(exfat) = Exfat::mount(fx.root()) else { return };
    let src = fx.path("t");
    let good = ["ok.txt", "sub/fine.bin", "one.bin", "trailing space .txt"];
    for (i, name) in good.iter().enumerate() {
        random_file(&src.join(name), 1000 + 70_000 * i as u64, &mut fx.rng);
    }
    let refused_files = ["a:b.txt", "what?", "d?/in.txt"];
    for name in refused_files {
        random_file(&src.join(name), 5000, &mut fx.rng);
    }
    random_file(&src.join(OsStr::from_bytes(b"caf\xe9")), 300, &mut fx.rng);
    std::os::unix::fs::symlink("ok.txt", src.join("link")).unwrap();
    std::fs::hard_link(src.join("one.bin"), src.join("two.bin")).unwrap();
    let out = exfat.mount.join("in");
    let args = [OsStr::new("--yes"), OsStr::new("--out"), out.as_os_str()];
    let (s, r) = fx.transfer(&[src.as_os_str()], &args);
    assert_exits(&[(&s, 11), (&r, 11)]);
    for name in good {
        let (got, want) = (out.join("t").join(name), src.join(name));
        assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&want).unwrap(), "{name}");
    }
    // The file, the file in the directory that could not be made, the directory, the name
    // that is not UTF-8, the symlink and the hard link.
    let left_out =
        [r"t/a:b.txt", r"t/what?", r"t/d?", r"t/d?/in.txt", r"t/caf\xe9", r"t/link", r"t/two.bin"];
    assert_eq!(r.event("done").expect("done")["refused"], left_out.len(), "{r}");
    assert_eq!(s.event("done").expect("done")["refused"], left_out.len(), "{s}");
    let warnings: Vec<String> = r
        .events()
        .into_iter()
        .filter(|e| e["event"] == "warning")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    for name in left_out {
        let said = format!("left out {name}:");
        assert!(warnings.iter().any(|w| w.starts_with(&said)), "no warning for {name}\n{r}");
    }
    let refused: Vec<String> = r
        .events()
        .into_iter()
        .filter(|e| e["event"] == "file" && e["outcome"] == "refused")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect();
    let mut want: Vec<&str> = vec![r"t/a:b.txt", r"t/what?", r"t/d?/in.txt", r"t/caf\xe9"];
    want.sort();
    let mut refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    refused.sort();
    assert_eq!(refused, want, "{r}");
    assert_eq!(r.event("error").expect("error")["kind"], "incomplete", "{r}");
    let told = s.events().into_iter().any(|e| {
        e["event"] == "warning"
            && e["message"].as_str().is_some_and(|m| m.contains("could not hold 7 of the entries"))
    });
    assert!(told, "the sender tells how many were left out\n{s}");
    assert_eq!(s.event("error").expect("error")["kind"], "incomplete", "{s}");
    // Nothing of the refused files is left behind, partial copies included.
    let mut left: Vec<String> =
        list_all(&out).iter().map(|p| p.to_string_lossy().into_owned()).collect();
    left.sort();
    let kept = ["t", "t/ok.txt", "t/one.bin", "t/sub", "t/sub/fine.bin", "t/trailing space .txt"];
    assert_eq!(left, kept);
}

/// Hard links inside the sent tree arrive as hard links (issue 15): one file under three
/// names in different directories arrives once, as one inode with three names; the `done`
/// event counts it as one file. Received again into the same place, the links are found
/// there already and nothing is sent; once the file changed, `--overwrite` replaces all three
/// names with one new file.
#[test]
fn hard_links_arrive_as_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let mut fx = Fixture::new();
    let src = fx.path("src");
    let first = src.join("a/one.bin");
    random_file(&first, 300_000, &mut fx.rng);
    for other in ["b/deep/two.bin", "three.bin"] {
        std::fs::create_dir_all(src.join(other).parent().unwrap()).unwrap();
        std::fs::hard_link(&first, src.join(other)).unwrap();
    }
    random_file(&src.join("plain.bin"), 1000, &mut fx.rng);
    let out = fx.path("out");
    for round in 0..3 {
        if round == 2 {
            // Written in place: the three names in the source see the new content.
            let new = fx.rng.bytes(200_000);
            std::fs::write(&first, new).unwrap();
        }
        let s = fx.send([src.as_os_str()]);
        let mut args = vec!["--yes", "--out", out.to_str().unwrap()];
        args.extend((round == 2).then_some("--overwrite"));
        let r = fx.receive(args);
        let (s, r) = finish_pair(s, r);
        assert_exits(&[(&s, 0), (&r, 0)]);
        let names = ["src/a/one.bin", "src/b/deep/two.bin", "src/three.bin"];
        let metas: Vec<_> =
            names.iter().map(|n| std::fs::symlink_metadata(out.join(n)).unwrap()).collect();
        for (name, meta) in names.iter().zip(&metas) {
            assert!(meta.is_file(), "{name}");
            assert_eq!((meta.ino(), meta.nlink()), (metas[0].ino(), 3), "{name}");
            assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(&first).unwrap());
        }
        assert_eq!(std::fs::metadata(out.join("src/plain.bin")).unwrap().nlink(), 1);
        if round == 0 {
            let offer = r.event("offer").expect("offer event");
            assert_eq!((&offer["files"], &offer["hardlinks"]), (&2.into(), &2.into()), "{r}");
            assert_done(&r, 301_000, 2);
            assert_done(&s, 301_000, 2);
        }
    }
}

/// `--xattrs` keeps the `user.` extended attributes of files and directories (a value of
/// several KiB included), and only those: `trusted.` ones (when this test may set them) stay
/// behind, a directory that was already at the destination keeps its own, and without the
/// flag (or with `receive --no-xattrs`) nothing is kept.
#[test]
fn extended_attributes_arrive_with_xattrs() {
    let mut fx = Fixture::new();
    let src = fx.path("src");
    let file = src.join("sub/data.bin");
    random_file(&file, 200_000, &mut fx.rng);
    let big = fx.rng.bytes(3000);
    if xattr::set(&file, "user.origin", b"lab 7").is_err() {
        eprintln!("skipped: the file system here keeps no user extended attributes");
        return;
    }
    xattr::set(&file, "user.big", &big).unwrap();
    xattr::set(src.join("sub"), "user.dir", b"d").unwrap();
    let privileged = xattr::set(&file, "trusted.secret", b"s").is_ok();
    // A directory already at the destination is the user's own: it keeps its attributes.
    std::fs::create_dir_all(fx.path("theirs/src/sub")).unwrap();
    // The receiver may decline them: `receive --no-xattrs`.
    for (sent, into) in [(true, "with"), (false, "without"), (true, "theirs"), (true, "declined")] {
        let out = fx.path(into);
        let mut send: Vec<&OsStr> = vec![src.as_os_str()];
        if sent {
            send.push(OsStr::new("--xattrs"));
        }
        let s = fx.send(send);
        let mut receive = vec!["--yes", "--out", out.to_str().unwrap()];
        receive.extend((into == "declined").then_some("--no-xattrs"));
        let r = fx.receive(receive);
        let keep = sent && into != "declined";
        let (s, r) = finish_pair(s, r);
        assert_exits(&[(&s, 0), (&r, 0)]);
        let offer = r.event("offer").expect("offer event");
        assert_eq!(offer["xattrs"], serde_json::Value::Bool(sent), "the offer says so: {r}");
        let got = out.join("src/sub/data.bin");
        assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&file).unwrap());
        let value = |path: &std::path::Path, name: &str| xattr::get(path, name).unwrap();
        if keep {
            assert_eq!(value(&got, "user.origin").as_deref(), Some(&b"lab 7"[..]));
            assert_eq!(value(&got, "user.big"), Some(big.clone()));
            let dir = value(&out.join("src/sub"), "user.dir");
            if into == "theirs" {
                assert_eq!(dir, None, "a directory that was there is left as it was");
            } else {
                assert_eq!(dir.as_deref(), Some(&b"d"[..]));
            }
        } else {
            assert_eq!(value(&got, "user.origin"), None, "not sent, or declined");
            assert_eq!(value(&out.join("src/sub"), "user.dir"), None, "not sent, or declined");
        }
        if privileged {
            assert_eq!(value(&got, "trusted.secret"), None, "only user. attributes travel");
        }
    }
}
