//! A spoofed-source flood sent as raw Ethernet frames (AF_PACKET) out of a namespace's veth, the
//! way a botnet's packets reach a node.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
};

use etherparse::PacketBuilder;
use testbed::NetNs;

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = ns
        .exec("ip", &["-o", "link", "show", "dev", dev])
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev}: {text}"));
    let mut mac = [0u8; 6];
    for (i, b) in hex.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(b, 16).expect("hex");
    }
    mac
}

/// What each spoofed flow sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodKind {
    /// A SYN, then an ACK with a guessed acknowledgment number (the sender never sees the
    /// SYN-ACK).
    SynThenAck,
    /// A SYN only.
    Syn,
    /// A lone ACK of no flow: what reaches a dedicated VIP as a conntrack miss.
    Ack,
}

/// Flow `i`'s source: `base` + a permutation of `i` inside the /16 (65,536 sources).
pub fn spread_sources(base: Ipv4Addr) -> impl Fn(u32) -> Ipv4Addr {
    let base = u32::from(base) & 0xffff_0000;
    move |i| Ipv4Addr::from(base | (i.wrapping_mul(40_503) & 0xffff))
}

/// Where the frames leave: a device of the sender's namespace, its MAC and the next hop's.
pub struct Wire {
    pub dev: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Sends `flows` spoofed TCP flows to `vip` out of `wire` (in the calling thread's network
/// namespace): flow `i` comes from `source(i)` and a port derived from `i`.
pub fn spoofed_flood(
    wire: &Wire,
    source: impl Fn(u32) -> Ipv4Addr,
    vip: SocketAddrV4,
    flows: u32,
    kind: FloodKind,
) -> io::Result<u64> {
    let (src_mac, dst_mac) = (wire.src_mac, wire.dst_mac);
    let (vip, port) = (*vip.ip(), vip.port());
    let sock = PacketSocket::bind(&wire.dev)?;
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(64);
    let segments: &[bool] = match kind {
        FloodKind::SynThenAck => &[true, false],
        FloodKind::Syn => &[true],
        FloodKind::Ack => &[false],
    };
    for i in 0..flows {
        let src = source(i);
        let sport = 1024 + (i % 60_000) as u16;
        for &syn in segments {
            buf.clear();
            let b = PacketBuilder::ethernet2(src_mac, dst_mac)
                .ipv4(src.octets(), vip.octets(), 64)
                .tcp(sport, port, 1000, 64_240);
            let b = if syn { b.syn() } else { b.ack(0x5eed_0000 ^ i) };
            b.write(&mut buf, &[]).map_err(io::Error::other)?;
            sock.send(&buf)?;
            sent += 1;
        }
    }
    Ok(sent)
}

struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    fn bind(dev: &str) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(dev).map_err(io::Error::other)?;
        // SAFETY: plain syscalls with valid arguments; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        Ok(Self { fd, addr })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: `frame` and `addr` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    std::ptr::from_ref(&self.addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // A full device queue: the flood outruns the receiver; wait for room.
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e);
            }
            std::thread::yield_now();
        }
    }
}
