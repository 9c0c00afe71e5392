//! Makes the file trees `scripts/bench` sends, the same for every tool and every run (seeded).
//!
//! ```text
//! bench_tree small DIR N      N files of 1–8 KiB of random bytes, at most 1,000 per directory
//! bench_tree mixed DIR MIB    about MIB MiB shaped like a project or data set: one large
//!                             random file, some medium ones (half text, half random), many
//!                             small ones (half text) in nested directories, empty files and
//!                             symlinks
//! ```

use std::fs;
use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(kind), Some(dir), Some(n)) = (args.first(), args.get(1), args.get(2)) else {
        return Err("usage: bench_tree small DIR N | bench_tree mixed DIR MIB".into());
    };
    let n: usize = n.parse()?;
    let dir = Path::new(dir);
    let mut rng = StdRng::seed_from_u64(7);
    match kind.as_str() {
        "small" => small(dir, n, &mut rng),
        "mixed" => mixed(dir, n, &mut rng),
        _ => Err(format!("unknown tree kind {kind}").into()),
    }
}

fn small(dir: &Path, n: usize, rng: &mut StdRng) -> Result<()> {
    for i in 0..n {
        let sub = dir.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&sub)?;
        }
        let len = rng.gen_range(1024..=8192);
        fs::write(sub.join(format!("f{i}")), random(rng, len))?;
    }
    Ok(())
}

fn mixed(dir: &Path, mib: usize, rng: &mut StdRng) -> Result<()> {
    let total = mib << 20;
    fs::create_dir_all(dir.join("data"))?;
    // 40 %: one large random file.
    fs::write(dir.join("data/large.bin"), random(rng, total * 2 / 5))?;
    // 40 %: medium files of 4–16 MiB, alternately text and random.
    let mut medium = 0;
    let mut i = 0;
    while medium < total * 2 / 5 {
        let len = rng.gen_range(4 << 20..=16 << 20).min(total * 2 / 5 - medium).max(1);
        let (name, bytes) = if i % 2 == 0 {
            (format!("data/part{i}.log"), text(rng, len))
        } else {
            (format!("data/part{i}.bin"), random(rng, len))
        };
        fs::write(dir.join(name), bytes)?;
        medium += len;
        i += 1;
    }
    // 20 %: small files of 1–64 KiB in nested directories, alternately text and random.
    let mut small = 0;
    let mut i = 0;
    while small < total / 5 {
        let sub = dir.join(format!("src/m{}/s{}/t{}", i % 7, i % 5, i % 3));
        fs::create_dir_all(&sub)?;
        let len = rng.gen_range(1024..=65536);
        let bytes = if i % 2 == 0 { text(rng, len) } else { random(rng, len) };
        fs::write(sub.join(format!("file{i}.{}", if i % 2 == 0 { "txt" } else { "dat" })), bytes)?;
        small += len;
        i += 1;
    }
    for j in 0..100 {
        fs::File::create(dir.join(format!("src/m{}/empty{j}", j % 7)))?;
    }
    for j in 0..50 {
        std::os::unix::fs::symlink(
            format!("../../data/part{}.log", 2 * (j % 2)),
            dir.join(format!("src/m{}/link{j}", j % 7)),
        )?;
    }
    Ok(())
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// Log-like lines: compressible, but not trivially.
fn text(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 160);
    let mut i: u64 = 0;
    while out.len() < len {
        let _ = writeln!(
            out,
            "2026-12-01T{:02}:{:02}:{:02}.{:03}Z INFO http request={i} id={:08x} status={} bytes={} path=/api/v1/items/{}",
            i / 3_600_000 % 24,
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1000,
            rng.gen::<u32>(),
            if rng.gen_bool(0.9) { 200 } else { 404 },
            rng.gen_range(0..100_000),
            rng.gen_range(0..5000),
        );
        i += 1;
    }
    out.truncate(len);
    out
}
