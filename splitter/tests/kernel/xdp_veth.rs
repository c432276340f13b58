//! The XDP program attached to a veth inside private network namespaces counts real packets
//! sent through the kernel stack, in native (driver) and generic (skb) mode.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use crate::support::*;
use aya::programs::XdpMode;
use splitter::dataplane::ebpf::{self, KernelObject};
use splitter_common::{
    DestKey, ParseOutcome,
    counters::{IPPROTO_TCP, IPPROTO_UDP},
};
use testbed::{NetNs, VethPair};

const UDP_PACKETS: u64 = 50;

fn counts_real_traffic(mode: XdpMode) {
    let client = NetNs::new("cli").expect("client netns");
    let gateway = NetNs::new("gw").expect("gateway netns");
    let veth = VethPair::new(&client, &["10.231.0.1/24"], &gateway, &["10.231.0.2/24"])
        .expect("veth pair");

    let mut obj: KernelObject = ebpf::load_object(None).expect("load object");
    let link = gateway.run(|| {
        ebpf::xdp_program(&mut obj.ebpf)
            .expect("program")
            .attach(&veth.b, mode)
            .unwrap_or_else(|e| panic!("attach to {} in {mode:?}: {e}", veth.b))
    });

    // UDP: a fixed number of datagrams to a port nobody listens on (the stack answers ICMP, which
    // goes the other way and is not seen by this XDP hook).
    client.run(|| {
        let sock = UdpSocket::bind("10.231.0.1:0").expect("bind udp");
        for i in 0..UDP_PACKETS {
            sock.send_to(&i.to_be_bytes(), "10.231.0.2:9999")
                .expect("send udp");
        }
    });

    // TCP: a real connection with a listener in the gateway namespace.
    let listener = gateway.run(|| TcpListener::bind("10.231.0.2:8080").expect("listen"));
    client.run(|| {
        let addr: SocketAddr = "10.231.0.2:8080".parse().expect("addr");
        let stream = TcpStream::connect(addr).expect("tcp connect through the veth");
        drop(stream);
    });
    let (_conn, _) = listener.accept().expect("accept");

    let dests = dest_counts(&obj);
    let udp = dests
        .iter()
        .find(|d| d.key == DestKey::v4([10, 231, 0, 2], 9999, IPPROTO_UDP))
        .expect("the UDP destination was counted");
    assert_eq!(
        udp.stats.packets, UDP_PACKETS,
        "every datagram counted once"
    );
    assert_eq!(
        udp.stats.bytes,
        UDP_PACKETS * (14 + 20 + 8 + 8),
        "frame bytes"
    );
    let tcp = dests
        .iter()
        .find(|d| d.key == DestKey::v4([10, 231, 0, 2], 8080, IPPROTO_TCP))
        .expect("the TCP destination was counted");
    assert!(
        tcp.stats.packets >= 2,
        "at least SYN and ACK: {:?}",
        tcp.stats
    );
    // ARP resolution of 10.231.0.2 came in through the hook too.
    assert!(
        parse_counts(&obj).get(ParseOutcome::NonIp) >= 1,
        "ARP counted as non-IP"
    );

    gateway.run(|| {
        ebpf::xdp_program(&mut obj.ebpf)
            .expect("program")
            .detach(link)
            .expect("detach")
    });
}

#[test]
fn native_xdp_on_veth_counts_real_packets() {
    if !testbed::require_root("native_xdp_on_veth_counts_real_packets") {
        return;
    }
    counts_real_traffic(XdpMode::Driver);
}

#[test]
fn generic_xdp_on_veth_counts_real_packets() {
    if !testbed::require_root("generic_xdp_on_veth_counts_real_packets") {
        return;
    }
    counts_real_traffic(XdpMode::Skb);
}
