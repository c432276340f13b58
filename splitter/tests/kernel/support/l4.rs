//! L4 fixtures: flows, frames with chosen addresses, verdicts with output frames, checksum
//! verification against etherparse (an oracle independent of our checksum code).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use splitter::{
    dataplane::ebpf::{self, KernelObject, L4Actuator, L4Proto, L4RouteProgram, addr16},
    run::{SnatPorts, snat_config},
};
use splitter_common::{
    hash::flow_hash,
    l4::{L4_DROPS, L4Config, L4Event, XDP_MARK_KIND_MASK, XDP_MARK_MAGIC},
};
use testbed::BpfFs;

use super::{DST_MAC, SRC_MAC};

pub const XDP_DROP: u32 = 1;

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip address")
}

/// The node's SNAT addresses in the rigs below.
pub const SNAT_V4: &str = "10.0.0.2";
pub const SNAT_V6: &str = "fd00::2";

/// The object loaded with its maps pinned, an actuator, and the node's SNAT configuration.
pub struct SnatRig {
    pub obj: KernelObject,
    pub act: L4Actuator,
    /// The maps are pinned here, so a test reads and seeds conntrack from outside.
    pub fs: BpfFs,
}

/// A [`SnatRig`] with `ports`, its configuration passed through `adjust` first.
pub fn snat_rig(ports: SnatPorts, adjust: impl FnOnce(&mut L4Config)) -> SnatRig {
    let fs = BpfFs::new().expect("bpffs");
    let mut obj = ebpf::load_object(Some(fs.path())).expect("load");
    let mut act = L4Actuator::new(&mut obj).expect("actuator");
    let mut config = snat_config(&[ip(SNAT_V4), ip(SNAT_V6)], ports);
    adjust(&mut config);
    act.set_config(config).expect("config");
    SnatRig { obj, act, fs }
}

/// A route whose every slot names `backend`, remote or not, on a dedicated VIP or not.
pub fn one_backend_route(
    vip: SocketAddr,
    proto: L4Proto,
    backend: SocketAddr,
    remote: bool,
    dedicated: bool,
) -> L4RouteProgram {
    L4RouteProgram {
        key: format!("{vip}/{proto:?}"),
        vips: vec![(vip, proto)],
        table: vec![Some(backend); 7],
        remote: only_if(remote, backend),
        dedicated: only_if(dedicated, vip.ip()),
    }
}

fn only_if<T: Ord>(on: bool, item: T) -> BTreeSet<T> {
    if on {
        BTreeSet::from([item])
    } else {
        BTreeSet::new()
    }
}

/// The count of `e` in `L4_DROPS`, summed over CPUs.
pub fn events(obj: &KernelObject, e: L4Event) -> u64 {
    let m = obj.ebpf.map(L4_DROPS).expect("L4_DROPS");
    let a = PerCpuArray::<&MapData, u64>::try_from(m).expect("per-cpu array");
    a.get(&(e as u32), 0).expect("get").iter().sum()
}

#[derive(Clone, Copy, Debug)]
pub enum Seg {
    Syn,
    Ack,
    /// FIN with ACK: one side closes.
    Fin,
    /// The backend's answer to a SYN: sequence number [`SYN_ACK_SEQ`], acknowledging 1001.
    SynAck,
    Udp,
}

/// The SYN-ACK's sequence number: `Seg::Ack` and `Seg::Fin` acknowledge it (5000).
pub const SYN_ACK_SEQ: u32 = 4999;

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
        Seg::SynAck => ip
            .tcp(src.port(), dst.port(), SYN_ACK_SEQ, 64240)
            .syn()
            .ack(1001)
            .write(&mut out, payload),
        Seg::Udp => ip.udp(src.port(), dst.port()).write(&mut out, payload),
    }
    .expect("build frame");
    out
}

/// Completes the handshake of a TCP flow whose SYN went through XDP: the backend's SYN-ACK
/// (through TC egress to the client for a local backend, through XDP to the node's `snat`
/// address for a remote one), then the client's ACK of it, which moves the flow from the
/// half-open table to conntrack.
pub fn confirm(
    obj: &mut KernelObject,
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    snat: Option<SocketAddr>,
) {
    let before = events(obj, L4Event::Confirmed);
    match snat {
        None => {
            tc(obj, &frame(backend, client, Seg::SynAck, &[]));
        }
        Some(node) => {
            xdp(obj, &frame(backend, node, Seg::SynAck, &[]));
        }
    }
    xdp(obj, &frame(client, vip, Seg::Ack, &[]));
    assert_eq!(
        events(obj, L4Event::Confirmed),
        before + 1,
        "{client} -> {vip}: the handshake confirmed the flow"
    );
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
