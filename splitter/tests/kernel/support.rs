//! Helpers shared by the kernel tests: crafted frames and counter snapshots.

pub mod cluster;
pub mod l4;

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{PacketBuilder, VlanId};
use splitter::dataplane::ebpf::{self, DestCount, KernelObject, ParseCounts};
use splitter_common::maps::{DEST_STATS, PARSE_STATS};

pub const XDP_PASS: u32 = 2;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

pub fn ipv4_tcp(dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4([192, 0, 2, 1], dst, 64)
        .tcp(40000, dport, 1, 65535)
        .write(&mut out, payload)
        .expect("build ipv4/tcp");
    out
}

pub fn ipv6_udp(dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut src = [0u8; 16];
    src[0] = 0x20;
    src[1] = 0x01;
    src[2] = 0x0d;
    src[3] = 0xb8;
    src[15] = 1;
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src, dst, 64)
        .udp(40000, dport)
        .write(&mut out, payload)
        .expect("build ipv6/udp");
    out
}

pub fn vlan_ipv6_udp(vlan: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut src = [0u8; 16];
    src[0] = 0xfd;
    src[15] = 9;
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .single_vlan(VlanId::try_new(vlan).expect("vlan id"))
        .ipv6(src, dst, 64)
        .udp(40000, dport)
        .write(&mut out, payload)
        .expect("build vlan/ipv6/udp");
    out
}

pub fn vlan_ipv4_tcp(vlan: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .single_vlan(VlanId::try_new(vlan).expect("vlan id"))
        .ipv4([192, 0, 2, 7], dst, 64)
        .tcp(40001, dport, 1, 65535)
        .write(&mut out, &[])
        .expect("build vlan/ipv4/tcp");
    out
}

/// An ARP request, written by hand: etherparse builds IP frames.
pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[192, 0, 2, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 0, 2, 2]);
    f
}

pub fn v6(segments: [u16; 8]) -> [u8; 16] {
    std::net::Ipv6Addr::from(segments).octets()
}

pub fn parse_counts(obj: &KernelObject) -> ParseCounts {
    ebpf::read_parse_stats(obj.ebpf.map(PARSE_STATS).expect("PARSE_STATS map"))
        .expect("read PARSE_STATS")
}

pub fn dest_counts(obj: &KernelObject) -> Vec<DestCount> {
    ebpf::read_dest_stats(obj.ebpf.map(DEST_STATS).expect("DEST_STATS map"))
        .expect("read DEST_STATS")
}

/// Runs the XDP program once on `frame`.
pub fn run_xdp(obj: &mut KernelObject, frame: &[u8]) -> Result<u32, aya::programs::ProgramError> {
    let prog = ebpf::xdp_program(&mut obj.ebpf).expect("xdp program");
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    };
    prog.test_run(opts).map(|r| r.return_value)
}
