//! ICMP errors about tracked flows under BPF_PROG_TEST_RUN: fragmentation needed (IPv4) and
//! packet too big (IPv6) about a local flow's reply and about each leg of a SNAT flow (XDP
//! ingress), and errors about a local flow's forward packets (TC egress), come out addressed
//! to the party that sent the quoted packet, quoting it as that party sent it, with every
//! checksum valid when recomputed from scratch (etherparse as the oracle); errors about
//! untracked flows, and everything when the translation is switched off, pass untouched.

use std::net::{IpAddr, SocketAddr};

use crate::support::{l4::*, *};
use etherparse::{Ipv4Header, Ipv6Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use splitter::{
    dataplane::ebpf::{L4Proto, L4RouteProgram},
    run::SnatPorts,
};
use splitter_common::l4::{CONFIG_ICMP_UNTRANSLATED, L4Event, XDP_MARK_ROUTE};

fn rig(icmp_off: bool) -> SnatRig {
    let ports = "61000-61999".parse::<SnatPorts>().expect("ports");
    snat_rig(ports, |config| {
        if icmp_off {
            config.flags |= CONFIG_ICMP_UNTRANSLATED;
        }
    })
}

fn route(vip: SocketAddr, backend: SocketAddr, remote: bool) -> L4RouteProgram {
    one_backend_route(vip, L4Proto::Tcp, backend, remote, true)
}

/// The IP packet of a TCP segment `src -> dst` with a 200-byte payload, as a router quotes it
/// in an error: the IP header and the first 28 bytes of TCP (the quoted TCP checksum then
/// covers bytes the quote lacks, as in most real errors).
fn quote(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let f = frame(src, dst, Seg::Ack, &[0x5a; 200]);
    let ip_len = if src.is_ipv4() { 20 } else { 40 };
    f[14..14 + ip_len + 28].to_vec()
}

/// An ICMP error from `router` to `to` about `quoted`: fragmentation needed (IPv4, type 3
/// code 4) or packet too big (IPv6, type 2), both with MTU 1280.
fn error(router: IpAddr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    error_of(router, to, quoted, false)
}

/// An error from `from` to `to` about `quoted`: with `port`, port unreachable (IPv4 type 3
/// code 3, ICMPv6 type 1 code 4), else as [`error`].
fn error_of(from: IpAddr, to: IpAddr, quoted: &[u8], port: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
    let mtu = [0, 0, 0x05, 0x00];
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (t, c, rest) = if port { (3, 3, [0; 4]) } else { (3, 4, mtu) };
            eth.ipv4(s.octets(), d.octets(), 64)
                .icmpv4_raw(t, c, rest)
                .write(&mut out, quoted)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (t, c, rest) = if port {
                (1, 4, [0; 4])
            } else {
                (2, 0, 1280u32.to_be_bytes())
            };
            eth.ipv6(s.octets(), d.octets(), 64)
                .icmpv6_raw(t, c, rest)
                .write(&mut out, quoted)
        }
        _ => panic!("mixed families"),
    }
    .expect("build error");
    out
}

/// What an error frame says: (outer source, outer destination, quoted source, quoted
/// destination), after checking every checksum in it from scratch: the outer IPv4 header, the
/// ICMP (ICMPv6: with its pseudo-header) checksum, the quoted IPv4 header.
#[derive(Debug, PartialEq, Eq)]
struct ErrorSeen {
    src: IpAddr,
    dst: IpAddr,
    quoted_src: SocketAddr,
    quoted_dst: SocketAddr,
}

fn inspect_error(frame: &[u8]) -> ErrorSeen {
    let p = SlicedPacket::from_ethernet(frame).expect("output parses");
    let (src, dst): (IpAddr, IpAddr) = match p.net.as_ref().expect("ip layer") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "outer IPv4 header checksum"
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
    let quoted = match p.transport.as_ref().expect("transport") {
        TransportSlice::Icmpv4(icmp) => {
            let want = icmp.header().icmp_type.calc_checksum(icmp.payload());
            assert_eq!(icmp.checksum(), want, "ICMP checksum");
            icmp.payload().to_vec()
        }
        TransportSlice::Icmpv6(icmp) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                panic!("ICMPv6 over IPv4")
            };
            assert!(
                icmp.is_checksum_valid(s.octets(), d.octets()),
                "ICMPv6 checksum"
            );
            icmp.payload().to_vec()
        }
        other => panic!("not ICMP: {other:?}"),
    };
    let (qsrc, qdst, l4): (IpAddr, IpAddr, &[u8]) = if src.is_ipv4() {
        let (h, rest) = Ipv4Header::from_slice(&quoted).expect("quoted IPv4 header");
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "quoted IPv4 header checksum"
        );
        (h.source.into(), h.destination.into(), rest)
    } else {
        let (h, rest) = Ipv6Header::from_slice(&quoted).expect("quoted IPv6 header");
        (h.source.into(), h.destination.into(), rest)
    };
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    ErrorSeen {
        src,
        dst,
        quoted_src: SocketAddr::new(qsrc, port(0)),
        quoted_dst: SocketAddr::new(qdst, port(2)),
    }
}

struct Case {
    vip: SocketAddr,
    client: SocketAddr,
    backend: SocketAddr,
    /// A router on the client's side and one on the backends' side.
    router: IpAddr,
    pod_router: IpAddr,
    snat: IpAddr,
}

fn cases() -> [Case; 2] {
    [
        Case {
            vip: sa("10.0.0.100:80"),
            client: sa("192.0.2.10:40000"),
            backend: sa("10.9.0.5:8080"),
            router: ip("192.0.2.1"),
            pod_router: ip("10.9.0.1"),
            snat: ip(SNAT_V4),
        },
        Case {
            vip: sa("[fd00::100]:80"),
            client: sa("[2001:db8::10]:40000"),
            backend: sa("[fd09::5]:8080"),
            router: ip("2001:db8::1"),
            pod_router: ip("fd09::1"),
            snat: ip(SNAT_V6),
        },
    ]
}

#[test]
fn errors_about_a_local_flows_replies_reach_the_backend_quoting_what_it_sent() {
    if !testbed::require_root(
        "errors_about_a_local_flows_replies_reach_the_backend_quoting_what_it_sent",
    ) {
        return;
    }
    let mut r = rig(false);
    let cs = cases();
    let programs: Vec<_> = cs.iter().map(|c| route(c.vip, c.backend, false)).collect();
    r.act.apply(&programs).expect("apply");
    for (n, c) in cs.iter().enumerate() {
        let v = xdp(&mut r.obj, &frame(c.client, c.vip, Seg::Syn, &[]));
        assert_eq!((v.action, v.mark), (XDP_PASS, None), "{}: DNAT", c.vip);
        confirm(&mut r.obj, c.client, c.vip, c.backend, None);

        // The backend's reply left as VIP -> client (TC egress); a router on the way says the
        // client's link takes 1280 bytes, to the VIP.
        let err = error(c.router, c.vip.ip(), &quote(c.vip, c.client));
        let v = xdp(&mut r.obj, &err);
        assert_eq!(
            (v.action, v.mark),
            (XDP_PASS, None),
            "{}: a local backend: the stack forwards it",
            c.vip
        );
        assert_eq!(
            inspect_error(&v.out),
            ErrorSeen {
                src: c.router,
                dst: c.backend.ip(),
                quoted_src: c.backend,
                quoted_dst: c.client,
            },
            "{}: to the backend, about backend -> client",
            c.vip
        );
        assert_eq!(
            events(&r.obj, L4Event::IcmpTranslated),
            n as u64 + 1,
            "counted"
        );
    }
}

#[test]
fn errors_about_a_local_flows_forward_packets_leave_quoting_what_the_client_sent() {
    if !testbed::require_root(
        "errors_about_a_local_flows_forward_packets_leave_quoting_what_the_client_sent",
    ) {
        return;
    }
    let mut r = rig(false);
    let cs = cases();
    let mut programs: Vec<_> = cs.iter().map(|c| route(c.vip, c.backend, false)).collect();
    // A SNAT flow on another VIP: TC egress leaves errors about it alone.
    let remote_vips = [sa("10.0.0.101:80"), sa("[fd00::101]:80")];
    programs.extend(
        cs.iter()
            .zip(remote_vips)
            .map(|(c, vip)| route(vip, c.backend, true)),
    );
    r.act.apply(&programs).expect("apply");
    let mut translated = 0;
    for (c, remote_vip) in cs.iter().zip(remote_vips) {
        xdp(&mut r.obj, &frame(c.client, c.vip, Seg::Syn, &[]));
        confirm(&mut r.obj, c.client, c.vip, c.backend, None);
        let quoted = quote(c.client, c.backend);

        // The node's stack could not forward the DNATed packet (a smaller MTU towards the
        // pod): its error to the client keeps the node's source, quotes client -> VIP.
        let err = error(c.snat, c.client.ip(), &quoted);
        let v = tc(&mut r.obj, &err);
        assert_eq!(v.action, u32::MAX, "{}: TCX_NEXT (-1)", c.vip);
        assert_eq!(
            inspect_error(&v.out),
            ErrorSeen {
                src: c.snat,
                dst: c.client.ip(),
                quoted_src: c.client,
                quoted_dst: c.vip,
            },
            "{}: from the node",
            c.vip
        );
        // The backend's own port unreachable comes from the VIP.
        let err = error_of(c.backend.ip(), c.client.ip(), &quoted, true);
        let v = tc(&mut r.obj, &err);
        assert_eq!(
            inspect_error(&v.out),
            ErrorSeen {
                src: c.vip.ip(),
                dst: c.client.ip(),
                quoted_src: c.client,
                quoted_dst: c.vip,
            },
            "{}: from the backend",
            c.vip
        );
        translated += 2;
        assert_eq!(events(&r.obj, L4Event::IcmpTranslated), translated);

        // Untouched: an error about another client's flow, and one about a SNAT flow's
        // forward leg (those come back through XDP ingress, never leave through here).
        let v = xdp(&mut r.obj, &frame(c.client, remote_vip, Seg::Syn, &[]));
        let node = inspect(&v.out).src;
        let stranger = SocketAddr::new(c.client.ip(), c.client.port() + 1);
        for f in [
            error(c.snat, stranger.ip(), &quote(stranger, c.backend)),
            error(c.snat, node.ip(), &quote(node, c.backend)),
        ] {
            let v = tc(&mut r.obj, &f);
            assert_eq!(
                (v.action, &v.out),
                (u32::MAX, &f),
                "{}: TCX_NEXT, untouched",
                c.vip
            );
        }
        assert_eq!(events(&r.obj, L4Event::IcmpTranslated), translated);
    }
}

#[test]
fn errors_about_either_leg_of_a_snat_flow_reach_the_party_that_sent_it() {
    if !testbed::require_root("errors_about_either_leg_of_a_snat_flow_reach_the_party_that_sent_it")
    {
        return;
    }
    let mut r = rig(false);
    let cs = cases();
    let programs: Vec<_> = cs.iter().map(|c| route(c.vip, c.backend, true)).collect();
    r.act.apply(&programs).expect("apply");
    for c in &cs {
        let v = xdp(&mut r.obj, &frame(c.client, c.vip, Seg::Syn, &[]));
        assert_eq!(v.mark, Some(XDP_MARK_ROUTE), "{}: SNAT leg", c.vip);
        let fwd = inspect(&v.out);
        assert_eq!(fwd.dst, c.backend);
        let node = fwd.src;
        assert_eq!(node.ip(), c.snat);
        confirm(&mut r.obj, c.client, c.vip, c.backend, Some(node));
        let before = events(&r.obj, L4Event::IcmpTranslated);

        // Reply leg: the node sent VIP -> client; a client-side router answers the VIP. The
        // backend gets it from the node, about backend -> node:port.
        let err = error(c.router, c.vip.ip(), &quote(c.vip, c.client));
        let v = xdp(&mut r.obj, &err);
        assert_eq!(
            (v.action, v.mark),
            (XDP_PASS, Some(XDP_MARK_ROUTE)),
            "{}: from the node's address: TC ingress routes it",
            c.vip
        );
        assert_eq!(
            inspect_error(&v.out),
            ErrorSeen {
                src: c.snat,
                dst: c.backend.ip(),
                quoted_src: c.backend,
                quoted_dst: node,
            },
            "{}: reply leg",
            c.vip
        );

        // Forward leg: the node sent node:port -> backend; a router on the pods' side answers
        // the node. The client gets it from the VIP, about client -> VIP.
        let err = error(c.pod_router, c.snat, &quote(node, c.backend));
        let v = xdp(&mut r.obj, &err);
        assert_eq!(
            (v.action, v.mark),
            (XDP_PASS, Some(XDP_MARK_ROUTE)),
            "{}: forward leg routed",
            c.vip
        );
        assert_eq!(
            inspect_error(&v.out),
            ErrorSeen {
                src: c.vip.ip(),
                dst: c.client.ip(),
                quoted_src: c.client,
                quoted_dst: c.vip,
            },
            "{}: forward leg",
            c.vip
        );
        assert_eq!(events(&r.obj, L4Event::IcmpTranslated), before + 2);
    }
}

#[test]
fn errors_about_untracked_flows_and_other_icmp_pass_untouched() {
    if !testbed::require_root("errors_about_untracked_flows_and_other_icmp_pass_untouched") {
        return;
    }
    let mut r = rig(false);
    let cs = cases();
    let programs: Vec<_> = cs.iter().map(|c| route(c.vip, c.backend, true)).collect();
    r.act.apply(&programs).expect("apply");
    let mut untracked = 0;
    for c in &cs {
        let v = xdp(&mut r.obj, &frame(c.client, c.vip, Seg::Syn, &[]));
        let node = inspect(&v.out).src;
        let stranger = SocketAddr::new(c.client.ip(), c.client.port() + 1);
        let other_port = SocketAddr::new(node.ip(), node.port() ^ 1);
        let frames = [
            // No flow from this client port.
            (error(c.router, c.vip.ip(), &quote(c.vip, stranger)), true),
            // No flow holds this SNAT port.
            (
                error(c.pod_router, c.snat, &quote(other_port, c.backend)),
                true,
            ),
            // Tracked, but not addressed to the quoted packet's source: not a real error.
            (error(c.router, c.snat, &quote(c.vip, c.client)), false),
        ];
        for (f, counted) in frames {
            let v = xdp(&mut r.obj, &f);
            assert_eq!(
                (v.action, v.mark, &v.out),
                (XDP_PASS, None, &f),
                "{}",
                c.vip
            );
            untracked += u64::from(counted);
            assert_eq!(events(&r.obj, L4Event::IcmpUntracked), untracked);
        }
        // An echo request to the VIP is no error.
        let mut echo = Vec::new();
        let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        match (c.client.ip(), c.vip.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth
                .ipv4(s.octets(), d.octets(), 64)
                .icmpv4_echo_request(1, 1)
                .write(&mut echo, &quote(c.vip, c.client)),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth
                .ipv6(s.octets(), d.octets(), 64)
                .icmpv6_echo_request(1, 1)
                .write(&mut echo, &quote(c.vip, c.client)),
            _ => unreachable!(),
        }
        .expect("echo");
        let v = xdp(&mut r.obj, &echo);
        assert_eq!((v.action, v.mark, &v.out), (XDP_PASS, None, &echo));
        // Truncated errors: every prefix too short to quote the ports passes untouched.
        let err = error(c.router, c.vip.ip(), &quote(c.vip, c.client));
        let whole =
            14 + if c.vip.is_ipv4() {
                20 + 8 + 20
            } else {
                40 + 8 + 40
            } + 4;
        for len in 14..whole {
            let v = xdp(&mut r.obj, &err[..len]);
            assert_eq!((v.action, &v.out[..]), (XDP_PASS, &err[..len]), "{len}");
        }
    }
    assert_eq!(events(&r.obj, L4Event::IcmpTranslated), 0);
}

#[test]
fn with_the_translation_off_errors_about_tracked_flows_pass_untouched() {
    if !testbed::require_root("with_the_translation_off_errors_about_tracked_flows_pass_untouched")
    {
        return;
    }
    let mut r = rig(true);
    let cs = cases();
    let programs: Vec<_> = cs.iter().map(|c| route(c.vip, c.backend, false)).collect();
    r.act.apply(&programs).expect("apply");
    for c in &cs {
        xdp(&mut r.obj, &frame(c.client, c.vip, Seg::Syn, &[]));
        confirm(&mut r.obj, c.client, c.vip, c.backend, None);
        let err = error(c.router, c.vip.ip(), &quote(c.vip, c.client));
        let v = xdp(&mut r.obj, &err);
        assert_eq!((v.action, v.mark, &v.out), (XDP_PASS, None, &err));
    }
    assert_eq!(events(&r.obj, L4Event::IcmpTranslated), 0);
    assert_eq!(events(&r.obj, L4Event::IcmpUntracked), 0);
}
