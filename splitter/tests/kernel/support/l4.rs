//! L4 fixtures: flows, frames with chosen addresses, verdicts with output frames, checksum
//! verification against etherparse (an oracle independent of our checksum code).

use std::net::{IpAddr, SocketAddr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use splitter::dataplane::ebpf::{self, KernelObject, addr16};
use splitter_common::{
    hash::flow_hash,
    l4::{XDP_MARK_KIND_MASK, XDP_MARK_MAGIC},
};

use super::{DST_MAC, SRC_MAC};

pub const XDP_DROP: u32 = 1;

#[derive(Clone, Copy, Debug)]
pub enum Seg {
    Syn,
    Ack,
    /// FIN with ACK: one side closes.
    Fin,
    Udp,
}

/// A frame from `src` to `dst`.
pub fn frame(src: SocketAddr, dst: SocketAddr, seg: Seg, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    match seg {
        Seg::Syn => ip
            .tcp(src.port(), dst.port(), 1000, 64240)
            .syn()
            .write(&mut out, payload),
        Seg::Ack => ip
            .tcp(src.port(), dst.port(), 1001, 64240)
            .ack(5000)
            .write(&mut out, payload),
        Seg::Fin => ip
            .tcp(src.port(), dst.port(), 1001, 64240)
            .ack(5000)
            .fin()
            .write(&mut out, payload),
        Seg::Udp => ip.udp(src.port(), dst.port()).write(&mut out, payload),
    }
    .expect("build frame");
    out
}

/// Which slot entry the kernel must choose for a new flow (the shared hash, as the kernel uses it).
pub fn predicted<T: Copy>(table: &[T], client: SocketAddr, vip: SocketAddr, proto: u8) -> T {
    let h = flow_hash(
        &addr16(client.ip()),
        &addr16(vip.ip()),
        client.port(),
        vip.port(),
        proto,
    );
    table[(h % table.len() as u32) as usize]
}

pub struct Verdict {
    pub action: u32,
    pub out: Vec<u8>,
    /// The kind of our mark in the XDP metadata area (`XDP_MARK_BOUNCE`, `XDP_MARK_ROUTE`), if
    /// the program left one; TC results have none.
    pub mark: Option<u32>,
}

pub fn xdp(obj: &mut KernelObject, frame: &[u8]) -> Verdict {
    let prog = ebpf::xdp_program(&mut obj.ebpf).expect("xdp program");
    let mut out = vec![0u8; frame.len().max(64) + 256];
    // struct xdp_md as the kernel writes it back: `data` is the metadata's length, since the
    // output starts at `data_meta`.
    let mut ctx_in = [0u8; 24];
    ctx_in[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    let mut ctx = [0u8; 24];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx),
            ..Default::default()
        })
        .expect("xdp test_run");
    out.truncate(r.data_size_out as usize);
    let meta_len = u32::from_ne_bytes(ctx[0..4].try_into().expect("4 bytes")) as usize;
    let meta: Vec<u8> = out.drain(..meta_len.min(out.len())).collect();
    let mark = (meta.len() == 4).then(|| {
        let word = u32::from_ne_bytes(meta[..].try_into().expect("4 bytes"));
        assert_eq!(
            word & !XDP_MARK_KIND_MASK,
            XDP_MARK_MAGIC,
            "metadata is our mark"
        );
        word & XDP_MARK_KIND_MASK
    });
    assert!(meta.is_empty() || mark.is_some(), "metadata {meta:?}");
    Verdict {
        action: r.return_value,
        out,
        mark,
    }
}

pub fn tc(obj: &mut KernelObject, frame: &[u8]) -> Verdict {
    let prog = ebpf::tc_program(&mut obj.ebpf).expect("tc program");
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("tc test_run");
    out.truncate(r.data_size_out as usize);
    Verdict {
        action: r.return_value,
        out,
        mark: None,
    }
}

/// (source, destination, TCP flags as (syn, ack, rst), seq, ack number) of a frame, after
/// checking every checksum in it.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub seq: u32,
    pub ack_number: u32,
}

pub fn inspect(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("output parses");
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match p.net.as_ref().expect("ip layer") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            )
        }
        NetSlice::Ipv6(v6) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        _ => panic!("not IP"),
    };
    let payload_of = |t: &TransportSlice<'_>| -> Vec<u8> {
        match t {
            TransportSlice::Tcp(t) => t.payload().to_vec(),
            TransportSlice::Udp(u) => u.payload().to_vec(),
            _ => Vec::new(),
        }
    };
    let transport = p.transport.as_ref().expect("transport layer");
    let payload = payload_of(transport);
    match transport {
        TransportSlice::Tcp(t) => {
            let h = t.to_header();
            let want = match p.net.as_ref().expect("ip") {
                NetSlice::Ipv4(v4) => h
                    .calc_checksum_ipv4(&v4.header().to_header(), &payload)
                    .expect("csum"),
                NetSlice::Ipv6(v6) => h
                    .calc_checksum_ipv6(&v6.header().to_header(), &payload)
                    .expect("csum"),
                _ => unreachable!(),
            };
            assert_eq!(h.checksum, want, "TCP checksum");
            Seen {
                src: SocketAddr::new(src_ip, h.source_port),
                dst: SocketAddr::new(dst_ip, h.destination_port),
                syn: h.syn,
                ack: h.ack,
                rst: h.rst,
                seq: h.sequence_number,
                ack_number: h.acknowledgment_number,
            }
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            if h.checksum != 0 {
                let want = match p.net.as_ref().expect("ip") {
                    NetSlice::Ipv4(v4) => h
                        .calc_checksum_ipv4(&v4.header().to_header(), &payload)
                        .expect("csum"),
                    NetSlice::Ipv6(v6) => h
                        .calc_checksum_ipv6(&v6.header().to_header(), &payload)
                        .expect("csum"),
                    _ => unreachable!(),
                };
                assert_eq!(h.checksum, want, "UDP checksum");
            }
            Seen {
                src: SocketAddr::new(src_ip, h.source_port),
                dst: SocketAddr::new(dst_ip, h.destination_port),
                syn: false,
                ack: false,
                rst: false,
                seq: 0,
                ack_number: 0,
            }
        }
        _ => panic!("not TCP/UDP"),
    }
}
