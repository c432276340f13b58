//! What this node holds that listeners on its addresses must leave alone: ports host sockets
//! listen on (read from `/proc/net`, the agent's own sockets excepted), the ephemeral range,
//! the NodePort range and the SNAT range. Rescanned periodically; the control loop rebuilds the
//! plan when it changes.

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use splitter_plan::plan::{
    Transport,
    node_ports::{NodePorts, ReservedPorts},
};
use tokio::sync::watch;

use super::SnatPorts;

/// How often host sockets are rescanned: a service started on the node later gets its port
/// back within this long (a listener that took it first is refused from then on).
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// The Kubernetes default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: SnatPorts = SnatPorts {
    min: 30000,
    max: 32767,
};

/// The node's ports now.
pub fn scan(node_port_range: SnatPorts, snat: SnatPorts) -> NodePorts {
    let mut reserved = vec![
        ReservedPorts {
            first: node_port_range.min,
            last: node_port_range.max,
            what: "the NodePort range".into(),
        },
        ReservedPorts {
            first: snat.min,
            last: snat.max,
            what: "the SNAT port range (--snat-ports)".into(),
        },
    ];
    if let Some((first, last)) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .as_deref()
        .and_then(parse_port_range)
    {
        reserved.push(ReservedPorts {
            first,
            last,
            what: "the node's ephemeral port range (net.ipv4.ip_local_port_range)".into(),
        });
    }
    // Our own sockets, listed before and after the tables are read: a listener the agent binds
    // (or closes) meanwhile is still its own, not a host socket whose port it must give up.
    let mut own = own_socket_inodes();
    let mut tables = Vec::new();
    for (file, transport, state, holder) in [
        (
            "/proc/net/tcp",
            Transport::Tcp,
            "0A",
            "a listening TCP socket",
        ),
        (
            "/proc/net/tcp6",
            Transport::Tcp,
            "0A",
            "a listening TCP socket",
        ),
        ("/proc/net/udp", Transport::Udp, "07", "a bound UDP socket"),
        ("/proc/net/udp6", Transport::Udp, "07", "a bound UDP socket"),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            tables.push((text, transport, state, holder));
        }
    }
    own.extend(own_socket_inodes());
    let mut host = BTreeMap::new();
    for (text, transport, state, holder) in tables {
        for port in held_ports(&text, state, &own) {
            host.entry((transport, port))
                .or_insert_with(|| holder.to_string());
        }
    }
    NodePorts { reserved, host }
}

/// Publishes [`scan`] on a channel, rescanning every [`RESCAN_EVERY`] and sending only changes.
pub fn watch(node_port_range: SnatPorts, snat: SnatPorts) -> watch::Receiver<NodePorts> {
    let (tx, rx) = watch::channel(scan(node_port_range, snat));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RESCAN_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = tokio::task::spawn_blocking(move || scan(node_port_range, snat))
                .await
                .unwrap_or_default();
            tx.send_if_modified(|current| {
                let changed = *current != now;
                *current = now;
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// `"32768\t60999\n"` -> `(32768, 60999)`.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) if a <= b => Some((a, b)),
        _ => None,
    }
}

/// Local ports of the sockets of a `/proc/net/{tcp,udp}[6]` table in `state` (TCP LISTEN is
/// `0A`, a bound UDP socket `07`) that are not the agent's own and not bound to a loopback
/// address (those are out of reach through the node's addresses).
fn held_ports(table: &str, state: &str, own: &BTreeSet<u64>) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let (Some(local), Some(st), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
            continue;
        };
        if *st != state || inode.parse::<u64>().is_ok_and(|i| own.contains(&i)) {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        if is_loopback_hex(addr) {
            continue;
        }
        if let Ok(port) = u16::from_str_radix(port, 16) {
            out.insert(port);
        }
    }
    out
}

/// Whether a `/proc/net` address (hex, in the kernel's byte order per 32-bit word) is loopback:
/// 127.0.0.0/8 or ::1.
fn is_loopback_hex(addr: &str) -> bool {
    match addr.len() {
        // IPv4: one little-endian word, so the first octet is the last two hex digits.
        8 => addr.ends_with("7F"),
        32 => addr == "00000000000000000000000001000000",
        _ => false,
    }
}

/// The inodes of this process's sockets (`/proc/self/fd/* -> socket:[N]`): the proxy's
/// listeners and the admin endpoint are the agent's own, not the host's.
fn own_socket_inodes() -> BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0B00000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
   3: 0B00000A:9C40 0100000A:0016 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_ports_except_loopback_own_and_connected() {
        // 22 on any address: held. 631 on 127.0.0.1: out of reach. 80: the agent's own (inode
        // 1003). 40000: an established connection, not a listener.
        let ports = held_ports(TCP, "0A", &BTreeSet::from([1003]));
        assert_eq!(ports, BTreeSet::from([22]));
        let ports = held_ports(TCP, "0A", &BTreeSet::new());
        assert_eq!(ports, BTreeSet::from([22, 80]));
    }

    #[test]
    fn ipv6_loopback_and_port_range() {
        assert!(is_loopback_hex("00000000000000000000000001000000"));
        assert!(!is_loopback_hex("00000000000000000000000000000000"));
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("9 1"), None);
    }

    #[test]
    fn the_agents_own_sockets_are_its_own() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let scanned = scan(DEFAULT_NODE_PORT_RANGE, SnatPorts::default());
        assert!(
            !scanned.host.contains_key(&(Transport::Tcp, port)),
            "this process's own listener on {port} counted as a host socket"
        );
    }
}
