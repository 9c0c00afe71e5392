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

/// Two namespaces joined by a veth pair: (a, b, a's address, b's address).
pub fn two_hosts() -> Option<(Netns, Netns, String, String)> {
    if !can_use_netns() {
        return None;
    }
    let (base, n) = unique("v");
    let subnet = (std::process::id().wrapping_mul(3).wrapping_add(n)) % 250 + 1;
    let (a_addr, b_addr) = (format!("10.99.{subnet}.1"), format!("10.99.{subnet}.2"));
    let setup = || -> Result<(Netns, Netns), String> {
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
