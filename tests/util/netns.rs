//! Network namespaces for tests: a namespace deleted on drop, and two hosts joined by a veth
//! pair.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{privileged, run, skip_or_fail};

/// A network namespace, deleted on drop (which also deletes the interfaces inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(name: String) -> Result<Netns, String> {
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A name unique to this process and call, short enough for an interface name (15 bytes).
pub fn unique(tag: &str) -> (String, u32) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (format!("p2p{tag}{}x{n}", std::process::id() % 100_000), n)
}

/// Whether namespaces can be used here; see the module documentation.
pub fn can_use_netns() -> bool {
    if !privileged("creating network namespaces") {
        return false;
    }
    if let Err(e) = run("ip", &["-V"]) {
        skip_or_fail(&format!("iproute2 is needed: {e}"));
        return false;
    }
    true
}

/// Two new namespaces `{base}a` and `{base}b` joined by a veth pair whose ends carry the
/// same names: (a, b, a's end, b's end).
fn veth_pair(base: &str) -> Result<(Netns, Netns, String, String), String> {
    let a = Netns::add(format!("{base}a"))?;
    let b = Netns::add(format!("{base}b"))?;
    let (va, vb) = (format!("{base}a"), format!("{base}b"));
    run(
        "ip",
        &[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ],
    )?;
    Ok((a, b, va, vb))
}

/// Two namespaces joined by a veth pair: (a, b, a's address, b's address).
pub fn two_hosts() -> Option<(Netns, Netns, String, String)> {
    if !can_use_netns() {
        return None;
    }
    let (base, n) = unique("v");
    let subnet = (std::process::id().wrapping_mul(3).wrapping_add(n)) % 250 + 1;
    let (a_addr, b_addr) = (format!("10.99.{subnet}.1"), format!("10.99.{subnet}.2"));
    let setup = || -> Result<(Netns, Netns), String> {
        let (a, b, va, vb) = veth_pair(&base)?;
        a.ip(&["addr", "add", &format!("{a_addr}/24"), "dev", &va])?;
        b.ip(&["addr", "add", &format!("{b_addr}/24"), "dev", &vb])?;
        a.ip(&["link", "set", &va, "up"])?;
        b.ip(&["link", "set", &vb, "up"])?;
        Ok((a, b))
    };
    match setup() {
        Ok((a, b)) => Some((a, b, a_addr, b_addr)),
        Err(e) => {
            skip_or_fail(&format!("cannot set up two namespaces and a veth pair: {e}"));
            None
        }
    }
}

impl Netns {
    /// Bytes `dev` inside this namespace has sent so far (its kernel counter).
    pub fn tx_bytes(&self, dev: &str) -> u64 {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "cat",
                &format!("/sys/class/net/{dev}/statistics/tx_bytes"),
            ])
            .output()
            .expect("read a counter");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("tx_bytes of {dev}: {out:?}"))
    }
}

/// Runs a setup command; its standard output, or `Err` with its output if it fails.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Sets the sysctl `key` to `value` inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        run("ip", &["netns", "exec", &self.name, "sysctl", "-q", "-w", &format!("{key}={value}")])
    }

    /// Turns duplicate address detection off on `dev` (before it comes up), so that its IPv6
    /// addresses are usable at once instead of a second or two later.
    pub fn no_dad(&self, dev: &str) -> Result<(), String> {
        self.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")?;
        self.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")
    }

    /// The IPv6 link-local address the kernel gave `dev`, once it is usable (waits up to 5 s).
    pub fn link_local(&self, dev: &str) -> Result<std::net::Ipv6Addr, String> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let shown = output(
                "ip",
                &["-n", &self.name, "-6", "-o", "addr", "show", "dev", dev, "scope", "link"],
            )?;
            let usable = shown.lines().filter(|l| !l.contains("tentative")).find_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet6")?;
                words.next()?.split('/').next()?.parse().ok()
            });
            match usable {
                Some(ip) => return Ok(ip),
                None if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                None => return Err(format!("{dev} in {} got no link-local address", self.name)),
            }
        }
    }
}

/// Two namespaces joined by a veth pair with no IPv4 on it: each end has only the IPv6
/// link-local address the kernel gives it (duplicate address detection off, so that it is
/// usable at once). Loopback is up in both. Returns (a, b, a's address, b's address).
pub fn two_hosts_link_local() -> Option<(Netns, Netns, std::net::Ipv6Addr, std::net::Ipv6Addr)> {
    if !can_use_netns() {
        return None;
    }
    let (base, _) = unique("6");
    let setup = || {
        let (a, b, va, vb) = veth_pair(&base)?;
        a.no_dad(&va)?;
        b.no_dad(&vb)?;
        a.ip(&["link", "set", &va, "up"])?;
        b.ip(&["link", "set", &vb, "up"])?;
        let (a_ll, b_ll) = (a.link_local(&va)?, b.link_local(&vb)?);
        Ok::<_, String>((a, b, a_ll, b_ll))
    };
    match setup() {
        Ok(hosts) => Some(hosts),
        Err(e) => {
            skip_or_fail(&format!("cannot set up two namespaces on IPv6 link-local only: {e}"));
            None
        }
    }
}
