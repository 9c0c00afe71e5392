//! `p2p-copy-netsim [--ipv6] SENDER_NAT RECEIVER_NAT`: builds a rendezvous topology for manual
//! experiments (a public node, a sender and a receiver behind the given NATs, each `public`,
//! `full-cone`, `address-restricted`, `port-restricted` or `symmetric`), prints how to run
//! commands in it, and deletes it when Enter is pressed. Needs root.

use std::process::ExitCode;

use p2p_copy_netsim::{Nat, Net, RouterOptions};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ipv6 = args.iter().any(|a| a == "--ipv6");
    args.retain(|a| a != "--ipv6");
    let [sender, receiver] = args.as_slice() else {
        eprintln!("usage: p2p-copy-netsim [--ipv6] SENDER_NAT RECEIVER_NAT");
        eprintln!("  NAT: public, full-cone, address-restricted, port-restricted, symmetric");
        return ExitCode::from(2);
    };
    match build(sender, receiver, ipv6) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn nat(name: &str) -> Result<Option<Nat>, String> {
    Ok(Some(match name {
        "public" => return Ok(None),
        "full-cone" => Nat::FullCone,
        "address-restricted" => Nat::AddressRestricted,
        "port-restricted" => Nat::PortRestricted,
        "symmetric" => Nat::Symmetric,
        other => return Err(format!("unknown NAT {other:?}")),
    }))
}

fn build(sender: &str, receiver: &str, ipv6: bool) -> Result<(), String> {
    let (s_nat, r_nat) = (nat(sender)?, nat(receiver)?);
    let mut net = if ipv6 { Net::with_ipv6() } else { Net::new() }.map_err(|e| e.to_string())?;
    let node = net.public_host("node").map_err(|e| e.to_string())?;
    let mut side = |name: &str, kind: Option<Nat>| match kind {
        None => net.public_host(name).map_err(|e| e.to_string()),
        Some(kind) => {
            let mut router = net
                .router(&format!("{name}-nat"), kind, RouterOptions::default())
                .map_err(|e| e.to_string())?;
            net.host_behind(&mut router, name).map_err(|e| e.to_string())
        }
    };
    let s = side("sender", s_nat)?;
    let r = side("receiver", r_nat)?;
    println!(
        "node     {} (ip netns exec {} p2p-copy rendezvous --listen {}:4433)",
        node.addr, node.ns, node.addr
    );
    println!(
        "sender   {} (ip netns exec {} p2p-copy send --rendezvous {}:4433 FILE)",
        s.addr, s.ns, node.addr
    );
    println!(
        "receiver {} (ip netns exec {} p2p-copy receive --rendezvous {}:4433 CODE)",
        r.addr, r.ns, node.addr
    );
    for (name, h) in [("sender", &s), ("receiver", &r)] {
        if let Some(a6) = h.addr6 {
            println!("{name} IPv6 {a6}");
        }
    }
    println!("press Enter to delete the topology");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}
